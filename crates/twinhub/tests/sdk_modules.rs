//! Module identities and module twins through the official SDKs, unmodified, against a real hub:
//! `sdk-tests/node/modules.test.js` (azure-iothub) and `sdk-tests/python/modules_test.py` (azure-iot-hub)
//! manage them; `sdk-tests/node/module_client.test.js` connects a module with the Node `ModuleClient` over
//! Mqtt and MqttWs.
//!
//! `TWINHUB_SKIP_SDK_TESTS=1` skips these tests on a developer machine (never in CI).

mod support;

use support::{run_node, run_python, sdk_tests_enabled, TestHub};

#[test]
fn node_service_sdk_manages_modules_and_module_twins() {
    if !sdk_tests_enabled() {
        println!("node modules: skipped (TWINHUB_SKIP_SDK_TESTS=1)");
        return;
    }
    let hub = TestHub::start();
    let output = run_node("modules.test.js", &hub, &[]);
    println!("{}", String::from_utf8_lossy(&output.stdout));
}

#[test]
fn python_service_sdk_manages_modules_and_module_twins() {
    if !sdk_tests_enabled() {
        println!("python modules: skipped (TWINHUB_SKIP_SDK_TESTS=1)");
        return;
    }
    let hub = TestHub::start();
    let output = run_python("modules_test.py", &hub, &[]);
    println!("{}", String::from_utf8_lossy(&output.stdout));
}

#[test]
fn node_module_client_connects_over_mqtt_and_websockets() {
    if !sdk_tests_enabled() {
        println!("node module client: skipped (TWINHUB_SKIP_SDK_TESTS=1)");
        return;
    }
    let hub = TestHub::start();
    let output = run_node("module_client.test.js", &hub, &[]);
    println!("{}", String::from_utf8_lossy(&output.stdout));
}

#[test]
fn python_module_client_connects_over_mqtt_and_websockets() {
    if !sdk_tests_enabled() {
        println!("python module client: skipped (TWINHUB_SKIP_SDK_TESTS=1)");
        return;
    }
    let hub = TestHub::start();
    let output = run_python("module_client_test.py", &hub, &[]);
    println!("{}", String::from_utf8_lossy(&output.stdout));
}
