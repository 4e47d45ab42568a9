//! How the event log is stored as bytes: events, and each partition's counters.
//!
//! An event is stored under its sequence number (8 bytes, big-endian, so that key order is sequence
//! order) as the format byte of [`crate::codec`], then in postcard its partition's byte offset (the
//! stored size of every event before it, since the partition was created) and the event itself. The
//! offset comes first, as its own varint, so that retention can learn it without decoding the event: it
//! is what makes `retained_bytes` exact after a trim without reading the trimmed events.

use serde::{Deserialize, Serialize};
use twinhub_core::event::{DeviceEvent, EventOrigin, StoredEvent};

use crate::codec::FORMAT_V1;
use crate::events::PartitionBounds;
use crate::StoreError;

/// What a partition holds, as stored and as kept in memory: sequence numbers `first..next`, and the
/// byte offsets of `first` and `next` (so the retained size is their difference).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartitionCounters {
    pub first: u64,
    pub next: u64,
    pub first_byte_offset: u64,
    pub next_byte_offset: u64,
}

impl PartitionCounters {
    pub fn bounds(&self) -> PartitionBounds {
        PartitionBounds {
            first: self.first,
            next: self.next,
            retained_bytes: self.next_byte_offset - self.first_byte_offset,
        }
    }
}

/// The key an event is stored under in its partition.
pub fn event_key(sequence_number: u64) -> [u8; 8] {
    sequence_number.to_be_bytes()
}

/// How a corrupt event is named in errors: its partition and sequence number.
fn event_name(partition: u16, key: &[u8]) -> String {
    match <[u8; 8]>::try_from(key) {
        Ok(bytes) => format!("event {partition}/{}", u64::from_be_bytes(bytes)),
        Err(_) => format!("event {partition}/key {key:02x?}"),
    }
}

/// The sequence number an event key holds.
pub fn decode_event_key(partition: u16, key: &[u8]) -> Result<u64, StoreError> {
    <[u8; 8]>::try_from(key)
        .map(u64::from_be_bytes)
        .map_err(|_| StoreError::Corrupt {
            key: event_name(partition, key),
            reason: format!("an event key has 8 bytes, this one {}", key.len()),
        })
}

/// The stored form of `event`, which starts `byte_offset` bytes into its partition.
pub fn encode_event(byte_offset: u64, event: &StoredEvent) -> Result<Vec<u8>, StoreError> {
    postcard::to_extend(&(byte_offset, event), vec![FORMAT_V1]).map_err(|e| StoreError::Write(Box::new(e)))
}

/// The body of a stored event after its format byte; `Corrupt` naming the key when it has none we read.
fn event_body<'v>(partition: u16, key: &[u8], value: &'v [u8]) -> Result<&'v [u8], StoreError> {
    match value.split_first() {
        Some((&FORMAT_V1, body)) => Ok(body),
        Some((format, _)) => Err(StoreError::Corrupt {
            key: event_name(partition, key),
            reason: format!("unknown format {format}"),
        }),
        None => Err(StoreError::Corrupt {
            key: event_name(partition, key),
            reason: "the value is empty".to_owned(),
        }),
    }
}

/// The event stored under `key` in `partition`; `Corrupt` (never a panic) when the bytes are not the
/// event of that sequence number.
pub fn decode_event(partition: u16, key: &[u8], value: &[u8]) -> Result<StoredEvent, StoreError> {
    let sequence_number = decode_event_key(partition, key)?;
    let body = event_body(partition, key, value)?;
    let corrupt = |reason: String| StoreError::Corrupt {
        key: event_name(partition, key),
        reason,
    };
    let (_byte_offset, event): (u64, StoredEvent) = postcard::from_bytes(body).map_err(|e| corrupt(e.to_string()))?;
    if event.sequence_number != sequence_number {
        return Err(corrupt(format!("the value holds event {}", event.sequence_number)));
    }
    Ok(event)
}

/// An event as a JetStream message carries it: its origin and the event (the stream gives its sequence
/// number and enqueued time).
pub fn encode_jetstream_event(origin: &EventOrigin, event: &DeviceEvent) -> Result<Vec<u8>, StoreError> {
    postcard::to_extend(&(origin, event), vec![FORMAT_V1]).map_err(|e| StoreError::Write(Box::new(e)))
}

/// The origin and event of event `sequence_number` of `partition`, from its JetStream message.
pub fn decode_jetstream_event(
    partition: u16,
    sequence_number: u64,
    value: &[u8],
) -> Result<(EventOrigin, DeviceEvent), StoreError> {
    let key = event_key(sequence_number);
    let body = event_body(partition, &key, value)?;
    postcard::from_bytes(body).map_err(|e| StoreError::Corrupt {
        key: event_name(partition, &key),
        reason: e.to_string(),
    })
}

/// The byte offset of the event stored under `key`, without decoding the event.
pub fn decode_event_byte_offset(partition: u16, key: &[u8], value: &[u8]) -> Result<u64, StoreError> {
    let body = event_body(partition, key, value)?;
    postcard::take_from_bytes::<u64>(body)
        .map(|(byte_offset, _event)| byte_offset)
        .map_err(|e| StoreError::Corrupt {
            key: event_name(partition, key),
            reason: e.to_string(),
        })
}

/// The stored form of a partition's counters.
pub fn encode_counters(counters: &PartitionCounters) -> Result<Vec<u8>, StoreError> {
    postcard::to_extend(counters, vec![FORMAT_V1]).map_err(|e| StoreError::Write(Box::new(e)))
}

/// The counters stored under the meta key `name`; `Corrupt` when they do not decode or do not add up.
pub fn decode_counters(name: &str, value: &[u8]) -> Result<PartitionCounters, StoreError> {
    let corrupt = |reason: String| StoreError::Corrupt {
        key: name.to_owned(),
        reason,
    };
    let counters: PartitionCounters = match value.split_first() {
        Some((&FORMAT_V1, body)) => postcard::from_bytes(body).map_err(|e| corrupt(e.to_string()))?,
        Some((format, _)) => return Err(corrupt(format!("unknown format {format}"))),
        None => return Err(corrupt("the value is empty".to_owned())),
    };
    if counters.first > counters.next || counters.first_byte_offset > counters.next_byte_offset {
        return Err(corrupt(format!("the counters do not add up: {counters:?}")));
    }
    Ok(counters)
}

/// The stored form of the partition count.
pub fn encode_partition_count(partition_count: u16) -> Vec<u8> {
    let [high, low] = partition_count.to_be_bytes();
    vec![FORMAT_V1, high, low]
}

/// The partition count stored under the meta key `name`.
pub fn decode_partition_count(name: &str, value: &[u8]) -> Result<u16, StoreError> {
    match value {
        [FORMAT_V1, high, low] => Ok(u16::from_be_bytes([*high, *low])),
        _ => Err(StoreError::Corrupt {
            key: name.to_owned(),
            reason: format!("a partition count is 3 bytes with format {FORMAT_V1}, this is {value:02x?}"),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use twinhub_core::event::EventValue;
    use twinhub_core::DeviceId;

    #[test]
    fn a_jetstream_event_reads_back_and_garbage_is_corrupt_naming_the_event() {
        let origin = EventOrigin {
            device_id: DeviceId::new("d.1").expect("id"),
            module_id: Some("m".to_owned()),
            generation_id: "g".to_owned(),
        };
        let event = DeviceEvent {
            body: b"{\"t\":1}".to_vec(),
            application_properties: vec![("k".to_owned(), EventValue::Long(7))],
            ..DeviceEvent::default()
        };
        let bytes = encode_jetstream_event(&origin, &event).expect("encode");
        assert_eq!(decode_jetstream_event(3, 9, &bytes).expect("decode"), (origin, event));
        for garbage in [&b""[..], &[9, 1], &[FORMAT_V1, 0xff, 0xff]] {
            match decode_jetstream_event(3, 9, garbage) {
                Err(StoreError::Corrupt { key, .. }) => assert_eq!(key, "event 3/9"),
                other => panic!("{garbage:?}: {other:?}"),
            }
        }
    }

    /// Event bodies are encoded as byte strings; logs written when they were sequences of `u8` must read
    /// the same, which holds because postcard gives both forms the same bytes.
    #[test]
    fn a_body_as_byte_string_has_the_bytes_of_a_byte_sequence() {
        for body in [vec![], vec![0u8, 1, 127, 128, 255], vec![b'x'; 300]] {
            assert_eq!(
                postcard::to_allocvec(&body).expect("a sequence encodes"),
                postcard::to_allocvec(&serde_bytes::Bytes::new(&body)).expect("a byte string encodes"),
            );
        }
    }
}
