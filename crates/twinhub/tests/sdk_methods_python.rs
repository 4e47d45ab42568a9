//! Direct methods through the official Python SDKs, unmodified, against a real hub
//! (`sdk-tests/python/methods_test.py`): two `azure-iot-device` clients, over MQTT and MQTT over
//! WebSockets, answer with `MethodResponse`; `azure-iot-hub`'s `invoke_device_method` calls them with
//! a JSON payload (status and payload back exactly, statuses other than 200 as given, 20 concurrent
//! calls each with its own answer), and gets 404 `DeviceNotOnline` for a device not connected or not
//! subscribed, 404 `DeviceNotFound`, 400 for a response timeout IoT Hub does not allow, 504 when the
//! device never answers, and an answer from a device that connects while the call waits
//! (`connectTimeoutInSeconds`).
//!
//! `TWINHUB_SKIP_SDK_TESTS=1` skips this test on a developer machine (never in CI).

mod support;

use support::{run_python, sdk_tests_enabled, TestHub};

#[test]
fn python_device_and_service_sdks_call_direct_methods() {
    if !sdk_tests_enabled() {
        println!("python_device_and_service_sdks_call_direct_methods: skipped (TWINHUB_SKIP_SDK_TESTS=1)");
        return;
    }
    let hub = TestHub::start();
    let output = run_python("methods_test.py", &hub, &[]);
    println!(
        "python_device_and_service_sdks_call_direct_methods: methods_test.py passed:\n{}",
        String::from_utf8_lossy(&output.stdout)
    );
    // Every answer the devices gave reached a call still waiting for it (the unanswered call got none).
    let log = hub.log();
    assert!(
        !log.contains("method answer dropped"),
        "the hub dropped a device's method answer:\n{log}"
    );
}
