//! The property bag of an MQTT topic: URL-encoded `key=value` pairs joined by `&`, where `$.`-prefixed keys
//! are IoT Hub's system properties. A telemetry topic's (`devices/{id}/messages/events/{bag}`) becomes an
//! event (ref: eventhubs-endpoint notes §7; both SDKs percent-encode keys too, `%24.mid=`, so keys are
//! decoded before they are matched); a cloud-to-device message becomes the bag of its topic
//! (`devices/{id}/messages/devicebound/{bag}`, the slash before the bag always there: Node drops a message
//! without it).

use twinhub_core::event::{DeviceEvent, EventValue};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("malformed property bag '{bag}': {reason}")]
pub struct MalformedBag {
    pub bag: String,
    pub reason: &'static str,
}

/// The event a PUBLISH carries: its payload and the properties its topic's bag names.
pub fn event(bag: &str, payload: &[u8], retain: bool) -> Result<DeviceEvent, MalformedBag> {
    let mut event = DeviceEvent {
        body: payload.to_vec(),
        ..DeviceEvent::default()
    };
    let malformed = |reason| MalformedBag {
        bag: bag.to_owned(),
        reason,
    };
    for pair in bag.trim_matches('/').split('&').filter(|pair| !pair.is_empty()) {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        let key = decode(key).ok_or_else(|| malformed("a key is not valid percent-encoded UTF-8"))?;
        let value = decode(value).ok_or_else(|| malformed("a value is not valid percent-encoded UTF-8"))?;
        if key.is_empty() {
            return Err(malformed("a property has no name"));
        }
        let properties = &mut event.properties;
        match key.as_str() {
            "$.mid" => properties.message_id = Some(EventValue::String(value)),
            "$.cid" => properties.correlation_id = Some(EventValue::String(value)),
            "$.uid" => properties.user_id = Some(value.into_bytes()),
            "$.ct" => properties.content_type = Some(value),
            "$.ce" => properties.content_encoding = Some(value),
            "$.ifid" => event
                .annotations
                .push(("iothub-interface-id".into(), EventValue::String(value))),
            "$.sub" => event.annotations.push(("dt-subject".into(), EventValue::String(value))),
            "$.schema" => event
                .annotations
                .push(("dt-dataschema".into(), EventValue::String(value))),
            // `$.to`, `$.exp`, `$.on` (an edge module's output) and system keys IoT Hub does not forward.
            system if system.starts_with("$.") => {}
            _ => event.application_properties.push((key, EventValue::String(value))),
        }
    }
    if retain {
        event
            .application_properties
            .push(("mqtt-retain".into(), EventValue::String("true".into())));
    }
    Ok(event)
}

/// The topic a cloud-to-device message is published on: its system properties (`$.mid`, `$.cid`, `$.uid`,
/// `$.to`, `$.ct`, `$.ce`, `$.exp`), `iothub-ack`, then its application properties, each percent-encoded.
pub fn cloud_to_device_topic(device_id: &str, queued: &twinhub_core::c2d::QueuedMessage) -> String {
    let message = &queued.message;
    let to = format!("/devices/{device_id}/messages/devicebound");
    let expiry = queued.expiry.to_iso8601();
    let ack = match message.ack {
        twinhub_core::c2d::Ack::None => None,
        twinhub_core::c2d::Ack::Positive => Some("positive"),
        twinhub_core::c2d::Ack::Negative => Some("negative"),
        twinhub_core::c2d::Ack::Full => Some("full"),
    };
    let system = [
        ("$.mid", message.message_id.as_deref()),
        ("$.cid", message.correlation_id.as_deref()),
        ("$.uid", message.user_id.as_deref()),
        ("$.to", Some(to.as_str())),
        ("$.ct", message.content_type.as_deref()),
        ("$.ce", message.content_encoding.as_deref()),
        ("$.exp", Some(expiry.as_str())),
        ("iothub-ack", ack),
    ];
    let pairs = system
        .into_iter()
        .filter_map(|(key, value)| value.map(|value| (key, value)))
        .chain(
            message
                .properties
                .iter()
                .map(|(key, value)| (key.as_str(), value.as_str())),
        )
        .map(|(key, value)| format!("{}={}", encode(key), encode(value)))
        .collect::<Vec<_>>()
        .join("&");
    format!("devices/{device_id}/messages/devicebound/{pairs}")
}

/// Percent-encodes all but what `encodeURIComponent` leaves alone, so any SDK decodes it back.
fn encode(text: &str) -> String {
    const COMPONENT: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
        .remove(b'-')
        .remove(b'_')
        .remove(b'.')
        .remove(b'!')
        .remove(b'~')
        .remove(b'*')
        .remove(b'\'')
        .remove(b'(')
        .remove(b')');
    percent_encoding::utf8_percent_encode(text, COMPONENT).to_string()
}

fn decode(text: &str) -> Option<String> {
    percent_encoding::percent_decode_str(text)
        .decode_utf8()
        .ok()
        .map(|decoded| decoded.into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn system_and_application_properties_as_the_sdks_encode_them() {
        // Node (querystring) and Python (urllib.quote) both encode the `$`.
        let event = event(
            "%24.mid=m%201&%24.cid=c1&%24.ct=application%2Fjson&%24.ce=utf-8&%24.uid=u&%24.to=%2Fdevices%2Fx&temperatureAlert=true&%24.sub=thermostat1&empty=&iothub-creation-time-utc=2026-11-29T10%3A00%3A00Z/",
            b"{}",
            false,
        )
        .unwrap();
        let properties = &event.properties;
        assert_eq!(properties.message_id, Some(EventValue::String("m 1".into())));
        assert_eq!(properties.correlation_id, Some(EventValue::String("c1".into())));
        assert_eq!(properties.content_type.as_deref(), Some("application/json"));
        assert_eq!(properties.content_encoding.as_deref(), Some("utf-8"));
        assert_eq!(properties.user_id.as_deref(), Some(&b"u"[..]));
        assert_eq!(
            event.application_properties,
            vec![
                ("temperatureAlert".into(), EventValue::String("true".into())),
                ("empty".into(), EventValue::String(String::new())),
                (
                    "iothub-creation-time-utc".into(),
                    EventValue::String("2026-11-29T10:00:00Z".into())
                ),
            ]
        );
        assert_eq!(
            event.annotations,
            vec![("dt-subject".into(), EventValue::String("thermostat1".into()))]
        );
        assert_eq!(event.body, b"{}");
    }

    #[test]
    fn an_empty_bag_and_retain() {
        for bag in ["", "/", "/a=1"] {
            let event = event(bag, b"x", true).unwrap();
            assert_eq!(
                event.application_properties.last(),
                Some(&("mqtt-retain".into(), EventValue::String("true".into())))
            );
        }
    }

    #[test]
    fn a_cloud_to_device_topic_carries_every_property_encoded() {
        use twinhub_core::c2d::{Ack, OutgoingMessage, QueuedMessage};
        let queued = QueuedMessage {
            sequence_number: 3,
            enqueued_time: twinhub_core::Timestamp(0),
            expiry: twinhub_core::Timestamp(1_704_067_200_000_000_000),
            delivery_count: 1,
            lock: None,
            message: OutgoingMessage {
                message_id: Some("m 1".into()),
                correlation_id: Some("c&1".into()),
                content_type: Some("application/json".into()),
                ack: Ack::Full,
                properties: vec![("temp=x".into(), "21/5".into())],
                ..OutgoingMessage::default()
            },
        };
        assert_eq!(
            cloud_to_device_topic("d1", &queued),
            "devices/d1/messages/devicebound/%24.mid=m%201&%24.cid=c%261&%24.to=%2Fdevices%2Fd1%2Fmessages%2Fdevicebound\
             &%24.ct=application%2Fjson&%24.exp=2024-01-01T00%3A00%3A00.0000000Z&iothub-ack=full&temp%3Dx=21%2F5"
        );
    }

    #[test]
    fn malformed_bags_are_refused() {
        for bag in ["%ff=1", "a=%c3%28", "=value"] {
            assert!(event(bag, b"", false).is_err(), "{bag}");
        }
    }
}
