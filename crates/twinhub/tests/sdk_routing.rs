//! Message routing and the hub's own events through the official SDKs, unmodified, against a hub started
//! with `sdk-tests/routes.toml`: `sdk-tests/node/routing.test.js` (devices over Mqtt and Amqp, the back end
//! with azure-iothub, @azure/event-hubs reading twin change, lifecycle and connection state events and the
//! telemetry the routes' conditions take) and `sdk-tests/python/routing_test.py` (a device over MQTT, the
//! back end with azure-iot-hub, including `replace_twin`, and azure-eventhub reading the same, with
//! `sdk-tests/routes-fallback.toml`: the fallback route on).
//!
//! `TWINHUB_SKIP_SDK_TESTS=1` skips these tests on a developer machine (never in CI).

mod support;

use support::{run_node, run_python, sdk_tests_enabled, workspace_root, TestHub};

fn routes_file(name: &str) -> String {
    workspace_root().join("sdk-tests").join(name).display().to_string()
}

/// The hub's name: the Event Hubs connection string's `EntityPath`.
fn hub_name(hub: &TestHub) -> String {
    hub.event_hubs_connection_string()
        .split(';')
        .find_map(|part| part.strip_prefix("EntityPath="))
        .expect("an EntityPath")
        .to_owned()
}

#[test]
fn node_sdks_receive_the_hubs_own_events_and_routed_telemetry() {
    if !sdk_tests_enabled() {
        println!("node routing: skipped (TWINHUB_SKIP_SDK_TESTS=1)");
        return;
    }
    let hub = TestHub::start_with(&["--routes", &routes_file("routes.toml")]);
    let output = run_node("routing.test.js", &hub, &[("TWINHUB_HUB_NAME", hub_name(&hub))]);
    println!("{}", String::from_utf8_lossy(&output.stdout));
}

#[test]
fn python_sdks_receive_the_hubs_own_events_and_routed_telemetry() {
    if !sdk_tests_enabled() {
        println!("python routing: skipped (TWINHUB_SKIP_SDK_TESTS=1)");
        return;
    }
    let hub = TestHub::start_with(&["--routes", &routes_file("routes-fallback.toml")]);
    let output = run_python("routing_test.py", &hub, &[("TWINHUB_HUB_NAME", hub_name(&hub))]);
    println!("{}", String::from_utf8_lossy(&output.stdout));
}
