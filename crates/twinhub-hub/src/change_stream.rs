//! The live change stream for back ends: every committed change of a device or module twin (twin,
//! connection state, identity), every deletion, and every device-to-cloud message once it is durable,
//! numbered in the order this node saw them. The service API serves it as server-sent events
//! (`GET /twinhub/stream`); the web console lives on it.
//!
//! The hub never waits for a reader: events go to a broadcast channel of bounded capacity, and a reader
//! that falls further behind than that is told to resynchronise (read the state afresh) instead. The last
//! events are kept so that a reader that reconnects with the last number it saw gets what it missed, or a
//! resync when that is no longer kept. Events are built only while someone reads: a hub nobody watches
//! pays nothing.

use crate::Snapshot;
use serde_json::{json, Value};
use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use tokio::sync::broadcast;
use twinhub_core::event::{DeviceEvent, EventValue};
use twinhub_core::{DeviceId, ModuleId};

/// Events a reader may be behind by before it is told to resync; also how many are kept for readers
/// that reconnect.
pub const STREAM_BUFFER_EVENTS: usize = 4096;
/// How long after its last reader left the stream is still built, so that a reader that reconnects finds
/// what it missed.
pub const RESUME_WINDOW: std::time::Duration = std::time::Duration::from_secs(60);

/// One event of the stream.
#[derive(Debug)]
pub struct StreamEvent {
    /// Its number on this node: increasing, the resume point a reader gives back.
    pub id: u64,
    /// `twin`, `deleted` or `telemetry`.
    pub kind: &'static str,
    /// The event's JSON document.
    pub data: String,
}

/// What a new reader starts from.
pub struct Subscription {
    /// Events it missed since the number it gave, to send first.
    pub missed: Vec<Arc<StreamEvent>>,
    /// Its resume point is older than what is kept: it must read the state afresh.
    pub resync: bool,
    pub live: broadcast::Receiver<Arc<StreamEvent>>,
}

pub struct ChangeStream {
    sender: broadcast::Sender<Arc<StreamEvent>>,
    /// The last events (numbered, in order) and the next number; publishing holds the lock so the
    /// numbers, the kept events and the broadcast agree.
    recent: Mutex<(VecDeque<Arc<StreamEvent>>, u64)>,
    /// When a reader was last there (milliseconds since `started`).
    last_read_ms: std::sync::atomic::AtomicU64,
    started: std::time::Instant,
}

impl Default for ChangeStream {
    fn default() -> Self {
        let (sender, _) = broadcast::channel(STREAM_BUFFER_EVENTS);
        ChangeStream {
            sender,
            recent: Mutex::new((VecDeque::with_capacity(STREAM_BUFFER_EVENTS), 1)),
            last_read_ms: std::sync::atomic::AtomicU64::new(0),
            started: std::time::Instant::now(),
        }
    }
}

impl ChangeStream {
    /// Whether anyone reads the stream, or did within the resume window (events are built only then).
    pub fn is_watched(&self) -> bool {
        use std::sync::atomic::Ordering;
        let now = self.started.elapsed().as_millis() as u64;
        if self.sender.receiver_count() > 0 {
            self.last_read_ms.store(now, Ordering::Relaxed);
            return true;
        }
        let last = self.last_read_ms.load(Ordering::Relaxed);
        last > 0 && now.saturating_sub(last) < RESUME_WINDOW.as_millis() as u64
    }

    fn publish(&self, kind: &'static str, data: String) {
        let mut recent = self.recent.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let (kept, next) = &mut *recent;
        let event = Arc::new(StreamEvent { id: *next, kind, data });
        *next += 1;
        if kept.len() == STREAM_BUFFER_EVENTS {
            kept.pop_front();
        }
        kept.push_back(Arc::clone(&event));
        // No reader: nothing to do (a reader that comes later starts from the kept events).
        let _ = self.sender.send(event);
    }

    /// The number of the last event published (0: none yet).
    pub fn last_id(&self) -> u64 {
        let recent = self.recent.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        recent.1 - 1
    }

    /// A new reader, resuming after event `after` when it gives one.
    pub fn subscribe(&self, after: Option<u64>) -> Subscription {
        let recent = self.recent.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let live = self.sender.subscribe();
        self.is_watched();
        let (kept, next) = &*recent;
        let Some(after) = after else {
            return Subscription {
                missed: Vec::new(),
                resync: false,
                live,
            };
        };
        let oldest = kept.front().map_or(*next, |event| event.id);
        // Every event after `after` is kept when the first of them is (or none happened since).
        let resync = after.saturating_add(1) < oldest || after >= *next;
        let missed = if resync {
            Vec::new()
        } else {
            kept.iter().filter(|event| event.id > after).cloned().collect()
        };
        Subscription { missed, resync, live }
    }

    /// The changes a commit made: each device and module twin it touched, as it is now (or deleted).
    pub(crate) fn publish_changes(&self, snapshot: &Snapshot, devices: &[DeviceId], modules: &[(DeviceId, ModuleId)]) {
        for device_id in devices {
            match snapshot.devices.get(device_id) {
                Some(record) => {
                    let twin = twinhub_core::json::twin_json_text(record);
                    self.publish(
                        "twin",
                        format!(r#"{{"deviceId":{},"twin":{twin}}}"#, Value::from(device_id.as_str())),
                    );
                }
                None => self.publish("deleted", json!({"deviceId": device_id.as_str()}).to_string()),
            }
        }
        for key in modules {
            let (device_id, module_id) = key;
            match snapshot.modules.get(key) {
                Some(module) => {
                    let twin = twinhub_core::module::module_twin_json(module);
                    let data = json!({"deviceId": device_id.as_str(), "moduleId": module_id.as_str(), "twin": twin});
                    self.publish("twin", data.to_string());
                }
                None => self.publish(
                    "deleted",
                    json!({"deviceId": device_id.as_str(), "moduleId": module_id.as_str()}).to_string(),
                ),
            }
        }
    }

    /// Device-to-cloud messages a device sent, once durable.
    pub(crate) fn publish_telemetry(&self, device_id: &DeviceId, module_id: Option<&str>, events: &[DeviceEvent]) {
        for event in events {
            let body = match std::str::from_utf8(&event.body) {
                Ok(text) => serde_json::from_str::<Value>(text).unwrap_or_else(|_| Value::from(text)),
                Err(_) => json!({"base64": base64_of(&event.body)}),
            };
            let properties: serde_json::Map<String, Value> = event
                .application_properties
                .iter()
                .map(|(name, value)| (name.clone(), json_of(value)))
                .collect();
            let data = json!({
                "deviceId": device_id.as_str(),
                "moduleId": module_id,
                "enqueuedTime": twinhub_core::Timestamp::now().to_iso8601(),
                "properties": properties,
                "body": body,
            });
            self.publish("telemetry", data.to_string());
        }
    }
}

fn base64_of(bytes: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

fn json_of(value: &EventValue) -> Value {
    match value {
        EventValue::Null => Value::Null,
        EventValue::Bool(b) => Value::from(*b),
        EventValue::Long(n) | EventValue::Timestamp(n) => Value::from(*n),
        EventValue::ULong(n) => Value::from(*n),
        EventValue::Double(n) => Value::from(*n),
        EventValue::String(text) | EventValue::Symbol(text) => Value::from(text.as_str()),
        EventValue::Uuid(bytes) => Value::from(base64_of(bytes)),
        EventValue::Binary(bytes) => Value::from(base64_of(bytes)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reader_resumes_after_what_it_saw_or_is_told_to_resync() {
        let stream = ChangeStream::default();
        let first = stream.subscribe(None);
        assert!(!first.resync && first.missed.is_empty());
        for n in 0..10 {
            stream.publish("twin", n.to_string());
        }
        let resumed = stream.subscribe(Some(7));
        assert!(!resumed.resync);
        assert_eq!(
            resumed.missed.iter().map(|event| event.id).collect::<Vec<_>>(),
            [8, 9, 10]
        );
        assert!(
            stream.subscribe(Some(10)).missed.is_empty(),
            "nothing missed after the last"
        );
        assert!(
            stream.subscribe(Some(99)).resync,
            "a number from another run of the hub"
        );
        for n in 0..STREAM_BUFFER_EVENTS {
            stream.publish("twin", n.to_string());
        }
        assert!(stream.subscribe(Some(7)).resync, "what it missed is no longer kept");
    }

    #[tokio::test]
    async fn a_slow_reader_lags_instead_of_holding_the_hub() {
        let stream = ChangeStream::default();
        let mut slow = stream.subscribe(None).live;
        for n in 0..STREAM_BUFFER_EVENTS + 10 {
            stream.publish("telemetry", n.to_string());
        }
        assert!(matches!(slow.recv().await, Err(broadcast::error::RecvError::Lagged(_))));
    }
}
