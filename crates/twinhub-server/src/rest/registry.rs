//! Device identities: `/devices`, `/devices/{id}`, bulk, statistics.

use super::body::{self, ok, JsonResponse};
use super::error::RestError;
use super::RestState;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse;
use serde_json::json;
use std::collections::HashMap;
use twinhub_core::etag::IfMatch;
use twinhub_core::json::{device_json, DeviceDraft};
use twinhub_core::policy::Permission;
use twinhub_core::twin::TwinPatch;
use twinhub_core::DeviceId;
use twinhub_hub::{BulkOperation, ImportMode};

/// Ref: the identity list API returns at most 1000 identities.
const LIST_DEVICES_MAX: usize = 1000;

pub(crate) fn device_id(raw: &str) -> Result<DeviceId, RestError> {
    DeviceId::new(raw).map_err(|error| RestError::bad_request(format!("invalid device id '{raw}': {error}")))
}

pub(crate) fn if_match(headers: &HeaderMap) -> IfMatch {
    IfMatch::parse(
        headers
            .get(axum::http::header::IF_MATCH)
            .and_then(|value| value.to_str().ok()),
    )
}

pub async fn get_device(
    State(state): State<RestState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<JsonResponse, RestError> {
    state.auth.authorize(&headers, Permission::RegistryRead)?;
    state.hub.read_barrier().await;
    let record = state.hub.device(&device_id(&id)?)?;
    Ok(ok(device_json(&record)))
}

pub async fn list_devices(
    State(state): State<RestState>,
    headers: HeaderMap,
    Query(query): Query<HashMap<String, String>>,
) -> Result<JsonResponse, RestError> {
    state.auth.authorize(&headers, Permission::RegistryRead)?;
    // Python sends `top`; out-of-range values mean the maximum, as on IoT Hub.
    let top = query
        .get("top")
        .and_then(|top| top.parse::<usize>().ok())
        .filter(|top| (1..=LIST_DEVICES_MAX).contains(top))
        .unwrap_or(LIST_DEVICES_MAX);
    state.hub.read_barrier().await;
    let devices: Vec<_> = state
        .hub
        .devices(top)
        .iter()
        .map(|record| device_json(record))
        .collect();
    Ok(ok(serde_json::Value::Array(devices)))
}

pub async fn put_device(
    State(state): State<RestState>,
    headers: HeaderMap,
    Path(id): Path<String>,
    body: Bytes,
) -> Result<JsonResponse, RestError> {
    state.auth.authorize(&headers, Permission::RegistryWrite)?;
    let id = device_id(&id)?;
    let mut document = body::parse(&body)?;
    if let Some(object) = document.as_object_mut() {
        match object.get("deviceId") {
            None | Some(serde_json::Value::Null) => {
                object.insert("deviceId".into(), id.as_str().into());
            }
            Some(given) if given.as_str() == Some(id.as_str()) => {}
            Some(given) => {
                return Err(RestError::bad_request(format!(
                    "the deviceId in the body ({given}) differs from the one in the path ('{id}')"
                )))
            }
        }
    }
    let draft = DeviceDraft::from_json(&document, "deviceId").map_err(twinhub_hub::HubError::from)?;
    let record = state.hub.put_device(draft, if_match(&headers)).await?;
    // Python accepts exactly 200 for a device PUT, create or update.
    Ok(ok(device_json(&record)))
}

pub async fn delete_device(
    State(state): State<RestState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<StatusCode, RestError> {
    state.auth.authorize(&headers, Permission::RegistryWrite)?;
    state.hub.delete_device(device_id(&id)?, if_match(&headers)).await?;
    Ok(StatusCode::NO_CONTENT)
}

pub async fn registry_statistics(
    State(state): State<RestState>,
    headers: HeaderMap,
) -> Result<JsonResponse, RestError> {
    state.auth.authorize(&headers, Permission::RegistryRead)?;
    state.hub.read_barrier().await;
    let statistics = state.hub.statistics();
    Ok(ok(json!({
        "totalDeviceCount": statistics.total,
        "enabledDeviceCount": statistics.enabled,
        "disabledDeviceCount": statistics.disabled,
    })))
}

pub async fn service_statistics(State(state): State<RestState>, headers: HeaderMap) -> Result<JsonResponse, RestError> {
    state.auth.authorize(&headers, Permission::ServiceConnect)?;
    Ok(ok(json!({"connectedDeviceCount": state.hub.connected_devices()})))
}

/// Reads one ExportImportDevice. Keys are matched case-insensitively where the SDKs disagree
/// (`etag`/`eTag`, `importMode` values).
fn bulk_operation(element: &serde_json::Value, rules: &twinhub_core::TwinRules) -> Result<BulkOperation, RestError> {
    let object = element
        .as_object()
        .ok_or_else(|| RestError::bad_request("each bulk element must be a JSON object"))?;
    let field = |name: &str| {
        object
            .iter()
            .find(|(key, _)| key.eq_ignore_ascii_case(name))
            .map(|(_, value)| value)
            .filter(|value| !value.is_null())
    };
    let mode_text = field("importMode").and_then(|mode| mode.as_str()).unwrap_or("create");
    let mode = ImportMode::parse(mode_text)
        .ok_or_else(|| RestError::bad_request(format!("unknown importMode '{mode_text}'")))?;
    let draft = DeviceDraft::from_json(element, "id").map_err(twinhub_hub::HubError::from)?;
    let etag = field("eTag").and_then(|etag| etag.as_str()).map(str::to_owned);
    let twin_etag = field("twinETag").and_then(|etag| etag.as_str()).map(str::to_owned);
    let twin_body = json!({
        "tags": field("tags").cloned(),
        "properties": field("properties").cloned(),
    });
    let twin_patch = TwinPatch::from_json(&twin_body, rules).map_err(twinhub_hub::HubError::from)?;
    Ok(BulkOperation {
        mode,
        draft,
        etag,
        twin_etag,
        twin_patch,
    })
}

pub async fn bulk(
    State(state): State<RestState>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<impl IntoResponse, RestError> {
    state.auth.authorize(&headers, Permission::RegistryWrite)?;
    let document = body::parse(&body)?;
    let elements = document
        .as_array()
        .ok_or_else(|| RestError::bad_request("a bulk request is a JSON array of devices"))?;
    let operations = elements
        .iter()
        .map(|element| bulk_operation(element, state.hub.rules()))
        .collect::<Result<Vec<_>, _>>()?;
    let outcome = state.hub.bulk(operations).await?;
    let errors: Vec<_> = outcome
        .errors
        .iter()
        .map(|failure| {
            let (_, code) = super::error::classify(&failure.error);
            json!({
                "deviceId": failure.device_id.as_str(),
                "errorCode": code,
                "errorStatus": failure.error.to_string(),
                "moduleId": null,
                "operation": failure.mode.as_str(),
            })
        })
        .collect();
    let status = if outcome.is_successful() {
        StatusCode::OK
    } else {
        StatusCode::BAD_REQUEST
    };
    Ok(JsonResponse(
        status,
        json!({"isSuccessful": outcome.is_successful(), "errors": errors, "warnings": []}),
    ))
}
