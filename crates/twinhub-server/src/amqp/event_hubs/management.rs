//! `$management` READ requests: the event hub (`com.microsoft:eventhub`: name, creation time, partition ids)
//! and a partition (`com.microsoft:partition`: its sequence numbers, last offset and time, emptiness). The
//! reply is an amqp-value map with the exact keys and types both SDKs read, every key always present.
//! A request is authorized by its own `security_token` (Python, and Node) or by a CBS token of the
//! connection that covers the hub. Ref: eventhubs-endpoint notes §4.

use super::message::millis;
use fe2o3_amqp_types::messaging::{AmqpValue, ApplicationProperties, Body, Message, Properties};
use fe2o3_amqp_types::primitives::{OrderedMap, SimpleValue, Timestamp, Value};
use twinhub_hub::EventLog;

/// What a READ asks for.
#[derive(Debug, PartialEq, Eq)]
pub enum ReadRequest {
    EventHub,
    Partition(String),
}

/// The request's operation, or the status and description it is refused with.
pub fn read_request(request: &Message<Body<Value>>, hub_name: &str) -> Result<ReadRequest, (i32, String)> {
    let text = |key: &str| application_string(request, key);
    if text("operation").as_deref() != Some("READ") {
        return Err((400, "only READ is supported on $management".into()));
    }
    if !text("name").is_some_and(|name| name.eq_ignore_ascii_case(hub_name)) {
        return Err((
            404,
            format!(
                "The messaging entity '{}' could not be found",
                text("name").unwrap_or_default()
            ),
        ));
    }
    match text("type").as_deref() {
        Some("com.microsoft:eventhub") => Ok(ReadRequest::EventHub),
        Some("com.microsoft:partition") => text("partition")
            .map(ReadRequest::Partition)
            .ok_or_else(|| (400, "a partition READ names no partition".into())),
        other => Err((400, format!("unknown management type {other:?}"))),
    }
}

pub fn application_string(message: &Message<Body<Value>>, key: &str) -> Option<String> {
    match message.application_properties.as_ref()?.0.get(key)? {
        SimpleValue::String(text) => Some(text.clone()),
        SimpleValue::Symbol(symbol) => Some(symbol.as_str().to_owned()),
        _ => None,
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

/// The reply to `request`: its message-id as correlation-id (same AMQP type), the int status and the
/// description each under both names the SDKs read, and the body (a map) on success.
pub fn response(
    request: &Message<Body<Value>>,
    status: i32,
    description: &str,
    body: Option<Value>,
) -> Message<Body<Value>> {
    let request_properties = request.properties.as_ref();
    let properties = Properties {
        correlation_id: request_properties.and_then(|p| p.message_id.clone()),
        to: request_properties.and_then(|p| p.reply_to.clone()),
        ..Properties::default()
    };
    let application_properties = ApplicationProperties::builder()
        .insert("status-code", SimpleValue::Int(status))
        // pyamqp's management link reads `statusCode` and `statusDescription` (its defaults, which the
        // Event Hubs client's own names never reach), Node the hyphenated ones.
        .insert("statusCode", SimpleValue::Int(status))
        .insert("status-description", SimpleValue::String(description.to_owned()))
        .insert("statusDescription", SimpleValue::String(description.to_owned()))
        .build();
    Message::builder()
        .properties(properties)
        .application_properties(application_properties)
        .body(match body {
            Some(value) => Body::Value(AmqpValue(value)),
            None => Body::Empty,
        })
        .build()
}
