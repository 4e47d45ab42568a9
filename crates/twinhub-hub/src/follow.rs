//! Following the cluster: how a node applies what other nodes committed (the commit log of a
//! [`ClusterStore`]) and how it answers reads with every write acknowledged anywhere.
//!
//! Other nodes' commits reach the snapshot only through this node's writer, in log order: inside each of
//! its commit turns (before its own batch is built on top), and, when it has nothing to write, through a
//! [`WriteOp::CatchUp`] that the commit listener or a reader asks for. Their events (desired changes
//! with their exact patches, identity changes, deletes) are published as if raised here, so transports
//! notify their devices with nothing else to do.

use crate::writer::{Batch, WriteCommand, WriteOp};
use crate::HubError;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;
use tokio::sync::{mpsc, watch, Mutex};
use twinhub_store::{ClusterStore, Commit, Store, StoreWrite};

impl Batch<'_> {
    /// Applies another node's commit: its writes to the registry and queues (no store writes: they are
    /// stored), its events to be published with this batch's.
    pub(crate) fn apply_commit(&mut self, commit: Commit) {
        for write in commit.writes {
            match write {
                StoreWrite::Upsert(record) => {
                    let device_id = record.identity.device_id.clone();
                    // `cloudToDeviceMessageCount` is this node's queue depth, as for its own writes.
                    let depth = self.c2d.depth(&device_id);
                    let record = crate::cloud_to_device::with_message_count(&record, depth)
                        .map(Arc::new)
                        .unwrap_or(record);
                    self.replace_in_memory(record);
                }
                StoreWrite::Delete(device_id) => {
                    self.remove_in_memory(&device_id);
                    self.cloud_to_device_dropped(&device_id);
                }
                // Another node holds the session now: this node's copy (and its connection, if it still
                // has one) gives way; the device's next connection here reads the session afresh.
                StoreWrite::UpsertSession(session) => self.sessions_elsewhere.push(session.client_id),
                StoreWrite::DeleteSession(client_id) => self.sessions_elsewhere.push(client_id),
                StoreWrite::UpsertConsumerGroup(name) => self.consumer_group_stored(name, true),
                StoreWrite::DeleteConsumerGroup(name) => self.consumer_group_stored(name, false),
                StoreWrite::UpsertCloudToDevice { device_id, message } => {
                    self.cloud_to_device_stored(&device_id, crate::cloud_to_device::StoredQueueChange::Upsert(message))
                }
                StoreWrite::DeleteCloudToDevice {
                    device_id,
                    sequence_number,
                } => self.cloud_to_device_stored(
                    &device_id,
                    crate::cloud_to_device::StoredQueueChange::Delete(sequence_number),
                ),
                StoreWrite::UpsertFeedback {
                    sequence_number,
                    record,
                } => self.feedback_stored(sequence_number, record),
                StoreWrite::DeleteFeedback(sequence_number) => self.feedback_forgotten.push(sequence_number),
                StoreWrite::PutSetting { name, value } if name == crate::routing::ROUTING_SETTING => {
                    match crate::routing::RoutingTable::from_stored(&value) {
                        Ok(table) => self.routing = Some(table),
                        Err(error) => tracing::error!(%error, "another node stored routes this node cannot use"),
                    }
                }
                StoreWrite::PutSetting { name, value } if name == crate::configurations::CONFIGURATIONS_SETTING => {
                    match crate::configurations::ConfigurationSet::from_stored(&value) {
                        Ok(set) => self.configurations = set,
                        Err(error) => {
                            tracing::error!(%error, "another node stored configurations this node cannot use")
                        }
                    }
                }
                StoreWrite::PutSetting { .. } => {}
                module @ (StoreWrite::UpsertModule(_) | StoreWrite::DeleteModule { .. }) => self.module_stored(module),
                job @ (StoreWrite::UpsertJob(_) | StoreWrite::UpsertDeviceJob(_)) => self.job_stored(job),
            }
        }
        self.events.extend(commit.events);
    }
}

/// What a node knows of the cluster's commits: how far its snapshot has applied the log, and the last
/// commit number it asked PostgreSQL for (one question shared by every reader that arrives meanwhile).
pub(crate) struct Follower {
    store: Arc<dyn Store>,
    /// The last commit the published snapshot includes.
    pub(crate) applied: Arc<AtomicU64>,
    last_probe: Mutex<Option<Probe>>,
    /// Reads served from this node's view because the store could not say how far the cluster is.
    pub(crate) reads_from_unchecked_view: AtomicU64,
    /// Catch-ups that failed: other nodes' commits this node could not apply when told of them.
    pub(crate) catch_up_failures: Arc<AtomicU64>,
}

/// How far a node's view is from the cluster's, for its metrics.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ClusterView {
    /// The last commit this node's view includes.
    pub applied_commit: u64,
    /// The last commit this node heard of (notifications and polls of the store).
    pub heard_commit: u64,
    /// Reads and queries served from this node's view while the store could not say whether it was
    /// behind (each also logged).
    pub reads_from_unchecked_view: u64,
    /// Times this node could not apply other nodes' commits when told of them (each also logged).
    pub catch_up_failures: u64,
}

#[derive(Clone, Copy)]
struct Probe {
    started: Instant,
    seq: u64,
}

impl Follower {
    pub(crate) fn new(store: Arc<dyn Store>, applied: u64) -> Option<Follower> {
        store.cluster()?;
        Some(Follower {
            store,
            applied: Arc::new(AtomicU64::new(applied)),
            last_probe: Mutex::new(None),
            reads_from_unchecked_view: AtomicU64::new(0),
            catch_up_failures: Arc::new(AtomicU64::new(0)),
        })
    }

    /// Where this node's view stands.
    pub(crate) fn view(&self) -> ClusterView {
        let heard = self
            .store
            .cluster()
            .map_or(0, |cluster| *cluster.commit_notifications().borrow());
        let applied = self.applied.load(Ordering::Acquire);
        ClusterView {
            applied_commit: applied,
            heard_commit: heard.max(applied),
            reads_from_unchecked_view: self.reads_from_unchecked_view.load(Ordering::Relaxed),
            catch_up_failures: self.catch_up_failures.load(Ordering::Relaxed),
        }
    }

    fn cluster(&self) -> Result<&dyn ClusterStore, HubError> {
        self.store
            .cluster()
            .ok_or(HubError::Internal("a follower over a store that is not shared"))
    }

    /// The last commit made anywhere, as read by a question that started after `asked`: readers that
    /// arrive while one question is out wait for it and share the next.
    async fn committed_since(&self, asked: Instant) -> Result<u64, HubError> {
        let mut last = self.last_probe.lock().await;
        if let Some(probe) = *last {
            if probe.started >= asked {
                return Ok(probe.seq);
            }
        }
        let started = Instant::now();
        let seq = self.cluster()?.committed_seq().await.map_err(HubError::Store)?;
        *last = Some(Probe { started, seq });
        Ok(seq)
    }

    /// Returns once the snapshot includes every commit acknowledged (on any node) before this call.
    pub(crate) async fn caught_up(&self, writes: &mpsc::Sender<WriteCommand>) -> Result<(), HubError> {
        let seq = self.committed_since(Instant::now()).await?;
        if self.applied.load(Ordering::Acquire) >= seq {
            return Ok(());
        }
        // The writer's catch-up reads the log to its end, which is at or past `seq`.
        catch_up(writes).await
    }
}

async fn catch_up(writes: &mpsc::Sender<WriteCommand>) -> Result<(), HubError> {
    crate::writer::submit(writes, WriteOp::CatchUp).await.map(|_| ())
}

/// Asks the writer to catch up each time the store hears of a commit this node has not applied, until
/// the hub is gone.
pub(crate) async fn follow_commits(
    mut heard: watch::Receiver<u64>,
    applied: Arc<AtomicU64>,
    failures: Arc<AtomicU64>,
    writes: mpsc::WeakSender<WriteCommand>,
) {
    loop {
        if heard.changed().await.is_err() {
            return;
        }
        let seq = *heard.borrow_and_update();
        if applied.load(Ordering::Acquire) >= seq {
            continue;
        }
        let Some(writes) = writes.upgrade() else { return };
        if let Err(error) = catch_up(&writes).await {
            if matches!(error, HubError::ShuttingDown) {
                return;
            }
            failures.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(%error, "could not apply other nodes' commits; this node's view is behind until it can");
        }
    }
}
