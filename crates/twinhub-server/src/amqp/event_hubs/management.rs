//! `$management` READ requests: the event hub (`com.microsoft:eventhub`: name, creation time, partition ids)
//! and a partition (`com.microsoft:partition`: its sequence numbers, last offset and time, emptiness). The
//! reply is an amqp-value map with the exact keys and types both SDKs read, every key always present.
//! A request is authorized by its own `security_token` (Python, and Node) or by a CBS token of the
//! connection that covers the hub. Ref: eventhubs-endpoint notes §4.

use super::message::millis;
use crate::amqp::request_response::application_string;
use fe2o3_amqp_types::messaging::{Body, Message};
use fe2o3_amqp_types::primitives::{OrderedMap, Timestamp, Value};
use twinhub_hub::EventLog;

/// What a READ asks for.
#[derive(Debug, PartialEq, Eq)]
pub enum ReadRequest {
    EventHub,
    Partition(String),
}

/// The event hub a request names, and its operation; or the status and description it is refused with.
pub fn read_request(request: &Message<Body<Value>>) -> Result<(String, ReadRequest), (i32, String)> {
    let text = |key: &str| application_string(request, key);
    if text("operation").as_deref() != Some("READ") {
        return Err((400, "only READ is supported on $management".into()));
    }
    let name = text("name").unwrap_or_default();
    Ok((name, read_kind(request)?))
}

fn read_kind(request: &Message<Body<Value>>) -> Result<ReadRequest, (i32, String)> {
    let text = |key: &str| application_string(request, key);
    match text("type").as_deref() {
        Some("com.microsoft:eventhub") => Ok(ReadRequest::EventHub),
        Some("com.microsoft:partition") => text("partition")
            .map(ReadRequest::Partition)
            .ok_or_else(|| (400, "a partition READ names no partition".into())),
        other => Err((400, format!("unknown management type {other:?}"))),
    }
}

/// The reply body for `read`, or the status and description it is refused with.
pub fn read(log: &EventLog, hub_name: &str, read: &ReadRequest) -> Result<Value, (i32, String)> {
    let mut map = OrderedMap::new();
    let mut put = |key: &str, value: Value| {
        map.insert(Value::String(key.into()), value);
    };
    match read {
        ReadRequest::EventHub => {
            put("name", Value::String(hub_name.into()));
            put(
                "created_at",
                Value::Timestamp(Timestamp::from_milliseconds(millis(log.created))),
            );
            put("partition_count", Value::Int(i32::from(log.partition_count())));
            put(
                "partition_ids",
                Value::List(
                    (0..log.partition_count())
                        .map(|id| Value::String(id.to_string()))
                        .collect(),
                ),
            );
        }
        ReadRequest::Partition(partition) => {
            let state = partition
                .parse::<u16>()
                .ok()
                .and_then(|id| log.watch(id))
                .map(|watch| *watch.borrow())
                .ok_or_else(|| (404, format!("the partition '{partition}' does not exist")))?;
            let last = state.next.checked_sub(1).filter(|_| !state.is_empty());
            put("name", Value::String(hub_name.into()));
            put("partition", Value::String(partition.clone()));
            put("begin_sequence_number", Value::Long(to_long(state.first)));
            put("last_enqueued_sequence_number", Value::Long(last.map_or(-1, to_long)));
            put(
                "last_enqueued_offset",
                Value::String(last.map_or_else(|| "-1".to_owned(), |last| last.to_string())),
            );
            put(
                "last_enqueued_time_utc",
                Value::Timestamp(Timestamp::from_milliseconds(state.last_enqueued.map_or(0, millis))),
            );
            put("is_partition_empty", Value::Bool(state.is_empty()));
        }
    }
    Ok(Value::Map(map))
}

fn to_long(number: u64) -> i64 {
    i64::try_from(number).unwrap_or(i64::MAX)
}
