//! One AMQP connection: the header decides SASL or not, then each session runs in a task of its own that
//! accepts links by address and serves CBS and the twin. A link for a device no valid token covers is
//! accepted and detached at once with `amqp:unauthorized-access` (AMQP has no "refuse attach").

use super::cbs::{self, Authorizations};
use super::cloud_to_device;
use super::event_hubs::{self, address::EventHubAddress};
use super::header::{self, Protocol};
use super::methods;
use super::request_response;
use super::sasl::IotHubSasl;
use super::twin;
use super::AmqpService;
use fe2o3_amqp::acceptor::{
    ConnectionAcceptor, LinkAcceptor, LinkEndpoint, ListenerConnectionHandle, ListenerSessionHandle, SessionAcceptor,
};
use fe2o3_amqp::link::{Receiver, Sender};
use fe2o3_amqp::types::definitions::{AmqpError, Error as AmqpErrorBody, ErrorCondition};
use fe2o3_amqp::types::messaging::{Body, Message};
use fe2o3_amqp::types::primitives::{Symbol, Value};
use fe2o3_amqp::Sendable;
use futures_util::future::BoxFuture;
use futures_util::stream::FuturesUnordered;
use futures_util::StreamExt;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::{Mutex, Notify};
use twinhub_core::{DeviceId, ModuleId};
use twinhub_hub::{DeviceMail, Endpoint, Interests, Mailbox, PresenceEvent, Registration};

/// IoT Edge's idle timeout, advertised so clients send empty frames at half of it.
const IDLE_TIMEOUT_MS: u32 = 240_000;
const MAX_FRAME_BYTES: u32 = 65_536;
/// Sessions per connection (Node opens one per Event Hubs receiver) and links per session.
const CHANNEL_MAX: u16 = 8191;
const HANDLE_MAX: u32 = 8191;
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// From the protocol header to a completed Open (and SASL): a client that sends anything else is dropped.
const OPEN_TIMEOUT: Duration = Duration::from_secs(10);

pub(crate) async fn serve<Io>(service: Arc<AmqpService>, io: Io, peer: SocketAddr, transport: &'static str)
where
    Io: AsyncRead + AsyncWrite + std::fmt::Debug + Send + Unpin + 'static,
{
    // Every performative we send goes out at full length: pyamqp (the Python Event Hubs client) fails on
    // the trailing fields fe2o3-amqp leaves out. Ref: shared/protocol/eventhubs-endpoint.md, Traps 1-2.
    let io = super::frame_padding::FramePadding::new(io);
    let (prefix, stream) = match tokio::time::timeout(HEADER_TIMEOUT, header::read_header(io)).await {
        Ok(Ok(read)) => read,
        _ => return,
    };
    let builder = ConnectionAcceptor::builder()
        .container_id("twinhub")
        .max_frame_size(MAX_FRAME_BYTES)
        .idle_time_out(IDLE_TIMEOUT_MS)
        // Sent explicitly, not left to defaults: pyamqp compares against what the peer sent and fails
        // on a missing value.
        .channel_max(CHANNEL_MAX);
    let opening = async {
        match header::protocol(&prefix) {
            Some(Protocol::Amqp) => Some(builder.build().accept(stream).await),
            Some(Protocol::Sasl) => Some(builder.sasl_acceptor(IotHubSasl).build().accept(stream).await),
            None => None,
        }
    };
    let mut connection = match tokio::time::timeout(OPEN_TIMEOUT, opening).await {
        Ok(Some(Ok(connection))) => connection,
        Ok(Some(Err(error))) => {
            tracing::info!(%peer, transport, %error, "AMQP open failed");
            return;
        }
        Ok(None) => {
            tracing::info!(%peer, transport, "closed: not an AMQP 1.0 protocol header");
            return;
        }
        Err(_) => {
            tracing::info!(%peer, transport, "closed: no valid AMQP open within {OPEN_TIMEOUT:?}");
            return;
        }
    };
    tracing::info!(%peer, transport, "AMQP connection opened");
    let authorizations = Arc::new(Mutex::new(Authorizations::default()));
    run_sessions(&service, &mut connection, &authorizations).await;
    let _ = connection.close().await;
    let endpoints: Vec<Endpoint> = authorizations.lock().await.endpoints().cloned().collect();
    for endpoint in endpoints {
        if let Err(error) = service.hub.presence_of(&endpoint, PresenceEvent::Disconnected).await {
            tracing::debug!(%error, "could not record the disconnection");
        }
    }
    tracing::info!(%peer, transport, "AMQP connection closed");
}

async fn run_sessions(
    service: &Arc<AmqpService>,
    connection: &mut ListenerConnectionHandle,
    authorizations: &Arc<Mutex<Authorizations>>,
) {
    // handle-max explicit too (pyamqp: "'>=' not supported between 'int' and 'NoneType'" without it).
    let acceptor = SessionAcceptor::builder().handle_max(HANDLE_MAX).build();
    while let Some(incoming) = connection.next_incoming_session().await {
        let session = match acceptor.accept_incoming_session(incoming, connection).await {
            Ok(session) => session,
            Err(error) => {
                tracing::info!(%error, "AMQP session refused");
                continue;
            }
        };
        let service = Arc::clone(service);
        let authorizations = Arc::clone(authorizations);
        tokio::spawn(async move {
            let mut state = SessionState::new(service);
            state.run(session, authorizations).await;
        });
    }
}

/// A request/response node's pair of links (`$cbs`, `$management`): requests on the client's sender,
/// answers on its receiver.
#[derive(Default)]
struct RequestLinks {
    requests: Option<Receiver>,
    responses: Option<Sender>,
    /// Answers to requests that came before the client's receiver link was attached (uAMQP sends
    /// put-token as soon as its sender link is up): sent once it is.
    unsent: Vec<Message<Body<Value>>>,
}

impl RequestLinks {
    async fn respond(&mut self, response: Message<Body<Value>>) {
        match self.responses.as_mut() {
            Some(sender) => send_settled(sender, response).await,
            None => self.unsent.push(response),
        }
    }

    async fn attach(&mut self, link: LinkEndpoint) {
        match link {
            LinkEndpoint::Receiver(receiver) => self.requests = Some(receiver),
            LinkEndpoint::Sender(mut sender) => {
                for response in self.unsent.drain(..) {
                    send_settled(&mut sender, response).await;
                }
                self.responses = Some(sender);
            }
        }
    }
}

/// The links of one session and what they serve.
struct SessionState {
    service: Arc<AmqpService>,
    cbs: RequestLinks,
    /// The Event Hubs `$management` node.
    management: RequestLinks,
    twin: Option<TwinLinks>,
    /// The client's twin sender (our receiver), apart from `twin` so both can be awaited at once.
    twin_requests: Option<Receiver>,
    /// Answers waiting for their commit.
    pending: FuturesUnordered<BoxFuture<'static, Message<Body<Value>>>>,
    /// The device or module this session serves in the hub's device router (one per session, as every
    /// SDK does it): desired notifications and method requests arrive in its mailbox.
    route: Option<(Registration, Mailbox)>,
    /// The route's resync signal, apart from `route` so both can be awaited at once.
    route_resync: Option<Arc<Notify>>,
    /// Method requests go out on the client's receiver link `/devices/{id}/methods/devicebound`.
    method_requests: Option<Sender>,
    /// Method answers come in on the client's sender link of the same address.
    method_answers: Option<Receiver>,
    /// Links kept open without behaviour yet (telemetry, C2D, methods): a later issue serves them.
    idle: Vec<LinkEndpoint>,
}

struct TwinLinks {
    /// The device or module whose twin these links carry.
    endpoint: Endpoint,
    responses: Option<Sender>,
    unsent: Vec<Message<Body<Value>>>,
    subscribed: bool,
}

enum Incoming {
    Attach(fe2o3_amqp::types::performatives::Attach),
    SessionEnded,
    Cbs(Result<fe2o3_amqp::link::delivery::Delivery<Body<Value>>, fe2o3_amqp::link::RecvError>),
    Management(Result<fe2o3_amqp::link::delivery::Delivery<Body<Value>>, fe2o3_amqp::link::RecvError>),
    Twin(Result<fe2o3_amqp::link::delivery::Delivery<Body<Value>>, fe2o3_amqp::link::RecvError>),
    Mail(Option<DeviceMail>),
    Resync,
    MethodAnswer(Result<fe2o3_amqp::link::delivery::Delivery<Body<Value>>, fe2o3_amqp::link::RecvError>),
    Answered(Message<Body<Value>>),
}

/// Mail (desired changes, method requests) a session may have queued in the device router.
const ROUTE_MAILBOX_CAPACITY: usize = 64;

/// Reported patches of one session waiting for their commit; past this the twin link is not read
/// until some complete (back-pressure), as over MQTT.
const TWIN_REQUESTS_IN_FLIGHT_MAX: usize = 256;

async fn recv_on(
    link: &mut Option<Receiver>,
) -> Result<fe2o3_amqp::link::delivery::Delivery<Body<Value>>, fe2o3_amqp::link::RecvError> {
    match link {
        Some(receiver) => receiver.recv::<Body<Value>>().await,
        None => std::future::pending().await,
    }
}

/// fe2o3's link acceptor with its default (no) dynamic-terminus handlers.
type DefaultLinkAcceptor = LinkAcceptor<
    fn(fe2o3_amqp::types::messaging::Source) -> Option<fe2o3_amqp::types::messaging::Source>,
    fn(fe2o3_amqp::types::messaging::Target) -> Option<fe2o3_amqp::types::messaging::Target>,
>;

fn link_acceptor() -> DefaultLinkAcceptor {
    // uAMQP senders ask for receiver settle mode `second` and hang if it is granted (amqp notes §1.4).
    // What the hub sends (CBS and $management answers, twin answers, events) goes pre-settled: pyamqp
    // never settles what it receives, and an unsettled send would wait for it forever.
    LinkAcceptor::builder()
        .supported_receiver_settle_modes(fe2o3_amqp::acceptor::SupportedReceiverSettleModes::First)
        .fallback_receiver_settle_mode(fe2o3_amqp::types::definitions::ReceiverSettleMode::First)
        .supported_sender_settle_modes(fe2o3_amqp::acceptor::SupportedSenderSettleModes::Settled)
        .fallback_sender_settle_mode(fe2o3_amqp::types::definitions::SenderSettleMode::Settled)
        .build()
}

/// The acceptor for links the hub sends on unsettled (a device's cloud-to-device messages): whatever
/// sender settle mode the client asks for, unsettled when it leaves the choice to us.
fn link_acceptor_settled_by_peer() -> DefaultLinkAcceptor {
    LinkAcceptor::builder()
        .supported_receiver_settle_modes(fe2o3_amqp::acceptor::SupportedReceiverSettleModes::First)
        .fallback_receiver_settle_mode(fe2o3_amqp::types::definitions::ReceiverSettleMode::First)
        .supported_sender_settle_modes(fe2o3_amqp::acceptor::SupportedSenderSettleModes::All)
        .fallback_sender_settle_mode(fe2o3_amqp::types::definitions::SenderSettleMode::Unsettled)
        .build()
}

/// What a link's address names. A device's links are under `/devices/{id}`, a module's under
/// `/devices/{id}/modules/{moduleId}`; an address naming an invalid id is `Unknown`.
#[derive(Debug, PartialEq, Eq)]
enum Address {
    Cbs,
    Twin(Endpoint),
    /// The telemetry (`.../messages/events`); for a module's receiver, its input messages.
    Telemetry(Endpoint),
    /// The direct methods (`.../methods/devicebound`).
    Methods(Endpoint),
    /// Any other link of a device or module.
    DeviceOther(Endpoint),
    /// The Event Hubs-compatible endpoint: `$management` or a partition of a consumer group.
    EventHub(EventHubAddress),
    /// A device's cloud-to-device messages (`/devices/{id}/messages/devicebound`).
    CloudToDevice(Endpoint),
    /// A back end sending cloud-to-device messages (`/messages/devicebound`).
    ServiceCloudToDevice,
    /// A back end reading cloud-to-device feedback (`/messages/serviceBound/feedback`).
    ServiceFeedback,
    Unknown,
}

fn classify(address: &str) -> Address {
    if address == "$cbs" {
        return Address::Cbs;
    }
    if let Some(event_hub) = event_hubs::address::parse(address) {
        return Address::EventHub(event_hub);
    }
    // uAMQP names targets with the scheme and host: `amqps://<host>/messages/devicebound`.
    let address = match address.strip_prefix("amqps://") {
        Some(rest) => rest.find('/').map_or("", |slash| &rest[slash..]),
        None => address,
    };
    if address
        .trim_end_matches('/')
        .eq_ignore_ascii_case("/messages/devicebound")
    {
        return Address::ServiceCloudToDevice;
    }
    if address
        .trim_end_matches('/')
        .eq_ignore_ascii_case("/messages/serviceBound/feedback")
    {
        return Address::ServiceFeedback;
    }
    let prefix = "/devices/";
    let Some(rest) = address
        .get(..prefix.len())
        .filter(|head| head.eq_ignore_ascii_case(prefix))
        .map(|_| &address[prefix.len()..])
    else {
        return Address::Unknown;
    };
    let Some((endpoint, tail)) = identity(rest) else {
        return Address::Unknown;
    };
    if tail.eq_ignore_ascii_case("twin") {
        Address::Twin(endpoint)
    } else if tail.trim_end_matches('/').eq_ignore_ascii_case("messages/events") {
        Address::Telemetry(endpoint)
    } else if tail.trim_end_matches('/').eq_ignore_ascii_case("methods/devicebound") {
        Address::Methods(endpoint)
    } else if tail.trim_end_matches('/').eq_ignore_ascii_case("messages/devicebound") {
        Address::CloudToDevice(endpoint)
    } else {
        Address::DeviceOther(endpoint)
    }
}

/// The device or module at the head of `path` (after `/devices/`: `{id}/...` or
/// `{id}/modules/{moduleId}/...`, URL-encoded ids), and the rest of the path.
fn identity(path: &str) -> Option<(Endpoint, &str)> {
    let decoded = |id: &str| {
        percent_encoding::percent_decode_str(id)
            .decode_utf8()
            .ok()
            .map(|id| id.into_owned())
    };
    let (device, tail) = path.split_once('/').unwrap_or((path, ""));
    let device_id = DeviceId::new(&decoded(device)?).ok()?;
    let module = tail
        .get(.."modules/".len())
        .filter(|head| head.eq_ignore_ascii_case("modules/"))
        .map(|_| &tail["modules/".len()..]);
    let Some(module_path) = module else {
        return Some((Endpoint::device(device_id), tail));
    };
    let (module, tail) = module_path.split_once('/').unwrap_or((module_path, ""));
    let module_id = ModuleId::new(&decoded(module)?).ok()?;
    Some((
        Endpoint {
            device_id,
            module_id: Some(module_id.as_str().to_owned()),
        },
        tail,
    ))
}

fn attach_address(attach: &fe2o3_amqp::types::performatives::Attach) -> Option<String> {
    use fe2o3_amqp::types::definitions::Role;
    // The client's role: a client sender names the target, a client receiver the source.
    match attach.role {
        Role::Sender => match attach.target.as_deref()? {
            fe2o3_amqp::types::messaging::TargetArchetype::Target(target) => target.address.clone(),
            #[allow(unreachable_patterns)]
            _ => None,
        },
        Role::Receiver => attach.source.as_ref()?.address.clone(),
    }
}

impl SessionState {
    fn new(service: Arc<AmqpService>) -> Self {
        SessionState {
            service,
            cbs: RequestLinks::default(),
            management: RequestLinks::default(),
            twin: None,
            twin_requests: None,
            pending: FuturesUnordered::new(),
            route: None,
            route_resync: None,
            method_requests: None,
            method_answers: None,
            idle: Vec::new(),
        }
    }

    async fn run(&mut self, mut session: ListenerSessionHandle, authorizations: Arc<Mutex<Authorizations>>) {
        loop {
            let incoming = {
                tokio::select! {
                    attach = session.next_incoming_attach() => match attach {
                        Some(attach) => Incoming::Attach(attach),
                        None => Incoming::SessionEnded,
                    },
                    delivery = recv_on(&mut self.cbs.requests) => Incoming::Cbs(delivery),
                    delivery = recv_on(&mut self.management.requests) => Incoming::Management(delivery),
                    delivery = recv_on(&mut self.twin_requests), if self.pending.len() < TWIN_REQUESTS_IN_FLIGHT_MAX => Incoming::Twin(delivery),
                    Some(answer) = self.pending.next(), if !self.pending.is_empty() => Incoming::Answered(answer),
                    mail = async {
                        match self.route.as_mut() {
                            Some((_, mailbox)) => mailbox.mail.recv().await,
                            None => std::future::pending().await,
                        }
                    } => Incoming::Mail(mail),
                    () = async {
                        match self.route_resync.as_ref() {
                            Some(resync) => resync.notified().await,
                            None => std::future::pending().await,
                        }
                    } => Incoming::Resync,
                    delivery = recv_on(&mut self.method_answers) => Incoming::MethodAnswer(delivery),
                }
            };
            match incoming {
                Incoming::SessionEnded => break,
                Incoming::Attach(attach) => self.attach(attach, &mut session, &authorizations).await,
                Incoming::Cbs(Ok(delivery)) => {
                    if let Some(receiver) = self.cbs.requests.as_mut() {
                        let _ = receiver.accept(&delivery).await;
                    }
                    let request = delivery.into_message();
                    // In a cluster, a device created through another node a moment ago is known here
                    // before its token is checked (read-your-writes across nodes).
                    self.service.hub.read_barrier().await;
                    let outcome = {
                        let mut authorizations = authorizations.lock().await;
                        cbs::put_token(&self.service, &mut authorizations, &request)
                    };
                    if let Some(endpoint) = outcome.newly_connected {
                        if let Err(error) = self.service.hub.presence_of(&endpoint, PresenceEvent::Connected).await {
                            tracing::info!(%error, "could not record the connection");
                        }
                    }
                    let response = request_response::response(&request, outcome.status, &outcome.description, None);
                    self.cbs.respond(response).await;
                }
                Incoming::Cbs(Err(error)) => {
                    tracing::debug!(%error, "CBS link ended");
                    self.cbs.requests = None;
                }
                Incoming::Management(Ok(delivery)) => {
                    if let Some(receiver) = self.management.requests.as_mut() {
                        let _ = receiver.accept(&delivery).await;
                    }
                    let request = delivery.into_message();
                    let response = self.management_request(&request, &authorizations).await;
                    self.management.respond(response).await;
                }
                Incoming::Management(Err(error)) => {
                    tracing::debug!(%error, "$management link ended");
                    self.management.requests = None;
                }
                Incoming::Twin(Ok(delivery)) => self.twin_request(delivery, &authorizations).await,
                Incoming::Twin(Err(error)) => {
                    tracing::debug!(%error, "twin request link ended");
                    self.twin_requests = None;
                }
                Incoming::Mail(Some(DeviceMail::Desired(change))) => self.desired(&change).await,
                Incoming::Mail(Some(DeviceMail::Method(request))) => {
                    // Without the requests link the call times out, as for a device that never answers.
                    if let Some(sender) = self.method_requests.as_mut() {
                        send_settled(sender, methods::request_message(&request)).await;
                    }
                }
                Incoming::Mail(None) => {
                    self.route = None;
                    self.route_resync = None;
                }
                Incoming::Resync => self.resync_desired().await,
                Incoming::MethodAnswer(Ok(delivery)) => self.method_answer(delivery).await,
                Incoming::MethodAnswer(Err(error)) => {
                    tracing::debug!(%error, "method answer link ended");
                    self.method_answers = None;
                }
                Incoming::Answered(answer) => {
                    if let Some(twin) = self.twin.as_mut() {
                        twin.deliver(answer).await;
                    }
                }
            }
        }
        let _ = session.end().await;
    }

    async fn attach(
        &mut self,
        attach: fe2o3_amqp::types::performatives::Attach,
        session: &mut ListenerSessionHandle,
        authorizations: &Arc<Mutex<Authorizations>>,
    ) {
        let address = attach_address(&attach).unwrap_or_default();
        let kind = classify(&address);
        if let Address::EventHub(event_hub) = kind {
            self.attach_event_hub(attach, event_hub, session, authorizations).await;
            return;
        }
        let identity = match &kind {
            Address::Twin(endpoint)
            | Address::Telemetry(endpoint)
            | Address::Methods(endpoint)
            | Address::CloudToDevice(endpoint)
            | Address::DeviceOther(endpoint) => Some(endpoint.clone()),
            _ => None,
        };
        // A device's cloud-to-device link is the one the hub sends unsettled on: the device's outcome
        // settles each message.
        let acceptor = match kind {
            Address::CloudToDevice(_) => link_acceptor_settled_by_peer(),
            _ => link_acceptor(),
        };
        let link = match acceptor.accept_incoming_attach(attach, session).await {
            Ok(link) => link,
            Err(error) => {
                tracing::info!(%address, %error, "AMQP link refused");
                return;
            }
        };
        // A token covers its own device or module only: a module's opens neither its device's links
        // nor another module's, and a device's opens none of its modules'.
        let authorized = match &identity {
            Some(endpoint) => authorizations.lock().await.covers(endpoint),
            None => match kind {
                Address::Cbs => true,
                Address::ServiceCloudToDevice | Address::ServiceFeedback => {
                    authorizations.lock().await.covers_service()
                }
                _ => false,
            },
        };
        if !authorized {
            let condition = if kind == Address::Unknown {
                ErrorCondition::AmqpError(AmqpError::NotFound)
            } else {
                ErrorCondition::AmqpError(AmqpError::UnauthorizedAccess)
            };
            tracing::info!(%address, "AMQP link detached: no valid token covers it, or unknown address");
            detach(link, condition).await;
            return;
        }
        match (kind, link) {
            (Address::Cbs, link) => self.cbs.attach(link).await,
            (Address::Twin(endpoint), link) => {
                if !self.route_for(&endpoint) {
                    detach(link, ErrorCondition::AmqpError(AmqpError::NotAllowed)).await;
                    return;
                }
                let twin = self.twin.get_or_insert_with(|| TwinLinks {
                    endpoint: endpoint.clone(),
                    responses: None,
                    unsent: Vec::new(),
                    subscribed: false,
                });
                if twin.endpoint != endpoint {
                    // One device's twin per session, as every SDK does it.
                    detach(link, ErrorCondition::AmqpError(AmqpError::NotAllowed)).await;
                    return;
                }
                match link {
                    LinkEndpoint::Receiver(receiver) => self.twin_requests = Some(receiver),
                    LinkEndpoint::Sender(mut sender) => {
                        for message in twin.unsent.drain(..) {
                            send_settled(&mut sender, message).await;
                        }
                        twin.responses = Some(sender);
                    }
                }
            }
            (Address::ServiceCloudToDevice, LinkEndpoint::Receiver(receiver)) => {
                tokio::spawn(cloud_to_device::receive_sends(
                    Arc::clone(&self.service),
                    receiver,
                    Arc::clone(authorizations),
                ));
            }
            (Address::ServiceFeedback, LinkEndpoint::Sender(sender)) => {
                tokio::spawn(cloud_to_device::serve_feedback(Arc::clone(&self.service), sender));
            }
            (Address::CloudToDevice(endpoint), LinkEndpoint::Sender(sender)) => {
                if endpoint.module_id.is_some() {
                    // IoT Hub sends cloud-to-device messages to devices only.
                    detach(
                        LinkEndpoint::Sender(sender),
                        ErrorCondition::AmqpError(AmqpError::NotAllowed),
                    )
                    .await;
                    return;
                }
                tokio::spawn(cloud_to_device::deliver(
                    Arc::clone(&self.service),
                    sender,
                    endpoint.device_id,
                ));
            }
            (Address::Telemetry(endpoint), LinkEndpoint::Receiver(receiver)) => {
                tokio::spawn(super::telemetry::receive(
                    Arc::clone(&self.service),
                    receiver,
                    endpoint,
                    Arc::clone(authorizations),
                ));
            }
            (Address::Methods(endpoint), link) => {
                if !self.route_for(&endpoint) {
                    // One device or module per session, as every SDK does it.
                    detach(link, ErrorCondition::AmqpError(AmqpError::NotAllowed)).await;
                    return;
                }
                match link {
                    LinkEndpoint::Receiver(receiver) => self.method_answers = Some(receiver),
                    LinkEndpoint::Sender(sender) => {
                        self.method_requests = Some(sender);
                        self.listen(|interests| interests.methods = true);
                    }
                }
            }
            (_, link) => self.idle.push(link),
        }
    }

    async fn twin_request(
        &mut self,
        delivery: fe2o3_amqp::link::delivery::Delivery<Body<Value>>,
        authorizations: &Arc<Mutex<Authorizations>>,
    ) {
        let Some(twin) = self.twin.as_mut() else { return };
        if let Some(receiver) = self.twin_requests.as_mut() {
            let _ = receiver.accept(&delivery).await;
        }
        if !authorizations.lock().await.covers(&twin.endpoint) {
            tracing::info!(endpoint = %twin.endpoint, "twin request after the token expired: detaching");
            if let Some(receiver) = self.twin_requests.take() {
                let _ = receiver
                    .close_with_error(AmqpErrorBody::new(
                        ErrorCondition::AmqpError(AmqpError::UnauthorizedAccess),
                        Some("the token expired".into()),
                        None,
                    ))
                    .await;
            }
            return;
        }
        let request = delivery.into_message();
        if matches!(twin::operation(&request), twin::TwinOperation::Get) {
            // Read-your-writes across nodes: the twin as of every write acknowledged anywhere.
            self.service.hub.read_barrier().await;
        }
        let was_subscribed = twin.subscribed;
        let answer = twin::answer(&self.service, &twin.endpoint, &request, &mut twin.subscribed);
        let endpoint = twin.endpoint.clone();
        let newly_subscribed = twin.subscribed && !was_subscribed;
        let subscribed = twin.subscribed;
        match answer {
            twin::Answer::Now(message) => twin.deliver(*message).await,
            twin::Answer::Later(future) => self.pending.push(future),
        }
        if subscribed != was_subscribed {
            self.listen(|interests| interests.desired = subscribed);
        }
        let Some(twin) = self.twin.as_mut() else { return };
        if newly_subscribed {
            // Beyond IoT Hub, as over MQTT: right after the answer, the whole document to a device that
            // missed changes (since its GET, or while the hub knew nothing of it).
            if let Ok(record) = self.service.hub.twin_of(&endpoint) {
                let version = record.twin.desired.version;
                if self
                    .service
                    .desired_cursor(&endpoint, |cursor| cursor.subscribed(version))
                {
                    twin.deliver(twin::full_desired(&record)).await;
                }
            }
        }
    }

    /// Registers this session's device or module in the hub's device router, once; false when the
    /// session already serves another.
    fn route_for(&mut self, endpoint: &Endpoint) -> bool {
        if let Some((registration, _)) = &self.route {
            return registration.endpoint() == endpoint;
        }
        let (registration, mailbox) =
            self.service
                .hub
                .device_router()
                .register(endpoint.clone(), Interests::default(), ROUTE_MAILBOX_CAPACITY);
        self.route_resync = Some(Arc::clone(&mailbox.resync));
        self.route = Some((registration, mailbox));
        true
    }

    /// Changes what the session's device listens to in the router.
    fn listen(&self, change: impl FnOnce(&mut Interests)) {
        if let Some((registration, _)) = &self.route {
            registration.update(change);
        }
    }

    /// A committed desired change, sent unless the device already has it.
    async fn desired(&mut self, change: &twinhub_core::twin::DesiredChange) {
        let Some(twin) = self.twin.as_mut() else { return };
        if !twin.subscribed
            || !self
                .service
                .desired_cursor(&twin.endpoint, |cursor| cursor.take_change(change.version))
        {
            return;
        }
        twin.deliver(twin::desired_notification(change)).await;
    }

    /// The device missed desired changes (its mailbox was full, or the router lagged): the whole
    /// document, if the version moved past what it was given.
    async fn resync_desired(&mut self) {
        let Some(twin) = self.twin.as_mut() else { return };
        if !twin.subscribed {
            return;
        }
        let Ok(record) = self.service.hub.twin_of(&twin.endpoint) else {
            return;
        };
        let version = record.twin.desired.version;
        if self
            .service
            .desired_cursor(&twin.endpoint, |cursor| cursor.catch_up(version))
        {
            twin.deliver(twin::full_desired(&record)).await;
        }
    }

    /// A device's answer to a direct method: accepted (Node waits for it), then handed to the waiting
    /// call. An answer the hub cannot match is rejected with `amqp:not-found`, an unreadable one with
    /// `amqp:decode-error`.
    async fn method_answer(&mut self, delivery: fe2o3_amqp::link::delivery::Delivery<Body<Value>>) {
        let Some(receiver) = self.method_answers.as_mut() else {
            return;
        };
        let Some((registration, _)) = &self.route else { return };
        let refusal = match methods::read_answer(delivery.message()) {
            Ok((request_id, answer)) => {
                match self
                    .service
                    .hub
                    .device_router()
                    .answer(registration.endpoint(), request_id, answer)
                {
                    Ok(()) => None,
                    Err(refused) => Some((ErrorCondition::AmqpError(AmqpError::NotFound), refused.to_string())),
                }
            }
            Err(unreadable) => Some((
                ErrorCondition::AmqpError(AmqpError::DecodeError),
                unreadable.to_string(),
            )),
        };
        let settled = match refusal {
            None => receiver.accept(&delivery).await,
            Some((condition, description)) => {
                tracing::info!(device_id = %registration.endpoint(), %description, "method answer refused");
                receiver
                    .reject(&delivery, AmqpErrorBody::new(condition, Some(description), None))
                    .await
            }
        };
        if let Err(error) = settled {
            tracing::debug!(%error, "could not settle a method answer");
        }
    }
}

impl SessionState {
    /// A link of the Event Hubs-compatible endpoint: `$management`, or a partition receiver (checked
    /// against the connection's Event Hubs tokens, its filter and the owner-level rules before it reads).
    async fn attach_event_hub(
        &mut self,
        attach: fe2o3_amqp::types::performatives::Attach,
        address: EventHubAddress,
        session: &mut ListenerSessionHandle,
        authorizations: &Arc<Mutex<Authorizations>>,
    ) {
        let (event_hub, consumer_group, partition) = match &address {
            EventHubAddress::Management => {
                match link_acceptor().accept_incoming_attach(attach, session).await {
                    Ok(link) => self.management.attach(link).await,
                    Err(error) => tracing::info!(%error, "$management link refused"),
                }
                return;
            }
            EventHubAddress::Partition {
                event_hub,
                consumer_group,
                partition,
            } => (event_hub.clone(), consumer_group.clone(), partition.clone()),
        };
        let filter = attach.source.as_ref().and_then(|source| source.filter.as_ref());
        let start = event_hubs::filter::start_position(filter);
        let owner_level = attach
            .properties
            .as_ref()
            .and_then(|properties| properties.get(&Symbol::from("com.microsoft:epoch")))
            .and_then(|value| match value {
                Value::Long(level) => Some(*level),
                Value::Int(level) => Some(i64::from(*level)),
                _ => None,
            });
        let link = match link_acceptor().accept_incoming_attach(attach, session).await {
            Ok(LinkEndpoint::Sender(sender)) => sender,
            Ok(other) => {
                detach(other, ErrorCondition::AmqpError(AmqpError::NotAllowed)).await;
                return;
            }
            Err(error) => {
                tracing::info!(%error, "Event Hubs receiver link refused");
                return;
            }
        };
        let path = address.entity_path();
        if !authorizations.lock().await.covers_event_hub(&path) {
            tracing::info!(%path, "Event Hubs receiver detached: no valid Event Hubs token covers it");
            detach(
                LinkEndpoint::Sender(link),
                ErrorCondition::AmqpError(AmqpError::UnauthorizedAccess),
            )
            .await;
            return;
        }
        let Some((hub_name, log)) = self.service.event_hub(&event_hub) else {
            tracing::info!(%path, "Event Hubs receiver detached: no such event hub");
            detach(
                LinkEndpoint::Sender(link),
                ErrorCondition::AmqpError(AmqpError::NotFound),
            )
            .await;
            return;
        };
        let opened = async {
            let scope = (!hub_name.eq_ignore_ascii_case(&self.service.hub_name)).then_some(hub_name.as_str());
            if !self.service.hub.has_consumer_group_in(scope, &consumer_group) {
                return Err(event_hubs::receiver::Refusal::not_found(format!(
                    "The messaging entity '{hub_name}/ConsumerGroups/{consumer_group}' could not be found."
                )));
            }
            let partition_id = partition
                .parse::<u16>()
                .ok()
                .filter(|id| *id < log.partition_count())
                .ok_or_else(|| {
                    event_hubs::receiver::Refusal::argument_out_of_range(format!(
                        "the partition '{partition}' does not exist; the partitions are 0 to {}",
                        log.partition_count().saturating_sub(1)
                    ))
                })?;
            let start = start.map_err(|error| event_hubs::receiver::Refusal::argument_error(error.to_string()))?;
            let first = event_hubs::receiver::first_sequence(&log, partition_id, start).await?;
            let registration =
                self.service
                    .receivers
                    .register(&format!("{hub_name}/{consumer_group}"), partition_id, owner_level)?;
            Ok::<_, event_hubs::receiver::Refusal>((partition_id, first, registration))
        };
        match opened.await {
            Ok((partition_id, first, registration)) => {
                tracing::info!(%path, first, ?owner_level, "Event Hubs receiver attached");
                tokio::spawn(event_hubs::receiver::serve(
                    link,
                    log,
                    partition_id,
                    first,
                    registration,
                ));
            }
            Err(refusal) => {
                tracing::info!(%path, reason = %refusal.description, "Event Hubs receiver refused");
                let _ = link.close_with_error(refusal.into_error()).await;
            }
        }
    }

    /// A `$management` request: authorized by its own `security_token` or by an Event Hubs token of the
    /// connection for this hub; answered with the event hub's or a partition's properties.
    async fn management_request(
        &mut self,
        request: &Message<Body<Value>>,
        authorizations: &Arc<Mutex<Authorizations>>,
    ) -> Message<Body<Value>> {
        use super::request_response::{application_string, response};
        use event_hubs::management::{read, read_request};
        let service = &self.service;
        let (name, asked) = match read_request(request) {
            Ok(read) => read,
            Err((status, description)) => return response(request, status, &description, None),
        };
        let Some((name, log)) = service.event_hub(&name) else {
            let description = format!("The messaging entity '{name}' could not be found");
            return response(request, 404, &description, None);
        };
        let entity = name.to_ascii_lowercase();
        let by_token = application_string(request, "security_token")
            .and_then(|text| twinhub_core::sas::SasToken::parse(&text).ok())
            .and_then(|token| {
                twinhub_core::device_auth::authorize_event_hubs(
                    &token,
                    &|name| service.is_event_hub(name),
                    &service.policies,
                    twinhub_core::Timestamp::now().unix_seconds(),
                )
                .ok()
            })
            .is_some_and(|scope| scope.split('/').next() == Some(entity.as_str()));
        let by_connection = authorizations.lock().await.has_event_hub_token(&entity);
        if !(by_token || by_connection) {
            return response(
                request,
                401,
                "Unauthorized: no valid Event Hubs token for this event hub",
                None,
            );
        }
        match read(&log, &name, &asked) {
            Ok(body) => response(request, 200, "OK", Some(body)),
            Err((status, description)) => response(request, status, &description, None),
        }
    }
}

impl TwinLinks {
    /// Sends on the client's twin receiver link, or keeps the message until that link is attached (a
    /// client may send its first request before the link for the answers is up).
    async fn deliver(&mut self, message: Message<Body<Value>>) {
        match self.responses.as_mut() {
            Some(sender) => send_settled(sender, message).await,
            None => self.unsent.push(message),
        }
    }
}

async fn send_settled(sender: &mut Sender, message: Message<Body<Value>>) {
    if let Err(error) = sender
        .send(Sendable::builder().message(message).settled(true).build())
        .await
    {
        tracing::debug!(%error, "AMQP send failed");
    }
}

async fn detach(link: LinkEndpoint, condition: ErrorCondition) {
    let error = AmqpErrorBody::new(condition, None, None);
    match link {
        LinkEndpoint::Sender(sender) => {
            let _ = sender.close_with_error(error).await;
        }
        LinkEndpoint::Receiver(receiver) => {
            let _ = receiver.close_with_error(error).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_name_cbs_twin_or_other_device_links() {
        assert_eq!(classify("$cbs"), Address::Cbs);
        let dev1 = || Endpoint::device(DeviceId::new("dev1").unwrap());
        let module = |id: &str| Endpoint {
            device_id: DeviceId::new("dev1").unwrap(),
            module_id: Some(id.into()),
        };
        assert_eq!(classify("/devices/dev1/twin"), Address::Twin(dev1()));
        assert_eq!(classify("/devices/dev1/twin/"), Address::DeviceOther(dev1()));
        assert_eq!(classify("/devices/dev%201/twin"), Address::Unknown, "an invalid id");
        assert_eq!(classify("/devices/dev1/messages/events"), Address::Telemetry(dev1()));
        assert_eq!(
            classify("/devices/dev1/messages/deviceBound"),
            Address::CloudToDevice(dev1())
        );
        assert_eq!(classify("/messages/serviceBound/feedback"), Address::ServiceFeedback);
        assert_eq!(classify("/devices/dev1/methods/devicebound"), Address::Methods(dev1()));
        assert_eq!(classify("/devices/dev1/modules/app/twin"), Address::Twin(module("app")));
        assert_eq!(
            classify("/devices/dev1/modules/app%2Bx/methods/devicebound"),
            Address::Methods(module("app+x"))
        );
        assert_eq!(
            classify("/devices/dev1/modules/app/messages/events"),
            Address::Telemetry(module("app"))
        );
        assert_eq!(classify("/devices/dev1/modules//twin"), Address::Unknown);
        assert_eq!(classify("/messages/devicebound"), Address::ServiceCloudToDevice);
        assert_eq!(
            classify("amqps://hub.example/messages/devicebound"),
            Address::ServiceCloudToDevice
        );
        assert_eq!(classify("$management"), Address::EventHub(EventHubAddress::Management));
        assert!(matches!(
            classify("hub/ConsumerGroups/$Default/Partitions/0"),
            Address::EventHub(EventHubAddress::Partition { .. })
        ));
        assert_eq!(classify("/nowhere"), Address::Unknown);
    }
}
