//! The hub service: the one API every transport calls (REST, MQTT, AMQP, the HTTPS device API).
//!
//! Reads come from an immutable snapshot of every device record (an ordered persistent map swapped
//! atomically), so they never wait for writes and a query pages over a consistent, sorted view.
//! All writes go through one writer task that owns the next snapshot: it drains a bounded queue, applies
//! each operation with the rules from `twinhub-core`, commits the batch to the store with one fsync, and
//! only then publishes the new snapshot and acknowledges. So an acknowledged write is durable, a read
//! after an acknowledgement sees it, and versions and etags cannot race.

mod announce;
mod bulk;
pub mod change_stream;

pub mod cloud_to_device;
mod configuration_applier;
pub mod configurations;
pub mod device_router;
pub mod endpoints;
mod error;
pub mod event_log;
mod events;
mod follow;
mod held;
pub mod index;
mod job_runner;
pub mod jobs;
mod modules;
mod presence_leases;
mod query;
mod remote_methods;
pub mod routing;
pub mod takeover;
mod writer;

use arc_swap::ArcSwap;
use std::sync::Arc;
use tokio::sync::{broadcast, mpsc};
use twinhub_core::etag::IfMatch;
use twinhub_core::event::{DeviceEvent, EventOrigin};
use twinhub_core::json::DeviceDraft;
use twinhub_core::session::SessionRecord;
use twinhub_core::twin::{ReportedPatch, TwinPatch, TwinReplacement};
use twinhub_core::{DeviceId, DeviceRecord, DeviceStatus, TwinRules};
use twinhub_store::{EventStore, Store};

pub use bulk::{BulkError, BulkOperation, BulkOutcome, ImportMode};
pub use cloud_to_device::FeedbackQueue;
use cloud_to_device::{CloudToDeviceOp, CloudToDeviceOutcome};
pub use device_router::{
    DeviceMail, DeviceRouter, Endpoint, Interests, Mailbox, MethodRequest, MethodRequestId, Registration,
};
pub use error::HubError;
pub use event_log::{Enqueued, EventLog, EventLogConfig, PartitionState};
pub use events::HubEvent;
pub use follow::ClusterView;
pub use writer::{PresenceEvent, ACTIVITY_RESOLUTION};
use writer::{WriteCommand, WriteOp, WriteOutcome};

/// Every device record, ordered by device id. Cloning is O(1); the writer changes its own copy.
pub type Registry = imbl::OrdMap<DeviceId, Arc<DeviceRecord>>;

/// What readers see: the records and the indexes over them, as of one committed batch.
#[derive(Clone, Debug, Default)]
pub struct Snapshot {
    pub devices: Registry,
    pub indexes: index::Indexes<DeviceId>,
    /// The indexes over module twins (`devices.modules`).
    pub module_indexes: index::Indexes<ModuleKey>,
    /// The consumer groups back ends created (not `$Default`), by lower-cased name, each with its name.
    pub consumer_groups: imbl::OrdMap<String, String>,
    /// Module identities with their twins, by device and module (a device's modules are one range).
    pub modules: Modules,
    /// Automatic device configurations.
    pub configurations: configurations::ConfigurationSet,
    /// Scheduled jobs, and every device's step of one.
    pub jobs: jobs::Jobs,
    pub device_jobs: jobs::DeviceJobs,
}

/// A module's place in the registry: its device's id, then its own.
pub type ModuleKey = (DeviceId, twinhub_core::ModuleId);

/// Module identities by device and module id.
pub type Modules = imbl::OrdMap<ModuleKey, Arc<twinhub_core::module::ModuleRecord>>;

#[derive(Clone, Debug)]
pub struct HubConfig {
    pub rules: TwinRules,
    /// Most operations one commit carries. Bounds the latency of a batch and the memory it holds.
    pub commit_batch_operations_max: usize,
    /// Writes waiting for the writer; past this, callers wait (back-pressure) instead of queueing more.
    pub write_queue_operations_max: usize,
    /// Retention of device-to-cloud events.
    pub events: EventLogConfig,
    /// The hub's name (`hubName` in its own messages; IoT Hub's is its host name's first label).
    pub hub_name: String,
    /// Message routes at start (a routes file), in place of those stored; `None`: the stored ones.
    pub routing: Option<twinhub_core::routing::RoutingSpec>,
    /// Opens custom endpoints' outboxes and sinks; `None`: routes name the built-in endpoint only.
    pub endpoint_factory: Option<endpoints::FactoryHandle>,
    /// How many devices' steps of jobs the hub takes on per second, all jobs together: a job over a
    /// large fleet leaves the devices' own traffic its share of the writer.
    pub job_devices_per_second: u32,
}

impl Default for HubConfig {
    fn default() -> Self {
        HubConfig {
            rules: TwinRules::default(),
            commit_batch_operations_max: 1024,
            write_queue_operations_max: 16 * 1024,
            events: EventLogConfig::default(),
            hub_name: "twinhub".into(),
            routing: None,
            endpoint_factory: None,
            job_devices_per_second: 2_000,
        }
    }
}

/// Largest bulk registry request, as on IoT Hub.
pub const BULK_DEVICES_MAX: usize = 100;

pub struct Hub {
    snapshot: Arc<ArcSwap<Snapshot>>,
    /// The persistent sessions found at start, until a transport takes them.
    stored_sessions: std::sync::Mutex<Vec<SessionRecord>>,
    /// Clients another node took (a cluster): announced on the bus, or their session written there.
    sessions_elsewhere: broadcast::Sender<takeover::TakenElsewhere>,
    /// This process among the cluster's nodes, in its announcements.
    instance: u64,
    /// The store, for the rare reads outside the snapshot (a session another node wrote).
    store: Arc<dyn Store>,
    writes: mpsc::Sender<WriteCommand>,
    events: broadcast::Sender<HubEvent>,
    /// Device-to-cloud events; `None` for a hub started without an event store (benchmarks of the registry).
    event_log: Option<Arc<EventLog>>,
    /// Which endpoints device messages and the hub's own messages go to.
    routing: Arc<routing::MessageRouting>,
    /// Device connections by device, for desired notifications, direct methods and cloud-to-device messages.
    router: Arc<DeviceRouter>,
    /// Cloud-to-device feedback for back ends.
    feedback: Arc<FeedbackQueue>,
    /// In a cluster (a store other nodes share): how this node follows the others' commits.
    follower: Option<follow::Follower>,
    /// In a cluster: the bus to the other nodes (direct methods to devices connected elsewhere).
    bus: Option<Arc<dyn twinhub_bus::Bus>>,
    /// The live change stream for back ends (`change_stream.rs`).
    changes: Arc<change_stream::ChangeStream>,
    /// Wakes the job runner (a job was created) ahead of its next look.
    job_runner_wake: Arc<tokio::sync::Notify>,
    config: HubConfig,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RegistryStatistics {
    pub total: usize,
    pub enabled: usize,
    pub disabled: usize,
}

impl Hub {
    /// Loads every record from the store and starts the writer, without device-to-cloud events. Must run
    /// inside a tokio runtime.
    pub async fn start(store: Arc<dyn Store>, config: HubConfig) -> Result<Arc<Hub>, HubError> {
        Hub::start_with_events(store, None, config).await
    }

    /// Loads every record from the store, opens the event log, and starts the writers. Must run inside a
    /// tokio runtime.
    pub async fn start_with_events(
        store: Arc<dyn Store>,
        event_store: Option<Arc<dyn EventStore>>,
        config: HubConfig,
    ) -> Result<Arc<Hub>, HubError> {
        Hub::start_node(store, event_store, None, config).await
    }

    /// As [`Hub::start_with_events`], as one node of a cluster when `bus` is given: direct methods reach
    /// devices connected to the other nodes.
    pub async fn start_node(
        store: Arc<dyn Store>,
        event_store: Option<Arc<dyn EventStore>>,
        bus: Option<Arc<dyn twinhub_bus::Bus>>,
        config: HubConfig,
    ) -> Result<Arc<Hub>, HubError> {
        let event_log = match event_store {
            Some(event_store) => Some(EventLog::open(event_store, config.events.clone()).await?),
            None => None,
        };
        // In a cluster, one consistent view, as of a commit the log is then followed from.
        let twinhub_store::Loaded {
            records,
            sessions: stored_sessions,
            consumer_groups,
            cloud_to_device: c2d_messages,
            feedback: feedback_records,
            settings,
            modules: stored_modules,
            jobs: stored_jobs,
            seq: loaded_seq,
        } = store.load().await.map_err(HubError::Store)?;
        let modules: Modules = stored_modules
            .into_iter()
            .map(|module| ((module.device_id().clone(), module.module_id.clone()), Arc::new(module)))
            .collect();
        let (jobs, device_jobs) = jobs::restore(stored_jobs);
        let configurations = settings
            .iter()
            .find(|(name, _)| name == configurations::CONFIGURATIONS_SETTING)
            .map(|(_, value)| configurations::ConfigurationSet::from_stored(value))
            .transpose()?
            .unwrap_or_default();
        let stored_routes = settings
            .iter()
            .find(|(name, _)| name == routing::ROUTING_SETTING)
            .map(|(_, value)| routing::RoutingTable::from_stored(value))
            .transpose()?;
        // Routes from a file replace the stored ones (and are stored below); a file that is invalid stops
        // the start.
        let routes = match &config.routing {
            Some(spec) => routing::RoutingTable::compile(spec.clone())?,
            None => stored_routes
                .clone()
                .unwrap_or(routing::RoutingTable::compile(Default::default())?),
        };
        let store_routes = config
            .routing
            .as_ref()
            .filter(|spec| stored_routes.as_ref().is_none_or(|stored| stored.spec() != *spec))
            .cloned();
        let routing = Arc::new(routing::MessageRouting::new(
            routes,
            event_log.clone(),
            config.endpoint_factory.as_ref().map(|handle| Arc::clone(&handle.0)),
            &config.hub_name,
        ));
        routing.open_endpoints(routing.table().spec()).await?;
        let consumer_groups = consumer_groups
            .into_iter()
            .map(|name| (twinhub_core::consumer_group::key(&name), name))
            .collect();
        let started = twinhub_core::Timestamp::now();
        // In a cluster, a device shown connected may be connected to another node: left as it is.
        let alone = store.cluster().is_none();
        let mut registry: Registry = records
            .into_iter()
            .map(|record| {
                let record = if alone {
                    without_stale_connection(record, started)
                } else {
                    record
                };
                (record.identity.device_id.clone(), Arc::new(record))
            })
            .collect();
        let c2d = cloud_to_device::CloudToDeviceState::restore(c2d_messages, &feedback_records, |id| {
            registry.contains_key(id)
        });
        // `cloudToDeviceMessageCount` is the queue's depth, which the store keeps with the queue.
        for (device_id, depth) in c2d.depths() {
            let counted = registry
                .get(device_id)
                .and_then(|record| cloud_to_device::with_message_count(record, depth));
            if let Some(record) = counted {
                registry.insert(device_id.clone(), Arc::new(record));
            }
        }
        let feedback = Arc::new(FeedbackQueue::restore(feedback_records));
        let snapshot = Arc::new(ArcSwap::from_pointee(Snapshot {
            devices: registry,
            indexes: Default::default(),
            module_indexes: Default::default(),
            consumer_groups,
            modules,
            configurations,
            jobs,
            device_jobs,
        }));
        let (writes, queue) = mpsc::channel(config.write_queue_operations_max);
        let changes = Arc::new(change_stream::ChangeStream::default());
        let (events, _) = broadcast::channel(events::EVENT_QUEUE_MAX);
        let router = Arc::new(DeviceRouter::default());
        tokio::spawn(device_router::route_events(events.subscribe(), Arc::clone(&router)));
        let follower = follow::Follower::new(Arc::clone(&store), loaded_seq);
        if let (Some(bus), Some(listening)) = (&bus, router.watch_method_listeners()) {
            tokio::spawn(remote_methods::serve(Arc::clone(bus), Arc::clone(&router), listening));
        }
        if let (Some(follower), Some(cluster)) = (&follower, store.cluster()) {
            tokio::spawn(follow::follow_commits(
                cluster.commit_notifications(),
                Arc::clone(&follower.applied),
                Arc::clone(&follower.catch_up_failures),
                writes.downgrade(),
            ));
        }
        let (sessions_elsewhere, _) = broadcast::channel(SESSIONS_ELSEWHERE_QUEUE_MAX);
        let instance = {
            use std::hash::{BuildHasher, Hasher};
            std::collections::hash_map::RandomState::new().build_hasher().finish()
        };
        if let Some(bus) = &bus {
            tokio::spawn(takeover::listen(Arc::clone(bus), instance, sessions_elsewhere.clone()));
        }
        // In a cluster: presence leases, so that a dead node's devices do not stay Connected.
        let holds = if store.cluster().is_some() {
            let (holds, changes) = mpsc::unbounded_channel();
            tokio::spawn(presence_leases::record_holds(Arc::clone(&store), changes));
            tokio::spawn(presence_leases::keep_lease(Arc::clone(&store), writes.downgrade()));
            Some(holds)
        } else {
            None
        };
        tokio::spawn(writer::run(
            queue,
            Arc::clone(&snapshot),
            Arc::clone(&store),
            events.clone(),
            config.clone(),
            c2d,
            writer::Deliveries {
                router: Arc::clone(&router),
                feedback: Arc::clone(&feedback),
                applied: follower.as_ref().map(|follower| Arc::clone(&follower.applied)),
                holds,
                sessions_elsewhere: sessions_elsewhere.clone(),
                routing: Arc::clone(&routing),
                hub_messages: Arc::new(twinhub_core::hub_message::HubMessages::new(&config.hub_name)),
                changes: Arc::clone(&changes),
            },
        ));
        tokio::spawn(sweep_cloud_to_device(writes.downgrade()));
        let hub = Arc::new(Hub {
            snapshot,
            stored_sessions: std::sync::Mutex::new(stored_sessions),
            sessions_elsewhere,
            instance,
            store,
            writes,
            events,
            event_log,
            routing,
            router,
            feedback,
            follower,
            bus,
            job_runner_wake: Arc::new(tokio::sync::Notify::new()),
            changes,
            config,
        });
        tokio::spawn(job_runner::run(Arc::downgrade(&hub), Arc::clone(&hub.job_runner_wake)));
        tokio::spawn(configuration_applier::run(Arc::downgrade(&hub)));
        if let Some(spec) = store_routes {
            hub.edit_routing(routing::RoutingEdit::Replace(spec)).await?;
        }
        Ok(hub)
    }

    /// Changes the message routes (stored, and in force on every node once committed). The endpoints the
    /// new routes name are opened first, so none is named before it can take messages.
    pub async fn edit_routing(&self, edit: routing::RoutingEdit) -> Result<(), HubError> {
        let would_be = edit.clone().apply(self.routing.table().spec())?;
        self.routing.open_endpoints(would_be.spec()).await?;
        writer::submit(&self.writes, WriteOp::EditRouting(edit))
            .await
            .map(|_| ())
    }

    /// Where `event` from `device_id` would go now: the routes that take it, and whether it reaches the
    /// built-in endpoint (`twinhub route test`). The device's twin is read for `$twin` conditions.
    pub fn test_route(
        &self,
        source: twinhub_core::routing::RoutingSource,
        device_id: &DeviceId,
        event: &DeviceEvent,
    ) -> routing::Destinations {
        let record = self.snapshot.load().devices.get(device_id).cloned();
        let origin = EventOrigin {
            device_id: device_id.clone(),
            module_id: None,
            generation_id: record
                .as_ref()
                .map(|record| record.identity.generation_id.clone())
                .unwrap_or_default(),
        };
        let message = twinhub_query::routing::RoutedMessage::new(
            event,
            &origin,
            twinhub_core::Timestamp::now(),
            record.as_deref(),
        );
        self.routing.table().destinations(source, &message)
    }

    /// Returns once this node's snapshot holds every write acknowledged before the call, on any node of
    /// the cluster (read-your-writes across nodes). At once on a hub alone. Costs one round trip to the
    /// store, shared by every reader that asks meanwhile; the snapshot itself is not waited for unless
    /// it is behind.
    pub async fn caught_up(&self) -> Result<(), HubError> {
        match &self.follower {
            Some(follower) => follower.caught_up(&self.writes).await,
            None => Ok(()),
        }
    }

    /// Whether this hub is one node of a cluster (its store shared with other nodes).
    pub fn is_clustered(&self) -> bool {
        self.follower.is_some()
    }

    /// Before a read: every write acknowledged before this call, on any node, is visible after it. When
    /// the store cannot be asked (PostgreSQL down), the read goes on from this node's view, and the log
    /// says it may be behind.
    pub async fn read_barrier(&self) {
        if let Err(error) = self.caught_up().await {
            if let Some(follower) = &self.follower {
                follower
                    .reads_from_unchecked_view
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
            tracing::warn!(%error, "serving a read from this node's view, which may be behind the cluster");
        }
    }

    /// In a cluster: how far this node's view is from the cluster's (for its metrics); `None` alone.
    pub fn cluster_view(&self) -> Option<ClusterView> {
        self.follower.as_ref().map(follow::Follower::view)
    }

    /// [`Hub::device`], first [`Hub::caught_up`] when the device is not (yet) known here: a device
    /// created through another node is found at once.
    pub async fn device_anywhere(&self, id: &DeviceId) -> Result<Arc<DeviceRecord>, HubError> {
        match self.device(id) {
            Err(HubError::DeviceNotFound(_)) if self.follower.is_some() => {
                self.caught_up().await?;
                self.device(id)
            }
            found => found,
        }
    }

    /// The device-to-cloud event log, for the Event Hubs endpoint.
    pub fn event_log(&self) -> Option<&Arc<EventLog>> {
        self.event_log.as_ref()
    }

    /// A device's (or module's) telemetry: answers once the event is durable, stamped with who sent it.
    pub async fn send_event(
        &self,
        device_id: &DeviceId,
        module_id: Option<&str>,
        event: DeviceEvent,
    ) -> Result<(), HubError> {
        self.send_events(device_id, module_id, vec![event]).await
    }

    /// Several events of one device at once (an HTTPS batch), routed: durable together in every endpoint
    /// that takes them, contiguous in their partition, or none stored.
    pub async fn send_events(
        &self,
        device_id: &DeviceId,
        module_id: Option<&str>,
        events: Vec<DeviceEvent>,
    ) -> Result<(), HubError> {
        let record = self.device(device_id)?;
        let origin = EventOrigin {
            device_id: device_id.clone(),
            module_id: module_id.map(str::to_owned),
            generation_id: record.identity.generation_id.clone(),
        };
        // Kept for the change stream only while someone reads it.
        let watched = self.changes.is_watched().then(|| events.clone());
        self.routing
            .route_device_events(origin, events, || Some(record))
            .await?;
        if let Some(events) = watched {
            self.changes.publish_telemetry(device_id, module_id, &events);
        }
        Ok(())
    }

    /// The live change stream for back ends: twin changes, deletions, telemetry.
    pub fn change_stream(&self) -> &change_stream::ChangeStream {
        &self.changes
    }

    /// Message routing: the routes in force, and what was dropped.
    pub fn routing(&self) -> &routing::MessageRouting {
        &self.routing
    }

    /// Where device connections register to receive desired notifications and method requests.
    pub fn device_router(&self) -> &Arc<DeviceRouter> {
        &self.router
    }

    /// A direct method on a device (or module): its answer, `DeviceNotFound`, `DeviceNotOnline` once the
    /// call's connect timeout passed, or `MethodTimeout` once its response timeout passed.
    pub async fn invoke_method(
        &self,
        endpoint: &Endpoint,
        call: twinhub_core::method::MethodCall,
    ) -> Result<twinhub_core::method::MethodAnswer, HubError> {
        self.device_anywhere(&endpoint.device_id).await?;
        match &self.bus {
            Some(bus) => remote_methods::call(&**bus, &self.router, endpoint, call).await,
            None => self.router.call(endpoint, call).await,
        }
    }

    /// Queues a cloud-to-device message for a device; answers once it is durable. `DeviceNotFound`, or
    /// the queue's refusals (full, too large, an expiry out of range).
    pub async fn send_cloud_to_device(
        &self,
        device_id: DeviceId,
        message: twinhub_core::c2d::OutgoingMessage,
    ) -> Result<(), HubError> {
        self.cloud_to_device(device_id, CloudToDeviceOp::Send(Box::new(message)))
            .await
            .map(|_| ())
    }

    /// The device's next message, locked for it (its delivery counted, durably), or `None` when the
    /// queue has nothing to give now.
    pub async fn receive_cloud_to_device(
        &self,
        device_id: DeviceId,
    ) -> Result<Option<Box<twinhub_core::c2d::QueuedMessage>>, HubError> {
        let lock_token = twinhub_core::c2d::new_lock_token();
        match self
            .cloud_to_device(device_id, CloudToDeviceOp::Receive { lock_token })
            .await?
        {
            CloudToDeviceOutcome::Received(message) => Ok(message),
            _ => Err(HubError::Internal("the writer answered a receive with something else")),
        }
    }

    /// Completes, rejects or abandons the message locked with `lock_token`; `LockLost` when no message of
    /// the device is (still) locked with it.
    pub async fn settle_cloud_to_device(
        &self,
        device_id: DeviceId,
        lock_token: String,
        settlement: twinhub_core::c2d::Settlement,
    ) -> Result<(), HubError> {
        self.cloud_to_device(device_id, CloudToDeviceOp::Settle { lock_token, settlement })
            .await
            .map(|_| ())
    }

    /// Empties a device's queue; returns how many messages it held.
    pub async fn purge_cloud_to_device(&self, device_id: DeviceId) -> Result<usize, HubError> {
        match self.cloud_to_device(device_id, CloudToDeviceOp::Purge).await? {
            CloudToDeviceOutcome::Purged(count) => Ok(count),
            _ => Err(HubError::Internal("the writer answered a purge with something else")),
        }
    }

    async fn cloud_to_device(
        &self,
        device_id: DeviceId,
        op: CloudToDeviceOp,
    ) -> Result<CloudToDeviceOutcome, HubError> {
        match self.write(WriteOp::CloudToDevice { device_id, op }).await? {
            WriteOutcome::CloudToDevice(outcome) => Ok(outcome),
            _ => Err(HubError::Internal(
                "the writer answered a cloud-to-device change with something else",
            )),
        }
    }

    /// Feedback records waiting for back ends.
    pub fn feedback(&self) -> &Arc<FeedbackQueue> {
        &self.feedback
    }

    /// A back end received these feedback records (taken from [`Hub::feedback`]): they leave the store.
    pub async fn feedback_received(&self, numbers: Vec<u64>) -> Result<(), HubError> {
        if numbers.is_empty() {
            return Ok(());
        }
        self.write(WriteOp::FeedbackReceived(numbers)).await.map(|_| ())
    }

    pub fn rules(&self) -> &TwinRules {
        &self.config.rules
    }

    /// The current registry: consistent, sorted by id, never changing under the caller.
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.snapshot.load_full()
    }

    pub fn device(&self, id: &DeviceId) -> Result<Arc<DeviceRecord>, HubError> {
        self.snapshot
            .load()
            .devices
            .get(id)
            .cloned()
            .ok_or_else(|| HubError::DeviceNotFound(id.clone()))
    }

    /// Up to `top` devices in id order.
    pub fn devices(&self, top: usize) -> Vec<Arc<DeviceRecord>> {
        self.snapshot.load().devices.values().take(top).cloned().collect()
    }

    pub fn statistics(&self) -> RegistryStatistics {
        let snapshot = self.snapshot.load();
        let registry = &snapshot.devices;
        let enabled = registry
            .values()
            .filter(|record| record.identity.status == DeviceStatus::Enabled)
            .count();
        RegistryStatistics {
            total: registry.len(),
            enabled,
            disabled: registry.len() - enabled,
        }
    }

    /// Devices with a live MQTT or AMQP connection.
    pub fn connected_devices(&self) -> usize {
        self.snapshot
            .load()
            .devices
            .values()
            .filter(|record| record.presence.connection_state == twinhub_core::ConnectionState::Connected)
            .count()
    }

    /// Notifications of what writes did, for transports (desired notifications) and, later, change streams.
    pub fn subscribe(&self) -> broadcast::Receiver<HubEvent> {
        self.events.subscribe()
    }

    pub(crate) async fn write(&self, op: WriteOp) -> Result<WriteOutcome, HubError> {
        writer::submit(&self.writes, op).await
    }

    /// `PUT /devices/{id}`: create (no `If-Match`), or replace the identity (`If-Match` etag or `*`).
    pub async fn put_device(&self, draft: DeviceDraft, if_match: IfMatch) -> Result<Arc<DeviceRecord>, HubError> {
        self.write(WriteOp::PutDevice { draft, if_match }).await?.record()
    }

    pub async fn delete_device(&self, id: DeviceId, if_match: IfMatch) -> Result<(), HubError> {
        self.write(WriteOp::DeleteDevice { id, if_match }).await.map(|_| ())
    }

    pub async fn patch_twin(
        &self,
        id: DeviceId,
        patch: TwinPatch,
        if_match: IfMatch,
    ) -> Result<Arc<DeviceRecord>, HubError> {
        self.write(WriteOp::PatchTwin { id, patch, if_match }).await?.record()
    }

    pub async fn replace_twin(
        &self,
        id: DeviceId,
        replacement: TwinReplacement,
        if_match: IfMatch,
    ) -> Result<Arc<DeviceRecord>, HubError> {
        self.write(WriteOp::ReplaceTwin {
            id,
            replacement,
            if_match,
        })
        .await?
        .record()
    }

    /// A device's own reported-properties patch.
    pub async fn patch_reported(&self, id: DeviceId, patch: ReportedPatch) -> Result<Arc<DeviceRecord>, HubError> {
        self.write(WriteOp::PatchReported { id, patch }).await?.record()
    }

    /// A device connection was accepted (MQTT, AMQP): the twin shows `Connected` while the device has one.
    /// Fails with `DeviceNotFound` when the device is gone.
    pub async fn device_connected(&self, id: DeviceId) -> Result<Arc<DeviceRecord>, HubError> {
        self.presence(id, PresenceEvent::Connected).await?.record()
    }

    /// A device connection closed; with the last one, the twin shows `Disconnected`.
    pub async fn device_disconnected(&self, id: DeviceId) -> Result<(), HubError> {
        self.presence(id, PresenceEvent::Disconnected).await.map(|_| ())
    }

    /// The device sent or received something: `lastActivityTime`, to [`ACTIVITY_RESOLUTION`].
    pub async fn device_active(&self, id: DeviceId) -> Result<(), HubError> {
        self.presence(id, PresenceEvent::Active).await.map(|_| ())
    }

    async fn presence(&self, id: DeviceId, event: PresenceEvent) -> Result<WriteOutcome, HubError> {
        self.write(WriteOp::Presence { id, event }).await
    }

    /// The persistent sessions the store held at start (once: later calls get none).
    pub fn take_stored_sessions(&self) -> Vec<SessionRecord> {
        std::mem::take(
            &mut *self
                .stored_sessions
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner()),
        )
    }

    /// In a cluster: the clients other nodes take from now on (their device connected there): a
    /// transport closes its older connection of the client and drops its copy of the session
    /// (`takeover.rs`).
    pub fn sessions_taken_elsewhere(&self) -> broadcast::Receiver<takeover::TakenElsewhere> {
        self.sessions_elsewhere.subscribe()
    }

    /// In a cluster: tells the other nodes that `client_id` connected here at `at`, so that they close
    /// its older connections. Nothing alone.
    pub fn connection_taken(&self, client_id: &str, at: twinhub_core::Timestamp) {
        if let Some(bus) = &self.bus {
            // Off the connection's path: a CONNECT never waits for the bus.
            let (bus, instance, client_id) = (Arc::clone(bus), self.instance, client_id.to_owned());
            tokio::spawn(async move { takeover::announce(&*bus, instance, &client_id, at).await });
        }
    }

    /// In a cluster: the persistent session the store holds for `client_id` (a device whose session was
    /// on another node). `None` alone: the transport's own sessions are all there is.
    pub async fn stored_session(&self, client_id: &str) -> Result<Option<SessionRecord>, HubError> {
        match self.store.cluster() {
            Some(cluster) => cluster.load_session(client_id).await.map_err(HubError::Store),
            None => Ok(None),
        }
    }

    /// Makes a device's session durable (its subscriptions), or forgets it (`None`). Returns once durable.
    pub async fn store_session(&self, client_id: String, session: Option<SessionRecord>) -> Result<(), HubError> {
        self.write(WriteOp::Session { client_id, session }).await.map(|_| ())
    }

    /// The Event Hubs-compatible endpoint's consumer groups: `$Default`, then the created ones by name.
    pub fn consumer_groups(&self) -> Vec<String> {
        self.consumer_groups_of(None)
    }

    /// The consumer groups of the built-in endpoint (`None`) or of an event hub routes fill.
    pub fn consumer_groups_of(&self, event_hub: Option<&str>) -> Vec<String> {
        let snapshot = self.snapshot.load();
        let prefix = event_hub.map(|event_hub| format!("{}/", event_hub.to_ascii_lowercase()));
        let own = snapshot.consumer_groups.values().filter_map(|stored| match &prefix {
            Some(prefix) => stored.strip_prefix(prefix.as_str()).map(str::to_owned),
            None => (!stored.contains('/')).then(|| stored.clone()),
        });
        std::iter::once(twinhub_core::consumer_group::DEFAULT.to_owned())
            .chain(own)
            .collect()
    }

    /// Whether consumer group `name` of the built-in endpoint exists (names compare without case).
    pub fn has_consumer_group(&self, name: &str) -> bool {
        self.has_consumer_group_in(None, name)
    }

    /// Whether consumer group `name` exists in the built-in endpoint (`None`) or in an event hub.
    pub fn has_consumer_group_in(&self, event_hub: Option<&str>, name: &str) -> bool {
        name.eq_ignore_ascii_case(twinhub_core::consumer_group::DEFAULT)
            || self
                .snapshot
                .load()
                .consumer_groups
                .contains_key(&twinhub_core::consumer_group::key(
                    &twinhub_core::consumer_group::scoped(event_hub, name),
                ))
    }

    /// Creates consumer group `name`, durably; creating one that exists changes nothing.
    pub async fn create_consumer_group(&self, name: &str) -> Result<(), HubError> {
        self.change_consumer_group(None, name, true).await
    }

    /// Deletes consumer group `name`, durably. `$Default` cannot be deleted.
    pub async fn delete_consumer_group(&self, name: &str) -> Result<(), HubError> {
        self.change_consumer_group(None, name, false).await
    }

    /// Creates (`create`) or deletes consumer group `name` of the built-in endpoint (`None`) or of an
    /// event hub routes fill, durably.
    pub async fn change_consumer_group(
        &self,
        event_hub: Option<&str>,
        name: &str,
        create: bool,
    ) -> Result<(), HubError> {
        twinhub_core::consumer_group::check_name(name)?;
        if let Some(event_hub) = event_hub {
            if self.routing.event_hub(event_hub).is_none() {
                return Err(routing::RoutingError::EventHubNotFound(event_hub.to_owned()).into());
            }
        }
        self.write(WriteOp::ConsumerGroup {
            name: twinhub_core::consumer_group::scoped(event_hub, name),
            create,
        })
        .await
        .map(|_| ())
    }

    /// Bulk create/update/delete, at most [`BULK_DEVICES_MAX`], committed together.
    pub async fn bulk(&self, operations: Vec<BulkOperation>) -> Result<BulkOutcome, HubError> {
        bulk::check_request(&operations)?;
        match self.write(WriteOp::Bulk(operations)).await? {
            WriteOutcome::Bulk(outcome) => Ok(outcome),
            _ => Err(HubError::Internal(
                "the writer answered a bulk request with something else",
            )),
        }
    }
}

/// Session changes from other nodes a transport may fall behind on before it misses some (it then reads
/// the session afresh at the device's next connection anyway).
const SESSIONS_ELSEWHERE_QUEUE_MAX: usize = 4096;

/// How often due cloud-to-device messages expire and timed-out locks are released, when nothing else
/// touches their queue first.
const CLOUD_TO_DEVICE_SWEEP: std::time::Duration = std::time::Duration::from_secs(1);

/// Sweeps the cloud-to-device queues until the hub is gone.
async fn sweep_cloud_to_device(writes: mpsc::WeakSender<WriteCommand>) {
    let mut ticker = tokio::time::interval(CLOUD_TO_DEVICE_SWEEP);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        let Some(writes) = writes.upgrade() else { return };
        if let Err(HubError::ShuttingDown) = writer::submit(&writes, WriteOp::CloudToDeviceSweep).await {
            return;
        }
    }
}

/// No connection survives a restart: a record stored while its device was connected is loaded as
/// disconnected since the start (in memory; the next write of the record stores it).
fn without_stale_connection(mut record: DeviceRecord, started: twinhub_core::Timestamp) -> DeviceRecord {
    if record.presence.connection_state == twinhub_core::ConnectionState::Connected {
        record.presence.connection_state = twinhub_core::ConnectionState::Disconnected;
        record.presence.connection_state_updated = Some(started);
    }
    record
}
