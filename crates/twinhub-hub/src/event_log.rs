//! Device-to-cloud events (telemetry): a partitioned, durable log, like the event hub IoT Hub keeps behind
//! its built-in endpoint. Every transport hands events to [`EventLog::append`], which answers once the event
//! is durable; the Event Hubs endpoint reads partitions and waits for new events through [`EventLog::watch`].
//!
//! One task appends: it takes every event waiting, gives each the next sequence number of its device's
//! partition (a stable hash of the device id, so a device's events keep their order), makes the batch
//! durable with one fsync (group commit, as the twin writer does), then publishes the partitions' new ends
//! and acknowledges. A consumer therefore never sees an event a crash could take back, and sequence numbers
//! have no gaps. Another task trims partitions by age and size (retention).

use crate::HubError;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot, watch};
use twinhub_core::event::{partition_of, DeviceEvent, EventOrigin, StoredEvent};
use twinhub_core::Timestamp;
use twinhub_store::{EventAppend, EventStore, PartitionEnd};

/// Events waiting for the appender; past this, senders wait (back-pressure).
const APPEND_QUEUE_MAX: usize = 16 * 1024;
/// Most events one durable append carries.
const APPEND_BATCH_MAX: usize = 1024;
/// How often retention runs.
const RETENTION_PERIOD: Duration = Duration::from_secs(30);

#[derive(Clone, Debug)]
pub struct EventLogConfig {
    /// Events older than this are removed (IoT Hub's default retention: one day).
    pub retention: Duration,
    /// Past this many bytes in a partition, its oldest events are removed, so a hub nobody reads from
    /// does not fill its disk.
    pub partition_bytes_max: u64,
}

impl Default for EventLogConfig {
    fn default() -> Self {
        EventLogConfig {
            retention: Duration::from_secs(24 * 3600),
            partition_bytes_max: 1024 * 1024 * 1024,
        }
    }
}

/// Where a partition stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PartitionState {
    /// The first retained sequence number.
    pub first: u64,
    /// The next sequence number: the partition is empty when `first == next`.
    pub next: u64,
    /// When the last event was enqueued (`None`: never).
    pub last_enqueued: Option<Timestamp>,
}

impl PartitionState {
    pub fn is_empty(&self) -> bool {
        self.first >= self.next
    }
}

/// Where an appended event went.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Enqueued {
    pub partition: u16,
    pub sequence_number: u64,
}

/// The answer to a queued append: where the events went, once durable.
pub type PendingAppend = oneshot::Receiver<Result<Vec<Enqueued>, HubError>>;

/// The events of one sender that must land together.
struct AppendCommand {
    origin: EventOrigin,
    events: Vec<DeviceEvent>,
    reply: oneshot::Sender<Result<Vec<Enqueued>, HubError>>,
}

pub struct EventLog {
    appends: mpsc::Sender<AppendCommand>,
    partitions: Arc<Vec<watch::Sender<PartitionState>>>,
    store: Arc<dyn EventStore>,
    /// When the log was opened by this process: reported as the event hub's creation time.
    pub created: Timestamp,
}

impl EventLog {
    /// Reads where every partition stands and starts the appender and retention. Inside a tokio runtime.
    pub async fn open(store: Arc<dyn EventStore>, config: EventLogConfig) -> Result<Arc<EventLog>, HubError> {
        let bounds = store.event_bounds().await.map_err(HubError::Store)?;
        let mut partitions = Vec::with_capacity(bounds.len());
        for (index, bound) in bounds.iter().enumerate() {
            let partition = u16::try_from(index).map_err(|_| HubError::Internal("more than 65536 partitions"))?;
            let last_enqueued = if bound.next > bound.first {
                store
                    .read_events(partition, bound.next - 1, 1, usize::MAX)
                    .await
                    .map_err(HubError::Store)?
                    .first()
                    .map(|event| event.enqueued_time)
            } else {
                None
            };
            partitions.push(
                watch::channel(PartitionState {
                    first: bound.first,
                    next: bound.next,
                    last_enqueued,
                })
                .0,
            );
        }
        let partitions = Arc::new(partitions);
        if let Some(ends) = store.follow_appends().await.map_err(HubError::Store)? {
            tokio::spawn(follow_loop(ends, Arc::clone(&partitions)));
        }
        let (appends, queue) = mpsc::channel(APPEND_QUEUE_MAX);
        tokio::spawn(append_loop(queue, Arc::clone(&store), Arc::clone(&partitions)));
        tokio::spawn(retention_loop(Arc::clone(&store), Arc::clone(&partitions), config));
        Ok(Arc::new(EventLog {
            appends,
            partitions,
            store,
            created: Timestamp::now(),
        }))
    }

    pub fn partition_count(&self) -> u16 {
        self.partitions.len() as u16
    }

    /// Appends a device's events, contiguous in its partition; answers once they are durable. Refuses
    /// them all when together they are over IoT Hub's size limit (a batch counts as one message).
    pub async fn append(&self, origin: EventOrigin, events: Vec<DeviceEvent>) -> Result<Vec<Enqueued>, HubError> {
        self.enqueue(origin, events)
            .await?
            .await
            .map_err(|_| HubError::ShuttingDown)?
    }

    /// Queues a device's events for the appender (events queued one after another are appended in that
    /// order) and returns what answers once they are durable.
    pub async fn enqueue(&self, origin: EventOrigin, events: Vec<DeviceEvent>) -> Result<PendingAppend, HubError> {
        twinhub_core::event::check_size(&events).map_err(|too_large| HubError::MessageTooLarge(too_large.size))?;
        let (reply, answer) = oneshot::channel();
        self.appends
            .send(AppendCommand { origin, events, reply })
            .await
            .map_err(|_| HubError::ShuttingDown)?;
        Ok(answer)
    }

    /// Where `partition` stands now, and every change from now on.
    pub fn watch(&self, partition: u16) -> Option<watch::Receiver<PartitionState>> {
        self.partitions
            .get(usize::from(partition))
            .map(watch::Sender::subscribe)
    }

    /// Up to `max_events` durable events of `partition` from sequence number `from` on (from the first
    /// retained one when `from` was trimmed), stopping after `max_bytes`.
    pub async fn read(
        &self,
        partition: u16,
        from: u64,
        max_events: usize,
        max_bytes: usize,
    ) -> Result<Vec<StoredEvent>, HubError> {
        self.store
            .read_events(partition, from, max_events, max_bytes)
            .await
            .map_err(HubError::Store)
    }

    /// The sequence number of the first retained event of `partition` enqueued at or after `time`.
    pub async fn first_at_or_after(&self, partition: u16, time: Timestamp) -> Result<Option<u64>, HubError> {
        self.store
            .first_at_or_after(partition, time)
            .await
            .map_err(HubError::Store)
    }
}

async fn append_loop(
    mut queue: mpsc::Receiver<AppendCommand>,
    store: Arc<dyn EventStore>,
    partitions: Arc<Vec<watch::Sender<PartitionState>>>,
) {
    let count = partitions.len() as u16;
    let mut commands = Vec::with_capacity(APPEND_BATCH_MAX);
    while queue.recv_many(&mut commands, APPEND_BATCH_MAX).await > 0 {
        let enqueued_time = Timestamp::now();
        let mut batch = Vec::with_capacity(commands.len());
        let mut replies = Vec::with_capacity(commands.len());
        for command in commands.drain(..) {
            let partition = partition_of(&command.origin.device_id, count);
            let events = command.events.len();
            for event in command.events {
                batch.push(EventAppend {
                    partition,
                    enqueued_time,
                    origin: command.origin.clone(),
                    event,
                });
            }
            replies.push((command.reply, partition, events));
        }
        let events = batch.len();
        let started = std::time::Instant::now();
        match store.append_events(batch).await {
            Ok(numbers) if numbers.len() == events => {
                let took = started.elapsed();
                if took >= Duration::from_millis(20) {
                    tracing::warn!(
                        events,
                        ?took,
                        "slow event append: every event in the batch waited for it"
                    );
                }
                let mut numbers = numbers.into_iter();
                let mut ends = Vec::with_capacity(replies.len());
                for (reply, partition, events) in replies {
                    let enqueued: Vec<Enqueued> = numbers
                        .by_ref()
                        .take(events)
                        .map(|sequence_number| Enqueued {
                            partition,
                            sequence_number,
                        })
                        .collect();
                    if let Some(last) = enqueued.last() {
                        ends.push(PartitionEnd {
                            partition,
                            next: last.sequence_number + 1,
                            enqueued_time,
                        });
                    }
                    // The device may have gone; the event stands.
                    let _ = reply.send(Ok(enqueued));
                }
                for end in ends {
                    publish_end(&partitions, end);
                }
            }
            Ok(numbers) => {
                tracing::error!(
                    events,
                    numbered = numbers.len(),
                    "the event store numbered another count of events than it was given"
                );
                for (reply, _, _) in replies {
                    let _ = reply.send(Err(HubError::Internal(
                        "the event store numbered another count of events",
                    )));
                }
            }
            Err(error) => {
                // The store refused the batch (or, on a store without atomic batches, part of it): every
                // sender is told, and sends again.
                tracing::error!(%error, events, "appending events failed; the batch is refused");
                let message = error.to_string();
                let unavailable = matches!(error, twinhub_store::StoreError::Unavailable(_));
                for (reply, _, _) in replies {
                    let error = if unavailable {
                        twinhub_store::StoreError::Unavailable(message.clone().into())
                    } else {
                        twinhub_store::StoreError::Write(message.clone().into())
                    };
                    let _ = reply.send(Err(HubError::Store(error)));
                }
            }
        }
    }
}

/// Moves a partition's end forward (never back: ends from this node's appends and from the store's feed
/// of every node's appends arrive in either order).
fn publish_end(partitions: &[watch::Sender<PartitionState>], end: PartitionEnd) {
    let Some(sender) = partitions.get(usize::from(end.partition)) else {
        return;
    };
    sender.send_if_modified(|state| {
        if state.next >= end.next {
            return false;
        }
        state.next = end.next;
        state.last_enqueued = Some(end.enqueued_time);
        true
    });
}

/// Follows the ends that other nodes' appends move, for as long as the store reports them.
async fn follow_loop(mut ends: mpsc::Receiver<PartitionEnd>, partitions: Arc<Vec<watch::Sender<PartitionState>>>) {
    while let Some(end) = ends.recv().await {
        publish_end(&partitions, end);
    }
    tracing::warn!("the event store stopped reporting other nodes' appends");
}

async fn retention_loop(
    store: Arc<dyn EventStore>,
    partitions: Arc<Vec<watch::Sender<PartitionState>>>,
    config: EventLogConfig,
) {
    let mut ticker = tokio::time::interval(RETENTION_PERIOD);
    loop {
        ticker.tick().await;
        if let Err(error) = trim_once(&*store, &partitions, &config).await {
            tracing::warn!(%error, "event retention failed; it runs again later");
        }
    }
}

/// One retention pass: per partition, the events older than the retention, then the oldest ones while
/// the partition holds more than its bytes.
pub(crate) async fn trim_once(
    store: &dyn EventStore,
    partitions: &[watch::Sender<PartitionState>],
    config: &EventLogConfig,
) -> Result<(), twinhub_store::StoreError> {
    let cutoff_nanos = Timestamp::now()
        .0
        .saturating_sub(i64::try_from(config.retention.as_nanos()).unwrap_or(i64::MAX));
    let bounds = store.event_bounds().await?;
    for (index, bound) in bounds.iter().enumerate() {
        let partition = index as u16;
        if bound.next <= bound.first {
            continue;
        }
        let mut before = store
            .first_at_or_after(partition, Timestamp(cutoff_nanos))
            .await?
            .unwrap_or(bound.next);
        if bound.retained_bytes > config.partition_bytes_max {
            // Drop the oldest events in proportion to the excess (sizes vary little within a partition).
            let retained = bound.next - bound.first;
            let average = (bound.retained_bytes / retained).max(1);
            let excess = (bound.retained_bytes - config.partition_bytes_max).div_ceil(average);
            before = before.max(bound.first + excess.min(retained));
        }
        if before > bound.first {
            store.trim_events(partition, before).await?;
            tracing::info!(
                partition,
                removed = before - bound.first,
                "retention trimmed the event log"
            );
            if let Some(sender) = partitions.get(index) {
                sender.send_modify(|state| state.first = state.first.max(before));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use twinhub_core::event::EventValue;
    use twinhub_core::DeviceId;
    use twinhub_store::EmbeddedStore;

    fn origin(device: &str) -> EventOrigin {
        EventOrigin {
            device_id: DeviceId::new(device).unwrap(),
            module_id: None,
            generation_id: "1".into(),
        }
    }

    fn event(bytes: usize) -> DeviceEvent {
        DeviceEvent {
            body: vec![7; bytes],
            application_properties: vec![("k".into(), EventValue::String("v".into()))],
            ..DeviceEvent::default()
        }
    }

    #[tokio::test]
    async fn events_get_contiguous_numbers_per_partition_and_retention_trims_by_age_and_size() {
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn EventStore> = Arc::new(EmbeddedStore::open(dir.path()).unwrap());
        let log = EventLog::open(Arc::clone(&store), EventLogConfig::default())
            .await
            .unwrap();
        let mut enqueued = Vec::new();
        for _ in 0..10 {
            enqueued.extend(log.append(origin("d1"), vec![event(1000)]).await.unwrap());
        }
        let partition = enqueued[0].partition;
        assert!(
            enqueued.iter().all(|e| e.partition == partition),
            "one device, one partition"
        );
        assert_eq!(
            enqueued.iter().map(|e| e.sequence_number).collect::<Vec<_>>(),
            (0..10).collect::<Vec<_>>()
        );
        let state = *log.watch(partition).unwrap().borrow();
        assert_eq!((state.first, state.next), (0, 10));
        assert!(state.last_enqueued.is_some());
        let too_large = log
            .append(origin("d1"), vec![event(twinhub_core::event::MESSAGE_BYTES_MAX + 1)])
            .await;
        assert!(matches!(too_large, Err(HubError::MessageTooLarge(_))));

        // Size: a partition over its bytes loses its oldest events; age: everything older goes.
        let by_size = EventLogConfig {
            retention: Duration::from_secs(3600),
            partition_bytes_max: 5_500,
        };
        trim_once(&*store, &log.partitions, &by_size).await.unwrap();
        let state = *log.watch(partition).unwrap().borrow();
        assert!((4..=6).contains(&state.first), "about half trimmed: {state:?}");
        assert_eq!(
            log.read(partition, 0, 100, usize::MAX).await.unwrap()[0].sequence_number,
            state.first
        );
        let by_age = EventLogConfig {
            retention: Duration::ZERO,
            ..by_size
        };
        trim_once(&*store, &log.partitions, &by_age).await.unwrap();
        let state = *log.watch(partition).unwrap().borrow();
        assert_eq!((state.first, state.next), (10, 10));
        assert!(state.is_empty());
        let after = log.append(origin("d1"), vec![event(10)]).await.unwrap();
        assert_eq!(after[0].sequence_number, 10, "numbers are never reused");
    }
}
