//! Direct methods from back ends: `POST /twins/{id}/methods` and `POST /twins/{id}/modules/{mid}/methods`,
//! answered with the device's `{"status":..,"payload":..}` once it answers (ServiceConnect).

use super::body;
use super::error::RestError;
use super::registry::device_id;
use super::RestState;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::HeaderMap;
use twinhub_core::policy::Permission;
use twinhub_hub::{Endpoint, HubError};

pub async fn invoke_on_device(
    State(state): State<RestState>,
    headers: HeaderMap,
    Path(id): Path<String>,
    body: Bytes,
) -> Result<body::JsonBody, RestError> {
    invoke(&state, &headers, Endpoint::device(device_id(&id)?), &body).await
}

pub async fn invoke_on_module(
    State(state): State<RestState>,
    headers: HeaderMap,
    Path((id, module)): Path<(String, String)>,
    body: Bytes,
) -> Result<body::JsonBody, RestError> {
    // Module ids follow device id rules.
    let module = device_id(&module)?;
    let endpoint = Endpoint {
        device_id: device_id(&id)?,
        module_id: Some(module.to_string()),
    };
    invoke(&state, &headers, endpoint, &body).await
}

async fn invoke(
    state: &RestState,
    headers: &HeaderMap,
    endpoint: Endpoint,
    body: &[u8],
) -> Result<body::JsonBody, RestError> {
    state.auth.authorize(headers, Permission::ServiceConnect)?;
    let call = twinhub_core::method::parse_call(&body::parse(body)?).map_err(HubError::from)?;
    let answer = state.hub.invoke_method(&endpoint, call).await?;
    // The payload is the device's JSON as it gave it (checked to be JSON when it arrived).
    Ok(body::json_text(&format!(
        r#"{{"status":{},"payload":{}}}"#,
        answer.status, answer.payload
    )))
}
