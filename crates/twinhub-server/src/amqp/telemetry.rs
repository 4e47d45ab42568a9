//! Telemetry over AMQP: the device's sender link `/devices/{id}/messages/events` (or a module's). Each
//! message becomes an event (its properties section, application properties and the annotations a device
//! may set) and is settled `accepted` once the event is durable, `rejected` with an IoT Hub condition when
//! the hub refuses it. Many messages may wait for their commit at once; they are settled in order
//! (`settle_when_done`).

use super::cbs::Authorizations;
use super::AmqpService;
use fe2o3_amqp::link::Receiver;
use fe2o3_amqp::types::messaging::annotations::OwnedKey;
use fe2o3_amqp::types::messaging::{Body, Message, MessageId};
use fe2o3_amqp::types::primitives::{SimpleValue, Value};
use std::sync::Arc;
use tokio::sync::Mutex;
use twinhub_core::event::{DeviceEvent, EventProperties, EventValue};
use twinhub_hub::Endpoint;

/// Annotations a device may set on its messages, forwarded to consumers.
const DEVICE_ANNOTATIONS: [&str; 3] = ["iothub-interface-id", "dt-subject", "dt-dataschema"];

/// Serves one telemetry link until the client detaches it or the connection ends: each message is
/// accepted once its event is durable (`settle_when_done`).
pub(crate) async fn receive(
    service: Arc<AmqpService>,
    receiver: Receiver,
    sender: Endpoint,
    authorizations: Arc<Mutex<Authorizations>>,
) {
    let covered = sender.clone();
    super::settle_when_done::serve(
        receiver,
        authorizations,
        move |authorizations: &Authorizations| authorizations.covers(&covered),
        |message| {
            let event = event_of(message);
            let hub = Arc::clone(&service.hub);
            let sender = sender.clone();
            Box::pin(async move {
                hub.send_event(&sender.device_id, sender.module_id.as_deref(), event)
                    .await
                    .map(|_| ())
            })
        },
    )
    .await
}

/// A device's AMQP message as an event: the body's bytes, its properties section, its application
/// properties, and the annotations a device may set.
pub fn event_of(message: &Message<Body<Value>>) -> DeviceEvent {
    let mut properties = EventProperties::default();
    if let Some(section) = &message.properties {
        properties.message_id = section.message_id.as_ref().map(message_id);
        properties.correlation_id = section.correlation_id.as_ref().map(message_id);
        properties.user_id = section.user_id.as_ref().map(|id| id.to_vec());
        properties.content_type = section.content_type.as_ref().map(|s| s.as_str().to_owned());
        properties.content_encoding = section.content_encoding.as_ref().map(|s| s.as_str().to_owned());
        properties.creation_time = section.creation_time.as_ref().map(|t| t.milliseconds());
        properties.absolute_expiry_time = section.absolute_expiry_time.as_ref().map(|t| t.milliseconds());
    }
    let application_properties = message
        .application_properties
        .as_ref()
        .map(|section| {
            section
                .0
                .iter()
                .map(|(name, value)| (name.clone(), simple_value(value)))
                .collect()
        })
        .unwrap_or_default();
    let annotations = message
        .message_annotations
        .as_ref()
        .map(|section| {
            DEVICE_ANNOTATIONS
                .iter()
                .filter_map(|name| {
                    let value = section.0.get(&OwnedKey::Symbol((*name).into()))?;
                    Some(((*name).to_owned(), value_of(value)))
                })
                .collect()
        })
        .unwrap_or_default();
    DeviceEvent {
        body: super::twin::body_bytes(message),
        properties,
        application_properties,
        annotations,
    }
}

fn message_id(id: &MessageId) -> EventValue {
    match id {
        MessageId::Ulong(n) => EventValue::ULong(*n),
        MessageId::Uuid(uuid) => EventValue::Uuid(uuid.clone().into_inner()),
        MessageId::Binary(bytes) => EventValue::Binary(bytes.to_vec()),
        MessageId::String(text) => EventValue::String(text.clone()),
    }
}

fn simple_value(value: &SimpleValue) -> EventValue {
    match value {
        SimpleValue::Null => EventValue::Null,
        SimpleValue::Bool(b) => EventValue::Bool(*b),
        SimpleValue::Ubyte(n) => EventValue::Long(i64::from(*n)),
        SimpleValue::Ushort(n) => EventValue::Long(i64::from(*n)),
        SimpleValue::Uint(n) => EventValue::Long(i64::from(*n)),
        SimpleValue::Ulong(n) => EventValue::ULong(*n),
        SimpleValue::Byte(n) => EventValue::Long(i64::from(*n)),
        SimpleValue::Short(n) => EventValue::Long(i64::from(*n)),
        SimpleValue::Int(n) => EventValue::Long(i64::from(*n)),
        SimpleValue::Long(n) => EventValue::Long(*n),
        SimpleValue::Float(n) => EventValue::Double(f64::from(n.0)),
        SimpleValue::Double(n) => EventValue::Double(n.0),
        SimpleValue::Char(c) => EventValue::String(c.to_string()),
        SimpleValue::Timestamp(t) => EventValue::Timestamp(t.milliseconds()),
        SimpleValue::Uuid(uuid) => EventValue::Uuid(uuid.clone().into_inner()),
        SimpleValue::Binary(bytes) => EventValue::Binary(bytes.to_vec()),
        SimpleValue::String(text) => EventValue::String(text.clone()),
        SimpleValue::Symbol(symbol) => EventValue::Symbol(symbol.as_str().to_owned()),
        // Decimals have no counterpart consumers read; their text keeps the value.
        other => EventValue::String(format!("{other:?}")),
    }
}

fn value_of(value: &Value) -> EventValue {
    match value {
        Value::String(text) => EventValue::String(text.clone()),
        Value::Symbol(symbol) => EventValue::Symbol(symbol.as_str().to_owned()),
        Value::Long(n) => EventValue::Long(*n),
        Value::Bool(b) => EventValue::Bool(*b),
        other => EventValue::String(format!("{other:?}")),
    }
}
