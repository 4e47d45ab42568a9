//! The single writer: owns the next registry snapshot, applies operations in order, commits a batch with
//! one fsync, then publishes and acknowledges. Nothing else changes a record.

use crate::announce::TwinOwner;
use crate::bulk::{self, BulkOperation, BulkOutcome};
use crate::cloud_to_device::{CloudToDeviceOp, CloudToDeviceOutcome, CloudToDeviceState};
use crate::{HubConfig, HubError, HubEvent, Registry, Snapshot};
use arc_swap::ArcSwap;
use std::sync::Arc;
use tokio::sync::{broadcast, mpsc, oneshot};
use twinhub_core::device_scope::ScopeHolder;
use twinhub_core::etag::IfMatch;
use twinhub_core::hub_message::{HubMessage, HubMessages};
use twinhub_core::json::DeviceDraft;
use twinhub_core::record::Presence;
use twinhub_core::routing::SourceSet;
use twinhub_core::twin::{ReportedPatch, TwinPatch, TwinReplacement};
use twinhub_core::{DeviceId, DeviceRecord, Timestamp, Twin};
use twinhub_store::{Holder, Store, StoreWrite};

pub(crate) enum WriteOp {
    PutDevice {
        draft: DeviceDraft,
        if_match: IfMatch,
    },
    DeleteDevice {
        id: DeviceId,
        if_match: IfMatch,
    },
    PatchTwin {
        id: DeviceId,
        patch: TwinPatch,
        if_match: IfMatch,
    },
    ReplaceTwin {
        id: DeviceId,
        replacement: TwinReplacement,
        if_match: IfMatch,
    },
    PatchReported {
        id: DeviceId,
        patch: ReportedPatch,
    },
    Bulk(Vec<BulkOperation>),
    /// A device connection opened, closed or showed activity (MQTT, AMQP).
    Presence {
        id: DeviceId,
        event: PresenceEvent,
    },
    /// Store (Some) or forget (None) a device's persistent session, by client id.
    Session {
        client_id: String,
        session: Option<twinhub_core::session::SessionRecord>,
    },
    /// Create (or, `create: false`, delete) a consumer group of the Event Hubs-compatible endpoint.
    ConsumerGroup {
        name: String,
        create: bool,
    },
    /// Start indexing a path (built over the batch's final registry, then kept up to date).
    /// Index a path of the device twins (`devices`) or of the module twins (`devices.modules`).
    AddIndex(twinhub_query::ast::Collection, twinhub_query::document::FieldPath),
    /// A change to a device's cloud-to-device queue.
    CloudToDevice {
        device_id: DeviceId,
        op: CloudToDeviceOp,
    },
    /// Expire messages and time out locks that are due, in every queue.
    CloudToDeviceSweep,
    /// Back ends received these feedback records: they leave the store.
    FeedbackReceived(Vec<u64>),
    /// In a cluster: apply every commit other nodes made so far (`follow.rs`). Writes nothing.
    CatchUp,
    /// In a cluster: a node's lease lapsed; the devices and modules it held are Disconnected where their
    /// `connectionStateUpdatedTime` is still the stamp it gave them (`presence_leases.rs`).
    ReleaseHolds(Vec<(Holder, Timestamp)>),
    /// In a cluster: this node's lease had lapsed, so other nodes may have marked its devices and
    /// modules Disconnected: every one it holds is stamped Connected anew.
    ReassertHolds,
    /// A change of the message routes, applied to the routes in force and stored.
    EditRouting(crate::routing::RoutingEdit),
    /// A change to a module identity or module twin.
    Module(crate::modules::ModuleOp),
    /// A change to a scheduled job or to a device's step of one.
    Job(crate::jobs::JobOp),
    /// A change to the automatic device configurations, or a twin given one's content.
    Configuration(crate::configurations::ConfigurationOp),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PresenceEvent {
    Connected,
    Disconnected,
    Active,
}

/// `lastActivityTime` is kept to this resolution: activity within it of the last recorded one writes nothing,
/// so a busy device does not turn every telemetry message or twin read into a durable write.
/// A commit slower than this is logged: it is what every write of its batch waited for.
const SLOW_COMMIT: std::time::Duration = std::time::Duration::from_millis(20);

pub const ACTIVITY_RESOLUTION: std::time::Duration = std::time::Duration::from_secs(60);

pub(crate) enum WriteOutcome {
    Record(Arc<DeviceRecord>),
    Deleted,
    Bulk(BulkOutcome),
    CloudToDevice(CloudToDeviceOutcome),
    Module(Arc<twinhub_core::module::ModuleRecord>),
    Job(Arc<twinhub_core::job::JobRecord>),
    Configuration(Arc<crate::configurations::Compiled>),
    Done,
}

impl WriteOutcome {
    pub(crate) fn record(self) -> Result<Arc<DeviceRecord>, HubError> {
        match self {
            WriteOutcome::Record(record) => Ok(record),
            _ => Err(HubError::Internal("the writer answered with no record")),
        }
    }

    pub(crate) fn module(self) -> Result<Arc<twinhub_core::module::ModuleRecord>, HubError> {
        match self {
            WriteOutcome::Module(module) => Ok(module),
            _ => Err(HubError::Internal("the writer answered with no module")),
        }
    }
}

pub(crate) struct WriteCommand {
    pub(crate) op: WriteOp,
    pub(crate) reply: oneshot::Sender<Result<WriteOutcome, HubError>>,
}

/// Queues `op` for the writer and waits until it is committed (or refused). `ShuttingDown` when the
/// writer is gone.
pub(crate) async fn submit(writes: &mpsc::Sender<WriteCommand>, op: WriteOp) -> Result<WriteOutcome, HubError> {
    let (reply, answer) = oneshot::channel();
    writes
        .send(WriteCommand { op, reply })
        .await
        .map_err(|_| HubError::ShuttingDown)?;
    answer.await.map_err(|_| HubError::ShuttingDown)?
}

/// The batch being built: the registry as it will be after the commit, the store writes, the events.
pub(crate) struct Batch<'a> {
    pub(crate) registry: Registry,
    consumer_groups: imbl::OrdMap<String, String>,
    /// Module identities as the batch leaves them.
    pub(crate) modules: crate::Modules,
    /// The automatic device configurations as the batch leaves them.
    pub(crate) configurations: crate::configurations::ConfigurationSet,
    /// Scheduled jobs and their devices' steps as the batch leaves them.
    pub(crate) jobs: crate::jobs::Jobs,
    pub(crate) device_jobs: crate::jobs::DeviceJobs,
    pub(crate) writes: Vec<StoreWrite>,
    pub(crate) events: Vec<HubEvent>,
    pub(crate) config: &'a HubConfig,
    /// Ids upserted or deleted, for index maintenance.
    touched: Vec<DeviceId>,
    /// Modules upserted or deleted, for index maintenance.
    pub(crate) touched_modules: Vec<crate::ModuleKey>,
    new_indexes: Vec<(twinhub_query::ast::Collection, twinhub_query::document::FieldPath)>,
    /// Open connections per device and module, across batches (`held.rs`).
    held: &'a mut crate::held::Held,
    /// Every device's cloud-to-device queue, across batches.
    pub(crate) c2d: &'a mut CloudToDeviceState,
    /// Devices that may take a message now (one arrived, or came back): told after the commit.
    pub(crate) c2d_ready: Vec<DeviceId>,
    /// Feedback records the batch made, for back ends once it is committed.
    pub(crate) feedback: Vec<(u64, twinhub_core::c2d::FeedbackRecord)>,
    /// Feedback records a back end received through another node.
    pub(crate) feedback_forgotten: Vec<u64>,
    /// Devices and modules this node began or stopped holding, for its presence lease once committed.
    pub(crate) holds: Vec<twinhub_store::HoldChange>,
    /// Client ids whose persistent session another node wrote (it holds the session now).
    pub(crate) sessions_elsewhere: Vec<String>,
    /// The hub's own messages this batch's writes made (twin changes, lifecycle, connection state),
    /// for routing once committed; built only for the sources some route takes.
    pub(crate) hub_messages: Vec<HubMessage>,
    pub(crate) announcer: Announcer<'a>,
    /// The routes as this batch leaves them, when it changed them (its own edit, or another node's).
    pub(crate) routing: Option<crate::routing::RoutingTable>,
    /// The routes in force when the batch began.
    routing_in_force: Arc<crate::routing::RoutingTable>,
}

/// Makes the hub's own messages of a batch, for the sources routes take.
pub(crate) struct Announcer<'a> {
    pub(crate) messages: &'a HubMessages,
    pub(crate) sources: SourceSet,
}

/// What the writer hands on after each commit, besides the snapshot and the hub events.
pub(crate) struct Deliveries {
    pub(crate) router: Arc<crate::DeviceRouter>,
    pub(crate) feedback: Arc<crate::FeedbackQueue>,
    /// In a cluster: the last commit of the log the published snapshot includes.
    pub(crate) applied: Option<Arc<std::sync::atomic::AtomicU64>>,
    /// In a cluster: where the devices this node holds are recorded (`presence_leases::record_holds`).
    pub(crate) holds: Option<mpsc::UnboundedSender<Vec<twinhub_store::HoldChange>>>,
    /// Told the client ids whose persistent session another node wrote (`Hub::sessions_taken_elsewhere`).
    pub(crate) sessions_elsewhere: broadcast::Sender<crate::takeover::TakenElsewhere>,
    /// Routes the hub's own messages (twin changes, lifecycle, connection state) to their endpoints.
    pub(crate) routing: Arc<crate::routing::MessageRouting>,
    pub(crate) hub_messages: Arc<HubMessages>,
    /// The live change stream for back ends: told every twin the batch changed, while someone reads.
    pub(crate) changes: Arc<crate::change_stream::ChangeStream>,
}

/// What committing a batch came to.
enum Committed {
    /// Durable (or nothing to make durable); in a cluster, the node is now at this commit.
    Done(Option<u64>),
    Failed(twinhub_store::StoreError),
}

pub(crate) async fn run(
    mut queue: mpsc::Receiver<WriteCommand>,
    snapshot: Arc<ArcSwap<Snapshot>>,
    store: Arc<dyn Store>,
    events: broadcast::Sender<HubEvent>,
    config: HubConfig,
    mut c2d: CloudToDeviceState,
    deliveries: Deliveries,
) {
    let mut commands = Vec::with_capacity(config.commit_batch_operations_max);
    let mut held = crate::held::Held::default();
    // recv_many waits for the first command, then takes whatever else is already queued: group commit
    // without a timer, so a lone write is not delayed and a busy queue fills the batch.
    while queue.recv_many(&mut commands, config.commit_batch_operations_max).await > 0 {
        let previous = snapshot.load_full();
        let routing_in_force = deliveries.routing.table();
        let mut batch = Batch {
            registry: Registry::clone(&previous.devices),
            consumer_groups: previous.consumer_groups.clone(),
            modules: previous.modules.clone(),
            configurations: previous.configurations.clone(),
            jobs: previous.jobs.clone(),
            device_jobs: previous.device_jobs.clone(),
            writes: Vec::with_capacity(commands.len()),
            events: Vec::new(),
            config: &config,
            touched: Vec::new(),
            touched_modules: Vec::new(),
            new_indexes: Vec::new(),
            held: &mut held,
            c2d: &mut c2d,
            c2d_ready: Vec::new(),
            feedback: Vec::new(),
            feedback_forgotten: Vec::new(),
            holds: Vec::new(),
            sessions_elsewhere: Vec::new(),
            hub_messages: Vec::new(),
            announcer: Announcer {
                messages: &deliveries.hub_messages,
                sources: routing_in_force.sources(),
            },
            routing: None,
            routing_in_force,
        };
        batch.c2d.begin_batch();
        let mut replies = Vec::with_capacity(commands.len());
        let started = std::time::Instant::now();
        let committed = match (store.cluster(), &deliveries.applied) {
            (Some(cluster), Some(applied)) => {
                let at = applied.load(std::sync::atomic::Ordering::Acquire);
                commit_in_cluster(cluster, at, &mut batch, &mut commands, &mut replies).await
            }
            _ => {
                for command in commands.drain(..) {
                    let result = batch.apply(command.op);
                    replies.push((command.reply, result));
                }
                if batch.writes.is_empty() {
                    Committed::Done(None)
                } else {
                    match store.commit(std::mem::take(&mut batch.writes)).await {
                        Ok(()) => Committed::Done(None),
                        Err(error) => Committed::Failed(error),
                    }
                }
            }
        };
        let took = started.elapsed();
        if took >= SLOW_COMMIT {
            tracing::warn!(
                operations = replies.len(),
                ?took,
                "slow commit: every write in the batch waited for it"
            );
        }
        let seq = match committed {
            Committed::Done(seq) => seq,
            Committed::Failed(error) => {
                tracing::error!(%error, "commit failed; the batch is refused and the snapshot left as it was");
                batch.c2d.roll_back();
                let message = error.to_string();
                let unavailable = matches!(error, twinhub_store::StoreError::Unavailable(_));
                for (reply, result) in replies {
                    let answer = match result {
                        // Each caller gets the failure in the same kind: "unavailable" is a "try again".
                        Ok(_) if unavailable => Err(HubError::Store(twinhub_store::StoreError::Unavailable(
                            message.clone().into(),
                        ))),
                        Ok(_) => Err(HubError::Store(twinhub_store::StoreError::Write(
                            message.clone().into(),
                        ))),
                        refused => refused,
                    };
                    let _ = reply.send(answer);
                }
                continue;
            }
        };
        let (indexes, module_indexes) = batch.indexes_after(&previous);
        // Queued in commit order before anything is acknowledged; waited for below.
        let hub_messages = deliveries
            .routing
            .enqueue_hub_messages(std::mem::take(&mut batch.hub_messages), &batch.registry, &batch.modules)
            .await;
        if let Some(table) = batch.routing.take() {
            // Another node's change may name endpoints this node has not opened yet (its own were opened
            // before they were submitted): opened here, rarely, before the routes are in force.
            if let Err(error) = deliveries.routing.open_endpoints(table.spec()).await {
                tracing::error!(%error, "an endpoint of the new routes cannot be opened on this node");
            }
            deliveries.routing.replace(table);
        }
        let changed = deliveries.changes.is_watched().then(|| {
            let mut devices = std::mem::take(&mut batch.touched);
            devices.sort_unstable();
            devices.dedup();
            let mut modules = std::mem::take(&mut batch.touched_modules);
            modules.sort_unstable();
            modules.dedup();
            (devices, modules)
        });
        snapshot.store(Arc::new(Snapshot {
            devices: batch.registry,
            indexes,
            module_indexes,
            consumer_groups: batch.consumer_groups,
            modules: batch.modules,
            configurations: batch.configurations,
            jobs: batch.jobs,
            device_jobs: batch.device_jobs,
        }));
        if let Some((devices, modules)) = changed {
            deliveries.changes.publish_changes(&snapshot.load(), &devices, &modules);
        }
        if let (Some(seq), Some(applied)) = (seq, &deliveries.applied) {
            applied.store(seq, std::sync::atomic::Ordering::Release);
        }
        for event in batch.events {
            // No subscriber is fine: nobody is waiting for notifications.
            let _ = events.send(event);
        }
        if let Some(holds) = &deliveries.holds {
            if !batch.holds.is_empty() {
                // The recorder lives as long as the hub.
                let _ = holds.send(batch.holds);
            }
        }
        for client_id in batch.sessions_elsewhere {
            // Nobody listening (no MQTT service): nothing to drop.
            let _ = deliveries
                .sessions_elsewhere
                .send(crate::takeover::TakenElsewhere { client_id, at: None });
        }
        deliveries.feedback.forget(&batch.feedback_forgotten);
        deliveries.feedback.push(batch.feedback);
        for device_id in batch.c2d_ready {
            deliveries.router.cloud_to_device_ready(&device_id);
        }
        let acknowledge = move || {
            for (reply, result) in replies {
                // The caller may have gone away (client disconnected); the write stands regardless.
                let _ = reply.send(result);
            }
        };
        if hub_messages.is_empty() {
            acknowledge();
        } else {
            // A write is acknowledged once the messages it made are in their endpoints too, so a
            // consumer never misses the change behind an answer; the writer goes on meanwhile.
            let routing = Arc::clone(&deliveries.routing);
            tokio::spawn(async move {
                routing.settle(hub_messages).await;
                acknowledge();
            });
        }
    }
}

type Reply = (
    oneshot::Sender<Result<WriteOutcome, HubError>>,
    Result<WriteOutcome, HubError>,
);

/// A batch in a cluster: built on top of every other node's commits, in this node's commit turn. A batch
/// of catch-ups alone reads the log without taking the turn.
async fn commit_in_cluster(
    cluster: &dyn twinhub_store::ClusterStore,
    applied: u64,
    batch: &mut Batch<'_>,
    commands: &mut Vec<WriteCommand>,
    replies: &mut Vec<Reply>,
) -> Committed {
    // Catch-ups, and sweeps with nothing due, write nothing: they follow the log without the turn.
    let now = Timestamp::now();
    let nothing_to_write = |op: &WriteOp| match op {
        WriteOp::CatchUp => true,
        WriteOp::CloudToDeviceSweep => !batch.c2d.any_due(now),
        _ => false,
    };
    if commands.iter().all(|command| nothing_to_write(&command.op)) {
        let mut at = applied;
        loop {
            let commits = match cluster.commits_after(at).await {
                Ok(commits) => commits,
                Err(error) => {
                    replies.extend(
                        commands
                            .drain(..)
                            .map(|command| (command.reply, Ok(WriteOutcome::Done))),
                    );
                    return Committed::Failed(error);
                }
            };
            let Some(last) = commits.last().map(|commit| commit.seq) else {
                break;
            };
            // Fewer than a full read: the log ended there (no second read to learn it).
            let at_the_end = commits.len() < twinhub_store::COMMITS_READ_MAX;
            for commit in commits {
                batch.apply_commit(commit);
            }
            at = last;
            if at_the_end {
                break;
            }
        }
        replies.extend(
            commands
                .drain(..)
                .map(|command| (command.reply, Ok(WriteOutcome::Done))),
        );
        return Committed::Done(Some(at));
    }
    let build = Box::new(|others: Vec<twinhub_store::Commit>| {
        for commit in others {
            batch.apply_commit(commit);
        }
        // Only this node's own events go into its commit: the others' are in theirs.
        let own_events_from = batch.events.len();
        for command in commands.drain(..) {
            let result = batch.apply(command.op);
            replies.push((command.reply, result));
        }
        (
            std::mem::take(&mut batch.writes),
            batch.events[own_events_from..].to_vec(),
        )
    });
    match cluster.commit_in_turn(applied, build).await {
        Ok(seq) => Committed::Done(Some(seq)),
        Err(error) => {
            // Failed before the batch was built (PostgreSQL out of reach): its commands are answered
            // with the failure too, not left for the next batch.
            replies.extend(
                commands
                    .drain(..)
                    .map(|command| (command.reply, Ok(WriteOutcome::Done))),
            );
            Committed::Failed(error)
        }
    }
}

impl Batch<'_> {
    pub(crate) fn apply(&mut self, op: WriteOp) -> Result<WriteOutcome, HubError> {
        let now = Timestamp::now();
        match op {
            WriteOp::PutDevice { draft, if_match } => self.put_device(draft, &if_match, now).map(WriteOutcome::Record),
            WriteOp::DeleteDevice { id, if_match } => {
                self.delete_device(&id, &if_match).map(|()| WriteOutcome::Deleted)
            }
            WriteOp::PatchTwin { id, patch, if_match } => self
                .patch_device_twin(&id, &patch, &if_match, now)
                .map(WriteOutcome::Record),
            WriteOp::ReplaceTwin {
                id,
                replacement,
                if_match,
            } => {
                let current = self.twin_for_write(&id, &if_match)?;
                let (twin, change) = current.twin.replaced(&replacement, now, &self.config.rules)?;
                self.events.push(HubEvent::DesiredChanged {
                    device_id: id.clone(),
                    change,
                });
                let record = self.store_twin(&current, twin);
                self.announce_replacement(TwinOwner::Device(&record), now);
                Ok(WriteOutcome::Record(record))
            }
            WriteOp::PatchReported { id, patch } => {
                let current = self.existing(&id)?;
                let twin = current.twin.with_reported(&patch, now, &self.config.rules)?;
                self.announce_reported(TwinOwner::Device(&current), &twin, &patch, now);
                // A reported patch is device activity: recorded in the same write, at no extra cost.
                let presence = Presence {
                    last_activity: Some(now),
                    ..current.presence.clone()
                };
                let record = DeviceRecord::new(current.identity.clone(), twin, presence);
                Ok(WriteOutcome::Record(self.upsert(Arc::new(record))))
            }
            WriteOp::Presence { id, event } => self.presence(Holder::device(id), event, now),
            WriteOp::Session { client_id, session } => {
                self.writes.push(match session {
                    Some(session) => StoreWrite::UpsertSession(session),
                    None => StoreWrite::DeleteSession(client_id),
                });
                Ok(WriteOutcome::Done)
            }
            WriteOp::Bulk(operations) => Ok(WriteOutcome::Bulk(bulk::apply(self, operations, now))),
            WriteOp::ConsumerGroup { name, create } => {
                let key = twinhub_core::consumer_group::key(&name);
                if create {
                    if !self.consumer_groups.contains_key(&key) {
                        self.consumer_groups.insert(key, name.clone());
                        self.writes.push(StoreWrite::UpsertConsumerGroup(name));
                    }
                } else {
                    if self.consumer_groups.remove(&key).is_none() {
                        return Err(HubError::ConsumerGroupNotFound(name));
                    }
                    self.writes.push(StoreWrite::DeleteConsumerGroup(name));
                }
                Ok(WriteOutcome::Done)
            }
            WriteOp::AddIndex(collection, path) => {
                self.new_indexes.push((collection, path));
                Ok(WriteOutcome::Done)
            }
            WriteOp::CloudToDevice { device_id, op } => self
                .cloud_to_device(device_id, op, now)
                .map(WriteOutcome::CloudToDevice),
            WriteOp::CloudToDeviceSweep => {
                self.cloud_to_device_sweep(now);
                Ok(WriteOutcome::Done)
            }
            WriteOp::FeedbackReceived(numbers) => {
                self.feedback_received(numbers);
                Ok(WriteOutcome::Done)
            }
            // Outside a cluster there is nothing to catch up with.
            WriteOp::CatchUp => Ok(WriteOutcome::Done),
            WriteOp::ReleaseHolds(held) => {
                self.release_holds(held, now);
                Ok(WriteOutcome::Done)
            }
            WriteOp::ReassertHolds => {
                self.reassert_holds(now);
                Ok(WriteOutcome::Done)
            }
            WriteOp::Module(op) => self.apply_module(op, now),
            WriteOp::Job(op) => self.apply_job(op, now),
            WriteOp::Configuration(op) => self.apply_configuration(op, now),
            WriteOp::EditRouting(edit) => {
                let table = match &self.routing {
                    Some(changed) => edit.apply(changed.spec()),
                    None => edit.apply(self.routing_in_force.spec()),
                }?;
                self.writes.push(StoreWrite::PutSetting {
                    name: crate::routing::ROUTING_SETTING.into(),
                    value: table.to_stored()?,
                });
                self.routing = Some(table);
                Ok(WriteOutcome::Done)
            }
        }
    }

    /// A lapsed node's devices and modules: Disconnected, unless someone stamped them since (they moved on).
    fn release_holds(&mut self, held: Vec<(Holder, Timestamp)>, now: Timestamp) {
        for (holder, stamp) in held {
            let Some(current) = self.presence_now(&holder) else {
                continue;
            };
            if let Some(presence) = crate::held::released(&current, stamp, now) {
                let _ = self.show_presence(&holder, presence, now);
            }
        }
    }

    /// Stamps Connected anew every device and module this node holds whose record says otherwise than
    /// this node left it.
    fn reassert_holds(&mut self, now: Timestamp) {
        for holder in self.held.holders() {
            let Some(current) = self.presence_now(&holder) else {
                continue;
            };
            if let Some(presence) = self.held.reassert(&holder, &current, now, &mut self.holds) {
                let _ = self.show_presence(&holder, presence, now);
            }
        }
    }

    /// A connection of a device or module opened, closed or was active.
    pub(crate) fn presence(
        &mut self,
        holder: Holder,
        event: PresenceEvent,
        now: Timestamp,
    ) -> Result<WriteOutcome, HubError> {
        let current = self.presence_now(&holder);
        let next = self.held.event(&holder, event, current.as_ref(), now, &mut self.holds);
        match next {
            Some(presence) => self.show_presence(&holder, presence, now),
            None if event == PresenceEvent::Connected => Err(match holder.module_id {
                None => HubError::DeviceNotFound(holder.device_id),
                Some(module) => HubError::ModuleNotFound {
                    device: holder.device_id,
                    module,
                },
            }),
            None => Ok(WriteOutcome::Done),
        }
    }

    /// The presence the record of a device or module shows; `None` when there is no such record.
    fn presence_now(&self, holder: &Holder) -> Option<Presence> {
        match &holder.module_id {
            None => self
                .registry
                .get(&holder.device_id)
                .map(|record| record.presence.clone()),
            Some(module_id) => self
                .modules
                .get(&(holder.device_id.clone(), module_id.clone()))
                .map(|module| module.record.presence.clone()),
        }
    }

    /// Puts `presence` in the record of a device or module, announcing a change of its connection state;
    /// the record as it is now.
    fn show_presence(&mut self, holder: &Holder, presence: Presence, now: Timestamp) -> Result<WriteOutcome, HubError> {
        let Some(module_id) = &holder.module_id else {
            let current = self.existing(&holder.device_id)?;
            if presence == current.presence {
                return Ok(WriteOutcome::Record(current));
            }
            if presence.connection_state != current.presence.connection_state {
                self.announce_connection(TwinOwner::Device(&current), presence.connection_state, now);
            }
            let record = DeviceRecord::new(current.identity.clone(), current.twin.clone(), presence);
            return Ok(WriteOutcome::Record(self.upsert(Arc::new(record))));
        };
        self.show_module_presence(&holder.device_id, module_id, presence, now)
    }

    /// A back end's patch of a device twin: tags and desired properties.
    pub(crate) fn patch_device_twin(
        &mut self,
        id: &DeviceId,
        patch: &TwinPatch,
        if_match: &IfMatch,
        now: Timestamp,
    ) -> Result<Arc<DeviceRecord>, HubError> {
        let current = self.twin_for_write(id, if_match)?;
        let (twin, change) = current.twin.patched(patch, now, &self.config.rules)?;
        self.announce_patch(TwinOwner::Device(&current), &twin, patch, change.as_ref(), now);
        if let Some(change) = change {
            self.events.push(HubEvent::DesiredChanged {
                device_id: id.clone(),
                change,
            });
        }
        Ok(self.store_twin(&current, twin))
    }

    /// The indexes of device twins and of module twins as of this batch: every touched record's old and
    /// new value followed, new paths built.
    fn indexes_after(
        &mut self,
        previous: &Snapshot,
    ) -> (crate::index::Indexes<DeviceId>, crate::index::Indexes<crate::ModuleKey>) {
        let mut indexes = previous.indexes.clone();
        indexes.follow(&mut self.touched, &previous.devices, &self.registry);
        let mut module_indexes = previous.module_indexes.clone();
        module_indexes.follow(&mut self.touched_modules, &previous.modules, &self.modules);
        for (collection, path) in self.new_indexes.drain(..) {
            match collection {
                twinhub_query::ast::Collection::DeviceModules => {
                    module_indexes.add(path, self.modules.iter().map(|(key, module)| (key.clone(), &**module)))
                }
                _ => indexes.add(path, self.registry.iter().map(|(id, record)| (id.clone(), &**record))),
            }
        }
        (indexes, module_indexes)
    }

    pub(crate) fn existing(&self, id: &DeviceId) -> Result<Arc<DeviceRecord>, HubError> {
        self.registry
            .get(id)
            .cloned()
            .ok_or_else(|| HubError::DeviceNotFound(id.clone()))
    }

    fn twin_for_write(&self, id: &DeviceId, if_match: &IfMatch) -> Result<Arc<DeviceRecord>, HubError> {
        let current = self.existing(id)?;
        let etag = current.twin.etag();
        if !if_match.allows(&etag) {
            return Err(precondition_failed(id, if_match));
        }
        Ok(current)
    }

    pub(crate) fn store_twin(&mut self, current: &DeviceRecord, twin: Twin) -> Arc<DeviceRecord> {
        let record = Arc::new(DeviceRecord::new(
            current.identity.clone(),
            twin,
            current.presence.clone(),
        ));
        self.upsert(record)
    }

    /// A device another node deleted: gone from memory, nothing to store.
    pub(crate) fn remove_in_memory(&mut self, id: &DeviceId) {
        self.touched.push(id.clone());
        self.registry.remove(id);
    }

    /// A consumer group another node created or deleted.
    pub(crate) fn consumer_group_stored(&mut self, name: String, create: bool) {
        let key = twinhub_core::consumer_group::key(&name);
        if create {
            self.consumer_groups.insert(key, name);
        } else {
            self.consumer_groups.remove(&key);
        }
    }

    /// A record changed only in what is not stored with it (`cloudToDeviceMessageCount`), or one another
    /// node stored.
    pub(crate) fn replace_in_memory(&mut self, record: Arc<DeviceRecord>) {
        self.touched.push(record.identity.device_id.clone());
        self.registry.insert(record.identity.device_id.clone(), record);
    }

    pub(crate) fn upsert(&mut self, record: Arc<DeviceRecord>) -> Arc<DeviceRecord> {
        self.registry
            .insert(record.identity.device_id.clone(), Arc::clone(&record));
        self.touched.push(record.identity.device_id.clone());
        self.writes.push(StoreWrite::Upsert(Arc::clone(&record)));
        record
    }

    /// Creates, or replaces the identity of, a device. Ref: service-rest notes §5: no `If-Match` means
    /// create-only (409 when it exists); `*` means unconditional; an etag must match the device etag.
    pub(crate) fn put_device(
        &mut self,
        draft: DeviceDraft,
        if_match: &IfMatch,
        now: Timestamp,
    ) -> Result<Arc<DeviceRecord>, HubError> {
        let id = draft.device_id.clone();
        let existing = self.registry.get(&id).cloned();
        let previous = match (&existing, if_match) {
            (Some(_), IfMatch::Absent) => return Err(HubError::DeviceAlreadyExists(id)),
            (Some(existing), _) if !if_match.allows(&existing.identity.etag()) => {
                return Err(precondition_failed(&id, if_match))
            }
            (None, IfMatch::Etag(_)) => return Err(HubError::DeviceNotFound(id)),
            (existing, _) => existing.as_ref().map(|record| &*record.identity),
        };
        let registry = &self.registry;
        let identity = draft.into_identity(previous, now, |parent| {
            registry.get(parent).map(|record| ScopeHolder {
                iot_edge: record.identity.iot_edge,
                generation_id: &record.identity.generation_id,
                parent_scopes: &record.identity.parent_scopes,
            })
        })?;
        let record = match existing {
            Some(existing) => {
                self.events.push(HubEvent::DeviceUpdated { device_id: id.clone() });
                DeviceRecord::new(identity, existing.twin.clone(), existing.presence.clone())
            }
            None => {
                let record = DeviceRecord::new(identity, Twin::new(now), Presence::default());
                self.announce_lifecycle(TwinOwner::Device(&record), true, now);
                record
            }
        };
        Ok(self.upsert(Arc::new(record)))
    }

    pub(crate) fn delete_device(&mut self, id: &DeviceId, if_match: &IfMatch) -> Result<(), HubError> {
        let existing = self.existing(id)?;
        if !if_match.allows(&existing.identity.etag()) {
            return Err(precondition_failed(id, if_match));
        }
        self.announce_lifecycle(TwinOwner::Device(&existing), false, Timestamp::now());
        self.delete_modules_of(id);
        self.registry.remove(id);
        self.touched.push(id.clone());
        self.writes.push(StoreWrite::Delete(id.clone()));
        self.cloud_to_device_forget(id);
        self.events.push(HubEvent::DeviceDeleted { device_id: id.clone() });
        Ok(())
    }
}

fn precondition_failed(id: &DeviceId, if_match: &IfMatch) -> HubError {
    let given = match if_match {
        IfMatch::Etag(etag) => etag.clone(),
        _ => String::new(),
    };
    HubError::PreconditionFailed {
        device: id.clone(),
        given,
    }
}
