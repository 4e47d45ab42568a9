//! Module identities: each module of a device has its own keys, its own twin (the same tags, desired and
//! reported properties, versions and rules as a device twin) and its own connection state. A module is
//! kept in a device record's form (identity, twin, presence: so every twin rule and the query engine apply
//! to it unchanged), with its module id and `managedBy` beside it.

use crate::json::{device_json, twin_json, DeviceDocumentError, DeviceDraft};
use crate::record::Presence;
use crate::{DeviceId, DeviceRecord, ModuleId, Timestamp, Twin};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// A module as the registry keeps it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ModuleRecord {
    pub module_id: ModuleId,
    /// Who manages the module (`iotEdge` for IoT Edge's own modules); any text a back end gives.
    pub managed_by: Option<String>,
    /// Its identity (whose `device_id` is its device's), twin and presence; shared, so a connection reads
    /// it (and its rendered twin, cached in it) without a copy. Stored as the record itself.
    pub record: std::sync::Arc<DeviceRecord>,
}

/// A module as a back end sends it (`PUT /devices/{id}/modules/{moduleId}`): the ids, `managedBy` and
/// the authentication, read as a device's are.
#[derive(Clone, Debug, PartialEq)]
pub struct ModuleDraft {
    pub module_id: ModuleId,
    pub managed_by: Option<String>,
    pub identity: DeviceDraft,
}

impl ModuleDraft {
    /// Reads a module document for the module the path names; ids in the body, when given, must be the
    /// path's.
    pub fn from_json(
        body: &Value,
        device_id: &DeviceId,
        module_id: &ModuleId,
    ) -> Result<ModuleDraft, DeviceDocumentError> {
        let object = body.as_object().ok_or(DeviceDocumentError::NotAnObject)?;
        let mut device = object.clone();
        for (field, expected) in [("deviceId", device_id.as_str()), ("moduleId", module_id.as_str())] {
            match object.get(field) {
                None | Some(Value::Null) => {}
                Some(Value::String(given)) if given == expected => {}
                Some(_) => return Err(DeviceDocumentError::WrongType(field)),
            }
        }
        device.insert("deviceId".into(), device_id.as_str().into());
        // A module has no status, scope or edge capability of its own.
        for device_only in ["status", "statusReason", "capabilities", "deviceScope", "parentScopes"] {
            device.remove(device_only);
        }
        let managed_by = match object.get("managedBy") {
            None | Some(Value::Null) => None,
            Some(Value::String(text)) => Some(text.clone()),
            Some(_) => return Err(DeviceDocumentError::WrongType("managedBy")),
        };
        Ok(ModuleDraft {
            module_id: module_id.clone(),
            managed_by,
            identity: DeviceDraft::from_json(&Value::Object(device), "deviceId")?,
        })
    }

    /// The module this draft makes: a new one (fresh keys when none are given, a new generation, a new
    /// twin), or `previous` with its identity replaced (twin and presence kept, etag moved on).
    pub fn into_record(
        self,
        previous: Option<&ModuleRecord>,
        now: Timestamp,
    ) -> Result<ModuleRecord, crate::device_scope::ScopeError> {
        // A module names no parent (its draft carries no scope), so there is nothing to look up.
        let identity = self
            .identity
            .into_identity(previous.map(|module| &*module.record.identity), now, |_| None)?;
        let record = match previous {
            Some(previous) => {
                DeviceRecord::new(identity, previous.record.twin.clone(), previous.record.presence.clone())
            }
            None => DeviceRecord::new(identity, Twin::new(now), Presence::default()),
        };
        Ok(ModuleRecord {
            module_id: self.module_id,
            managed_by: self.managed_by,
            record: std::sync::Arc::new(record),
        })
    }
}

impl ModuleRecord {
    pub fn device_id(&self) -> &DeviceId {
        &self.record.identity.device_id
    }

    /// The module's etag (its identity's).
    pub fn etag(&self) -> String {
        self.record.identity.etag()
    }

    /// The same module with another twin (or presence), identity unchanged.
    pub fn with_record(&self, record: DeviceRecord) -> ModuleRecord {
        ModuleRecord {
            module_id: self.module_id.clone(),
            managed_by: self.managed_by.clone(),
            record: std::sync::Arc::new(record),
        }
    }
}

/// The module identity document IoT Hub returns.
pub fn module_json(module: &ModuleRecord) -> Value {
    let device = device_json(&module.record);
    let mut document = Map::new();
    document.insert("moduleId".into(), module.module_id.as_str().into());
    document.insert("managedBy".into(), module.managed_by.clone().into());
    for field in [
        "deviceId",
        "generationId",
        "etag",
        "connectionState",
        "connectionStateUpdatedTime",
        "lastActivityTime",
        "cloudToDeviceMessageCount",
        "authentication",
    ] {
        if let Some(value) = device.get(field) {
            document.insert(field.into(), value.clone());
        }
    }
    Value::Object(document)
}

/// The module twin document IoT Hub returns: the device twin's shape with `moduleId`, without what only
/// devices have (capabilities, scopes).
pub fn module_twin_json(module: &ModuleRecord) -> Value {
    let twin = twin_json(&module.record);
    let mut document = Map::new();
    if let Value::Object(fields) = twin {
        for (field, value) in fields {
            if matches!(field.as_str(), "capabilities" | "deviceScope" | "parentScopes") {
                continue;
            }
            let is_device_id = field == "deviceId";
            document.insert(field, value);
            if is_device_id {
                document.insert("moduleId".into(), module.module_id.as_str().into());
            }
        }
    }
    Value::Object(document)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn ids() -> (DeviceId, ModuleId) {
        (DeviceId::new("gateway").unwrap(), ModuleId::new("sensor").unwrap())
    }

    #[test]
    fn a_new_module_gets_keys_a_twin_and_its_documents() {
        let (device, module) = ids();
        let draft =
            ModuleDraft::from_json(&json!({"moduleId": "sensor", "managedBy": "ops"}), &device, &module).unwrap();
        let record = draft.into_record(None, Timestamp(0)).unwrap();
        let document = module_json(&record);
        assert_eq!(document["moduleId"], "sensor");
        assert_eq!(document["deviceId"], "gateway");
        assert_eq!(document["managedBy"], "ops");
        assert_eq!(document["authentication"]["type"], "sas");
        assert!(document["authentication"]["symmetricKey"]["primaryKey"].is_string());
        assert!(document.get("status").is_none() && document.get("capabilities").is_none());
        let twin = module_twin_json(&record);
        let fields: Vec<&str> = twin.as_object().unwrap().keys().map(String::as_str).take(2).collect();
        assert_eq!(fields, ["deviceId", "moduleId"]);
        assert_eq!(twin["version"], 1);
        assert!(twin.get("capabilities").is_none());
    }

    #[test]
    fn an_update_keeps_the_twin_and_moves_the_etag_and_ids_must_match_the_path() {
        let (device, module) = ids();
        let first = ModuleDraft::from_json(&json!({}), &device, &module)
            .unwrap()
            .into_record(None, Timestamp(0))
            .unwrap();
        let keys = json!({"type": "sas", "symmetricKey": {"primaryKey": first.record.identity.symmetric_keys.as_ref().unwrap().primary, "secondaryKey": first.record.identity.symmetric_keys.as_ref().unwrap().secondary}});
        let second = ModuleDraft::from_json(&json!({"authentication": keys, "managedBy": "edge"}), &device, &module)
            .unwrap()
            .into_record(Some(&first), Timestamp(1))
            .unwrap();
        assert_ne!(first.etag(), second.etag());
        assert_eq!(
            first.record.identity.generation_id,
            second.record.identity.generation_id
        );
        assert_eq!(second.managed_by.as_deref(), Some("edge"));
        assert!(ModuleDraft::from_json(&json!({"moduleId": "other"}), &device, &module).is_err());
        assert!(ModuleDraft::from_json(&json!({"deviceId": "other"}), &device, &module).is_err());
    }
}
