//! Module identities and module twins: `GET /devices/{id}/modules`, `PUT`/`GET`/`DELETE
//! /devices/{id}/modules/{moduleId}` (registry permissions; no `If-Match`: create only), and `GET`,
//! `PATCH` (merge), `PUT` (replace) on `/twins/{id}/modules/{moduleId}` (ServiceConnect), as the Node
//! `azure-iothub` Registry and the Python `azure-iot-hub` registry manager call them.

use super::body::{self, ok, JsonResponse};
use super::error::RestError;
use super::registry::{device_id, if_match};
use super::RestState;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use serde_json::Value;
use std::sync::Arc;
use twinhub_core::module::{module_json, module_twin_json, ModuleDraft, ModuleRecord};
use twinhub_core::policy::Permission;
use twinhub_core::twin::{TwinPatch, TwinReplacement};
use twinhub_core::ModuleId;
use twinhub_hub::HubError;

fn module_id(raw: &str) -> Result<ModuleId, RestError> {
    ModuleId::new(raw).map_err(|error| RestError::bad_request(format!("invalid module id '{raw}': {error}")))
}

/// The module the path names, as of every write acknowledged before the request (read-your-writes).
async fn read_module(state: &RestState, id: &str, module: &str) -> Result<Arc<ModuleRecord>, RestError> {
    let (device_id, module_id) = (device_id(id)?, module_id(module)?);
    state.hub.read_barrier().await;
    Ok(state.hub.module(&device_id, &module_id)?)
}

pub async fn list(
    State(state): State<RestState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<JsonResponse, RestError> {
    state.auth.authorize(&headers, Permission::RegistryRead)?;
    state.hub.read_barrier().await;
    let modules = state.hub.modules_of(&device_id(&id)?)?;
    Ok(ok(Value::Array(
        modules.iter().map(|module| module_json(module)).collect(),
    )))
}

pub async fn get(
    State(state): State<RestState>,
    headers: HeaderMap,
    Path((id, module)): Path<(String, String)>,
) -> Result<JsonResponse, RestError> {
    state.auth.authorize(&headers, Permission::RegistryRead)?;
    let module = read_module(&state, &id, &module).await?;
    Ok(ok(module_json(&module)))
}

pub async fn put(
    State(state): State<RestState>,
    headers: HeaderMap,
    Path((id, module)): Path<(String, String)>,
    body: Bytes,
) -> Result<JsonResponse, RestError> {
    state.auth.authorize(&headers, Permission::RegistryWrite)?;
    let (device_id, module_id) = (device_id(&id)?, module_id(&module)?);
    let draft = ModuleDraft::from_json(&body::parse(&body)?, &device_id, &module_id).map_err(HubError::from)?;
    let module = state.hub.put_module(device_id, draft, if_match(&headers)).await?;
    Ok(ok(module_json(&module)))
}

pub async fn delete(
    State(state): State<RestState>,
    headers: HeaderMap,
    Path((id, module)): Path<(String, String)>,
) -> Result<StatusCode, RestError> {
    state.auth.authorize(&headers, Permission::RegistryWrite)?;
    state
        .hub
        .delete_module(device_id(&id)?, module_id(&module)?, if_match(&headers))
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

pub async fn get_twin(
    State(state): State<RestState>,
    headers: HeaderMap,
    Path((id, module)): Path<(String, String)>,
) -> Result<JsonResponse, RestError> {
    state.auth.authorize(&headers, Permission::ServiceConnect)?;
    let module = read_module(&state, &id, &module).await?;
    Ok(ok(module_twin_json(&module)))
}

pub async fn patch_twin(
    State(state): State<RestState>,
    headers: HeaderMap,
    Path((id, module)): Path<(String, String)>,
    body: Bytes,
) -> Result<JsonResponse, RestError> {
    state.auth.authorize(&headers, Permission::ServiceConnect)?;
    let (device_id, module_id) = (device_id(&id)?, module_id(&module)?);
    let patch = TwinPatch::from_json(&body::parse(&body)?, state.hub.rules()).map_err(HubError::from)?;
    let module = state
        .hub
        .patch_module_twin(device_id, module_id, patch, if_match(&headers))
        .await?;
    Ok(ok(module_twin_json(&module)))
}

pub async fn replace_twin(
    State(state): State<RestState>,
    headers: HeaderMap,
    Path((id, module)): Path<(String, String)>,
    body: Bytes,
) -> Result<JsonResponse, RestError> {
    state.auth.authorize(&headers, Permission::ServiceConnect)?;
    let (device_id, module_id) = (device_id(&id)?, module_id(&module)?);
    let replacement = TwinReplacement::from_json(&body::parse(&body)?, state.hub.rules()).map_err(HubError::from)?;
    let module = state
        .hub
        .replace_module_twin(device_id, module_id, replacement, if_match(&headers))
        .await?;
    Ok(ok(module_twin_json(&module)))
}
