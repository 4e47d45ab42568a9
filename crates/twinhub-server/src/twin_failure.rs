//! The one place hub errors become device twin answers, for every device transport: a status (in the
//! MQTT response topic, in AMQP's `status` annotation) and IoT Hub's JSON error body. Ref:
//! device-mqtt-http notes §4.5 and amqp notes §3.3: Node fails a call only when the body has `errorCode`
//! (an empty error body crashes it, and it parses AMQP error bodies as JSON); Python fails on any status
//! of 300 or more.

use twinhub_core::twin::ReportedPatch;
use twinhub_core::TwinRules;
use twinhub_hub::HubError;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TwinFailure {
    pub status: u16,
    /// IoT Hub's numeric error code: the status followed by three digits.
    pub error_code: u32,
    pub message: String,
}

impl TwinFailure {
    pub fn new(status: u16, error_code: u32, message: impl Into<String>) -> Self {
        TwinFailure {
            status,
            error_code,
            message: message.into(),
        }
    }

    pub fn bad_request(message: impl Into<String>) -> Self {
        TwinFailure::new(400, 400004, message)
    }

    pub fn throttled() -> Self {
        TwinFailure::new(
            429,
            429001,
            "too many twin requests on this connection; slow down and retry",
        )
    }

    /// `{"errorCode":...,"message":...}`
    pub fn body(&self) -> Vec<u8> {
        serde_json::to_vec(&serde_json::json!({
            "errorCode": self.error_code,
            "message": self.message,
        }))
        .unwrap_or_else(|_| br#"{"errorCode":500001,"message":"internal error"}"#.to_vec())
    }
}

/// A device's reported patch as it arrives (JSON bytes), checked against the twin rules.
pub fn parse_reported_patch(payload: &[u8], rules: &TwinRules) -> Result<ReportedPatch, TwinFailure> {
    let body = serde_json::from_slice::<serde_json::Value>(payload)
        .map_err(|error| TwinFailure::bad_request(format!("the reported patch is not valid JSON: {error}")))?;
    ReportedPatch::from_json(&body, rules).map_err(|error| TwinFailure::bad_request(error.to_string()))
}

impl From<&HubError> for TwinFailure {
    fn from(error: &HubError) -> Self {
        let (status, error_code) = match error {
            HubError::DeviceNotFound(_) | HubError::ModuleNotFound { .. } => (404, 404001),
            HubError::ModuleAlreadyExists { .. } => (409, 409001),
            HubError::PreconditionFailed { .. } => (412, 412002),
            HubError::TwinRule(_)
            | HubError::DeviceDocument(_)
            | HubError::DeviceScope(_)
            | HubError::InvalidArgument(_)
            | HubError::Query(_)
            | HubError::Routing(_)
            | HubError::DeviceAlreadyExists(_)
            | HubError::DeviceDefinedMultipleTimes(_) => (400, 400004),
            HubError::MessageTooLarge(_) => (413, 413001),
            HubError::ConsumerGroupName(_) => (400, 400004),
            HubError::ConsumerGroupNotFound(_) | HubError::JobNotFound(_) | HubError::ConfigurationNotFound(_) => {
                (404, 404001)
            }
            HubError::ConfigurationEtagMismatch(_) => (412, 412001),
            HubError::TooManyConfigurations(_) => (403, 403002),
            HubError::JobAlreadyExists(_) => (409, 409001),
            HubError::JobQuotaExceeded(_) => (403, 403003),
            HubError::ShuttingDown => (503, 503001),
            HubError::DeviceNotOnline(_) => (404, 404103),
            HubError::MethodTimeout(_) => (504, 504101),
            HubError::MethodCall(_) => (400, 400004),
            HubError::CloudToDevice(_) => (400, 400004),
            HubError::Store(twinhub_store::StoreError::Unavailable(_)) | HubError::Bus(_) => (503, 503003),
            HubError::Store(_) | HubError::Internal(_) => (500, 500001),
        };
        if status >= 500 {
            tracing::error!(%error, "twin request failed");
        }
        TwinFailure::new(status, error_code, error.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use twinhub_core::{DeviceId, TwinRuleViolation};

    #[test]
    fn every_failure_has_a_status_and_a_json_body_with_an_error_code() {
        let missing = TwinFailure::from(&HubError::DeviceNotFound(DeviceId::new("d1").unwrap()));
        assert_eq!((missing.status, missing.error_code), (404, 404001));
        let rule = TwinFailure::from(&HubError::TwinRule(TwinRuleViolation::NotAnObject {
            path: "properties.reported".into(),
        }));
        assert_eq!(rule.status, 400);
        let body: serde_json::Value = serde_json::from_slice(&rule.body()).unwrap();
        assert_eq!(body["errorCode"], 400004);
        assert!(body["message"].as_str().unwrap().contains("properties.reported"));
        assert_eq!(TwinFailure::from(&HubError::ShuttingDown).status, 503);
    }
}
