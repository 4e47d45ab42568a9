//! The consumer groups of the Event Hubs-compatible endpoint: `GET /eventHubEndpoints/events/ConsumerGroups`,
//! and `PUT`, `GET`, `DELETE` on `.../ConsumerGroups/{name}` (the shape of IoT Hub's management API,
//! `{"value": [{"name": ...}]}` and `{"name": ...}`). Listing needs ServiceConnect, changes RegistryWrite.

use super::error::RestError;
use super::RestState;
use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::Json;
use serde_json::{json, Value};
use twinhub_core::policy::Permission;
use twinhub_hub::HubError;

pub async fn list(State(state): State<RestState>, headers: HeaderMap) -> Result<Json<Value>, RestError> {
    state.auth.authorize(&headers, Permission::ServiceConnect)?;
    let groups: Vec<Value> = state
        .hub
        .consumer_groups()
        .into_iter()
        .map(|name| json!({ "name": name }))
        .collect();
    Ok(Json(json!({ "value": groups })))
}

pub async fn get(
    State(state): State<RestState>,
    headers: HeaderMap,
    Path(name): Path<String>,
) -> Result<Json<Value>, RestError> {
    state.auth.authorize(&headers, Permission::ServiceConnect)?;
    let found = state
        .hub
        .consumer_groups()
        .into_iter()
        .find(|group| group.eq_ignore_ascii_case(&name))
        .ok_or(HubError::ConsumerGroupNotFound(name))?;
    Ok(Json(json!({ "name": found })))
}

pub async fn create(
    State(state): State<RestState>,
    headers: HeaderMap,
    Path(name): Path<String>,
) -> Result<Json<Value>, RestError> {
    state.auth.authorize(&headers, Permission::RegistryWrite)?;
    state.hub.create_consumer_group(&name).await?;
    Ok(Json(json!({ "name": name })))
}

pub async fn delete(
    State(state): State<RestState>,
    headers: HeaderMap,
    Path(name): Path<String>,
) -> Result<Json<Value>, RestError> {
    state.auth.authorize(&headers, Permission::RegistryWrite)?;
    state.hub.delete_consumer_group(&name).await?;
    Ok(Json(json!({ "name": name })))
}
