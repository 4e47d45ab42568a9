//! `twinhub c2d send` against a real hub process: the CLI sends over AMQP as a back end (CBS put-token of a
//! service token, the `/messages/devicebound` link), and a raw MQTT device takes the message on
//! `devices/{id}/messages/devicebound/{bag}`. What users see: the body and every property as sent, the
//! message gone from the queue once the device PUBACKs (`cloudToDeviceMessageCount`), and the hub's
//! refusals (an unknown device, a full queue of 50) as the CLI's error and exit status.

mod mqtt_client;
mod rest_client;
mod support;

use mqtt_client::{Credentials, MqttClient};
use reqwest::Method;
use rest_client::Service;
use rmqtt_codec::types::QoS;
use rmqtt_codec::v3::{ConnectAckReason, Packet, SubscribeReturnCode};
use std::process::Output;
use std::time::{Duration, Instant};
use support::TestHub;

/// Runs `twinhub c2d send <args> --data-dir <hub's>` off the test's runtime.
async fn c2d_send(hub: &TestHub, args: &[&str]) -> Output {
    let args: Vec<String> = args.iter().map(|arg| (*arg).to_owned()).collect();
    let data_dir = hub.data_dir().to_path_buf();
    tokio::task::spawn_blocking(move || {
        std::process::Command::new(env!("CARGO_BIN_EXE_twinhub"))
            .args(["c2d", "send"])
            .args(&args)
            .arg("--data-dir")
            .arg(data_dir)
            .output()
            .expect("the CLI runs")
    })
    .await
    .unwrap()
}

/// The device's `cloudToDeviceMessageCount`, from `GET /devices/{id}`.
async fn message_count(api: &Service, id: &str) -> u64 {
    let reply = api.call(Method::GET, &format!("/devices/{id}"), None, None).await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    reply.body["cloudToDeviceMessageCount"]
        .as_u64()
        .unwrap_or_else(|| panic!("no cloudToDeviceMessageCount in {}", reply.body))
}

/// Waits (up to 10 s) for the device's `cloudToDeviceMessageCount` to be `expected`.
async fn expect_message_count(api: &Service, id: &str, expected: u64) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let count = message_count(api, id).await;
        if count == expected {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "cloudToDeviceMessageCount of {id} stayed {count}, expected {expected}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut index = 0;
    while index < bytes.len() {
        if bytes[index] == b'%' {
            if let Some(byte) = text
                .get(index + 1..index + 3)
                .and_then(|hex| u8::from_str_radix(hex, 16).ok())
            {
                out.push(byte);
                index += 3;
                continue;
            }
        }
        out.push(bytes[index]);
        index += 1;
    }
    String::from_utf8(out).expect("UTF-8 after decoding")
}

/// A property bag's pairs, decoded, in order.
fn bag_pairs(bag: &str) -> Vec<(String, String)> {
    bag.split('&')
        .filter(|pair| !pair.is_empty())
        .map(|pair| {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            (percent_decode(key), percent_decode(value))
        })
        .collect()
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

#[tokio::test]
async fn the_cli_sends_a_message_that_a_device_takes_over_mqtt_and_completes_with_its_puback() {
    let hub = TestHub::start();
    let api = Service::new(&hub.owner_connection_string(), &hub.ca_path());
    // The id has a character the CLI percent-encodes in `to`.
    let id = "cli@dev.1";
    let key = api.register_device(id).await;
    let credentials = Credentials::device(&hub.host(), id, &key, 3600);
    let (mut device, code, _) = MqttClient::connect(hub.address(), &hub.ca_path(), &credentials).await;
    assert_eq!(code, ConnectAckReason::ConnectionAccepted);
    let filter = format!("devices/{id}/messages/devicebound/#");
    assert_eq!(
        device.subscribe(&[(filter.as_str(), QoS::AtLeastOnce)]).await,
        vec![SubscribeReturnCode::Success(QoS::AtLeastOnce)]
    );

    let body = r#"{"command":"open","n":1}"#;
    let output = c2d_send(
        &hub,
        &[
            id,
            body,
            "--message-id",
            "msg-1",
            "--correlation-id",
            "corr-1",
            "--ack",
            "full",
            "--property",
            "color=blue",
            "--property",
            "note=a b&c=d",
        ],
    )
    .await;
    assert!(output.status.success(), "{}", stderr(&output));
    assert_eq!(String::from_utf8_lossy(&output.stdout).trim(), format!("sent to {id}"));

    let Some(Packet::Publish(publish)) = device.receive().await else {
        panic!("expected the cloud-to-device PUBLISH");
    };
    assert_eq!(publish.qos, QoS::AtLeastOnce);
    let packet_id = publish.packet_id.expect("a QoS 1 packet id");
    let prefix = format!("devices/{id}/messages/devicebound/");
    let bag = publish
        .topic
        .strip_prefix(prefix.as_str())
        .unwrap_or_else(|| panic!("not the devicebound topic: {}", publish.topic));
    let pairs = bag_pairs(bag);
    let get = |key: &str| {
        pairs
            .iter()
            .find(|(name, _)| name == key)
            .map(|(_, value)| value.as_str())
            .unwrap_or_else(|| panic!("no {key} in the bag {bag}"))
    };
    assert_eq!(get("$.mid"), "msg-1");
    assert_eq!(get("$.cid"), "corr-1");
    assert_eq!(get("$.to"), format!("/devices/{id}/messages/devicebound"));
    assert_eq!(get("iothub-ack"), "full");
    assert_eq!(get("color"), "blue");
    assert_eq!(get("note"), "a b&c=d");
    assert_eq!(publish.payload.as_ref(), body.as_bytes());

    // Until the device acknowledges it, the message is still the device's.
    assert_eq!(message_count(&api, id).await, 1);
    device.send(Packet::PublishAck { packet_id }).await;
    expect_message_count(&api, id, 0).await;
    device.disconnect().await;
}

#[tokio::test]
async fn the_cli_reports_the_hubs_refusals_an_unknown_device_and_a_full_queue() {
    let hub = TestHub::start();
    let api = Service::new(&hub.owner_connection_string(), &hub.ca_path());

    let unknown = c2d_send(&hub, &["nobody", "hello"]).await;
    assert!(!unknown.status.success(), "sending to an unknown device succeeded");
    let error = stderr(&unknown);
    assert!(error.contains("amqp:not-found"), "{error}");
    assert!(error.contains("nobody"), "{error}");
    assert!(
        unknown.stdout.is_empty(),
        "{}",
        String::from_utf8_lossy(&unknown.stdout)
    );

    // A device that never connects: its queue takes 50 messages, the most IoT Hub allows.
    api.register_device("offline").await;
    for n in 1..=50 {
        let body = format!("message {n}");
        let output = c2d_send(&hub, &["offline", &body]).await;
        assert!(output.status.success(), "send {n}: {}", stderr(&output));
    }
    let full = c2d_send(&hub, &["offline", "one too many"]).await;
    assert!(!full.status.success(), "the 51st message was taken");
    let error = stderr(&full);
    assert!(error.contains("amqp:resource-limit-exceeded"), "{error}");
    assert!(error.contains("50 messages"), "{error}");
    assert_eq!(message_count(&api, "offline").await, 50);
}

/// The next cloud-to-device PUBLISH: its message id (`$.mid`) and packet id.
async fn next_message(device: &mut MqttClient) -> (String, std::num::NonZeroU16) {
    let received = tokio::time::timeout(Duration::from_secs(10), device.receive())
        .await
        .expect("a message within 10 s");
    let Some(Packet::Publish(publish)) = received else {
        panic!("expected a cloud-to-device PUBLISH, got {received:?}");
    };
    let bag = publish.topic.rsplit('/').next().unwrap_or_default().to_owned();
    let message_id = bag_pairs(&bag)
        .into_iter()
        .find(|(name, _)| name == "$.mid")
        .map(|(_, value)| value)
        .unwrap_or_else(|| panic!("no $.mid in {}", publish.topic));
    (message_id, publish.packet_id.expect("QoS 1"))
}

#[tokio::test]
async fn kill_9_between_send_and_delivery_loses_no_accepted_message() {
    let mut hub = TestHub::start();
    let api = Service::new(&hub.owner_connection_string(), &hub.ca_path());
    let key = api.register_device("durable").await;
    for n in 0..10 {
        let output = c2d_send(&hub, &["durable", "body", "--message-id", &format!("m{n}")]).await;
        assert!(output.status.success(), "{}", stderr(&output));
    }
    // The device takes two: it acknowledges the first and is killed with the hub before acknowledging the
    // second.
    // A persistent session: after the restart the hub restores its subscription and starts sending
    // without the device subscribing again, as the SDKs expect.
    async fn connect(hub: &TestHub, key: &str) -> MqttClient {
        let credentials = Credentials::device(&hub.host(), "durable", key, 3600);
        let (device, code, _) = MqttClient::connect(hub.address(), &hub.ca_path(), &credentials).await;
        assert_eq!(code, ConnectAckReason::ConnectionAccepted);
        device
    }
    let mut device = connect(&hub, &key).await;
    device
        .subscribe(&[("devices/durable/messages/devicebound/#", QoS::AtLeastOnce)])
        .await;
    let (first, packet_id) = next_message(&mut device).await;
    assert_eq!(first, "m0");
    device.send(Packet::PublishAck { packet_id }).await;
    expect_message_count(&api, "durable", 9).await;
    let (second, _) = next_message(&mut device).await;
    assert_eq!(second, "m1");
    hub.kill9();
    hub.restart();

    let api = Service::new(&hub.owner_connection_string(), &hub.ca_path());
    assert_eq!(
        message_count(&api, "durable").await,
        9,
        "every unacknowledged message is still queued"
    );
    let mut device = connect(&hub, &key).await;
    for n in 1..10 {
        let (message_id, packet_id) = next_message(&mut device).await;
        assert_eq!(message_id, format!("m{n}"), "in order, the unacknowledged one first");
        device.send(Packet::PublishAck { packet_id }).await;
    }
    expect_message_count(&api, "durable", 0).await;
}
