//! The device twin over AMQP: requests on the client's sender link `/devices/{id}/twin` (pre-settled,
//! `operation` and `resource` message annotations, a string correlation-id), answers and desired
//! notifications on its receiver link. Ref: amqp notes §3.3.
//!
//! Answers echo the correlation-id and carry `status` (AMQP int) and `version` (AMQP long)
//! annotations; notifications carry no correlation-id (that is how the SDKs tell them apart). Error
//! bodies are `{"errorCode":..,"message":..}`: Node parses them as JSON.

use super::AmqpService;
use crate::twin_failure::{parse_reported_patch, TwinFailure};
use fe2o3_amqp_types::messaging::annotations::OwnedKey;
use fe2o3_amqp_types::messaging::{Body, Data, Message, MessageAnnotations, Properties};
use fe2o3_amqp_types::primitives::{Binary, Symbol, Value};
use twinhub_core::twin::DesiredChange;
use twinhub_hub::Endpoint;

/// What a twin request asks for.
#[derive(Debug, PartialEq, Eq)]
pub enum TwinOperation {
    Get,
    PatchReported,
    SubscribeDesired,
    UnsubscribeDesired,
    Unsupported(String),
}

fn annotation(message: &Message<Body<Value>>, key: &str) -> Option<String> {
    let annotations = message.message_annotations.as_ref()?;
    match annotations.0.get(&OwnedKey::Symbol(Symbol::from(key)))? {
        Value::String(text) => Some(text.clone()),
        Value::Symbol(symbol) => Some(symbol.as_str().to_owned()),
        _ => None,
    }
}

pub fn operation(message: &Message<Body<Value>>) -> TwinOperation {
    let operation = annotation(message, "operation").unwrap_or_default();
    let resource = annotation(message, "resource").unwrap_or_default();
    match (operation.as_str(), resource.trim_end_matches('/')) {
        ("GET", _) => TwinOperation::Get,
        ("PATCH", "/properties/reported") => TwinOperation::PatchReported,
        ("PUT", "/notifications/twin/properties/desired") => TwinOperation::SubscribeDesired,
        ("DELETE", "/notifications/twin/properties/desired") => TwinOperation::UnsubscribeDesired,
        (operation, resource) => TwinOperation::Unsupported(format!("{operation} {resource}")),
    }
}

pub fn body_bytes(message: &Message<Body<Value>>) -> Vec<u8> {
    match &message.body {
        Body::Data(batch) => batch.iter().flat_map(|data| data.0.to_vec()).collect(),
        Body::Value(value) => match &value.0 {
            Value::String(text) => text.clone().into_bytes(),
            Value::Binary(bytes) => bytes.to_vec(),
            _ => Vec::new(),
        },
        _ => Vec::new(),
    }
}

fn message(
    correlation_id: Option<fe2o3_amqp_types::messaging::MessageId>,
    status: Option<i32>,
    version: Option<u64>,
    body: Option<Vec<u8>>,
) -> Message<Body<Value>> {
    let mut annotations = MessageAnnotations::builder();
    if let Some(status) = status {
        annotations = annotations.insert(OwnedKey::Symbol(Symbol::from("status")), Value::Int(status));
    }
    if let Some(version) = version {
        annotations = annotations.insert(
            OwnedKey::Symbol(Symbol::from("version")),
            Value::Long(i64::try_from(version).unwrap_or(i64::MAX)),
        );
    }
    let body = match body {
        Some(bytes) => Body::Data(vec![Data(Binary::from(bytes))].into()),
        None => Body::Empty,
    };
    Message::builder()
        .properties(Properties {
            correlation_id,
            ..Properties::default()
        })
        .message_annotations(annotations.build())
        .body(body)
        .build()
}

/// An answer now, or once a write commits (reported patches: many may be pending at once, as over MQTT).
pub enum Answer {
    Now(Box<Message<Body<Value>>>),
    Later(futures_util::future::BoxFuture<'static, Message<Body<Value>>>),
}

fn now(answer: Message<Body<Value>>) -> Answer {
    Answer::Now(Box::new(answer))
}

/// Answers one twin request; a desired subscription changes `subscribed`.
pub fn answer(
    service: &AmqpService,
    endpoint: &Endpoint,
    request: &Message<Body<Value>>,
    subscribed: &mut bool,
) -> Answer {
    let correlation_id = request.properties.as_ref().and_then(|p| p.correlation_id.clone());
    let failure = |failure: TwinFailure| {
        now(message(
            correlation_id.clone(),
            Some(i32::from(failure.status)),
            None,
            Some(failure.body()),
        ))
    };
    match operation(request) {
        TwinOperation::Get => match service.hub.twin_of(endpoint) {
            Ok(record) => {
                service.desired_cursor(endpoint, |cursor| cursor.gave(record.twin.desired.version));
                let body = twinhub_core::json::device_twin_text(&record);
                now(message(correlation_id, Some(200), None, Some(body.as_bytes().to_vec())))
            }
            Err(error) => failure(TwinFailure::from(&error)),
        },
        TwinOperation::PatchReported => match parse_reported_patch(&body_bytes(request), service.hub.rules()) {
            Ok(patch) => {
                let hub = std::sync::Arc::clone(&service.hub);
                let endpoint = endpoint.clone();
                Answer::Later(Box::pin(async move {
                    match hub.patch_reported_of(&endpoint, patch).await {
                        Ok(record) => message(correlation_id, Some(204), Some(record.twin.reported.version), None),
                        Err(error) => {
                            let failure = TwinFailure::from(&error);
                            message(
                                correlation_id,
                                Some(i32::from(failure.status)),
                                None,
                                Some(failure.body()),
                            )
                        }
                    }
                }))
            }
            Err(reason) => failure(reason),
        },
        TwinOperation::SubscribeDesired => {
            *subscribed = true;
            now(message(correlation_id, Some(200), None, None))
        }
        TwinOperation::UnsubscribeDesired => {
            *subscribed = false;
            now(message(correlation_id, Some(200), None, None))
        }
        TwinOperation::Unsupported(what) => failure(TwinFailure::bad_request(format!(
            "'{what}' is not a twin operation IoT Hub devices can use"
        ))),
    }
}

/// A desired change as the SDKs expect it: the patch with `$version`, a `version` annotation, no
/// correlation-id.
pub fn desired_notification(change: &DesiredChange) -> Message<Body<Value>> {
    let mut patch = change.patch.clone();
    patch.insert("$version".into(), change.version.into());
    let body = serde_json::Value::Object(patch).to_string().into_bytes();
    message(None, None, Some(change.version), Some(body))
}

/// The whole desired document, for a device that resubscribes after missing changes.
pub fn full_desired(record: &twinhub_core::DeviceRecord) -> Message<Body<Value>> {
    let body = record.twin.desired.to_json_without_metadata().to_string().into_bytes();
    message(None, None, Some(record.twin.desired.version), Some(body))
}
