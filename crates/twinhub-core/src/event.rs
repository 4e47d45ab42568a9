//! A device-to-cloud event (telemetry) as the hub keeps it and hands it to Event Hubs consumers: the body,
//! the message properties the device set, its application properties, and the annotations the hub adds.
//! Transports build one from their own wire form (an MQTT property bag, an AMQP message, HTTP headers);
//! the Event Hubs endpoint writes it back out as an AMQP message. No protocol details here: values keep
//! the few types the transports can carry, so an AMQP device's `uuid` message id reaches consumers as one.

use crate::ids::DeviceId;
use crate::time::Timestamp;
use serde::{Deserialize, Serialize};

/// IoT Hub's limit on a device-to-cloud message (an HTTP batch included): body and properties.
pub const MESSAGE_BYTES_MAX: usize = 256 * 1024;

/// The partition a device's events go to: a stable hash of its id, so each device's events keep their
/// order (one partition) across restarts.
pub fn partition_of(device_id: &DeviceId, partition_count: u16) -> u16 {
    let hash = xxhash_rust::xxh3::xxh3_64(device_id.as_str().as_bytes());
    (hash % u64::from(partition_count.max(1))) as u16
}

/// A property or annotation value.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum EventValue {
    Null,
    Bool(bool),
    Long(i64),
    ULong(u64),
    Double(f64),
    String(String),
    /// An AMQP symbol (content type and encoding are symbols on the Event Hubs wire).
    Symbol(String),
    Uuid([u8; 16]),
    Binary(Vec<u8>),
    /// Milliseconds since the Unix epoch (AMQP's timestamp).
    Timestamp(i64),
}

/// The message properties a device may set (the AMQP properties section, MQTT's `$.mid` and friends,
/// HTTP's `IoTHub-MessageId` and friends).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct EventProperties {
    pub message_id: Option<EventValue>,
    pub correlation_id: Option<EventValue>,
    pub user_id: Option<Vec<u8>>,
    pub content_type: Option<String>,
    pub content_encoding: Option<String>,
    /// AMQP `creation-time`, ms since the epoch.
    pub creation_time: Option<i64>,
    pub absolute_expiry_time: Option<i64>,
}

/// An event as a device sent it, before the hub stamps it.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct DeviceEvent {
    /// Stored as postcard's byte string (a length, then the bytes) in one copy: the same bytes as a
    /// sequence of `u8`, which serde would otherwise encode and decode a byte at a time.
    #[serde(with = "serde_bytes")]
    pub body: Vec<u8>,
    pub properties: EventProperties,
    /// Application properties, in the order the device gave them.
    pub application_properties: Vec<(String, EventValue)>,
    /// Annotations a device may set itself (`iothub-interface-id`, `dt-subject`, `dt-dataschema`).
    pub annotations: Vec<(String, EventValue)>,
}

/// Who sent an event, as the hub authenticated it: what consumers see as the `iothub-connection-*`
/// annotations (stamped by the hub, so a device cannot pass itself off as another).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EventOrigin {
    pub device_id: DeviceId,
    pub module_id: Option<String>,
    /// The device's generation id when it sent the event.
    pub generation_id: String,
}

/// An event as stored in a partition: what the device sent plus what the hub knows of it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StoredEvent {
    /// Contiguous per partition from 0; also the event's offset (as a decimal string on the wire).
    pub sequence_number: u64,
    /// When the hub made it durable (`iothub-enqueuedtime`, `x-opt-enqueued-time`).
    pub enqueued_time: Timestamp,
    pub origin: EventOrigin,
    pub event: DeviceEvent,
}

/// Refuses messages sent together (an HTTPS batch, or one message) over IoT Hub's size limit, which
/// counts a batch as one message.
pub fn check_size(events: &[DeviceEvent]) -> Result<(), MessageTooLarge> {
    let size = events.iter().map(DeviceEvent::size).sum();
    if size > MESSAGE_BYTES_MAX {
        return Err(MessageTooLarge { size });
    }
    Ok(())
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("the message is {size} bytes with its properties, more than the {MESSAGE_BYTES_MAX} bytes IoT Hub allows")]
pub struct MessageTooLarge {
    pub size: usize,
}

impl DeviceEvent {
    /// Refuses a message over IoT Hub's size limit.
    pub fn check_size(&self) -> Result<(), MessageTooLarge> {
        check_size(std::slice::from_ref(self))
    }

    /// Bytes it counts for against IoT Hub's 256 KB message limit: the body, the properties and the
    /// application properties (names and values).
    pub fn size(&self) -> usize {
        let value_size = |value: &EventValue| match value {
            EventValue::String(text) | EventValue::Symbol(text) => text.len(),
            EventValue::Binary(bytes) => bytes.len(),
            EventValue::Uuid(_) => 16,
            _ => 8,
        };
        let properties = &self.properties;
        self.body.len()
            + properties.message_id.as_ref().map_or(0, value_size)
            + properties.correlation_id.as_ref().map_or(0, value_size)
            + properties.user_id.as_ref().map_or(0, Vec::len)
            + properties.content_type.as_ref().map_or(0, String::len)
            + properties.content_encoding.as_ref().map_or(0, String::len)
            + self
                .application_properties
                .iter()
                .chain(&self.annotations)
                .map(|(name, value)| name.len() + value_size(value))
                .sum::<usize>()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_device_always_lands_in_the_same_partition_and_devices_spread() {
        let id = |n: usize| DeviceId::new(&format!("device-{n}")).unwrap();
        assert_eq!(partition_of(&id(1), 4), partition_of(&id(1), 4));
        let mut counts = [0usize; 4];
        for n in 0..4000 {
            counts[usize::from(partition_of(&id(n), 4))] += 1;
        }
        assert!(counts.iter().all(|&count| count > 800), "{counts:?}");
        assert_eq!(partition_of(&id(1), 1), 0);
    }

    #[test]
    fn the_size_limit_counts_body_and_properties() {
        let mut event = DeviceEvent {
            body: vec![0; MESSAGE_BYTES_MAX - 10],
            ..DeviceEvent::default()
        };
        assert!(event.check_size().is_ok());
        event
            .application_properties
            .push(("name".into(), EventValue::String("a long value".into())));
        assert_eq!(
            event.check_size(),
            Err(MessageTooLarge {
                size: MESSAGE_BYTES_MAX + 6
            })
        );
    }
}
