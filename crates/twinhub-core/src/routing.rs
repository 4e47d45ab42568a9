//! Message routing as a user configures it: routes (a source, a condition, an endpoint) and the fallback
//! route, in IoT Hub's terms. The conditions are parsed by the query crate; the hub compiles and runs them.

use serde::{Deserialize, Serialize};

/// The built-in endpoint: the Event Hubs-compatible endpoint (`messages/events`).
pub const BUILT_IN_ENDPOINT: &str = "events";
/// Longest route name IoT Hub accepts.
pub const ROUTE_NAME_LENGTH_MAX: usize = 64;
/// Most routes a hub has (IoT Hub's limit).
pub const ROUTES_MAX: usize = 100;

/// What a route takes messages from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum RoutingSource {
    /// Device telemetry.
    DeviceMessages,
    /// A committed change of a twin's tags, desired or reported properties.
    TwinChangeEvents,
    /// A device identity created or deleted.
    DeviceLifecycleEvents,
    /// A device connected or disconnected (MQTT and AMQP).
    DeviceConnectionStateEvents,
}

impl RoutingSource {
    pub const ALL: [RoutingSource; 4] = [
        RoutingSource::DeviceMessages,
        RoutingSource::TwinChangeEvents,
        RoutingSource::DeviceLifecycleEvents,
        RoutingSource::DeviceConnectionStateEvents,
    ];

    /// The `iothub-message-source` annotation of its messages.
    pub fn message_source(self) -> &'static str {
        match self {
            RoutingSource::DeviceMessages => "Telemetry",
            RoutingSource::TwinChangeEvents => "twinChangeEvents",
            RoutingSource::DeviceLifecycleEvents => "deviceLifecycleEvents",
            RoutingSource::DeviceConnectionStateEvents => "deviceConnectionStateEvents",
        }
    }

    fn bit(self) -> u8 {
        1 << self as u8
    }
}

/// A set of sources: which ones any enabled route takes, so the hub builds only messages someone routes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SourceSet(u8);

impl SourceSet {
    pub fn insert(&mut self, source: RoutingSource) {
        self.0 |= source.bit();
    }

    pub fn contains(self, source: RoutingSource) -> bool {
        self.0 & source.bit() != 0
    }
}

/// One route as configured.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RouteSpec {
    pub name: String,
    pub source: RoutingSource,
    /// IoT Hub's routing query language; empty means `true`.
    #[serde(default)]
    pub condition: String,
    /// The endpoint's name (`events`: the built-in endpoint).
    pub endpoint: String,
    #[serde(default = "enabled")]
    pub enabled: bool,
}

/// A custom endpoint: where routed messages go besides the built-in endpoint. The hub keeps what it
/// routes there in a durable outbox and delivers it, retrying, at least once.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EndpointSpec {
    pub name: String,
    #[serde(flatten)]
    pub kind: EndpointKind,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "camelCase", deny_unknown_fields)]
pub enum EndpointKind {
    /// A NATS JetStream subject: each message published, and acknowledged by JetStream, once. With
    /// `stream`, the hub creates that stream for the subject when it does not exist.
    Nats {
        url: String,
        subject: String,
        #[serde(default)]
        stream: Option<String>,
    },
    /// An HTTP(S) URL each message is POSTed to; any 2xx answer delivers it.
    Webhook { url: String },
    /// An event hub inside twinhub, read with the Event Hubs SDKs as the built-in endpoint is, with the
    /// endpoint's name as its `EntityPath`: its own partitions, the hub's consumer groups.
    EventHub {
        #[serde(default = "event_hub_partitions")]
        partitions: u16,
    },
}

fn event_hub_partitions() -> u16 {
    4
}

/// An application property added to messages as they go to some endpoints (IoT Hub's message
/// enrichments): a fixed text, `$iothubname`, or a value of the sender's twin (`$twin.tags.x`,
/// `$twin.properties.desired.x`, `$twin.properties.reported.x`; the text itself when the twin has none).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct EnrichmentSpec {
    pub key: String,
    pub value: String,
    /// The endpoints whose messages get it (`events` included).
    pub endpoints: Vec<String>,
}

/// Most enrichments a hub has (IoT Hub's limit).
pub const ENRICHMENTS_MAX: usize = 10;

/// Every route, and whether device messages no route takes go to the built-in endpoint.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RoutingSpec {
    /// The fallback route: device messages that match no route go to `events` (on, as on IoT Hub).
    #[serde(default = "enabled")]
    pub fallback: bool,
    #[serde(default)]
    pub routes: Vec<RouteSpec>,
    #[serde(default)]
    pub endpoints: Vec<EndpointSpec>,
    #[serde(default)]
    pub enrichments: Vec<EnrichmentSpec>,
}

impl Default for RoutingSpec {
    fn default() -> Self {
        RoutingSpec {
            fallback: true,
            routes: Vec::new(),
            endpoints: Vec::new(),
            enrichments: Vec::new(),
        }
    }
}

fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= ROUTE_NAME_LENGTH_MAX
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

fn enabled() -> bool {
    true
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RouteSpecError {
    #[error("route name {0:?} is invalid: 1 to 64 characters, letters, digits, '-', '_' and '.'")]
    InvalidName(String),
    #[error("two routes are named {0:?} (route names are case-insensitive)")]
    DuplicateName(String),
    #[error("{route:?} names endpoint {endpoint:?}, which does not exist (the built-in one is events)")]
    UnknownEndpoint { route: String, endpoint: String },
    #[error("at most {ROUTES_MAX} routes")]
    TooManyRoutes,
    #[error("endpoint name {0:?} is invalid or taken: 1 to 64 characters, letters, digits, '-', '_' and '.', not 'events', each name once")]
    InvalidEndpointName(String),
    #[error("endpoint {name:?}: {reason}")]
    InvalidEndpoint { name: String, reason: String },
    #[error("enrichment {key:?}: {reason}")]
    InvalidEnrichment { key: String, reason: String },
}

impl RoutingSpec {
    /// Checks names and endpoints (conditions are checked where they are compiled).
    pub fn check(&self) -> Result<(), RouteSpecError> {
        if self.routes.len() > ROUTES_MAX {
            return Err(RouteSpecError::TooManyRoutes);
        }
        let mut endpoints = std::collections::HashSet::from([BUILT_IN_ENDPOINT.to_owned()]);
        for endpoint in &self.endpoints {
            if !valid_name(&endpoint.name) || !endpoints.insert(endpoint.name.to_ascii_lowercase()) {
                return Err(RouteSpecError::InvalidEndpointName(endpoint.name.clone()));
            }
            endpoint
                .kind
                .check()
                .map_err(|reason| RouteSpecError::InvalidEndpoint {
                    name: endpoint.name.clone(),
                    reason,
                })?;
        }
        let known = |name: &str| endpoints.contains(&name.to_ascii_lowercase());
        let mut seen = std::collections::HashSet::new();
        for route in &self.routes {
            if !valid_name(&route.name) {
                return Err(RouteSpecError::InvalidName(route.name.clone()));
            }
            if !seen.insert(route.name.to_ascii_lowercase()) {
                return Err(RouteSpecError::DuplicateName(route.name.clone()));
            }
            if !known(&route.endpoint) {
                return Err(RouteSpecError::UnknownEndpoint {
                    route: route.name.clone(),
                    endpoint: route.endpoint.clone(),
                });
            }
        }
        if self.enrichments.len() > ENRICHMENTS_MAX {
            return Err(RouteSpecError::InvalidEnrichment {
                key: String::new(),
                reason: format!("at most {ENRICHMENTS_MAX} enrichments"),
            });
        }
        for enrichment in &self.enrichments {
            if enrichment.key.is_empty() || enrichment.endpoints.is_empty() {
                return Err(RouteSpecError::InvalidEnrichment {
                    key: enrichment.key.clone(),
                    reason: "a key and at least one endpoint are needed".into(),
                });
            }
            if let Some(unknown) = enrichment.endpoints.iter().find(|name| !known(name)) {
                return Err(RouteSpecError::UnknownEndpoint {
                    route: format!("enrichment {}", enrichment.key),
                    endpoint: unknown.clone(),
                });
            }
        }
        Ok(())
    }

    /// The sources any enabled route takes.
    pub fn sources(&self) -> SourceSet {
        let mut sources = SourceSet::default();
        if self.fallback {
            sources.insert(RoutingSource::DeviceMessages);
        }
        for route in self.routes.iter().filter(|route| route.enabled) {
            sources.insert(route.source);
        }
        sources
    }
}

impl EndpointKind {
    fn check(&self) -> Result<(), String> {
        match self {
            EndpointKind::Nats { url, subject, stream } => {
                if !url.starts_with("nats://") && !url.starts_with("tls://") {
                    return Err(format!("{url:?} is not a nats:// URL"));
                }
                let subject_ok = !subject.is_empty()
                    && !subject.contains(['*', '>', ' '])
                    && subject.split('.').all(|token| !token.is_empty());
                if !subject_ok {
                    return Err(format!(
                        "{subject:?} is not a NATS subject to publish to (no wildcards)"
                    ));
                }
                if stream
                    .as_deref()
                    .is_some_and(|stream| stream.is_empty() || stream.contains(['.', '*', '>', ' ']))
                {
                    return Err("a stream name has no '.', '*', '>' or spaces".into());
                }
                Ok(())
            }
            EndpointKind::Webhook { url } => {
                if url.starts_with("http://") || url.starts_with("https://") {
                    Ok(())
                } else {
                    Err(format!("{url:?} is not an http:// or https:// URL"))
                }
            }
            EndpointKind::EventHub { partitions } => {
                if (2..=32).contains(partitions) {
                    Ok(())
                } else {
                    Err(format!("an event hub has 2 to 32 partitions, not {partitions}"))
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route(name: &str, endpoint: &str) -> RouteSpec {
        RouteSpec {
            name: name.into(),
            source: RoutingSource::TwinChangeEvents,
            condition: String::new(),
            endpoint: endpoint.into(),
            enabled: true,
        }
    }

    #[test]
    fn names_must_be_valid_and_unique_and_endpoints_known() {
        let mut spec = RoutingSpec {
            routes: vec![route("twins", "events")],
            ..RoutingSpec::default()
        };
        assert_eq!(spec.check(), Ok(()));
        spec.routes.push(route("TWINS", "events"));
        assert_eq!(spec.check(), Err(RouteSpecError::DuplicateName("TWINS".into())));
        spec.routes[1] = route("bad name", "events");
        assert!(matches!(spec.check(), Err(RouteSpecError::InvalidName(_))));
        spec.routes[1] = route("other", "nowhere");
        assert!(matches!(spec.check(), Err(RouteSpecError::UnknownEndpoint { .. })));
        spec.endpoints.push(EndpointSpec {
            name: "nowhere".into(),
            kind: EndpointKind::Webhook {
                url: "http://127.0.0.1:9/hook".into(),
            },
        });
        assert_eq!(spec.check(), Ok(()), "a custom endpoint by that name");
        spec.endpoints.push(EndpointSpec {
            name: "events".into(),
            kind: EndpointKind::Webhook {
                url: "http://127.0.0.1:9/hook".into(),
            },
        });
        assert!(matches!(spec.check(), Err(RouteSpecError::InvalidEndpointName(_))));
        spec.endpoints.pop();
        spec.endpoints.push(EndpointSpec {
            name: "bus".into(),
            kind: EndpointKind::Nats {
                url: "nats://127.0.0.1:4222".into(),
                subject: "alerts.>".into(),
                stream: None,
            },
        });
        assert!(matches!(spec.check(), Err(RouteSpecError::InvalidEndpoint { .. })));
    }

    #[test]
    fn endpoints_and_enrichments_read_from_their_json_form() {
        let spec: RoutingSpec = serde_json::from_str(
            r#"{"endpoints":[{"name":"bus","kind":"nats","url":"nats://127.0.0.1:4222","subject":"alerts","stream":"ALERTS"},
                             {"name":"hook","kind":"webhook","url":"https://example.test/hook"}],
                "enrichments":[{"key":"plant","value":"$twin.tags.plant","endpoints":["events","hook"]}]}"#,
        )
        .unwrap();
        assert_eq!(spec.check(), Ok(()));
        assert!(
            matches!(&spec.endpoints[0].kind, EndpointKind::Nats { stream: Some(stream), .. } if stream == "ALERTS")
        );
        let mut bad = spec.clone();
        bad.enrichments[0].endpoints.push("nowhere".into());
        assert!(matches!(bad.check(), Err(RouteSpecError::UnknownEndpoint { .. })));
    }

    #[test]
    fn sources_are_what_enabled_routes_and_the_fallback_take() {
        let mut spec = RoutingSpec::default();
        assert!(spec.sources().contains(RoutingSource::DeviceMessages));
        assert!(!spec.sources().contains(RoutingSource::TwinChangeEvents));
        spec.routes.push(route("twins", "events"));
        spec.fallback = false;
        assert!(spec.sources().contains(RoutingSource::TwinChangeEvents));
        assert!(!spec.sources().contains(RoutingSource::DeviceMessages));
        spec.routes[0].enabled = false;
        assert!(!spec.sources().contains(RoutingSource::TwinChangeEvents));
    }

    #[test]
    fn the_json_form_uses_iot_hub_names() {
        let spec: RoutingSpec = serde_json::from_str(
            r#"{"routes":[{"name":"t","source":"TwinChangeEvents","condition":"opType = 'updateTwin'","endpoint":"events"}]}"#,
        )
        .unwrap();
        assert!(spec.fallback);
        assert_eq!(spec.routes[0].source, RoutingSource::TwinChangeEvents);
        assert!(spec.routes[0].enabled);
        assert!(serde_json::from_str::<RoutingSpec>(
            r#"{"routes":[{"name":"t","source":"Nope","endpoint":"events"}]}"#
        )
        .is_err());
    }
}
