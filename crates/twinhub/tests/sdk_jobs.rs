//! Scheduled jobs through the official SDKs, unmodified, against a real hub:
//! `sdk-tests/node/jobs.test.js` (azure-iothub's JobClient, devices on azure-iot-device),
//! `sdk-tests/node/jobs_restart.test.js` (a job across a `kill -9` of the hub) and
//! `sdk-tests/python/jobs_test.py` (azure-iot-hub's IoTHubJobManager). The hubs take on a few hundred
//! devices per second, so the jobs are caught mid-run.
//!
//! `TWINHUB_SKIP_SDK_TESTS=1` skips these tests on a developer machine (never in CI).

mod support;

use support::{run_node, sdk_script_with, sdk_tests_enabled, TestHub};

const JOB_RATE: [&str; 2] = ["--job-devices-per-second", "400"];

#[test]
fn node_job_client_runs_twin_and_method_jobs() {
    sdk_script_with(&JOB_RATE, "node", "jobs.test.js", &[]);
}

#[test]
fn python_job_manager_runs_twin_and_method_jobs() {
    sdk_script_with(&JOB_RATE, "python", "jobs_test.py", &[]);
}

#[test]
fn a_node_job_killed_mid_run_completes_after_a_restart_patching_each_twin_once() {
    if !sdk_tests_enabled() {
        println!("node job restart: skipped (TWINHUB_SKIP_SDK_TESTS=1)");
        return;
    }
    let mut hub = TestHub::start_with(&JOB_RATE);
    let output = run_node("jobs_restart.test.js", &hub, &[("TWINHUB_PHASE", "start".into())]);
    println!("{}", String::from_utf8_lossy(&output.stdout));
    hub.kill9();
    hub.restart();
    let output = run_node("jobs_restart.test.js", &hub, &[("TWINHUB_PHASE", "finish".into())]);
    println!("{}", String::from_utf8_lossy(&output.stdout));
}
