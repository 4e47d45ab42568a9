//! Message routes while the hub runs (twinhub's own API: IoT Hub configures routes through Azure Resource
//! Manager, which a self-hosted hub does not have). `GET /twinhub/routing` lists the routes and the fallback
//! route (ServiceConnect); `PUT /twinhub/routing` replaces everything (routes, endpoints, enrichments,
//! the fallback route: the routes file's content as JSON), `PUT` and `DELETE /twinhub/routing/routes/{name}`
//! and `PUT /twinhub/routing/fallback` change parts (RegistryWrite); `POST /twinhub/routing/test` says which
//! routes a message would take, without sending it (ServiceConnect).

use super::body;
use super::error::RestError;
use super::RestState;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};
use twinhub_core::event::{DeviceEvent, EventProperties, EventValue};
use twinhub_core::policy::Permission;
use twinhub_core::routing::{RouteSpec, RoutingSource};
use twinhub_core::DeviceId;
use twinhub_hub::routing::RoutingEdit;

/// A route as `PUT /twinhub/routing/routes/{name}` takes it (the name is the path's).
#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct RouteBody {
    source: RoutingSource,
    #[serde(default)]
    condition: String,
    endpoint: String,
    #[serde(default = "enabled")]
    enabled: bool,
}

fn enabled() -> bool {
    true
}

/// A message to test: what a device would send.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct TestBody {
    #[serde(default = "device_messages")]
    source: RoutingSource,
    /// The sender, for `$connectionDeviceId` and `$twin` (its twin as it is now).
    device_id: String,
    #[serde(default)]
    body: String,
    #[serde(default)]
    content_type: Option<String>,
    #[serde(default)]
    content_encoding: Option<String>,
    #[serde(default)]
    message_id: Option<String>,
    /// Application properties.
    #[serde(default)]
    properties: serde_json::Map<String, Value>,
}

fn device_messages() -> RoutingSource {
    RoutingSource::DeviceMessages
}

fn parse_as<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<T, RestError> {
    serde_json::from_value(body::parse(bytes)?).map_err(|error| RestError::bad_request(error.to_string()))
}

pub async fn get(State(state): State<RestState>, headers: HeaderMap) -> Result<Json<Value>, RestError> {
    state.auth.authorize(&headers, Permission::ServiceConnect)?;
    let table = state.hub.routing().table();
    Ok(Json(json!(table.spec())))
}

pub async fn put(State(state): State<RestState>, headers: HeaderMap, bytes: Bytes) -> Result<Json<Value>, RestError> {
    state.auth.authorize(&headers, Permission::RegistryWrite)?;
    let spec: twinhub_core::routing::RoutingSpec = parse_as(&bytes)?;
    state.hub.edit_routing(RoutingEdit::Replace(spec)).await?;
    Ok(Json(json!(state.hub.routing().table().spec())))
}

pub async fn put_route(
    State(state): State<RestState>,
    headers: HeaderMap,
    Path(name): Path<String>,
    bytes: Bytes,
) -> Result<Json<Value>, RestError> {
    state.auth.authorize(&headers, Permission::RegistryWrite)?;
    let route: RouteBody = parse_as(&bytes)?;
    let route = RouteSpec {
        name,
        source: route.source,
        condition: route.condition,
        endpoint: route.endpoint,
        enabled: route.enabled,
    };
    state.hub.edit_routing(RoutingEdit::PutRoute(route.clone())).await?;
    Ok(Json(json!(route)))
}

pub async fn delete_route(
    State(state): State<RestState>,
    headers: HeaderMap,
    Path(name): Path<String>,
) -> Result<Response, RestError> {
    state.auth.authorize(&headers, Permission::RegistryWrite)?;
    state.hub.edit_routing(RoutingEdit::RemoveRoute(name)).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

pub async fn put_fallback(
    State(state): State<RestState>,
    headers: HeaderMap,
    bytes: Bytes,
) -> Result<Json<Value>, RestError> {
    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Fallback {
        enabled: bool,
    }
    state.auth.authorize(&headers, Permission::RegistryWrite)?;
    let fallback: Fallback = parse_as(&bytes)?;
    state
        .hub
        .edit_routing(RoutingEdit::SetFallback(fallback.enabled))
        .await?;
    Ok(Json(json!({ "enabled": fallback.enabled })))
}

pub async fn test(State(state): State<RestState>, headers: HeaderMap, bytes: Bytes) -> Result<Json<Value>, RestError> {
    state.auth.authorize(&headers, Permission::ServiceConnect)?;
    let test: TestBody = parse_as(&bytes)?;
    let device_id =
        DeviceId::new(&test.device_id).map_err(|error| RestError::bad_request(format!("deviceId: {error}")))?;
    let application_properties = test
        .properties
        .into_iter()
        .map(|(name, value)| {
            let value = match value {
                Value::String(text) => EventValue::String(text),
                Value::Bool(flag) => EventValue::Bool(flag),
                Value::Number(number) => match number.as_i64() {
                    Some(whole) => EventValue::Long(whole),
                    None => EventValue::Double(number.as_f64().unwrap_or(f64::NAN)),
                },
                Value::Null => EventValue::Null,
                other => EventValue::String(other.to_string()),
            };
            (name, value)
        })
        .collect();
    let event = DeviceEvent {
        body: test.body.into_bytes(),
        properties: EventProperties {
            content_type: test.content_type,
            content_encoding: test.content_encoding,
            message_id: test.message_id.map(EventValue::String),
            ..EventProperties::default()
        },
        application_properties,
        annotations: Vec::new(),
    };
    let destinations = state.hub.test_route(test.source, &device_id, &event);
    let (routes, built_in) = (destinations.routes.clone(), destinations.built_in);
    let endpoints: Vec<String> = destinations.endpoints().collect();
    Ok(Json(json!({
        "routes": routes,
        "builtInEndpoint": built_in,
        "endpoints": endpoints,
    })))
}
