//! CBS (claims-based security): `put-token` on `$cbs` authorizes a device or a module on this connection
//! until its token expires; a later put-token renews it. Ref: amqp notes §2.
//!
//! The request names the audience (`name`: the device's or module's resource, URL-encoded by Node, with or
//! without `amqps://`) and carries the SAS token as an amqp-value string body. The response must echo the
//! request's message-id as correlation-id *with its AMQP type*, and `status-code` must be an AMQP int.

use super::request_response::application_string;
use super::AmqpService;
use fe2o3_amqp_types::messaging::{Body, Message};
use fe2o3_amqp_types::primitives::Value;
use std::collections::HashMap;
use twinhub_core::device_auth::{
    authorize_device, authorize_event_hubs, authorize_module, authorize_service, entity_path,
};
use twinhub_core::sas::SasToken;
use twinhub_core::{DeviceId, ModuleId, Timestamp};
use twinhub_hub::Endpoint;

/// Devices and modules this connection holds a valid token for, with the token's expiry (Unix seconds).
/// A module's token covers that module only: neither its device nor another module.
#[derive(Debug, Default)]
pub struct Authorizations {
    expiry_by_endpoint: HashMap<Endpoint, u64>,
    /// A back end's token (a policy with ServiceConnect for the whole hub), and its expiry.
    service_expiry: Option<u64>,
    /// Event Hubs tokens: the entity path each covers (`<hub>/consumergroups/$default`), and its expiry.
    event_hub_scopes: Vec<(String, u64)>,
}

impl Authorizations {
    /// Every device and module a token was accepted for on this connection (expired or not): they are
    /// connected until the connection closes.
    pub fn endpoints(&self) -> impl Iterator<Item = &Endpoint> {
        self.expiry_by_endpoint.keys()
    }

    pub fn covers_service(&self) -> bool {
        let now = Timestamp::now().unix_seconds().max(0) as u64;
        self.service_expiry.is_some_and(|expiry| expiry > now)
    }

    /// The entity paths this connection's unexpired Event Hubs tokens cover.
    fn event_hub_scopes(&self) -> impl Iterator<Item = &str> {
        let now = Timestamp::now().unix_seconds().max(0) as u64;
        self.event_hub_scopes
            .iter()
            .filter(move |(_, expiry)| *expiry > now)
            .map(|(scope, _)| scope.as_str())
    }

    /// Whether an Event Hubs token of this connection covers the entity `path` (lower case).
    pub fn covers_event_hub(&self, path: &str) -> bool {
        self.event_hub_scopes()
            .any(|scope| super::event_hubs::address::covers(scope, path))
    }

    /// Whether this connection holds a valid Event Hubs token for anything under `hub` (lower case).
    pub fn has_event_hub_token(&self, hub: &str) -> bool {
        self.event_hub_scopes()
            .any(|scope| super::event_hubs::address::covers(hub, scope))
    }

    pub fn covers(&self, endpoint: &Endpoint) -> bool {
        let now = Timestamp::now().unix_seconds().max(0) as u64;
        self.expiry_by_endpoint
            .get(endpoint)
            .is_some_and(|expiry| *expiry > now)
    }
}

/// What a put-token's audience names.
#[derive(Debug, PartialEq, Eq)]
enum Audience {
    /// A device or one of its modules.
    Identity(Endpoint),
    /// The hub itself (`https://<host>` from uAMQP, `<host>` from Node's service client): a back end.
    Hub,
    /// The Event Hubs-compatible endpoint (`sb://<host>/<hub>/...`): an Event Hubs client.
    EventHub,
}

fn audience(text: &str, hostname: &str, hub_name: &str) -> Result<Audience, String> {
    let decoded = percent_encoding::percent_decode_str(text)
        .decode_utf8()
        .map_err(|_| "the audience is not UTF-8".to_owned())?;
    if decoded.contains("/devices/") {
        return audience_identity(text).map(Audience::Identity);
    }
    let path = entity_path(&decoded);
    let hub = hub_name.to_ascii_lowercase();
    if decoded.starts_with("sb://") || (decoded.contains("://") && super::event_hubs::address::covers(&hub, &path)) {
        return Ok(Audience::EventHub);
    }
    let host = decoded
        .trim_start_matches("amqps://")
        .trim_start_matches("https://")
        .trim_end_matches('/');
    let bare = |host: &str| host.split(':').next().unwrap_or(host).to_ascii_lowercase();
    if bare(host) == bare(hostname) {
        Ok(Audience::Hub)
    } else {
        Err(format!(
            "the audience '{decoded}' is neither this hub nor one of its devices"
        ))
    }
}

/// The device or module an audience names: `<host>/devices/<id>` or `<host>/devices/<id>/modules/<id>`
/// after URL-decoding, with or without a scheme.
fn audience_identity(audience: &str) -> Result<Endpoint, String> {
    let decoded = percent_encoding::percent_decode_str(audience)
        .decode_utf8()
        .map_err(|_| "the audience is not UTF-8".to_owned())?;
    let path = decoded.trim_start_matches("amqps://").trim_start_matches("https://");
    let (_host, rest) = path
        .split_once("/devices/")
        .ok_or_else(|| format!("'{decoded}' names no device: only device tokens are accepted over AMQP yet"))?;
    let rest = rest.trim_end_matches('/');
    let (device, module) = match rest.split_once("/modules/") {
        Some((device, module)) => (device, Some(module)),
        None => (rest, None),
    };
    let device_id = DeviceId::new(device).map_err(|error| error.to_string())?;
    let module_id = module
        .map(|module| ModuleId::new(module).map(|id| id.as_str().to_owned()))
        .transpose()
        .map_err(|error| error.to_string())?;
    Ok(Endpoint { device_id, module_id })
}

fn body_string(message: &Message<Body<Value>>) -> Option<String> {
    match &message.body {
        Body::Value(value) => match &value.0 {
            Value::String(text) => Some(text.clone()),
            _ => None,
        },
        Body::Data(batch) => batch
            .iter()
            .next()
            .and_then(|data| String::from_utf8(data.0.to_vec()).ok()),
        _ => None,
    }
}

/// What a put-token did.
pub struct PutTokenOutcome {
    pub status: i32,
    pub description: String,
    /// The device or module this connection was authorized for the first time: it is now connected.
    pub newly_connected: Option<Endpoint>,
}

fn refused(status: i32, description: impl Into<String>) -> PutTokenOutcome {
    PutTokenOutcome {
        status,
        description: description.into(),
        newly_connected: None,
    }
}

/// Handles one CBS request.
pub fn put_token(
    service: &AmqpService,
    authorizations: &mut Authorizations,
    request: &Message<Body<Value>>,
) -> PutTokenOutcome {
    if application_string(request, "operation").as_deref() != Some("put-token") {
        return refused(400, "only put-token is supported on $cbs");
    }
    let Some(audience_text) = application_string(request, "name") else {
        return refused(400, "put-token without 'name'");
    };
    let Some(token_text) = body_string(request) else {
        return refused(400, "put-token without a token in its body");
    };
    let Ok(token) = SasToken::parse(&token_text) else {
        return refused(401, "the token is not a shared access signature");
    };
    let endpoint = match audience(&audience_text, &service.hostname, &service.hub_name) {
        Ok(Audience::Identity(endpoint)) => endpoint,
        Ok(Audience::Hub) => return service_token(service, authorizations, &token),
        Ok(Audience::EventHub) => return event_hub_token(service, authorizations, &token),
        Err(reason) => return refused(401, reason),
    };
    // The device's record, or the module's (its own identity and keys).
    let record = service.hub.twin_of(&endpoint).ok();
    let identity = record.as_ref().map(|record| &*record.identity);
    let now = Timestamp::now().unix_seconds();
    let device_id = endpoint.device_id.as_str();
    let authorized = match endpoint.module_id.as_deref() {
        None => authorize_device(&token, &service.hostname, device_id, identity, &service.policies, now),
        Some(module_id) => authorize_module(
            &token,
            &service.hostname,
            device_id,
            module_id,
            identity,
            &service.policies,
            now,
        ),
    };
    match authorized {
        Ok(()) => {
            let first = authorizations
                .expiry_by_endpoint
                .insert(endpoint.clone(), token.expiry_unix_seconds)
                .is_none();
            PutTokenOutcome {
                status: 200,
                description: "OK".into(),
                newly_connected: first.then_some(endpoint),
            }
        }
        Err(error) => {
            tracing::info!(%endpoint, %error, "CBS put-token refused");
            refused(401, "Unauthorized")
        }
    }
}

/// A back end's token: signed with a policy that grants ServiceConnect, covering the hub.
fn service_token(service: &AmqpService, authorizations: &mut Authorizations, token: &SasToken) -> PutTokenOutcome {
    if let Err(error) = authorize_service(
        token,
        &service.hostname,
        &service.policies,
        twinhub_core::policy::Permission::ServiceConnect,
        Timestamp::now().unix_seconds(),
    ) {
        tracing::info!(%error, "CBS put-token for the hub refused");
        return refused(401, "Unauthorized");
    }
    authorizations.service_expiry = Some(token.expiry_unix_seconds);
    tracing::info!(policy = ?token.key_name, "CBS put-token accepted for a back end");
    PutTokenOutcome {
        status: 200,
        description: "OK".into(),
        newly_connected: None,
    }
}

/// An Event Hubs client's token: signed with the text of a key of a policy with ServiceConnect, for a
/// path under the hub's Event Hubs-compatible endpoint.
fn event_hub_token(service: &AmqpService, authorizations: &mut Authorizations, token: &SasToken) -> PutTokenOutcome {
    match authorize_event_hubs(
        token,
        &|name| service.is_event_hub(name),
        &service.policies,
        Timestamp::now().unix_seconds(),
    ) {
        Ok(path) => {
            tracing::info!(policy = ?token.key_name, %path, "CBS put-token accepted for an Event Hubs client");
            authorizations.event_hub_scopes.push((path, token.expiry_unix_seconds));
            PutTokenOutcome {
                status: 200,
                description: "OK".into(),
                newly_connected: None,
            }
        }
        Err(error) => {
            tracing::info!(%error, "CBS put-token for the Event Hubs endpoint refused");
            refused(401, "Unauthorized")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn audiences_of_every_sdk_name_the_device() {
        for audience in [
            "hub.example%2Fdevices%2Fdev1",
            "hub.example/devices/dev1",
            "amqps://hub.example/devices/dev1",
            "hub.example%3A5671%2Fdevices%2Fdev1",
        ] {
            assert_eq!(
                audience_identity(audience).unwrap(),
                Endpoint::device(DeviceId::new("dev1").unwrap()),
                "{audience}"
            );
        }
        assert!(audience_identity("hub.example").is_err());
        assert_eq!(audience("https://HUB.example", "hub.example", "hub"), Ok(Audience::Hub));
        assert_eq!(audience("hub.example", "hub.example", "hub"), Ok(Audience::Hub));
        assert!(audience("https://other.example", "hub.example", "hub").is_err());
        for event_hubs in [
            "sb://hub.example/hub/ConsumerGroups/$Default/Partitions/0",
            "sb://hub.example:5671/hub/consumergroups/$default",
            "sb://hub.example/hub/$management",
            "amqps://hub.example/hub",
        ] {
            assert_eq!(
                audience(event_hubs, "hub.example", "hub"),
                Ok(Audience::EventHub),
                "{event_hubs}"
            );
        }
        for module in [
            "hub.example%2Fdevices%2Fdev1%2Fmodules%2Fm1",
            "amqps://hub.example/devices/dev1/modules/m1/",
        ] {
            assert_eq!(
                audience_identity(module).unwrap(),
                Endpoint {
                    device_id: DeviceId::new("dev1").unwrap(),
                    module_id: Some("m1".into()),
                },
                "{module}"
            );
        }
        assert!(audience_identity("hub.example/devices/dev1/modules/").is_err());
        assert!(audience_identity("hub.example/devices/dev1/modules/m1/x").is_err());
    }
}
