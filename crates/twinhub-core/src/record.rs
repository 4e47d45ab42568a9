//! What the registry keeps per device: the identity, its twin, and its presence. One record is the unit
//! a store writes atomically.

use crate::device::{ConnectionState, DeviceIdentity};
use crate::time::Timestamp;
use crate::twin::Twin;
use serde::{Deserialize, Serialize};

/// Connection state as the twin shows it. Ref: IoT Hub twin identity fields `connectionState`,
/// `lastActivityTime` (MQTT and AMQP connections only).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Presence {
    pub connection_state: ConnectionState,
    pub connection_state_updated: Option<Timestamp>,
    pub last_activity: Option<Timestamp>,
}

impl Default for Presence {
    fn default() -> Self {
        Presence {
            connection_state: ConnectionState::Disconnected,
            connection_state_updated: None,
            last_activity: None,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DeviceRecord {
    /// Shared between the versions of a record: twin writes, the most frequent, leave it unchanged.
    pub identity: std::sync::Arc<DeviceIdentity>,
    pub twin: Twin,
    pub presence: Presence,
    /// The twin's JSON text, rendered on first use (`json::twin_json_text`). Not stored.
    #[serde(skip)]
    pub rendered_twin: RenderedTwin,
    /// The device's view of the twin as JSON text (`json::device_twin_text`). Not stored.
    #[serde(skip)]
    pub rendered_device_twin: RenderedTwin,
}

impl DeviceRecord {
    pub fn new(identity: impl Into<std::sync::Arc<DeviceIdentity>>, twin: Twin, presence: Presence) -> DeviceRecord {
        DeviceRecord {
            identity: identity.into(),
            twin,
            presence,
            rendered_twin: RenderedTwin::default(),
            rendered_device_twin: RenderedTwin::default(),
        }
    }
}

/// A cache of the twin JSON text of one record. Records are immutable once shared (the registry holds
/// `Arc`s and the writer builds new records), so the text never goes stale; and cloning yields an empty
/// cache, so a record copied in order to change it never serves the old text.
///
/// Why: rendering a ~1 KB twin with `$metadata` costs tens of microseconds (timestamps, maps), and every
/// `SELECT *` row and `GET /twins` renders one.
#[derive(Default)]
pub struct RenderedTwin(std::sync::OnceLock<std::sync::Arc<str>>);

impl RenderedTwin {
    pub fn get_or_render(&self, render: impl FnOnce() -> String) -> std::sync::Arc<str> {
        std::sync::Arc::clone(self.0.get_or_init(|| render().into()))
    }
}

impl Clone for RenderedTwin {
    fn clone(&self) -> Self {
        RenderedTwin::default()
    }
}

/// A cache has no say in equality.
impl PartialEq for RenderedTwin {
    fn eq(&self, _other: &Self) -> bool {
        true
    }
}

impl std::fmt::Debug for RenderedTwin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.get().is_some() {
            "RenderedTwin(cached)"
        } else {
            "RenderedTwin(empty)"
        })
    }
}
