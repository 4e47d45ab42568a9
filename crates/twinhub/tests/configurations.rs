//! Automatic device configurations against a real hub process over REST: kept across a restart and still
//! applied after it, and bad requests refused in IoT Hub's terms. The SDKs' view is in
//! `sdk_configurations.rs`.

mod rest_client;
mod support;

use reqwest::Method;
use rest_client::Service;
use serde_json::json;
use std::time::{Duration, Instant};
use support::TestHub;

async fn desired_firmware(api: &Service, device: &str) -> serde_json::Value {
    let reply = api.call(Method::GET, &format!("/twins/{device}"), None, None).await;
    reply.body["properties"]["desired"]["firmware"].clone()
}

async fn wait_for_firmware(api: &Service, device: &str, version: &str) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while desired_firmware(api, device).await != version {
        assert!(Instant::now() < deadline, "{device} never got firmware {version}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn configurations_survive_a_restart_and_bad_ones_are_refused() {
    let mut hub = TestHub::start();
    let api = Service::new(&hub.owner_connection_string(), &hub.ca_path());
    api.register_device("d1").await;
    let tag = json!({"tags": {"ring": "one"}});
    assert_eq!(
        api.call(Method::PATCH, "/twins/d1", Some(tag.clone()), Some("*"))
            .await
            .status,
        200
    );
    let configuration = json!({"id": "fw", "targetCondition": "tags.ring = 'one'", "priority": 1,
        "content": {"deviceContent": {"properties.desired.firmware": "1.5"}}});
    let created = api
        .call(Method::PUT, "/configurations/fw", Some(configuration.clone()), None)
        .await;
    assert_eq!(created.status, 200, "{}", created.body);
    wait_for_firmware(&api, "d1", "1.5").await;

    hub.restart();
    let api = Service::new(&hub.owner_connection_string(), &hub.ca_path());
    let read = api.call(Method::GET, "/configurations/fw", None, None).await;
    assert_eq!(read.status, 200);
    assert_eq!(read.body["etag"], created.body["etag"]);
    assert_eq!(read.body["systemMetrics"]["results"]["appliedCount"], 1);
    api.register_device("d2").await;
    assert_eq!(
        api.call(Method::PATCH, "/twins/d2", Some(tag), Some("*")).await.status,
        200
    );
    wait_for_firmware(&api, "d2", "1.5").await;

    for (path, body, if_match, status, code) in [
        (
            "/configurations/Upper",
            configuration.clone(),
            None,
            400,
            "ArgumentInvalid",
        ),
        (
            "/configurations/bad-condition",
            json!({"targetCondition": "tags.ring = ", "content": {"deviceContent": {"properties.desired.x": 1}}}),
            None,
            400,
            "ArgumentInvalid",
        ),
        (
            "/configurations/bad-content",
            json!({"content": {"deviceContent": {"tags.x": 1}}}),
            None,
            400,
            "ArgumentInvalid",
        ),
        (
            "/configurations/fw",
            configuration.clone(),
            Some("\"stale\""),
            412,
            "PreconditionFailed",
        ),
        (
            "/configurations/fw",
            json!({"id": "fw", "content": {"deviceContent": {"properties.desired.firmware": "9"}}}),
            None,
            400,
            "ArgumentInvalid",
        ),
    ] {
        let reply = api.call(Method::PUT, path, Some(body), if_match).await;
        assert_eq!(reply.status, status, "{path}: {}", reply.body);
        assert_eq!(reply.headers["iothub-errorcode"], code, "{path}");
    }
    let missing = api.call(Method::GET, "/configurations/nope", None, None).await;
    assert_eq!(missing.status, 404);
    let deleted = api.call(Method::DELETE, "/configurations/fw", None, Some("*")).await;
    assert_eq!(deleted.status, 204);
    assert_eq!(desired_firmware(&api, "d2").await, "1.5", "what was written stays");
}
