//! The one place hub errors become HTTP: a status, IoT Hub's classic error body, and the
//! `iothub-errorcode` header. Ref: service-rest notes §3: Node reads `Message` as `ErrorCode:<Name>;<text>`
//! to pick its error class (DeviceNotFoundError, ...); Python only looks at the status.

use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use twinhub_hub::HubError;

#[derive(Debug)]
pub struct RestError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
}

impl RestError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        RestError {
            status,
            code,
            message: message.into(),
        }
    }

    pub fn bad_request(message: impl Into<String>) -> Self {
        RestError::new(StatusCode::BAD_REQUEST, "ArgumentInvalid", message)
    }

    pub fn unauthorized() -> Self {
        // Nothing about which check failed: a caller probing keys learns nothing.
        RestError::new(StatusCode::UNAUTHORIZED, "IotHubUnauthorizedAccess", "Unauthorized")
    }
}

/// The status and IoT Hub error code for a hub error.
pub fn classify(error: &HubError) -> (StatusCode, &'static str) {
    match error {
        HubError::DeviceNotFound(_) => (StatusCode::NOT_FOUND, "DeviceNotFound"),
        HubError::DeviceAlreadyExists(_) => (StatusCode::CONFLICT, "DeviceAlreadyExists"),
        HubError::ModuleNotFound { .. } => (StatusCode::NOT_FOUND, "ModuleNotFound"),
        HubError::ModuleAlreadyExists { .. } => (StatusCode::CONFLICT, "ModuleAlreadyExistsOnDevice"),
        HubError::PreconditionFailed { .. } => (StatusCode::PRECONDITION_FAILED, "PreconditionFailed"),
        HubError::TwinRule(_)
        | HubError::DeviceDocument(_)
        | HubError::DeviceScope(_)
        | HubError::InvalidArgument(_) => (StatusCode::BAD_REQUEST, "ArgumentInvalid"),
        HubError::Query(_) => (StatusCode::BAD_REQUEST, "ArgumentInvalid"),
        HubError::Routing(twinhub_hub::routing::RoutingError::RouteNotFound(_)) => {
            (StatusCode::NOT_FOUND, "RouteNotFound")
        }
        HubError::Routing(twinhub_hub::routing::RoutingError::EventHubNotFound(_)) => {
            (StatusCode::NOT_FOUND, "EventHubNotFound")
        }
        HubError::Routing(_) => (StatusCode::BAD_REQUEST, "ArgumentInvalid"),
        HubError::DeviceDefinedMultipleTimes(_) => (StatusCode::BAD_REQUEST, "DeviceDefinedMultipleTimes"),
        HubError::MessageTooLarge(_) => (StatusCode::PAYLOAD_TOO_LARGE, "MessageTooLarge"),
        HubError::ConsumerGroupName(_) => (StatusCode::BAD_REQUEST, "ArgumentInvalid"),
        HubError::ConsumerGroupNotFound(_) => (StatusCode::NOT_FOUND, "ConsumerGroupNotFound"),
        HubError::JobNotFound(_) => (StatusCode::NOT_FOUND, "JobNotFound"),
        HubError::ConfigurationNotFound(_) => (StatusCode::NOT_FOUND, "ConfigurationNotFound"),
        HubError::ConfigurationEtagMismatch(_) => (StatusCode::PRECONDITION_FAILED, "PreconditionFailed"),
        HubError::TooManyConfigurations(_) => (StatusCode::FORBIDDEN, "IotHubQuotaExceeded"),
        HubError::JobAlreadyExists(_) => (StatusCode::CONFLICT, "JobAlreadyExists"),
        HubError::JobQuotaExceeded(_) => (StatusCode::FORBIDDEN, "JobQuotaExceeded"),
        HubError::ShuttingDown => (StatusCode::SERVICE_UNAVAILABLE, "ServiceUnavailable"),
        HubError::DeviceNotOnline(_) => (StatusCode::NOT_FOUND, "DeviceNotOnline"),
        HubError::MethodTimeout(_) => (StatusCode::GATEWAY_TIMEOUT, "GatewayTimeoutException"),
        // A device's answer IoT Hub cannot pass on (not JSON): the device's fault, not the caller's.
        HubError::MethodCall(
            twinhub_core::method::MethodCallError::AnswerNotJson(_)
            | twinhub_core::method::MethodCallError::AnswerTooLarge(_),
        ) => (StatusCode::BAD_GATEWAY, "BadDeviceResponse"),
        HubError::MethodCall(_) => (StatusCode::BAD_REQUEST, "ArgumentInvalid"),
        HubError::CloudToDevice(error) => {
            use twinhub_core::c2d::QueueError;
            match error {
                QueueError::QueueFull => (StatusCode::FORBIDDEN, "DeviceMaximumQueueDepthExceeded"),
                QueueError::TooLarge(_) => (StatusCode::PAYLOAD_TOO_LARGE, "MessageTooLarge"),
                QueueError::Expiry => (StatusCode::BAD_REQUEST, "ArgumentInvalid"),
                QueueError::LockLost => (StatusCode::PRECONDITION_FAILED, "DeviceMessageLockLost"),
            }
        }
        // PostgreSQL out of reach: IoT Hub's "try again later".
        HubError::Store(twinhub_store::StoreError::Unavailable(_)) | HubError::Bus(_) => {
            (StatusCode::SERVICE_UNAVAILABLE, "ServerBusy")
        }
        HubError::Store(_) | HubError::Internal(_) => (StatusCode::INTERNAL_SERVER_ERROR, "ServerError"),
    }
}

impl From<HubError> for RestError {
    fn from(error: HubError) -> Self {
        let (status, code) = classify(&error);
        // A device that does not answer, or answers badly, is the device's business, not a hub failure.
        let device_caused = matches!(error, HubError::MethodTimeout(_) | HubError::MethodCall(_));
        if status.is_server_error() && !device_caused {
            tracing::error!(%error, "request failed");
        }
        RestError::new(status, code, error.to_string())
    }
}

fn tracking_id() -> String {
    use rand::RngCore;
    let mut bytes = [0u8; 16];
    rand::rng().fill_bytes(&mut bytes);
    bytes.iter().map(|byte| format!("{byte:02x}")).collect()
}

impl IntoResponse for RestError {
    fn into_response(self) -> Response {
        let now = time::OffsetDateTime::now_utc();
        let timestamp = format!(
            "{:02}/{:02}/{:04} {:02}:{:02}:{:02}",
            u8::from(now.month()),
            now.day(),
            now.year(),
            now.hour(),
            now.minute(),
            now.second()
        );
        // The text must not contain ';' or Node cuts the message there.
        let message = self.message.replace(';', ",");
        let body = serde_json::json!({
            "Message": format!("ErrorCode:{};{}", self.code, message),
            "ExceptionMessage": format!("Tracking ID:{}-G:0-TimeStamp:{timestamp}", tracking_id()),
        });
        let mut response = (self.status, super::body::json_bytes(&body)).into_response();
        response
            .headers_mut()
            .insert("iothub-errorcode", HeaderValue::from_static(self.code));
        response
    }
}

pub async fn not_found() -> RestError {
    RestError::new(
        StatusCode::NOT_FOUND,
        "InvalidOperation",
        "no such resource in the IoT Hub service API",
    )
}
