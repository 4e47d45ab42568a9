//! Devices over AMQP 1.0 on TLS port 5671. Ref: shared/protocol/amqp.md.
//!
//! fe2o3-amqp carries frames, sessions and links; the IoT Hub semantics are here:
//! - `header`: a client may start with SASL or without it; the first 8 bytes decide.
//! - `sasl`: SASL authenticates nobody (ANONYMOUS, MSSBCBS, PLAIN all pass); tokens come over CBS.
//! - `cbs`: `put-token` on `$cbs` authorizes a device for the connection until the token expires.
//! - `twin`: the twin links (GET, reported PATCH, desired subscription and notifications).
//! - `connection`: sessions and links, routed by address, refused when no token covers them.

mod cbs;
mod connection;
mod header;
mod sasl;
mod twin;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use tokio::io::{AsyncRead, AsyncWrite};
use twinhub_core::policy::SharedAccessPolicy;
use twinhub_core::DeviceId;
use twinhub_hub::Hub;

/// What every AMQP connection shares.
pub struct AmqpService {
    hub: Arc<Hub>,
    hostname: String,
    policies: Vec<SharedAccessPolicy>,
    /// The last desired version each device was given over AMQP, across its connections: a device that
    /// subscribes again after missing changes gets the whole desired document.
    delivered_desired: Mutex<HashMap<DeviceId, u64>>,
}

impl AmqpService {
    pub fn new(hub: Arc<Hub>, hostname: String, policies: Vec<SharedAccessPolicy>) -> Arc<Self> {
        Arc::new(AmqpService {
            hub,
            hostname,
            policies,
            delivered_desired: Mutex::new(HashMap::new()),
        })
    }

    fn delivered(&self, device_id: &DeviceId) -> Option<u64> {
        self.delivered_map().get(device_id).copied()
    }

    fn note_delivered(&self, device_id: &DeviceId, version: u64) {
        let mut map = self.delivered_map();
        let entry = map.entry(device_id.clone()).or_insert(version);
        *entry = (*entry).max(version);
    }

    fn delivered_map(&self) -> std::sync::MutexGuard<'_, HashMap<DeviceId, u64>> {
        self.delivered_desired
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Runs one connection over any byte stream (TLS, or a WebSocket's binary frames) until it ends.
    pub async fn serve<Io>(self: &Arc<Self>, io: Io, peer: SocketAddr, transport: &'static str)
    where
        Io: AsyncRead + AsyncWrite + std::fmt::Debug + Send + Unpin + 'static,
    {
        connection::serve(Arc::clone(self), io, peer, transport).await
    }
}
