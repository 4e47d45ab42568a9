//! Where device telemetry lives durably: a partitioned, append-only event log, as an Event Hub keeps it.
//!
//! The hub owns the log's rules: it picks each event's partition, groups appends into batches and decides
//! what retention removes. The store numbers the events (contiguous from 0 per partition, in the order it
//! appends them), because in a cluster several nodes append to one partition and only the engine that
//! holds it can give out the next number without a consensus of our own: JetStream numbers a stream's
//! messages exactly so. That keeps the interface small enough for a distributed engine to implement
//! beside [`crate::EmbeddedStore`].

use twinhub_core::event::{DeviceEvent, EventOrigin, StoredEvent};
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
    /// When the hub received it. A store whose engine stamps each message with its own clock (JetStream)
    /// keeps that time instead, so that times never decrease within a partition whichever node appended.
    pub enqueued_time: Timestamp,
    pub origin: EventOrigin,
    pub event: DeviceEvent,
}

impl EventAppend {
    /// The event as stored under `sequence_number`.
    pub fn stored(self, sequence_number: u64) -> StoredEvent {
        StoredEvent {
            sequence_number,
            enqueued_time: self.enqueued_time,
            origin: self.origin,
            event: self.event,
        }
    }
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

/// A partition's end moved: an event was appended, by this process or another node.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PartitionEnd {
    pub partition: u16,
    /// The partition's next sequence number after the append.
    pub next: u64,
    pub enqueued_time: Timestamp,
}

/// A durable, partitioned event log.
///
/// Contract:
/// - The partition count is fixed when the store is created and never changes.
/// - `append_events`: each event gets its partition's `next` sequence number, in batch order (so a device's
///   events keep their order), and the numbers are returned in batch order. When `Ok`, the whole batch is
///   durable: on the embedded store it survives a process kill and a power cut and was applied atomically
///   (all or none); on JetStream each event is stored (and replicated, as the stream's replicas say)
///   before the answer, but a failed batch may have stored some of its events, which the sender, told
///   the batch failed, sends again (at least once, as IoT Hub). A batch that names a partition out of
///   range is refused with nothing of it written.
/// - Readers never see an event before the append that carries it returned `Ok`.
/// - `trim_events` is durable when `Ok`; events below `first` are never returned again.
///
/// Implementations must be usable from several tasks at once; the hub appends from one writer per process,
/// and in a cluster every node appends to the same partitions.
#[async_trait::async_trait]
pub trait EventStore: Send + Sync + 'static {
    /// Partitions, numbered `0..partition_count()`.
    fn partition_count(&self) -> u16;

    /// Every partition's bounds, index = partition id. Cheap: no scan, whatever the backlog.
    async fn event_bounds(&self) -> Result<Vec<PartitionBounds>, StoreError>;

    /// Numbers the batch's events and makes them durable. See the trait's contract.
    async fn append_events(&self, batch: Vec<EventAppend>) -> Result<Vec<u64>, StoreError>;

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

    /// Every partition end as other nodes append, as it happens (this process's own appends may come too),
    /// for as long as the receiver is held; `None` for a store only this process appends to. A node's
    /// Event Hubs receivers wait on these to hear of events that devices on other nodes sent.
    async fn follow_appends(&self) -> Result<Option<tokio::sync::mpsc::Receiver<PartitionEnd>>, StoreError> {
        Ok(None)
    }
}
