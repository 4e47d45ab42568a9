//! Direct methods: what a back end may ask of a device, and what a device's answer must be. IoT Hub's
//! rules; the waiting and the delivery are the hub's.

use std::time::Duration;

/// Largest method payload, each way, as on IoT Hub (the payload's JSON text).
pub const PAYLOAD_BYTES_MAX: usize = 128 * 1024;
/// How long the hub waits for a device's answer, when the back end does not say.
pub const RESPONSE_TIMEOUT_DEFAULT: Duration = Duration::from_secs(30);
pub const RESPONSE_TIMEOUT_SECONDS_MIN: u64 = 5;
pub const RESPONSE_TIMEOUT_SECONDS_MAX: u64 = 300;
/// How long the hub waits for an offline device to come online: not at all unless asked.
pub const CONNECT_TIMEOUT_SECONDS_MAX: u64 = 300;
/// Longest method name (IoT Hub: 128 characters).
pub const NAME_CHARS_MAX: usize = 128;

/// A method call as a back end asks for it, checked.
#[derive(Clone, Debug, PartialEq)]
pub struct MethodCall {
    pub name: String,
    /// The payload as JSON text (`null` when none was given).
    pub payload: String,
    pub response_timeout: Duration,
    pub connect_timeout: Duration,
}

/// What a device answered: its status and its payload as JSON text.
#[derive(Clone, Debug, PartialEq)]
pub struct MethodAnswer {
    pub status: i32,
    pub payload: String,
}

#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum MethodCallError {
    #[error("the request body must be a JSON object with a methodName")]
    NotAnObject,
    #[error("methodName must be a non-empty string of at most 128 characters without '/', '?', '#' or '$'")]
    Name,
    #[error("the payload is {0} bytes, more than the 131072 bytes a direct method allows")]
    PayloadTooLarge(usize),
    #[error("responseTimeoutInSeconds must be an integer from 5 to 300")]
    ResponseTimeout,
    #[error("connectTimeoutInSeconds must be an integer from 0 to 300")]
    ConnectTimeout,
    #[error("the device's answer is not JSON: {0}")]
    AnswerNotJson(String),
    #[error("the device's answer is {0} bytes, more than the 131072 bytes a direct method allows")]
    AnswerTooLarge(usize),
}

/// `POST /twins/{id}/methods`'s body: `methodName`, `payload` (any JSON), `responseTimeoutInSeconds`
/// (5 to 300, default 30), `connectTimeoutInSeconds` (0 to 300, default 0). `null` counts as absent,
/// as the SDKs send it.
pub fn parse_call(body: &serde_json::Value) -> Result<MethodCall, MethodCallError> {
    let object = body.as_object().ok_or(MethodCallError::NotAnObject)?;
    let name = object
        .get("methodName")
        .and_then(serde_json::Value::as_str)
        .filter(|name| valid_name(name))
        .ok_or(MethodCallError::Name)?;
    let payload = object
        .get("payload")
        .cloned()
        .unwrap_or(serde_json::Value::Null)
        .to_string();
    if payload.len() > PAYLOAD_BYTES_MAX {
        return Err(MethodCallError::PayloadTooLarge(payload.len()));
    }
    let seconds = |key: &str, min: u64, max: u64, default: Duration, error: MethodCallError| match object.get(key) {
        None | Some(serde_json::Value::Null) => Ok(default),
        Some(value) => value
            .as_u64()
            .filter(|seconds| (min..=max).contains(seconds))
            .map(Duration::from_secs)
            .ok_or(error),
    };
    Ok(MethodCall {
        name: name.to_owned(),
        payload,
        response_timeout: seconds(
            "responseTimeoutInSeconds",
            RESPONSE_TIMEOUT_SECONDS_MIN,
            RESPONSE_TIMEOUT_SECONDS_MAX,
            RESPONSE_TIMEOUT_DEFAULT,
            MethodCallError::ResponseTimeout,
        )?,
        connect_timeout: seconds(
            "connectTimeoutInSeconds",
            0,
            CONNECT_TIMEOUT_SECONDS_MAX,
            Duration::ZERO,
            MethodCallError::ConnectTimeout,
        )?,
    })
}

/// A method name goes into an MQTT topic level and an AMQP property: printable, without the characters
/// that would change the topic's meaning.
fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.chars().count() <= NAME_CHARS_MAX
        && name
            .chars()
            .all(|c| !c.is_control() && !matches!(c, '/' | '?' | '#' | '+' | '$' | ' '))
}

/// A device's answer: its payload must be JSON (empty counts as `null`, as the SDKs send "no payload")
/// and within the payload limit.
pub fn parse_answer(status: i32, payload: &[u8]) -> Result<MethodAnswer, MethodCallError> {
    if payload.len() > PAYLOAD_BYTES_MAX {
        return Err(MethodCallError::AnswerTooLarge(payload.len()));
    }
    if payload.iter().all(u8::is_ascii_whitespace) {
        return Ok(MethodAnswer {
            status,
            payload: "null".to_owned(),
        });
    }
    let value: serde_json::Value =
        serde_json::from_slice(payload).map_err(|error| MethodCallError::AnswerNotJson(error.to_string()))?;
    Ok(MethodAnswer {
        status,
        payload: value.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_call_takes_its_defaults_and_keeps_its_payload_as_json() {
        let call = parse_call(&json!({"methodName": "reboot", "payload": {"delay": 1}})).unwrap();
        assert_eq!(call.name, "reboot");
        assert_eq!(call.payload, r#"{"delay":1}"#);
        assert_eq!(call.response_timeout, RESPONSE_TIMEOUT_DEFAULT);
        assert_eq!(call.connect_timeout, Duration::ZERO);
        let call = parse_call(
            &json!({"methodName": "m", "payload": null, "responseTimeoutInSeconds": 5,
            "connectTimeoutInSeconds": 300}),
        )
        .unwrap();
        assert_eq!(
            (
                call.payload.as_str(),
                call.response_timeout.as_secs(),
                call.connect_timeout.as_secs()
            ),
            ("null", 5, 300)
        );
    }

    #[test]
    fn a_call_outside_iot_hubs_limits_is_refused() {
        assert_eq!(parse_call(&json!([])), Err(MethodCallError::NotAnObject));
        assert_eq!(parse_call(&json!({"payload": 1})), Err(MethodCallError::Name));
        assert_eq!(parse_call(&json!({"methodName": "a/b"})), Err(MethodCallError::Name));
        assert_eq!(
            parse_call(&json!({"methodName": "x".repeat(129)})),
            Err(MethodCallError::Name)
        );
        for timeout in [json!(4), json!(301), json!(-1), json!("30")] {
            assert_eq!(
                parse_call(&json!({"methodName": "m", "responseTimeoutInSeconds": timeout})),
                Err(MethodCallError::ResponseTimeout)
            );
        }
        assert_eq!(
            parse_call(&json!({"methodName": "m", "connectTimeoutInSeconds": 301})),
            Err(MethodCallError::ConnectTimeout)
        );
        let large = "x".repeat(PAYLOAD_BYTES_MAX);
        assert!(matches!(
            parse_call(&json!({"methodName": "m", "payload": large})),
            Err(MethodCallError::PayloadTooLarge(_))
        ));
    }

    #[test]
    fn an_answer_is_json_or_nothing() {
        assert_eq!(parse_answer(200, b"").unwrap().payload, "null");
        assert_eq!(
            parse_answer(201, br#"{ "ok" : true }"#).unwrap().payload,
            r#"{"ok":true}"#
        );
        assert!(matches!(
            parse_answer(200, b"not json"),
            Err(MethodCallError::AnswerNotJson(_))
        ));
        let large = format!("\"{}\"", "x".repeat(PAYLOAD_BYTES_MAX));
        assert!(matches!(
            parse_answer(200, large.as_bytes()),
            Err(MethodCallError::AnswerTooLarge(_))
        ));
    }
}
