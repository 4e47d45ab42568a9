//! Device twins: `GET`, `PATCH` (merge) and `PUT` (replace) on `/twins/{id}`.

use super::body::{self, ok, JsonResponse};
use super::error::RestError;
use super::registry::{device_id, if_match};
use super::RestState;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use twinhub_core::json::twin_json;
use twinhub_core::policy::Permission;
use twinhub_core::twin::{TwinPatch, TwinReplacement};
use twinhub_hub::HubError;

pub async fn get_twin(
    State(state): State<RestState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<JsonResponse, RestError> {
    state.auth.authorize(&headers, Permission::ServiceConnect)?;
    let record = state.hub.device(&device_id(&id)?)?;
    Ok(ok(twin_json(&record)))
}

pub async fn patch_twin(
    State(state): State<RestState>,
    headers: HeaderMap,
    Path(id): Path<String>,
    body: Bytes,
) -> Result<JsonResponse, RestError> {
    state.auth.authorize(&headers, Permission::ServiceConnect)?;
    let id = device_id(&id)?;
    let patch = TwinPatch::from_json(&body::parse(&body)?, state.hub.rules()).map_err(HubError::from)?;
    let record = state.hub.patch_twin(id, patch, if_match(&headers)).await?;
    Ok(ok(twin_json(&record)))
}

pub async fn replace_twin(
    State(state): State<RestState>,
    headers: HeaderMap,
    Path(id): Path<String>,
    body: Bytes,
) -> Result<JsonResponse, RestError> {
    state.auth.authorize(&headers, Permission::ServiceConnect)?;
    let id = device_id(&id)?;
    let replacement = TwinReplacement::from_json(&body::parse(&body)?, state.hub.rules()).map_err(HubError::from)?;
    let record = state.hub.replace_twin(id, replacement, if_match(&headers)).await?;
    Ok(ok(twin_json(&record)))
}

/// Queries arrive with the query language (issue 3); until then the route answers in IoT Hub's terms.
pub async fn query_unavailable(State(state): State<RestState>, headers: HeaderMap) -> Result<JsonResponse, RestError> {
    state.auth.authorize(&headers, Permission::ServiceConnect)?;
    Err(RestError::new(
        StatusCode::NOT_IMPLEMENTED,
        "InvalidOperation",
        "queries are not available yet",
    ))
}
