//! Device-to-cloud telemetry against a real hub process: devices send over MQTT (raw packets) and HTTPS,
//! and a back end reads the events from the Event Hubs-compatible endpoint with an AMQP client
//! (fe2o3-amqp), the way the Event Hubs SDKs do: CBS put-token with an Event Hubs token, `$management`
//! READ, partition receivers with a selector filter and owner levels. Covers what a consumer sees of an
//! event, durability across SIGKILL, refused input leaving nothing behind, and the endpoint's refusals.
//! The official SDKs against the same endpoint are in the SDK tests.

mod event_hubs_client;
mod mqtt_client;
mod rest_client;
mod support;

use event_hubs_client::*;

use bytes::Bytes;
use bytestring::ByteString;
use fe2o3_amqp::types::definitions::{AmqpError, ErrorCondition, LinkError};
use fe2o3_amqp::types::messaging::MessageId;
use fe2o3_amqp::types::primitives::{SimpleValue, Symbol, Value};
use futures_util::{SinkExt, StreamExt};
use mqtt_client::{Credentials, MqttClient};
use rest_client::{Reply, Service};
use rmqtt_codec::types::{Publish, QoS};
use rmqtt_codec::v3::{Codec, ConnectAckReason, Packet};
use std::collections::{BTreeMap, VecDeque};
use std::num::NonZeroU16;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use support::TestHub;
use tokio_util::codec::{FramedRead, FramedWrite};

// ---------------------------------------------------------------------------------------------------
// Devices

fn device_token(host: &str, id: &str, key: &str) -> String {
    twinhub_core::sas::sign(&format!("{host}/devices/{id}"), key, None, rest_client::now() + 600).unwrap()
}

/// `POST /devices/{id}/messages/events` as the HTTPS device transport sends it.
async fn post_events(
    api: &Service,
    host: &str,
    id: &str,
    token: &str,
    content_type: &str,
    headers: &[(&str, &str)],
    body: Vec<u8>,
) -> Reply {
    let url = format!("https://{host}/devices/{id}/messages/events?api-version=2021-04-12");
    let mut request = api
        .http
        .post(url)
        .header("Authorization", token)
        .header("Content-Type", content_type)
        .body(body);
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let response = request.send().await.expect("request sent");
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    let text = response.text().await.unwrap();
    let body = serde_json::from_str(&text).unwrap_or(serde_json::Value::String(text));
    Reply { status, headers, body }
}

type Tls = tokio_rustls::client::TlsStream<tokio::net::TcpStream>;

/// A raw MQTT device whose halves are apart and whose failures are answers, not panics: for pipelined
/// publishes, and for connections the hub is expected to drop mid-write.
struct Device {
    reader: FramedRead<tokio::io::ReadHalf<Tls>, Codec>,
    writer: FramedWrite<tokio::io::WriteHalf<Tls>, Codec>,
}

impl Device {
    async fn connect(hub: &TestHub, ca: &std::path::Path, id: &str, key: &str) -> Device {
        let tls = mqtt_client::tls_connect(hub.address(), support::MQTT_PORT, ca).await;
        let (reader, writer) = tokio::io::split(tls);
        let mut device = Device {
            reader: FramedRead::new(reader, Codec::default()),
            writer: FramedWrite::new(writer, Codec::default()),
        };
        let credentials = Credentials::device(&hub.host(), id, key, 600);
        device
            .writer
            .send(mqtt_client::connect_packet(&credentials))
            .await
            .expect("CONNECT");
        match device.next().await {
            Some(Packet::ConnectAck(ack)) => assert_eq!(ack.return_code, ConnectAckReason::ConnectionAccepted),
            other => panic!("expected CONNACK, got {other:?}"),
        }
        device
    }

    /// Sends a PUBLISH at QoS 1 (`packet_id`) or 0; false when the connection is gone.
    async fn publish(&mut self, topic: &str, payload: Bytes, packet_id: Option<NonZeroU16>) -> bool {
        let qos = if packet_id.is_some() {
            QoS::AtLeastOnce
        } else {
            QoS::AtMostOnce
        };
        let publish = Packet::Publish(Box::new(Publish {
            dup: false,
            retain: false,
            qos,
            topic: ByteString::from(topic.to_owned()),
            packet_id,
            payload,
            properties: None,
        }));
        self.writer.send(publish).await.is_ok()
    }

    /// The next packet; None when the connection closed or failed.
    async fn next(&mut self) -> Option<Packet> {
        match tokio::time::timeout(RECEIVE_TIMEOUT, self.reader.next()).await {
            Ok(Some(Ok((packet, _)))) => Some(packet),
            Ok(_) => None,
            Err(_) => panic!("no packet from the hub within {RECEIVE_TIMEOUT:?}"),
        }
    }
}

fn events_topic(id: &str, bag: &str) -> String {
    format!("devices/{id}/messages/events/{bag}")
}

// ---------------------------------------------------------------------------------------------------

#[tokio::test]
async fn an_mqtt_event_reaches_event_hubs_consumers_with_its_properties_and_annotations() {
    // Scenario:
    // - a device PUBLISHes at QoS 1 on its events topic with a property bag (message id, correlation id,
    //   content type and encoding, an application property) and gets its PUBACK;
    // - a back end with an Event Hubs token of the `service` policy READs the event hub from
    //   `$management` (four partitions, "0" to "3"), attaches a receiver on each partition from the start,
    //   and receives the event once, on the device's partition, with its body, properties and the
    //   annotations of Event Hubs (sequence number, offset, enqueued time) and of IoT Hub.
    let hub = TestHub::start();
    let ca = hub.ca_path();
    let api = Service::new(&hub.owner_connection_string(), &ca);
    let host = hub.host();
    let key = api.register_device("dev1").await;

    let (mut device, code, _) =
        MqttClient::connect(hub.address(), &ca, &Credentials::device(&host, "dev1", &key, 600)).await;
    assert_eq!(code, ConnectAckReason::ConnectionAccepted);
    let bag = "%24.mid=m1&%24.cid=c1&%24.ct=application%2Fjson&%24.ce=utf-8&alert=true";
    let payload = br#"{"temperature":21.5}"#;
    let sent_at = rest_client::now() as i64;
    let packet_id = device
        .publish(&events_topic("dev1", bag), payload, QoS::AtLeastOnce)
        .await
        .unwrap();
    match device.receive().await {
        Some(Packet::PublishAck { packet_id: acked }) => assert_eq!(acked, packet_id),
        other => panic!("expected PUBACK, got {other:?}"),
    }

    let mut consumer = Consumer::service(&hub).await;
    let (status, event_hub) = consumer.read("com.microsoft:eventhub", None).await;
    assert_eq!(status, 200, "{event_hub:?}");
    assert_eq!(event_hub["name"], Value::String(consumer.hub_name.clone()));
    assert_eq!(
        consumer.hub_name,
        host.split('.').next().unwrap(),
        "the hub name is the host's first label"
    );
    assert_eq!(event_hub["partition_count"], Value::Int(4));
    assert_eq!(
        event_hub["partition_ids"],
        Value::List(["0", "1", "2", "3"].map(|id| Value::String(id.into())).to_vec())
    );

    // One receiver per partition, from the start: the event arrives on the device's partition only.
    let mut receivers = Vec::new();
    for partition in 0..PARTITION_COUNT {
        receivers.push(
            consumer
                .receiver(&partition.to_string(), "amqp.annotation.x-opt-offset > '-1'", None)
                .await,
        );
    }
    let home = partition("dev1");
    let event = next_event(&mut receivers[home as usize]).await;
    for other in (0..PARTITION_COUNT).filter(|p| *p != home) {
        assert_eq!(consumer.partition_state(other).await, (-1, true), "partition {other}");
    }
    assert_eq!(consumer.partition_state(home).await, (0, false));

    assert_eq!(body(&event), payload);
    let properties = event.properties.clone().expect("properties");
    assert_eq!(properties.message_id, Some(MessageId::String("m1".into())));
    assert_eq!(properties.correlation_id, Some(MessageId::String("c1".into())));
    assert_eq!(properties.content_type, Some(Symbol::from("application/json")));
    assert_eq!(properties.content_encoding, Some(Symbol::from("utf-8")));
    assert_eq!(
        application_property(&event, "alert"),
        Some(SimpleValue::String("true".into()))
    );
    assert_eq!(annotation(&event, "x-opt-sequence-number"), Some(Value::Long(0)));
    assert_eq!(annotation(&event, "x-opt-offset"), Some(Value::String("0".into())));
    match annotation(&event, "x-opt-enqueued-time") {
        Some(Value::Timestamp(time)) => {
            let seconds = time.milliseconds() / 1000;
            assert!(
                (sent_at - 5..=sent_at + 60).contains(&seconds),
                "enqueued at {seconds}, sent at {sent_at}"
            );
        }
        other => panic!("x-opt-enqueued-time {other:?}"),
    }
    assert_eq!(
        annotation(&event, "iothub-connection-device-id"),
        Some(Value::String("dev1".into()))
    );
    assert_eq!(
        annotation(&event, "iothub-message-source"),
        Some(Value::String("Telemetry".into()))
    );

    device.disconnect().await;
    consumer.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kill_9_during_mqtt_telemetry_loses_no_acknowledged_event() {
    // Scenario:
    // - 16 devices publish continuously at QoS 1, up to 16 unacknowledged each, every payload naming its
    //   device and a counter that rises by one;
    // - the hub is killed with SIGKILL once 800 PUBACKs have come back, and restarted;
    // - a consumer reads every partition from the start: every acknowledged event is there, each
    //   device's events are in its partition with strictly increasing counters, and each partition's
    //   sequence numbers run from 0 with no gap.
    const DEVICES: usize = 16;
    const IN_FLIGHT_MAX: usize = 16;
    const ACKNOWLEDGED_BEFORE_KILL: u64 = 800;
    let mut hub = TestHub::start();
    let ca = hub.ca_path();
    let api = Service::new(&hub.owner_connection_string(), &ca);
    let ids: Vec<String> = (0..DEVICES).map(|n| format!("load{n}")).collect();
    let keys = futures_util::future::join_all(ids.iter().map(|id| api.register_device(id))).await;

    let acknowledged_total = Arc::new(AtomicU64::new(0));
    let acknowledged = Arc::new(Mutex::new(vec![Vec::<u64>::new(); DEVICES]));
    let mut devices = Vec::new();
    for (index, (id, key)) in ids.iter().zip(&keys).enumerate() {
        let mut device = Device::connect(&hub, &ca, id, key).await;
        let (id, acknowledged, acknowledged_total) =
            (id.clone(), Arc::clone(&acknowledged), Arc::clone(&acknowledged_total));
        devices.push(tokio::spawn(async move {
            let topic = events_topic(&id, "");
            let mut in_flight: VecDeque<(NonZeroU16, u64)> = VecDeque::new();
            let mut next = 0u64;
            'load: loop {
                while in_flight.len() < IN_FLIGHT_MAX {
                    let packet_id = NonZeroU16::new((next % 60_000 + 1) as u16).unwrap();
                    let payload = Bytes::from(format!(r#"{{"device":"{id}","n":{next}}}"#));
                    if !device.publish(&topic, payload, Some(packet_id)).await {
                        break 'load;
                    }
                    in_flight.push_back((packet_id, next));
                    next += 1;
                }
                match device.next().await {
                    Some(Packet::PublishAck { packet_id }) => {
                        let position = in_flight
                            .iter()
                            .position(|(id, _)| *id == packet_id)
                            .unwrap_or_else(|| panic!("a PUBACK for {packet_id} that was not in flight"));
                        let (_, n) = in_flight.remove(position).unwrap();
                        acknowledged.lock().unwrap()[index].push(n);
                        acknowledged_total.fetch_add(1, Ordering::Relaxed);
                    }
                    // The hub is gone.
                    None => break,
                    Some(other) => panic!("expected PUBACK, got {other:?}"),
                }
            }
            next
        }));
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while acknowledged_total.load(Ordering::Relaxed) < ACKNOWLEDGED_BEFORE_KILL {
        assert!(
            tokio::time::Instant::now() < deadline,
            "800 PUBACKs within 30 s:\n{}",
            hub.log()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    hub.kill9();
    let mut sent = 0;
    for device in devices {
        sent += device.await.unwrap();
    }
    let acknowledged = acknowledged.lock().unwrap().clone();
    let acknowledged_count: usize = acknowledged.iter().map(Vec::len).sum();
    assert!(
        (acknowledged_count as u64) < sent,
        "the kill came mid-load: {sent} sent, {acknowledged_count} acknowledged"
    );

    hub.restart();
    let mut consumer = Consumer::service(&hub).await;
    let partitions = consumer.read_everything().await;
    consumer.close().await;
    assert_contiguous(&partitions);
    let mut read: BTreeMap<String, Vec<u64>> = BTreeMap::new();
    for (partition_id, events) in &partitions {
        for event in events {
            let device = device_of(event);
            assert_eq!(
                partition(&device),
                *partition_id,
                "{device}'s events stay in its partition"
            );
            let payload: serde_json::Value = serde_json::from_slice(&body(event)).unwrap();
            assert_eq!(payload["device"], device.as_str());
            read.entry(device).or_default().push(payload["n"].as_u64().unwrap());
        }
    }
    let mut stored = 0;
    for (id, acknowledged) in ids.iter().zip(&acknowledged) {
        let counters = read.get(id).cloned().unwrap_or_default();
        assert!(
            counters.windows(2).all(|pair| pair[0] < pair[1]),
            "{id}: counters strictly increasing, got {counters:?}"
        );
        for n in acknowledged {
            assert!(
                counters.binary_search(n).is_ok(),
                "{id}: acknowledged {n} is missing after the restart"
            );
        }
        stored += counters.len();
    }
    println!("kill -9: {sent} sent, {acknowledged_count} acknowledged, {stored} readable after the restart");
}

#[tokio::test]
async fn refused_telemetry_closes_the_connection_or_answers_an_error_and_stores_nothing() {
    // Scenario:
    // - over MQTT, a malformed property bag (`%ff=1`), a 257 KB message (over IoT Hub's 256 KB) and a
    //   300 KB one (over the packet limit too) each close the device's connection, with no PUBACK;
    // - over HTTPS, an oversized message and an oversized batch are answered 413 with IoT Hub's error
    //   (`iothub-errorcode: MessageTooLarge`), a batch that is not JSON 400, another device's token 401;
    // - then one good event: it is the first of its partition (sequence number 0) and every other
    //   partition is still empty, so none of the refused ones was stored.
    let hub = TestHub::start();
    let ca = hub.ca_path();
    let api = Service::new(&hub.owner_connection_string(), &ca);
    let host = hub.host();
    let key = api.register_device("dev1").await;
    let other_key = api.register_device("dev2").await;

    let topic = events_topic("dev1", "");
    for (what, topic, payload) in [
        ("a malformed bag", events_topic("dev1", "%ff=1"), vec![b'x'; 10]),
        ("a 257 KB message", topic.clone(), vec![b'x'; 257 * 1024]),
        ("a 300 KB message", topic.clone(), vec![b'x'; 300 * 1024]),
    ] {
        let mut device = Device::connect(&hub, &ca, "dev1", &key).await;
        // The hub may close while the packet is still being written: a failed write is an answer too.
        device.publish(&topic, Bytes::from(payload), NonZeroU16::new(1)).await;
        match tokio::time::timeout(Duration::from_secs(5), device.reader.next()).await {
            Ok(None) | Ok(Some(Err(_))) => {}
            Ok(Some(Ok((packet, _)))) => panic!("{what}: expected the hub to close, got {packet:?}"),
            Err(_) => panic!("{what}: the hub did not close the connection within 5 s"),
        }
    }

    let token = device_token(&host, "dev1", &key);
    let reply = post_events(
        &api,
        &host,
        "dev1",
        &token,
        "application/octet-stream",
        &[],
        vec![b'x'; 300 * 1024],
    )
    .await;
    assert_eq!(reply.status, 413, "{}", reply.body);
    assert_eq!(reply.error_code(), "MessageTooLarge");
    let item = serde_json::json!({"body": base64(&[b'x'; 100 * 1024]), "properties": {"iothub-app-k": "v"}});
    let batch = serde_json::json!([item, item, item]).to_string().into_bytes();
    let reply = post_events(
        &api,
        &host,
        "dev1",
        &token,
        "application/vnd.microsoft.iothub.json",
        &[],
        batch,
    )
    .await;
    assert_eq!(reply.status, 413, "a batch over 256 KB in all: {}", reply.body);
    assert_eq!(reply.error_code(), "MessageTooLarge");
    let reply = post_events(
        &api,
        &host,
        "dev1",
        &token,
        "application/vnd.microsoft.iothub.json",
        &[],
        b"not json".to_vec(),
    )
    .await;
    assert_eq!(reply.status, 400, "{}", reply.body);
    let foreign = device_token(&host, "dev2", &other_key);
    let reply = post_events(&api, &host, "dev1", &foreign, "application/json", &[], b"{}".to_vec()).await;
    assert_eq!(reply.status, 401, "{}", reply.body);

    // A good event after all of them is the first the hub stored.
    let (mut device, _, _) =
        MqttClient::connect(hub.address(), &ca, &Credentials::device(&host, "dev1", &key, 600)).await;
    device.publish(&topic, b"good", QoS::AtLeastOnce).await;
    assert!(matches!(device.receive().await, Some(Packet::PublishAck { .. })));
    let mut consumer = Consumer::service(&hub).await;
    let partitions = consumer.read_everything().await;
    let events: Vec<_> = partitions.values().flatten().collect();
    assert_eq!(events.len(), 1, "only the good event is stored");
    assert_eq!(body(events[0]), b"good");
    assert_eq!(sequence_number(events[0]), 0);
    assert_eq!(partitions[&partition("dev1")].len(), 1);
    consumer.close().await;
}

#[tokio::test]
async fn the_event_hubs_endpoint_refuses_bad_tokens_positions_partitions_and_lower_owner_levels() {
    // Scenario:
    // - CBS put-token with an Event Hubs token of the `device` policy (no ServiceConnect): 401, and a
    //   receiver on that connection (no valid token) is detached with amqp:unauthorized-access;
    // - with a `service` token: a position past the end (`x-opt-sequence-number > '100'` on an empty
    //   partition) and a partition that does not exist ("9") are detached with
    //   com.microsoft:argument-out-of-range;
    // - owner levels: a receiver with owner level 1 takes the partition from one with level 0, which is
    //   detached with amqp:link:stolen; a later level-0 receiver is refused the same way, and the owner
    //   goes on receiving events.
    let hub = TestHub::start();
    let ca = hub.ca_path();
    let api = Service::new(&hub.owner_connection_string(), &ca);
    let host = hub.host();
    let hub_name = event_hubs_connection(&hub).hub_name;

    let mut refused = Consumer::open(&hub, &hub_name).await;
    let device_policy_token = event_hubs_token(&host, &hub_name, "device", &policy_key(&hub, "device"));
    assert_eq!(refused.put_token(&device_policy_token).await, SimpleValue::Int(401));
    let receiver = refused.receiver("0", "amqp.annotation.x-opt-offset > '-1'", None).await;
    assert_eq!(
        detach_condition(receiver).await,
        ErrorCondition::AmqpError(AmqpError::UnauthorizedAccess)
    );
    refused.close().await;

    let mut consumer = Consumer::service(&hub).await;
    let out_of_range = ErrorCondition::Custom(Symbol::from("com.microsoft:argument-out-of-range"));
    let past_the_end = consumer
        .receiver("0", "amqp.annotation.x-opt-sequence-number > '100'", None)
        .await;
    assert_eq!(detach_condition(past_the_end).await, out_of_range);
    let no_such_partition = consumer
        .receiver("9", "amqp.annotation.x-opt-offset > '-1'", None)
        .await;
    assert_eq!(detach_condition(no_such_partition).await, out_of_range);

    // Owner levels, on the partition of a device that will send to it.
    let device = (0..).map(|n| format!("dev{n}")).find(|id| partition(id) == 0).unwrap();
    let key = api.register_device(&device).await;
    let first_owner = consumer
        .receiver("0", "amqp.annotation.x-opt-offset > '@latest'", Some(0))
        .await;
    let mut owner = consumer
        .receiver("0", "amqp.annotation.x-opt-offset > '@latest'", Some(1))
        .await;
    assert_eq!(
        detach_condition(first_owner).await,
        ErrorCondition::LinkError(LinkError::Stolen)
    );
    let lower = consumer
        .receiver("0", "amqp.annotation.x-opt-offset > '@latest'", Some(0))
        .await;
    assert_eq!(
        detach_condition(lower).await,
        ErrorCondition::LinkError(LinkError::Stolen)
    );
    let reply = post_events(
        &api,
        &host,
        &device,
        &device_token(&host, &device, &key),
        "application/json",
        &[],
        b"{\"after\":\"takeover\"}".to_vec(),
    )
    .await;
    assert_eq!(reply.status, 204, "{}", reply.body);
    let event = next_event(&mut owner).await;
    assert_eq!(body(&event), b"{\"after\":\"takeover\"}");
    assert_eq!(device_of(&event), device);
    consumer.close().await;
}

#[tokio::test]
async fn an_https_batch_arrives_as_one_event_per_message_contiguous_in_one_partition() {
    // Scenario: on a hub named `myhub`, a device POSTs a batch of three messages
    // (`application/vnd.microsoft.iothub.json`) with `iothub-app-` properties; the answer is 204 and a
    // consumer reads three events, in order, at consecutive sequence numbers of the device's partition,
    // each with its body and application property.
    let hub = TestHub::start_with(&["--hub-name", "myhub"]);
    let ca = hub.ca_path();
    let api = Service::new(&hub.owner_connection_string(), &ca);
    let host = hub.host();
    let key = api.register_device("dev1").await;
    assert_eq!(event_hubs_connection(&hub).hub_name, "myhub");

    let batch: Vec<serde_json::Value> = (0..3)
        .map(|n| {
            serde_json::json!({
                "body": base64(format!("{{\"n\":{n}}}").as_bytes()),
                "properties": {"iothub-app-index": n.to_string()},
            })
        })
        .collect();
    let reply = post_events(
        &api,
        &host,
        "dev1",
        &device_token(&host, "dev1", &key),
        "application/vnd.microsoft.iothub.json",
        &[],
        serde_json::to_vec(&batch).unwrap(),
    )
    .await;
    assert_eq!(reply.status, 204, "{}", reply.body);

    let mut consumer = Consumer::service(&hub).await;
    let partitions = consumer.read_everything().await;
    consumer.close().await;
    assert_contiguous(&partitions);
    let events = &partitions[&partition("dev1")];
    assert_eq!(events.len(), 3, "three events in dev1's partition");
    assert_eq!(partitions.values().map(Vec::len).sum::<usize>(), 3, "and nowhere else");
    for (n, event) in events.iter().enumerate() {
        assert_eq!(body(event), format!("{{\"n\":{n}}}").into_bytes());
        assert_eq!(
            application_property(event, "index"),
            Some(SimpleValue::String(n.to_string()))
        );
        assert_eq!(device_of(event), "dev1");
    }
}

#[tokio::test]
async fn consumer_groups_are_created_listed_kept_deleted_and_only_existing_ones_read() {
    // Scenario: every hub has `$Default`; a back end creates `analytics` (the REST API
    // `twinhub consumer-group create` uses), which is listed, survives a restart and reads the same
    // events as `$Default`; a receiver in a group nobody created is detached with amqp:not-found;
    // `$Default` cannot be deleted, nor a group that does not exist, and a bad name is refused.
    let mut hub = TestHub::start();
    let ca = hub.ca_path();
    let api = Service::new(&hub.owner_connection_string(), &ca);
    let host = hub.host();
    let key = api.register_device("dev1").await;
    let groups = "/eventHubEndpoints/events/ConsumerGroups";
    let names = async |api: &Service| -> Vec<String> {
        let listed = api.call(reqwest::Method::GET, groups, None, None).await;
        assert_eq!(listed.status, 200, "{}", listed.body);
        listed.body["value"]
            .as_array()
            .unwrap()
            .iter()
            .map(|group| group["name"].as_str().unwrap().to_owned())
            .collect()
    };
    assert_eq!(names(&api).await, ["$Default"]);
    for _ in 0..2 {
        let created = api
            .call(reqwest::Method::PUT, &format!("{groups}/analytics"), None, None)
            .await;
        assert_eq!(created.status, 200, "creating twice is fine: {}", created.body);
    }
    for (name, status) in [("$Default", 400), ("bad%20name", 400), ("nobody", 404)] {
        let refused = api
            .call(reqwest::Method::DELETE, &format!("{groups}/{name}"), None, None)
            .await;
        assert_eq!(refused.status, status, "delete {name}: {}", refused.body);
    }
    let reply = post_events(
        &api,
        &host,
        "dev1",
        &device_token(&host, "dev1", &key),
        "application/json",
        &[],
        b"{\"n\":1}".to_vec(),
    )
    .await;
    assert_eq!(reply.status, 204, "{}", reply.body);

    hub.restart();
    let api = Service::new(&hub.owner_connection_string(), &ca);
    assert_eq!(names(&api).await, ["$Default", "analytics"], "kept across a restart");
    let mut consumer = Consumer::service(&hub).await;
    let partition = partition("dev1").to_string();
    let mut analytics = consumer
        .receiver_in("Analytics", &partition, "amqp.annotation.x-opt-offset > '-1'", None)
        .await;
    assert_eq!(body(&next_event(&mut analytics).await), b"{\"n\":1}");
    let nobody = consumer
        .receiver_in("nobody", &partition, "amqp.annotation.x-opt-offset > '-1'", None)
        .await;
    assert_eq!(
        detach_condition(nobody).await,
        ErrorCondition::AmqpError(AmqpError::NotFound)
    );
    consumer.close().await;
    let deleted = api
        .call(reqwest::Method::DELETE, &format!("{groups}/analytics"), None, None)
        .await;
    assert_eq!(deleted.status, 200, "{}", deleted.body);
    assert_eq!(names(&api).await, ["$Default"]);
}
