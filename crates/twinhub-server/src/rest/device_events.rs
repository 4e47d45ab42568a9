//! The HTTPS device API's telemetry: `POST /devices/{id}/messages/events` (the Node SDK's `Http` transport),
//! one message with its properties in headers, or a batch (`application/vnd.microsoft.iothub.json`: a JSON
//! array of `{"body": base64, "properties": {...}}`). Device SAS auth. Answered 204 once every event is
//! durable; a batch is stored whole or not at all. Ref: eventhubs-endpoint notes §7.
//!
//! HTTP header names reach us in lower case (hyper keeps no original case), so `iothub-app-MyProp` becomes
//! the application property `myprop`.

use super::error::RestError;
use super::RestState;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use base64::Engine;
use twinhub_core::event::{DeviceEvent, EventValue};

const APP_PROPERTY_PREFIX: &str = "iothub-app-";
const BATCH_CONTENT_TYPE: &str = "application/vnd.microsoft.iothub.json";

pub async fn send_events(
    State(state): State<RestState>,
    headers: HeaderMap,
    Path(id): Path<String>,
    body: Bytes,
) -> Result<StatusCode, RestError> {
    let device_id = super::registry::device_id(&id)?;
    state.auth.authorize_device(&headers, &device_id, &state.hub).await?;
    let batch = headers
        .get(axum::http::header::CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .is_some_and(|value| value.trim().eq_ignore_ascii_case(BATCH_CONTENT_TYPE));
    let events = if batch {
        batch_events(&body)?
    } else {
        vec![single_event(&headers, body.to_vec())]
    };
    // Stored whole or refused whole (413 past IoT Hub's limit, the batch counted as one message).
    state.hub.send_events(&device_id, None, events).await?;
    Ok(StatusCode::NO_CONTENT)
}

fn header_text(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get(name)
        .and_then(|value| value.to_str().ok())
        .map(str::to_owned)
}

/// One message: the body as sent, its properties in headers.
fn single_event(headers: &HeaderMap, body: Vec<u8>) -> DeviceEvent {
    let mut event = DeviceEvent {
        body,
        ..DeviceEvent::default()
    };
    let properties = &mut event.properties;
    properties.message_id = header_text(headers, "iothub-messageid").map(EventValue::String);
    properties.correlation_id = header_text(headers, "iothub-correlationid").map(EventValue::String);
    properties.user_id = header_text(headers, "iothub-userid").map(String::into_bytes);
    properties.content_type = header_text(headers, "iothub-contenttype");
    properties.content_encoding = header_text(headers, "iothub-contentencoding");
    for annotation in ["iothub-interface-id", "dt-subject", "dt-dataschema"] {
        if let Some(value) = header_text(headers, annotation) {
            event.annotations.push((annotation.into(), EventValue::String(value)));
        }
    }
    for (name, value) in headers {
        if let (Some(property), Ok(value)) = (name.as_str().strip_prefix(APP_PROPERTY_PREFIX), value.to_str()) {
            event
                .application_properties
                .push((property.to_owned(), EventValue::String(value.to_owned())));
        }
    }
    event
}

#[derive(serde::Deserialize)]
struct BatchItem {
    body: String,
    #[serde(default)]
    properties: serde_json::Map<String, serde_json::Value>,
}

/// A batch: each element one event, its body base64, its `iothub-app-` properties application properties.
fn batch_events(body: &[u8]) -> Result<Vec<DeviceEvent>, RestError> {
    let items: Vec<BatchItem> = serde_json::from_slice(body).map_err(|error| {
        RestError::bad_request(format!(
            "a batch is a JSON array of {{\"body\": base64, \"properties\": {{...}}}}: {error}"
        ))
    })?;
    if items.is_empty() {
        return Err(RestError::bad_request("the batch holds no messages"));
    }
    items
        .into_iter()
        .enumerate()
        .map(|(index, item)| {
            let body = base64::engine::general_purpose::STANDARD
                .decode(item.body.as_bytes())
                .map_err(|_| RestError::bad_request(format!("message {index} of the batch: 'body' is not base64")))?;
            let mut event = DeviceEvent {
                body,
                ..DeviceEvent::default()
            };
            for (name, value) in item.properties {
                let value = match value {
                    serde_json::Value::String(text) => text,
                    other => other.to_string(),
                };
                match name.strip_prefix(APP_PROPERTY_PREFIX) {
                    Some(property) => event
                        .application_properties
                        .push((property.to_owned(), EventValue::String(value))),
                    None if name == "dt-subject" => event.annotations.push((name, EventValue::String(value))),
                    None => {}
                }
            }
            Ok(event)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_become_the_event_properties() {
        let mut headers = HeaderMap::new();
        for (name, value) in [
            ("IoTHub-MessageId", "m1"),
            ("IoTHub-CorrelationId", "c1"),
            ("iothub-contenttype", "application/json"),
            ("iothub-contentencoding", "utf-8"),
            ("iothub-app-temperatureAlert", "true"),
            ("dt-subject", "thermostat1"),
            ("iothub-to", "/devices/d1/messages/events"),
        ] {
            headers.insert(
                axum::http::HeaderName::from_bytes(name.as_bytes()).unwrap(),
                value.parse().unwrap(),
            );
        }
        let event = single_event(&headers, b"{}".to_vec());
        assert_eq!(event.properties.message_id, Some(EventValue::String("m1".into())));
        assert_eq!(event.properties.correlation_id, Some(EventValue::String("c1".into())));
        assert_eq!(event.properties.content_type.as_deref(), Some("application/json"));
        assert_eq!(
            event.application_properties,
            vec![("temperaturealert".into(), EventValue::String("true".into()))]
        );
        assert_eq!(
            event.annotations,
            vec![("dt-subject".into(), EventValue::String("thermostat1".into()))]
        );
    }

    #[test]
    fn a_batch_is_one_event_per_element() {
        let events =
            batch_events(br#"[{"body": "aGVsbG8=", "properties": {"iothub-app-k": "v"}}, {"body": "d29ybGQ="}]"#)
                .unwrap();
        assert_eq!(events.len(), 2);
        assert_eq!(events[0].body, b"hello");
        assert_eq!(
            events[0].application_properties,
            vec![("k".into(), EventValue::String("v".into()))]
        );
        assert_eq!(events[1].body, b"world");
        for bad in [&b"{}"[..], b"[]", br#"[{"body": "not base64!"}]"#, b"not json"] {
            assert!(batch_events(bad).is_err(), "{}", String::from_utf8_lossy(bad));
        }
    }
}
