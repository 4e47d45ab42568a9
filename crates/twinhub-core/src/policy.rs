//! Shared access policies: named keys with permissions, as IoT Hub's hub-level policies.

use crate::device::generate_key;
use serde::{Deserialize, Serialize};

/// Ref: IoT Hub "Control access with SAS", permissions.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub enum Permission {
    RegistryRead,
    RegistryWrite,
    ServiceConnect,
    DeviceConnect,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SharedAccessPolicy {
    pub name: String,
    pub primary_key: String,
    pub secondary_key: String,
    pub permissions: Vec<Permission>,
}

impl SharedAccessPolicy {
    pub fn allows(&self, permission: Permission) -> bool {
        // RegistryWrite implies RegistryRead, as on IoT Hub.
        self.permissions.contains(&permission)
            || (permission == Permission::RegistryRead && self.permissions.contains(&Permission::RegistryWrite))
    }
}

/// The five policies every IoT Hub starts with, with fresh random keys.
pub fn default_policies() -> Vec<SharedAccessPolicy> {
    use Permission::*;
    [
        (
            "iothubowner",
            vec![RegistryRead, RegistryWrite, ServiceConnect, DeviceConnect],
        ),
        ("service", vec![ServiceConnect]),
        ("device", vec![DeviceConnect]),
        ("registryRead", vec![RegistryRead]),
        ("registryReadWrite", vec![RegistryRead, RegistryWrite]),
    ]
    .into_iter()
    .map(|(name, permissions)| SharedAccessPolicy {
        name: name.to_owned(),
        primary_key: generate_key(),
        secondary_key: generate_key(),
        permissions,
    })
    .collect()
}

/// `HostName=...;SharedAccessKeyName=...;SharedAccessKey=...`
pub fn service_connection_string(host_name: &str, policy: &SharedAccessPolicy) -> String {
    format!(
        "HostName={host_name};SharedAccessKeyName={};SharedAccessKey={}",
        policy.name, policy.primary_key
    )
}

/// The Event Hubs-compatible endpoint's connection string, as the Event Hubs SDKs take it:
/// `Endpoint=sb://<host>/;SharedAccessKeyName=...;SharedAccessKey=...;EntityPath=<hub name>`.
pub fn event_hubs_connection_string(host_name: &str, hub_name: &str, policy: &SharedAccessPolicy) -> String {
    format!(
        "Endpoint=sb://{host_name}/;SharedAccessKeyName={};SharedAccessKey={};EntityPath={hub_name}",
        policy.name, policy.primary_key
    )
}

/// `HostName=...;DeviceId=...;SharedAccessKey=...`
pub fn device_connection_string(host_name: &str, device_id: &str, key: &str) -> String {
    format!("HostName={host_name};DeviceId={device_id};SharedAccessKey={key}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_have_the_documented_permissions() {
        let policies = default_policies();
        let find = |name: &str| policies.iter().find(|p| p.name == name).expect(name);
        assert!(find("iothubowner").allows(Permission::ServiceConnect));
        assert!(find("registryReadWrite").allows(Permission::RegistryRead));
        assert!(!find("registryRead").allows(Permission::RegistryWrite));
        assert!(!find("device").allows(Permission::ServiceConnect));
        assert!(!find("service").allows(Permission::RegistryRead));
        assert_ne!(find("service").primary_key, find("device").primary_key);
    }
}

/// A parsed service connection string.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServiceConnectionString {
    pub host_name: String,
    pub key_name: String,
    pub key: String,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConnectionStringError {
    #[error("the connection string has no {0}")]
    Missing(&'static str),
}

impl ServiceConnectionString {
    /// `Key=Value` pairs separated by `;`, each split at the first `=` (Base64 keys end in `=`).
    pub fn parse(text: &str) -> Result<Self, ConnectionStringError> {
        let mut host_name = None;
        let mut key_name = None;
        let mut key = None;
        for pair in text.trim().split(';').filter(|pair| !pair.is_empty()) {
            match pair.split_once('=') {
                Some(("HostName", value)) => host_name = Some(value.to_owned()),
                Some(("SharedAccessKeyName", value)) => key_name = Some(value.to_owned()),
                Some(("SharedAccessKey", value)) => key = Some(value.to_owned()),
                _ => {}
            }
        }
        Ok(ServiceConnectionString {
            host_name: host_name.ok_or(ConnectionStringError::Missing("HostName"))?,
            key_name: key_name.ok_or(ConnectionStringError::Missing("SharedAccessKeyName"))?,
            key: key.ok_or(ConnectionStringError::Missing("SharedAccessKey"))?,
        })
    }
}

#[cfg(test)]
mod connection_string_tests {
    use super::*;

    #[test]
    fn parses_what_it_prints() {
        let policy = &default_policies()[0];
        let parsed = ServiceConnectionString::parse(&service_connection_string("hub.local", policy)).unwrap();
        assert_eq!(parsed.host_name, "hub.local");
        assert_eq!(parsed.key_name, "iothubowner");
        assert_eq!(parsed.key, policy.primary_key);
        assert_eq!(
            ServiceConnectionString::parse("HostName=h;SharedAccessKey=k"),
            Err(ConnectionStringError::Missing("SharedAccessKeyName"))
        );
    }
}
