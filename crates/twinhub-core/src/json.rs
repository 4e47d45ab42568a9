//! The device and twin documents as IoT Hub's JSON, and the device document the back end sends.
//! Ref: service-rest notes §6 (field names both SDK models use; `deviceId` always present, since Node
//! refuses a device or twin without it).

use crate::device::{AuthenticationType, DeviceIdentity, DeviceStatus, SymmetricKeys, X509Thumbprints};
use crate::device_scope::{self, ScopeError, ScopeHolder};
use crate::ids::{DeviceId, InvalidId};
use crate::record::DeviceRecord;
use crate::time::iso8601_or_never;
use serde_json::{json, Map};

/// The device as `GET /devices/{id}` returns it.
pub fn device_json(record: &DeviceRecord) -> serde_json::Value {
    let identity = &record.identity;
    let keys = identity.symmetric_keys.as_ref();
    json!({
        "deviceId": identity.device_id.as_str(),
        "generationId": identity.generation_id,
        "etag": identity.etag(),
        "connectionState": record.presence.connection_state.as_str(),
        "status": identity.status.as_str(),
        "statusReason": identity.status_reason,
        "connectionStateUpdatedTime": iso8601_or_never(record.presence.connection_state_updated),
        "statusUpdatedTime": iso8601_or_never(identity.status_updated),
        "lastActivityTime": iso8601_or_never(record.presence.last_activity),
        "cloudToDeviceMessageCount": identity.cloud_to_device_message_count,
        "authentication": {
            "symmetricKey": {
                "primaryKey": keys.map(|k| k.primary.as_str()),
                "secondaryKey": keys.map(|k| k.secondary.as_str()),
            },
            "x509Thumbprint": thumbprints_json(&identity.x509_thumbprints),
            "type": identity.authentication_type.as_str(),
        },
        "capabilities": {"iotEdge": identity.iot_edge},
        "deviceScope": identity.device_scope,
        "parentScopes": identity.parent_scopes,
    })
}

fn thumbprints_json(thumbprints: &X509Thumbprints) -> serde_json::Value {
    json!({"primaryThumbprint": thumbprints.primary, "secondaryThumbprint": thumbprints.secondary})
}

/// `twin_json` as text, rendered once per record and then shared.
pub fn twin_json_text(record: &DeviceRecord) -> std::sync::Arc<str> {
    record.rendered_twin.get_or_render(|| twin_json(record).to_string())
}

/// The twin as a device reads it (MQTT and AMQP GET): `{"desired":{..,"$version":n},"reported":{..,"$version":m}}`,
/// no tags and no metadata. Rendered once per record and then shared: devices GET their twin after every
/// reconnect, and a busy hub serves a six-figure number of GETs a second.
pub fn device_twin_text(record: &DeviceRecord) -> std::sync::Arc<str> {
    record.rendered_device_twin.get_or_render(|| {
        json!({
            "desired": record.twin.desired.to_json_without_metadata(),
            "reported": record.twin.reported.to_json_without_metadata(),
        })
        .to_string()
    })
}

/// The twin as `GET /twins/{id}` and `SELECT *` return it. Ref: service-rest notes §6.3.
pub fn twin_json(record: &DeviceRecord) -> serde_json::Value {
    let identity = &record.identity;
    let twin = &record.twin;
    let mut document = Map::new();
    document.insert("deviceId".into(), identity.device_id.as_str().into());
    document.insert("etag".into(), twin.etag().into());
    document.insert("deviceEtag".into(), identity.etag().into());
    document.insert("status".into(), identity.status.as_str().into());
    document.insert("statusReason".into(), identity.status_reason.clone().into());
    // Twins say statusUpdateTime where devices say statusUpdatedTime: IoT Hub's own inconsistency.
    document.insert(
        "statusUpdateTime".into(),
        iso8601_or_never(identity.status_updated).into(),
    );
    document.insert(
        "connectionState".into(),
        record.presence.connection_state.as_str().into(),
    );
    document.insert(
        "lastActivityTime".into(),
        iso8601_or_never(record.presence.last_activity).into(),
    );
    document.insert(
        "cloudToDeviceMessageCount".into(),
        identity.cloud_to_device_message_count.into(),
    );
    document.insert(
        "authenticationType".into(),
        identity.authentication_type.as_str().into(),
    );
    document.insert("x509Thumbprint".into(), thumbprints_json(&identity.x509_thumbprints));
    document.insert("modelId".into(), "".into());
    document.insert("version".into(), twin.version.into());
    document.insert("tags".into(), serde_json::Value::Object(twin.tags.to_json()));
    document.insert("properties".into(), twin.properties_json());
    document.insert("capabilities".into(), json!({"iotEdge": identity.iot_edge}));
    if let Some(scope) = &identity.device_scope {
        document.insert("deviceScope".into(), scope.clone().into());
    }
    if !identity.parent_scopes.is_empty() {
        document.insert("parentScopes".into(), identity.parent_scopes.clone().into());
    }
    serde_json::Value::Object(document)
}

/// What a back end may set on a device (`PUT /devices/{id}`, bulk create/update). A PUT replaces all of
/// these; unset keys are generated.
#[derive(Clone, Debug, PartialEq)]
pub struct DeviceDraft {
    pub device_id: DeviceId,
    pub status: DeviceStatus,
    pub status_reason: Option<String>,
    pub authentication_type: AuthenticationType,
    /// `None` or empty keys: generate them (sas only).
    pub symmetric_keys: Option<SymmetricKeys>,
    pub x509_thumbprints: X509Thumbprints,
    pub iot_edge: bool,
    pub device_scope: Option<String>,
    pub parent_scopes: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum DeviceDocumentError {
    #[error("the device must be a JSON object")]
    NotAnObject,
    #[error("invalid device id '{id}': {source}")]
    InvalidId { id: String, source: InvalidId },
    #[error("'{0}' has the wrong type")]
    WrongType(&'static str),
    #[error("'status' must be 'enabled' or 'disabled'")]
    Status,
    #[error("'authentication.type' must be sas, selfSigned, certificateAuthority or none")]
    AuthenticationType,
    #[error("'{0}' is not a valid Base64 key of 16 to 64 bytes")]
    Key(&'static str),
    #[error("'statusReason' may be at most 128 characters")]
    StatusReasonTooLong,
}

fn optional_string(
    object: &Map<String, serde_json::Value>,
    key: &'static str,
) -> Result<Option<String>, DeviceDocumentError> {
    match object.get(key) {
        None | Some(serde_json::Value::Null) => Ok(None),
        Some(serde_json::Value::String(text)) => Ok(Some(text.clone())),
        Some(_) => Err(DeviceDocumentError::WrongType(key)),
    }
}

fn optional_object<'a>(
    object: &'a Map<String, serde_json::Value>,
    key: &'static str,
) -> Result<Option<&'a Map<String, serde_json::Value>>, DeviceDocumentError> {
    match object.get(key) {
        None | Some(serde_json::Value::Null) => Ok(None),
        Some(serde_json::Value::Object(inner)) => Ok(Some(inner)),
        Some(_) => Err(DeviceDocumentError::WrongType(key)),
    }
}

fn check_key(key: &str, field: &'static str) -> Result<(), DeviceDocumentError> {
    use base64::Engine;
    match base64::engine::general_purpose::STANDARD.decode(key) {
        Ok(bytes) if (16..=64).contains(&bytes.len()) => Ok(()),
        _ => Err(DeviceDocumentError::Key(field)),
    }
}

impl DeviceDraft {
    /// Reads a device document. `id_field` is `deviceId` for the registry API and `id` for bulk.
    pub fn from_json(body: &serde_json::Value, id_field: &'static str) -> Result<DeviceDraft, DeviceDocumentError> {
        let object = body.as_object().ok_or(DeviceDocumentError::NotAnObject)?;
        let id = optional_string(object, id_field)?.unwrap_or_default();
        let device_id = DeviceId::new(&id).map_err(|source| DeviceDocumentError::InvalidId { id, source })?;
        let status = match optional_string(object, "status")?
            .as_deref()
            .map(str::to_ascii_lowercase)
            .as_deref()
        {
            None | Some("enabled") => DeviceStatus::Enabled,
            Some("disabled") => DeviceStatus::Disabled,
            Some(_) => return Err(DeviceDocumentError::Status),
        };
        let status_reason = optional_string(object, "statusReason")?;
        if status_reason
            .as_ref()
            .is_some_and(|reason| reason.chars().count() > 128)
        {
            return Err(DeviceDocumentError::StatusReasonTooLong);
        }
        let authentication = optional_object(object, "authentication")?;
        let mut authentication_type = AuthenticationType::Sas;
        let mut symmetric_keys = None;
        let mut x509_thumbprints = X509Thumbprints::default();
        if let Some(authentication) = authentication {
            if let Some(kind) = optional_string(authentication, "type")? {
                authentication_type =
                    AuthenticationType::parse(&kind).ok_or(DeviceDocumentError::AuthenticationType)?;
            }
            if let Some(keys) = optional_object(authentication, "symmetricKey")? {
                let primary = optional_string(keys, "primaryKey")?.unwrap_or_default();
                let secondary = optional_string(keys, "secondaryKey")?.unwrap_or_default();
                if !primary.is_empty() || !secondary.is_empty() {
                    check_key(&primary, "authentication.symmetricKey.primaryKey")?;
                    check_key(&secondary, "authentication.symmetricKey.secondaryKey")?;
                    symmetric_keys = Some(SymmetricKeys { primary, secondary });
                }
            }
            if let Some(thumbprints) = optional_object(authentication, "x509Thumbprint")? {
                x509_thumbprints = X509Thumbprints {
                    primary: optional_string(thumbprints, "primaryThumbprint")?,
                    secondary: optional_string(thumbprints, "secondaryThumbprint")?,
                };
            }
        }
        let iot_edge = match optional_object(object, "capabilities")?.and_then(|c| c.get("iotEdge")) {
            None | Some(serde_json::Value::Null) => false,
            Some(serde_json::Value::Bool(flag)) => *flag,
            Some(_) => return Err(DeviceDocumentError::WrongType("capabilities.iotEdge")),
        };
        let parent_scopes = match object.get("parentScopes") {
            None | Some(serde_json::Value::Null) => Vec::new(),
            Some(serde_json::Value::String(scope)) => vec![scope.clone()],
            Some(serde_json::Value::Array(scopes)) => scopes
                .iter()
                .map(|scope| {
                    scope
                        .as_str()
                        .map(str::to_owned)
                        .ok_or(DeviceDocumentError::WrongType("parentScopes"))
                })
                .collect::<Result<_, _>>()?,
            Some(_) => return Err(DeviceDocumentError::WrongType("parentScopes")),
        };
        Ok(DeviceDraft {
            device_id,
            status,
            status_reason,
            authentication_type,
            symmetric_keys,
            x509_thumbprints,
            iot_edge,
            device_scope: optional_string(object, "deviceScope")?,
            parent_scopes,
        })
    }

    /// The identity this draft describes. `previous` is the identity it replaces, if any: the
    /// generation id stays, the etag and (on a status change) the status time move. The edge scopes are
    /// resolved and their parent checked in the registry `lookup` reads (`device_scope`).
    pub fn into_identity<'r>(
        self,
        previous: Option<&DeviceIdentity>,
        now: crate::Timestamp,
        lookup: impl Fn(&DeviceId) -> Option<ScopeHolder<'r>>,
    ) -> Result<DeviceIdentity, ScopeError> {
        let symmetric_keys = match (self.authentication_type, self.symmetric_keys) {
            (AuthenticationType::Sas, None) => Some(SymmetricKeys::generate()),
            (_, keys) => keys,
        };
        let status_updated = match previous {
            Some(previous) if previous.status == self.status => previous.status_updated,
            Some(_) => Some(now),
            None => None,
        };
        let generation_id = previous.map_or_else(DeviceIdentity::new_generation_id, |p| p.generation_id.clone());
        let (device_scope, parent_scopes) = device_scope::resolve(
            &self.device_id,
            &generation_id,
            self.iot_edge,
            self.device_scope.as_deref(),
            &self.parent_scopes,
            previous.and_then(|p| p.parent_scopes.first()).map(String::as_str),
            lookup,
        )?;
        Ok(DeviceIdentity {
            device_id: self.device_id,
            generation_id,
            etag_counter: previous.map_or(1, |p| p.etag_counter + 1),
            status: self.status,
            status_reason: self.status_reason,
            status_updated,
            authentication_type: self.authentication_type,
            symmetric_keys,
            x509_thumbprints: self.x509_thumbprints,
            iot_edge: self.iot_edge,
            device_scope,
            parent_scopes,
            cloud_to_device_message_count: previous.map_or(0, |p| p.cloud_to_device_message_count),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::{DeviceRecord, Presence};
    use crate::twin::Twin;
    use crate::Timestamp;

    #[test]
    fn node_create_body_gets_generated_keys() {
        let body = json!({"deviceId": "dev1", "authentication": {"type": "sas", "symmetricKey": {"primaryKey": "", "secondaryKey": ""}}});
        let draft = DeviceDraft::from_json(&body, "deviceId").unwrap();
        let identity = draft.into_identity(None, Timestamp(0), |_| None).unwrap();
        let keys = identity.symmetric_keys.clone().expect("generated");
        assert_eq!(keys.primary.len(), 44);
        assert_ne!(keys.primary, keys.secondary);
        let record = DeviceRecord::new(identity, Twin::new(Timestamp(0)), Presence::default());
        let document = device_json(&record);
        assert_eq!(document["deviceId"], "dev1");
        assert_eq!(document["etag"], "MQ==");
        assert_eq!(document["lastActivityTime"], "0001-01-01T00:00:00Z");
        let twin = twin_json(&record);
        assert_eq!(twin["deviceEtag"], "MQ==");
        assert_eq!(twin["etag"], "AAAAAAAAAAE=");
        assert_eq!(twin["properties"]["desired"]["$version"], 1);
    }

    #[test]
    fn bad_device_documents_are_named() {
        let cases = [
            (json!({"deviceId": "a/b"}), "invalid device id"),
            (json!({"deviceId": "a", "status": "on"}), "'status'"),
            (
                json!({"deviceId": "a", "authentication": {"symmetricKey": {"primaryKey": "short", "secondaryKey": ""}}}),
                "primaryKey",
            ),
            (json!({"deviceId": 5}), "'deviceId'"),
        ];
        for (body, needle) in cases {
            let error = DeviceDraft::from_json(&body, "deviceId").unwrap_err();
            assert!(error.to_string().contains(needle), "{error}");
        }
    }

    #[test]
    fn the_rendered_twin_text_is_the_twin_and_a_changed_copy_renders_afresh() {
        let draft = DeviceDraft::from_json(&json!({"deviceId": "dev1"}), "deviceId").unwrap();
        let record = DeviceRecord::new(
            draft.into_identity(None, Timestamp(0), |_| None).unwrap(),
            Twin::new(Timestamp(0)),
            Presence::default(),
        );
        let text = twin_json_text(&record);
        assert_eq!(
            serde_json::from_str::<serde_json::Value>(&text).unwrap(),
            twin_json(&record)
        );
        assert!(std::sync::Arc::ptr_eq(&text, &twin_json_text(&record)), "rendered once");
        let mut changed = record.clone();
        changed.twin.version += 1;
        let changed_text = twin_json_text(&changed);
        assert_eq!(
            serde_json::from_str::<serde_json::Value>(&changed_text).unwrap()["version"],
            2
        );
        assert_eq!(
            serde_json::from_str::<serde_json::Value>(&twin_json_text(&record)).unwrap()["version"],
            1
        );
    }
}
