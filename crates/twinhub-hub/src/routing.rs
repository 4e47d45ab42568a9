//! Message routing: which endpoints a device message or one of the hub's own messages goes to. A route
//! takes one source's messages that pass its condition to its endpoint; a message goes to every endpoint
//! some route sends it to, once each. Device messages no route takes go to the built-in endpoint while
//! the fallback route is on (IoT Hub's default); the hub's own messages reach an endpoint only through a
//! route (IoT Hub's rule), and are only built while a route takes their source.
//!
//! The table is swapped whole (`ArcSwap`), so a message is routed by one version of it.

use crate::event_log::{Enqueued, EventLog, PendingAppend};
use crate::{HubError, Registry};
use arc_swap::ArcSwap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use twinhub_core::event::{DeviceEvent, EventOrigin};
use twinhub_core::hub_message::HubMessage;
use twinhub_core::routing::{RouteSpec, RouteSpecError, RoutingSource, RoutingSpec, SourceSet};
use twinhub_core::{DeviceRecord, Timestamp};
use twinhub_query::routing::{RoutedMessage, RoutingCondition};
use twinhub_query::QueryError;

#[derive(Debug, thiserror::Error)]
pub enum RoutingError {
    #[error(transparent)]
    Spec(#[from] RouteSpecError),
    #[error("route {route:?}: the condition is invalid: {error}")]
    Condition { route: String, error: QueryError },
    #[error("there is no route named {0:?}")]
    RouteNotFound(String),
    #[error("the stored routes cannot be read: {0}")]
    Stored(String),
}

/// The store setting the routes are kept under (JSON of [`RoutingSpec`]).
pub(crate) const ROUTING_SETTING: &str = "routing";

/// A change of the routes, applied by the writer to the routes in force (so two changes at once both
/// land).
#[derive(Clone, Debug)]
pub enum RoutingEdit {
    /// Add a route, or replace the one of that name.
    PutRoute(RouteSpec),
    /// Remove the route of that name (`RouteNotFound` when there is none).
    RemoveRoute(String),
    SetFallback(bool),
    /// Every route at once (a routes file at start).
    Replace(RoutingSpec),
}

impl RoutingEdit {
    /// The routes after the edit, compiled; the table in force is untouched when it is refused.
    pub(crate) fn apply(self, current: &RoutingSpec) -> Result<RoutingTable, RoutingError> {
        let mut spec = current.clone();
        match self {
            RoutingEdit::PutRoute(route) => {
                match spec
                    .routes
                    .iter_mut()
                    .find(|existing| existing.name.eq_ignore_ascii_case(&route.name))
                {
                    Some(existing) => *existing = route,
                    None => spec.routes.push(route),
                }
            }
            RoutingEdit::RemoveRoute(name) => {
                let before = spec.routes.len();
                spec.routes.retain(|route| !route.name.eq_ignore_ascii_case(&name));
                if spec.routes.len() == before {
                    return Err(RoutingError::RouteNotFound(name));
                }
            }
            RoutingEdit::SetFallback(on) => spec.fallback = on,
            RoutingEdit::Replace(replacement) => spec = replacement,
        }
        RoutingTable::compile(spec)
    }
}

/// The routes compiled: conditions parsed, disabled routes left out.
#[derive(Clone, Debug)]
pub struct RoutingTable {
    spec: RoutingSpec,
    routes: Vec<CompiledRoute>,
    sources: SourceSet,
}

#[derive(Clone, Debug)]
struct CompiledRoute {
    name: String,
    source: RoutingSource,
    condition: RoutingCondition,
}

/// Where a message goes. Only the built-in endpoint exists so far; custom endpoints join it here.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Destinations {
    pub built_in: bool,
    /// The routes that took the message (empty when only the fallback did).
    pub routes: Vec<String>,
}

impl RoutingTable {
    pub fn compile(spec: RoutingSpec) -> Result<RoutingTable, RoutingError> {
        spec.check()?;
        let mut routes = Vec::new();
        for route in spec.routes.iter().filter(|route| route.enabled) {
            let condition = RoutingCondition::parse(&route.condition).map_err(|error| RoutingError::Condition {
                route: route.name.clone(),
                error,
            })?;
            routes.push(CompiledRoute {
                name: route.name.clone(),
                source: route.source,
                condition,
            });
        }
        Ok(RoutingTable {
            sources: spec.sources(),
            spec,
            routes,
        })
    }

    pub fn spec(&self) -> &RoutingSpec {
        &self.spec
    }

    /// The routes as the store keeps them.
    pub(crate) fn from_stored(json: &str) -> Result<RoutingTable, RoutingError> {
        let spec = serde_json::from_str(json).map_err(|error| RoutingError::Stored(error.to_string()))?;
        RoutingTable::compile(spec)
    }

    pub(crate) fn to_stored(&self) -> Result<String, RoutingError> {
        serde_json::to_string(&self.spec).map_err(|error| RoutingError::Stored(error.to_string()))
    }

    /// Whether any enabled route (or the fallback) takes this source.
    pub fn takes(&self, source: RoutingSource) -> bool {
        self.sources.contains(source)
    }

    pub fn sources(&self) -> SourceSet {
        self.sources
    }

    /// No route at all and the fallback on: every device message goes to the built-in endpoint, which
    /// needs no evaluation.
    fn everything_to_built_in(&self) -> bool {
        self.routes.is_empty() && self.spec.fallback
    }

    /// Whether a condition on `source` reads the sender's twin.
    fn reads_twin(&self, source: RoutingSource) -> bool {
        self.routes
            .iter()
            .any(|route| route.source == source && route.condition.reads_twin())
    }

    /// Where `message`, from `source`, goes.
    pub fn destinations(&self, source: RoutingSource, message: &RoutedMessage) -> Destinations {
        let mut destinations = Destinations::default();
        for route in self.routes.iter().filter(|route| route.source == source) {
            if route.condition.matches(message) {
                destinations.built_in = true;
                destinations.routes.push(route.name.clone());
            }
        }
        if source == RoutingSource::DeviceMessages && destinations.routes.is_empty() && self.spec.fallback {
            destinations.built_in = true;
        }
        destinations
    }
}

/// The hub's routing: the table in force and the built-in endpoint.
pub struct MessageRouting {
    table: ArcSwap<RoutingTable>,
    built_in: Option<Arc<EventLog>>,
    /// Device messages no route took (with the fallback off), acknowledged and dropped as on IoT Hub.
    unrouted: AtomicU64,
    /// The hub's own messages that a route took but the endpoint refused (the store failed).
    lost: AtomicU64,
}

impl MessageRouting {
    pub fn new(table: RoutingTable, built_in: Option<Arc<EventLog>>) -> MessageRouting {
        MessageRouting {
            table: ArcSwap::from_pointee(table),
            built_in,
            unrouted: AtomicU64::new(0),
            lost: AtomicU64::new(0),
        }
    }

    pub fn table(&self) -> Arc<RoutingTable> {
        self.table.load_full()
    }

    pub fn replace(&self, table: RoutingTable) {
        self.table.store(Arc::new(table));
    }

    /// Device messages that matched no route while the fallback was off.
    pub fn unrouted(&self) -> u64 {
        self.unrouted.load(Ordering::Relaxed)
    }

    /// Hub messages a route took that could not be stored.
    pub fn lost(&self) -> u64 {
        self.lost.load(Ordering::Relaxed)
    }

    fn built_in(&self) -> Result<&Arc<EventLog>, HubError> {
        self.built_in
            .as_ref()
            .ok_or(HubError::Internal("this hub keeps no events"))
    }

    /// Routes one device's messages; answers once every endpoint that takes one has it durably (the
    /// messages of one call land together, contiguous in their partition, or none do).
    pub async fn route_device_events(
        &self,
        origin: EventOrigin,
        events: Vec<DeviceEvent>,
        twin: impl FnOnce() -> Option<Arc<DeviceRecord>>,
    ) -> Result<Vec<Enqueued>, HubError> {
        let table = self.table();
        if table.everything_to_built_in() {
            return self.built_in()?.append(origin, events).await;
        }
        twinhub_core::event::check_size(&events).map_err(|too_large| HubError::MessageTooLarge(too_large.size))?;
        let twin = if table.reads_twin(RoutingSource::DeviceMessages) {
            twin()
        } else {
            None
        };
        let now = Timestamp::now();
        let mut to_built_in = Vec::with_capacity(events.len());
        for event in events {
            let message = RoutedMessage::new(&event, &origin, now, twin.as_deref());
            if table.destinations(RoutingSource::DeviceMessages, &message).built_in {
                to_built_in.push(event);
            } else {
                self.unrouted.fetch_add(1, Ordering::Relaxed);
            }
        }
        if to_built_in.is_empty() {
            return Ok(Vec::new());
        }
        self.built_in()?.append(origin, to_built_in).await
    }

    /// Queues the hub's own messages of one commit for their endpoints, in commit order, with the
    /// registry as that commit left it (for `$twin` conditions). Returns what to wait for before the
    /// commit's writes are acknowledged.
    pub(crate) async fn enqueue_hub_messages(
        &self,
        messages: Vec<HubMessage>,
        registry: &Registry,
    ) -> PendingHubMessages {
        let mut pending = Vec::new();
        if messages.is_empty() {
            return PendingHubMessages(pending);
        }
        let table = self.table();
        let Some(log) = &self.built_in else {
            return PendingHubMessages(pending);
        };
        let now = Timestamp::now();
        for message in messages {
            let twin = if table.reads_twin(message.source) {
                registry.get(&message.origin.device_id).cloned()
            } else {
                None
            };
            let routed = RoutedMessage::new(&message.event, &message.origin, now, twin.as_deref());
            if !table.destinations(message.source, &routed).built_in {
                continue;
            }
            match log.enqueue(message.origin, vec![message.event]).await {
                Ok(answer) => pending.push(answer),
                Err(error) => {
                    self.lost.fetch_add(1, Ordering::Relaxed);
                    tracing::error!(%error, "a hub message could not be queued for the built-in endpoint");
                }
            }
        }
        PendingHubMessages(pending)
    }

    /// Waits for queued hub messages; what the endpoint refused is counted and logged (the writes they
    /// tell of stand).
    pub(crate) async fn settle(&self, pending: PendingHubMessages) {
        for answer in pending.0 {
            let error = match answer.await {
                Ok(Ok(_)) => continue,
                Ok(Err(error)) => error,
                Err(_) => HubError::ShuttingDown,
            };
            self.lost.fetch_add(1, Ordering::Relaxed);
            tracing::error!(%error, "a hub message was not stored in the built-in endpoint");
        }
    }
}

/// Hub messages queued for their endpoints, not yet durable.
pub(crate) struct PendingHubMessages(Vec<PendingAppend>);

impl PendingHubMessages {
    pub(crate) fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use twinhub_core::event::{EventProperties, EventValue};

    use twinhub_core::DeviceId;

    fn route(name: &str, source: RoutingSource, condition: &str) -> RouteSpec {
        RouteSpec {
            name: name.into(),
            source,
            condition: condition.into(),
            endpoint: "events".into(),
            enabled: true,
        }
    }

    fn destinations(table: &RoutingTable, source: RoutingSource, level: &str) -> Destinations {
        let event = DeviceEvent {
            properties: EventProperties::default(),
            application_properties: vec![("level".into(), EventValue::String(level.into()))],
            ..DeviceEvent::default()
        };
        let origin = EventOrigin {
            device_id: DeviceId::new("d").unwrap(),
            module_id: None,
            generation_id: "g".into(),
        };
        table.destinations(source, &RoutedMessage::new(&event, &origin, Timestamp(0), None))
    }

    #[test]
    fn the_fallback_takes_device_messages_no_route_took() {
        let spec = RoutingSpec {
            fallback: true,
            routes: vec![route("critical", RoutingSource::DeviceMessages, "level = 'critical'")],
        };
        let table = RoutingTable::compile(spec).unwrap();
        let critical = destinations(&table, RoutingSource::DeviceMessages, "critical");
        assert_eq!(critical.routes, vec!["critical".to_owned()]);
        let normal = destinations(&table, RoutingSource::DeviceMessages, "normal");
        assert!(normal.built_in && normal.routes.is_empty(), "the fallback took it");
        let mut spec = table.spec().clone();
        spec.fallback = false;
        let table = RoutingTable::compile(spec).unwrap();
        assert!(!destinations(&table, RoutingSource::DeviceMessages, "normal").built_in);
    }

    #[test]
    fn hub_messages_go_only_where_a_route_sends_them() {
        let table = RoutingTable::compile(RoutingSpec::default()).unwrap();
        assert!(!destinations(&table, RoutingSource::TwinChangeEvents, "x").built_in);
        assert!(!table.takes(RoutingSource::TwinChangeEvents));
        let spec = RoutingSpec {
            fallback: true,
            routes: vec![route("twins", RoutingSource::TwinChangeEvents, "")],
        };
        let table = RoutingTable::compile(spec).unwrap();
        assert!(table.takes(RoutingSource::TwinChangeEvents));
        assert!(destinations(&table, RoutingSource::TwinChangeEvents, "x").built_in);
        assert!(!destinations(&table, RoutingSource::DeviceLifecycleEvents, "x").built_in);
    }

    #[test]
    fn a_bad_condition_names_its_route() {
        let spec = RoutingSpec {
            fallback: true,
            routes: vec![route("broken", RoutingSource::DeviceMessages, "level = ")],
        };
        let error = RoutingTable::compile(spec).unwrap_err().to_string();
        assert!(error.contains("broken") && error.contains("column"), "{error}");
    }
}
