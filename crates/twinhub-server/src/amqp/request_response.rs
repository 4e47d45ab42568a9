//! What the hub's request/response nodes (`$cbs`, `$management`) share: reading a request's application
//! properties, and the reply every SDK matches to its request.

use fe2o3_amqp_types::messaging::{AmqpValue, ApplicationProperties, Body, Message, Properties};
use fe2o3_amqp_types::primitives::{SimpleValue, Value};

/// A request's application property as text (SDKs send strings or symbols).
pub fn application_string(message: &Message<Body<Value>>, key: &str) -> Option<String> {
    match message.application_properties.as_ref()?.0.get(key)? {
        SimpleValue::String(text) => Some(text.clone()),
        SimpleValue::Symbol(symbol) => Some(symbol.as_str().to_owned()),
        _ => None,
    }
}

/// The reply to `request`: its message-id as correlation-id (same AMQP type), `to` its reply-to, the int
/// status and the description each under both names the SDKs read, and a body when there is one.
pub fn response(
    request: &Message<Body<Value>>,
    status: i32,
    description: &str,
    body: Option<Value>,
) -> Message<Body<Value>> {
    let request_properties = request.properties.as_ref();
    let properties = Properties {
        correlation_id: request_properties.and_then(|p| p.message_id.clone()),
        to: request_properties.and_then(|p| p.reply_to.clone()),
        ..Properties::default()
    };
    let application_properties = ApplicationProperties::builder()
        .insert("status-code", SimpleValue::Int(status))
        // pyamqp's management link reads `statusCode` and `statusDescription` (its defaults, which the
        // Event Hubs client's own names never reach), Node the hyphenated ones.
        .insert("statusCode", SimpleValue::Int(status))
        .insert("status-description", SimpleValue::String(description.to_owned()))
        .insert("statusDescription", SimpleValue::String(description.to_owned()))
        .build();
    Message::builder()
        .properties(properties)
        .application_properties(application_properties)
        .body(match body {
            Some(value) => Body::Value(AmqpValue(value)),
            None => Body::Empty,
        })
        .build()
}
