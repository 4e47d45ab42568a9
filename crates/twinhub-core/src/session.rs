//! A device's persistent session as the store keeps it: what the device subscribed to. The SDKs never
//! subscribe again after a reconnect, so a session that did not survive a hub restart would leave them
//! deaf to desired properties (and, later, methods and messages) until the app is restarted.

use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionRecord {
    /// The client id the session belongs to: `deviceId` or `deviceId/moduleId`.
    pub client_id: String,
    pub subscriptions: Vec<StoredSubscription>,
}

/// One subscription: the topic filter as the device sent it and the delivery level granted (MQTT QoS).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredSubscription {
    pub filter: String,
    pub qos: u8,
}
