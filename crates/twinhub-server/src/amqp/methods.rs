//! Direct methods over AMQP: requests on the device's receiver link `/devices/{id}/methods/devicebound`,
//! answers on its sender link of the same address. Ref: amqp notes §3.4.
//!
//! A request carries the hub's request id as a string correlation-id, the method name in the
//! application property `IoThub-methodname` (Node reads application properties unconditionally) and
//! the JSON payload in a data section. The answer echoes the correlation-id with `IoThub-status` (an
//! int). Node re-encodes ids that look like UUIDs as AMQP uuids; the hub's short hex ids never do, so
//! they come back as the strings they went out as.

use super::twin::body_bytes;
use fe2o3_amqp_types::messaging::{ApplicationProperties, Body, Data, Message, MessageId, Properties};
use fe2o3_amqp_types::primitives::{Binary, SimpleValue, Value};
use twinhub_core::method::{MethodAnswer, MethodCallError};
use twinhub_hub::{MethodRequest, MethodRequestId};

const METHOD_NAME: &str = "IoThub-methodname";
const STATUS: &str = "IoThub-status";

pub fn request_message(request: &MethodRequest) -> Message<Body<Value>> {
    Message::builder()
        .properties(Properties {
            correlation_id: Some(MessageId::String(request.request_id.to_string())),
            ..Properties::default()
        })
        .application_properties(
            ApplicationProperties::builder()
                .insert(METHOD_NAME, SimpleValue::String(request.name.clone()))
                .build(),
        )
        .body(Body::Data(
            vec![Data(Binary::from(request.payload.clone().into_bytes()))].into(),
        ))
        .build()
}

/// Why an answer message cannot be matched to a call at all.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum AnswerUnreadable {
    #[error("the answer has no correlation-id the hub gave")]
    RequestId,
    #[error("the answer has no integer IoThub-status")]
    Status,
}

/// The request an answer is for, and the answer (or what is wrong with its payload, for the caller).
pub fn read_answer(
    message: &Message<Body<Value>>,
) -> Result<(MethodRequestId, Result<MethodAnswer, MethodCallError>), AnswerUnreadable> {
    let correlation = message.properties.as_ref().and_then(|p| p.correlation_id.as_ref());
    let text = match correlation {
        Some(MessageId::String(text)) => text.clone(),
        Some(MessageId::Ulong(number)) => format!("{number:x}"),
        _ => return Err(AnswerUnreadable::RequestId),
    };
    let request_id = MethodRequestId::parse(&text).ok_or(AnswerUnreadable::RequestId)?;
    let status = message
        .application_properties
        .as_ref()
        .and_then(|properties| properties.0.get(STATUS))
        .and_then(|value| match value {
            SimpleValue::Int(status) => Some(*status),
            SimpleValue::Long(status) => i32::try_from(*status).ok(),
            SimpleValue::Short(status) => Some(i32::from(*status)),
            SimpleValue::Uint(status) => i32::try_from(*status).ok(),
            SimpleValue::String(text) => text.parse().ok(),
            _ => None,
        })
        .ok_or(AnswerUnreadable::Status)?;
    Ok((
        request_id,
        twinhub_core::method::parse_answer(status, &body_bytes(message)),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answer_message(
        correlation_id: Option<MessageId>,
        status: Option<SimpleValue>,
        body: &[u8],
    ) -> Message<Body<Value>> {
        let mut properties = ApplicationProperties::builder();
        if let Some(status) = status {
            properties = properties.insert(STATUS, status);
        }
        Message::builder()
            .properties(Properties {
                correlation_id,
                ..Properties::default()
            })
            .application_properties(properties.build())
            .body(Body::Data(vec![Data(Binary::from(body.to_vec()))].into()))
            .build()
    }

    #[test]
    fn a_request_carries_its_id_name_and_payload() {
        let request = MethodRequest {
            request_id: MethodRequestId::parse("2a").unwrap(),
            name: "reboot".into(),
            payload: r#"{"delay":1}"#.into(),
        };
        let message = request_message(&request);
        assert_eq!(
            message.properties.as_ref().unwrap().correlation_id,
            Some(MessageId::String("2a".into()))
        );
        assert_eq!(
            message.application_properties.as_ref().unwrap().0.get(METHOD_NAME),
            Some(&SimpleValue::String("reboot".into()))
        );
        assert_eq!(body_bytes(&message), br#"{"delay":1}"#);
    }

    #[test]
    fn answers_are_matched_by_the_text_of_their_correlation_id() {
        let (id, answer) = read_answer(&answer_message(
            Some(MessageId::String("2a".into())),
            Some(SimpleValue::Int(201)),
            br#"{"ok":true}"#,
        ))
        .unwrap();
        assert_eq!(id, MethodRequestId::parse("2a").unwrap());
        assert_eq!(
            answer.unwrap(),
            MethodAnswer {
                status: 201,
                payload: r#"{"ok":true}"#.into()
            }
        );
        assert_eq!(
            read_answer(&answer_message(None, Some(SimpleValue::Int(200)), b"1")).unwrap_err(),
            AnswerUnreadable::RequestId
        );
        assert_eq!(
            read_answer(&answer_message(Some(MessageId::String("2a".into())), None, b"1")).unwrap_err(),
            AnswerUnreadable::Status
        );
        let (_, not_json) = read_answer(&answer_message(
            Some(MessageId::String("2a".into())),
            Some(SimpleValue::Int(200)),
            b"{",
        ))
        .unwrap();
        assert!(matches!(not_json, Err(MethodCallError::AnswerNotJson(_))));
    }
}
