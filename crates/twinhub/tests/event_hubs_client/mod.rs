//! An Event Hubs consumer for integration tests, on the hub's AMQP port with fe2o3-amqp, the way the
//! Event Hubs SDKs read: CBS put-token with an Event Hubs token, `$management` READ, partition receivers
//! with a selector filter and owner levels.
#![allow(dead_code)]

use crate::mqtt_client;
use crate::rest_client;
use crate::support::{TestHub, AMQP_PORT};
use fe2o3_amqp::connection::ConnectionHandle;
use fe2o3_amqp::link::{LinkStateError, Receiver, RecvError, Sender};
use fe2o3_amqp::session::SessionHandle;
use fe2o3_amqp::types::definitions::ErrorCondition;
use fe2o3_amqp::types::messaging::annotations::OwnedKey;
use fe2o3_amqp::types::messaging::{
    AmqpValue, ApplicationProperties, Body, DeleteOnClose, Message, MessageId, Properties, Source,
};
use fe2o3_amqp::types::primitives::{OrderedMap, SimpleValue, Symbol, Value};
use fe2o3_amqp::{Connection, Session};
use std::collections::BTreeMap;
use std::time::Duration;
use twinhub_core::event::partition_of;
use twinhub_core::ids::DeviceId;

/// The hub's default partition count (IoT Hub's default too).
pub const PARTITION_COUNT: u16 = 4;
pub const RECEIVE_TIMEOUT: Duration = Duration::from_secs(10);
pub const SELECTOR_FILTER: &str = "apache.org:selector-filter:string";
/// The descriptor code the Node SDK gives the selector filter.
pub const SELECTOR_FILTER_CODE: u64 = 0x0000_468C_0000_0004;

/// An Event Hubs client on the hub's AMQP port (5671, the same listener as devices).
pub struct Consumer {
    pub connection: ConnectionHandle<()>,
    pub session: SessionHandle<()>,
    pub host: String,
    /// The event hub's name: `EntityPath` of the Event Hubs connection string.
    pub hub_name: String,
    pub next_link: u64,
}

/// A policy's key and the event hub name, from `twinhub connection-string --event-hubs`
/// (`Endpoint=sb://<host>/;SharedAccessKeyName=service;SharedAccessKey=<key>;EntityPath=<hub>`).
pub struct EventHubsConnection {
    pub key_name: String,
    pub key: String,
    pub hub_name: String,
}

pub fn event_hubs_connection(hub: &TestHub) -> EventHubsConnection {
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
pub fn policy_key(hub: &TestHub, policy: &str) -> String {
    let text = hub.connection_string(policy);
    text.split("SharedAccessKey=").nth(1).unwrap().to_owned()
}

/// Event Hubs clients sign with the key's TEXT (its UTF-8 bytes), where IoT Hub clients sign with its
/// base64 decoding; `sas::sign` takes a base64 key, so it gets the base64 of the text.
pub fn event_hubs_token(host: &str, hub_name: &str, key_name: &str, key_text: &str) -> String {
    twinhub_core::sas::sign(
        &format!("sb://{host}/{hub_name}"),
        &base64(key_text.as_bytes()),
        Some(key_name),
        rest_client::now() + 600,
    )
    .unwrap()
}

pub fn base64(bytes: &[u8]) -> String {
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
    pub async fn open(hub: &TestHub, hub_name: &str) -> Consumer {
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
    pub async fn service(hub: &TestHub) -> Consumer {
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

    pub fn link_name(&mut self, what: &str) -> String {
        self.next_link += 1;
        format!("{what}-{}", self.next_link)
    }

    /// CBS put-token for the event hub (`sb://<host>/<hub>`), as the Event Hubs SDKs send it; returns the
    /// reply's status-code.
    pub async fn put_token(&mut self, token: &str) -> SimpleValue {
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
    pub async fn request(&mut self, node: &str, request: Message<AmqpValue<Value>>) -> Message<Body<Value>> {
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
    pub async fn read(&mut self, kind: &str, partition: Option<&str>) -> (i32, BTreeMap<String, Value>) {
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
    pub async fn partition_state(&mut self, partition: u16) -> (i64, bool) {
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
    pub async fn receiver(&mut self, partition: &str, expression: &str, owner_level: Option<i64>) -> Receiver {
        self.receiver_in("$Default", partition, expression, owner_level).await
    }

    /// The same in consumer group `consumer_group`.
    pub async fn receiver_in(
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
    pub async fn read_everything(&mut self) -> BTreeMap<u16, Vec<Message<Body<Value>>>> {
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

    pub async fn close(self) {
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
pub fn selector(expression: &str) -> Value {
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

pub async fn next_event(receiver: &mut Receiver) -> Message<Body<Value>> {
    let delivery = tokio::time::timeout(RECEIVE_TIMEOUT, receiver.recv::<Body<Value>>())
        .await
        .unwrap_or_else(|_| panic!("an event within {RECEIVE_TIMEOUT:?}"))
        .expect("an event");
    // Events come pre-settled; accepting sends nothing but lets fe2o3 renew the link credit.
    receiver.accept(&delivery).await.expect("credit renewed");
    delivery.into_message()
}

/// Waits for the hub to detach `receiver` with an error; returns its condition.
pub async fn detach_condition(mut receiver: Receiver) -> ErrorCondition {
    match tokio::time::timeout(Duration::from_secs(5), receiver.recv::<Body<Value>>()).await {
        Ok(Err(RecvError::LinkStateError(
            LinkStateError::RemoteDetachedWithError(error) | LinkStateError::RemoteClosedWithError(error),
        ))) => error.condition,
        Ok(Ok(delivery)) => panic!("expected a detach, got an event {:?}", delivery.into_message()),
        other => panic!("expected a detach with an error, got {other:?}"),
    }
}

pub fn annotation(event: &Message<Body<Value>>, key: &str) -> Option<Value> {
    event
        .message_annotations
        .as_ref()?
        .0
        .get(&OwnedKey::Symbol(Symbol::from(key)))
        .cloned()
}

pub fn sequence_number(event: &Message<Body<Value>>) -> i64 {
    match annotation(event, "x-opt-sequence-number") {
        Some(Value::Long(n)) => n,
        other => panic!("x-opt-sequence-number {other:?}"),
    }
}

pub fn device_of(event: &Message<Body<Value>>) -> String {
    match annotation(event, "iothub-connection-device-id") {
        Some(Value::String(id)) => id,
        other => panic!("iothub-connection-device-id {other:?}"),
    }
}

pub fn body(event: &Message<Body<Value>>) -> Vec<u8> {
    match &event.body {
        Body::Data(batch) => batch.iter().flat_map(|data| data.0.to_vec()).collect(),
        other => panic!("expected a data body, got {other:?}"),
    }
}

pub fn application_property(event: &Message<Body<Value>>, key: &str) -> Option<SimpleValue> {
    event.application_properties.as_ref()?.0.get(key).cloned()
}

pub fn partition(device: &str) -> u16 {
    partition_of(&DeviceId::new(device).unwrap(), PARTITION_COUNT)
}

/// Each partition's sequence numbers are 0, 1, 2, ... with no gap.
pub fn assert_contiguous(partitions: &BTreeMap<u16, Vec<Message<Body<Value>>>>) {
    for (partition, events) in partitions {
        let numbers: Vec<i64> = events.iter().map(sequence_number).collect();
        let expected: Vec<i64> = (0..events.len() as i64).collect();
        assert_eq!(numbers, expected, "partition {partition}: sequence numbers");
    }
}
