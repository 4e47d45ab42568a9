//! Device twins: `GET`, `PATCH` (merge) and `PUT` (replace) on `/twins/{id}`.

use super::body;
use super::error::RestError;
use super::registry::{device_id, if_match};
use super::RestState;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue};
use axum::response::{IntoResponse, Response};
use twinhub_core::json::twin_json_text;
use twinhub_core::policy::Permission;
use twinhub_core::twin::{TwinPatch, TwinReplacement};
use twinhub_hub::HubError;
use twinhub_query::PAGE_SIZE_MAX;

pub async fn get_twin(
    State(state): State<RestState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<body::JsonBody, RestError> {
    state.auth.authorize(&headers, Permission::ServiceConnect)?;
    state.hub.read_barrier().await;
    let record = state.hub.device(&device_id(&id)?)?;
    Ok(body::json_text(&twin_json_text(&record)))
}

pub async fn patch_twin(
    State(state): State<RestState>,
    headers: HeaderMap,
    Path(id): Path<String>,
    body: Bytes,
) -> Result<body::JsonBody, RestError> {
    state.auth.authorize(&headers, Permission::ServiceConnect)?;
    let id = device_id(&id)?;
    let patch = TwinPatch::from_json(&body::parse(&body)?, state.hub.rules()).map_err(HubError::from)?;
    let record = state.hub.patch_twin(id, patch, if_match(&headers)).await?;
    Ok(body::json_text(&twin_json_text(&record)))
}

pub async fn replace_twin(
    State(state): State<RestState>,
    headers: HeaderMap,
    Path(id): Path<String>,
    body: Bytes,
) -> Result<body::JsonBody, RestError> {
    state.auth.authorize(&headers, Permission::ServiceConnect)?;
    let id = device_id(&id)?;
    let replacement = TwinReplacement::from_json(&body::parse(&body)?, state.hub.rules()).map_err(HubError::from)?;
    let record = state.hub.replace_twin(id, replacement, if_match(&headers)).await?;
    Ok(body::json_text(&twin_json_text(&record)))
}

/// `POST /devices/query` with `{"query": "..."}`. Paging: `x-ms-max-item-count` (default 1000, at most
/// 10000) and `x-ms-continuation`; the response's `x-ms-continuation` is left out on the last page (Node
/// loops while it is present, even empty), and `x-ms-item-type` says `twin` or `raw`.
pub async fn query(State(state): State<RestState>, headers: HeaderMap, body: Bytes) -> Result<Response, RestError> {
    state.auth.authorize(&headers, Permission::ServiceConnect)?;
    let request = body::parse(&body)?;
    let Some(text) = request.get("query").and_then(|q| q.as_str()).map(str::to_owned) else {
        return Err(RestError::bad_request(
            "the body must be a JSON object with a 'query' string",
        ));
    };
    let page_size = match header_text(&headers, "x-ms-max-item-count") {
        None => None,
        Some(value) => match value.trim().parse::<usize>() {
            Ok(n) if n > 0 => Some(n.min(PAGE_SIZE_MAX)),
            _ => {
                return Err(RestError::bad_request(format!(
                    "x-ms-max-item-count must be a positive integer, not '{value}'"
                )))
            }
        },
    };
    let continuation = header_text(&headers, "x-ms-continuation").filter(|token| !token.is_empty());
    let page = state.hub.query(&text, page_size, continuation.as_deref()).await?;
    let mut response = body::JsonBody(page.to_json_array().into_bytes()).into_response();
    let response_headers = response.headers_mut();
    response_headers.insert("x-ms-item-type", HeaderValue::from_static(page.item_type.as_str()));
    if let Some(token) = page.continuation {
        if let Ok(value) = HeaderValue::from_str(&token) {
            response_headers.insert("x-ms-continuation", value);
        }
    }
    Ok(response)
}

fn header_text(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get(name)
        .and_then(|value| value.to_str().ok())
        .map(str::to_owned)
}
