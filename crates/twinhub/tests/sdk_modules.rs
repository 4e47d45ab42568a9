//! Module identities and module twins through the official SDKs, unmodified, against a real hub:
//! `sdk-tests/node/modules.test.js` (azure-iothub) and `sdk-tests/python/modules_test.py` (azure-iot-hub)
//! manage them; `sdk-tests/node/module_client.test.js` connects a module with the Node `ModuleClient` over
//! Mqtt and MqttWs, and over Amqp and AmqpWs (two tests, run side by side);
//! `sdk-tests/python/module_client_test.py` with the Python `IoTHubModuleClient` over MQTT and websockets.
//!
//! `TWINHUB_SKIP_SDK_TESTS=1` skips these tests on a developer machine (never in CI).

mod support;

use support::sdk_script;

#[test]
fn node_service_sdk_manages_modules_and_module_twins() {
    sdk_script("node", "modules.test.js", &[]);
}

#[test]
fn python_service_sdk_manages_modules_and_module_twins() {
    sdk_script("python", "modules_test.py", &[]);
}

#[test]
fn node_module_client_connects_over_mqtt_and_websockets() {
    sdk_script(
        "node",
        "module_client.test.js",
        &[("TWINHUB_TRANSPORTS", "Mqtt,MqttWs".into())],
    );
}

#[test]
fn node_module_client_connects_over_amqp_and_websockets() {
    sdk_script(
        "node",
        "module_client.test.js",
        &[("TWINHUB_TRANSPORTS", "Amqp,AmqpWs".into())],
    );
}

#[test]
fn python_module_client_connects_over_mqtt_and_websockets() {
    sdk_script("python", "module_client_test.py", &[]);
}
