//! Message routing: which endpoints a device message or one of the hub's own messages goes to. A route
//! takes one source's messages that pass its condition to its endpoint; a message goes to every endpoint
//! some route sends it to, once each. Device messages no route takes go to the built-in endpoint while
//! the fallback route is on (IoT Hub's default); the hub's own messages reach an endpoint only through a
//! route (IoT Hub's rule), and are only built while a route takes their source.
//!
//! The table is swapped whole (`ArcSwap`), so a message is routed by one version of it.

use crate::endpoints::{CustomEndpoint, EndpointFactory};
use crate::event_log::{EventLog, PendingAppend};
use crate::{HubError, Registry};
use arc_swap::ArcSwap;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use twinhub_core::event::{DeviceEvent, EventOrigin, EventValue};
use twinhub_core::hub_message::HubMessage;
use twinhub_core::routing::{RouteSpec, RouteSpecError, RoutingSource, RoutingSpec, SourceSet, BUILT_IN_ENDPOINT};
use twinhub_core::{DeviceRecord, Timestamp};
use twinhub_query::document::FieldPath;
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
    #[error("there is no event hub named {0:?} (the built-in endpoint is events)")]
    EventHubNotFound(String),
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
    enrichments: Vec<CompiledEnrichment>,
    sources: SourceSet,
}

#[derive(Clone, Debug)]
struct CompiledRoute {
    name: String,
    source: RoutingSource,
    condition: RoutingCondition,
    /// The endpoint's name in lower case (`events`: the built-in one).
    endpoint: String,
}

/// An enrichment compiled: its value, and the endpoints (lower case) whose messages get it.
#[derive(Clone, Debug)]
struct CompiledEnrichment {
    key: String,
    value: EnrichmentValue,
    endpoints: Vec<String>,
}

#[derive(Clone, Debug)]
enum EnrichmentValue {
    Text(String),
    HubName,
    /// A path of the sender's twin; the text as written when the twin has nothing there.
    Twin(FieldPath, String),
}

/// Where a message goes: the built-in endpoint and custom endpoints (names in lower case), each once.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Destinations {
    pub built_in: bool,
    pub custom: Vec<String>,
    /// The routes that took the message (empty when only the fallback did).
    pub routes: Vec<String>,
}

impl Destinations {
    fn add(&mut self, endpoint: &str) {
        if endpoint == BUILT_IN_ENDPOINT {
            self.built_in = true;
        } else if !self.custom.iter().any(|name| name == endpoint) {
            self.custom.push(endpoint.to_owned());
        }
    }

    pub fn is_empty(&self) -> bool {
        !self.built_in && self.custom.is_empty()
    }

    /// Every endpoint's name (lower case; `events` first when the built-in endpoint takes it).
    pub fn endpoints(self) -> impl Iterator<Item = String> {
        self.built_in
            .then(|| BUILT_IN_ENDPOINT.to_owned())
            .into_iter()
            .chain(self.custom)
    }
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
                endpoint: route.endpoint.to_ascii_lowercase(),
            });
        }
        let enrichments = spec
            .enrichments
            .iter()
            .map(|enrichment| CompiledEnrichment {
                key: enrichment.key.clone(),
                value: EnrichmentValue::of(&enrichment.value),
                endpoints: enrichment
                    .endpoints
                    .iter()
                    .map(|name| name.to_ascii_lowercase())
                    .collect(),
            })
            .collect();
        Ok(RoutingTable {
            sources: spec.sources(),
            spec,
            routes,
            enrichments,
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

    /// No route, no enrichment, and the fallback on: every device message goes to the built-in endpoint
    /// as it is, which needs no evaluation.
    fn everything_to_built_in(&self) -> bool {
        self.routes.is_empty() && self.enrichments.is_empty() && self.spec.fallback
    }

    /// Whether routing a message of `source` reads the sender's twin (a condition or an enrichment).
    fn reads_twin(&self, source: RoutingSource) -> bool {
        self.routes
            .iter()
            .any(|route| route.source == source && route.condition.reads_twin())
            || self
                .enrichments
                .iter()
                .any(|enrichment| matches!(enrichment.value, EnrichmentValue::Twin(..)))
    }

    /// Where `message`, from `source`, goes.
    pub fn destinations(&self, source: RoutingSource, message: &RoutedMessage) -> Destinations {
        let mut destinations = Destinations::default();
        for route in self.routes.iter().filter(|route| route.source == source) {
            if route.condition.matches(message) {
                destinations.add(&route.endpoint);
                destinations.routes.push(route.name.clone());
            }
        }
        if source == RoutingSource::DeviceMessages && destinations.routes.is_empty() && self.spec.fallback {
            destinations.built_in = true;
        }
        destinations
    }

    /// `event` as it goes to `endpoint`: with the enrichments of that endpoint added as application
    /// properties (IoT Hub: enrichments do not replace a property the message has).
    fn enriched(
        &self,
        endpoint: &str,
        event: &DeviceEvent,
        twin: Option<&DeviceRecord>,
        hub_name: &str,
    ) -> DeviceEvent {
        let mut event = event.clone();
        for enrichment in self
            .enrichments
            .iter()
            .filter(|enrichment| enrichment.endpoints.iter().any(|name| name == endpoint))
        {
            if event
                .application_properties
                .iter()
                .any(|(key, _)| *key == enrichment.key)
            {
                continue;
            }
            let value = enrichment.value.resolve(twin, hub_name);
            event
                .application_properties
                .push((enrichment.key.clone(), EventValue::String(value)));
        }
        event
    }
}

impl EnrichmentValue {
    fn of(text: &str) -> EnrichmentValue {
        if text.eq_ignore_ascii_case("$iothubname") {
            return EnrichmentValue::HubName;
        }
        match text.split_once('.') {
            Some((root, rest)) if root.eq_ignore_ascii_case("$twin") && !rest.is_empty() => EnrichmentValue::Twin(
                FieldPath::new(rest.split('.').map(str::to_owned).collect()),
                text.to_owned(),
            ),
            _ => EnrichmentValue::Text(text.to_owned()),
        }
    }

    fn resolve(&self, twin: Option<&DeviceRecord>, hub_name: &str) -> String {
        match self {
            EnrichmentValue::Text(text) => text.clone(),
            EnrichmentValue::HubName => hub_name.to_owned(),
            EnrichmentValue::Twin(path, written) => {
                let value = twin.map(|twin| path.resolve(twin));
                match value.as_ref().and_then(|value| value.to_json()) {
                    Some(serde_json::Value::String(text)) => text,
                    Some(serde_json::Value::Null) | None => written.clone(),
                    Some(other) => other.to_string(),
                }
            }
        }
    }
}

/// The hub's routing: the table in force, the built-in endpoint and the custom endpoints open.
pub struct MessageRouting {
    table: ArcSwap<RoutingTable>,
    built_in: Option<Arc<EventLog>>,
    /// Custom endpoints by name (lower case), opened before a table that names them is in force.
    custom: ArcSwap<HashMap<String, Arc<CustomEndpoint>>>,
    /// One opening or closing of endpoints at a time.
    opening: tokio::sync::Mutex<()>,
    factory: Option<Arc<dyn EndpointFactory>>,
    hub_name: String,
    /// Device messages no route took (with the fallback off), acknowledged and dropped as on IoT Hub.
    unrouted: AtomicU64,
    /// The hub's own messages that a route took but an endpoint refused (the store failed).
    lost: AtomicU64,
}

impl MessageRouting {
    pub fn new(
        table: RoutingTable,
        built_in: Option<Arc<EventLog>>,
        factory: Option<Arc<dyn EndpointFactory>>,
        hub_name: &str,
    ) -> MessageRouting {
        MessageRouting {
            table: ArcSwap::from_pointee(table),
            built_in,
            custom: ArcSwap::default(),
            opening: tokio::sync::Mutex::new(()),
            factory,
            hub_name: hub_name.to_owned(),
            unrouted: AtomicU64::new(0),
            lost: AtomicU64::new(0),
        }
    }

    pub fn table(&self) -> Arc<RoutingTable> {
        self.table.load_full()
    }

    /// Opens the custom endpoints `spec` names that are not open yet (or whose settings changed), so a
    /// table naming them can be put in force.
    pub async fn open_endpoints(&self, spec: &RoutingSpec) -> Result<(), HubError> {
        let _one_at_a_time = self.opening.lock().await;
        let current = self.custom.load_full();
        let mut next = (*current).clone();
        for endpoint in &spec.endpoints {
            let key = endpoint.name.to_ascii_lowercase();
            if current.get(&key).is_some_and(|open| open.spec == *endpoint) {
                continue;
            }
            let factory = self
                .factory
                .as_deref()
                .ok_or_else(|| HubError::InvalidArgument("this hub cannot open custom endpoints".into()))?;
            let opened = CustomEndpoint::open(endpoint.clone(), factory).await?;
            if let Some(previous) = next.insert(key, Arc::new(opened)) {
                previous.close();
            }
        }
        self.custom.store(Arc::new(next));
        Ok(())
    }

    /// Puts `table` in force; custom endpoints it no longer names stop delivering.
    pub fn replace(&self, table: RoutingTable) {
        let named: std::collections::HashSet<String> = table
            .spec
            .endpoints
            .iter()
            .map(|endpoint| endpoint.name.to_ascii_lowercase())
            .collect();
        self.table.store(Arc::new(table));
        let custom = self.custom.load_full();
        if custom.keys().any(|name| !named.contains(name)) {
            let kept = custom
                .iter()
                .filter(|(name, endpoint)| {
                    let keep = named.contains(*name);
                    if !keep {
                        endpoint.close();
                    }
                    keep
                })
                .map(|(name, endpoint)| (name.clone(), Arc::clone(endpoint)))
                .collect();
            self.custom.store(Arc::new(kept));
        }
    }

    /// The event hub named `name` (case-insensitive) that routes fill inside twinhub, if there is one.
    pub fn event_hub(&self, name: &str) -> Option<Arc<EventLog>> {
        self.custom
            .load()
            .get(&name.to_ascii_lowercase())
            .and_then(|endpoint| endpoint.event_hub().cloned())
    }

    /// The custom endpoints open now.
    pub fn custom_endpoints(&self) -> Vec<Arc<CustomEndpoint>> {
        self.custom.load().values().cloned().collect()
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

    /// The log of endpoint `name` (lower case): the built-in one, or a custom endpoint's outbox.
    fn log_of(&self, name: &str) -> Result<Arc<EventLog>, HubError> {
        if name == BUILT_IN_ENDPOINT {
            return self.built_in().cloned();
        }
        self.custom
            .load()
            .get(name)
            .map(|endpoint| Arc::clone(&endpoint.outbox))
            .ok_or_else(|| {
                HubError::Store(twinhub_store::StoreError::Unavailable(
                    format!("endpoint {name} is not open yet").into(),
                ))
            })
    }

    /// Routes one device's messages; answers once every endpoint that takes one has it durably (the
    /// messages of one call land in an endpoint together, contiguous in their partition, or none do).
    pub async fn route_device_events(
        &self,
        origin: EventOrigin,
        events: Vec<DeviceEvent>,
        twin: impl FnOnce() -> Option<Arc<DeviceRecord>>,
    ) -> Result<(), HubError> {
        let table = self.table();
        if table.everything_to_built_in() {
            return self.built_in()?.append(origin, events).await.map(|_| ());
        }
        twinhub_core::event::check_size(&events).map_err(|too_large| HubError::MessageTooLarge(too_large.size))?;
        let twin = if table.reads_twin(RoutingSource::DeviceMessages) {
            twin()
        } else {
            None
        };
        let now = Timestamp::now();
        // Per endpoint, the messages it takes, in order.
        let mut per_endpoint: Vec<(String, Vec<DeviceEvent>)> = Vec::new();
        for event in &events {
            let message = RoutedMessage::new(event, &origin, now, twin.as_deref());
            let destinations = table.destinations(RoutingSource::DeviceMessages, &message);
            if destinations.is_empty() {
                self.unrouted.fetch_add(1, Ordering::Relaxed);
                continue;
            }
            for name in destinations.endpoints() {
                let event = table.enriched(&name, event, twin.as_deref(), &self.hub_name);
                match per_endpoint.iter_mut().find(|(endpoint, _)| *endpoint == name) {
                    Some((_, taken)) => taken.push(event),
                    None => per_endpoint.push((name, vec![event])),
                }
            }
        }
        let mut pending = Vec::with_capacity(per_endpoint.len());
        for (name, taken) in per_endpoint {
            pending.push(self.log_of(&name)?.enqueue(origin.clone(), taken).await?);
        }
        for answer in pending {
            answer.await.map_err(|_| HubError::ShuttingDown)??;
        }
        Ok(())
    }

    /// Queues the hub's own messages of one commit for their endpoints, in commit order, with the
    /// registry as that commit left it (for `$twin` conditions and enrichments). Returns what to wait for
    /// before the commit's writes are acknowledged.
    pub(crate) async fn enqueue_hub_messages(
        &self,
        messages: Vec<HubMessage>,
        registry: &Registry,
        modules: &crate::Modules,
    ) -> PendingHubMessages {
        let mut pending = Vec::new();
        if messages.is_empty() {
            return PendingHubMessages(pending);
        }
        let table = self.table();
        let now = Timestamp::now();
        for message in messages {
            // A module's messages read the module's twin, as on IoT Hub.
            let twin = if !table.reads_twin(message.source) {
                None
            } else if let Some(module_id) = &message.origin.module_id {
                twinhub_core::ModuleId::new(module_id)
                    .ok()
                    .and_then(|module_id| modules.get(&(message.origin.device_id.clone(), module_id)))
                    .map(|module| Arc::clone(&module.record))
            } else {
                registry.get(&message.origin.device_id).cloned()
            };
            let routed = RoutedMessage::new(&message.event, &message.origin, now, twin.as_deref());
            let destinations = table.destinations(message.source, &routed);
            for name in destinations.endpoints() {
                let event = table.enriched(&name, &message.event, twin.as_deref(), &self.hub_name);
                let queued = match self.log_of(&name) {
                    Ok(log) => log.enqueue(message.origin.clone(), vec![event]).await,
                    Err(error) => Err(error),
                };
                match queued {
                    Ok(answer) => pending.push(answer),
                    Err(error) => {
                        self.lost.fetch_add(1, Ordering::Relaxed);
                        tracing::error!(endpoint = %name, %error, "a hub message could not be queued for its endpoint");
                    }
                }
            }
        }
        PendingHubMessages(pending)
    }

    /// Waits for queued hub messages; what an endpoint refused is counted and logged (the writes they
    /// tell of stand).
    pub(crate) async fn settle(&self, pending: PendingHubMessages) {
        for answer in pending.0 {
            let error = match answer.await {
                Ok(Ok(_)) => continue,
                Ok(Err(error)) => error,
                Err(_) => HubError::ShuttingDown,
            };
            self.lost.fetch_add(1, Ordering::Relaxed);
            tracing::error!(%error, "a hub message was not stored in its endpoint");
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
            ..RoutingSpec::default()
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
            ..RoutingSpec::default()
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
            ..RoutingSpec::default()
        };
        let error = RoutingTable::compile(spec).unwrap_err().to_string();
        assert!(error.contains("broken") && error.contains("column"), "{error}");
    }
}
