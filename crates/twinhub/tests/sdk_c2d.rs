//! Cloud-to-device messages through the official Node.js SDKs, unmodified, against a real hub:
//! `azure-iothub`'s `send` and feedback receiver as the back end, `azure-iot-device`'s `on('message')`
//! with complete, reject and abandon over Mqtt, MqttWs, Amqp, AmqpWs and Http
//! (`sdk-tests/node/c2d.test.js`): messages with their ids, properties and body, feedback for each
//! settlement, redelivery after abandon, delivery in order to a device that comes online, the queue's
//! limit, an unknown device, and expiry.
//!
//! `TWINHUB_SKIP_SDK_TESTS=1` skips these tests on a developer machine (never in CI).

mod support;

use support::{run_node, sdk_tests_enabled, TestHub};

#[test]
fn node_cloud_to_device_messages_over_every_device_transport() {
    if !sdk_tests_enabled() {
        println!("node c2d: skipped (TWINHUB_SKIP_SDK_TESTS=1)");
        return;
    }
    let hub = TestHub::start();
    let output = run_node("c2d.test.js", &hub, &[]);
    println!("{}", String::from_utf8_lossy(&output.stdout));
}
