//! The consumer groups of the Event Hubs-compatible endpoint: `GET /eventHubEndpoints/events/ConsumerGroups`,
//! and `PUT`, `GET`, `DELETE` on `.../ConsumerGroups/{name}` (the shape of IoT Hub's management API,
//! `{"value": [{"name": ...}]}` and `{"name": ...}`). The same under `/eventHubEndpoints/{endpoint}` for an
//! event hub endpoint routes fill, which has consumer groups of its own. Listing needs ServiceConnect,
//! changes RegistryWrite.

use super::error::RestError;
use super::RestState;
use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::Json;
use serde_json::{json, Value};
use twinhub_core::policy::Permission;
use twinhub_hub::HubError;

/// `None` for the built-in endpoint (`events`), else the event hub endpoint's name.
fn event_hub(endpoint: &str) -> Option<&str> {
    (!endpoint.eq_ignore_ascii_case(twinhub_core::routing::BUILT_IN_ENDPOINT)).then_some(endpoint)
}

fn groups(state: &RestState, endpoint: &str) -> Result<Vec<String>, RestError> {
    let event_hub = event_hub(endpoint);
    if let Some(name) = event_hub {
        if state.hub.routing().event_hub(name).is_none() {
            return Err(
                HubError::Routing(twinhub_hub::routing::RoutingError::EventHubNotFound(name.to_owned())).into(),
            );
        }
    }
    Ok(state.hub.consumer_groups_of(event_hub))
}

pub async fn list(
    State(state): State<RestState>,
    headers: HeaderMap,
    Path(endpoint): Path<String>,
) -> Result<Json<Value>, RestError> {
    state.auth.authorize(&headers, Permission::ServiceConnect)?;
    let groups: Vec<Value> = groups(&state, &endpoint)?
        .into_iter()
        .map(|name| json!({ "name": name }))
        .collect();
    Ok(Json(json!({ "value": groups })))
}

pub async fn get(
    State(state): State<RestState>,
    headers: HeaderMap,
    Path((endpoint, name)): Path<(String, String)>,
) -> Result<Json<Value>, RestError> {
    state.auth.authorize(&headers, Permission::ServiceConnect)?;
    let found = groups(&state, &endpoint)?
        .into_iter()
        .find(|group| group.eq_ignore_ascii_case(&name))
        .ok_or(HubError::ConsumerGroupNotFound(name))?;
    Ok(Json(json!({ "name": found })))
}

pub async fn create(
    State(state): State<RestState>,
    headers: HeaderMap,
    Path((endpoint, name)): Path<(String, String)>,
) -> Result<Json<Value>, RestError> {
    state.auth.authorize(&headers, Permission::RegistryWrite)?;
    state
        .hub
        .change_consumer_group(event_hub(&endpoint), &name, true)
        .await?;
    Ok(Json(json!({ "name": name })))
}

pub async fn delete(
    State(state): State<RestState>,
    headers: HeaderMap,
    Path((endpoint, name)): Path<(String, String)>,
) -> Result<Json<Value>, RestError> {
    state.auth.authorize(&headers, Permission::RegistryWrite)?;
    state
        .hub
        .change_consumer_group(event_hub(&endpoint), &name, false)
        .await?;
    Ok(Json(json!({ "name": name })))
}
