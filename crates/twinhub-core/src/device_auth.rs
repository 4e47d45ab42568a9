//! Whether a SAS token lets a client act as a device (the rule every device transport applies: MQTT,
//! AMQP, HTTPS), or as a back end with a given permission (REST, AMQP's CBS). Ref: device-mqtt-http
//! notes §3.3, service-rest notes §2.
//!
//! - Without `skn`, the token must be signed with one of the device's own keys.
//! - With `skn`, it must be signed with a key of that shared access policy, and the policy must grant
//!   DeviceConnect (the `device` policy does): a gateway or a device that holds no key of its own.
//! - Either way the token must cover `<hub>/devices/<id>`, not be expired, and the device must exist and be
//!   enabled.

use crate::device::{DeviceIdentity, DeviceStatus};
use crate::policy::{Permission, SharedAccessPolicy};
use crate::sas::SasToken;

/// Why a device was refused. Logged by the transport; the client only learns "not authorized".
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum DeviceAuthError {
    #[error("no such device")]
    UnknownDevice,
    #[error("the device is disabled")]
    Disabled,
    #[error("the token is for another hub or device")]
    WrongResource,
    #[error("the token has expired")]
    Expired,
    #[error("the token names a policy that does not exist")]
    UnknownPolicy,
    #[error("the token's policy does not grant DeviceConnect")]
    PolicyLacksDeviceConnect,
    #[error("the device has no symmetric keys")]
    NoSymmetricKey,
    #[error("the signature does not match the key")]
    BadSignature,
}

/// Why a back-end token was refused. Logged; the client only learns "unauthorized".
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ServiceAuthError {
    #[error("token names no policy")]
    NoPolicyNamed,
    #[error("unknown policy")]
    UnknownPolicy,
    #[error("bad signature")]
    BadSignature,
    #[error("expired token")]
    Expired,
    #[error("token is for another resource")]
    WrongResource,
    #[error("policy lacks the permission")]
    MissingPermission,
}

/// The policy `token` names, if one of its keys signed it (`signed_with` says how a key signs).
fn signing_policy<'p>(
    token: &SasToken,
    policies: &'p [SharedAccessPolicy],
    signed_with: fn(&SasToken, &str) -> bool,
) -> Result<&'p SharedAccessPolicy, ServiceAuthError> {
    let key_name = token.key_name.as_deref().ok_or(ServiceAuthError::NoPolicyNamed)?;
    let policy = policies
        .iter()
        .find(|policy| policy.name == key_name)
        .ok_or(ServiceAuthError::UnknownPolicy)?;
    if !(signed_with(token, &policy.primary_key) | signed_with(token, &policy.secondary_key)) {
        return Err(ServiceAuthError::BadSignature);
    }
    Ok(policy)
}

/// Checks a back end's `token` (signed with a shared access policy's key, `skn`) for `permission` on hub
/// `hostname` at `now_unix_seconds`. Device tokens carry no key name and never pass.
pub fn authorize_service(
    token: &SasToken,
    hostname: &str,
    policies: &[SharedAccessPolicy],
    permission: Permission,
    now_unix_seconds: i64,
) -> Result<(), ServiceAuthError> {
    let policy = signing_policy(token, policies, SasToken::is_signed_with)?;
    if token.is_expired(now_unix_seconds) {
        return Err(ServiceAuthError::Expired);
    }
    if !token.covers(hostname) {
        return Err(ServiceAuthError::WrongResource);
    }
    if !policy.allows(permission) {
        return Err(ServiceAuthError::MissingPermission);
    }
    Ok(())
}

/// Checks an Event Hubs client's `token` for reading one of the hub's event hubs (the built-in endpoint, or
/// an event hub routes fill; `is_event_hub` says which names are, given in lower case): signed, as Event
/// Hubs clients sign, with the text of a key of a policy that grants ServiceConnect (`iothubowner`,
/// `service`; never `device`), not expired, for a resource (`sb://<host>[:port]/<event hub>[/...]`) under
/// one of them. Returns the path the token covers, lower-cased without scheme and host
/// (`<hub>/consumergroups/$default`).
pub fn authorize_event_hubs(
    token: &SasToken,
    is_event_hub: &dyn Fn(&str) -> bool,
    policies: &[SharedAccessPolicy],
    now_unix_seconds: i64,
) -> Result<String, ServiceAuthError> {
    // Event Hubs clients sign with the key's text, not its Base64 decoding.
    let policy = signing_policy(token, policies, SasToken::is_signed_with_key_text)?;
    if token.is_expired(now_unix_seconds) {
        return Err(ServiceAuthError::Expired);
    }
    let path = entity_path(&token.resource);
    let entity = path.split('/').next().unwrap_or_default();
    if !is_event_hub(entity) {
        return Err(ServiceAuthError::WrongResource);
    }
    if !policy.allows(Permission::ServiceConnect) {
        return Err(ServiceAuthError::MissingPermission);
    }
    Ok(path)
}

/// An Event Hubs address or audience without its scheme and host, lower-cased and without a trailing
/// `/`: `sb://host:5671/Hub/ConsumerGroups/$Default/` → `hub/consumergroups/$default`.
pub fn entity_path(address: &str) -> String {
    let address = address.to_ascii_lowercase();
    let path = match address.split_once("://") {
        Some((_, rest)) => rest.split_once('/').map_or("", |(_, path)| path),
        None => address.as_str(),
    };
    path.trim_matches('/').to_owned()
}

/// The resource a device's tokens must cover.
pub fn device_resource(hostname: &str, device_id: &str) -> String {
    format!("{hostname}/devices/{device_id}")
}

/// Checks `token` for the device `identity` (None: not registered) on hub `hostname` at `now_unix_seconds`.
pub fn authorize_device(
    token: &SasToken,
    hostname: &str,
    device_id: &str,
    identity: Option<&DeviceIdentity>,
    policies: &[SharedAccessPolicy],
    now_unix_seconds: i64,
) -> Result<(), DeviceAuthError> {
    authorize_identity(
        token,
        &device_resource(hostname, device_id),
        identity,
        policies,
        now_unix_seconds,
    )
}

/// The resource a module's tokens must cover.
pub fn module_resource(hostname: &str, device_id: &str, module_id: &str) -> String {
    format!("{hostname}/devices/{device_id}/modules/{module_id}")
}

/// Checks `token` for module `module_id` of device `device_id` (`identity`: the module's, None when
/// there is no such module): signed with the module's key, or with a policy that grants DeviceConnect,
/// for the module's resource. A device's own key signs nothing for its modules, and a module's token
/// covers neither its device nor another module.
pub fn authorize_module(
    token: &SasToken,
    hostname: &str,
    device_id: &str,
    module_id: &str,
    identity: Option<&DeviceIdentity>,
    policies: &[SharedAccessPolicy],
    now_unix_seconds: i64,
) -> Result<(), DeviceAuthError> {
    authorize_identity(
        token,
        &module_resource(hostname, device_id, module_id),
        identity,
        policies,
        now_unix_seconds,
    )
}

fn authorize_identity(
    token: &SasToken,
    resource: &str,
    identity: Option<&DeviceIdentity>,
    policies: &[SharedAccessPolicy],
    now_unix_seconds: i64,
) -> Result<(), DeviceAuthError> {
    let signed = match token.key_name.as_deref() {
        Some(name) => {
            let policy = policies
                .iter()
                .find(|policy| policy.name == name)
                .ok_or(DeviceAuthError::UnknownPolicy)?;
            if !policy.allows(Permission::DeviceConnect) {
                return Err(DeviceAuthError::PolicyLacksDeviceConnect);
            }
            token.is_signed_with(&policy.primary_key) | token.is_signed_with(&policy.secondary_key)
        }
        None => {
            let keys = identity
                .ok_or(DeviceAuthError::UnknownDevice)?
                .symmetric_keys
                .as_ref()
                .ok_or(DeviceAuthError::NoSymmetricKey)?;
            token.is_signed_with(&keys.primary) | token.is_signed_with(&keys.secondary)
        }
    };
    // Signature first: a client without a key learns nothing about devices or expiry.
    if !signed {
        return Err(DeviceAuthError::BadSignature);
    }
    if !token.covers(resource) {
        return Err(DeviceAuthError::WrongResource);
    }
    if token.is_expired(now_unix_seconds) {
        return Err(DeviceAuthError::Expired);
    }
    let identity = identity.ok_or(DeviceAuthError::UnknownDevice)?;
    if identity.status != DeviceStatus::Enabled {
        return Err(DeviceAuthError::Disabled);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::device::{AuthenticationType, SymmetricKeys, X509Thumbprints};
    use crate::policy::default_policies;
    use crate::sas::sign;
    use crate::DeviceId;

    const HOST: &str = "hub.example";
    const NOW: i64 = 1_800_000_000;

    fn identity(status: DeviceStatus) -> DeviceIdentity {
        DeviceIdentity {
            device_id: DeviceId::new("d1").unwrap(),
            generation_id: "1".into(),
            etag_counter: 1,
            status,
            status_reason: None,
            status_updated: None,
            authentication_type: AuthenticationType::Sas,
            symmetric_keys: Some(SymmetricKeys::generate()),
            x509_thumbprints: X509Thumbprints::default(),
            iot_edge: false,
            device_scope: None,
            parent_scopes: Vec::new(),
            cloud_to_device_message_count: 0,
        }
    }

    fn token(resource: &str, key: &str, key_name: Option<&str>, expiry: i64) -> SasToken {
        SasToken::parse(&sign(resource, key, key_name, expiry as u64).unwrap()).unwrap()
    }

    fn check(token: &SasToken, identity: Option<&DeviceIdentity>) -> Result<(), DeviceAuthError> {
        authorize_device(token, HOST, "d1", identity, &default_policies_fixed(), NOW)
    }

    fn default_policies_fixed() -> Vec<SharedAccessPolicy> {
        static POLICIES: std::sync::OnceLock<Vec<SharedAccessPolicy>> = std::sync::OnceLock::new();
        POLICIES.get_or_init(default_policies).clone()
    }

    fn policy_key(name: &str) -> String {
        default_policies_fixed()
            .into_iter()
            .find(|policy| policy.name == name)
            .unwrap()
            .primary_key
    }

    #[test]
    fn device_keys_and_device_connect_policies_are_accepted() {
        let device = identity(DeviceStatus::Enabled);
        let keys = device.symmetric_keys.clone().unwrap();
        for key in [&keys.primary, &keys.secondary] {
            assert_eq!(
                check(&token("hub.example/devices/d1", key, None, NOW + 60), Some(&device)),
                Ok(())
            );
        }
        // Policy tokens may cover the whole hub.
        let policy = token("hub.example", &policy_key("device"), Some("device"), NOW + 60);
        assert_eq!(check(&policy, Some(&device)), Ok(()));
        let owner = token(
            "hub.example/devices/d1",
            &policy_key("iothubowner"),
            Some("iothubowner"),
            NOW + 60,
        );
        assert_eq!(check(&owner, Some(&device)), Ok(()));
    }

    #[test]
    fn a_module_opens_with_its_own_key_or_a_device_connect_policy_only() {
        let module = identity(DeviceStatus::Enabled);
        let module_key = module.symmetric_keys.clone().unwrap().primary;
        let device_key = SymmetricKeys::generate().primary;
        let check_module = |token: &SasToken, module_id: &str| {
            authorize_module(
                token,
                HOST,
                "d1",
                module_id,
                Some(&module),
                &default_policies_fixed(),
                NOW,
            )
        };
        let own = token("hub.example/devices/d1/modules/m1", &module_key, None, NOW + 60);
        assert_eq!(check_module(&own, "m1"), Ok(()));
        let policy = token(
            "hub.example/devices/d1/modules/m1",
            &policy_key("device"),
            Some("device"),
            NOW + 60,
        );
        assert_eq!(check_module(&policy, "m1"), Ok(()));
        let service = token("hub.example", &policy_key("service"), Some("service"), NOW + 60);
        assert_eq!(
            check_module(&service, "m1"),
            Err(DeviceAuthError::PolicyLacksDeviceConnect)
        );
        // Its device's key signs nothing for it; its token covers neither another module nor its device.
        let by_device = token("hub.example/devices/d1/modules/m1", &device_key, None, NOW + 60);
        assert_eq!(check_module(&by_device, "m1"), Err(DeviceAuthError::BadSignature));
        assert_eq!(check_module(&own, "m2"), Err(DeviceAuthError::WrongResource));
        assert_eq!(check(&own, Some(&module)), Err(DeviceAuthError::WrongResource));
    }

    #[test]
    fn every_other_token_is_refused_with_its_reason() {
        let device = identity(DeviceStatus::Enabled);
        let key = device.symmetric_keys.clone().unwrap().primary;
        let cases = [
            (
                token("hub.example/devices/d1", &key, None, NOW - 1),
                Some(&device),
                DeviceAuthError::Expired,
            ),
            (
                token("hub.example/devices/d2", &key, None, NOW + 60),
                Some(&device),
                DeviceAuthError::WrongResource,
            ),
            (
                token("other.hub/devices/d1", &key, None, NOW + 60),
                Some(&device),
                DeviceAuthError::WrongResource,
            ),
            (
                token(
                    "hub.example/devices/d1",
                    &SymmetricKeys::generate().primary,
                    None,
                    NOW + 60,
                ),
                Some(&device),
                DeviceAuthError::BadSignature,
            ),
            (
                token("hub.example/devices/d1", &key, None, NOW + 60),
                None,
                DeviceAuthError::UnknownDevice,
            ),
            (
                token("hub.example", &policy_key("service"), Some("service"), NOW + 60),
                Some(&device),
                DeviceAuthError::PolicyLacksDeviceConnect,
            ),
            (
                token("hub.example", &policy_key("device"), Some("nosuch"), NOW + 60),
                Some(&device),
                DeviceAuthError::UnknownPolicy,
            ),
            (
                token("hub.example", &policy_key("device"), Some("device"), NOW + 60),
                None,
                DeviceAuthError::UnknownDevice,
            ),
        ];
        for (token, identity, reason) in cases {
            assert_eq!(check(&token, identity), Err(reason), "{token:?}");
        }
        let disabled = identity(DeviceStatus::Disabled);
        let key = disabled.symmetric_keys.clone().unwrap().primary;
        assert_eq!(
            check(&token("hub.example/devices/d1", &key, None, NOW + 60), Some(&disabled)),
            Err(DeviceAuthError::Disabled)
        );
    }

    #[test]
    fn event_hubs_tokens_are_signed_with_the_key_text_and_cover_the_hub() {
        use base64::Engine;
        let policies = default_policies_fixed();
        let key_of = |name: &str| {
            policies
                .iter()
                .find(|policy| policy.name == name)
                .unwrap()
                .primary_key
                .clone()
        };
        // Event Hubs clients sign with the key's text: its Base64 encoding decodes back to those bytes.
        let as_text_key = |key: &str| base64::engine::general_purpose::STANDARD.encode(key.as_bytes());
        let eh_token =
            |resource: &str, policy: &str, key: &str| token(resource, &as_text_key(key), Some(policy), NOW + 60);
        let service = key_of("service");
        assert_eq!(
            authorize_event_hubs(
                &eh_token(
                    "sb://hub.example:5671/MyHub/ConsumerGroups/$Default",
                    "service",
                    &service
                ),
                &|name| name == "myhub",
                &policies,
                NOW
            ),
            Ok("myhub/consumergroups/$default".to_owned())
        );
        assert_eq!(
            authorize_event_hubs(
                &eh_token("sb://hub.example/myhub", "service", &service),
                &|name| name == "myhub",
                &policies,
                NOW
            ),
            Ok("myhub".to_owned())
        );
        let refused = [
            (
                eh_token("sb://hub.example/otherhub", "service", &service),
                ServiceAuthError::WrongResource,
            ),
            (
                eh_token("sb://hub.example/myhubs", "service", &service),
                ServiceAuthError::WrongResource,
            ),
            (
                eh_token("sb://hub.example/myhub", "device", &key_of("device")),
                ServiceAuthError::MissingPermission,
            ),
            (
                token("sb://hub.example/myhub", &service, Some("service"), NOW + 60),
                ServiceAuthError::BadSignature,
            ),
            (
                eh_token("sb://hub.example/myhub", "nobody", &service),
                ServiceAuthError::UnknownPolicy,
            ),
        ];
        for (token, expected) in refused {
            assert_eq!(
                authorize_event_hubs(&token, &|name| name == "myhub", &policies, NOW),
                Err(expected),
                "{token:?}"
            );
        }
        assert_eq!(
            entity_path("amqps://h:5671/Hub/ConsumerGroups/$Default/Partitions/0"),
            "hub/consumergroups/$default/partitions/0"
        );
        assert_eq!(entity_path("hub/ConsumerGroups/cg/"), "hub/consumergroups/cg");
    }
}
