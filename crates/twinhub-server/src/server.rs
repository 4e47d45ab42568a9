//! Starting a hub: the data directory, the store, the hub service, and the listeners.

use crate::material::{HubMaterial, MaterialError};
use crate::mqtt::{MqttConfig, MqttService};
use crate::rest;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::{watch, Semaphore};
use tokio_rustls::TlsAcceptor;
use twinhub_hub::{Hub, HubConfig, HubError};
use twinhub_store::{EmbeddedStore, EventStore, Store, StoreError, StoreOptions};

#[derive(Clone)]
pub struct ServeConfig {
    pub data_dir: PathBuf,
    /// The hub's host name: what connection strings say and SAS tokens sign.
    pub hostname: String,
    pub bind: IpAddr,
    pub https_port: u16,
    pub mqtt_port: u16,
    pub amqp_port: u16,
    pub hub: HubConfig,
    /// Connections held at once on the HTTPS listener; more wait in the accept queue.
    pub https_connections_max: usize,
    /// Device connections held at once on each device listener (MQTT/TLS, AMQP/TLS); more wait in the
    /// accept queue.
    pub device_connections_max: usize,
    pub mqtt: MqttConfig,
    /// The store to serve; `None`: the embedded store in `data_dir/store` (what `twinhub serve` uses),
    /// which also keeps the device-to-cloud events. Benchmarks and tests pass their own (without events).
    pub store: Option<Arc<dyn Store>>,
    /// Where device-to-cloud events go when `store` is given (a PostgreSQL node keeps them in its data
    /// directory); `None` with a given `store`: no events.
    pub event_store: Option<Arc<dyn EventStore>>,
    /// In a cluster: the bus to the other nodes (`serve --bus`).
    pub bus: Option<Arc<dyn twinhub_bus::Bus>>,
    /// Partitions of the event log, when the store is created (an existing store keeps its own).
    pub event_partitions: u16,
    /// The name of the Event Hubs-compatible endpoint (`EntityPath`): IoT Hub names it after the hub.
    pub hub_name: String,
    /// Plain AMQP without TLS on this port, for the Event Hubs SDKs' development-emulator mode
    /// (`UseDevelopmentEmulator=true`); off when `None`. Tokens are still required.
    pub event_hubs_emulator_port: Option<u16>,
    /// The operations listener (`/metrics`, `/healthz`); off when `None`.
    pub metrics_bind: Option<SocketAddr>,
    /// Serve the web console at `/console/` on the HTTPS port.
    pub console: bool,
    /// On a cluster's node with a bus: where its event hub endpoints live (JetStream).
    pub event_hubs_in_jetstream: Option<crate::endpoints::EventHubsInJetStream>,
}

impl std::fmt::Debug for ServeConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServeConfig")
            .field("data_dir", &self.data_dir)
            .field("hostname", &self.hostname)
            .field("bind", &self.bind)
            .field("https_port", &self.https_port)
            .field("mqtt_port", &self.mqtt_port)
            .field("amqp_port", &self.amqp_port)
            .field("hub", &self.hub)
            .field("https_connections_max", &self.https_connections_max)
            .field("device_connections_max", &self.device_connections_max)
            .field("mqtt", &self.mqtt)
            .field("store", &self.store.as_ref().map(|_| "custom"))
            .field("event_store", &self.event_store.as_ref().map(|_| "custom"))
            .field("event_partitions", &self.event_partitions)
            .field("hub_name", &self.hub_name)
            .field("event_hubs_emulator_port", &self.event_hubs_emulator_port)
            .field("metrics_bind", &self.metrics_bind)
            .field("event_hubs_in_jetstream", &self.event_hubs_in_jetstream)
            .finish()
    }
}

impl ServeConfig {
    pub fn new(data_dir: PathBuf, hostname: String, bind: IpAddr) -> Self {
        let hub_name = default_hub_name(&hostname);
        ServeConfig {
            event_partitions: twinhub_store::EVENT_PARTITIONS_DEFAULT,
            hub_name,
            event_hubs_emulator_port: None,
            metrics_bind: None,
            console: true,
            event_hubs_in_jetstream: None,
            data_dir,
            hostname,
            bind,
            https_port: 443,
            mqtt_port: 8883,
            amqp_port: 5671,
            hub: HubConfig::default(),
            https_connections_max: 10_000,
            device_connections_max: 200_000,
            mqtt: MqttConfig::default(),
            store: None,
            event_store: None,
            bus: None,
        }
    }

    /// Names the server certificate covers: the host name, the bind address, and the loopback names.
    fn certificate_names(&self) -> Vec<String> {
        let mut names = vec![self.hostname.clone()];
        if !self.bind.is_unspecified() {
            names.push(self.bind.to_string());
        }
        names.push("localhost".into());
        names.push("127.0.0.1".into());
        let mut unique = Vec::new();
        for name in names {
            if !unique.contains(&name) {
                unique.push(name);
            }
        }
        unique
    }
}

/// IoT Hub names its built-in endpoint after the hub: the first label of its host name.
pub fn default_hub_name(hostname: &str) -> String {
    hostname.split('.').next().unwrap_or(hostname).to_owned()
}

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error(transparent)]
    Material(#[from] MaterialError),
    #[error(transparent)]
    Tls(#[from] crate::tls::TlsError),
    #[error("cannot open the store: {0}")]
    Store(#[from] StoreError),
    #[error("cannot start the hub: {0}")]
    Hub(#[from] HubError),
    #[error("cannot listen on {address}: {reason}; choose another port with {flag} (or another address with --bind)")]
    Bind {
        address: SocketAddr,
        flag: &'static str,
        reason: String,
    },
}

/// A started hub. Dropping it does not stop it; call [`RunningHub::shutdown`].
pub struct RunningHub {
    pub hub: Arc<Hub>,
    pub material: HubMaterial,
    pub https_address: SocketAddr,
    /// The Event Hubs-compatible endpoint's name.
    pub hub_name: String,
    pub mqtt_address: SocketAddr,
    shutdown: watch::Sender<bool>,
}

impl RunningHub {
    pub fn shutdown(&self) {
        let _ = self.shutdown.send(true);
    }
}

async fn bind(address: SocketAddr, flag: &'static str) -> Result<TcpListener, ServeError> {
    TcpListener::bind(address).await.map_err(|error| {
        let reason = match error.kind() {
            std::io::ErrorKind::AddrInUse => "the port is already in use".to_owned(),
            std::io::ErrorKind::PermissionDenied => {
                "permission denied (ports below 1024 need root or CAP_NET_BIND_SERVICE)".to_owned()
            }
            _ => error.to_string(),
        };
        ServeError::Bind { address, flag, reason }
    })
}

fn local_address(listener: &TcpListener, flag: &'static str) -> Result<SocketAddr, ServeError> {
    listener.local_addr().map_err(|error| ServeError::Bind {
        address: SocketAddr::new(IpAddr::from([0, 0, 0, 0]), 0),
        flag,
        reason: error.to_string(),
    })
}

pub async fn serve(config: ServeConfig) -> Result<RunningHub, ServeError> {
    let material = HubMaterial::open_or_create(&config.data_dir, &config.certificate_names())?;
    crate::material::write_served_as(
        &config.data_dir,
        &crate::material::ServedAs {
            hostname: config.hostname.clone(),
            hub_name: config.hub_name.clone(),
        },
    )?;
    // Bind before loading the store, so a port problem is reported at once.
    let https_listener = bind(SocketAddr::new(config.bind, config.https_port), "--https-port").await?;
    let https_address = local_address(&https_listener, "--https-port")?;
    let mqtt_listener = bind(SocketAddr::new(config.bind, config.mqtt_port), "--mqtt-port").await?;
    let mqtt_address = local_address(&mqtt_listener, "--mqtt-port")?;
    let amqp_listener = bind(SocketAddr::new(config.bind, config.amqp_port), "--amqp-port").await?;
    let operations_listener = match config.metrics_bind {
        Some(address) => Some(bind(address, "--metrics-bind").await?),
        None => None,
    };
    let emulator_listener = match config.event_hubs_emulator_port {
        Some(port) => Some(bind(SocketAddr::new(config.bind, port), "--event-hubs-emulator-port").await?),
        None => None,
    };
    let (store, event_store): (Arc<dyn Store>, Option<Arc<dyn EventStore>>) = match &config.store {
        Some(store) => (Arc::clone(store), config.event_store.clone()),
        None => {
            let options = StoreOptions {
                event_partitions: config.event_partitions,
            };
            let embedded = Arc::new(EmbeddedStore::open_with(&config.data_dir.join("store"), options)?);
            (
                Arc::clone(&embedded) as Arc<dyn Store>,
                Some(embedded as Arc<dyn EventStore>),
            )
        }
    };
    let endpoints = crate::endpoints::EndpointOutboxes {
        data_dir: config.data_dir.clone(),
        event_hubs_in_jetstream: config.event_hubs_in_jetstream.clone(),
        clustered: store.cluster().is_some(),
    };
    let hub_config = HubConfig {
        hub_name: config.hub_name.clone(),
        endpoint_factory: Some(twinhub_hub::endpoints::FactoryHandle(Arc::new(endpoints))),
        ..config.hub.clone()
    };
    let hub = Hub::start_node(store, event_store, config.bus.clone(), hub_config).await?;
    if let Some(listener) = operations_listener {
        tokio::spawn(crate::operations::serve(listener, Arc::clone(&hub)));
    }
    let mqtt = MqttService::start(
        Arc::clone(&hub),
        config.hostname.clone(),
        material.policies.clone(),
        config.mqtt.clone(),
    );
    // One AMQP service for both AMQP listeners (TLS and WebSockets): what it tracks spans them.
    let amqp = crate::amqp::AmqpService::new(
        Arc::clone(&hub),
        config.hostname.clone(),
        config.hub_name.clone(),
        material.policies.clone(),
    );
    let router = rest::router(rest::RestState::new(
        Arc::clone(&hub),
        config.hostname.clone(),
        material.policies.clone(),
    ))
    .merge(crate::websocket::router(crate::websocket::DeviceTransports {
        mqtt: Arc::clone(&mqtt),
        amqp: Arc::clone(&amqp),
    }));
    let router = if config.console {
        router.merge(crate::console::router())
    } else {
        router
    };
    let (shutdown, shutdown_signal) = watch::channel(false);

    let https_tls = crate::tls::server_config(&material.server_cert_pem, &material.server_key_pem, &[b"http/1.1"])?;
    tokio::spawn(accept_tls(
        https_listener,
        TlsAcceptor::from(https_tls),
        Arc::new(Semaphore::new(config.https_connections_max)),
        shutdown_signal.clone(),
        move |tls, peer| serve_https(tls, peer, router.clone()),
    ));
    if let Some(listener) = emulator_listener {
        let amqp = Arc::clone(&amqp);
        tokio::spawn(accept(
            listener,
            Arc::new(Semaphore::new(config.device_connections_max)),
            shutdown_signal.clone(),
            move |tcp, peer| {
                let amqp = Arc::clone(&amqp);
                async move { amqp.serve(tcp, peer, "amqp-plain").await }
            },
        ));
    }
    let amqp_tls = crate::tls::server_config(&material.server_cert_pem, &material.server_key_pem, &[])?;
    tokio::spawn(accept_tls(
        amqp_listener,
        TlsAcceptor::from(amqp_tls),
        Arc::new(Semaphore::new(config.device_connections_max)),
        shutdown_signal.clone(),
        move |tls, peer| {
            let amqp = Arc::clone(&amqp);
            async move { amqp.serve(tls, peer, "amqp").await }
        },
    ));
    let mqtt_tls = crate::tls::server_config(&material.server_cert_pem, &material.server_key_pem, &[])?;
    tokio::spawn(accept_tls(
        mqtt_listener,
        TlsAcceptor::from(mqtt_tls),
        Arc::new(Semaphore::new(config.device_connections_max)),
        shutdown_signal,
        move |tls, peer| {
            let mqtt = Arc::clone(&mqtt);
            async move {
                let (reader, writer) = tokio::io::split(tls);
                mqtt.serve(reader, writer, peer, "mqtt").await
            }
        },
    ));
    Ok(RunningHub {
        hub,
        material,
        https_address,
        hub_name: config.hub_name.clone(),
        mqtt_address,
        shutdown,
    })
}

type TlsStream = tokio_rustls::server::TlsStream<tokio::net::TcpStream>;

/// The client's address, for handlers that log it (the WebSocket transports).
#[derive(Clone, Copy, Debug)]
pub struct PeerAddress(pub SocketAddr);

async fn serve_https(tls: TlsStream, peer: SocketAddr, router: axum::Router) {
    let service = hyper::service::service_fn(move |mut request: hyper::Request<hyper::body::Incoming>| {
        request.extensions_mut().insert(PeerAddress(peer));
        let mut router = router.clone();
        async move { tower::Service::call(&mut router, request).await }
    });
    let connection = hyper::server::conn::http1::Builder::new()
        .serve_connection(hyper_util::rt::TokioIo::new(tls), service)
        .with_upgrades();
    if let Err(error) = connection.await {
        tracing::debug!(%peer, %error, "HTTPS connection ended with an error");
    }
}

/// How long a client may take to finish the TLS handshake before the connection is dropped.
const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Accepts TCP connections, completes TLS, and hands each to `handle` in a task of its own; at most as
/// many at once as `permits` allows.
async fn accept_tls<H, F>(
    listener: TcpListener,
    acceptor: TlsAcceptor,
    permits: Arc<Semaphore>,
    shutdown: watch::Receiver<bool>,
    handle: H,
) where
    H: Fn(TlsStream, SocketAddr) -> F + Send + Sync + 'static,
    F: Future<Output = ()> + Send + 'static,
{
    let handle = Arc::new(handle);
    accept(listener, permits, shutdown, move |stream, peer| {
        let acceptor = acceptor.clone();
        let handle = Arc::clone(&handle);
        async move {
            let tls = match tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                Ok(Ok(tls)) => tls,
                Ok(Err(error)) => {
                    tracing::debug!(%peer, %error, "TLS handshake failed");
                    return;
                }
                Err(_) => return,
            };
            handle(tls, peer).await;
        }
    })
    .await
}

/// Accepts connections until shutdown, each served by `handle` in a task of its own while it holds one
/// of `permits`.
async fn accept<H, F>(listener: TcpListener, permits: Arc<Semaphore>, mut shutdown: watch::Receiver<bool>, handle: H)
where
    H: Fn(tokio::net::TcpStream, SocketAddr) -> F + Send + Sync + 'static,
    F: Future<Output = ()> + Send + 'static,
{
    let mut backoff = Duration::from_millis(5);
    loop {
        let Ok(permit) = Arc::clone(&permits).acquire_owned().await else {
            return;
        };
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = shutdown.changed() => return,
        };
        let (stream, peer) = match accepted {
            Ok(connection) => {
                backoff = Duration::from_millis(5);
                connection
            }
            Err(error) => {
                // Out of file descriptors and the like: wait and retry rather than spin or die.
                tracing::warn!(%error, "accept failed");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(1));
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let served = handle(stream, peer);
        tokio::spawn(async move {
            let _permit = permit;
            served.await;
        });
    }
}
