//! Where device telemetry lives durably: a partitioned, append-only event log, as an Event Hub keeps it.
//!
//! The hub owns the log's rules: it picks each event's partition, assigns sequence numbers (contiguous
//! from 0 per partition), groups appends into batches and decides what retention removes. A store only
//! keeps what it is given, in order, and refuses a batch that would leave a gap. That keeps the interface
//! small enough for a distributed engine to implement beside [`crate::EmbeddedStore`].

use twinhub_core::event::StoredEvent;
use twinhub_core::Timestamp;

use crate::StoreError;

/// Partitions a store gets when its creator does not choose (IoT Hub's default is 4 too).
pub const EVENT_PARTITIONS_DEFAULT: u16 = 4;

/// Fewest partitions a store may be created with (IoT Hub's minimum).
pub const EVENT_PARTITIONS_MIN: u16 = 2;

/// Most partitions a store may be created with (IoT Hub's maximum on its standard tiers).
pub const EVENT_PARTITIONS_MAX: u16 = 32;

/// One event to append, with the partition the hub chose for it.
#[derive(Clone, Debug, PartialEq)]
pub struct EventAppend {
    pub partition: u16,
    pub event: StoredEvent,
}

/// What a partition holds: the sequence numbers `first..next` and their stored size.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PartitionBounds {
    /// The first retained sequence number (`next` when the partition is empty).
    pub first: u64,
    /// The sequence number the next appended event must carry.
    pub next: u64,
    /// The stored (encoded) size of the retained events, what size-based retention weighs.
    pub retained_bytes: u64,
}

impl PartitionBounds {
    /// Events retained.
    pub fn len(&self) -> u64 {
        self.next - self.first
    }

    pub fn is_empty(&self) -> bool {
        self.first == self.next
    }
}

/// A durable, partitioned event log.
///
/// Contract:
/// - The partition count is fixed when the store is created and never changes.
/// - `append_events`: when `Ok`, the whole batch survives a process kill and a power cut, and was applied
///   atomically (all or none). A batch that names a partition out of range, or whose sequence numbers do
///   not continue a partition's contiguously (from `next`, one by one, in batch order), is refused with
///   nothing of it written.
/// - Readers never see an event before the append that carries it returned `Ok`.
/// - `trim_events` is durable when `Ok`; events below `first` are never returned again.
///
/// Implementations must be usable from several tasks at once; the hub appends from one writer per store.
#[async_trait::async_trait]
pub trait EventStore: Send + Sync + 'static {
    /// Partitions, numbered `0..partition_count()`.
    fn partition_count(&self) -> u16;

    /// Every partition's bounds, index = partition id. Cheap: no scan, whatever the backlog.
    async fn event_bounds(&self) -> Result<Vec<PartitionBounds>, StoreError>;

    /// Makes the batch durable. See the trait's contract.
    async fn append_events(&self, batch: Vec<EventAppend>) -> Result<(), StoreError>;

    /// Events of `partition` from sequence number `from` on (from the first retained one when `from` is
    /// below it), in order: at most `max_events`, and no more than `max_bytes` of stored size, except
    /// that the first event is returned whatever its size, so a reader always makes progress. Empty when
    /// `from` is at or past `next`, or `max_events` is 0.
    async fn read_events(
        &self,
        partition: u16,
        from: u64,
        max_events: usize,
        max_bytes: usize,
    ) -> Result<Vec<StoredEvent>, StoreError>;

    /// The sequence number of the first retained event of `partition` enqueued at or after `time`, or
    /// `None` when every retained event is older (or there are none). Enqueued times never decrease
    /// within a partition, so this is how a consumer's "from this time on" becomes a position.
    async fn first_at_or_after(&self, partition: u16, time: Timestamp) -> Result<Option<u64>, StoreError>;

    /// Removes the events of `partition` with sequence numbers below `before` (all of them when `before`
    /// is past `next`): moves `first` up and lowers `retained_bytes`. Durable when `Ok`. Sequence numbers
    /// are never reused: `next` does not move.
    async fn trim_events(&self, partition: u16, before: u64) -> Result<(), StoreError>;
}
