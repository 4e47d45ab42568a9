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

/// Every route, and whether device messages no route takes go to the built-in endpoint.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RoutingSpec {
    /// The fallback route: device messages that match no route go to `events` (on, as on IoT Hub).
    #[serde(default = "enabled")]
    pub fallback: bool,
    #[serde(default)]
    pub routes: Vec<RouteSpec>,
}

impl Default for RoutingSpec {
    fn default() -> Self {
        RoutingSpec {
            fallback: true,
            routes: Vec::new(),
        }
    }
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
    #[error("route {route:?} sends to endpoint {endpoint:?}, which does not exist (endpoints: events)")]
    UnknownEndpoint { route: String, endpoint: String },
    #[error("at most {ROUTES_MAX} routes")]
    TooManyRoutes,
}

impl RoutingSpec {
    /// Checks names and endpoints (conditions are checked where they are compiled).
    pub fn check(&self) -> Result<(), RouteSpecError> {
        if self.routes.len() > ROUTES_MAX {
            return Err(RouteSpecError::TooManyRoutes);
        }
        let mut seen = std::collections::HashSet::new();
        for route in &self.routes {
            let name_ok = !route.name.is_empty()
                && route.name.len() <= ROUTE_NAME_LENGTH_MAX
                && route
                    .name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
            if !name_ok {
                return Err(RouteSpecError::InvalidName(route.name.clone()));
            }
            if !seen.insert(route.name.to_ascii_lowercase()) {
                return Err(RouteSpecError::DuplicateName(route.name.clone()));
            }
            if !route.endpoint.eq_ignore_ascii_case(BUILT_IN_ENDPOINT) {
                return Err(RouteSpecError::UnknownEndpoint {
                    route: route.name.clone(),
                    endpoint: route.endpoint.clone(),
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
