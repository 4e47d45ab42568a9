//! The hub's own messages, as IoT Hub emits them to routes: twin change notifications, device lifecycle
//! and connection state events. Each is an event like telemetry (so the same endpoints carry it) in IoT
//! Hub's shared form: a UTF-8 JSON body; `content-type` `application/json`, `content-encoding` `utf-8`, a
//! unique `correlation-id`, `user-id` the hub's name; application properties `hubName`, `deviceId`,
//! (`moduleId`), `operationTimestamp`, `iothub-message-schema`, `opType`; the annotation
//! `iothub-message-source`. Ref: eventhubs-endpoint notes §9.

use crate::event::{DeviceEvent, EventOrigin, EventProperties, EventValue};
use crate::routing::RoutingSource;
use crate::twin::{JsonMap, Twin};
use crate::Timestamp;
use serde_json::Value;
use std::sync::atomic::{AtomicU64, Ordering};

/// A message the hub itself sends, with the source routes take it from.
#[derive(Clone, Debug, PartialEq)]
pub struct HubMessage {
    pub source: RoutingSource,
    pub origin: EventOrigin,
    pub event: DeviceEvent,
}

/// A twin change notification's `opType`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TwinOperation {
    /// A patch: tags or desired from a back end, reported from a device.
    Update,
    /// A back end's replacement of tags and desired.
    Replace,
}

/// What changed in one twin version, for an `updateTwin` body: each part is the patch as applied (a
/// `null` member was removed).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct TwinChanges<'a> {
    pub tags: Option<&'a JsonMap>,
    pub desired: Option<&'a JsonMap>,
    pub reported: Option<&'a JsonMap>,
}

/// Makes the hub's messages: knows the hub's name and numbers connection state events.
#[derive(Debug)]
pub struct HubMessages {
    hub_name: String,
    /// The low half of connection state sequence numbers, so two events in the same tick still order.
    counter: AtomicU64,
}

impl HubMessages {
    pub fn new(hub_name: &str) -> HubMessages {
        HubMessages {
            hub_name: hub_name.to_owned(),
            counter: AtomicU64::new(0),
        }
    }

    /// A twin change notification. `Update`: `{"version", "tags"?, "properties": {"desired"?, "reported"?}}`
    /// with each changed member's new value, and for properties their `$metadata` and `$version`.
    /// `Replace`: the whole twin document (`replaced`).
    pub fn twin_change(
        &self,
        origin: EventOrigin,
        operation: TwinOperation,
        twin: &Twin,
        changes: &TwinChanges,
        replaced: Option<Value>,
        at: Timestamp,
    ) -> HubMessage {
        let (op_type, body) = match (operation, replaced) {
            (TwinOperation::Replace, Some(document)) => ("replaceTwin", document),
            _ => ("updateTwin", update_body(twin, changes)),
        };
        self.message(
            RoutingSource::TwinChangeEvents,
            "twinChangeNotification",
            op_type,
            origin,
            &body,
            at,
        )
    }

    /// `createDeviceIdentity` or `deleteDeviceIdentity`, with the twin document as the body.
    pub fn lifecycle(&self, origin: EventOrigin, created: bool, twin_document: &Value, at: Timestamp) -> HubMessage {
        let op_type = if created {
            "createDeviceIdentity"
        } else {
            "deleteDeviceIdentity"
        };
        self.message(
            RoutingSource::DeviceLifecycleEvents,
            "deviceLifecycleNotification",
            op_type,
            origin,
            twin_document,
            at,
        )
    }

    /// `deviceConnected` or `deviceDisconnected`; the body's `sequenceNumber` (64 hex digits) grows with
    /// every event, so a consumer orders a device's events by comparing it as a string.
    pub fn connection_state(&self, origin: EventOrigin, connected: bool, at: Timestamp) -> HubMessage {
        let op_type = if connected {
            "deviceConnected"
        } else {
            "deviceDisconnected"
        };
        let count = self.counter.fetch_add(1, Ordering::Relaxed);
        let body = serde_json::json!({ "sequenceNumber": format!("{:032X}{:032X}", at.0.max(0), count) });
        self.message(
            RoutingSource::DeviceConnectionStateEvents,
            "deviceConnectionStateNotification",
            op_type,
            origin,
            &body,
            at,
        )
    }

    fn message(
        &self,
        source: RoutingSource,
        schema: &str,
        op_type: &str,
        origin: EventOrigin,
        body: &Value,
        at: Timestamp,
    ) -> HubMessage {
        let string = |text: &str| EventValue::String(text.to_owned());
        let mut application_properties = vec![
            ("hubName".to_owned(), string(&self.hub_name)),
            ("deviceId".to_owned(), string(origin.device_id.as_str())),
        ];
        if let Some(module_id) = &origin.module_id {
            application_properties.push(("moduleId".to_owned(), string(module_id)));
        }
        application_properties.extend([
            ("operationTimestamp".to_owned(), string(&at.to_iso8601())),
            ("iothub-message-schema".to_owned(), string(schema)),
            ("opType".to_owned(), string(op_type)),
        ]);
        let correlation_id = format!("{:016x}", rand::random::<u64>());
        HubMessage {
            source,
            event: DeviceEvent {
                body: body.to_string().into_bytes(),
                properties: EventProperties {
                    correlation_id: Some(EventValue::String(correlation_id)),
                    user_id: Some(self.hub_name.as_bytes().to_vec()),
                    content_type: Some("application/json".into()),
                    content_encoding: Some("utf-8".into()),
                    ..EventProperties::default()
                },
                application_properties,
                annotations: vec![(
                    "iothub-message-source".to_owned(),
                    EventValue::String(source.message_source().into()),
                )],
            },
            origin,
        }
    }
}

/// An `updateTwin` body: what changed, as the new twin has it.
fn update_body(twin: &Twin, changes: &TwinChanges) -> Value {
    let mut body = serde_json::Map::new();
    body.insert("version".into(), Value::from(twin.version));
    if let Some(tags) = changes.tags {
        let all = Value::Object(twin.tags.to_json());
        body.insert("tags".into(), changed_values(&all, tags));
    }
    let mut properties = serde_json::Map::new();
    if let Some(desired) = changes.desired {
        properties.insert("desired".into(), changed_section(&twin.desired.to_json(true), desired));
    }
    if let Some(reported) = changes.reported {
        properties.insert(
            "reported".into(),
            changed_section(&twin.reported.to_json(false), reported),
        );
    }
    if !properties.is_empty() {
        body.insert("properties".into(), Value::Object(properties));
    }
    Value::Object(body)
}

/// The members `patch` names, with their values in `all` (`null` where they are gone).
fn changed_values(all: &Value, patch: &JsonMap) -> Value {
    let members = patch
        .iter()
        .map(|(key, patched)| {
            let now = all.get(key);
            let value = match (now, patched) {
                (Some(now @ Value::Object(_)), Value::Object(inner)) => changed_values(now, inner),
                (Some(now), _) => now.clone(),
                (None, _) => Value::Null,
            };
            (key.clone(), value)
        })
        .collect();
    Value::Object(members)
}

/// A section's changed members, their `$metadata` and the section's `$version`.
fn changed_section(section: &Value, patch: &JsonMap) -> Value {
    let mut changed = match changed_values(section, patch) {
        Value::Object(members) => members,
        _ => serde_json::Map::new(),
    };
    if let Some(metadata) = section.get("$metadata") {
        changed.insert("$metadata".into(), changed_metadata(metadata, patch));
    }
    if let Some(version) = section.get("$version") {
        changed.insert("$version".into(), version.clone());
    }
    Value::Object(changed)
}

/// The metadata of the members `patch` names: each level's own `$lastUpdated` (and
/// `$lastUpdatedVersion`), then the changed members below it.
fn changed_metadata(metadata: &Value, patch: &JsonMap) -> Value {
    let mut changed: serde_json::Map<String, Value> = metadata
        .as_object()
        .map(|members| {
            members
                .iter()
                .filter(|(key, _)| key.starts_with('$'))
                .map(|(key, value)| (key.clone(), value.clone()))
                .collect()
        })
        .unwrap_or_default();
    for (key, patched) in patch {
        let Some(below) = metadata.get(key) else {
            continue;
        };
        let value = match patched {
            Value::Object(inner) => changed_metadata(below, inner),
            _ => below.clone(),
        };
        changed.insert(key.clone(), value);
    }
    Value::Object(changed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::twin::{ReportedPatch, TwinPatch};
    use crate::{DeviceId, TwinRules};
    use serde_json::json;

    fn origin() -> EventOrigin {
        EventOrigin {
            device_id: DeviceId::new("d1").unwrap(),
            module_id: None,
            generation_id: "g".into(),
        }
    }

    fn property<'a>(message: &'a HubMessage, name: &str) -> Option<&'a EventValue> {
        message
            .event
            .application_properties
            .iter()
            .find(|(key, _)| key == name)
            .map(|(_, value)| value)
    }

    #[test]
    fn an_update_carries_the_changed_members_with_their_metadata() {
        let rules = TwinRules::default();
        let at = Timestamp(1_700_000_000_000_000_000);
        let patch =
            json!({"tags": {"plant": "north"}, "properties": {"desired": {"fan": {"speed": 3}, "mode": "eco"}}});
        let (twin, change) = Twin::new(at)
            .patched(&TwinPatch::from_json(&patch, &rules).unwrap(), at, &rules)
            .unwrap();
        let tags = json!({"plant": "north"});
        let tags = tags.as_object().unwrap();
        let change = change.unwrap();
        let changes = TwinChanges {
            tags: Some(tags),
            desired: Some(&change.patch),
            reported: None,
        };
        let messages = HubMessages::new("myhub");
        let message = messages.twin_change(origin(), TwinOperation::Update, &twin, &changes, None, at);
        let body: Value = serde_json::from_slice(&message.event.body).unwrap();
        assert_eq!(body["version"], json!(2));
        assert_eq!(body["tags"], json!({"plant": "north"}));
        let desired = &body["properties"]["desired"];
        assert_eq!(desired["fan"], json!({"speed": 3}));
        assert_eq!(desired["mode"], json!("eco"));
        assert_eq!(desired["$version"], json!(2));
        assert_eq!(desired["$metadata"]["fan"]["speed"]["$lastUpdatedVersion"], json!(2));
        assert!(desired["$metadata"]["$lastUpdated"].is_string());
        assert!(body["properties"].get("reported").is_none());
        assert_eq!(
            property(&message, "opType"),
            Some(&EventValue::String("updateTwin".into()))
        );
        assert_eq!(
            property(&message, "iothub-message-schema"),
            Some(&EventValue::String("twinChangeNotification".into()))
        );
        assert_eq!(property(&message, "hubName"), Some(&EventValue::String("myhub".into())));
        assert_eq!(
            message.event.properties.content_type.as_deref(),
            Some("application/json")
        );
        assert_eq!(
            message.event.annotations,
            vec![(
                "iothub-message-source".into(),
                EventValue::String("twinChangeEvents".into())
            )]
        );

        let reported = json!({"temp": 21, "old": null});
        let reported = ReportedPatch::from_json(&reported, &rules).unwrap();
        let twin = twin.with_reported(&reported, at, &rules).unwrap();
        let changes = TwinChanges {
            reported: Some(&reported.0),
            ..TwinChanges::default()
        };
        let message = messages.twin_change(origin(), TwinOperation::Update, &twin, &changes, None, at);
        let body: Value = serde_json::from_slice(&message.event.body).unwrap();
        assert_eq!(body["version"], json!(3));
        assert_eq!(body["properties"]["reported"]["temp"], json!(21));
        assert_eq!(body["properties"]["reported"]["old"], Value::Null);
        assert_eq!(body["properties"]["reported"]["$version"], json!(2));
        assert!(body["properties"]["reported"]["$metadata"]["temp"]["$lastUpdated"].is_string());
    }

    #[test]
    fn connection_state_sequence_numbers_grow_as_strings() {
        let messages = HubMessages::new("myhub");
        let sequence = |message: HubMessage| {
            let body: Value = serde_json::from_slice(&message.event.body).unwrap();
            body["sequenceNumber"].as_str().unwrap().to_owned()
        };
        let first = sequence(messages.connection_state(origin(), true, Timestamp(5)));
        let second = sequence(messages.connection_state(origin(), false, Timestamp(5)));
        let third = sequence(messages.connection_state(origin(), true, Timestamp(6)));
        assert_eq!(first.len(), 64);
        assert!(first < second && second < third, "{first} {second} {third}");
    }
}
