//! Scheduled jobs against a real hub process over REST: a twin job survives `kill -9` in the middle and
//! then patches every selected twin exactly once; a job cancelled mid-run stops where it was; a job that
//! runs past its maximum execution time fails, with its pending devices' steps. The hub takes on a few
//! hundred devices per second here (`--job-devices-per-second`), so each job is caught mid-run.
//! The SDKs' view of jobs is in `sdk_jobs.rs`.

mod rest_client;
mod support;

use reqwest::Method;
use rest_client::Service;
use serde_json::{json, Value};
use std::time::{Duration, Instant};
use support::TestHub;

const DEVICES_PER_SECOND: &str = "400";

/// Registers `count` devices `<prefix>-<n>` tagged `{"wave": wave}`, 100 per bulk request.
async fn register(api: &Service, prefix: &str, count: usize, wave: &str) {
    let ids: Vec<String> = (0..count).map(|n| format!("{prefix}-{n:05}")).collect();
    for chunk in ids.chunks(100) {
        let body: Vec<Value> = chunk
            .iter()
            .map(|id| json!({"id": id, "importMode": "create", "tags": {"wave": wave}}))
            .collect();
        let reply = api.call(Method::POST, "/devices", Some(Value::Array(body)), None).await;
        assert_eq!(reply.status, 200, "{}", reply.body);
    }
}

async fn schedule(api: &Service, job_id: &str, body: Value) -> Value {
    let reply = api
        .call(Method::PUT, &format!("/jobs/v2/{job_id}"), Some(body), None)
        .await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert_eq!(reply.body["status"], "queued");
    reply.body
}

async fn job(api: &Service, job_id: &str) -> Value {
    let reply = api.call(Method::GET, &format!("/jobs/v2/{job_id}"), None, None).await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    reply.body
}

/// Polls the job until `done` holds; panics after `within`.
async fn job_until(api: &Service, job_id: &str, within: Duration, done: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + within;
    loop {
        let job = job(api, job_id).await;
        if done(&job) {
            return job;
        }
        assert!(Instant::now() < deadline, "job {job_id} after {within:?}: {job}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn succeeded(job: &Value) -> u64 {
    job["deviceJobStatistics"]["succeededCount"].as_u64().unwrap_or(0)
}

/// Every twin a query returns, through every page.
async fn twins(api: &Service, sql: &str) -> Vec<Value> {
    let mut all = Vec::new();
    let mut continuation: Option<String> = None;
    loop {
        let reply = api.query(sql, Some("1000"), continuation.as_deref()).await;
        assert_eq!(reply.status, 200, "{}", reply.body);
        all.extend(reply.body.as_array().cloned().unwrap_or_default());
        continuation = reply
            .headers
            .get("x-ms-continuation")
            .and_then(|value| value.to_str().ok())
            .map(str::to_owned);
        if continuation.is_none() {
            return all;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_twin_job_killed_mid_run_resumes_and_patches_each_twin_exactly_once() {
    let mut hub = TestHub::start_with(&["--job-devices-per-second", DEVICES_PER_SECOND]);
    let api = Service::new(&hub.owner_connection_string(), &hub.ca_path());
    register(&api, "fleet", 2_000, "one").await;
    register(&api, "spare", 50, "two").await;
    let body = json!({"type": "scheduleUpdateTwin", "queryCondition": "tags.wave = 'one'",
        "updateTwin": {"etag": "*", "properties": {"desired": {"firmware": "2.0"}}}});
    schedule(&api, "rollout", body).await;
    let before = job_until(&api, "rollout", Duration::from_secs(30), |job| succeeded(job) >= 300).await;
    assert_eq!(before["status"], "running");
    assert!(succeeded(&before) < 2_000, "the job is caught mid-run: {before}");

    hub.kill9();
    hub.restart();
    let api = Service::new(&hub.owner_connection_string(), &hub.ca_path());
    let after_restart = job(&api, "rollout").await;
    assert!(
        succeeded(&after_restart) >= succeeded(&before),
        "every acknowledged step survived: {after_restart}"
    );
    let done = job_until(&api, "rollout", Duration::from_secs(60), |job| {
        job["status"] != "running"
    })
    .await;
    assert_eq!(done["status"], "completed", "{done}");
    assert_eq!(done["deviceJobStatistics"]["deviceCount"], 2_000);
    assert_eq!(done["deviceJobStatistics"]["succeededCount"], 2_000);

    let fleet = twins(&api, "SELECT * FROM devices WHERE tags.wave = 'one'").await;
    assert_eq!(fleet.len(), 2_000);
    for twin in &fleet {
        assert_eq!(twin["properties"]["desired"]["firmware"], "2.0", "{}", twin["deviceId"]);
        // One patch on a new twin: desired $version 1 → 2. A step applied twice would show 3.
        assert_eq!(twin["properties"]["desired"]["$version"], 2, "{}", twin["deviceId"]);
    }
    let spare = twins(&api, "SELECT * FROM devices WHERE tags.wave = 'two'").await;
    assert!(spare
        .iter()
        .all(|twin| twin["properties"]["desired"].get("firmware").is_none()));
    let steps = twins(&api, "SELECT * FROM devices.jobs WHERE devices.jobs.jobId = 'rollout'").await;
    assert_eq!(steps.len(), 2_000);
    assert!(steps.iter().all(|step| step["status"] == "completed"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_job_stops_and_an_overrunning_job_fails_with_its_pending_steps() {
    let hub = TestHub::start_with(&["--job-devices-per-second", DEVICES_PER_SECOND]);
    let api = Service::new(&hub.owner_connection_string(), &hub.ca_path());
    register(&api, "fleet", 1_500, "one").await;

    let body = json!({"type": "scheduleUpdateTwin", "queryCondition": "tags.wave = 'one'",
        "updateTwin": {"tags": {"ring": "canary"}}});
    schedule(&api, "to-cancel", body).await;
    job_until(&api, "to-cancel", Duration::from_secs(30), |job| succeeded(job) >= 100).await;
    let reply = api.call(Method::POST, "/jobs/v2/to-cancel/cancel", None, None).await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert_eq!(reply.body["status"], "cancelled");
    let statistics = &reply.body["deviceJobStatistics"];
    let done = succeeded(&reply.body);
    assert!(done < 1_500, "cancelled mid-run: {statistics}");
    assert_eq!(statistics["pendingCount"], 0);
    assert_eq!(statistics["failedCount"].as_u64(), Some(1_500 - done));
    tokio::time::sleep(Duration::from_millis(500)).await;
    let ringed = twins(&api, "SELECT * FROM devices WHERE tags.ring = 'canary'").await;
    assert_eq!(ringed.len() as u64, done, "no twin is patched after the cancel");
    let canceled = twins(
        &api,
        "SELECT * FROM devices.jobs WHERE devices.jobs.status = 'canceled'",
    )
    .await;
    assert_eq!(canceled.len() as u64, 1_500 - done);

    // 1,500 devices at 400 per second cannot be done in one second.
    let body = json!({"type": "scheduleUpdateTwin", "queryCondition": "*", "maxExecutionTimeInSeconds": 1,
        "updateTwin": {"tags": {"ring": "late"}}});
    schedule(&api, "overrun", body).await;
    let failed = job_until(&api, "overrun", Duration::from_secs(30), |job| {
        job["status"] != "running" && job["status"] != "queued"
    })
    .await;
    assert_eq!(failed["status"], "failed", "{failed}");
    assert!(failed["failureReason"]
        .as_str()
        .is_some_and(|reason| reason.contains("maximum execution time")));
    let statistics = &failed["deviceJobStatistics"];
    assert_eq!(statistics["pendingCount"], 0);
    assert!(statistics["failedCount"].as_u64() > Some(0), "{statistics}");
    let timed_out = twins(
        &api,
        "SELECT * FROM devices.jobs WHERE devices.jobs.jobId = 'overrun' AND devices.jobs.status = 'failed'",
    )
    .await;
    assert!(timed_out.iter().all(|step| step["error"]["code"] == "JobTimedOut"));

    // Ten active jobs at most, as IoT Hub's S3; an id in use is a conflict; a bad condition is a 400.
    for n in 0..10 {
        let body = json!({"type": "scheduleUpdateTwin", "queryCondition": "*", "startTime": "2099-01-01T00:00:00Z",
            "updateTwin": {"tags": {"n": n}}});
        schedule(&api, &format!("later-{n}"), body).await;
    }
    let body = json!({"type": "scheduleUpdateTwin", "queryCondition": "*", "updateTwin": {"tags": {"n": 11}}});
    let reply = api
        .call(Method::PUT, "/jobs/v2/one-too-many", Some(body.clone()), None)
        .await;
    assert_eq!(
        (reply.status, reply.headers["iothub-errorcode"].to_str().unwrap()),
        (403, "JobQuotaExceeded")
    );
    let reply = api.call(Method::PUT, "/jobs/v2/later-1", Some(body), None).await;
    assert_eq!(reply.status, 409);
    let bad = json!({"type": "scheduleUpdateTwin", "queryCondition": "tags.x = ", "updateTwin": {"tags": {}}});
    let reply = api.call(Method::PUT, "/jobs/v2/bad", Some(bad), None).await;
    assert_eq!(reply.status, 400, "{}", reply.body);
}
