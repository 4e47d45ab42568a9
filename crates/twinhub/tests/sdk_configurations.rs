//! Automatic device configurations through the official SDKs, unmodified, against a real hub:
//! `sdk-tests/node/configurations.test.js` (azure-iothub's Registry, a device app on azure-iot-device) and
//! `sdk-tests/python/configurations_test.py` (azure-iot-hub's IoTHubConfigurationManager).
//!
//! `TWINHUB_SKIP_SDK_TESTS=1` skips these tests on a developer machine (never in CI).

mod support;

use support::sdk_script;

#[test]
fn node_registry_rolls_out_configurations() {
    sdk_script("node", "configurations.test.js", &[]);
}

#[test]
fn python_configuration_manager_rolls_out_configurations() {
    sdk_script("python", "configurations_test.py", &[]);
}
