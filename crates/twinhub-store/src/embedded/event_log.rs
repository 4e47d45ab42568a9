//! The event log on fjall, in the same database (and so the same journal and directory lock) as the
//! registry.
//!
//! Layout:
//! - one keyspace per partition, `events-00` .. `events-31`, key = sequence number (8 bytes big-endian),
//!   value = the event as [`crate::event_codec`] encodes it. A keyspace per partition, not one keyspace
//!   keyed by partition and sequence number, because then each partition is its own LSM tree whose keys
//!   only ever grow: its tables never overlap, so compaction mostly moves them down without rewriting
//!   them, a read of one partition never wades through another's tables, and retention can drop whole
//!   tables of one partition (a table shared by partitions could only go once every partition passed it).
//! - keyspace `meta`: `event_partitions` (the partition count, fixed at creation) and
//!   `event_partition/<n>` (partition n's counters: first, next and their byte offsets), written in the
//!   same fsynced batch as the appends and trims that move them, so the bounds are known at start
//!   without a scan and never disagree with the events.
//!
//! Retention is logical first, then physical. A trim moves `first` in one small fsynced batch: from then
//! on nothing below it is read (reads and searches stay within `first..next` of the counters). Then
//! whole tables below `first` are dropped (lsm-tree's `drop_range`, which deletes table files without
//! reading them). No tombstone is written: fjall 3.1 has no range tombstone, and a tombstone per event
//! would cost a write per trimmed event and linger until compaction. What a dropped table did not cover
//! (the memtable, and the table straddling `first`) stays on disk unread until a later trim passes it;
//! keys are never written twice, so nothing below `first` can come back to life.

use fjall::{AbstractTree, Database, Keyspace, KeyspaceCreateOptions, PersistMode};
use std::path::Path;
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use twinhub_core::event::StoredEvent;
use twinhub_core::Timestamp;

use super::EmbeddedStore;
use crate::event_codec::{
    decode_counters, decode_event, decode_event_byte_offset, decode_event_key, decode_partition_count, encode_counters,
    encode_event, encode_partition_count, event_key, PartitionCounters,
};
use crate::events::{EventAppend, EventStore, PartitionBounds, EVENT_PARTITIONS_MAX, EVENT_PARTITIONS_MIN};
use crate::StoreError;

const META_KEYSPACE: &str = "meta";
const PARTITION_COUNT_KEY: &str = "event_partitions";

/// The most a partition keeps in its memtable before flushing it to a table (fjall's default is 64 MiB
/// per keyspace, with no bound across keyspaces: 2 GiB at 32 partitions). Smaller also means trimmed
/// events leave memory and the journal sooner: retention drops tables, and a memtable is not one yet.
/// The newest events, the ones consumers read, are in the memtable either way.
const PARTITION_MEMTABLE_BYTES_MAX: u64 = 16 * 1024 * 1024;

/// Events a read reserves room for up front, whatever `max_events` asks: a large `max_events` with a
/// small backlog should not allocate for the large number.
const READ_CAPACITY_MAX: usize = 1024;

fn counters_key(partition: u16) -> String {
    format!("event_partition/{partition}")
}

fn partition_keyspace_name(partition: u16) -> String {
    format!("events-{partition:02}")
}

pub(super) struct EventLog {
    db: Database,
    meta: Keyspace,
    /// Index = partition id.
    partitions: Vec<Keyspace>,
    partition_count: u16,
    /// Held by an append or a trim from building its batch until its counters are published, so that
    /// two of them never build on the same counters and the later overwrite the earlier.
    writing: Mutex<()>,
    /// The durable counters, index = partition id: replaced only after the batch that stored them is
    /// fsynced. Readers bound themselves by these, so they never see an event before it is durable.
    counters: RwLock<Vec<PartitionCounters>>,
}

impl EventLog {
    /// Opens the event log in `db`, creating it with `partitions_asked` partitions when it has none.
    /// An existing log keeps its partition count, whatever is asked.
    pub(super) fn open(db: &Database, dir: &Path, partitions_asked: u16) -> Result<EventLog, StoreError> {
        let open_error = |source: fjall::Error| StoreError::Open {
            path: dir.display().to_string(),
            source: Box::new(source),
        };
        let meta = db
            .keyspace(META_KEYSPACE, KeyspaceCreateOptions::default)
            .map_err(open_error)?;
        let stored_count = meta
            .get(PARTITION_COUNT_KEY)
            .map_err(|e| StoreError::Read(Box::new(e)))?
            .map(|value| decode_partition_count(PARTITION_COUNT_KEY, &value))
            .transpose()?;
        let partition_count = match stored_count {
            Some(count) => {
                if count != partitions_asked {
                    tracing::warn!(
                        stored = count,
                        asked = partitions_asked,
                        "the event log keeps the partition count it was created with"
                    );
                }
                if !(EVENT_PARTITIONS_MIN..=EVENT_PARTITIONS_MAX).contains(&count) {
                    return Err(StoreError::Corrupt {
                        key: PARTITION_COUNT_KEY.to_owned(),
                        reason: format!("{count} partitions is out of range"),
                    });
                }
                count
            }
            None => {
                if !(EVENT_PARTITIONS_MIN..=EVENT_PARTITIONS_MAX).contains(&partitions_asked) {
                    return Err(StoreError::EventPartitionCount {
                        asked: partitions_asked,
                    });
                }
                partitions_asked
            }
        };
        let partitions = (0..partition_count)
            .map(|partition| {
                db.keyspace(&partition_keyspace_name(partition), || {
                    KeyspaceCreateOptions::default().max_memtable_size(PARTITION_MEMTABLE_BYTES_MAX)
                })
            })
            .collect::<Result<Vec<_>, _>>()
            .map_err(open_error)?;
        let counters = if stored_count.is_some() {
            (0..partition_count)
                .map(|partition| {
                    let key = counters_key(partition);
                    match meta.get(&key).map_err(|e| StoreError::Read(Box::new(e)))? {
                        Some(value) => decode_counters(&key, &value),
                        None => Err(StoreError::Corrupt {
                            key,
                            reason: "the counters of an existing partition are missing".to_owned(),
                        }),
                    }
                })
                .collect::<Result<Vec<_>, _>>()?
        } else {
            // Created in one fsynced batch: a crash leaves either no event log or a whole one.
            let counters = vec![PartitionCounters::default(); usize::from(partition_count)];
            let mut creation = db.batch().durability(Some(PersistMode::SyncAll));
            for (partition, partition_counters) in (0..partition_count).zip(&counters) {
                creation.insert(&meta, counters_key(partition), encode_counters(partition_counters)?);
            }
            creation.insert(&meta, PARTITION_COUNT_KEY, encode_partition_count(partition_count));
            creation.commit().map_err(|e| StoreError::Write(Box::new(e)))?;
            counters
        };
        Ok(EventLog {
            db: db.clone(),
            meta,
            partitions,
            partition_count,
            writing: Mutex::new(()),
            counters: RwLock::new(counters),
        })
    }

    fn check_partition(&self, partition: u16) -> Result<usize, StoreError> {
        if partition < self.partition_count {
            Ok(usize::from(partition))
        } else {
            Err(StoreError::NoSuchPartition {
                partition,
                partition_count: self.partition_count,
            })
        }
    }

    /// The durable counters of `partition`, a copy.
    fn counters_of(&self, partition: u16) -> Result<PartitionCounters, StoreError> {
        let index = self.check_partition(partition)?;
        Ok(self.counters.read().unwrap_or_else(PoisonError::into_inner)[index])
    }

    fn bounds(&self) -> Vec<PartitionBounds> {
        let counters = self.counters.read().unwrap_or_else(PoisonError::into_inner);
        counters.iter().map(PartitionCounters::bounds).collect()
    }

    fn append(&self, batch: Vec<EventAppend>) -> Result<Vec<u64>, StoreError> {
        if batch.is_empty() {
            return Ok(Vec::new());
        }
        let _writing = self.writing.lock().unwrap_or_else(PoisonError::into_inner);
        let mut counters = self.counters.read().unwrap_or_else(PoisonError::into_inner).clone();
        let mut touched = vec![false; counters.len()];
        let mut numbers = Vec::with_capacity(batch.len());
        let mut writes = self.db.batch().durability(Some(PersistMode::SyncAll));
        // Any error returns before the commit: the batch is dropped and nothing of it is written.
        for append in batch {
            let index = self.check_partition(append.partition)?;
            let partition_counters = &mut counters[index];
            let sequence_number = partition_counters.next;
            let value = encode_event(partition_counters.next_byte_offset, &append.stored(sequence_number))?;
            partition_counters.next += 1;
            partition_counters.next_byte_offset += value.len() as u64;
            writes.insert(&self.partitions[index], event_key(sequence_number), value);
            touched[index] = true;
            numbers.push(sequence_number);
        }
        for (partition, partition_counters) in (0..self.partition_count).zip(&counters) {
            if touched[usize::from(partition)] {
                writes.insert(
                    &self.meta,
                    counters_key(partition),
                    encode_counters(partition_counters)?,
                );
            }
        }
        writes.commit().map_err(|e| StoreError::Write(Box::new(e)))?;
        *self.counters.write().unwrap_or_else(PoisonError::into_inner) = counters;
        Ok(numbers)
    }

    fn read(
        &self,
        partition: u16,
        from: u64,
        max_events: usize,
        max_bytes: usize,
    ) -> Result<Vec<StoredEvent>, StoreError> {
        let counters = self.counters_of(partition)?;
        let start = from.max(counters.first);
        if start >= counters.next || max_events == 0 {
            return Ok(Vec::new());
        }
        let wanted = usize::try_from(counters.next - start).map_or(max_events, |left| left.min(max_events));
        let mut events = Vec::with_capacity(wanted.min(READ_CAPACITY_MAX));
        let mut bytes = 0usize;
        let keyspace = &self.partitions[usize::from(partition)];
        // Bounded by `next` of the durable counters: later events may be visible in fjall already.
        for guard in keyspace.range(event_key(start)..event_key(counters.next)) {
            let (key, value) = guard.into_inner().map_err(|e| StoreError::Read(Box::new(e)))?;
            if !events.is_empty() && bytes.saturating_add(value.len()) > max_bytes {
                break;
            }
            // A concurrent trim may have dropped the first few; after the first, a gap is a lost event.
            if let Some(previous) = events.last().map(|event: &StoredEvent| event.sequence_number) {
                let sequence_number = decode_event_key(partition, &key)?;
                if sequence_number != previous + 1 {
                    return Err(StoreError::Corrupt {
                        key: format!("event {partition}/{}", previous + 1),
                        reason: "the event is missing".to_owned(),
                    });
                }
            }
            bytes += value.len();
            events.push(decode_event(partition, &key, &value)?);
            if events.len() == max_events {
                break;
            }
        }
        Ok(events)
    }

    fn first_at_or_after(&self, partition: u16, time: Timestamp) -> Result<Option<u64>, StoreError> {
        let keyspace = &self.partitions[self.check_partition(partition)?];
        'search: loop {
            let counters = self.counters_of(partition)?;
            // Binary search for the first event at or after `time` in first..next; `next` means none.
            let (mut low, mut high) = (counters.first, counters.next);
            while low < high {
                let middle = low + (high - low) / 2;
                let key = event_key(middle);
                let Some(value) = keyspace.get(key).map_err(|e| StoreError::Read(Box::new(e)))? else {
                    if middle < self.counters_of(partition)?.first {
                        // Trimmed (and its table dropped) since the search began: search what is left.
                        continue 'search;
                    }
                    return Err(StoreError::Corrupt {
                        key: format!("event {partition}/{middle}"),
                        reason: "the event is missing".to_owned(),
                    });
                };
                if decode_event(partition, &key, &value)?.enqueued_time >= time {
                    high = middle;
                } else {
                    low = middle + 1;
                }
            }
            return Ok((low < counters.next).then_some(low));
        }
    }

    fn trim(&self, partition: u16, before: u64) -> Result<(), StoreError> {
        let index = self.check_partition(partition)?;
        let first = {
            let _writing = self.writing.lock().unwrap_or_else(PoisonError::into_inner);
            let mut counters = self.counters_of(partition)?;
            let before = before.min(counters.next);
            if before <= counters.first {
                return Ok(());
            }
            let first_byte_offset = if before == counters.next {
                counters.next_byte_offset
            } else {
                let key = event_key(before);
                let value = self.partitions[index]
                    .get(key)
                    .map_err(|e| StoreError::Read(Box::new(e)))?
                    .ok_or_else(|| StoreError::Corrupt {
                        key: format!("event {partition}/{before}"),
                        reason: "the event is missing".to_owned(),
                    })?;
                decode_event_byte_offset(partition, &key, &value)?
            };
            if !(counters.first_byte_offset..=counters.next_byte_offset).contains(&first_byte_offset) {
                return Err(StoreError::Corrupt {
                    key: format!("event {partition}/{before}"),
                    reason: format!(
                        "its byte offset {first_byte_offset} is outside the partition's {}..{}",
                        counters.first_byte_offset, counters.next_byte_offset
                    ),
                });
            }
            counters.first = before;
            counters.first_byte_offset = first_byte_offset;
            let mut writes = self.db.batch().durability(Some(PersistMode::SyncAll));
            writes.insert(&self.meta, counters_key(partition), encode_counters(&counters)?);
            writes.commit().map_err(|e| StoreError::Write(Box::new(e)))?;
            self.counters.write().unwrap_or_else(PoisonError::into_inner)[index] = counters;
            counters.first
        };
        // The trim is durable: reclaiming space is best effort, and the next trim retries what is left.
        if let Err(error) = self.partitions[index].tree.drop_range(..event_key(first)) {
            tracing::warn!(partition, %error, "dropping the trimmed tables of an event partition failed");
        }
        Ok(())
    }
}

#[async_trait::async_trait]
impl EventStore for EmbeddedStore {
    fn partition_count(&self) -> u16 {
        self.events.partition_count
    }

    /// From memory: the counters are loaded at open and kept with every append and trim.
    async fn event_bounds(&self) -> Result<Vec<PartitionBounds>, StoreError> {
        Ok(self.events.bounds())
    }

    async fn append_events(&self, batch: Vec<EventAppend>) -> Result<Vec<u64>, StoreError> {
        let events = Arc::clone(&self.events);
        tokio::task::spawn_blocking(move || events.append(batch))
            .await
            .map_err(|e| StoreError::Write(Box::new(e)))?
    }

    // Reads go through `spawn_blocking` too: the newest events come from the memtable in microseconds,
    // but an old backlog is read from disk, and a blocked async worker would stall every connection on it.
    async fn read_events(
        &self,
        partition: u16,
        from: u64,
        max_events: usize,
        max_bytes: usize,
    ) -> Result<Vec<StoredEvent>, StoreError> {
        let events = Arc::clone(&self.events);
        tokio::task::spawn_blocking(move || events.read(partition, from, max_events, max_bytes))
            .await
            .map_err(|e| StoreError::Read(Box::new(e)))?
    }

    async fn first_at_or_after(&self, partition: u16, time: Timestamp) -> Result<Option<u64>, StoreError> {
        let events = Arc::clone(&self.events);
        tokio::task::spawn_blocking(move || events.first_at_or_after(partition, time))
            .await
            .map_err(|e| StoreError::Read(Box::new(e)))?
    }

    async fn trim_events(&self, partition: u16, before: u64) -> Result<(), StoreError> {
        let events = Arc::clone(&self.events);
        tokio::task::spawn_blocking(move || events.trim(partition, before))
            .await
            .map_err(|e| StoreError::Write(Box::new(e)))?
    }
}

#[cfg(test)]
mod tests;
