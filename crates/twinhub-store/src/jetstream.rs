//! The event log on NATS JetStream, for a cluster: every node appends to and reads the same partitions.
//!
//! Layout: one stream per partition, `TWINHUB_<cluster id>_EVENTS_<n>` on the subject
//! `twinhub.<cluster id>.events.<n>`, where the cluster id is a digest of the cluster's name (a node
//! gives the cluster identity its PostgreSQL keeps, a random id made with the tables), so clusters
//! sharing a NATS server do not meet. A stream's sequence numbers start at 1 and are contiguous, which is
//! exactly an Event Hubs partition's numbering shifted by one: event `n` is message `n + 1`. JetStream
//! gives the numbers out as it stores the messages, so nodes never agree on them among themselves, and it
//! stamps each message with its own clock, which is the enqueued time readers see (so times never go back
//! within a partition whatever the nodes' clocks say). The partition count is the first one asked: the
//! one message of the stream `TWINHUB_<cluster id>_META` (a later node takes it whatever it asks).
//!
//! A message is the event as [`crate::event_codec::encode_jetstream_event`] encodes it: its origin and
//! the event, with the format byte of [`crate::codec`].
//!
//! Durability is JetStream's: an append answers after JetStream acknowledged every message of the batch,
//! which means stored by the stream's replicas (`replicas`: 3 on a NATS cluster of 3 or more is what
//! survives losing a NATS server). A single NATS server writes its files without an fsync per message
//! (its `sync_interval`), so a power cut of that machine may lose the last seconds; a process kill does not.
//!
//! Reading: a receiver reads a partition forward from where it stopped, so a read keeps its pull consumer
//! (ephemeral, no acknowledgements, in the server's memory) under the position it stopped at, and the next
//! read from there goes on with it instead of creating one. Consumers left idle vanish on the server after
//! [`READER_IDLE`]; a read whose consumer fails starts a new one at its position.

use async_nats::jetstream::{self, consumer, stream};
use futures_util::StreamExt;
use std::collections::{HashMap, VecDeque};
use std::sync::{Mutex, PoisonError};
use std::time::Duration;
use tokio::sync::mpsc;
use twinhub_core::event::StoredEvent;
use twinhub_core::Timestamp;

use crate::event_codec::{decode_jetstream_event, encode_jetstream_event};
use crate::events::{
    EventAppend, EventStore, PartitionBounds, PartitionEnd, EVENT_PARTITIONS_MAX, EVENT_PARTITIONS_MIN,
};
use crate::StoreError;

/// How long a reader's consumer lives on the server without being used.
const READER_IDLE: Duration = Duration::from_secs(60);
/// Most events one fetch asks the server for (a read asking more gets at most this many).
const FETCH_MAX: usize = 1024;
/// Readers kept for reuse; past this, the oldest goes (its consumer then vanishes on the server).
const READERS_MAX: usize = 1024;
/// How long a JetStream request (an append's acknowledgement, a stream's state) may take: past it, NATS is
/// out of reach for this purpose and the caller is told so, instead of waiting.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// How often a node looks at each partition's state besides following its appends (the fallback that
/// catches up after NATS restarted).
const FOLLOW_POLL: Duration = Duration::from_secs(1);

#[derive(Clone, Debug)]
pub struct JetStreamOptions {
    /// Partitions, when the cluster has none yet (a later node takes the cluster's).
    pub partitions: u16,
    /// Replicas of each stream (and of the one that keeps the partition count): 1 on one NATS server.
    pub replicas: usize,
}

impl Default for JetStreamOptions {
    fn default() -> Self {
        JetStreamOptions {
            partitions: crate::EVENT_PARTITIONS_DEFAULT,
            replicas: 1,
        }
    }
}

/// A consumer positioned in a partition, with what it fetched beyond the read that fetched it.
struct Reader {
    consumer: consumer::PullConsumer,
    fetched: VecDeque<StoredEvent>,
}

/// Where a reader goes on from: its partition and the sequence number of the next event it reads.
type ReaderPosition = (u16, u64);

/// Readers by their position, and their positions oldest first.
#[derive(Default)]
struct Readers {
    by_position: HashMap<ReaderPosition, Reader>,
    age: VecDeque<ReaderPosition>,
}

pub struct JetStreamEvents {
    context: jetstream::Context,
    /// Index = partition.
    streams: Vec<stream::Stream>,
    /// Index = partition; a `Subject` clones without copying, once per appended event.
    subjects: Vec<async_nats::Subject>,
    readers: Mutex<Readers>,
    describe: String,
}

fn unavailable(error: impl std::fmt::Display) -> StoreError {
    StoreError::Unavailable(error.to_string().into())
}

fn read_error(error: impl std::fmt::Display) -> StoreError {
    StoreError::Read(error.to_string().into())
}

/// A short, stable name for the cluster: the first 16 bytes of its name's SHA-256, in hex (a host name may
/// be 253 characters; stream names become file names).
fn cluster_id(cluster: &str) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(cluster.as_bytes())[..16]
        .iter()
        .map(|byte| format!("{byte:02x}"))
        .collect()
}

impl JetStreamEvents {
    /// Connects to `url` (`nats://host:4222`) for the cluster named `cluster` (any text; a node gives its
    /// database's cluster identity) and opens (or creates) its partitions.
    pub async fn connect(url: &str, cluster: &str, options: JetStreamOptions) -> Result<JetStreamEvents, StoreError> {
        let open_error = |reason: String| StoreError::Open {
            path: url.to_owned(),
            source: reason.into(),
        };
        let client = async_nats::ConnectOptions::new()
            .connection_timeout(REQUEST_TIMEOUT)
            .connect(url)
            .await
            .map_err(|error| open_error(error.to_string()))?;
        let mut context = jetstream::new(client);
        context.set_timeout(REQUEST_TIMEOUT);
        let id = cluster_id(cluster);
        let partitions = partition_count(&context, &id, &options)
            .await
            .map_err(|reason| open_error(format!("the partition count: {reason}")))?;
        let mut streams = Vec::with_capacity(usize::from(partitions));
        let mut subjects = Vec::with_capacity(usize::from(partitions));
        for partition in 0..partitions {
            let subject = format!("twinhub.{id}.events.{partition}");
            let config = stream::Config {
                name: format!("TWINHUB_{id}_EVENTS_{partition}"),
                subjects: vec![subject.clone()],
                storage: stream::StorageType::File,
                num_replicas: options.replicas,
                // The hub's retention trims (the same rule as on one node); nothing is refused for size.
                discard: stream::DiscardPolicy::Old,
                allow_direct: true,
                ..stream::Config::default()
            };
            let stream = context
                .get_or_create_stream(config)
                .await
                .map_err(|error| open_error(format!("partition {partition}'s stream: {error}")))?;
            streams.push(stream);
            subjects.push(async_nats::Subject::from(subject));
        }
        Ok(JetStreamEvents {
            context,
            streams,
            subjects,
            readers: Mutex::new(Readers::default()),
            describe: format!("{partitions} JetStream streams TWINHUB_{id}_EVENTS_* at {url}"),
        })
    }

    /// Removes the cluster's event log from JetStream (every partition's stream and the one that keeps
    /// the partition count), as a test or an operator retiring a cluster does. Missing parts are fine.
    pub async fn remove(url: &str, cluster: &str) -> Result<(), StoreError> {
        let client = async_nats::ConnectOptions::new()
            .connection_timeout(REQUEST_TIMEOUT)
            .connect(url)
            .await
            .map_err(unavailable)?;
        let context = jetstream::new(client);
        let id = cluster_id(cluster);
        for partition in 0..EVENT_PARTITIONS_MAX {
            let _ = context.delete_stream(format!("TWINHUB_{id}_EVENTS_{partition}")).await;
        }
        let _ = context.delete_stream(meta_stream_name(&id)).await;
        Ok(())
    }

    /// What this store is, for the log.
    pub fn describe(&self) -> &str {
        &self.describe
    }

    fn stream(&self, partition: u16) -> Result<&stream::Stream, StoreError> {
        self.streams
            .get(usize::from(partition))
            .ok_or(StoreError::NoSuchPartition {
                partition,
                partition_count: self.partition_count(),
            })
    }

    fn take_reader(&self, partition: u16, from: u64) -> Option<Reader> {
        let mut readers = self.readers.lock().unwrap_or_else(PoisonError::into_inner);
        let reader = readers.by_position.remove(&(partition, from));
        if reader.is_some() {
            readers.age.retain(|position| *position != (partition, from));
        }
        reader
    }

    fn keep_reader(&self, partition: u16, next: u64, reader: Reader) {
        let mut readers = self.readers.lock().unwrap_or_else(PoisonError::into_inner);
        let Readers { by_position, age } = &mut *readers;
        if by_position.insert((partition, next), reader).is_none() {
            age.push_back((partition, next));
        }
        while age.len() > READERS_MAX {
            if let Some(oldest) = age.pop_front() {
                by_position.remove(&oldest);
            }
        }
    }

    /// A consumer of `partition` from its event `from` on (the first retained one when `from` is gone).
    async fn new_reader(&self, partition: u16, from: u64) -> Result<Reader, StoreError> {
        let consumer = self
            .stream(partition)?
            .create_consumer(consumer::pull::Config {
                deliver_policy: consumer::DeliverPolicy::ByStartSequence {
                    start_sequence: from + 1,
                },
                ack_policy: consumer::AckPolicy::None,
                inactive_threshold: READER_IDLE,
                memory_storage: true,
                ..consumer::pull::Config::default()
            })
            .await
            .map_err(read_error)?;
        Ok(Reader {
            consumer,
            fetched: VecDeque::new(),
        })
    }

    /// Fetches what the reader's consumer has now, up to `max_events`, into its `fetched`.
    async fn fetch(&self, partition: u16, reader: &mut Reader, max_events: usize) -> Result<(), StoreError> {
        let mut batch = reader
            .consumer
            .fetch()
            .max_messages(max_events.min(FETCH_MAX))
            .messages()
            .await
            .map_err(read_error)?;
        while let Some(message) = batch.next().await {
            let message = message.map_err(read_error)?;
            let event = stored_event(partition, &message)?;
            if let Some(previous) = reader.fetched.back() {
                if event.sequence_number != previous.sequence_number + 1 {
                    return Err(StoreError::Corrupt {
                        key: format!("event {partition}/{}", previous.sequence_number + 1),
                        reason: "the event is missing from its stream".to_owned(),
                    });
                }
            }
            reader.fetched.push_back(event);
        }
        Ok(())
    }
}

/// The partition count the cluster keeps; the one asked when this node is the first. It is the first
/// message of the cluster's meta stream: each node publishes its count on the condition that the stream
/// is still empty (JetStream refuses the publish otherwise), then reads message 1.
async fn partition_count(context: &jetstream::Context, id: &str, options: &JetStreamOptions) -> Result<u16, String> {
    if !(EVENT_PARTITIONS_MIN..=EVENT_PARTITIONS_MAX).contains(&options.partitions) {
        return Err(StoreError::EventPartitionCount {
            asked: options.partitions,
        }
        .to_string());
    }
    let subject = format!("twinhub.{id}.meta");
    let meta = context
        .get_or_create_stream(stream::Config {
            name: meta_stream_name(id),
            subjects: vec![subject.clone()],
            storage: stream::StorageType::File,
            num_replicas: options.replicas,
            ..stream::Config::default()
        })
        .await
        .map_err(|error| error.to_string())?;
    let offer = jetstream::message::PublishMessage::build()
        .payload(options.partitions.to_string().into())
        .expected_last_sequence(0);
    // Refused when another node was first: its count stays.
    if let Ok(ack) = context.send_publish(subject, offer).await {
        let _ = ack.await;
    }
    let stored = meta.get_raw_message(1).await.map_err(|error| error.to_string())?;
    let count = std::str::from_utf8(&stored.payload)
        .ok()
        .and_then(|text| text.parse::<u16>().ok())
        .filter(|count| (EVENT_PARTITIONS_MIN..=EVENT_PARTITIONS_MAX).contains(count))
        .ok_or_else(|| {
            format!(
                "'{}' is not a partition count",
                String::from_utf8_lossy(&stored.payload)
            )
        })?;
    if count != options.partitions {
        tracing::warn!(
            cluster = count,
            asked = options.partitions,
            "the cluster's event log keeps the partition count it was created with"
        );
    }
    Ok(count)
}

fn meta_stream_name(id: &str) -> String {
    format!("TWINHUB_{id}_META")
}

fn timestamp(time: time::OffsetDateTime) -> Timestamp {
    Timestamp(i64::try_from(time.unix_timestamp_nanos()).unwrap_or(i64::MAX))
}

/// The event a delivered message holds.
fn stored_event(partition: u16, message: &jetstream::Message) -> Result<StoredEvent, StoreError> {
    let info = message.info().map_err(read_error)?;
    let sequence_number = info.stream_sequence.checked_sub(1).ok_or_else(|| StoreError::Corrupt {
        key: format!("event {partition}/?"),
        reason: "a message with stream sequence 0".to_owned(),
    })?;
    let (origin, event) = decode_jetstream_event(partition, sequence_number, &message.payload)?;
    Ok(StoredEvent {
        sequence_number,
        enqueued_time: timestamp(info.published),
        origin,
        event,
    })
}

fn bounds_of(state: &stream::State) -> PartitionBounds {
    PartitionBounds {
        first: state.first_sequence.max(1) - 1,
        next: state.last_sequence,
        retained_bytes: state.bytes,
    }
}

#[async_trait::async_trait]
impl EventStore for JetStreamEvents {
    fn partition_count(&self) -> u16 {
        self.streams.len() as u16
    }

    async fn event_bounds(&self) -> Result<Vec<PartitionBounds>, StoreError> {
        let infos = self.streams.iter().map(|stream| stream.get_info());
        let infos = futures_util::future::join_all(infos).await;
        infos
            .into_iter()
            .map(|info| info.map(|info| bounds_of(&info.state)).map_err(unavailable))
            .collect()
    }

    async fn append_events(&self, batch: Vec<EventAppend>) -> Result<Vec<u64>, StoreError> {
        for append in &batch {
            self.stream(append.partition)?;
        }
        // Published in batch order on one connection, so JetStream numbers them in that order; then every
        // acknowledgement is awaited. The whole append is bounded: with NATS out of reach the client
        // buffers publishes until its queue is full, then a publish would wait for as long as NATS is away.
        let append = async {
            let mut acks = Vec::with_capacity(batch.len());
            for append in &batch {
                let payload = encode_jetstream_event(&append.origin, &append.event)?;
                let subject = self.subjects[usize::from(append.partition)].clone();
                let ack = self
                    .context
                    .publish(subject, payload.into())
                    .await
                    .map_err(unavailable)?;
                acks.push(ack);
            }
            let mut numbers = Vec::with_capacity(acks.len());
            for ack in acks {
                let ack = ack.await.map_err(unavailable)?;
                numbers.push(ack.sequence.saturating_sub(1));
            }
            Ok(numbers)
        };
        tokio::time::timeout(REQUEST_TIMEOUT, append)
            .await
            .unwrap_or_else(|_| Err(unavailable("JetStream did not acknowledge the events in time")))
    }

    async fn read_events(
        &self,
        partition: u16,
        from: u64,
        max_events: usize,
        max_bytes: usize,
    ) -> Result<Vec<StoredEvent>, StoreError> {
        self.stream(partition)?;
        if max_events == 0 {
            return Ok(Vec::new());
        }
        let mut reader = match self.take_reader(partition, from) {
            Some(reader) => reader,
            None => self.new_reader(partition, from).await?,
        };
        if reader.fetched.is_empty() {
            if let Err(error) = self.fetch(partition, &mut reader, max_events).await {
                // Its consumer may have vanished (idle too long, NATS restarted): once more, with a new one.
                tracing::debug!(partition, from, %error, "an event reader's consumer failed; starting another");
                reader = self.new_reader(partition, from).await?;
                self.fetch(partition, &mut reader, max_events).await?;
            }
        }
        let mut events = Vec::new();
        let mut bytes = 0usize;
        while let Some(event) = reader.fetched.front() {
            let size = event.event.size();
            if events.len() == max_events || (!events.is_empty() && bytes.saturating_add(size) > max_bytes) {
                break;
            }
            bytes += size;
            events.extend(reader.fetched.pop_front());
        }
        let next = events
            .last()
            .map_or(from, |event: &StoredEvent| event.sequence_number + 1);
        if !events.is_empty() || !reader.fetched.is_empty() {
            self.keep_reader(partition, next, reader);
        }
        Ok(events)
    }

    async fn first_at_or_after(&self, partition: u16, time: Timestamp) -> Result<Option<u64>, StoreError> {
        let stream = self.stream(partition)?;
        let start_time = time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(time.0)).map_err(read_error)?;
        let consumer: consumer::PullConsumer = stream
            .create_consumer(consumer::pull::Config {
                deliver_policy: consumer::DeliverPolicy::ByStartTime { start_time },
                ack_policy: consumer::AckPolicy::None,
                inactive_threshold: Duration::from_secs(5),
                memory_storage: true,
                headers_only: true,
                ..consumer::pull::Config::default()
            })
            .await
            .map_err(read_error)?;
        let mut batch = consumer.fetch().max_messages(1).messages().await.map_err(read_error)?;
        let found = match batch.next().await {
            Some(message) => {
                let message = message.map_err(read_error)?;
                let info = message.info().map_err(read_error)?;
                Some(info.stream_sequence.saturating_sub(1))
            }
            None => None,
        };
        let name = consumer.cached_info().name.clone();
        if let Err(error) = stream.delete_consumer(&name).await {
            tracing::debug!(partition, %error, "a search's consumer was left to vanish by itself");
        }
        Ok(found)
    }

    async fn trim_events(&self, partition: u16, before: u64) -> Result<(), StoreError> {
        let stream = self.stream(partition)?;
        let bounds = bounds_of(&stream.get_info().await.map_err(unavailable)?.state);
        // Never past `next`: JetStream would move its next sequence number up, and numbers must not skip.
        let before = before.min(bounds.next);
        if before <= bounds.first {
            return Ok(());
        }
        // Purges the messages below `sequence`, that is the events below `before`.
        stream
            .purge()
            .sequence(before + 1)
            .await
            .map_err(|error| StoreError::Write(error.to_string().into()))?;
        Ok(())
    }

    async fn follow_appends(&self) -> Result<Option<mpsc::Receiver<PartitionEnd>>, StoreError> {
        let (ends, receiver) = mpsc::channel(1024);
        for (partition, stream) in (0u16..).zip(&self.streams) {
            let next = bounds_of(&stream.get_info().await.map_err(unavailable)?.state).next;
            tokio::spawn(follow_partition(stream.clone(), partition, next, ends.clone()));
        }
        Ok(Some(receiver))
    }
}

/// Reports `partition`'s end as it moves, from `next` on, until the receiver goes. An ordered consumer of
/// the headers only tells of each append at once; a look at the stream's state every
/// [`FOLLOW_POLL`] covers what it may miss (NATS restarted, the consumer lost), and a consumer that ended
/// or failed is made anew from where the partition was.
async fn follow_partition(stream: stream::Stream, partition: u16, mut next: u64, ends: mpsc::Sender<PartitionEnd>) {
    let mut poll = tokio::time::interval(FOLLOW_POLL);
    poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        // Bounded: with NATS away (or just back) making the consumer may wait without end, and the
        // look at the stream's state below must go on meanwhile.
        let made = tokio::time::timeout(REQUEST_TIMEOUT, async {
            let consumer = stream
                .create_consumer(consumer::pull::OrderedConfig {
                    deliver_policy: consumer::DeliverPolicy::ByStartSequence {
                        start_sequence: next + 1,
                    },
                    headers_only: true,
                    ..consumer::pull::OrderedConfig::default()
                })
                .await
                .map_err(|error| error.to_string())?;
            consumer.messages().await.map_err(|error| error.to_string())
        })
        .await;
        let mut messages = match made {
            Ok(Ok(messages)) => Some(messages),
            Ok(Err(error)) => {
                tracing::debug!(partition, %error, "cannot follow a partition's appends now; looking again later");
                None
            }
            Err(_) => {
                tracing::debug!(
                    partition,
                    "following a partition's appends timed out; looking again later"
                );
                None
            }
        };
        // Whether the consumer told of an append since the last look at the stream's state.
        let mut delivered = false;
        loop {
            let end = tokio::select! {
                message = async {
                    match messages.as_mut() {
                        Some(messages) => messages.next().await,
                        None => std::future::pending().await,
                    }
                } => match message {
                    Some(Ok(message)) => match message.info() {
                        Ok(info) => {
                            delivered = true;
                            Some(PartitionEnd {
                                partition,
                                next: info.stream_sequence,
                                enqueued_time: timestamp(info.published),
                            })
                        }
                        Err(_) => None,
                    },
                    // Ended or failed: made anew from `next`.
                    _ => break,
                },
                _ = poll.tick() => match stream.get_info().await {
                    Ok(info) if bounds_of(&info.state).next > next => {
                        let end = PartitionEnd {
                            partition,
                            next: bounds_of(&info.state).next,
                            enqueued_time: timestamp(info.state.last_timestamp),
                        };
                        if !std::mem::take(&mut delivered) {
                            // The stream went on and the consumer said nothing for a whole period: it
                            // is lost (NATS restarted). Told of the end, then made anew from there.
                            if end.next > next {
                                next = end.next;
                                if ends.send(end).await.is_err() {
                                    return;
                                }
                            }
                            break;
                        }
                        Some(end)
                    }
                    Ok(_) => {
                        delivered = false;
                        None
                    }
                    Err(_) if messages.is_none() => break,
                    Err(_) => None,
                },
            };
            if let Some(end) = end {
                if end.next > next {
                    next = end.next;
                    if ends.send(end).await.is_err() {
                        return;
                    }
                }
            }
        }
        if messages.is_none() {
            tokio::time::sleep(FOLLOW_POLL).await;
        }
    }
}

impl std::fmt::Debug for JetStreamEvents {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.write_str(&self.describe)
    }
}

/// Keeps the cluster's events apart from a test's: the same name always gives the same id.
#[cfg(test)]
mod tests {
    #[test]
    fn cluster_ids_are_short_stable_and_distinct() {
        let id = super::cluster_id("hub.example.com");
        assert_eq!(id.len(), 32);
        assert!(id.bytes().all(|byte| byte.is_ascii_hexdigit()));
        assert_eq!(id, super::cluster_id("hub.example.com"));
        assert_ne!(id, super::cluster_id("hub2.example.com"));
    }
}
