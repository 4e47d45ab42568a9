//! A stored event as Event Hubs consumers read it: one data section with the body, the device's message
//! properties (content type and encoding as symbols), its application properties, and the annotations of
//! Event Hubs (`x-opt-sequence-number` long, `x-opt-offset` a decimal string, `x-opt-enqueued-time`) and of
//! IoT Hub (`iothub-connection-device-id`, ..., `iothub-message-source`). Ref: eventhubs-endpoint notes §6.

use fe2o3_amqp_types::messaging::annotations::OwnedKey;
use fe2o3_amqp_types::messaging::{ApplicationProperties, Data, Message, MessageAnnotations, MessageId, Properties};
use fe2o3_amqp_types::primitives::{Binary, SimpleValue, Symbol, Timestamp, Uuid, Value};
use twinhub_core::event::{EventValue, StoredEvent};

/// How a SAS-authenticated device's messages say they were authenticated (as IoT Hub writes it).
const SAS_AUTH_METHOD: &str = r#"{"scope":"device","type":"sas","issuer":"iothub","acceptingIpFilterRule":null}"#;

pub fn millis(time: twinhub_core::Timestamp) -> i64 {
    time.0.div_euclid(1_000_000)
}

fn annotation(name: &str) -> OwnedKey {
    OwnedKey::Symbol(Symbol::from(name))
}

/// The AMQP message a consumer receives for `stored`.
pub fn to_amqp(stored: &StoredEvent) -> Message<Data> {
    let event = &stored.event;
    let enqueued = Timestamp::from_milliseconds(millis(stored.enqueued_time));
    let mut annotations = MessageAnnotations::builder()
        .insert(
            annotation("x-opt-sequence-number"),
            Value::Long(i64::try_from(stored.sequence_number).unwrap_or(i64::MAX)),
        )
        .insert(
            annotation("x-opt-offset"),
            Value::String(stored.sequence_number.to_string()),
        )
        .insert(annotation("x-opt-enqueued-time"), Value::Timestamp(enqueued.clone()))
        .insert(
            annotation("iothub-connection-device-id"),
            Value::String(stored.origin.device_id.to_string()),
        );
    if let Some(module_id) = &stored.origin.module_id {
        annotations = annotations.insert(
            annotation("iothub-connection-module-id"),
            Value::String(module_id.clone()),
        );
    }
    annotations = annotations
        .insert(
            annotation("iothub-connection-auth-method"),
            Value::String(SAS_AUTH_METHOD.into()),
        )
        .insert(
            annotation("iothub-connection-auth-generation-id"),
            Value::String(stored.origin.generation_id.clone()),
        )
        .insert(annotation("iothub-enqueuedtime"), Value::Timestamp(enqueued))
        .insert(annotation("iothub-message-source"), Value::String("Telemetry".into()));
    for (name, value) in &event.annotations {
        annotations = annotations.insert(annotation(name), value_of(value));
    }
    let source = &event.properties;
    let properties = Properties {
        message_id: source.message_id.as_ref().and_then(message_id),
        user_id: source.user_id.clone().map(Binary::from),
        correlation_id: source.correlation_id.as_ref().and_then(message_id),
        content_type: source.content_type.clone().map(Symbol::from),
        content_encoding: source.content_encoding.clone().map(Symbol::from),
        creation_time: source.creation_time.map(Timestamp::from_milliseconds),
        absolute_expiry_time: source.absolute_expiry_time.map(Timestamp::from_milliseconds),
        ..Properties::default()
    };
    let mut application = ApplicationProperties::builder();
    for (name, value) in &event.application_properties {
        application = application.insert(name.clone(), simple_value_of(value));
    }
    Message::builder()
        .message_annotations(annotations.build())
        .properties(properties)
        .application_properties(application.build())
        .data(Binary::from(event.body.clone()))
        .build()
}

fn message_id(value: &EventValue) -> Option<MessageId> {
    Some(match value {
        EventValue::String(text) => MessageId::String(text.clone()),
        EventValue::ULong(n) => MessageId::Ulong(*n),
        EventValue::Uuid(bytes) => MessageId::Uuid(Uuid::from(*bytes)),
        EventValue::Binary(bytes) => MessageId::Binary(Binary::from(bytes.clone())),
        EventValue::Long(n) => MessageId::String(n.to_string()),
        EventValue::Symbol(text) => MessageId::String(text.clone()),
        _ => return None,
    })
}

fn value_of(value: &EventValue) -> Value {
    match value {
        EventValue::Null => Value::Null,
        EventValue::Bool(b) => Value::Bool(*b),
        EventValue::Long(n) => Value::Long(*n),
        EventValue::ULong(n) => Value::Ulong(*n),
        EventValue::Double(n) => Value::Double((*n).into()),
        EventValue::String(text) => Value::String(text.clone()),
        EventValue::Symbol(text) => Value::Symbol(Symbol::from(text.as_str())),
        EventValue::Uuid(bytes) => Value::Uuid(Uuid::from(*bytes)),
        EventValue::Binary(bytes) => Value::Binary(Binary::from(bytes.clone())),
        EventValue::Timestamp(ms) => Value::Timestamp(Timestamp::from_milliseconds(*ms)),
    }
}

fn simple_value_of(value: &EventValue) -> SimpleValue {
    match value {
        EventValue::Null => SimpleValue::Null,
        EventValue::Bool(b) => SimpleValue::Bool(*b),
        EventValue::Long(n) => SimpleValue::Long(*n),
        EventValue::ULong(n) => SimpleValue::Ulong(*n),
        EventValue::Double(n) => SimpleValue::Double((*n).into()),
        EventValue::String(text) => SimpleValue::String(text.clone()),
        EventValue::Symbol(text) => SimpleValue::Symbol(Symbol::from(text.as_str())),
        EventValue::Uuid(bytes) => SimpleValue::Uuid(Uuid::from(*bytes)),
        EventValue::Binary(bytes) => SimpleValue::Binary(Binary::from(bytes.clone())),
        EventValue::Timestamp(ms) => SimpleValue::Timestamp(Timestamp::from_milliseconds(*ms)),
    }
}
