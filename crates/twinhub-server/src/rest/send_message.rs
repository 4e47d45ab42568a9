//! `POST /twinhub/devices/{id}/messages` (ServiceConnect): a cloud-to-device message over HTTPS. Beyond
//! IoT Hub, whose back ends send over AMQP only: for a browser (the web console) and for tools like curl.
//! The body is `{"body": "<text>", "properties": {"name": "value"}, "messageId": "...", "ack": "full"}`
//! (all but `body` optional); the message joins the device's queue as one sent over AMQP would.

use super::body;
use super::error::RestError;
use super::registry::device_id;
use super::RestState;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use serde_json::Value;
use twinhub_core::c2d::{Ack, OutgoingMessage};
use twinhub_core::policy::Permission;

pub async fn send(
    State(state): State<RestState>,
    headers: HeaderMap,
    Path(id): Path<String>,
    request: Bytes,
) -> Result<StatusCode, RestError> {
    state.auth.authorize(&headers, Permission::ServiceConnect)?;
    let request = body::parse(&request)?;
    let text = |key: &str| request.get(key).and_then(Value::as_str).map(str::to_owned);
    let message_body =
        text("body").ok_or_else(|| RestError::bad_request("the request needs a 'body' string: the message"))?;
    let ack = match text("ack") {
        None => Ack::None,
        Some(ack) => Ack::parse(&ack).ok_or_else(|| {
            RestError::bad_request(format!("ack must be none, positive, negative or full, not '{ack}'"))
        })?,
    };
    let properties = match request.get("properties") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Object(properties)) => properties
            .iter()
            .map(|(name, value)| match value {
                Value::String(value) => Ok((name.clone(), value.clone())),
                _ => Err(RestError::bad_request("properties must be strings")),
            })
            .collect::<Result<_, _>>()?,
        Some(_) => return Err(RestError::bad_request("properties must be an object of strings")),
    };
    let message = OutgoingMessage {
        message_id: text("messageId"),
        correlation_id: None,
        user_id: None,
        content_type: None,
        content_encoding: None,
        expiry: None,
        ack,
        properties,
        body: message_body.into_bytes(),
    };
    state.hub.send_cloud_to_device(device_id(&id)?, message).await?;
    Ok(StatusCode::NO_CONTENT)
}
