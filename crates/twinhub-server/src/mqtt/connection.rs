//! One device connection, from CONNECT to close: the session state machine and the twin over MQTT.
//!
//! One task per connection. It reads packets, answers twin GETs at once from the snapshot, hands reported
//! patches to the hub and keeps up to `twin_requests_in_flight_max` of them pending (a device may pipeline
//! them; replies go out as each commit lands), takes desired notifications from its session's mailbox, and
//! writes everything it produced in one go before waiting again.

use super::property_bag;
use super::session::{ClientIdentity, Owner, Session};
use super::topic::{self, Inbound, Subscription};
use super::wire::{self, Codec, ConnectAckReason, DecodeError, Packet, PacketWriter, QoS, SubscribeReturnCode};
use super::MqttService;
use crate::twin_failure::{parse_reported_patch, TwinFailure};
use bytes::Bytes;
use futures_util::future::BoxFuture;
use futures_util::stream::FuturesOrdered;
use futures_util::{FutureExt, StreamExt};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::num::NonZeroU16;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::Notify;
use tokio_util::codec::FramedRead;
use twinhub_core::desired_delivery::DesiredCursor;
use twinhub_hub::PresenceEvent;
use twinhub_hub::{DeviceMail, Endpoint, Mailbox, MethodRequest, MethodRequestId, Registration};

/// Mail (desired notifications, method requests) a connection may have queued; past it, desired changes
/// become a full resync and method calls wait.
const MAILBOX_CAPACITY: usize = 64;

/// Initial read buffer of a connection.
const READ_BUFFER_BYTES: usize = 512;

static NEXT_CONNECTION_ID: AtomicU64 = AtomicU64::new(1);

/// Why a connection ended, for the log.
#[derive(Debug, thiserror::Error)]
enum End {
    #[error("the client sent DISCONNECT")]
    ClientDisconnected,
    #[error("the client closed the connection")]
    ClientClosed,
    /// Reading failed: the network dropped, or the client went away without closing TLS.
    #[error("the connection was lost: {0}")]
    ConnectionLost(String),
    #[error("closed by the hub: a new connection took the session over, or the device was disabled or deleted")]
    TakenOver,
    #[error("no packet within 1.5 keep-alive periods")]
    KeepAliveExpired,
    #[error("the SAS token expired")]
    TokenExpired,
    #[error("malformed packet: {0}")]
    Malformed(DecodeError),
    #[error("protocol violation: {0}")]
    ProtocolViolation(String),
    #[error("not authorized: {0}")]
    NotAuthorized(String),
    #[error("the hub could not take a telemetry message: {0}")]
    EventRefused(String),
    #[error("I/O: {0}")]
    Io(std::io::Error),
}

/// The reply to a twin request, ready to publish.
struct TwinReply {
    rid: String,
    status: u16,
    version: Option<u64>,
    body: Bytes,
}

impl TwinReply {
    fn failure(rid: &str, failure: &TwinFailure) -> TwinReply {
        TwinReply {
            rid: rid.to_owned(),
            status: failure.status,
            version: None,
            body: Bytes::from(failure.body()),
        }
    }
}

/// Cached JSON text as a message payload.
struct SharedText(Arc<str>);

impl AsRef<[u8]> for SharedText {
    fn as_ref(&self) -> &[u8] {
        self.0.as_bytes()
    }
}

/// A token bucket: `rate` requests per second on average, bursts up to `burst`.
struct RequestRate {
    tokens: f64,
    refilled: Instant,
    rate: f64,
    burst: f64,
}

impl RequestRate {
    fn new(rate: u32, burst: u32) -> Self {
        RequestRate {
            tokens: f64::from(burst),
            refilled: Instant::now(),
            rate: f64::from(rate),
            burst: f64::from(burst),
        }
    }

    fn allow(&mut self) -> bool {
        let now = Instant::now();
        let elapsed = now.duration_since(self.refilled).as_secs_f64();
        self.refilled = now;
        self.tokens = (self.tokens + elapsed * self.rate).min(self.burst);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// What a pending request turns into once the hub has answered it.
enum Completion {
    TwinReply(TwinReply),
    /// In a cluster: the node has caught up with every acknowledged write; the twin GET can be answered.
    TwinGetReady(String),
    /// The event is durable: acknowledge its PUBLISH (QoS 1; nothing for QoS 0).
    EventStored(Option<NonZeroU16>),
    /// The hub refused the event (too large, the device gone): IoT Hub closes the connection.
    EventRefused(String),
}

/// What the hub still waits on the client to acknowledge (QoS 1 publishes).
enum Unacknowledged {
    Desired(u64),
    TwinReply,
    MethodRequest,
    /// A cloud-to-device message, completed by its PUBACK: the lock token it was received with.
    CloudToDevice(String),
}

/// Cloud-to-device messages a connection has published and not had acknowledged, at most: the queue
/// keeps the rest until PUBACKs come.
const CLOUD_TO_DEVICE_IN_FLIGHT_MAX: usize = 16;

type CloudToDeviceReceive =
    BoxFuture<'static, Result<Option<Box<twinhub_core::c2d::QueuedMessage>>, twinhub_hub::HubError>>;

/// What handling a packet leaves to do that needs waiting.
enum Step {
    Done,
    /// The session's subscriptions changed: make them durable, then send this acknowledgement (and, when
    /// it subscribed to desired patches, whatever the device missed until then).
    PersistThenAck {
        ack: Packet,
        desired_subscribed: bool,
    },
}

struct Connection<W> {
    service: Arc<MqttService>,
    client: ClientIdentity,
    clean_session: bool,
    session: Arc<Session>,
    /// This connection in the hub's device router: what it listens to follows the session's subscriptions.
    registration: Registration,
    out: PacketWriter<W>,
    unacknowledged: HashMap<u16, Unacknowledged>,
    next_packet_id: u16,
    /// Requests waiting for the hub, answered in the order they came (MQTT 3.1.1 §4.6: PUBACKs in order).
    pending: FuturesOrdered<BoxFuture<'static, Completion>>,
    rate: RequestRate,
    activity_recorded: Instant,
    /// The receive from the device's cloud-to-device queue under way, one at a time (the queue's order).
    c2d_receiving: Option<CloudToDeviceReceive>,
    /// Published cloud-to-device messages waiting for their PUBACK.
    c2d_outstanding: usize,
    /// The queue had nothing at the last receive: wait for the router's signal before asking again.
    c2d_drained: bool,
    /// The router signalled while a receive was under way: its "nothing" may predate the message the
    /// signal is about, so ask again instead of waiting.
    c2d_signalled_during_receive: bool,
}

pub(crate) async fn serve<R, W>(
    service: Arc<MqttService>,
    reader: R,
    writer: W,
    peer: SocketAddr,
    transport: &'static str,
) where
    R: AsyncRead + Unpin + Send,
    W: AsyncWrite + Unpin + Send,
{
    let config = service.config.clone();
    // A small read buffer to start with (it grows for large packets): most of what devices send is
    // small, and tens of thousands of idle connections should not hold 8 KiB each.
    let mut packets = FramedRead::with_capacity(reader, Codec::new(config.packet_bytes_max), READ_BUFFER_BYTES);
    let mut out = PacketWriter::new(writer);
    let connect = match tokio::time::timeout(config.connect_timeout, packets.next()).await {
        Ok(Some(Ok((Packet::Connect(connect), _)))) => connect,
        Ok(Some(Err(DecodeError::UnsupportedProtocolLevel))) => {
            // Only MQTT 3.1.1 (and 3.1) are spoken; the spec's answer to any other level is CONNACK 1.
            tracing::info!(%peer, transport, "refused: unsupported MQTT protocol level");
            if out
                .push(wire::connect_ack(ConnectAckReason::UnacceptableProtocolVersion, false))
                .is_ok()
            {
                out.close().await;
            }
            return;
        }
        Ok(Some(Ok((packet, _)))) => {
            tracing::info!(%peer, transport, ?packet, "closed: the first packet was not CONNECT");
            return;
        }
        Ok(Some(Err(error))) => {
            tracing::info!(%peer, transport, %error, "closed: malformed CONNECT");
            return;
        }
        Ok(None) => return,
        Err(_) => {
            tracing::info!(%peer, transport, "closed: no CONNECT within {:?}", config.connect_timeout);
            return;
        }
    };
    // In a cluster, a device created through another node a moment ago is known here first.
    if let Ok(device_id) = twinhub_core::DeviceId::new(&connect.client_id) {
        if let Err(error) = service.hub.device_anywhere(&device_id).await {
            tracing::debug!(%error, "looking the device up before authenticating it");
        }
    }
    let authenticated = match service.authenticate(&connect) {
        Ok(authenticated) => authenticated,
        Err(refusal) => {
            tracing::info!(%peer, transport, client_id = %connect.client_id, reason = %refusal.reason, code = ?refusal.code, "CONNECT refused");
            if out.push(wire::connect_ack(refusal.code, false)).is_ok() {
                out.close().await;
            }
            return;
        }
    };
    let client = authenticated.client;
    // The identity this connection acts as: its device, or one of the device's modules.
    let acting_as = Endpoint {
        device_id: client.device_id.clone(),
        module_id: client.module_id.clone(),
    };
    if let Err(error) = service.hub.presence_of(&acting_as, PresenceEvent::Connected).await {
        // Deleted between the check and now, or the hub is stopping: the client may retry later.
        tracing::info!(%peer, client_id = %connect.client_id, %error, "CONNECT refused");
        if out
            .push(wire::connect_ack(ConnectAckReason::ServiceUnavailable, false))
            .is_ok()
        {
            out.close().await;
        }
        let _ = service.hub.presence_of(&acting_as, PresenceEvent::Disconnected).await;
        return;
    }

    let connection_id = NEXT_CONNECTION_ID.fetch_add(1, Ordering::Relaxed);
    let close = Arc::new(Notify::new());
    let attached_at = twinhub_core::Timestamp::now();
    let owner = Owner {
        connection_id,
        attached_at,
        close: Arc::clone(&close),
    };
    // In a cluster, a persistent session this node does not have may be another node's: read it.
    let client_id = client.client_id();
    let stored = if !connect.clean_session && service.hub.is_clustered() && !service.sessions.contains(&client_id) {
        match service.hub.stored_session(&client_id).await {
            Ok(stored) => stored,
            Err(error) => {
                tracing::warn!(%error, %client_id, "could not read the stored session; the device starts a new one");
                None
            }
        }
    } else {
        None
    };
    let moved_here = stored.clone();
    let (session, session_present) = service.sessions.attach(&client, connect.clean_session, owner, stored);
    // Any older connection of this client on another node closes.
    service.hub.connection_taken(&client_id, attached_at);
    if let Some(record) = moved_here {
        // Written here, so that the node that held it drops its copy.
        if let Err(error) = service.hub.store_session(client_id, Some(record)).await {
            tracing::warn!(%error, client_id = %connect.client_id, "could not take the session over in the store");
        }
    }
    let forget_stored = connect.clean_session && std::mem::take(&mut session.state().stored);
    if forget_stored {
        if let Err(error) = service.hub.store_session(client.client_id(), None).await {
            tracing::error!(%error, client_id = %connect.client_id, "could not forget the stored session");
        }
    }
    tracing::info!(%peer, transport, client_id = %connect.client_id, clean_session = connect.clean_session, session_present, "device connected");

    let endpoint = Endpoint {
        device_id: client.device_id.clone(),
        module_id: client.module_id.clone(),
    };
    let interests = session.state().interests();
    let (registration, mut mailbox) = service
        .hub
        .device_router()
        .register(endpoint, interests, MAILBOX_CAPACITY);
    let mut connection = Connection {
        service: Arc::clone(&service),
        client,
        clean_session: connect.clean_session,
        session: Arc::clone(&session),
        registration,
        out,
        unacknowledged: HashMap::new(),
        next_packet_id: 1,
        pending: FuturesOrdered::new(),
        rate: RequestRate::new(config.twin_requests_per_second, config.twin_request_burst),
        activity_recorded: Instant::now(),
        c2d_receiving: None,
        c2d_outstanding: 0,
        c2d_drained: false,
        c2d_signalled_during_receive: false,
    };
    let end = connection
        .run(
            &mut packets,
            &mut mailbox,
            &close,
            connect.keep_alive,
            session_present,
            authenticated.token_expiry_unix_seconds,
        )
        .await;
    let undelivered = connection
        .unacknowledged
        .values()
        .filter_map(|unacknowledged| match unacknowledged {
            Unacknowledged::Desired(version) => Some(*version),
            Unacknowledged::TwinReply | Unacknowledged::MethodRequest | Unacknowledged::CloudToDevice(_) => None,
        })
        .min();
    // Cloud-to-device messages the device did not acknowledge go back to its queue at once, for its next
    // connection (their delivery was counted).
    let unsettled: Vec<String> = connection
        .unacknowledged
        .drain()
        .filter_map(|(_, unacknowledged)| match unacknowledged {
            Unacknowledged::CloudToDevice(lock_token) => Some(lock_token),
            _ => None,
        })
        .collect();
    for lock_token in unsettled {
        connection.abandon_cloud_to_device(lock_token);
    }
    service
        .sessions
        .detach(&session, connection_id, connect.clean_session, undelivered);
    match &end {
        End::ClientDisconnected | End::ClientClosed | End::ConnectionLost(_) | End::TakenOver => {
            tracing::info!(%peer, transport, client_id = %connect.client_id, reason = %end, "device disconnected")
        }
        _ => tracing::warn!(%peer, transport, client_id = %connect.client_id, reason = %end, "device disconnected"),
    }
    connection.out.close().await;
    // Twin requests still pending are dropped here; their writes stand (the hub owns them).
    if let Err(error) = service.hub.presence_of(&acting_as, PresenceEvent::Disconnected).await {
        tracing::debug!(%error, "could not record the disconnection");
    }
}

impl<W: AsyncWrite + Unpin + Send> Connection<W> {
    async fn run<R: AsyncRead + Unpin>(
        &mut self,
        packets: &mut FramedRead<R, Codec>,
        mailbox: &mut Mailbox,
        close: &Notify,
        keep_alive_seconds: u16,
        session_present: bool,
        token_expiry_unix_seconds: u64,
    ) -> End {
        if let Err(error) = self
            .out
            .push(wire::connect_ack(ConnectAckReason::ConnectionAccepted, session_present))
        {
            return End::Io(error);
        }
        if session_present {
            // Back after being away: catch up on desired changes missed meanwhile, as one full document.
            if let Err(end) = self.send_missed_desired(DesiredCursor::catch_up) {
                return end;
            }
        }
        // A session that comes back subscribed takes what its queue holds.
        self.pull_cloud_to_device();
        if let Err(error) = self.out.flush().await {
            return End::Io(error);
        }
        // MQTT 3.1.1 §3.1.2.10: one and a half keep-alive periods without a packet and the client is gone.
        let keep_alive = (keep_alive_seconds > 0).then(|| Duration::from_millis(u64::from(keep_alive_seconds) * 1500));
        let far_future = Duration::from_secs(100 * 365 * 24 * 3600);
        let idle = tokio::time::sleep(keep_alive.unwrap_or(far_future));
        tokio::pin!(idle);
        let token_left =
            token_expiry_unix_seconds.saturating_sub(twinhub_core::Timestamp::now().unix_seconds().max(0) as u64);
        let token_expiry = tokio::time::sleep(Duration::from_secs(token_left).min(far_future));
        tokio::pin!(token_expiry);
        let in_flight_max = self.service.config.twin_requests_in_flight_max;
        loop {
            let step = tokio::select! {
                biased;
                _ = close.notified() => Err(End::TakenOver),
                _ = &mut token_expiry => Err(End::TokenExpired),
                Some(completion) = self.pending.next(), if !self.pending.is_empty() => self.complete(completion),
                Some(mail) = mailbox.mail.recv() => self.mail(mail),
                _ = mailbox.resync.notified() => self.send_missed_desired(DesiredCursor::catch_up),
                _ = mailbox.c2d_ready.notified() => {
                    self.c2d_drained = false;
                    self.c2d_signalled_during_receive = self.c2d_receiving.is_some();
                    self.pull_cloud_to_device();
                    Ok(())
                }
                received = async {
                    match self.c2d_receiving.as_mut() {
                        Some(receiving) => receiving.await,
                        None => std::future::pending().await,
                    }
                } => {
                    self.c2d_receiving = None;
                    self.cloud_to_device_received(received)
                }
                packet = packets.next(), if self.pending.len() < in_flight_max => match packet {
                    None => Err(End::ClientClosed),
                    Some(Err(DecodeError::Io(error))) => Err(End::ConnectionLost(error.to_string())),
                    Some(Err(error)) => Err(End::Malformed(error)),
                    Some(Ok((packet, _))) => {
                        if let Some(keep_alive) = keep_alive {
                            idle.as_mut().reset(tokio::time::Instant::now() + keep_alive);
                        }
                        match self.packet(packet) {
                            Ok(Step::Done) => Ok(()),
                            Ok(Step::PersistThenAck { ack, desired_subscribed }) => {
                                self.persist_session().await;
                                self.push(ack).and_then(|()| {
                                    if desired_subscribed {
                                        self.send_missed_desired(DesiredCursor::subscribed)
                                    } else {
                                        Ok(())
                                    }
                                })
                            }
                            Err(end) => Err(end),
                        }
                    }
                },
                _ = &mut idle => Err(End::KeepAliveExpired),
            };
            if let Err(end) = step {
                return end;
            }
            // Whatever else is ready goes into the same write.
            while let Some(Some(completion)) = self.pending.next().now_or_never() {
                if let Err(end) = self.complete(completion) {
                    return end;
                }
            }
            if let Err(error) = self.out.flush().await {
                return End::Io(error);
            }
        }
    }

    fn packet(&mut self, packet: Packet) -> Result<Step, End> {
        match packet {
            Packet::Subscribe {
                packet_id,
                topic_filters,
            } => {
                let status: Vec<_> = topic_filters
                    .iter()
                    .map(|(filter, qos)| self.subscribe(filter, *qos))
                    .collect();
                let desired_subscribed = topic_filters.iter().zip(&status).any(|((filter, _), status)| {
                    topic::parse_filter(filter, &self.client) == Some(Subscription::DesiredPatches)
                        && *status != SubscribeReturnCode::Failure
                });
                Ok(Step::PersistThenAck {
                    ack: Packet::SubscribeAck { packet_id, status },
                    desired_subscribed,
                })
            }
            Packet::Unsubscribe {
                packet_id,
                topic_filters,
            } => {
                for filter in &topic_filters {
                    if let Some(subscription) = topic::parse_filter(filter, &self.client) {
                        self.session.state().grant(subscription, None);
                    }
                }
                self.listen_as_subscribed();
                Ok(Step::PersistThenAck {
                    ack: Packet::UnsubscribeAck { packet_id },
                    desired_subscribed: false,
                })
            }
            other => self.packet_now(other).map(|()| Step::Done),
        }
    }

    /// Packets handled without waiting.
    fn packet_now(&mut self, packet: Packet) -> Result<(), End> {
        match packet {
            Packet::Publish(publish) => {
                self.record_activity();
                let qos = publish.qos;
                if qos == QoS::ExactlyOnce {
                    return Err(End::ProtocolViolation("QoS 2 is not supported".into()));
                }
                let inbound = topic::parse_publish(&publish.topic, &self.client)
                    .map_err(|error| End::NotAuthorized(format!("PUBLISH on '{}': {error}", publish.topic)))?;
                let packet_id = publish.packet_id.filter(|_| qos == QoS::AtLeastOnce);
                if let Inbound::Telemetry { bag } = inbound {
                    // Acknowledged once durable, not before: at-least-once.
                    return self.telemetry(bag, &publish.payload, publish.retain, packet_id);
                }
                if let Some(packet_id) = packet_id {
                    self.push(Packet::PublishAck { packet_id })?;
                }
                match inbound {
                    Inbound::TwinGet { rid } if self.service.hub.is_clustered() => {
                        // Read-your-writes across nodes: answered once this node holds every write
                        // acknowledged anywhere before the request.
                        let hub = Arc::clone(&self.service.hub);
                        let rid = rid.to_owned();
                        self.pending.push_back(Box::pin(async move {
                            hub.read_barrier().await;
                            Completion::TwinGetReady(rid)
                        }));
                        Ok(())
                    }
                    Inbound::TwinGet { rid } => {
                        let reply = self.twin_get(rid);
                        self.twin_reply(reply)
                    }
                    Inbound::TwinPatchReported { rid } => self.twin_patch_reported(rid, &publish.payload),
                    Inbound::TwinUnsupported { rid } => {
                        let failure = TwinFailure::bad_request(format!(
                            "'{}' is not a twin operation IoT Hub devices can use",
                            publish.topic
                        ));
                        self.twin_reply(TwinReply::failure(rid, &failure))
                    }
                    Inbound::MethodResponse { status, rid } => {
                        self.method_answer(status, rid, &publish.payload);
                        Ok(())
                    }
                    Inbound::Telemetry { .. } => Ok(()),
                }
            }
            Packet::PublishAck { packet_id } => {
                if let Some(Unacknowledged::CloudToDevice(lock_token)) = self.unacknowledged.remove(&packet_id.get()) {
                    self.c2d_outstanding = self.c2d_outstanding.saturating_sub(1);
                    self.settle_cloud_to_device(lock_token);
                    self.pull_cloud_to_device();
                }
                Ok(())
            }
            Packet::PingRequest => {
                self.record_activity();
                self.push(Packet::PingResponse)
            }
            Packet::Disconnect => Err(End::ClientDisconnected),
            Packet::Connect(_) => Err(End::ProtocolViolation("a second CONNECT".into())),
            other => Err(End::ProtocolViolation(format!(
                "unexpected packet from a client: {other:?}"
            ))),
        }
    }

    /// A persistent session's subscriptions go to the store before they are acknowledged, so they
    /// survive a hub restart (the SDKs never subscribe again). A store failure is logged; the
    /// subscription still holds for as long as the hub runs.
    async fn persist_session(&mut self) {
        if self.clean_session {
            return;
        }
        let (record, stored) = {
            let state = self.session.state();
            (state.record(&self.client), state.stored)
        };
        let keep = !record.subscriptions.is_empty();
        if !keep && !stored {
            return;
        }
        let client_id = record.client_id.clone();
        match self.service.hub.store_session(client_id, keep.then_some(record)).await {
            Ok(()) => self.session.state().stored = keep,
            Err(error) => {
                tracing::error!(%error, client_id = %self.client.client_id(), "could not store the session")
            }
        }
    }

    fn subscribe(&mut self, filter: &str, requested: QoS) -> SubscribeReturnCode {
        let Some(subscription) = topic::parse_filter(filter, &self.client) else {
            tracing::warn!(client_id = %self.client.client_id(), filter, "SUBSCRIBE refused: not one of the device's topics");
            return SubscribeReturnCode::Failure;
        };
        let granted = wire::granted(requested);
        self.session.state().grant(subscription, Some(granted));
        self.listen_as_subscribed();
        if subscription == Subscription::CloudToDevice {
            self.c2d_drained = false;
            self.pull_cloud_to_device();
        }
        if subscription == Subscription::DesiredPatches {
            // From now on the router hands the session every change; read after the grant, the twin shows
            // every change it did not hand over, so a fresh device starts from this version.
            if let Ok(record) = self.service.hub.twin_of(self.registration.endpoint()) {
                self.session.state().desired.subscribing(record.twin.desired.version);
            }
        }
        SubscribeReturnCode::Success(granted)
    }

    /// The device router hands this connection what its subscriptions ask for, from now on.
    fn listen_as_subscribed(&self) {
        let interests = self.session.state().interests();
        self.registration.update(|listening| *listening = interests);
    }

    /// A device's answer to a direct method, to the call waiting for it. An answer to a request this
    /// device was not sent, or to a call that is over, is dropped (MQTT has nowhere to say so).
    fn method_answer(&mut self, status: i32, rid: &str, payload: &[u8]) {
        let Some(request_id) = MethodRequestId::parse(rid) else {
            tracing::info!(client_id = %self.client.client_id(), rid, "method answer dropped: not a request id the hub gave");
            return;
        };
        let answer = twinhub_core::method::parse_answer(status, payload);
        if let Err(refused) = self
            .service
            .hub
            .device_router()
            .answer(self.registration.endpoint(), request_id, answer)
        {
            tracing::info!(client_id = %self.client.client_id(), %refused, "method answer dropped");
        }
    }

    fn twin_get(&mut self, rid: &str) -> TwinReply {
        if !self.rate.allow() {
            return TwinReply::failure(rid, &TwinFailure::throttled());
        }
        match self.service.hub.twin_of(self.registration.endpoint()) {
            Ok(record) => {
                self.session.state().desired.gave(record.twin.desired.version);
                // The cached text itself goes out: no rendering, no copy.
                let body = Bytes::from_owner(SharedText(twinhub_core::json::device_twin_text(&record)));
                TwinReply {
                    rid: rid.to_owned(),
                    status: 200,
                    version: None,
                    body,
                }
            }
            Err(error) => TwinReply::failure(rid, &TwinFailure::from(&error)),
        }
    }

    fn twin_patch_reported(&mut self, rid: &str, payload: &[u8]) -> Result<(), End> {
        if !self.rate.allow() {
            return self.twin_reply(TwinReply::failure(rid, &TwinFailure::throttled()));
        }
        let patch = match parse_reported_patch(payload, self.service.hub.rules()) {
            Ok(patch) => patch,
            Err(failure) => return self.twin_reply(TwinReply::failure(rid, &failure)),
        };
        let hub = Arc::clone(&self.service.hub);
        let acting_as = self.registration.endpoint().clone();
        let rid = rid.to_owned();
        self.pending.push_back(Box::pin(async move {
            Completion::TwinReply(match hub.patch_reported_of(&acting_as, patch).await {
                Ok(record) => TwinReply {
                    rid,
                    status: 204,
                    version: Some(record.twin.reported.version),
                    body: Bytes::new(),
                },
                Err(error) => TwinReply::failure(&rid, &TwinFailure::from(&error)),
            })
        }));
        Ok(())
    }

    /// A telemetry message: to the event log, acknowledged (QoS 1) once durable. A malformed property bag,
    /// or a message the hub refuses (over IoT Hub's size limit), closes the connection, as IoT Hub does;
    /// nothing is stored.
    fn telemetry(&mut self, bag: &str, payload: &[u8], retain: bool, packet_id: Option<NonZeroU16>) -> Result<(), End> {
        let event =
            property_bag::event(bag, payload, retain).map_err(|error| End::ProtocolViolation(error.to_string()))?;
        let hub = Arc::clone(&self.service.hub);
        let device_id = self.client.device_id.clone();
        let module_id = self.client.module_id.clone();
        self.pending.push_back(Box::pin(async move {
            match hub.send_event(&device_id, module_id.as_deref(), event).await {
                Ok(_) => Completion::EventStored(packet_id),
                Err(error) => Completion::EventRefused(error.to_string()),
            }
        }));
        Ok(())
    }

    fn complete(&mut self, completion: Completion) -> Result<(), End> {
        match completion {
            Completion::TwinReply(reply) => self.twin_reply(reply),
            Completion::TwinGetReady(rid) => {
                let reply = self.twin_get(&rid);
                self.twin_reply(reply)
            }
            Completion::EventStored(Some(packet_id)) => self.push(Packet::PublishAck { packet_id }),
            Completion::EventStored(None) => Ok(()),
            Completion::EventRefused(reason) => Err(End::EventRefused(reason)),
        }
    }

    /// Publishes a twin reply. Also without a `$iothub/twin/res/#` subscription (at QoS 0 then): Python's
    /// reconnect GET may come from a session that never subscribed, and both SDKs accept it.
    fn twin_reply(&mut self, reply: TwinReply) -> Result<(), End> {
        let qos = self
            .session
            .state()
            .granted(Subscription::TwinResponses)
            .unwrap_or(QoS::AtMostOnce);
        let topic = topic::twin_response(reply.status, &reply.rid, reply.version);
        self.publish(topic, reply.body, qos, Unacknowledged::TwinReply)
    }

    fn mail(&mut self, mail: DeviceMail) -> Result<(), End> {
        match mail {
            DeviceMail::Method(request) => self.method_request(*request),
            DeviceMail::Desired(change) => {
                let Some(qos) = self.session.state().granted(Subscription::DesiredPatches) else {
                    return Ok(());
                };
                // Already covered by a full document or a GET: notifications stay in version order.
                if !self.session.state().desired.take_change(change.version) {
                    return Ok(());
                }
                let mut body = change.patch.clone();
                body.insert("$version".into(), change.version.into());
                let payload = Bytes::from(serde_json::Value::Object(body).to_string());
                self.publish(
                    topic::desired_patch(change.version),
                    payload,
                    qos,
                    Unacknowledged::Desired(change.version),
                )
            }
        }
    }

    /// Asks the device's queue for its next message, unless one ask is under way, the device is not
    /// subscribed, the queue was empty at the last ask, or enough messages wait for their PUBACK.
    fn pull_cloud_to_device(&mut self) {
        if self.c2d_receiving.is_some()
            || self.c2d_drained
            || self.c2d_outstanding >= CLOUD_TO_DEVICE_IN_FLIGHT_MAX
            || self.session.state().granted(Subscription::CloudToDevice).is_none()
        {
            return;
        }
        let hub = Arc::clone(&self.service.hub);
        let device_id = self.client.device_id.clone();
        self.c2d_receiving = Some(Box::pin(async move { hub.receive_cloud_to_device(device_id).await }));
    }

    /// A message from the device's queue, published on `devices/{id}/messages/devicebound/{bag}` at the
    /// QoS granted: at QoS 1 its PUBACK completes it, at QoS 0 it is complete once sent.
    fn cloud_to_device_received(
        &mut self,
        received: Result<Option<Box<twinhub_core::c2d::QueuedMessage>>, twinhub_hub::HubError>,
    ) -> Result<(), End> {
        let queued = match received {
            Ok(Some(queued)) => queued,
            Ok(None) => {
                self.c2d_drained = !std::mem::take(&mut self.c2d_signalled_during_receive);
                self.pull_cloud_to_device();
                return Ok(());
            }
            Err(error) => {
                tracing::info!(client_id = %self.client.client_id(), %error, "could not take a cloud-to-device message");
                self.c2d_drained = true;
                return Ok(());
            }
        };
        let lock_token = queued.lock.as_ref().map(|lock| lock.token.clone()).unwrap_or_default();
        let Some(qos) = self.session.state().granted(Subscription::CloudToDevice) else {
            // Unsubscribed meanwhile: back to the queue for another time.
            self.abandon_cloud_to_device(lock_token);
            return Ok(());
        };
        let topic = property_bag::cloud_to_device_topic(self.client.device_id.as_str(), &queued);
        let payload = Bytes::from(queued.message.body);
        self.publish(topic, payload, qos, Unacknowledged::CloudToDevice(lock_token.clone()))?;
        if qos == QoS::AtMostOnce {
            // Nothing will acknowledge it: complete once sent.
            self.settle_cloud_to_device(lock_token);
        } else {
            self.c2d_outstanding += 1;
        }
        self.pull_cloud_to_device();
        Ok(())
    }

    /// Completes a message the device acknowledged; the hub's answer is not waited for (a lock lost
    /// meanwhile means the message comes again, which at-least-once allows).
    fn settle_cloud_to_device(&self, lock_token: String) {
        self.spawn_settlement(lock_token, twinhub_core::c2d::Settlement::Complete);
    }

    fn abandon_cloud_to_device(&self, lock_token: String) {
        self.spawn_settlement(lock_token, twinhub_core::c2d::Settlement::Abandon);
    }

    fn spawn_settlement(&self, lock_token: String, settlement: twinhub_core::c2d::Settlement) {
        let hub = Arc::clone(&self.service.hub);
        let device_id = self.client.device_id.clone();
        tokio::spawn(async move {
            if let Err(error) = hub.settle_cloud_to_device(device_id, lock_token, settlement).await {
                tracing::info!(%error, ?settlement, "a cloud-to-device settlement was refused");
            }
        });
    }

    /// A direct method call, published on `$iothub/methods/POST/{name}/?$rid=` at the QoS granted.
    fn method_request(&mut self, request: MethodRequest) -> Result<(), End> {
        let Some(qos) = self.session.state().granted(Subscription::Methods) else {
            // Unsubscribed since the router sent it: the call times out, as on IoT Hub.
            return Ok(());
        };
        let topic = topic::method_request(&request.name, &request.request_id.to_string());
        self.publish(topic, Bytes::from(request.payload), qos, Unacknowledged::MethodRequest)
    }

    /// Beyond IoT Hub: the whole desired document as one notification, when `decide` (a rule of
    /// `DesiredCursor`) finds the device missed changes: it came back, could not keep up, or a change
    /// landed between its twin GET and its subscription.
    fn send_missed_desired(&mut self, decide: fn(&mut DesiredCursor, u64) -> bool) -> Result<(), End> {
        let Some(qos) = self.session.state().granted(Subscription::DesiredPatches) else {
            return Ok(());
        };
        let Ok(record) = self.service.hub.twin_of(self.registration.endpoint()) else {
            return Ok(());
        };
        let desired = &record.twin.desired;
        let (before, missed) = {
            let mut state = self.session.state();
            let before = state.desired;
            (before, decide(&mut state.desired, desired.version))
        };
        if !missed {
            return Ok(());
        }
        tracing::info!(client_id = %self.client.client_id(), from = ?before, to = desired.version, "sending the full desired document to a device that missed changes");
        let payload = Bytes::from(desired.to_json_without_metadata().to_string());
        self.publish(
            topic::desired_patch(desired.version),
            payload,
            qos,
            Unacknowledged::Desired(desired.version),
        )
    }

    fn publish(&mut self, topic: String, payload: Bytes, qos: QoS, kind: Unacknowledged) -> Result<(), End> {
        let packet_id = if qos == QoS::AtMostOnce {
            None
        } else {
            if self.unacknowledged.len() >= self.service.config.unacknowledged_publishes_max {
                return Err(End::ProtocolViolation(format!(
                    "{} QoS 1 publishes left unacknowledged",
                    self.unacknowledged.len()
                )));
            }
            let id = self.next_free_packet_id();
            self.unacknowledged.insert(id.get(), kind);
            Some(id)
        };
        self.push(wire::publish(topic, payload, qos, packet_id))
    }

    fn next_free_packet_id(&mut self) -> NonZeroU16 {
        loop {
            let candidate = self.next_packet_id;
            self.next_packet_id = self.next_packet_id.checked_add(1).unwrap_or(1);
            if let Some(id) = NonZeroU16::new(candidate) {
                if !self.unacknowledged.contains_key(&id.get()) {
                    return id;
                }
            }
        }
    }

    fn push(&mut self, packet: Packet) -> Result<(), End> {
        self.out.push(packet).map_err(End::Io)
    }

    /// `lastActivityTime`, written at most once per [`twinhub_hub::ACTIVITY_RESOLUTION`] per connection.
    fn record_activity(&mut self) {
        if self.activity_recorded.elapsed() < twinhub_hub::ACTIVITY_RESOLUTION {
            return;
        }
        self.activity_recorded = Instant::now();
        let hub = Arc::clone(&self.service.hub);
        let acting_as = self.registration.endpoint().clone();
        tokio::spawn(async move {
            let _ = hub.presence_of(&acting_as, PresenceEvent::Active).await;
        });
    }
}
