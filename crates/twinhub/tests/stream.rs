//! The live change stream for back ends (`GET /twinhub/stream`, server-sent events) against a real hub:
//! authentication, twin changes, connection state and telemetry as they happen, a reader that reconnects
//! with `Last-Event-ID` getting what it missed (or `resync` when that is gone), and a reader that does
//! not read falling behind into a `resync` without slowing the hub.

mod mqtt_client;
mod rest_client;
mod support;

use reqwest::Method;
use rest_client::Service;
use rmqtt_codec::types::QoS;
use rmqtt_codec::v3::ConnectAckReason;
use serde_json::{json, Value};
use std::time::{Duration, Instant};
use support::TestHub;

#[derive(Debug, Clone)]
struct SseEvent {
    id: Option<u64>,
    kind: String,
    data: Value,
}

/// A reader of the stream: the response and what it has not parsed yet.
struct Reader {
    response: reqwest::Response,
    pending: String,
}

impl Reader {
    async fn open(api: &Service, last_event_id: Option<u64>) -> Reader {
        let url = format!(
            "https://{}/twinhub/stream?api-version=2021-04-12",
            api.connection.host_name
        );
        let mut request = api.http.get(url).header("Authorization", api.token());
        if let Some(id) = last_event_id {
            request = request.header("Last-Event-ID", id.to_string());
        }
        let response = request.send().await.expect("stream opened");
        assert_eq!(response.status(), 200);
        assert!(response.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/event-stream"));
        Reader {
            response,
            pending: String::new(),
        }
    }

    /// The next event (comments skipped); panics after 10 s.
    async fn next(&mut self) -> SseEvent {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(end) = self.pending.find("\n\n") {
                let block: String = self.pending.drain(..end + 2).collect();
                let (mut id, mut kind, mut data) = (None, String::new(), String::new());
                for line in block.lines() {
                    if let Some(value) = line.strip_prefix("id:") {
                        id = value.trim().parse().ok();
                    } else if let Some(value) = line.strip_prefix("event:") {
                        kind = value.trim().to_owned();
                    } else if let Some(value) = line.strip_prefix("data:") {
                        data.push_str(value.trim_start());
                    }
                }
                if kind.is_empty() && data.is_empty() {
                    continue;
                }
                let data = serde_json::from_str(&data).unwrap_or(Value::String(data));
                return SseEvent { id, kind, data };
            }
            let left = deadline.saturating_duration_since(Instant::now());
            let chunk = tokio::time::timeout(left, self.response.chunk())
                .await
                .expect("an event within 10 s")
                .expect("the stream goes on")
                .expect("the stream is not closed");
            self.pending.push_str(&String::from_utf8_lossy(&chunk));
        }
    }

    /// Skips events until one satisfies `wanted`.
    async fn until(&mut self, wanted: impl Fn(&SseEvent) -> bool) -> SseEvent {
        loop {
            let event = self.next().await;
            if wanted(&event) {
                return event;
            }
        }
    }
}

fn twin_of(device: &'static str) -> impl Fn(&SseEvent) -> bool {
    move |event| event.kind == "twin" && event.data["deviceId"] == device
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_stream_carries_twin_changes_connection_state_and_telemetry_and_resumes() {
    let hub = TestHub::start();
    let api = Service::new(&hub.owner_connection_string(), &hub.ca_path());

    // Only a policy with ServiceConnect may read it.
    let url = format!("https://{}/twinhub/stream", api.connection.host_name);
    assert_eq!(api.http.get(&url).send().await.unwrap().status(), 401);
    let registry_read = Service::new(&hub.connection_string("registryRead"), &hub.ca_path());
    let refused = registry_read
        .http
        .get(&url)
        .header("Authorization", registry_read.token())
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 401);
    // `twinhub token` prints a header value that opens it (what curl users pass).
    let token = hub.cli(&["token", "--policy", "service"]);
    let by_cli = api
        .http
        .get(&url)
        .header("Authorization", token.trim())
        .send()
        .await
        .unwrap();
    assert_eq!(by_cli.status(), 200);
    drop(by_cli);

    let mut reader = Reader::open(&api, None).await;
    assert_eq!(reader.next().await.kind, "ready");
    let key = api.register_device("dev1").await;
    let created = reader.until(twin_of("dev1")).await;
    assert_eq!(created.data["twin"]["connectionState"], "Disconnected");
    let patch = json!({"properties": {"desired": {"interval": 5}}});
    assert_eq!(
        api.call(Method::PATCH, "/twins/dev1", Some(patch), Some("*"))
            .await
            .status,
        200
    );
    let patched = reader.until(twin_of("dev1")).await;
    assert_eq!(patched.data["twin"]["properties"]["desired"]["interval"], 5);
    assert!(patched.id > created.id);

    // A device connects and sends a message: its connection state, then its telemetry.
    let credentials = mqtt_client::Credentials::device(&hub.host(), "dev1", &key, 600);
    let (mut device, code, _) = mqtt_client::MqttClient::connect(hub.address(), &hub.ca_path(), &credentials).await;
    assert_eq!(code, ConnectAckReason::ConnectionAccepted);
    let connected = reader.until(twin_of("dev1")).await;
    assert_eq!(connected.data["twin"]["connectionState"], "Connected");
    device
        .publish(
            "devices/dev1/messages/events/kind=reading",
            br#"{"temperature":21.5}"#,
            QoS::AtLeastOnce,
        )
        .await;
    let telemetry = reader.until(|event| event.kind == "telemetry").await;
    assert_eq!(telemetry.data["deviceId"], "dev1");
    assert_eq!(telemetry.data["body"]["temperature"], 21.5);
    assert_eq!(telemetry.data["properties"]["kind"], "reading");

    // Reconnecting with the last number seen brings what was missed, in order.
    let last_seen = telemetry.id.unwrap();
    drop(reader);
    api.register_device("dev2").await;
    assert_eq!(
        api.call(Method::DELETE, "/devices/dev2", None, Some("*")).await.status,
        204
    );
    let mut resumed = Reader::open(&api, Some(last_seen)).await;
    assert_eq!(resumed.next().await.kind, "ready");
    let missed = resumed.until(twin_of("dev2")).await;
    assert!(missed.id.unwrap() > last_seen);
    let deleted = resumed.until(|event| event.kind == "deleted").await;
    assert_eq!(deleted.data["deviceId"], "dev2");
    // A number the hub never gave (or no longer keeps): read the state afresh.
    let mut lost = Reader::open(&api, Some(last_seen + 1_000_000)).await;
    assert_eq!(lost.next().await.kind, "ready");
    assert_eq!(lost.next().await.kind, "resync");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reader_that_does_not_read_falls_behind_into_a_resync_without_slowing_the_hub() {
    let hub = TestHub::start();
    let api = Service::new(&hub.owner_connection_string(), &hub.ca_path());
    let mut idle = Reader::open(&api, None).await;
    assert_eq!(idle.next().await.kind, "ready");
    // Far more events than the stream's buffer and the socket hold, while the reader reads nothing.
    let started = Instant::now();
    for batch in 0..150 {
        let body: Vec<Value> = (0..100)
            .map(|n| json!({"id": format!("bulk-{batch}-{n}"), "importMode": "create"}))
            .collect();
        let reply = api.call(Method::POST, "/devices", Some(Value::Array(body)), None).await;
        assert_eq!(reply.status, 200, "{}", reply.body);
    }
    let took = started.elapsed();
    assert!(
        took < Duration::from_secs(30),
        "15,000 registrations took {took:?}: the hub waited for the reader"
    );
    // The reader, reading at last, is told it lost events; the stream then goes on.
    idle.until(|event| event.kind == "resync").await;
    api.register_device("after").await;
    idle.until(twin_of("after")).await;
}
