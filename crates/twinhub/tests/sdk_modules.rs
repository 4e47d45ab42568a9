//! Module identities and module twins through the official service SDKs, unmodified, against a real hub:
//! `sdk-tests/node/modules.test.js` (azure-iothub) and `sdk-tests/python/modules_test.py` (azure-iot-hub).
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
