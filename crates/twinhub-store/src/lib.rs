//! Where device records live durably. The hub keeps every record in memory for reads and queries and
//! calls a store only to make writes durable (in batches: group commit) and to load everything at start.
//! Two stores keep the same [`Store`] contract: [`EmbeddedStore`] (fjall, in the data directory) and
//! [`PostgresStore`] (PostgreSQL, the state a cluster of nodes shares). Device telemetry has an interface
//! of its own, [`EventStore`]: a partitioned, append-only event log, in the data directory
//! ([`EmbeddedStore`]) or, for a cluster, in NATS JetStream ([`JetStreamEvents`]).
//!
//! Architecture invariant: this is the only crate that touches disk (and SQL).

use std::sync::Arc;
use twinhub_core::c2d::{FeedbackRecord, QueuedMessage};
use twinhub_core::session::SessionRecord;
use twinhub_core::{DeviceId, DeviceRecord};

pub mod cluster;
pub mod codec;
pub mod embedded;
pub mod event_codec;
pub mod events;
pub mod jetstream;
pub mod postgres;

pub use cluster::{
    BuildCommit, ClusterStore, Commit, HoldChange, Holder, LapsedNode, Loaded, COMMITS_READ_MAX, LEASE_LAPSES_AFTER,
};
pub use embedded::{EmbeddedStore, StoreOptions};
pub use events::{
    EventAppend, EventStore, PartitionBounds, PartitionEnd, EVENT_PARTITIONS_DEFAULT, EVENT_PARTITIONS_MAX,
    EVENT_PARTITIONS_MIN,
};
pub use jetstream::{JetStreamEvents, JetStreamOptions};
pub use postgres::PostgresStore;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("the store at {path} could not be opened: {source}")]
    Open {
        path: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error("writing to the store failed: {0}")]
    Write(#[source] Box<dyn std::error::Error + Send + Sync>),
    #[error("reading the store failed: {0}")]
    Read(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// The store is out of reach (PostgreSQL down, restarting, cut off, or slower than the hub waits):
    /// nothing was done, and the same request may succeed later.
    #[error("the store cannot be reached now: {0}")]
    Unavailable(#[source] Box<dyn std::error::Error + Send + Sync>),
    #[error("the record stored for '{key}' is corrupt: {reason}")]
    Corrupt { key: String, reason: String },
    #[error(
        "an event log of {asked} partitions was asked for; it may have {min} to {max}",
        min = events::EVENT_PARTITIONS_MIN,
        max = events::EVENT_PARTITIONS_MAX
    )]
    EventPartitionCount { asked: u16 },
    #[error("event partition {partition} does not exist: the log has {partition_count} partitions")]
    NoSuchPartition { partition: u16, partition_count: u16 },
}

/// One change in a commit.
#[derive(Clone, Debug)]
pub enum StoreWrite {
    Upsert(Arc<DeviceRecord>),
    Delete(DeviceId),
    /// A device's persistent session (its subscriptions), by client id.
    UpsertSession(SessionRecord),
    DeleteSession(String),
    /// A consumer group of the Event Hubs-compatible endpoint, by name (stored as given, keyed without case).
    UpsertConsumerGroup(String),
    DeleteConsumerGroup(String),
    /// A message in a device's cloud-to-device queue, new or changed (its delivery count).
    UpsertCloudToDevice {
        device_id: DeviceId,
        message: Box<QueuedMessage>,
    },
    /// A message that left its queue (completed, rejected, expired, dead-lettered, purged).
    DeleteCloudToDevice {
        device_id: DeviceId,
        sequence_number: u64,
    },
    /// A feedback record waiting for a back end, by its number in the hub's feedback queue.
    UpsertFeedback {
        sequence_number: u64,
        record: FeedbackRecord,
    },
    /// A feedback record a back end received.
    DeleteFeedback(u64),
    /// One of the hub's settings (its message routes, ...), by name, as JSON text.
    PutSetting {
        name: String,
        value: String,
    },
    /// A module identity with its twin, new or changed.
    UpsertModule(Arc<twinhub_core::module::ModuleRecord>),
    DeleteModule {
        device_id: DeviceId,
        module_id: twinhub_core::ModuleId,
    },
    /// A scheduled job, new or changed (its status).
    UpsertJob(Arc<twinhub_core::job::JobRecord>),
    /// One device's step of a job, new or changed.
    UpsertDeviceJob(Arc<twinhub_core::job::DeviceJobRecord>),
}

/// A durable home for device records.
///
/// Contract: when `commit` returns `Ok`, every write in the batch survives a process kill and a power
/// cut; the batch is applied atomically (all or none) and in order. Implementations must be usable from
/// several threads, but the hub calls `commit` from a single writer, one batch at a time.
#[async_trait::async_trait]
pub trait Store: Send + Sync + 'static {
    /// Every record, in no particular order. Called once at start, before any commit.
    async fn load_all(&self) -> Result<Vec<DeviceRecord>, StoreError>;

    /// Every persistent session. Called once at start. A store that keeps none returns none: devices
    /// then start fresh sessions after a restart.
    async fn load_sessions(&self) -> Result<Vec<SessionRecord>, StoreError> {
        Ok(Vec::new())
    }

    /// The consumer groups created by back ends (not `$Default`). Called once at start; a store that
    /// keeps none returns none.
    async fn load_consumer_groups(&self) -> Result<Vec<String>, StoreError> {
        Ok(Vec::new())
    }

    /// Every message of every device's cloud-to-device queue. Called once at start; a store that keeps
    /// none returns none.
    async fn load_cloud_to_device(&self) -> Result<Vec<(DeviceId, QueuedMessage)>, StoreError> {
        Ok(Vec::new())
    }

    /// The feedback records no back end received yet, with their numbers. Called once at start.
    async fn load_feedback(&self) -> Result<Vec<(u64, FeedbackRecord)>, StoreError> {
        Ok(Vec::new())
    }

    /// The hub's settings, by name. Called once at start; a store that keeps none returns none.
    async fn load_settings(&self) -> Result<Vec<(String, String)>, StoreError> {
        Ok(Vec::new())
    }

    /// Every module identity with its twin. Called once at start; a store that keeps none returns none.
    async fn load_modules(&self) -> Result<Vec<twinhub_core::module::ModuleRecord>, StoreError> {
        Ok(Vec::new())
    }

    /// Every scheduled job and every device's step of one. Called once at start; a store that keeps none
    /// returns none.
    async fn load_jobs(&self) -> Result<Vec<codec::JobEntry>, StoreError> {
        Ok(Vec::new())
    }

    /// Everything a hub loads at start, in one view. By default the loads above one after another, as of
    /// no commit sequence (0): right for a store only one hub writes. A store other nodes share loads
    /// it in one consistent view, with the sequence number it is as of.
    async fn load(&self) -> Result<Loaded, StoreError> {
        Ok(Loaded {
            records: self.load_all().await?,
            sessions: self.load_sessions().await?,
            consumer_groups: self.load_consumer_groups().await?,
            cloud_to_device: self.load_cloud_to_device().await?,
            feedback: self.load_feedback().await?,
            settings: self.load_settings().await?,
            modules: self.load_modules().await?,
            jobs: self.load_jobs().await?,
            seq: 0,
        })
    }

    /// Makes the batch durable. See the trait's contract.
    async fn commit(&self, batch: Vec<StoreWrite>) -> Result<(), StoreError>;

    /// The store as several nodes share it (PostgreSQL), or `None` (the embedded store: one node alone).
    fn cluster(&self) -> Option<&dyn ClusterStore> {
        None
    }
}
