//! Devices over MQTT/TLS against a real hub process, with a raw client: the twin over MQTT, sessions,
//! authorization, and the protocol edges (credentials, topics, keep-alive, sizes, malformed packets).

mod mqtt_client;
mod rest_client;
mod support;

use mqtt_client::{connect_packet, encode, Credentials, MqttClient};
use reqwest::Method;
use rest_client::Service;
use rmqtt_codec::types::QoS;
use rmqtt_codec::v3::{ConnectAckReason, Packet, SubscribeReturnCode};
use serde_json::{json, Value};
use std::time::{Duration, Instant};
use support::TestHub;

const DESIRED: &str = "$iothub/twin/PATCH/properties/desired/#";
const RESPONSES: &str = "$iothub/twin/res/#";

struct Fixture {
    hub: TestHub,
    api: Service,
}

impl Fixture {
    fn start(extra_args: &[&str]) -> Fixture {
        let hub = TestHub::start_with(extra_args);
        let api = Service::new(&hub.owner_connection_string(), &hub.ca_path());
        Fixture { hub, api }
    }

    /// kill -9 and start again; a new REST client, as the old one's pooled connections died with the hub.
    fn restart(&mut self) {
        self.hub.restart();
        self.api = Service::new(&self.hub.owner_connection_string(), &self.hub.ca_path());
    }

    /// Registers a device and returns its primary key.
    async fn device(&self, id: &str) -> String {
        self.api.register_device(id).await
    }

    fn credentials(&self, id: &str, key: &str) -> Credentials {
        Credentials::device(&self.hub.host(), id, key, 3600)
    }

    async fn connect(&self, credentials: &Credentials) -> (MqttClient, ConnectAckReason, bool) {
        MqttClient::connect(self.hub.address(), &self.hub.ca_path(), credentials).await
    }

    async fn connected(&self, id: &str, key: &str) -> MqttClient {
        let (client, code, _) = self.connect(&self.credentials(id, key)).await;
        assert_eq!(code, ConnectAckReason::ConnectionAccepted);
        client
    }

    async fn twin(&self, id: &str) -> Value {
        let reply = self.api.call(Method::GET, &format!("/twins/{id}"), None, None).await;
        assert_eq!(reply.status, 200, "{}", reply.body);
        reply.body
    }

    async fn patch_desired(&self, id: &str, desired: Value) -> Value {
        let reply = self
            .api
            .call(
                Method::PATCH,
                &format!("/twins/{id}"),
                Some(json!({"properties": {"desired": desired}})),
                Some("*"),
            )
            .await;
        assert_eq!(reply.status, 200, "{}", reply.body);
        reply.body
    }
}

fn json_of(bytes: &[u8]) -> Value {
    serde_json::from_slice(bytes).unwrap_or_else(|_| panic!("not JSON: {}", String::from_utf8_lossy(bytes)))
}

async fn eventually(what: &str, mut check: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !check().await {
        assert!(Instant::now() < deadline, "{what}: not within 10 s");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn twin_get_reported_patch_desired_notifications_and_connection_state() {
    // Scenario: a device connects, reads its twin, reports, and hears of desired changes in version
    // order; the back end sees the reported properties and the connection state; bad requests get an
    // error status with IoT Hub's JSON body.
    let fx = Fixture::start(&[]);
    let key = fx.device("dev1").await;
    fx.api
        .call(
            Method::PATCH,
            "/twins/dev1",
            Some(json!({"tags": {"plant": "Redmond43"}})),
            Some("*"),
        )
        .await;
    let (mut device, code, present) = fx.connect(&fx.credentials("dev1", &key)).await;
    assert_eq!((code, present), (ConnectAckReason::ConnectionAccepted, false));
    let granted = device
        .subscribe(&[(RESPONSES, QoS::AtMostOnce), (DESIRED, QoS::AtLeastOnce)])
        .await;
    assert_eq!(
        granted,
        vec![
            SubscribeReturnCode::Success(QoS::AtMostOnce),
            SubscribeReturnCode::Success(QoS::AtLeastOnce)
        ]
    );

    let (status, topic, body) = device.twin("$iothub/twin/GET/?$rid=1a09c44b-37a8", b" ").await;
    assert_eq!(
        (status, topic.as_str()),
        (200, "$iothub/twin/res/200/?$rid=1a09c44b-37a8")
    );
    assert_eq!(
        json_of(&body),
        json!({"desired": {"$version": 1}, "reported": {"$version": 1}}),
        "the device view: no tags, no metadata"
    );

    let (status, topic, body) = device
        .twin(
            "$iothub/twin/PATCH/properties/reported/?$rid=r2",
            br#"{"connectivity":{"type":"cellular"},"fw":"1.0"}"#,
        )
        .await;
    assert_eq!(
        (status, topic.as_str(), body.len()),
        (204, "$iothub/twin/res/204/?$rid=r2&$version=2", 0)
    );
    let (_, _, body) = device
        .twin("$iothub/twin/PATCH/properties/reported/?$rid=r3", br#"{"fw":null}"#)
        .await;
    assert!(body.is_empty());

    let twin = fx.twin("dev1").await;
    assert_eq!(
        twin["properties"]["reported"]["connectivity"],
        json!({"type": "cellular"})
    );
    assert!(twin["properties"]["reported"].get("fw").is_none(), "null deletes");
    assert_eq!(twin["properties"]["reported"]["$version"], 3);
    assert_eq!(twin["connectionState"], "Connected");
    assert_ne!(twin["lastActivityTime"], "0001-01-01T00:00:00Z");
    let device_doc = fx.api.call(Method::GET, "/devices/dev1", None, None).await.body;
    assert_eq!(device_doc["connectionState"], "Connected");

    // Desired changes arrive as patches with their version, in order.
    fx.patch_desired("dev1", json!({"telemetryInterval": 30})).await;
    fx.patch_desired("dev1", json!({"telemetryInterval": null, "mode": "eco"}))
        .await;
    let (topic, body) = device.next_publish().await;
    assert_eq!(topic, "$iothub/twin/PATCH/properties/desired/?$version=2");
    assert_eq!(json_of(&body), json!({"telemetryInterval": 30, "$version": 2}));
    let (topic, body) = device.next_publish().await;
    assert_eq!(topic, "$iothub/twin/PATCH/properties/desired/?$version=3");
    assert_eq!(
        json_of(&body),
        json!({"telemetryInterval": null, "mode": "eco", "$version": 3})
    );

    // Every bad request is answered with a status and {"errorCode", "message"}.
    let too_deep = format!("{}1{}", r#"{"k":"#.repeat(12), "}".repeat(12));
    for (payload, what) in [
        (&b"{not json"[..], "invalid JSON"),
        (&b"[1,2]"[..], "not an object"),
        (too_deep.as_bytes(), "more than 10 levels of objects"),
        (&br#"{"$bad":1}"#[..], "reserved key"),
        (&br#"{"list":[1,2]}"#[..], "arrays"),
    ] {
        let (status, _, body) = device
            .twin("$iothub/twin/PATCH/properties/reported/?$rid=bad", payload)
            .await;
        assert_eq!(status, 400, "{what}: {}", String::from_utf8_lossy(&body));
        let error = json_of(&body);
        assert_eq!(
            (status, error["errorCode"].as_u64()),
            (400, Some(400004)),
            "{what}: {error}"
        );
        assert!(error["message"].as_str().is_some_and(|m| !m.is_empty()), "{what}");
    }
    let (status, _, body) = device.twin("$iothub/twin/DELETE/?$rid=x", b"").await;
    assert_eq!((status, json_of(&body)["errorCode"].as_u64()), (400, Some(400004)));
    assert_eq!(
        fx.twin("dev1").await["properties"]["reported"]["$version"],
        3,
        "refused patches change nothing"
    );

    // Telemetry is accepted and acknowledged.
    let packet_id = device
        .publish("devices/dev1/messages/events/%24.mid=1&a=b", b"hello", QoS::AtLeastOnce)
        .await
        .unwrap();
    assert_eq!(device.receive().await, Some(Packet::PublishAck { packet_id }));

    device.disconnect().await;
    eventually("Disconnected after DISCONNECT", async || {
        fx.twin("dev1").await["connectionState"] == "Disconnected"
    })
    .await;
}

#[tokio::test]
async fn credentials_are_checked_and_refused_with_connack_4_or_5() {
    let fx = Fixture::start(&[]);
    let key = fx.device("dev1").await;
    let other_key = fx.device("dev2").await;
    let host = fx.hub.host();
    let service = fx.hub.connection_string("service");
    let service_key = service.split("SharedAccessKey=").nth(1).unwrap().to_owned();
    let device_policy = fx.hub.connection_string("device");
    let device_policy_key = device_policy.split("SharedAccessKey=").nth(1).unwrap().to_owned();
    let policy_token = |policy: &str, key: &str| {
        let expiry = rest_client::now() + 600;
        twinhub_core::sas::sign(&host, key, Some(policy), expiry).unwrap()
    };

    // Accepted: the device key, and the `device` policy's key for a registered device.
    let (_, code, _) = fx.connect(&fx.credentials("dev1", &key)).await;
    assert_eq!(code, ConnectAckReason::ConnectionAccepted);
    let mut with_policy = fx.credentials("dev2", &other_key);
    with_policy.password = Some(policy_token("device", &device_policy_key));
    assert_eq!(fx.connect(&with_policy).await.1, ConnectAckReason::ConnectionAccepted);

    let mut cases: Vec<(&str, Credentials, ConnectAckReason)> = Vec::new();
    cases.push((
        "another device's key",
        fx.credentials("dev1", &other_key),
        ConnectAckReason::NotAuthorized,
    ));
    cases.push((
        "expired token",
        Credentials::device(&host, "dev1", &key, -10),
        ConnectAckReason::NotAuthorized,
    ));
    cases.push((
        "unknown device",
        fx.credentials("nobody", &key),
        ConnectAckReason::NotAuthorized,
    ));
    let mut for_other = fx.credentials("dev1", &key);
    for_other.password = fx.credentials("dev2", &key).password;
    cases.push(("token for another device", for_other, ConnectAckReason::NotAuthorized));
    let mut wrong_user = fx.credentials("dev1", &key);
    wrong_user.username = Some(format!("{host}/dev2/?api-version=2021-04-12"));
    cases.push((
        "username for another device",
        wrong_user,
        ConnectAckReason::BadUserNameOrPassword,
    ));
    let mut wrong_host = fx.credentials("dev1", &key);
    wrong_host.username = Some("elsewhere.example/dev1/?api-version=2021-04-12".into());
    cases.push((
        "username for another hub",
        wrong_host,
        ConnectAckReason::BadUserNameOrPassword,
    ));
    let mut garbage = fx.credentials("dev1", &key);
    garbage.password = Some("hunter2".into());
    cases.push(("not a SAS token", garbage, ConnectAckReason::BadUserNameOrPassword));
    let mut none = fx.credentials("dev1", &key);
    none.password = None;
    cases.push(("no password", none, ConnectAckReason::NotAuthorized));
    let mut service_policy = fx.credentials("dev1", &key);
    service_policy.password = Some(policy_token("iothubowner", "bm90IHRoZSBrZXk="));
    cases.push((
        "policy token with a wrong key",
        service_policy,
        ConnectAckReason::NotAuthorized,
    ));
    let mut owner_policy = fx.credentials("dev1", &key);
    owner_policy.password = Some(policy_token("service", &service_key));
    cases.push((
        "a policy without DeviceConnect",
        owner_policy,
        ConnectAckReason::NotAuthorized,
    ));
    let mut module = fx.credentials("dev1", &key);
    module.client_id = "dev1/mod1".into();
    module.username = Some(format!("{host}/dev1/mod1/?api-version=2021-04-12"));
    cases.push(("module identity", module, ConnectAckReason::NotAuthorized));
    let mut bad_id = fx.credentials("dev1", &key);
    bad_id.client_id = "a b".into();
    cases.push(("invalid client id", bad_id, ConnectAckReason::IdentifierRejected));

    for (what, credentials, expected) in cases {
        let (mut client, code, present) = fx.connect(&credentials).await;
        assert_eq!((code, present), (expected, false), "{what}");
        client.expect_closed(Duration::from_secs(5)).await;
    }

    // A disabled device is refused, and a connected one is disconnected when it is disabled.
    let mut connected = fx.connected("dev1", &key).await;
    let current = fx.api.call(Method::GET, "/devices/dev1", None, None).await.body;
    let disabled = json!({"deviceId": "dev1", "status": "disabled", "authentication": current["authentication"]});
    let reply = fx
        .api
        .call(Method::PUT, "/devices/dev1", Some(disabled), Some("*"))
        .await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    connected.expect_closed(Duration::from_secs(5)).await;
    let (_, code, _) = fx.connect(&fx.credentials("dev1", &key)).await;
    assert_eq!(code, ConnectAckReason::NotAuthorized, "disabled device");
}

#[tokio::test]
async fn topics_of_other_devices_are_refused_and_never_reach_their_twins() {
    let fx = Fixture::start(&[]);
    let key = fx.device("dev1").await;
    fx.device("dev2").await;
    let mut device = fx.connected("dev1", &key).await;
    // Subscriptions to another device's topics, or wildcards, fail with 0x80; the connection stays.
    let granted = device
        .subscribe(&[
            ("devices/dev2/messages/devicebound/#", QoS::AtLeastOnce),
            ("#", QoS::AtMostOnce),
            ("devices/dev1/messages/devicebound/#", QoS::AtLeastOnce),
        ])
        .await;
    assert_eq!(
        granted,
        vec![
            SubscribeReturnCode::Failure,
            SubscribeReturnCode::Failure,
            SubscribeReturnCode::Success(QoS::AtLeastOnce)
        ]
    );
    // Publishing as another device closes the connection.
    device
        .publish("devices/dev2/messages/events/", b"spoof", QoS::AtLeastOnce)
        .await;
    device.expect_closed(Duration::from_secs(5)).await;
    let mut device = fx.connected("dev1", &key).await;
    device.publish("some/other/topic", b"x", QoS::AtMostOnce).await;
    device.expect_closed(Duration::from_secs(5)).await;
    assert_eq!(fx.twin("dev2").await["properties"]["reported"]["$version"], 1);
}

#[tokio::test]
async fn a_persistent_session_survives_reconnects_and_takeovers_and_catches_up_on_desired() {
    // Scenario: the SDKs never subscribe again after a reconnect (token renewal), so the session must
    // keep subscriptions; a new connection with the same client id closes the old one; and a device
    // that was away while desired changed gets the full desired document once it is back.
    let fx = Fixture::start(&[]);
    let key = fx.device("dev1").await;
    let mut first = fx.connected("dev1", &key).await;
    first
        .subscribe(&[(RESPONSES, QoS::AtLeastOnce), (DESIRED, QoS::AtLeastOnce)])
        .await;

    let (mut second, code, present) = fx.connect(&fx.credentials("dev1", &key)).await;
    assert_eq!((code, present), (ConnectAckReason::ConnectionAccepted, true));
    first.expect_closed(Duration::from_secs(5)).await;
    fx.patch_desired("dev1", json!({"a": 1})).await;
    let (topic, body) = second.next_publish().await;
    assert_eq!(topic, "$iothub/twin/PATCH/properties/desired/?$version=2");
    assert_eq!(json_of(&body), json!({"a": 1, "$version": 2}));
    let (status, _, body) = second.twin("$iothub/twin/GET/?$rid=g", b" ").await;
    assert_eq!((status, json_of(&body)["desired"]["$version"].as_u64()), (200, Some(2)));
    assert_eq!(
        fx.twin("dev1").await["connectionState"],
        "Connected",
        "the old connection closing does not mark a connected device Disconnected"
    );
    second.disconnect().await;
    eventually("Disconnected", async || {
        fx.twin("dev1").await["connectionState"] == "Disconnected"
    })
    .await;

    // Away while desired changed twice: one notification with the whole desired document.
    fx.patch_desired("dev1", json!({"a": 2, "b": {"c": true}})).await;
    fx.patch_desired("dev1", json!({"a": null})).await;
    let (mut back, code, present) = fx.connect(&fx.credentials("dev1", &key)).await;
    assert_eq!((code, present), (ConnectAckReason::ConnectionAccepted, true));
    let (topic, body) = back.next_publish().await;
    assert_eq!(topic, "$iothub/twin/PATCH/properties/desired/?$version=4");
    assert_eq!(json_of(&body), json!({"b": {"c": true}, "$version": 4}));
    // Then live patches again, in order.
    fx.patch_desired("dev1", json!({"d": 5})).await;
    let (topic, _) = back.next_publish().await;
    assert_eq!(topic, "$iothub/twin/PATCH/properties/desired/?$version=5");
    back.disconnect().await;

    // Nothing missed: no catch-up. A clean session forgets the subscriptions.
    let (mut again, _, present) = fx.connect(&fx.credentials("dev1", &key)).await;
    assert!(present);
    let (status, _, _) = again.twin("$iothub/twin/GET/?$rid=after", b" ").await;
    assert_eq!(
        status, 200,
        "the first packet after reconnecting is the GET's reply, not a catch-up"
    );
    again.disconnect().await;
    let mut clean = fx.credentials("dev1", &key);
    clean.clean_session = true;
    let (mut fresh, _, present) = fx.connect(&clean).await;
    assert!(!present);
    fx.patch_desired("dev1", json!({"e": 6})).await;
    let (status, _, body) = fresh.twin("$iothub/twin/GET/?$rid=clean", b" ").await;
    assert_eq!(
        (status, json_of(&body)["desired"]["$version"].as_u64()),
        (200, Some(6)),
        "no desired notification without a subscription"
    );
}

#[tokio::test]
async fn protocol_edges_close_only_the_offending_connection() {
    // Keep-alive, oversized and malformed packets, a second CONNECT, QoS 2, expired tokens, a first
    // packet that is not CONNECT: each closes that connection; a bystander device keeps working.
    let fx = Fixture::start(&[]);
    let key = fx.device("dev1").await;
    let bystander_key = fx.device("bystander").await;
    let mut bystander = fx.connected("bystander", &bystander_key).await;

    // Keep-alive 1 s: closed after 1.5 s of silence, kept by PINGREQ.
    let mut short = fx.credentials("dev1", &key);
    short.keep_alive = 1;
    let (mut pinging, _, _) = fx.connect(&short).await;
    for _ in 0..3 {
        tokio::time::sleep(Duration::from_millis(700)).await;
        pinging.send(Packet::PingRequest).await;
        assert_eq!(pinging.receive().await, Some(Packet::PingResponse));
    }
    let started = Instant::now();
    pinging.expect_closed(Duration::from_secs(5)).await;
    assert!(
        started.elapsed() >= Duration::from_millis(1400),
        "{:?}",
        started.elapsed()
    );

    // A token closes the connection when it expires.
    let (mut expiring, code, _) = fx.connect(&Credentials::device(&fx.hub.host(), "dev1", &key, 2)).await;
    assert_eq!(code, ConnectAckReason::ConnectionAccepted);
    expiring.expect_closed(Duration::from_secs(6)).await;

    // Oversized: a header announcing 1 MiB is refused before the body arrives.
    let mut client = fx.connected("dev1", &key).await;
    client.send_raw(&[0x30, 0x80, 0x80, 0x40]).await;
    client.expect_closed(Duration::from_secs(5)).await;

    // Malformed: a PUBLISH whose topic length runs past the packet.
    let mut client = fx.connected("dev1", &key).await;
    client.send_raw(&[0x30, 0x03, 0x00, 0x09, b'a']).await;
    client.expect_closed(Duration::from_secs(5)).await;

    // A reserved packet type.
    let mut client = fx.connected("dev1", &key).await;
    client.send_raw(&[0xF0, 0x00]).await;
    client.expect_closed(Duration::from_secs(5)).await;

    // A second CONNECT on the same connection.
    let mut client = fx.connected("dev1", &key).await;
    client.send(connect_packet(&fx.credentials("dev1", &key))).await;
    client.expect_closed(Duration::from_secs(5)).await;

    // QoS 2.
    let mut client = fx.connected("dev1", &key).await;
    client
        .publish("devices/dev1/messages/events/", b"x", QoS::ExactlyOnce)
        .await;
    client.expect_closed(Duration::from_secs(5)).await;

    // Not CONNECT first; and MQTT 5, which gets CONNACK 1 (unacceptable protocol version).
    let mut client = MqttClient::open(fx.hub.address(), &fx.hub.ca_path()).await;
    client.send(Packet::PingRequest).await;
    client.expect_closed(Duration::from_secs(5)).await;
    let mut client = MqttClient::open(fx.hub.address(), &fx.hub.ca_path()).await;
    let mut v5 = encode(connect_packet(&fx.credentials("dev1", &key)));
    let level = v5.windows(4).position(|window| window == b"MQTT").unwrap() + 4;
    v5[level] = 5;
    client.send_raw(&v5).await;
    match client.receive().await {
        Some(Packet::ConnectAck(ack)) => {
            assert_eq!(ack.return_code, ConnectAckReason::UnacceptableProtocolVersion)
        }
        other => panic!("expected CONNACK 1, got {other:?}"),
    }

    // The bystander never noticed.
    let (status, _, _) = bystander.twin("$iothub/twin/GET/?$rid=still-here", b" ").await;
    assert_eq!(status, 200);
    let (status, _, _) = bystander
        .twin("$iothub/twin/PATCH/properties/reported/?$rid=p", br#"{"ok":true}"#)
        .await;
    assert_eq!(status, 204);
}

#[tokio::test]
async fn twin_requests_over_the_rate_are_answered_429_and_pipelined_patches_all_land() {
    let fx = Fixture::start(&[
        "--device-twin-requests-per-second",
        "1",
        "--device-twin-request-burst",
        "50",
    ]);
    let key = fx.device("dev1").await;
    let mut device = fx.connected("dev1", &key).await;
    device.subscribe(&[(RESPONSES, QoS::AtLeastOnce)]).await;
    // 40 patches sent back to back, before any reply is read: each answered once, versions unique.
    for n in 0..40 {
        device
            .publish(
                &format!("$iothub/twin/PATCH/properties/reported/?$rid={n}"),
                format!(r#"{{"n{n}":{n}}}"#).as_bytes(),
                QoS::AtLeastOnce,
            )
            .await;
    }
    let mut versions = Vec::new();
    let mut rids = Vec::new();
    while rids.len() < 40 {
        match device.receive().await {
            Some(Packet::PublishAck { .. }) => {}
            Some(Packet::Publish(publish)) => {
                device
                    .send(Packet::PublishAck {
                        packet_id: publish.packet_id.unwrap(),
                    })
                    .await;
                let topic = publish.topic.to_string();
                assert!(topic.starts_with("$iothub/twin/res/204/?$rid="), "{topic}");
                let query = topic.split_once('?').unwrap().1;
                for pair in query.split('&') {
                    if let Some(rid) = pair.strip_prefix("$rid=") {
                        rids.push(rid.parse::<u32>().unwrap());
                    }
                    if let Some(version) = pair.strip_prefix("$version=") {
                        versions.push(version.parse::<u64>().unwrap());
                    }
                }
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    rids.sort_unstable();
    assert_eq!(rids, (0..40).collect::<Vec<_>>());
    versions.sort_unstable();
    assert_eq!(versions, (2..42).collect::<Vec<_>>());
    assert_eq!(fx.twin("dev1").await["properties"]["reported"]["n39"], 39);

    // The burst is spent: GETs beyond it are throttled, with IoT Hub's status and body.
    let mut statuses = Vec::new();
    for n in 0..20 {
        let (status, _, body) = device.twin(&format!("$iothub/twin/GET/?$rid=g{n}"), b" ").await;
        if status == 429 {
            assert_eq!(json_of(&body)["errorCode"], 429001);
        }
        statuses.push(status);
    }
    assert!(statuses.contains(&200) && statuses.contains(&429), "{statuses:?}");
}

#[tokio::test]
async fn subscriptions_survive_a_hub_restart_and_die_with_the_device() {
    // Scenario: the SDKs never subscribe again, so a persistent session's subscriptions are stored
    // before they are acknowledged; after a crash (kill -9) the device reconnects, finds its session,
    // gets the desired document it missed and live patches after it. Deleting the device forgets them.
    let mut fx = Fixture::start(&[]);
    let key = fx.device("dev1").await;
    let mut device = fx.connected("dev1", &key).await;
    device
        .subscribe(&[(RESPONSES, QoS::AtLeastOnce), (DESIRED, QoS::AtLeastOnce)])
        .await;
    fx.restart();
    drop(device);

    fx.patch_desired("dev1", json!({"interval": 10})).await;
    let (mut device, code, present) = fx.connect(&fx.credentials("dev1", &key)).await;
    assert_eq!((code, present), (ConnectAckReason::ConnectionAccepted, true));
    let (topic, body) = device.next_publish().await;
    assert_eq!(topic, "$iothub/twin/PATCH/properties/desired/?$version=2");
    assert_eq!(json_of(&body), json!({"interval": 10, "$version": 2}));
    fx.patch_desired("dev1", json!({"interval": 20})).await;
    let (topic, _) = device.next_publish().await;
    assert_eq!(topic, "$iothub/twin/PATCH/properties/desired/?$version=3");
    let (status, _, _) = device.twin("$iothub/twin/GET/?$rid=1", b" ").await;
    assert_eq!(status, 200);

    // Unsubscribing is stored too.
    device
        .send(Packet::Unsubscribe {
            packet_id: std::num::NonZeroU16::new(99).unwrap(),
            topic_filters: vec![DESIRED.into()],
        })
        .await;
    assert!(matches!(device.receive().await, Some(Packet::UnsubscribeAck { .. })));
    fx.restart();
    fx.patch_desired("dev1", json!({"interval": 30})).await;
    let (mut device, _, present) = fx.connect(&fx.credentials("dev1", &key)).await;
    assert!(present);
    let (status, _, body) = device.twin("$iothub/twin/GET/?$rid=2", b" ").await;
    assert_eq!(
        (status, json_of(&body)["desired"]["$version"].as_u64()),
        (200, Some(4)),
        "no desired notification: the device unsubscribed"
    );
    device.disconnect().await;

    let deleted = fx.api.call(Method::DELETE, "/devices/dev1", None, Some("*")).await;
    assert_eq!(deleted.status, 204);
    let key = fx.device("dev1").await;
    let (_, code, present) = fx.connect(&fx.credentials("dev1", &key)).await;
    assert_eq!((code, present), (ConnectAckReason::ConnectionAccepted, false));
    fx.restart();
    let (_, _, present) = fx.connect(&fx.credentials("dev1", &key)).await;
    assert!(
        !present,
        "the deleted device's session did not come back with the restart"
    );
}

#[tokio::test]
async fn the_websocket_endpoint_speaks_mqtt_and_refuses_other_subprotocols() {
    // The SDKs' WebSocket transports are covered by the SDK tests; here the upgrade itself: the
    // subprotocol `mqtt` is echoed, anything else is refused before upgrading.
    let fx = Fixture::start(&[]);
    let url = format!("https://{}/$iothub/websocket", fx.hub.host());
    let upgrade = |protocol: &'static str| {
        fx.api
            .http
            .get(&url)
            .header("connection", "Upgrade")
            .header("upgrade", "websocket")
            .header("sec-websocket-version", "13")
            .header("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ==")
            .header("sec-websocket-protocol", protocol)
            .send()
    };
    let accepted = upgrade("mqtt").await.unwrap();
    assert_eq!(accepted.status(), 101);
    assert_eq!(accepted.headers()["sec-websocket-protocol"], "mqtt");
    let refused = upgrade("chat").await.unwrap();
    assert_eq!(refused.status(), 400);
    let amqp = upgrade("AMQPWSB10").await.unwrap();
    assert_eq!(amqp.status(), 101);
    assert_eq!(amqp.headers()["sec-websocket-protocol"], "AMQPWSB10");
    let plain = fx.api.http.get(&url).send().await.unwrap();
    assert!(plain.status().is_client_error(), "{}", plain.status());
}

#[tokio::test]
async fn a_burst_of_desired_changes_arrives_in_version_order_ending_at_the_last() {
    // 16 back-end clients change one device's desired properties 200 times at once. The device may
    // receive patches, or (if it fell behind) the full document, but versions only rise and the last
    // one it gets is the twin's final desired version, with the final content.
    let fx = Fixture::start(&[]);
    let key = fx.device("dev1").await;
    let mut device = fx.connected("dev1", &key).await;
    device.subscribe(&[(DESIRED, QoS::AtLeastOnce)]).await;
    let mut writers = Vec::new();
    for writer in 0..16 {
        let api = Service::new(&fx.hub.owner_connection_string(), &fx.hub.ca_path());
        writers.push(tokio::spawn(async move {
            for n in 0..13 {
                let body = json!({"properties": {"desired": {format!("w{writer}"): n}}});
                let reply = api.call(Method::PATCH, "/twins/dev1", Some(body), Some("*")).await;
                assert_eq!(reply.status, 200, "{}", reply.body);
            }
        }));
    }
    for writer in writers {
        writer.await.unwrap();
    }
    let twin = fx.twin("dev1").await;
    let final_version = twin["properties"]["desired"]["$version"].as_u64().unwrap();
    assert_eq!(final_version, 1 + 16 * 13);
    let mut seen = serde_json::Map::new();
    let mut last = 1;
    while last < final_version {
        let (topic, body) = device.next_publish().await;
        let version: u64 = topic.rsplit('=').next().unwrap().parse().unwrap();
        assert!(version > last, "version {version} after {last}");
        let patch = json_of(&body);
        assert_eq!(patch["$version"].as_u64(), Some(version));
        for (key, value) in patch.as_object().unwrap() {
            seen.insert(key.clone(), value.clone());
        }
        last = version;
    }
    for writer in 0..16 {
        assert_eq!(
            seen[&format!("w{writer}")],
            12,
            "the device ends with every writer's last value"
        );
    }
}

#[tokio::test]
async fn a_change_between_the_twin_get_and_the_desired_subscription_is_not_lost() {
    // Scenario: the SDKs' start-up order is open, twin GET, then SUBSCRIBE to desired patches when the
    // app adds its listener. A back-end change committed after the GET was answered and before the
    // subscription was acknowledged reaches the device as the whole desired document, right after the
    // SUBACK. Clearing the whole desired section then reaches it as a null for every property.
    let fx = Fixture::start(&[]);
    let key = fx.device("dev1").await;
    fx.patch_desired("dev1", json!({"old": 1, "kept": {"a": 1}})).await;
    let mut device = fx.connected("dev1", &key).await;
    device.subscribe(&[(RESPONSES, QoS::AtMostOnce)]).await;
    let (_, _, body) = device.twin("$iothub/twin/GET/?$rid=get", b"").await;
    assert_eq!(json_of(&body)["desired"]["$version"], 2);

    fx.patch_desired("dev1", json!({"old": null, "new": true})).await;
    let granted = device.subscribe(&[(DESIRED, QoS::AtLeastOnce)]).await;
    assert_eq!(granted, vec![SubscribeReturnCode::Success(QoS::AtLeastOnce)]);
    let (topic, body) = device.next_publish().await;
    assert_eq!(topic, "$iothub/twin/PATCH/properties/desired/?$version=3");
    assert_eq!(json_of(&body), json!({"kept": {"a": 1}, "new": true, "$version": 3}));

    // `null` for the whole section, without If-Match: every property removed, the device told of each.
    let reply = fx
        .api
        .call(
            Method::PATCH,
            "/twins/dev1",
            Some(json!({"properties": {"desired": null}})),
            None,
        )
        .await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    let (topic, body) = device.next_publish().await;
    assert_eq!(topic, "$iothub/twin/PATCH/properties/desired/?$version=4");
    assert_eq!(json_of(&body), json!({"kept": null, "new": null, "$version": 4}));
    let desired = &fx.twin("dev1").await["properties"]["desired"];
    assert_eq!((desired.get("kept"), desired["$version"].as_u64()), (None, Some(4)));

    // A device cannot clear its reported properties that way.
    let (status, _, body) = device
        .twin("$iothub/twin/PATCH/properties/reported/?$rid=null", b"null")
        .await;
    let error = json_of(&body);
    assert_eq!((status, error["errorCode"].as_u64()), (400, Some(400004)), "{error}");
    assert!(error["message"]
        .as_str()
        .unwrap_or_default()
        .contains("cannot be cleared with null"));

    // A device whose session is new and that never read its twin starts where it subscribed.
    let other_key = fx.device("dev2").await;
    fx.patch_desired("dev2", json!({"x": 1})).await;
    let mut fresh = fx.connected("dev2", &other_key).await;
    fresh
        .subscribe(&[(RESPONSES, QoS::AtMostOnce), (DESIRED, QoS::AtLeastOnce)])
        .await;
    fx.patch_desired("dev2", json!({"x": 2})).await;
    let (topic, body) = fresh.next_publish().await;
    assert_eq!(topic, "$iothub/twin/PATCH/properties/desired/?$version=3");
    assert_eq!(json_of(&body), json!({"x": 2, "$version": 3}));
}
