//! Devices over AMQP 1.0 on TLS port 5671. Ref: shared/protocol/amqp.md.
//!
//! fe2o3-amqp carries frames, sessions and links; the IoT Hub semantics are here:
//! - `header`: a client may start with SASL or without it; the first 8 bytes decide.
//! - `sasl`: SASL authenticates nobody (ANONYMOUS, MSSBCBS, PLAIN all pass); tokens come over CBS.
//! - `cbs`: `put-token` on `$cbs` authorizes a device for the connection until the token expires.
//! - `twin`: the twin links (GET, reported PATCH, desired subscription and notifications).
//! - `telemetry`: the device's telemetry sender link, settled once each event is durable.
//! - `settle_when_done`: links whose messages are settled, in order, once the hub made them durable.
//! - `methods`: direct method requests and answers on the device's methods links.
//! - `cloud_to_device`: back ends' sends and feedback, and devices' cloud-to-device links.
//! - `event_hubs`: the Event Hubs-compatible endpoint (receivers of the event log, `$management`).
//! - `frame_padding`: every performative sent at full length (the Python Event Hubs client needs it).
//! - `connection`: sessions and links, routed by address, refused when no token covers them.

mod cbs;
mod cloud_to_device;
mod connection;
mod event_hubs;
mod frame_padding;
mod header;
mod methods;
mod request_response;
mod sasl;
mod settle_when_done;
mod telemetry;
mod twin;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use tokio::io::{AsyncRead, AsyncWrite};
use twinhub_core::desired_delivery::DesiredCursor;
use twinhub_core::policy::SharedAccessPolicy;
use twinhub_hub::{Endpoint, Hub};

/// What every AMQP connection shares.
pub struct AmqpService {
    hub: Arc<Hub>,
    hostname: String,
    /// The Event Hubs-compatible endpoint's name (`EntityPath`).
    hub_name: String,
    policies: Vec<SharedAccessPolicy>,
    /// Event Hubs receivers per consumer group and partition, across connections (owner levels).
    receivers: Arc<event_hubs::receiver::Receivers>,
    /// The desired version each device or module was given over AMQP, across its connections (AMQP has
    /// no sessions that outlive them). One missing here is one the hub knows nothing of since it started:
    /// `DesiredCursor::Unknown`, so its subscription brings the whole desired document.
    desired_given: Mutex<HashMap<Endpoint, DesiredCursor>>,
}

impl AmqpService {
    pub fn new(hub: Arc<Hub>, hostname: String, hub_name: String, policies: Vec<SharedAccessPolicy>) -> Arc<Self> {
        Arc::new(AmqpService {
            hub,
            hostname,
            hub_name,
            policies,
            receivers: Arc::default(),
            desired_given: Mutex::new(HashMap::new()),
        })
    }

    /// The event hub named `name` (any case): the built-in endpoint, or an event hub routes fill; with the
    /// name it is known by.
    fn event_hub(&self, name: &str) -> Option<(String, Arc<twinhub_hub::EventLog>)> {
        if name.eq_ignore_ascii_case(&self.hub_name) {
            return self.hub.event_log().map(|log| (self.hub_name.clone(), Arc::clone(log)));
        }
        let log = self.hub.routing().event_hub(name)?;
        Some((name.to_ascii_lowercase(), log))
    }

    /// Whether `name` (lower case) is one of the hub's event hubs.
    fn is_event_hub(&self, name: &str) -> bool {
        self.event_hub(name).is_some()
    }

    /// Applies `rule` to what the device or module was given of its desired properties.
    fn desired_cursor<R>(&self, endpoint: &Endpoint, rule: impl FnOnce(&mut DesiredCursor) -> R) -> R {
        let mut map = self
            .desired_given
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        rule(map.entry(endpoint.clone()).or_insert(DesiredCursor::Unknown))
    }

    /// Runs one connection over any byte stream (TLS, or a WebSocket's binary frames) until it ends.
    pub async fn serve<Io>(self: &Arc<Self>, io: Io, peer: SocketAddr, transport: &'static str)
    where
        Io: AsyncRead + AsyncWrite + std::fmt::Debug + Send + Unpin + 'static,
    {
        connection::serve(Arc::clone(self), io, peer, transport).await
    }
}
