//! Direct methods against a real hub process: back ends call over HTTPS, devices answer over MQTT with a
//! raw client. What users see: the device's status and payload as given, IoT Hub's errors (404
//! DeviceNotFound and DeviceNotOnline, 504 on silence, 400 for calls outside the limits, 502 for an
//! answer that is not JSON), and answers taken only from the device that was asked. The official SDKs'
//! view is in sdk_methods.rs and sdk_methods_python.rs.

mod mqtt_client;
mod rest_client;
mod support;

use mqtt_client::{Credentials, MqttClient};
use reqwest::Method;
use rest_client::{Reply, Service};
use rmqtt_codec::types::QoS;
use rmqtt_codec::v3::ConnectAckReason;
use serde_json::{json, Value};
use std::sync::Arc;
use std::time::{Duration, Instant};
use support::TestHub;

const METHODS: &str = "$iothub/methods/POST/#";

struct Fixture {
    hub: TestHub,
    api: Arc<Service>,
}

impl Fixture {
    fn start() -> Fixture {
        let hub = TestHub::start();
        let api = Arc::new(Service::new(&hub.owner_connection_string(), &hub.ca_path()));
        Fixture { hub, api }
    }

    /// A registered device, connected and subscribed to methods.
    async fn listening_device(&self, id: &str) -> MqttClient {
        let key = self.api.register_device(id).await;
        let credentials = Credentials::device(&self.hub.host(), id, &key, 3600);
        let (mut client, code, _) = MqttClient::connect(self.hub.address(), &self.hub.ca_path(), &credentials).await;
        assert_eq!(code, ConnectAckReason::ConnectionAccepted);
        client.subscribe(&[(METHODS, QoS::AtMostOnce)]).await;
        client
    }

    /// Calls `name` on `id` from a task, so the test can play the device meanwhile.
    fn call(&self, id: &str, body: Value) -> tokio::task::JoinHandle<Reply> {
        let api = Arc::clone(&self.api);
        let path = format!("/twins/{id}/methods");
        tokio::spawn(async move { api.call(Method::POST, &path, Some(body), None).await })
    }
}

/// The next method request a device receives: (name, rid, payload).
async fn next_request(device: &mut MqttClient) -> (String, String, Value) {
    let (topic, payload) = tokio::time::timeout(Duration::from_secs(10), device.next_publish())
        .await
        .expect("a method request within 10 s");
    let rest = topic
        .strip_prefix("$iothub/methods/POST/")
        .unwrap_or_else(|| panic!("not a method request: {topic}"));
    let (name, query) = rest.split_once("/?").expect("the slash before the query");
    let rid = query.strip_prefix("$rid=").expect("a $rid").to_owned();
    (
        name.to_owned(),
        rid,
        serde_json::from_slice(&payload).expect("a JSON payload"),
    )
}

#[tokio::test]
async fn a_device_answers_over_mqtt_and_the_back_end_gets_its_status_and_payload() {
    let fixture = Fixture::start();
    let mut device = fixture.listening_device("m1").await;
    let call = fixture.call(
        "m1",
        json!({"methodName": "reboot", "payload": {"delay": 3}, "responseTimeoutInSeconds": 10}),
    );
    let (name, rid, payload) = next_request(&mut device).await;
    assert_eq!((name.as_str(), &payload), ("reboot", &json!({"delay": 3})));
    device
        .publish(
            &format!("$iothub/methods/res/201/?$rid={rid}"),
            br#"{"rebooting":true}"#,
            QoS::AtMostOnce,
        )
        .await;
    let reply = call.await.unwrap();
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert_eq!(reply.body, json!({"status": 201, "payload": {"rebooting": true}}));

    // The CLI prints the same answer.
    let cli = {
        let hub_args = [
            "method",
            "invoke",
            "m1",
            "ping",
            "--payload",
            r#"{"n":1}"#,
            "--response-timeout",
            "10",
        ];
        let data_dir = fixture.hub.data_dir().to_path_buf();
        tokio::task::spawn_blocking(move || {
            std::process::Command::new(env!("CARGO_BIN_EXE_twinhub"))
                .args(hub_args)
                .arg("--data-dir")
                .arg(data_dir)
                .output()
                .expect("the CLI runs")
        })
    };
    let (name, rid, payload) = next_request(&mut device).await;
    assert_eq!((name.as_str(), &payload), ("ping", &json!({"n": 1})));
    device
        .publish(&format!("$iothub/methods/res/200/?$rid={rid}"), b"", QoS::AtLeastOnce)
        .await;
    let output = cli.await.unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let printed: Value = serde_json::from_slice(&output.stdout).expect("the CLI prints JSON");
    assert_eq!(printed, json!({"status": 200, "payload": null}));
}

#[tokio::test]
async fn answers_are_taken_only_from_the_device_asked_and_only_once() {
    let fixture = Fixture::start();
    let mut asked = fixture.listening_device("asked").await;
    let mut other = fixture.listening_device("other").await;
    let call = fixture.call(
        "asked",
        json!({"methodName": "m", "payload": 1, "responseTimeoutInSeconds": 10}),
    );
    let (_, rid, _) = next_request(&mut asked).await;
    // Another device answering this request id changes nothing.
    other
        .publish(
            &format!("$iothub/methods/res/500/?$rid={rid}"),
            br#""forged""#,
            QoS::AtMostOnce,
        )
        .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    asked
        .publish(
            &format!("$iothub/methods/res/200/?$rid={rid}"),
            br#""real""#,
            QoS::AtMostOnce,
        )
        .await;
    let reply = call.await.unwrap();
    assert_eq!(reply.body, json!({"status": 200, "payload": "real"}));
    // A second answer to the same request is dropped, and the connection stays usable.
    asked
        .publish(
            &format!("$iothub/methods/res/200/?$rid={rid}"),
            br#""again""#,
            QoS::AtMostOnce,
        )
        .await;
    let call = fixture.call("asked", json!({"methodName": "n", "responseTimeoutInSeconds": 10}));
    let (name, rid, payload) = next_request(&mut asked).await;
    assert_eq!((name.as_str(), payload), ("n", Value::Null));
    asked
        .publish(&format!("$iothub/methods/res/200/?$rid={rid}"), b"2", QoS::AtMostOnce)
        .await;
    assert_eq!(call.await.unwrap().body, json!({"status": 200, "payload": 2}));
    drop(other);
}

#[tokio::test]
async fn many_concurrent_calls_get_their_own_answers() {
    let fixture = Fixture::start();
    let mut device = fixture.listening_device("busy").await;
    let calls: Vec<_> = (0..50)
        .map(|n| {
            fixture.call(
                "busy",
                json!({"methodName": "echo", "payload": {"n": n}, "responseTimeoutInSeconds": 20}),
            )
        })
        .collect();
    let mut requests = Vec::new();
    for _ in 0..50 {
        requests.push(next_request(&mut device).await);
    }
    // Answered in reverse order of arrival: matching is by request id, not by order.
    for (_, rid, payload) in requests.iter().rev() {
        let answer = json!({"echo": payload["n"]});
        device
            .publish(
                &format!("$iothub/methods/res/200/?$rid={rid}"),
                answer.to_string().as_bytes(),
                QoS::AtMostOnce,
            )
            .await;
    }
    for (n, call) in calls.into_iter().enumerate() {
        let reply = call.await.unwrap();
        assert_eq!(reply.body, json!({"status": 200, "payload": {"echo": n}}));
    }
}

#[tokio::test]
async fn offline_silent_and_malformed_devices_get_iot_hubs_errors() {
    let fixture = Fixture::start();
    let api = &fixture.api;
    let call = |id: &str, body: Value| {
        let path = format!("/twins/{id}/methods");
        async move { api.call(Method::POST, &path, Some(body), None).await }
    };
    let unknown = call("nobody", json!({"methodName": "m"})).await;
    assert_eq!(
        (unknown.status, unknown.error_code()),
        (404, "DeviceNotFound".to_owned())
    );

    // Registered, not connected: 404 DeviceNotOnline at once; with a connect timeout, after it.
    api.register_device("offline").await;
    let offline = call("offline", json!({"methodName": "m"})).await;
    assert_eq!(
        (offline.status, offline.error_code()),
        (404, "DeviceNotOnline".to_owned())
    );
    let started = Instant::now();
    let offline = call("offline", json!({"methodName": "m", "connectTimeoutInSeconds": 1})).await;
    assert_eq!(offline.status, 404);
    assert!(started.elapsed() >= Duration::from_secs(1));

    // Connected but not subscribed to methods: not online for methods.
    let mut silent = fixture.listening_device("silent").await;
    let key = api.register_device("unsubscribed").await;
    let credentials = Credentials::device(&fixture.hub.host(), "unsubscribed", &key, 3600);
    let (_unsubscribed, _, _) = MqttClient::connect(fixture.hub.address(), &fixture.hub.ca_path(), &credentials).await;
    let not_listening = call("unsubscribed", json!({"methodName": "m"})).await;
    assert_eq!(not_listening.error_code(), "DeviceNotOnline");

    // Outside IoT Hub's limits: 400, and the device is never asked.
    for body in [
        json!({"methodName": "m", "responseTimeoutInSeconds": 4}),
        json!({"methodName": "m", "responseTimeoutInSeconds": 301}),
        json!({"methodName": "m", "connectTimeoutInSeconds": 301}),
        json!({"payload": 1}),
        json!({"methodName": "m", "payload": "x".repeat(128 * 1024)}),
    ] {
        let refused = call("silent", body.clone()).await;
        assert_eq!(refused.status, 400, "{body:.80}: {}", refused.body);
    }

    // No answer within the response timeout: 504, and an answer after it is dropped.
    let started = Instant::now();
    let timed_out = fixture.call("silent", json!({"methodName": "slow", "responseTimeoutInSeconds": 5}));
    let (_, late_rid, _) = next_request(&mut silent).await;
    let timed_out = timed_out.await.unwrap();
    assert_eq!(
        (timed_out.status, timed_out.error_code()),
        (504, "GatewayTimeoutException".to_owned())
    );
    assert!(started.elapsed() >= Duration::from_secs(5));
    silent
        .publish(
            &format!("$iothub/methods/res/200/?$rid={late_rid}"),
            b"1",
            QoS::AtMostOnce,
        )
        .await;

    // An answer that is not JSON: 502, the device's fault.
    let malformed = fixture.call("silent", json!({"methodName": "m", "responseTimeoutInSeconds": 10}));
    let (_, rid, _) = next_request(&mut silent).await;
    silent
        .publish(
            &format!("$iothub/methods/res/200/?$rid={rid}"),
            b"not json",
            QoS::AtMostOnce,
        )
        .await;
    let malformed = malformed.await.unwrap();
    assert_eq!(
        (malformed.status, malformed.error_code()),
        (502, "BadDeviceResponse".to_owned())
    );

    // A `device` policy token is not a back end's.
    let device_api = Service::new(&fixture.hub.connection_string("device"), &fixture.hub.ca_path());
    let refused = device_api
        .call(
            Method::POST,
            "/twins/silent/methods",
            Some(json!({"methodName": "m"})),
            None,
        )
        .await;
    assert_eq!(refused.status, 401);
}
