//! Automatic device configurations: `PUT`/`GET`/`DELETE /configurations/{id}` (an update with
//! `If-Match`, quoted by Node and bare by Python), `GET /configurations[?top=n]`,
//! `POST /configurations/testQueries`, and `POST /devices/{id}/applyConfigurationContent`, as the Node
//! `Registry` and the Python `IoTHubConfigurationManager` call them. Ref: service-rest notes §4.8.

use super::body::{self, ok, JsonResponse};
use super::error::RestError;
use super::registry::{device_id, if_match};
use super::RestState;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use serde_json::{json, Value};
use std::collections::{BTreeMap, HashMap};
use twinhub_core::policy::Permission;

pub async fn put(
    State(state): State<RestState>,
    headers: HeaderMap,
    Path(id): Path<String>,
    body: Bytes,
) -> Result<JsonResponse, RestError> {
    state.auth.authorize(&headers, Permission::RegistryWrite)?;
    let compiled = state
        .hub
        .put_configuration(id, body::parse(&body)?, if_match(&headers))
        .await?;
    let (compiled, metrics) = state.hub.configuration(&compiled.configuration.id).await?;
    Ok(ok(compiled.configuration.to_json(&metrics)))
}

pub async fn get(
    State(state): State<RestState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<JsonResponse, RestError> {
    state.auth.authorize(&headers, Permission::RegistryRead)?;
    let (compiled, metrics) = state.hub.configuration(&id).await?;
    Ok(ok(compiled.configuration.to_json(&metrics)))
}

pub async fn list(
    State(state): State<RestState>,
    headers: HeaderMap,
    Query(parameters): Query<HashMap<String, String>>,
) -> Result<JsonResponse, RestError> {
    state.auth.authorize(&headers, Permission::RegistryRead)?;
    let top = match parameters.get("top") {
        None => usize::MAX,
        Some(text) => text
            .parse::<usize>()
            .map_err(|_| RestError::bad_request(format!("top must be a positive integer, not '{text}'")))?,
    };
    let all = state.hub.configurations().await;
    let items: Vec<Value> = all
        .iter()
        .take(top)
        .map(|(compiled, metrics)| compiled.configuration.to_json(metrics))
        .collect();
    Ok(ok(Value::Array(items)))
}

pub async fn delete(
    State(state): State<RestState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<StatusCode, RestError> {
    state.auth.authorize(&headers, Permission::RegistryWrite)?;
    state.hub.delete_configuration(id, if_match(&headers)).await?;
    Ok(StatusCode::NO_CONTENT)
}

pub async fn test_queries(
    State(state): State<RestState>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<JsonResponse, RestError> {
    state.auth.authorize(&headers, Permission::RegistryRead)?;
    let request = body::parse(&body)?;
    let condition = request["targetCondition"].as_str().unwrap_or_default();
    let queries: BTreeMap<String, String> = request["customMetricQueries"]
        .as_object()
        .map(|queries| {
            queries
                .iter()
                .map(|(name, query)| (name.clone(), query.as_str().unwrap_or_default().to_owned()))
                .collect()
        })
        .unwrap_or_default();
    let (condition_error, metric_errors) = state.hub.test_configuration_queries(condition, &queries);
    Ok(ok(json!({
        "targetConditionError": condition_error,
        "customMetricQueryErrors": metric_errors,
    })))
}

pub async fn apply_content(
    State(state): State<RestState>,
    headers: HeaderMap,
    Path(id): Path<String>,
    body: Bytes,
) -> Result<StatusCode, RestError> {
    state.auth.authorize(&headers, Permission::RegistryWrite)?;
    state
        .hub
        .apply_configuration_content(device_id(&id)?, &body::parse(&body)?)
        .await?;
    Ok(StatusCode::NO_CONTENT)
}
