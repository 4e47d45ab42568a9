//! `twinhub serve`.

use std::net::IpAddr;
use std::path::PathBuf;
use twinhub_server::ServeConfig;

#[derive(clap::Args)]
pub struct ServeArgs {
    /// Where the hub keeps its store, policies and certificates.
    #[arg(long, default_value = "./twinhub-data")]
    data_dir: PathBuf,
    /// The hub's host name, as devices and back ends will write it in connection strings.
    #[arg(long, default_value = "localhost")]
    hostname: String,
    /// The address to listen on.
    #[arg(long, default_value_t = crate::default_bind())]
    bind: IpAddr,
    /// HTTPS: the service REST API, and MQTT over WebSockets. The SDKs always use 443 for WebSockets.
    #[arg(long, default_value_t = 443)]
    https_port: u16,
    /// MQTT over TLS (devices).
    #[arg(long, default_value_t = 8883)]
    mqtt_port: u16,
    /// AMQP over TLS (devices; back ends' cloud-to-device sends and feedback; Event Hubs consumers).
    #[arg(long, default_value_t = 5671)]
    amqp_port: u16,
    /// Twin requests (GET, reported PATCH) per second per device connection, on average; more are answered
    /// 429 (IoT Hub's throttling status).
    #[arg(long, default_value_t = twinhub_server::mqtt::MqttConfig::default().twin_requests_per_second)]
    device_twin_requests_per_second: u32,
    /// Twin requests a device connection may send at once above that average.
    #[arg(long, default_value_t = twinhub_server::mqtt::MqttConfig::default().twin_request_burst)]
    device_twin_request_burst: u32,
    /// Allow arrays in tags and properties (off: IoT Hub's classic rule, as the product is specified).
    #[arg(long)]
    allow_arrays: bool,
    /// Do not serve the web console (`https://<host>/console/`).
    #[arg(long)]
    no_console: bool,
    /// Devices per second that scheduled jobs (`/jobs/v2`) take on, all jobs together: a job over a large
    /// fleet leaves the devices' own traffic its share of the hub.
    #[arg(long, default_value_t = twinhub_hub::HubConfig::default().job_devices_per_second,
          value_parser = clap::value_parser!(u32).range(1..))]
    job_devices_per_second: u32,
    /// The name of the Event Hubs-compatible endpoint (its `EntityPath`; default: the first label of the
    /// host name, as IoT Hub names it after the hub).
    #[arg(long)]
    hub_name: Option<String>,
    /// Partitions of the device-to-cloud event log, 2 to 32; only when the data directory is new.
    #[arg(long, default_value_t = twinhub_store::EVENT_PARTITIONS_DEFAULT,
          value_parser = clap::value_parser!(u16).range(2..=32))]
    event_partitions: u16,
    /// Device-to-cloud events are kept this many hours (IoT Hub's default: one day).
    #[arg(long, default_value_t = 24)]
    event_retention_hours: u64,
    /// And at most this many MiB per partition: past it, the oldest events go first.
    #[arg(long, default_value_t = 1024)]
    event_retention_mib_per_partition: u64,
    /// Keep devices, twins, sessions and cloud-to-device queues in PostgreSQL (`postgres://user@host/db`
    /// or `host=... user=... dbname=...`) instead of the data directory; the first step to a cluster
    /// (docs/cluster.md). Telemetry stays in the data directory unless --bus is given.
    #[arg(long, env = "TWINHUB_STORE")]
    store: Option<String>,
    /// With --store, one node of a cluster: the NATS server (`nats://host:4222`, with JetStream) the
    /// nodes reach each other through (direct methods to a device connected to another node) and that
    /// keeps the telemetry partitions every node appends to and reads. Nodes of one cluster share a
    /// --hostname, which names the cluster on the bus.
    #[arg(long, env = "TWINHUB_BUS", requires = "store")]
    bus: Option<String>,
    /// With --store: this node's name in the cluster (its commits in the log, its presence lease);
    /// default `node-<process id>`.
    #[arg(long, requires = "store")]
    node_name: Option<String>,
    /// With --bus: replicas of each telemetry partition's JetStream stream (3 on a NATS cluster of three
    /// or more survives losing a NATS server).
    #[arg(long, default_value_t = 1, requires = "bus")]
    event_replicas: usize,
    /// Serve `/metrics` (Prometheus' text format) and `/healthz` on this address (e.g. 127.0.0.1:9464),
    /// off the public ports; off by default.
    #[arg(long)]
    metrics_bind: Option<std::net::SocketAddr>,
    /// Message routes (TOML): `fallback = true|false` and `[[routes]]` with `name`, `source`
    /// (DeviceMessages, TwinChangeEvents, DeviceLifecycleEvents, DeviceConnectionStateEvents),
    /// `condition` (IoT Hub's routing query language), `endpoint` (`events`) and `enabled`. Without it:
    /// no routes, the fallback on (device messages to the built-in endpoint), as a new IoT Hub has.
    #[arg(long)]
    routes: Option<PathBuf>,
    /// Also serve the Event Hubs-compatible endpoint as plain AMQP (no TLS) on this port, for the Event
    /// Hubs SDKs' `UseDevelopmentEmulator=true` mode (local use only: nothing is encrypted).
    #[arg(long)]
    event_hubs_emulator_port: Option<u16>,
}

/// The routes file: TOML, checked at start (names, endpoints; conditions when the hub compiles them).
fn read_routes(path: &std::path::Path) -> anyhow::Result<twinhub_core::routing::RoutingSpec> {
    use anyhow::Context;
    let text = std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    let spec: twinhub_core::routing::RoutingSpec =
        toml::from_str(&text).with_context(|| format!("{} is not a valid routes file", path.display()))?;
    spec.check().with_context(|| format!("in {}", path.display()))?;
    Ok(spec)
}

pub async fn run(args: ServeArgs) -> anyhow::Result<()> {
    let mut config = ServeConfig::new(args.data_dir.clone(), args.hostname.clone(), args.bind);
    config.https_port = args.https_port;
    config.mqtt_port = args.mqtt_port;
    config.amqp_port = args.amqp_port;
    config.hub.rules.arrays_allowed = args.allow_arrays;
    config.hub.job_devices_per_second = args.job_devices_per_second;
    config.console = !args.no_console;
    config.mqtt.twin_requests_per_second = args.device_twin_requests_per_second;
    config.mqtt.twin_request_burst = args.device_twin_request_burst;
    if let Some(hub_name) = &args.hub_name {
        config.hub_name = hub_name.clone();
    }
    config.event_partitions = args.event_partitions;
    config.event_hubs_emulator_port = args.event_hubs_emulator_port;
    config.metrics_bind = args.metrics_bind;
    if let Some(path) = &args.routes {
        config.hub.routing = Some(read_routes(path)?);
    }
    config.hub.events.retention = std::time::Duration::from_secs(args.event_retention_hours * 3600);
    config.hub.events.partition_bytes_max = args.event_retention_mib_per_partition * 1024 * 1024;
    let started = std::time::Instant::now();
    if let Some(url) = &args.store {
        let mut store = twinhub_store::PostgresStore::connect(url)
            .await
            .map_err(|error| anyhow::anyhow!("cannot use the PostgreSQL store: {error}"))?;
        if let Some(node_name) = &args.node_name {
            store = store.with_node_name(node_name);
        }
        tracing::info!(store = store.describe(), "devices and twins are kept in PostgreSQL");
        // Every node of the cluster serves with the same policies and CA.
        crate::cluster::share_material(&store, &args.data_dir, &args.hostname).await?;
        let events: std::sync::Arc<dyn twinhub_store::EventStore> = match &args.bus {
            Some(url) => {
                let cluster = store
                    .cluster_identity()
                    .await
                    .map_err(|error| anyhow::anyhow!("cannot read the cluster's identity: {error}"))?;
                config.event_hubs_in_jetstream = Some(twinhub_server::endpoints::EventHubsInJetStream {
                    url: url.clone(),
                    cluster,
                    replicas: args.event_replicas,
                });
                let events =
                    crate::cluster::telemetry_in_jetstream(&store, url, args.event_partitions, args.event_replicas)
                        .await?;
                tracing::info!(events = events.describe(), "telemetry is kept in NATS JetStream");
                std::sync::Arc::new(events)
            }
            None => {
                let options = twinhub_store::StoreOptions {
                    event_partitions: args.event_partitions,
                };
                std::sync::Arc::new(twinhub_store::EmbeddedStore::open_with(
                    &args.data_dir.join("store"),
                    options,
                )?)
            }
        };
        config.store = Some(std::sync::Arc::new(store));
        config.event_store = Some(events);
    }
    if let Some(url) = &args.bus {
        let bus = twinhub_bus::NatsBus::connect(url, &args.hostname)
            .await
            .map_err(|error| anyhow::anyhow!("cannot use the bus: {error}"))?;
        tracing::info!(bus = url, "reaching the cluster's other nodes through NATS");
        config.bus = Some(std::sync::Arc::new(bus));
    }
    let running = twinhub_server::serve(config).await?;
    let owner = twinhub_server::HubMaterial::policy(&running.material.policies, "iothubowner")?;
    let ca = std::fs::canonicalize(&running.material.ca_cert_path)?;
    let devices = running.hub.statistics().total;
    println!(
        "twinhub is serving the IoT Hub service API on https://{} ({devices} devices loaded in {:.2?})",
        running.https_address,
        started.elapsed()
    );
    println!(
        "devices: MQTT on mqtts://{}, AMQP on amqps://{}:{}, both also over wss://{}/$iothub/websocket",
        running.mqtt_address, args.bind, args.amqp_port, running.https_address
    );
    println!(
        "telemetry: the Event Hubs-compatible endpoint '{}' on amqps://{}:{} (twinhub connection-string --event-hubs)",
        running.hub_name, args.bind, args.amqp_port
    );
    println!("data directory: {}", std::fs::canonicalize(&args.data_dir)?.display());
    println!("CA certificate: {}", ca.display());
    println!(
        "trust it from the SDKs:  export NODE_EXTRA_CA_CERTS={0}   (Node.js)",
        ca.display()
    );
    println!(
        "                         export REQUESTS_CA_BUNDLE={0}    (Python)",
        ca.display()
    );
    println!("iothubowner connection string:");
    println!(
        "{}",
        twinhub_core::policy::service_connection_string(&args.hostname, owner)
    );
    wait_for_stop_signal().await?;
    running.shutdown();
    tracing::info!("stopping");
    Ok(())
}

/// Ctrl-C or SIGTERM (what service managers and `docker stop` send).
async fn wait_for_stop_signal() -> anyhow::Result<()> {
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        result = tokio::signal::ctrl_c() => result?,
        _ = terminate.recv() => {}
    }
    Ok(())
}
