//! Which connection serves each device, and delivery to it, whatever its transport. Every device
//! connection (MQTT, AMQP) registers here with what it listens to (desired notifications, methods); the
//! hub then hands it mail: desired changes as they commit, method requests as back ends call. Direct
//! method calls wait here for their answers, matched by request id and by the device that must give them.
//!
//! Delivery never blocks on a connection: a full mailbox drops a desired change and raises the route's
//! `resync` instead (the connection then sends the whole desired document); a method request waits for
//! room only as long as the call may wait.

use crate::HubError;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use tokio::sync::{broadcast, mpsc, oneshot, watch, Notify};
use tokio::time::Instant;
use twinhub_core::method::{MethodAnswer, MethodCall, MethodCallError};
use twinhub_core::twin::DesiredChange;
use twinhub_core::DeviceId;

/// Who a connection acts as: a device, or one of its modules.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Endpoint {
    pub device_id: DeviceId,
    pub module_id: Option<String>,
}

impl Endpoint {
    pub fn device(device_id: DeviceId) -> Endpoint {
        Endpoint {
            device_id,
            module_id: None,
        }
    }
}

impl std::fmt::Display for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.module_id {
            Some(module) => write!(f, "{}/{module}", self.device_id),
            None => write!(f, "{}", self.device_id),
        }
    }
}

/// What a connection listens to; set as the device subscribes and unsubscribes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Interests {
    pub desired: bool,
    pub methods: bool,
    /// Cloud-to-device messages.
    pub c2d: bool,
}

/// A method request's id, unique in the hub; on the wire as lower-case hex (MQTT `$rid`, AMQP
/// correlation-id), so any id a device echoes back can be read again.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct MethodRequestId(u64);

impl std::fmt::Display for MethodRequestId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:x}", self.0)
    }
}

impl MethodRequestId {
    pub fn parse(text: &str) -> Option<MethodRequestId> {
        if text.is_empty() || text.len() > 16 {
            return None;
        }
        u64::from_str_radix(text, 16).ok().map(MethodRequestId)
    }
}

/// A method request, as a connection delivers it.
#[derive(Clone, Debug, PartialEq)]
pub struct MethodRequest {
    pub request_id: MethodRequestId,
    pub name: String,
    /// JSON text.
    pub payload: String,
}

/// Boxed where large, so that a connection's mailbox (allocated in blocks of slots of this size) stays
/// small: tens of thousands of idle connections each hold one.
#[derive(Debug)]
pub enum DeviceMail {
    Desired(Arc<DesiredChange>),
    Method(Box<MethodRequest>),
}

/// A registered connection's side: its mail, the signal that it missed desired changes, and the signal
/// that its device's cloud-to-device queue may have a message for it.
pub struct Mailbox {
    pub mail: mpsc::Receiver<DeviceMail>,
    pub resync: Arc<Notify>,
    pub c2d_ready: Arc<Notify>,
}

/// Why a device's method answer was not taken.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum AnswerRefused {
    #[error("no call waits for request {0}: it was answered, timed out, or never made")]
    NoSuchRequest(MethodRequestId),
    #[error("request {0} was made to another device")]
    NotYours(MethodRequestId),
}

struct Route {
    id: u64,
    mailbox: mpsc::Sender<DeviceMail>,
    resync: Arc<Notify>,
    c2d_ready: Arc<Notify>,
    interests: Interests,
}

struct PendingCall {
    endpoint: Endpoint,
    /// The device's answer, or why it could not be passed on (not JSON, too large).
    answer: oneshot::Sender<Result<MethodAnswer, MethodCallError>>,
}

#[derive(Default)]
struct RouterState {
    routes: HashMap<Endpoint, Vec<Route>>,
    calls: HashMap<MethodRequestId, PendingCall>,
}

impl RouterState {
    fn listens_to_methods(&self, endpoint: &Endpoint) -> bool {
        self.routes
            .get(endpoint)
            .is_some_and(|routes| routes.iter().any(|route| route.interests.methods))
    }
}

pub struct DeviceRouter {
    state: Mutex<RouterState>,
    /// In a cluster: told when an endpoint gains its first, or loses its last, connection here that
    /// listens to methods (so the node serves it to the others: `remote_methods.rs`).
    method_listeners: std::sync::OnceLock<mpsc::UnboundedSender<(Endpoint, bool)>>,
    /// Bumped whenever a route's interests change: calls waiting for a device to come online look again.
    routes_changed: watch::Sender<u64>,
    next_id: AtomicU64,
}

impl Default for DeviceRouter {
    fn default() -> Self {
        DeviceRouter {
            state: Mutex::default(),
            method_listeners: std::sync::OnceLock::new(),
            routes_changed: watch::Sender::new(0),
            next_id: AtomicU64::new(1),
        }
    }
}

/// A connection's place in the router; dropping it unregisters the connection.
pub struct Registration {
    router: Arc<DeviceRouter>,
    endpoint: Endpoint,
    id: u64,
}

impl Registration {
    pub fn endpoint(&self) -> &Endpoint {
        &self.endpoint
    }

    /// Changes what the connection listens to.
    pub fn update(&self, change: impl FnOnce(&mut Interests)) {
        {
            let mut state = self.router.state();
            let listened = state.listens_to_methods(&self.endpoint);
            if let Some(route) = state
                .routes
                .get_mut(&self.endpoint)
                .and_then(|routes| routes.iter_mut().find(|route| route.id == self.id))
            {
                change(&mut route.interests);
            }
            self.router.methods_listening(&state, &self.endpoint, listened);
        }
        self.router.routes_changed.send_modify(|generation| *generation += 1);
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        {
            let mut state = self.router.state();
            let listened = state.listens_to_methods(&self.endpoint);
            if let Some(routes) = state.routes.get_mut(&self.endpoint) {
                routes.retain(|route| route.id != self.id);
                if routes.is_empty() {
                    state.routes.remove(&self.endpoint);
                }
            }
            self.router.methods_listening(&state, &self.endpoint, listened);
        }
        self.router.routes_changed.send_modify(|generation| *generation += 1);
    }
}

/// Calls waiting for an answer are forgotten however the wait ends.
struct CallGuard<'a> {
    router: &'a DeviceRouter,
    id: MethodRequestId,
}

impl Drop for CallGuard<'_> {
    fn drop(&mut self) {
        self.router.state().calls.remove(&self.id);
    }
}

impl DeviceRouter {
    fn state(&self) -> MutexGuard<'_, RouterState> {
        // Plain maps: a panic elsewhere leaves them usable.
        self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn next_id(&self) -> u64 {
        self.next_id.fetch_add(1, Ordering::Relaxed)
    }

    /// Registers a connection of `endpoint`; `capacity` bounds its mailbox.
    pub fn register(
        self: &Arc<Self>,
        endpoint: Endpoint,
        interests: Interests,
        capacity: usize,
    ) -> (Registration, Mailbox) {
        let (mailbox, mail) = mpsc::channel(capacity.max(1));
        let resync = Arc::new(Notify::new());
        let c2d_ready = Arc::new(Notify::new());
        let id = self.next_id();
        {
            let mut state = self.state();
            let listened = state.listens_to_methods(&endpoint);
            state.routes.entry(endpoint.clone()).or_default().push(Route {
                id,
                mailbox,
                resync: Arc::clone(&resync),
                c2d_ready: Arc::clone(&c2d_ready),
                interests,
            });
            self.methods_listening(&state, &endpoint, listened);
        }
        self.routes_changed.send_modify(|generation| *generation += 1);
        (
            Registration {
                router: Arc::clone(self),
                endpoint,
                id,
            },
            Mailbox {
                mail,
                resync,
                c2d_ready,
            },
        )
    }

    /// A committed desired change, to every connection of the device that listens to them.
    pub fn deliver_desired(&self, device_id: &DeviceId, change: &Arc<DesiredChange>) {
        self.deliver_desired_to(&Endpoint::device(device_id.clone()), change);
    }

    /// The same for a device or a module's connections.
    pub fn deliver_desired_to(&self, endpoint: &Endpoint, change: &Arc<DesiredChange>) {
        let state = self.state();
        let Some(routes) = state.routes.get(endpoint) else {
            return;
        };
        for route in routes.iter().filter(|route| route.interests.desired) {
            if route.mailbox.try_send(DeviceMail::Desired(Arc::clone(change))).is_err() {
                route.resync.notify_one();
            }
        }
    }

    /// The device's queue may have a message to take: every connection of it that takes cloud-to-device
    /// messages is told (a signal that is kept until taken, so none is lost to a busy connection).
    pub fn cloud_to_device_ready(&self, device_id: &DeviceId) {
        let state = self.state();
        let Some(routes) = state.routes.get(&Endpoint::device(device_id.clone())) else {
            return;
        };
        for route in routes.iter().filter(|route| route.interests.c2d) {
            route.c2d_ready.notify_one();
        }
    }

    /// Every connection that listens to desired changes missed some (the router lagged).
    pub fn resync_all(&self) {
        let state = self.state();
        for route in state.routes.values().flatten().filter(|route| route.interests.desired) {
            route.resync.notify_one();
        }
    }

    /// Tells the cluster's method server when `endpoint` started or stopped listening to methods here.
    /// Called with the state locked, so the changes are told in the order they happened.
    fn methods_listening(&self, state: &RouterState, endpoint: &Endpoint, listened: bool) {
        let Some(listeners) = self.method_listeners.get() else {
            return;
        };
        let listens = state.listens_to_methods(endpoint);
        if listens != listened {
            let _ = listeners.send((endpoint.clone(), listens));
        }
    }

    /// In a cluster: the endpoints that start or stop listening to methods here, from now on.
    pub(crate) fn watch_method_listeners(&self) -> Option<mpsc::UnboundedReceiver<(Endpoint, bool)>> {
        let (listeners, listening) = mpsc::unbounded_channel();
        self.method_listeners.set(listeners).ok()?;
        Some(listening)
    }

    /// Whether a connection of `endpoint` here listens to methods.
    pub(crate) fn listens_to_methods(&self, endpoint: &Endpoint) -> bool {
        self.state().listens_to_methods(endpoint)
    }

    /// The newest connection of `endpoint` that listens to methods.
    fn method_route(&self, endpoint: &Endpoint) -> Option<mpsc::Sender<DeviceMail>> {
        let state = self.state();
        state
            .routes
            .get(endpoint)?
            .iter()
            .rev()
            .find(|route| route.interests.methods)
            .map(|route| route.mailbox.clone())
    }

    /// Calls a method: waits up to the call's connect timeout for a connection that listens to methods,
    /// then up to its response timeout for the answer. `DeviceNotOnline` or `MethodTimeout` otherwise.
    pub async fn call(&self, endpoint: &Endpoint, call: MethodCall) -> Result<MethodAnswer, HubError> {
        let not_online = || HubError::DeviceNotOnline(endpoint.to_string());
        let mut routes_changed = self.routes_changed.subscribe();
        let connect_deadline = Instant::now() + call.connect_timeout;
        let mailbox = loop {
            routes_changed.borrow_and_update();
            if let Some(mailbox) = self.method_route(endpoint) {
                break mailbox;
            }
            match tokio::time::timeout_at(connect_deadline, routes_changed.changed()).await {
                Ok(Ok(())) => continue,
                _ => return Err(not_online()),
            }
        };
        let id = MethodRequestId(self.next_id());
        let (answer, answered) = oneshot::channel();
        self.state().calls.insert(
            id,
            PendingCall {
                endpoint: endpoint.clone(),
                answer,
            },
        );
        let _forget = CallGuard { router: self, id };
        let deadline = Instant::now() + call.response_timeout;
        let request = DeviceMail::Method(Box::new(MethodRequest {
            request_id: id,
            name: call.name,
            payload: call.payload,
        }));
        match tokio::time::timeout_at(deadline, mailbox.send(request)).await {
            Ok(Ok(())) => {}
            // The connection ended between the lookup and the send.
            Ok(Err(_)) => return Err(not_online()),
            Err(_) => return Err(HubError::MethodTimeout(call.response_timeout.as_secs())),
        }
        match tokio::time::timeout_at(deadline, answered).await {
            Ok(Ok(answer)) => answer.map_err(HubError::from),
            _ => Err(HubError::MethodTimeout(call.response_timeout.as_secs())),
        }
    }

    /// A device's answer to request `id` (or what was wrong with it, for the caller). Taken only from
    /// the device the request went to; an answer to a call that is over (timed out, answered) is refused
    /// and changes nothing.
    pub fn answer(
        &self,
        endpoint: &Endpoint,
        id: MethodRequestId,
        answer: Result<MethodAnswer, MethodCallError>,
    ) -> Result<(), AnswerRefused> {
        let mut state = self.state();
        match state.calls.get(&id) {
            None => return Err(AnswerRefused::NoSuchRequest(id)),
            Some(pending) if &pending.endpoint != endpoint => return Err(AnswerRefused::NotYours(id)),
            Some(_) => {}
        }
        if let Some(pending) = state.calls.remove(&id) {
            // The caller may have given up this instant; then the answer is late, as if it came later.
            let _ = pending.answer.send(answer);
        }
        Ok(())
    }
}

/// Routes the hub's committed desired changes to the connections registered for them, until the hub's
/// events end.
pub(crate) async fn route_events(mut events: broadcast::Receiver<crate::HubEvent>, router: Arc<DeviceRouter>) {
    use broadcast::error::RecvError;
    loop {
        match events.recv().await {
            Ok(crate::HubEvent::DesiredChanged { device_id, change }) => {
                router.deliver_desired(&device_id, &Arc::new(change));
            }
            Ok(crate::HubEvent::ModuleDesiredChanged {
                device_id,
                module_id,
                change,
            }) => {
                let endpoint = Endpoint {
                    device_id,
                    module_id: Some(module_id.as_str().to_owned()),
                };
                router.deliver_desired_to(&endpoint, &Arc::new(change));
            }
            Ok(_) => {}
            Err(RecvError::Lagged(missed)) => {
                tracing::warn!(
                    missed,
                    "desired notifications fell behind; connected devices get the full desired document"
                );
                router.resync_all();
            }
            Err(RecvError::Closed) => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn endpoint(id: &str) -> Endpoint {
        Endpoint::device(DeviceId::new(id).unwrap())
    }

    fn call(timeout_seconds: u64, connect_seconds: u64) -> MethodCall {
        MethodCall {
            name: "reboot".into(),
            payload: r#"{"delay":1}"#.into(),
            response_timeout: Duration::from_secs(timeout_seconds),
            connect_timeout: Duration::from_secs(connect_seconds),
        }
    }

    fn methods() -> Interests {
        Interests {
            methods: true,
            ..Interests::default()
        }
    }

    async fn next_request(mailbox: &mut Mailbox) -> MethodRequest {
        match mailbox.mail.recv().await {
            Some(DeviceMail::Method(request)) => *request,
            other => panic!("expected a method request, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn a_call_reaches_the_device_and_returns_its_answer() {
        let router = Arc::new(DeviceRouter::default());
        let (_registration, mut mailbox) = router.register(endpoint("d1"), methods(), 8);
        let caller = {
            let router = Arc::clone(&router);
            tokio::spawn(async move { router.call(&endpoint("d1"), call(5, 0)).await })
        };
        let request = next_request(&mut mailbox).await;
        assert_eq!(
            (request.name.as_str(), request.payload.as_str()),
            ("reboot", r#"{"delay":1}"#)
        );
        let answer = MethodAnswer {
            status: 201,
            payload: r#"{"ok":true}"#.into(),
        };
        // Another device cannot answer it; the right one can, once.
        assert_eq!(
            router.answer(&endpoint("d2"), request.request_id, Ok(answer.clone())),
            Err(AnswerRefused::NotYours(request.request_id))
        );
        router
            .answer(&endpoint("d1"), request.request_id, Ok(answer.clone()))
            .unwrap();
        assert_eq!(caller.await.unwrap().unwrap(), answer);
        assert_eq!(
            router.answer(&endpoint("d1"), request.request_id, Ok(answer)),
            Err(AnswerRefused::NoSuchRequest(request.request_id))
        );
    }

    #[tokio::test(start_paused = true)]
    async fn an_offline_device_or_a_silent_one_fails_the_call() {
        let router = Arc::new(DeviceRouter::default());
        assert!(matches!(
            router.call(&endpoint("d1"), call(5, 0)).await,
            Err(HubError::DeviceNotOnline(_))
        ));
        // Registered without methods: still not online for methods.
        let (registration, mut mailbox) = router.register(endpoint("d1"), Interests::default(), 8);
        assert!(matches!(
            router.call(&endpoint("d1"), call(5, 0)).await,
            Err(HubError::DeviceNotOnline(_))
        ));
        registration.update(|interests| interests.methods = true);
        let started = Instant::now();
        let result = router.call(&endpoint("d1"), call(5, 0)).await;
        assert!(matches!(result, Err(HubError::MethodTimeout(5))), "{result:?}");
        assert_eq!(started.elapsed(), Duration::from_secs(5));
        // The late answer is refused.
        let request = next_request(&mut mailbox).await;
        assert!(router
            .answer(
                &endpoint("d1"),
                request.request_id,
                Ok(MethodAnswer {
                    status: 200,
                    payload: "null".into()
                })
            )
            .is_err());
    }

    #[tokio::test(start_paused = true)]
    async fn a_call_waits_for_a_device_that_connects_within_its_connect_timeout() {
        let router = Arc::new(DeviceRouter::default());
        let caller = {
            let router = Arc::clone(&router);
            tokio::spawn(async move { router.call(&endpoint("d1"), call(5, 10)).await })
        };
        tokio::time::sleep(Duration::from_secs(3)).await;
        let (_registration, mut mailbox) = router.register(endpoint("d1"), methods(), 8);
        let request = next_request(&mut mailbox).await;
        router
            .answer(
                &endpoint("d1"),
                request.request_id,
                Ok(MethodAnswer {
                    status: 200,
                    payload: "1".into(),
                }),
            )
            .unwrap();
        assert_eq!(caller.await.unwrap().unwrap().payload, "1");
    }

    #[tokio::test]
    async fn desired_changes_go_to_listening_connections_and_a_full_mailbox_asks_for_a_resync() {
        let router = Arc::new(DeviceRouter::default());
        let listening = Interests {
            desired: true,
            ..Interests::default()
        };
        let (_a, mut a) = router.register(endpoint("d1"), listening, 1);
        let (_b, mut b) = router.register(endpoint("d1"), Interests::default(), 1);
        let change = |version| {
            Arc::new(DesiredChange {
                version,
                patch: Default::default(),
            })
        };
        router.deliver_desired(&DeviceId::new("d1").unwrap(), &change(2));
        assert!(matches!(a.mail.try_recv(), Ok(DeviceMail::Desired(c)) if c.version == 2));
        assert!(b.mail.try_recv().is_err(), "not listening");
        router.deliver_desired(&DeviceId::new("d1").unwrap(), &change(3));
        router.deliver_desired(&DeviceId::new("d1").unwrap(), &change(4));
        tokio::time::timeout(Duration::from_secs(1), a.resync.notified())
            .await
            .expect("a resync instead of a lost change");
        let _ = &mut b;
    }
}
