//! JSON in and out, with IoT Hub's content type and error for malformed bodies.

use super::error::RestError;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};

/// JSON responses say `application/json; charset=utf-8`: Node only parses bodies whose content type
/// contains `application/json`.
pub struct JsonResponse(pub StatusCode, pub serde_json::Value);

pub fn json_bytes(value: &serde_json::Value) -> JsonBody {
    JsonBody(serde_json::to_vec(value).unwrap_or_default())
}

/// A body already rendered as JSON text (a cached twin).
pub fn json_text(text: &str) -> JsonBody {
    JsonBody(text.as_bytes().to_vec())
}

pub struct JsonBody(pub Vec<u8>);

impl IntoResponse for JsonBody {
    fn into_response(self) -> Response {
        let mut response = self.0.into_response();
        response.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json; charset=utf-8"),
        );
        response
    }
}

impl IntoResponse for JsonResponse {
    fn into_response(self) -> Response {
        (self.0, json_bytes(&self.1)).into_response()
    }
}

pub fn ok(value: serde_json::Value) -> JsonResponse {
    JsonResponse(StatusCode::OK, value)
}

/// Parses a request body; malformed JSON is IoT Hub's `IotHubFormatError` (400).
pub fn parse(body: &[u8]) -> Result<serde_json::Value, RestError> {
    serde_json::from_slice(body).map_err(|error| {
        RestError::new(
            StatusCode::BAD_REQUEST,
            "IotHubFormatError",
            format!("the request body is not valid JSON: {error}"),
        )
    })
}
