//! Device-to-cloud telemetry through the official Node.js SDKs, unmodified, against a real hub: the device
//! SDK over Mqtt, MqttWs, Amqp, AmqpWs and Http, and `@azure/event-hubs` reading the Event Hubs-compatible
//! endpoint (`sdk-tests/node/telemetry.test.js`) on TLS, over WebSockets and in the SDK's development-
//! emulator mode (plain AMQP). The Python SDKs are in `sdk_telemetry_python.rs`.
//!
//! `TWINHUB_SKIP_SDK_TESTS=1` skips these tests on a developer machine (never in CI).

mod support;

use support::{run_node, sdk_tests_enabled, TestHub};

#[test]
fn node_device_sdk_telemetry_over_every_transport_read_with_event_hubs() {
    if !sdk_tests_enabled() {
        println!("node telemetry: skipped (TWINHUB_SKIP_SDK_TESTS=1)");
        return;
    }
    let hub = TestHub::start_with(&["--event-hubs-emulator-port", "5672"]);
    // The script reads with a second consumer group too, created as a user creates one.
    hub.cli(&["consumer-group", "create", "cg2"]);
    // The SDKs' development-emulator mode: the same endpoint as plain AMQP on a port of its own.
    let emulator = hub
        .event_hubs_connection_string()
        .replace(&format!("sb://{}/", hub.host()), &format!("sb://{}:5672/", hub.host()))
        + ";UseDevelopmentEmulator=true";
    let output = run_node(
        "telemetry.test.js",
        &hub,
        &[("TWINHUB_EVENTHUBS_EMULATOR_CONNECTION_STRING", emulator)],
    );
    println!("{}", String::from_utf8_lossy(&output.stdout));
}
