//! Device-to-cloud telemetry against a real hub process: devices send over MQTT (raw packets) and HTTPS,
//! and a back end reads the events from the Event Hubs-compatible endpoint with an AMQP client
//! (fe2o3-amqp), the way the Event Hubs SDKs do: CBS put-token with an Event Hubs token, `$management`
//! READ, partition receivers with a selector filter and owner levels. Covers what a consumer sees of an
//! event, durability across SIGKILL, refused input leaving nothing behind, and the endpoint's refusals.
//! The official SDKs against the same endpoint are in the SDK tests.

mod mqtt_client;
mod rest_client;
mod support;

use bytes::Bytes;
use bytestring::ByteString;
use fe2o3_amqp::connection::ConnectionHandle;
use fe2o3_amqp::link::{LinkStateError, Receiver, RecvError, Sender};
use fe2o3_amqp::session::SessionHandle;
use fe2o3_amqp::types::definitions::{AmqpError, ErrorCondition, LinkError};
use fe2o3_amqp::types::messaging::annotations::OwnedKey;
use fe2o3_amqp::types::messaging::{
    AmqpValue, ApplicationProperties, Body, DeleteOnClose, Message, MessageId, Properties, Source,
};
use fe2o3_amqp::types::primitives::{OrderedMap, SimpleValue, Symbol, Value};
use fe2o3_amqp::{Connection, Session};
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
use support::{TestHub, AMQP_PORT};
use tokio_util::codec::{FramedRead, FramedWrite};
use twinhub_core::event::partition_of;
use twinhub_core::ids::DeviceId;

/// The hub's default partition count (IoT Hub's default too).
const PARTITION_COUNT: u16 = 4;
const RECEIVE_TIMEOUT: Duration = Duration::from_secs(10);
const SELECTOR_FILTER: &str = "apache.org:selector-filter:string";
/// The descriptor code the Node SDK gives the selector filter.
const SELECTOR_FILTER_CODE: u64 = 0x0000_468C_0000_0004;

// ---------------------------------------------------------------------------------------------------
// The Event Hubs consumer

/// An Event Hubs client on the hub's AMQP port (5671, the same listener as devices).
struct Consumer {
    connection: ConnectionHandle<()>,
    session: SessionHandle<()>,
    host: String,
    /// The event hub's name: `EntityPath` of the Event Hubs connection string.
    hub_name: String,
    next_link: u64,
}

/// A policy's key and the event hub name, from `twinhub connection-string --event-hubs`
/// (`Endpoint=sb://<host>/;SharedAccessKeyName=service;SharedAccessKey=<key>;EntityPath=<hub>`).
struct EventHubsConnection {
    key_name: String,
    key: String,
    hub_name: String,
}

fn event_hubs_connection(hub: &TestHub) -> EventHubsConnection {
    let text = hub.event_hubs_connection_string();
    let field = |name: &str| {
        text.split(';')
            .find_map(|part| part.strip_prefix(&format!("{name}=")))
            .unwrap_or_else(|| panic!("{name} in {text}"))
            .to_owned()
    };
    assert_eq!(field("Endpoint"), format!("sb://{}/", hub.host()));
    EventHubsConnection {
        key_name: field("SharedAccessKeyName"),
        key: field("SharedAccessKey"),
        hub_name: field("EntityPath"),
    }
}

/// The key of a policy, from its IoT Hub connection string.
fn policy_key(hub: &TestHub, policy: &str) -> String {
    let text = hub.connection_string(policy);
    text.split("SharedAccessKey=").nth(1).unwrap().to_owned()
}

/// Event Hubs clients sign with the key's TEXT (its UTF-8 bytes), where IoT Hub clients sign with its
/// base64 decoding; `sas::sign` takes a base64 key, so it gets the base64 of the text.
fn event_hubs_token(host: &str, hub_name: &str, key_name: &str, key_text: &str) -> String {
    twinhub_core::sas::sign(
        &format!("sb://{host}/{hub_name}"),
        &base64(key_text.as_bytes()),
        Some(key_name),
        rest_client::now() + 600,
    )
    .unwrap()
}

fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, b)| n | u32::from(*b) << (16 - 8 * i));
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

impl Consumer {
    /// Opens a connection without a token.
    async fn open(hub: &TestHub, hub_name: &str) -> Consumer {
        let tls = mqtt_client::tls_connect(hub.address(), AMQP_PORT, &hub.ca_path()).await;
        let host = hub.host();
        let mut connection = Connection::builder()
            .container_id("twinhub-telemetry-test")
            .hostname(host.as_str())
            .open_with_stream(tls)
            .await
            .expect("AMQP open");
        let session = Session::begin(&mut connection).await.expect("session");
        Consumer {
            connection,
            session,
            host,
            hub_name: hub_name.to_owned(),
            next_link: 0,
        }
    }

    /// Opens a connection authorized with an Event Hubs token of the `service` policy (as the connection
    /// string gives it).
    async fn service(hub: &TestHub) -> Consumer {
        let connection = event_hubs_connection(hub);
        let mut consumer = Consumer::open(hub, &connection.hub_name).await;
        let token = event_hubs_token(
            &consumer.host,
            &connection.hub_name,
            &connection.key_name,
            &connection.key,
        );
        assert_eq!(consumer.put_token(&token).await, SimpleValue::Int(200));
        consumer
    }

    fn link_name(&mut self, what: &str) -> String {
        self.next_link += 1;
        format!("{what}-{}", self.next_link)
    }

    /// CBS put-token for the event hub (`sb://<host>/<hub>`), as the Event Hubs SDKs send it; returns the
    /// reply's status-code.
    async fn put_token(&mut self, token: &str) -> SimpleValue {
        let audience = format!("sb://{}/{}", self.host, self.hub_name);
        let request = Message::builder()
            .properties(Properties {
                message_id: Some(MessageId::String(self.link_name("put-token"))),
                reply_to: Some("cbs".into()),
                ..Properties::default()
            })
            .application_properties(
                ApplicationProperties::builder()
                    .insert("operation", SimpleValue::String("put-token".into()))
                    .insert("type", SimpleValue::String("servicebus.windows.net:sastoken".into()))
                    .insert("name", SimpleValue::String(audience))
                    .build(),
            )
            .body(AmqpValue(Value::String(token.to_owned())))
            .build();
        let reply = self.request("$cbs", request).await;
        reply
            .application_properties
            .as_ref()
            .unwrap()
            .0
            .get("status-code")
            .cloned()
            .unwrap()
    }

    /// One request on a request/response node (`$cbs`, `$management`) and its reply.
    async fn request(&mut self, node: &str, request: Message<AmqpValue<Value>>) -> Message<Body<Value>> {
        let sender_name = self.link_name("request");
        let receiver_name = self.link_name("reply");
        let mut sender = Sender::attach(&mut self.session, sender_name, node)
            .await
            .expect("request link");
        let mut receiver = Receiver::attach(&mut self.session, receiver_name, node)
            .await
            .expect("reply link");
        sender.send(request).await.expect("request sent");
        let reply = tokio::time::timeout(RECEIVE_TIMEOUT, receiver.recv::<Body<Value>>())
            .await
            .unwrap_or_else(|_| panic!("a reply from {node} within {RECEIVE_TIMEOUT:?}"))
            .expect("reply");
        receiver.accept(&reply).await.unwrap();
        let _ = sender.close().await;
        let _ = receiver.close().await;
        reply.into_message()
    }

    /// `$management` READ of `type` (and `partition`); returns the status and the reply's map.
    async fn read(&mut self, kind: &str, partition: Option<&str>) -> (i32, BTreeMap<String, Value>) {
        let mut properties = ApplicationProperties::builder()
            .insert("operation", SimpleValue::String("READ".into()))
            .insert("name", SimpleValue::String(self.hub_name.clone()))
            .insert("type", SimpleValue::String(kind.into()));
        if let Some(partition) = partition {
            properties = properties.insert("partition", SimpleValue::String(partition.into()));
        }
        let request = Message::builder()
            .properties(Properties {
                message_id: Some(MessageId::String(self.link_name("read"))),
                reply_to: Some("management-reply".into()),
                ..Properties::default()
            })
            .application_properties(properties.build())
            .body(AmqpValue(Value::Null))
            .build();
        let reply = self.request("$management", request).await;
        let status = match reply.application_properties.as_ref().unwrap().0.get("status-code") {
            Some(SimpleValue::Int(status)) => *status,
            other => panic!("status-code {other:?}"),
        };
        let map = match reply.body {
            Body::Value(AmqpValue(Value::Map(map))) => map
                .into_iter()
                .map(|(key, value)| match key {
                    Value::String(key) => (key, value),
                    other => panic!("a key that is not a string: {other:?}"),
                })
                .collect(),
            _ => BTreeMap::new(),
        };
        (status, map)
    }

    /// A partition's `last_enqueued_sequence_number` (-1 when empty) and `is_partition_empty`.
    async fn partition_state(&mut self, partition: u16) -> (i64, bool) {
        let (status, map) = self.read("com.microsoft:partition", Some(&partition.to_string())).await;
        assert_eq!(status, 200, "READ partition {partition}: {map:?}");
        let last = match map["last_enqueued_sequence_number"] {
            Value::Long(last) => last,
            ref other => panic!("last_enqueued_sequence_number {other:?}"),
        };
        let empty = match map["is_partition_empty"] {
            Value::Bool(empty) => empty,
            ref other => panic!("is_partition_empty {other:?}"),
        };
        (last, empty)
    }

    /// A receiver on `<hub>/ConsumerGroups/$Default/Partitions/<partition>`, starting where the selector
    /// `expression` says (a described string, as the SDKs send it), with an owner level if given.
    async fn receiver(&mut self, partition: &str, expression: &str, owner_level: Option<i64>) -> Receiver {
        self.receiver_in("$Default", partition, expression, owner_level).await
    }

    /// The same in consumer group `consumer_group`.
    async fn receiver_in(
        &mut self,
        consumer_group: &str,
        partition: &str,
        expression: &str,
        owner_level: Option<i64>,
    ) -> Receiver {
        let address = format!(
            "{}/ConsumerGroups/{consumer_group}/Partitions/{partition}",
            self.hub_name
        );
        let source = Source::builder()
            .address(address)
            .add_to_filter_using_legacy_format(SELECTOR_FILTER, selector(expression))
            .build();
        let name = self.link_name("receiver");
        let mut builder = Receiver::builder().name(name).source(source);
        if let Some(level) = owner_level {
            let mut properties = OrderedMap::new();
            properties.insert(Symbol::from("com.microsoft:epoch"), Value::Long(level));
            builder = builder.properties(properties);
        }
        builder.attach(&mut self.session).await.expect("receiver attached")
    }

    /// Every event of every partition, read from the start up to the last one `$management` reports.
    async fn read_everything(&mut self) -> BTreeMap<u16, Vec<Message<Body<Value>>>> {
        let mut partitions = BTreeMap::new();
        for partition in 0..PARTITION_COUNT {
            let (last, _) = self.partition_state(partition).await;
            let mut events = Vec::new();
            if last >= 0 {
                let mut receiver = self
                    .receiver(&partition.to_string(), "amqp.annotation.x-opt-offset > '-1'", None)
                    .await;
                while events.len() as i64 <= last {
                    events.push(next_event(&mut receiver).await);
                }
                let _ = receiver.close().await;
            }
            partitions.insert(partition, events);
        }
        partitions
    }

    async fn close(self) {
        let Consumer {
            mut connection,
            mut session,
            ..
        } = self;
        let _ = session.end().await;
        let _ = connection.close().await;
    }
}

/// The selector filter's value: a string described with the code the Node SDK uses. fe2o3 has no public
/// constructor for a described value, so one of its own described values is rewritten.
fn selector(expression: &str) -> Value {
    use serde::de::value::{Error, MapAccessDeserializer, MapDeserializer};
    let Value::Described(mut described) = Value::from(DeleteOnClose {}) else {
        unreachable!("a lifetime policy is a described list")
    };
    // A descriptor deserializes from its encoding code (0x80: ulong) and the code.
    let descriptor = MapDeserializer::<_, Error>::new(std::iter::once((0x80u8, SELECTOR_FILTER_CODE)));
    described.descriptor =
        serde::Deserialize::deserialize(MapAccessDeserializer::new(descriptor)).expect("a descriptor");
    described.value = Value::String(expression.to_owned());
    Value::Described(described)
}

async fn next_event(receiver: &mut Receiver) -> Message<Body<Value>> {
    let delivery = tokio::time::timeout(RECEIVE_TIMEOUT, receiver.recv::<Body<Value>>())
        .await
        .unwrap_or_else(|_| panic!("an event within {RECEIVE_TIMEOUT:?}"))
        .expect("an event");
    // Events come pre-settled; accepting sends nothing but lets fe2o3 renew the link credit.
    receiver.accept(&delivery).await.expect("credit renewed");
    delivery.into_message()
}

/// Waits for the hub to detach `receiver` with an error; returns its condition.
async fn detach_condition(mut receiver: Receiver) -> ErrorCondition {
    match tokio::time::timeout(Duration::from_secs(5), receiver.recv::<Body<Value>>()).await {
        Ok(Err(RecvError::LinkStateError(
            LinkStateError::RemoteDetachedWithError(error) | LinkStateError::RemoteClosedWithError(error),
        ))) => error.condition,
        Ok(Ok(delivery)) => panic!("expected a detach, got an event {:?}", delivery.into_message()),
        other => panic!("expected a detach with an error, got {other:?}"),
    }
}

fn annotation(event: &Message<Body<Value>>, key: &str) -> Option<Value> {
    event
        .message_annotations
        .as_ref()?
        .0
        .get(&OwnedKey::Symbol(Symbol::from(key)))
        .cloned()
}

fn sequence_number(event: &Message<Body<Value>>) -> i64 {
    match annotation(event, "x-opt-sequence-number") {
        Some(Value::Long(n)) => n,
        other => panic!("x-opt-sequence-number {other:?}"),
    }
}

fn device_of(event: &Message<Body<Value>>) -> String {
    match annotation(event, "iothub-connection-device-id") {
        Some(Value::String(id)) => id,
        other => panic!("iothub-connection-device-id {other:?}"),
    }
}

fn body(event: &Message<Body<Value>>) -> Vec<u8> {
    match &event.body {
        Body::Data(batch) => batch.iter().flat_map(|data| data.0.to_vec()).collect(),
        other => panic!("expected a data body, got {other:?}"),
    }
}

fn application_property(event: &Message<Body<Value>>, key: &str) -> Option<SimpleValue> {
    event.application_properties.as_ref()?.0.get(key).cloned()
}

fn partition(device: &str) -> u16 {
    partition_of(&DeviceId::new(device).unwrap(), PARTITION_COUNT)
}

/// Each partition's sequence numbers are 0, 1, 2, ... with no gap.
fn assert_contiguous(partitions: &BTreeMap<u16, Vec<Message<Body<Value>>>>) {
    for (partition, events) in partitions {
        let numbers: Vec<i64> = events.iter().map(sequence_number).collect();
        let expected: Vec<i64> = (0..events.len() as i64).collect();
        assert_eq!(numbers, expected, "partition {partition}: sequence numbers");
    }
}

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
