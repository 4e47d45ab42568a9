//! Devices over MQTT 3.1.1: on TLS port 8883, and over WebSockets on the HTTPS port
//! (`/$iothub/websocket`, subprotocol `mqtt`), both through the same session layer.
//! Ref: shared/protocol/device-mqtt-http.md.
//!
//! - `wire`: the packet codec crate, behind one module.
//! - `auth`: CONNECT → the device it is, or a CONNACK refusal.
//! - `topic`: IoT Hub's topics, typed, with who may use which.
//! - `session`: sessions per client id that outlive connections (clean session 0), takeover.
//! - `connection`: the per-connection state machine and the twin over MQTT.
//! - `router`: hub events (desired changes, disabled or deleted devices) to the sessions they concern.
//!
//! Hub errors become twin statuses in `crate::twin_failure`, shared with AMQP.

mod auth;
mod connection;
mod property_bag;
mod router;
mod session;
mod topic;
pub mod wire;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite};
use twinhub_core::policy::SharedAccessPolicy;
use twinhub_hub::Hub;

/// The limits of the MQTT listeners. Every one has a name and a number.
#[derive(Clone, Debug)]
pub struct MqttConfig {
    /// Largest packet accepted (the remaining length). The SDKs cap telemetry at 256 KiB; a topic with a
    /// property bag comes on top.
    pub packet_bytes_max: u32,
    /// Reported patches of one connection waiting for their commit; past this the connection is not read
    /// until some complete (back-pressure, not an error).
    pub twin_requests_in_flight_max: usize,
    /// Twin requests (GET and PATCH) per second per connection, on average, and the burst allowed above
    /// it; beyond, requests are answered 429 (IoT Hub's throttling status), not dropped.
    pub twin_requests_per_second: u32,
    pub twin_request_burst: u32,
    /// QoS 1 publishes to a client it has not acknowledged; past this the client is disconnected.
    pub unacknowledged_publishes_max: usize,
    /// Time from TLS (or WebSocket) established to CONNECT received.
    pub connect_timeout: Duration,
}

impl Default for MqttConfig {
    fn default() -> Self {
        MqttConfig {
            packet_bytes_max: 256 * 1024 + 16 * 1024,
            twin_requests_in_flight_max: 256,
            twin_requests_per_second: 1000,
            twin_request_burst: 2000,
            unacknowledged_publishes_max: 1024,
            connect_timeout: Duration::from_secs(10),
        }
    }
}

/// What every MQTT connection shares: the hub, the credentials it checks, and the sessions.
pub struct MqttService {
    hub: Arc<Hub>,
    hostname: String,
    policies: Vec<SharedAccessPolicy>,
    config: MqttConfig,
    sessions: Arc<session::Sessions>,
}

impl MqttService {
    /// Starts routing hub events to sessions. Must run inside a tokio runtime.
    pub fn start(hub: Arc<Hub>, hostname: String, policies: Vec<SharedAccessPolicy>, config: MqttConfig) -> Arc<Self> {
        let sessions = Arc::new(session::Sessions::default());
        let stale = sessions.restore(hub.take_stored_sessions(), |id| hub.device(id).is_ok());
        if !stale.is_empty() {
            let hub = Arc::clone(&hub);
            tokio::spawn(async move {
                for client_id in stale {
                    if let Err(error) = hub.store_session(client_id, None).await {
                        tracing::warn!(%error, "could not forget the session of a deleted device");
                    }
                }
            });
        }
        tokio::spawn(give_way_to_other_nodes(
            hub.sessions_taken_elsewhere(),
            Arc::downgrade(&sessions),
        ));
        tokio::spawn(router::run(
            hub.subscribe(),
            Arc::downgrade(&hub),
            Arc::clone(&sessions),
        ));
        Arc::new(MqttService {
            hub,
            hostname,
            policies,
            config,
            sessions,
        })
    }

    fn authenticate(&self, connect: &wire::Connect) -> Result<auth::Authenticated, auth::Refusal> {
        auth::authenticate(connect, &self.hostname, &self.policies, |id, module| {
            let device_id = twinhub_core::DeviceId::new(id).ok()?;
            let endpoint = twinhub_hub::device_router::Endpoint {
                device_id,
                module_id: module.map(str::to_owned),
            };
            self.hub.twin_of(&endpoint).ok()
        })
    }

    /// Runs one connection over any byte stream (TLS, or a WebSocket's binary frames) until it ends.
    pub async fn serve<R, W>(self: &Arc<Self>, reader: R, writer: W, peer: SocketAddr, transport: &'static str)
    where
        R: AsyncRead + Unpin + Send,
        W: AsyncWrite + Unpin + Send,
    {
        connection::serve(Arc::clone(self), reader, writer, peer, transport).await
    }
}

/// In a cluster: drops the sessions other nodes took (their device connected there), closing the older
/// connection that still held one here.
async fn give_way_to_other_nodes(
    mut taken: tokio::sync::broadcast::Receiver<twinhub_hub::takeover::TakenElsewhere>,
    sessions: std::sync::Weak<session::Sessions>,
) {
    use tokio::sync::broadcast::error::RecvError;
    loop {
        let taken_elsewhere = match taken.recv().await {
            Ok(taken_elsewhere) => taken_elsewhere,
            Err(RecvError::Lagged(missed)) => {
                tracing::warn!(missed, "missed sessions taken by other nodes: a device among them that comes back here resumes this node's older copy");
                continue;
            }
            Err(RecvError::Closed) => return,
        };
        let Some(sessions) = sessions.upgrade() else { return };
        sessions.taken_elsewhere(&taken_elsewhere.client_id, taken_elsewhere.at);
    }
}
