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
    pub identity: DeviceIdentity,
    pub twin: Twin,
    pub presence: Presence,
}
