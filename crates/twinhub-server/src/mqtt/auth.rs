//! CONNECT: who the client is and whether it may connect. Ref: device-mqtt-http notes §4.1, §4.8.
//!
//! Client id `deviceId` (or `deviceId/moduleId`), username `<host>/<clientId>/?api-version=...`, password
//! a SAS token (see `twinhub_core::device_auth`). Refusals use CONNACK 4 for credentials that cannot be
//! read and 5 for credentials that do not authorize: neither is retried by the SDKs. Never 1 to a 3.1.1
//! client (paho would fall back to MQTT 3.1).

use super::session::ClientIdentity;
use super::wire::{Connect, ConnectAckReason};
use twinhub_core::device_auth::authorize_device;
use twinhub_core::policy::SharedAccessPolicy;
use twinhub_core::sas::SasToken;
use twinhub_core::{DeviceRecord, Timestamp};

#[derive(Debug)]
pub struct Authenticated {
    pub client: ClientIdentity,
    /// When the token expires (Unix seconds): the connection is closed then, as on IoT Hub; the SDKs
    /// reconnect with a new token before it.
    pub token_expiry_unix_seconds: u64,
}

#[derive(Debug, PartialEq, Eq)]
pub struct Refusal {
    pub code: ConnectAckReason,
    /// For the log only.
    pub reason: String,
}

fn refuse(code: ConnectAckReason, reason: impl Into<String>) -> Refusal {
    Refusal {
        code,
        reason: reason.into(),
    }
}

/// The host part of a username or resource, without a `:port`, lower-cased.
fn bare_host(host: &str) -> String {
    host.split(':').next().unwrap_or(host).to_ascii_lowercase()
}

/// Checks `<host>/<clientId>/?...`: the host is this hub's, the client id the one in CONNECT.
fn check_username(username: &str, hostname: &str, client_id: &str) -> Result<(), String> {
    let (path, _query) = username
        .split_once("/?")
        .ok_or_else(|| format!("username '{username}' is not '<host>/<clientId>/?api-version=...'"))?;
    let (host, named_client) = path
        .split_once('/')
        .ok_or_else(|| format!("username '{username}' names no client"))?;
    if bare_host(host) != bare_host(hostname) {
        return Err(format!("username names host '{host}', this hub is '{hostname}'"));
    }
    if named_client != client_id {
        return Err(format!(
            "username names client '{named_client}', CONNECT says '{client_id}'"
        ));
    }
    Ok(())
}

/// `lookup` finds a device record by id (the hub's snapshot).
pub fn authenticate(
    connect: &Connect,
    hostname: &str,
    policies: &[SharedAccessPolicy],
    lookup: impl FnOnce(&str, Option<&str>) -> Option<std::sync::Arc<DeviceRecord>>,
) -> Result<Authenticated, Refusal> {
    let client_id = connect.client_id.as_ref();
    let client = ClientIdentity::parse(client_id).ok_or_else(|| {
        refuse(
            ConnectAckReason::IdentifierRejected,
            format!("client id '{client_id}' is not 'deviceId' or 'deviceId/moduleId'"),
        )
    })?;
    let username = connect
        .username
        .as_ref()
        .ok_or_else(|| refuse(ConnectAckReason::BadUserNameOrPassword, "no username"))?;
    check_username(username, hostname, client_id)
        .map_err(|reason| refuse(ConnectAckReason::BadUserNameOrPassword, reason))?;
    let password = connect.password.as_ref().ok_or_else(|| {
        refuse(
            ConnectAckReason::NotAuthorized,
            "no password: X.509 client certificates are not supported yet",
        )
    })?;
    let password = std::str::from_utf8(password)
        .map_err(|_| refuse(ConnectAckReason::BadUserNameOrPassword, "password is not UTF-8"))?;
    let token = SasToken::parse(password)
        .map_err(|error| refuse(ConnectAckReason::BadUserNameOrPassword, format!("password: {error}")))?;
    // A module authenticates with its own keys (or a policy): never as its device, nor the reverse.
    let record = lookup(client.device_id.as_str(), client.module_id.as_deref());
    let identity = record.as_ref().map(|record| &*record.identity);
    let now = Timestamp::now().unix_seconds();
    match client.module_id.as_deref() {
        None => authorize_device(&token, hostname, client.device_id.as_str(), identity, policies, now),
        Some(module_id) => twinhub_core::device_auth::authorize_module(
            &token,
            hostname,
            client.device_id.as_str(),
            module_id,
            identity,
            policies,
            now,
        ),
    }
    .map_err(|error| refuse(ConnectAckReason::NotAuthorized, error.to_string()))?;
    Ok(Authenticated {
        client,
        token_expiry_unix_seconds: token.expiry_unix_seconds,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn usernames_of_both_sdks_are_accepted() {
        let node = "hub.local/dev1/?api-version=2021-04-12&model-id=dtmi:com:example:Thermostat;1&DeviceClientType=azure-iot-device%2F1.18.4";
        assert_eq!(check_username(node, "hub.local", "dev1"), Ok(()));
        let python = "HUB.local:8883/dev1/?api-version=2019-10-01&DeviceClientType=azure-iot-device-iothub-py%2F2.14.0";
        assert_eq!(check_username(python, "hub.local", "dev1"), Ok(()));
    }

    #[test]
    fn usernames_for_another_hub_or_client_are_refused() {
        for username in [
            "other.hub/dev1/?api-version=1",
            "hub.local/dev2/?api-version=1",
            "hub.local/dev1",
            "hub.local?api-version=1",
        ] {
            assert!(check_username(username, "hub.local", "dev1").is_err(), "{username}");
        }
    }
}
