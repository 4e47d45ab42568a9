//! Cloud-to-device messages through the official Python SDKs, unmodified, against a real hub
//! (`sdk-tests/python/c2d_test.py`): `azure-iot-hub`'s `send_c2d_message` (uAMQP, a sender link to
//! `/messages/devicebound`) sends, and two `azure-iot-device` clients, over MQTT and MQTT over
//! WebSockets, receive with `on_message_received`: data, message and correlation ids, content type and
//! encoding, expiry, `iothub-ack` and application properties exactly; 10 messages in order; messages
//! sent while a device is disconnected (or before it ever connected) on connect; a message to an
//! unknown device fails (`amqp:not-found`); the 51st message to an offline device fails
//! (`amqp:resource-limit-exceeded`) and the device then receives exactly the 50 queued; none twice.
//!
//! `TWINHUB_SKIP_SDK_TESTS=1` skips this test on a developer machine (never in CI).

mod support;

use support::{run_python, sdk_tests_enabled, TestHub};

#[test]
fn python_service_sdk_sends_cloud_to_device_messages_to_python_devices() {
    if !sdk_tests_enabled() {
        println!(
            "python_service_sdk_sends_cloud_to_device_messages_to_python_devices: skipped (TWINHUB_SKIP_SDK_TESTS=1)"
        );
        return;
    }
    // `info`: the refusals asserted on below are logged at that level.
    let hub = TestHub::start_with_log("info");
    let output = run_python("c2d_test.py", &hub, &[]);
    println!(
        "python_service_sdk_sends_cloud_to_device_messages_to_python_devices: c2d_test.py passed:\n{}",
        String::from_utf8_lossy(&output.stdout)
    );
    // The hub refused only the two messages the script expected it to refuse (unknown device, full queue).
    let log = hub.log();
    // (`settle_when_done` logs every refused message of a link; this test's only such links are sends.)
    let refusals = log.matches("message refused").count();
    assert_eq!(refusals, 2, "cloud-to-device refusals in the hub log:\n{log}");
    // Every message a device acknowledged was completed by its acknowledgement.
    for trouble in [
        "a cloud-to-device settlement was refused",
        "could not take a cloud-to-device message",
    ] {
        assert!(!log.contains(trouble), "the hub logged `{trouble}`:\n{log}");
    }
}
