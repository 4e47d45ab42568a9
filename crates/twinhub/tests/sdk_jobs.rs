//! Scheduled jobs through the official SDKs, unmodified, against a real hub:
//! `sdk-tests/node/jobs.test.js` (azure-iothub's JobClient, devices on azure-iot-device) and
//! `sdk-tests/python/jobs_test.py` (azure-iot-hub's IoTHubJobManager).
//!
//! `TWINHUB_SKIP_SDK_TESTS=1` skips these tests on a developer machine (never in CI).

mod support;

use support::sdk_script;

#[test]
fn node_job_client_runs_twin_and_method_jobs() {
    sdk_script("node", "jobs.test.js", &[]);
}

#[test]
fn python_job_manager_runs_twin_and_method_jobs() {
    sdk_script("python", "jobs_test.py", &[]);
}
