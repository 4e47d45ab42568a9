//! `twinhub bench`: a load generator for a running hub, over the real protocols (TLS, SAS), in the
//! spirit of redis-benchmark and pgbench. Simulated devices speak MQTT; the back end speaks the service
//! REST API (and AMQP for cloud-to-device messages). A progress line runs on stderr; a table goes to
//! stdout and, with `--json FILE`, every figure.
//!
//! `--broker` points the MQTT scenarios that a plain broker can serve (`connect`, `telemetry`) at a peer
//! such as Mosquitto, with the same client code, so the figures compare like with like
//! (`bench/compare.sh`).

mod amqp;
mod http;
mod mqtt;
mod stats;

use crate::HubAccess;
use anyhow::{bail, Context};
use bytes::Bytes;
use mqtt::{Endpoint, Login};
use serde::Serialize;
use stats::{thousands, Latencies, LatencySummary, Progress};
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::Semaphore;
use twinhub_core::policy::ServiceConnectionString;

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Scenario {
    /// Open N device connections; connections/s and the server's memory per connection.
    Connect,
    /// N devices, each keeping W reported patches in flight for S seconds: patches/s and round trips.
    Reported,
    /// The same with twin GETs over MQTT.
    TwinGet,
    /// The back end PATCHes desired properties over REST at --rate; devices time the notification from
    /// the PATCH's acknowledgement.
    Desired,
    /// Twin GET and PATCH over HTTPS with K concurrent clients.
    Rest,
    /// Selective queries over HTTPS with K concurrent clients: each device is first tagged with its
    /// number (through the hub's host name), then every query asks for one of them by that tag
    /// (through `--devices-at` when given, so a query on one node reads writes made through another).
    Query,
    /// QoS 1 publishes on devices/{id}/messages/events/: publishes/s and PUBLISH-to-PUBACK round trips
    /// (the hub acknowledges once the message is durable).
    Telemetry,
    /// Telemetry at a steady --rate (default 10,000/s) read by the bench's own Event Hubs consumer: the
    /// time from a device's PUBLISH to the consumer receiving the event.
    TelemetryEndToEnd,
    /// One Event Hubs consumer reading a backlog of --backlog events (sent first, saturating): events/s.
    Consume,
    /// Direct methods: K back-end clients (--clients) call over HTTPS, round robin over the devices,
    /// which answer at once over MQTT; saturating, or at a total --rate. Round trips/s and latency.
    Method,
    /// Cloud-to-device messages: one back end sends over AMQP (up to 256 unsettled on one link), round
    /// robin over the devices, saturating or at a total --rate; the devices take them over MQTT (QoS 1,
    /// PUBACK). Sends accepted/s, and the time from send to the device.
    C2d,
    /// A twin-update job (`/jobs/v2`) over every device (registered first): devices updated per second,
    /// from the job's start to its end as the hub records them, checked afterwards by a query.
    Job,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum DeviceTransport {
    Mqtt,
    Amqp,
}

#[derive(clap::Args)]
pub struct BenchArgs {
    #[arg(value_enum)]
    scenario: Scenario,
    /// Simulated devices (default: 10,000 for connect, 1,000 otherwise).
    #[arg(long)]
    devices: Option<usize>,
    /// Requests each device keeps in flight.
    #[arg(long, default_value_t = 8)]
    in_flight: usize,
    /// How long the measured part runs.
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// Desired PATCHes per second (desired; default 1,000); for reported and twin-get, a total rate to
    /// hold instead of saturating (each device sends at rate/devices per second); for method and c2d, the
    /// back end's total calls or sends per second.
    #[arg(long)]
    rate: Option<u64>,
    /// Concurrent HTTPS clients (rest).
    #[arg(long, default_value_t = 64)]
    clients: usize,
    /// Connections opened at once (connect, and setting up the others).
    #[arg(long, default_value_t = 256)]
    connect_concurrency: usize,
    /// Loopback source addresses to connect from (127.0.0.1, .2, ...); default: one per 20,000 devices.
    #[arg(long)]
    source_addresses: Option<usize>,
    /// The MQTT port of the hub.
    #[arg(long, default_value_t = 8883)]
    mqtt_port: u16,
    /// The AMQP port of the hub.
    #[arg(long, default_value_t = 5671)]
    amqp_port: u16,
    /// The device transport for `reported`: mqtt, or amqp (the twin links, saturating only).
    #[arg(long, value_enum, default_value = "mqtt")]
    transport: DeviceTransport,
    /// Drive a plain MQTT broker at this address (host:port, TLS, anonymous) instead of the hub's MQTT
    /// port: connect and telemetry only.
    #[arg(long)]
    broker: Option<SocketAddr>,
    /// Devices connect to this address (another node of a cluster) while the back end talks to the hub's
    /// host name: `desired` then times notifications from node to node.
    #[arg(long)]
    devices_at: Option<IpAddr>,
    /// The process whose resident memory `connect` reports (the hub's or the broker's pid).
    #[arg(long)]
    server_pid: Option<u32>,
    /// Name of what is measured, for the table and the JSON (default: twinhub, or mosquitto with --broker).
    #[arg(long)]
    label: Option<String>,
    /// Write every figure as JSON to this file.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Telemetry payload size in bytes (telemetry, consume; default: a 34-byte JSON reading).
    #[arg(long)]
    payload_bytes: Option<usize>,
    /// Connect as modules instead of devices: this many modules per device (registered first), each its
    /// own connection with its own twin (`reported`, `twin-get`, `telemetry`).
    #[arg(long, default_value_t = 0)]
    modules_per_device: usize,
    /// Telemetry: say the payload is JSON in UTF-8 (`$.ct`, `$.ce` in the topic), as a device does
    /// whose messages routes read with `$body` conditions.
    #[arg(long)]
    json_message: bool,
    /// Events sent before the consumer reads them all (consume).
    #[arg(long, default_value_t = 1_000_000)]
    backlog: u64,
    #[command(flatten)]
    access: HubAccess,
}

/// Everything one run measured.
#[derive(Serialize, Default)]
pub struct Report {
    pub label: String,
    pub scenario: Option<Scenario>,
    pub transport: Option<DeviceTransport>,
    pub devices: usize,
    pub in_flight: usize,
    pub seconds: f64,
    pub operations: u64,
    pub per_second: f64,
    pub latency: LatencySummary,
    /// `rest`: the PATCH phase (the headline figures are the GET phase's).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub patch_per_second: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub patch_latency: Option<LatencySummary>,
    /// `connect`: the server's resident memory per connection, bytes.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bytes_per_connection: Option<f64>,
    /// `reported`: acknowledged patches checked afterwards through the REST API.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub verified_devices: Option<usize>,
    /// `telemetry`, `consume`: payload bytes per second.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub megabytes_per_second: Option<f64>,
    /// `c2d`: messages that reached their device per second (first arrivals, over the time to the last).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub delivered_per_second: Option<f64>,
    /// `c2d`: sends the hub refused because the device's queue was full (50 messages).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub refused_queue_full: Option<u64>,
}

struct Setup {
    label: String,
    endpoint: Endpoint,
    service: Option<Service>,
    devices: Vec<String>,
}

/// The back end: the REST API with one token for the whole run.
#[derive(Clone)]
struct Service {
    http: reqwest::Client,
    base: String,
    authorization: String,
    connection: ServiceConnectionString,
    https_port: u16,
}

const TOKEN_SECONDS: u64 = 24 * 3600;

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_secs())
}

impl Service {
    fn new(access: &HubAccess) -> anyhow::Result<(Service, Option<PathBuf>)> {
        let (connection_string, ca) = crate::client::connection_and_ca(access)?;
        let connection = ServiceConnectionString::parse(&connection_string).context("invalid connection string")?;
        let mut builder = reqwest::Client::builder()
            .use_rustls_tls()
            .http1_only()
            .pool_max_idle_per_host(1024);
        if let Some(ca) = &ca {
            let pem = std::fs::read(ca).with_context(|| format!("cannot read {}", ca.display()))?;
            builder = builder.add_root_certificate(reqwest::Certificate::from_pem(&pem)?);
        }
        let authorization = twinhub_core::sas::sign(
            &connection.host_name,
            &connection.key,
            Some(&connection.key_name),
            unix_now() + TOKEN_SECONDS,
        )?;
        Ok((
            Service {
                http: builder.build()?,
                base: format!("https://{}", connection.host_name),
                authorization,
                connection,
                https_port: 443,
            },
            ca,
        ))
    }

    async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<&serde_json::Value>,
    ) -> anyhow::Result<Bytes> {
        let mut request = self
            .http
            .request(method, format!("{}{path}?api-version=2021-04-12", self.base))
            .header("Authorization", &self.authorization);
        if let Some(body) = body {
            request = request.header("If-Match", "*").json(body);
        }
        let response = request.send().await?;
        let status = response.status();
        let bytes = response.bytes().await?;
        if !status.is_success() {
            bail!("{path}: {status}: {}", String::from_utf8_lossy(&bytes));
        }
        Ok(bytes)
    }

    async fn call_json(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<&serde_json::Value>,
    ) -> anyhow::Result<serde_json::Value> {
        let bytes = self.call(method, path, body).await?;
        serde_json::from_slice(&bytes).with_context(|| format!("{path}: the answer is not JSON"))
    }

    /// A device (or module: `device/module`) token signed with the service policy's key (`skn`): a policy
    /// with DeviceConnect (iothubowner has it) authenticates any registered device or module.
    fn device_login(&self, client_id: &str) -> anyhow::Result<Login> {
        let host = &self.connection.host_name;
        let resource = match client_id.split_once('/') {
            Some((device, module)) => format!("{host}/devices/{device}/modules/{module}"),
            None => format!("{host}/devices/{client_id}"),
        };
        Ok(Login {
            username: format!("{host}/{client_id}/?api-version=2021-04-12&DeviceClientType=twinhub-bench"),
            password: twinhub_core::sas::sign(
                &resource,
                &self.connection.key,
                Some(&self.connection.key_name),
                unix_now() + TOKEN_SECONDS,
            )?,
        })
    }

    /// Registers `per_device` modules (`m0`, `m1`, ...) on each device; returns their client ids
    /// (`device/module`). Modules that exist already are fine.
    async fn register_modules(&self, devices: &[String], per_device: usize) -> anyhow::Result<Vec<String>> {
        let permits = Arc::new(Semaphore::new(64));
        let mut tasks = Vec::new();
        let mut client_ids = Vec::with_capacity(devices.len() * per_device);
        for device in devices {
            for module in 0..per_device {
                client_ids.push(format!("{device}/m{module}"));
                let (service, permits) = (self.clone(), Arc::clone(&permits));
                let path = format!("/devices/{device}/modules/m{module}");
                tasks.push(tokio::spawn(async move {
                    let _permit = permits.acquire_owned().await?;
                    let response = service
                        .http
                        .put(format!("{}{path}?api-version=2021-04-12", service.base))
                        .header("Authorization", &service.authorization)
                        .json(&serde_json::json!({}))
                        .send()
                        .await?;
                    let status = response.status();
                    if !status.is_success() && status.as_u16() != 409 {
                        bail!("registering {path}: {status}: {}", response.text().await?);
                    }
                    anyhow::Ok(())
                }));
            }
        }
        for task in tasks {
            task.await??;
        }
        Ok(client_ids)
    }

    /// Registers `ids` (100 per request); ids that exist already are fine.
    async fn register(&self, ids: &[String]) -> anyhow::Result<()> {
        for chunk in ids.chunks(twinhub_hub::BULK_DEVICES_MAX) {
            let body: Vec<serde_json::Value> = chunk
                .iter()
                .map(|id| serde_json::json!({"id": id, "importMode": "create"}))
                .collect();
            let response = self
                .http
                .post(format!("{}/devices?api-version=2021-04-12", self.base))
                .header("Authorization", &self.authorization)
                .json(&body)
                .send()
                .await?;
            let status = response.status();
            if !status.is_success() && status.as_u16() != 400 {
                bail!("registering bench devices: {status}: {}", response.text().await?);
            }
        }
        Ok(())
    }
}

pub(crate) fn tls_config(ca: Option<&PathBuf>) -> anyhow::Result<Arc<rustls::ClientConfig>> {
    let mut roots = rustls::RootCertStore::empty();
    if let Some(ca) = ca {
        let pem = std::fs::read(ca).with_context(|| format!("cannot read {}", ca.display()))?;
        for certificate in rustls_pemfile::certs(&mut pem.as_slice()) {
            roots.add(certificate?)?;
        }
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(config))
}

fn server_name(host: &str) -> anyhow::Result<rustls::pki_types::ServerName<'static>> {
    Ok(match host.parse::<IpAddr>() {
        Ok(ip) => rustls::pki_types::ServerName::IpAddress(ip.into()),
        Err(_) => rustls::pki_types::ServerName::try_from(host.to_owned())?,
    })
}

async fn setup(args: &BenchArgs, device_count: usize) -> anyhow::Result<Setup> {
    let sources = args.source_addresses.unwrap_or(device_count.div_ceil(20_000)).max(1);
    let sources: Vec<IpAddr> = (1..=sources)
        .map(|n| IpAddr::from([127, 0, (n / 250) as u8, (n % 250) as u8]))
        .collect();
    if let Some(broker) = args.broker {
        if !matches!(args.scenario, Scenario::Connect | Scenario::Telemetry) {
            bail!("--broker serves connect and telemetry only: a broker has no twins");
        }
        let ca = match &args.access.ca_cert {
            Some(ca) => Some(ca.clone()),
            None => crate::client::connection_and_ca(&args.access)?.1,
        };
        return Ok(Setup {
            label: args.label.clone().unwrap_or_else(|| "mosquitto".into()),
            endpoint: Endpoint {
                address: broker,
                server_name: server_name(&broker.ip().to_string())?,
                tls: tls_config(ca.as_ref())?,
                sources,
            },
            service: None,
            devices: (0..device_count).map(|n| format!("bench-{n}")).collect(),
        });
    }
    let (service, ca) = Service::new(&args.access)?;
    let host = service.connection.host_name.clone();
    let ip: IpAddr = match args.devices_at {
        Some(ip) => ip,
        None => tokio::net::lookup_host((host.as_str(), args.mqtt_port))
            .await?
            .next()
            .with_context(|| format!("cannot resolve {host}"))?
            .ip(),
    };
    let mut devices: Vec<String> = (0..device_count).map(|n| format!("bench-{n}")).collect();
    eprintln!("registering {} bench devices ...", thousands(device_count as u64));
    service.register(&devices).await?;
    if args.modules_per_device > 0 {
        eprintln!(
            "registering {} modules on each ...",
            thousands(args.modules_per_device as u64)
        );
        devices = service.register_modules(&devices, args.modules_per_device).await?;
    }
    Ok(Setup {
        label: args.label.clone().unwrap_or_else(|| "twinhub".into()),
        endpoint: Endpoint {
            address: SocketAddr::new(ip, args.mqtt_port),
            server_name: server_name(&host)?,
            tls: tls_config(ca.as_ref())?,
            sources,
        },
        service: Some(service),
        devices,
    })
}

/// Opens a connection per device, `concurrency` at a time. Returns them in device order.
async fn connect_all(setup: &Setup, concurrency: usize, progress: &Progress) -> anyhow::Result<Vec<mqtt::Connection>> {
    let permits = Arc::new(Semaphore::new(concurrency.max(1)));
    let mut tasks = Vec::with_capacity(setup.devices.len());
    for (index, device_id) in setup.devices.iter().enumerate() {
        let login = match &setup.service {
            Some(service) => Some(service.device_login(device_id)?),
            None => None,
        };
        let endpoint = setup.endpoint.clone();
        let device_id = device_id.clone();
        let permits = Arc::clone(&permits);
        let progress = progress.clone();
        tasks.push(tokio::spawn(async move {
            let _permit = permits.acquire_owned().await?;
            let connection = endpoint.connect(index, &device_id, login.as_ref()).await?;
            progress.add(1);
            anyhow::Ok(connection)
        }));
    }
    let mut connections = Vec::with_capacity(tasks.len());
    for task in tasks {
        connections.push(task.await??);
    }
    Ok(connections)
}

pub async fn run(args: BenchArgs) -> anyhow::Result<()> {
    let device_count = args.devices.unwrap_or(if args.scenario == Scenario::Connect {
        10_000
    } else {
        1_000
    });
    let setup = setup(&args, device_count).await?;
    let report = match args.scenario {
        Scenario::Connect => connect(&args, &setup).await?,
        Scenario::Reported if args.transport == DeviceTransport::Amqp => amqp_reported(&args, &setup).await?,
        Scenario::Reported | Scenario::TwinGet => twin_requests(&args, &setup).await?,
        Scenario::Telemetry => telemetry(&args, &setup).await?,
        Scenario::TelemetryEndToEnd => telemetry_end_to_end(&args, &setup).await?,
        Scenario::Consume => consume(&args, &setup).await?,
        Scenario::Desired => desired(&args, &setup).await?,
        Scenario::Method => method(&args, &setup).await?,
        Scenario::C2d => cloud_to_device(&args, &setup).await?,
        Scenario::Rest => rest(&args, &setup).await?,
        Scenario::Query => query(&args, &setup).await?,
        Scenario::Job => job(&args, &setup).await?,
    };
    eprintln!();
    print_table(&report);
    if let Some(path) = &args.json {
        std::fs::write(path, serde_json::to_vec_pretty(&report)?)
            .with_context(|| format!("cannot write {}", path.display()))?;
    }
    Ok(())
}

fn report(args: &BenchArgs, setup: &Setup, elapsed: Duration, latencies: Latencies) -> Report {
    let operations = latencies.len() as u64;
    Report {
        label: setup.label.clone(),
        scenario: Some(args.scenario),
        devices: setup.devices.len(),
        in_flight: args.in_flight,
        seconds: elapsed.as_secs_f64(),
        operations,
        per_second: operations as f64 / elapsed.as_secs_f64().max(1e-9),
        latency: latencies.summary(),
        ..Report::default()
    }
}

async fn connect(args: &BenchArgs, setup: &Setup) -> anyhow::Result<Report> {
    let before = args.server_pid.and_then(stats::resident_bytes);
    let (progress, printer) = Progress::start(format!("{} connect", setup.label));
    let started = Instant::now();
    let connections = connect_all(setup, args.connect_concurrency, &progress).await?;
    let elapsed = started.elapsed();
    printer.abort();
    // Let the server settle (buffers shrink after the handshake) before reading its memory.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let after = args.server_pid.and_then(stats::resident_bytes);
    let count = connections.len();
    for connection in connections {
        connection.disconnect().await;
    }
    Ok(Report {
        label: setup.label.clone(),
        scenario: Some(Scenario::Connect),
        devices: count,
        seconds: elapsed.as_secs_f64(),
        operations: count as u64,
        per_second: count as f64 / elapsed.as_secs_f64().max(1e-9),
        bytes_per_connection: before
            .zip(after)
            .map(|(before, after)| after.saturating_sub(before) as f64 / count.max(1) as f64),
        ..Report::default()
    })
}

async fn twin_requests(args: &BenchArgs, setup: &Setup) -> anyhow::Result<Report> {
    let service = setup.service.clone().context("twin scenarios need a hub")?;
    let (progress, printer) = Progress::start(format!("{} connecting", setup.label));
    let mut connections = connect_all(setup, args.connect_concurrency, &progress).await?;
    printer.abort();
    for connection in &mut connections {
        connection.subscribe(&["$iothub/twin/res/#"]).await?;
    }
    let (progress, printer) = Progress::start(format!("\n{} {:?}", setup.label, args.scenario));
    let started = Instant::now();
    let until = started + Duration::from_secs(args.seconds);
    let reported = args.scenario == Scenario::Reported;
    let pacing = args
        .rate
        .map(|rate| Duration::from_secs_f64(setup.devices.len() as f64 / rate.max(1) as f64));
    let mut tasks = Vec::with_capacity(connections.len());
    for (index, mut connection) in connections.into_iter().enumerate() {
        let progress = progress.clone();
        let in_flight = args.in_flight;
        let interval = pacing;
        tasks.push(tokio::spawn(async move {
            let request = |rid: u64| {
                if reported {
                    (
                        format!("$iothub/twin/PATCH/properties/reported/?$rid={rid}"),
                        Bytes::from(format!(r#"{{"bench":{{"seq":{rid},"device":{index}}}}}"#)),
                    )
                } else {
                    (format!("$iothub/twin/GET/?$rid={rid}"), Bytes::from_static(b" "))
                }
            };
            let (latencies, last) = connection
                .twin_requests(in_flight, interval, until, &progress, request)
                .await?;
            connection.disconnect().await;
            anyhow::Ok((latencies, last))
        }));
    }
    let (latencies, last_sequence) = gather(tasks).await?;
    let elapsed = started.elapsed();
    printer.abort();
    let mut report = report(args, setup, elapsed, latencies);
    if reported {
        // Acknowledged means stored: the last acknowledged patch of a sample of devices is in their twins.
        report.transport = Some(DeviceTransport::Mqtt);
        let verified = verify_reported(&service, &setup.devices, &last_sequence).await?;
        report.verified_devices = Some(verified);
    }
    Ok(report)
}

/// Waits for every device's load; returns their merged latencies and each one's last acknowledged
/// sequence, in device order.
async fn gather(
    tasks: Vec<tokio::task::JoinHandle<anyhow::Result<(Latencies, u64)>>>,
) -> anyhow::Result<(Latencies, Vec<u64>)> {
    let mut latencies = Latencies::default();
    let mut last_sequence = Vec::with_capacity(tasks.len());
    for task in tasks {
        let (device_latencies, last) = task.await??;
        latencies.merge(device_latencies);
        last_sequence.push(last);
    }
    Ok((latencies, last_sequence))
}

/// Checks that each sampled device's last acknowledged patch is in its twin; returns how many were checked.
async fn verify_reported(service: &Service, devices: &[String], last_sequence: &[u64]) -> anyhow::Result<usize> {
    let step = (devices.len() / 50).max(1);
    let mut verified = 0;
    for index in (0..devices.len()).step_by(step) {
        if last_sequence[index] == 0 {
            // Nothing acknowledged for this device in this run: nothing to check.
            continue;
        }
        // A module's twin is `/twins/{device}/modules/{module}`.
        let path = match devices[index].split_once('/') {
            Some((device, module)) => format!("/twins/{device}/modules/{module}"),
            None => format!("/twins/{}", devices[index]),
        };
        let twin = service.call_json(reqwest::Method::GET, &path, None).await?;
        let stored = twin["properties"]["reported"]["bench"]["seq"].as_u64().unwrap_or(0);
        if stored != last_sequence[index] {
            bail!(
                "{}: the last acknowledged patch was {}, the twin holds {stored}",
                devices[index],
                last_sequence[index]
            );
        }
        verified += 1;
    }
    Ok(verified)
}

/// `reported` over AMQP: each device opens AMQP, authenticates with CBS, and pipelines reported
/// patches on its twin links.
async fn amqp_reported(args: &BenchArgs, setup: &Setup) -> anyhow::Result<Report> {
    let service = setup.service.clone().context("reported needs a hub")?;
    if args.rate.is_some() {
        bail!("--rate is for MQTT; over AMQP the bench saturates");
    }
    let host = service.connection.host_name.clone();
    let endpoint = Endpoint {
        address: SocketAddr::new(setup.endpoint.address.ip(), args.amqp_port),
        ..setup.endpoint.clone()
    };
    let (progress, printer) = Progress::start(format!("{} connecting over AMQP", setup.label));
    let permits = Arc::new(Semaphore::new(args.connect_concurrency.max(1)));
    let mut opening = Vec::with_capacity(setup.devices.len());
    for (index, device_id) in setup.devices.iter().enumerate() {
        let token = service.device_login(device_id)?.password;
        let endpoint = endpoint.clone();
        let host = host.clone();
        let device_id = device_id.clone();
        let permits = Arc::clone(&permits);
        let progress = progress.clone();
        opening.push(tokio::spawn(async move {
            let _permit = permits.acquire_owned().await?;
            let device = amqp::AmqpDevice::connect(&endpoint, index, &host, &device_id, &token).await?;
            progress.add(1);
            anyhow::Ok(device)
        }));
    }
    let mut devices = Vec::with_capacity(opening.len());
    for task in opening {
        devices.push(task.await??);
    }
    printer.abort();
    let (progress, printer) = Progress::start(format!("\n{} reported over AMQP", setup.label));
    let started = Instant::now();
    let until = started + Duration::from_secs(args.seconds);
    let mut tasks = Vec::with_capacity(devices.len());
    for (index, mut device) in devices.into_iter().enumerate() {
        let progress = progress.clone();
        let in_flight = args.in_flight;
        tasks.push(tokio::spawn(async move {
            let result = device.reported(index, in_flight, until, &progress).await;
            device.close().await;
            result
        }));
    }
    let (latencies, last_sequence) = gather(tasks).await?;
    let elapsed = started.elapsed();
    printer.abort();
    let mut report = report(args, setup, elapsed, latencies);
    report.transport = Some(DeviceTransport::Amqp);
    report.verified_devices = Some(verify_reported(&service, &setup.devices, &last_sequence).await?);
    Ok(report)
}

async fn telemetry(args: &BenchArgs, setup: &Setup) -> anyhow::Result<Report> {
    let (progress, printer) = Progress::start(format!("{} connecting", setup.label));
    let connections = connect_all(setup, args.connect_concurrency, &progress).await?;
    printer.abort();
    let (progress, printer) = Progress::start(format!("\n{} telemetry", setup.label));
    let started = Instant::now();
    let until = started + Duration::from_secs(args.seconds);
    let payload = telemetry_payload(args.payload_bytes);
    let payload_bytes = payload.len();
    let mut tasks = Vec::with_capacity(connections.len());
    for (device_id, mut connection) in setup.devices.iter().zip(connections) {
        // The hub's telemetry topic; a plain broker gets a topic of the same length and shape.
        let bag = if args.json_message {
            "%24.ct=application%2Fjson&%24.ce=utf-8"
        } else {
            ""
        };
        let topic = match setup.service {
            Some(_) => format!("devices/{device_id}/messages/events/{bag}"),
            None => format!("bench/{device_id}/messages/events/{bag}"),
        };
        let progress = progress.clone();
        let payload = payload.clone();
        let in_flight = args.in_flight;
        tasks.push(tokio::spawn(async move {
            let latencies = connection
                .publishes(&topic, payload, in_flight, until, &progress)
                .await?;
            connection.disconnect().await;
            anyhow::Ok(latencies)
        }));
    }
    let mut latencies = Latencies::default();
    for task in tasks {
        latencies.merge(task.await??);
    }
    let elapsed = started.elapsed();
    printer.abort();
    let mut report = report(args, setup, elapsed, latencies);
    report.megabytes_per_second = Some(report.per_second * payload_bytes as f64 / 1e6);
    Ok(report)
}

/// A telemetry payload: the usual small JSON reading, or `bytes` bytes of it padded.
fn telemetry_payload(bytes: Option<usize>) -> Bytes {
    let reading = br#"{"temperature":21.5,"humidity":40}"#;
    match bytes {
        None => Bytes::from_static(reading),
        Some(size) => {
            let mut payload = format!(
                r#"{{"temperature":21.5,"pad":"{}"}}"#,
                "x".repeat(size.saturating_sub(30))
            );
            payload.truncate(size.max(1));
            Bytes::from(payload)
        }
    }
}

/// The bench's Event Hubs consumer on the hub it measures (the service policy of its connection string).
async fn event_hubs_consumer(args: &BenchArgs, setup: &Setup) -> anyhow::Result<crate::event_hubs::Consumer> {
    let service = setup.service.as_ref().context("the Event Hubs consumer needs a hub")?;
    let (_, ca) = crate::client::connection_and_ca(&args.access)?;
    let hub_name = match &args.access.data_dir {
        Some(dir) => twinhub_server::material::read_served_as(dir)?.hub_name,
        None => twinhub_server::default_hub_name(&service.connection.host_name),
    };
    crate::event_hubs::Consumer::connect(crate::event_hubs::ConsumerConfig {
        host: service.connection.host_name.clone(),
        port: args.amqp_port,
        tls: tls_config(ca.as_ref())?,
        hub_name,
        policy_name: service.connection.key_name.clone(),
        policy_key: service.connection.key.clone(),
        consumer_group: "$Default".into(),
    })
    .await
}

fn unix_nanos() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_nanos())
}

async fn telemetry_end_to_end(args: &BenchArgs, setup: &Setup) -> anyhow::Result<Report> {
    let mut consumer = event_hubs_consumer(args, setup).await?;
    let mut incoming = consumer.receive_all(crate::event_hubs::Start::Latest).await?;
    let (progress, printer) = Progress::start(format!("{} connecting", setup.label));
    let connections = connect_all(setup, args.connect_concurrency, &progress).await?;
    printer.abort();
    let rate = args.rate.unwrap_or(10_000).max(1);
    let pace = Duration::from_secs_f64(connections.len() as f64 / rate as f64);
    let (progress, printer) = Progress::start(format!("\n{} telemetry end to end at {rate}/s", setup.label));
    // The consumer side times each event as it arrives, while the devices send.
    let (sent_total, mut sent_known) = tokio::sync::watch::channel(None::<u64>);
    let collector = tokio::spawn(async move {
        let mut latencies = Latencies::default();
        loop {
            let wanted = *sent_known.borrow();
            if wanted.is_some_and(|wanted| latencies.len() as u64 >= wanted) {
                return latencies;
            }
            let next = tokio::select! {
                next = incoming.recv() => next,
                _ = sent_known.changed(), if wanted.is_none() => continue,
                _ = tokio::time::sleep(Duration::from_secs(10)), if wanted.is_some() => None,
            };
            let Some(message) = next else { return latencies };
            let arrived = unix_nanos();
            let body: Vec<u8> = match &message.body {
                fe2o3_amqp::types::messaging::Body::Data(batch) => {
                    batch.iter().flat_map(|data| data.0.to_vec()).collect()
                }
                _ => continue,
            };
            let Some(sent_at) = serde_json::from_slice::<serde_json::Value>(&body)
                .ok()
                .and_then(|body| body["sent"].as_u64())
            else {
                continue;
            };
            latencies.record(Duration::from_nanos(arrived.saturating_sub(u128::from(sent_at)) as u64));
            progress.add(1);
        }
    });
    let started = Instant::now();
    let until = started + Duration::from_secs(args.seconds);
    let mut tasks = Vec::with_capacity(connections.len());
    for (device_id, mut connection) in setup.devices.iter().zip(connections) {
        let topic = format!("devices/{device_id}/messages/events/");
        tasks.push(tokio::spawn(async move {
            // The payload carries its send time; the consumer subtracts it from its arrival.
            let payload = || Bytes::from(format!(r#"{{"sent":{},"temperature":21.5}}"#, unix_nanos()));
            let acknowledged = connection.paced_publishes(&topic, payload, pace, until).await?;
            connection.disconnect().await;
            anyhow::Ok(acknowledged)
        }));
    }
    let mut sent = 0;
    for task in tasks {
        sent += task.await??;
    }
    let _ = sent_total.send(Some(sent));
    let latencies = collector.await?;
    printer.abort();
    consumer.close().await;
    if (latencies.len() as u64) < sent {
        bail!(
            "{} of {sent} acknowledged events never reached the consumer",
            sent - latencies.len() as u64
        );
    }
    Ok(report(args, setup, until - started, latencies))
}

async fn consume(args: &BenchArgs, setup: &Setup) -> anyhow::Result<Report> {
    // The backlog: saturating QoS 1 publishes until `backlog` were acknowledged.
    let (progress, printer) = Progress::start(format!("{} connecting", setup.label));
    let connections = connect_all(setup, args.connect_concurrency, &progress).await?;
    printer.abort();
    let payload = telemetry_payload(args.payload_bytes);
    let per_device = args.backlog.div_ceil(connections.len() as u64);
    let (progress, printer) = Progress::start(format!("\n{} backlog of {}", setup.label, thousands(args.backlog)));
    let mut tasks = Vec::new();
    for (device_id, mut connection) in setup.devices.iter().zip(connections) {
        let topic = format!("devices/{device_id}/messages/events/");
        let payload = payload.clone();
        let progress = progress.clone();
        let in_flight = args.in_flight;
        tasks.push(tokio::spawn(async move {
            let mut done = 0;
            while done < per_device {
                let batch = (per_device - done).min(in_flight as u64) as usize;
                let latencies = connection
                    .publishes(&topic, payload.clone(), batch, Instant::now(), &progress)
                    .await?;
                done += latencies.len() as u64;
            }
            connection.disconnect().await;
            anyhow::Ok(done)
        }));
    }
    let mut total = 0;
    for task in tasks {
        total += task.await??;
    }
    printer.abort();
    // Then one consumer reads from the start of every partition.
    let mut consumer = event_hubs_consumer(args, setup).await?;
    let (progress, printer) = Progress::start(format!("\n{} consume", setup.label));
    let started = Instant::now();
    let mut incoming = consumer.receive_all(crate::event_hubs::Start::Earliest).await?;
    let mut read = 0u64;
    while read < total {
        match tokio::time::timeout(Duration::from_secs(10), incoming.recv()).await {
            Ok(Some(_)) => {
                read += 1;
                progress.add(1);
            }
            _ => bail!("the consumer stalled after {read} of {total} events"),
        }
    }
    let elapsed = started.elapsed();
    printer.abort();
    consumer.close().await;
    // A throughput figure: no per-event latency is timed.
    let mut report = report(args, setup, elapsed, Latencies::default());
    report.operations = read;
    report.per_second = read as f64 / elapsed.as_secs_f64().max(1e-9);
    report.megabytes_per_second = Some(report.per_second * payload.len() as f64 / 1e6);
    Ok(report)
}

async fn desired(args: &BenchArgs, setup: &Setup) -> anyhow::Result<Report> {
    let service = setup.service.clone().context("desired needs a hub")?;
    let (progress, printer) = Progress::start(format!("{} connecting", setup.label));
    let mut connections = connect_all(setup, args.connect_concurrency, &progress).await?;
    printer.abort();
    for connection in &mut connections {
        connection
            .subscribe(&["$iothub/twin/PATCH/properties/desired/#"])
            .await?;
    }
    let (progress, printer) = Progress::start(format!("\n{} desired", setup.label));
    let started = Instant::now();
    let until = started + Duration::from_secs(args.seconds);
    // Devices listen a little longer than the back end writes, for the last notifications.
    let listen_until = until + Duration::from_secs(2);
    let listeners: Vec<_> = connections
        .into_iter()
        .map(|mut connection| {
            tokio::spawn(async move {
                let arrivals = connection.desired_notifications(listen_until).await?;
                connection.disconnect().await;
                anyhow::Ok(arrivals)
            })
        })
        .collect();
    // The back end: PATCHes at `rate`, round robin over the devices, at most 256 in flight.
    let permits = Arc::new(Semaphore::new(256));
    let rate = args.rate.unwrap_or(1000).max(1);
    let mut ticker = tokio::time::interval(Duration::from_secs_f64(1.0 / rate as f64));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let mut patches = Vec::new();
    let mut sequence = 0usize;
    while Instant::now() < until {
        ticker.tick().await;
        let permit = Arc::clone(&permits).acquire_owned().await?;
        let device = sequence % setup.devices.len();
        let path = format!("/twins/{}", setup.devices[device]);
        let service = service.clone();
        let body = serde_json::json!({"properties": {"desired": {"bench": sequence}}});
        sequence += 1;
        patches.push(tokio::spawn(async move {
            let _permit = permit;
            let twin = service.call_json(reqwest::Method::PATCH, &path, Some(&body)).await?;
            let acknowledged = Instant::now();
            let version = twin["properties"]["desired"]["$version"]
                .as_u64()
                .context("the PATCH answer has no desired $version")?;
            anyhow::Ok((device, version, acknowledged))
        }));
    }
    let mut acknowledged = std::collections::HashMap::new();
    for patch in patches {
        let (device, version, at) = patch.await??;
        acknowledged.insert((device, version), at);
    }
    let mut latencies = Latencies::default();
    let mut missing = acknowledged.len();
    for (device, listener) in listeners.into_iter().enumerate() {
        for (version, arrived) in listener.await?? {
            if let Some(at) = acknowledged.get(&(device, version)) {
                // A notification may beat the HTTP answer to the bench: that is zero, not negative.
                latencies.record(arrived.saturating_duration_since(*at));
                progress.add(1);
                missing -= 1;
            }
        }
    }
    printer.abort();
    if missing > 0 {
        bail!("{missing} acknowledged desired changes never reached their device");
    }
    Ok(report(args, setup, until - started, latencies))
}

/// K clients doing one kind of twin request for `seconds`: (latencies, elapsed).
async fn rest_phase<R>(
    setup: &Setup,
    clients: usize,
    seconds: u64,
    pace: Option<Duration>,
    request: R,
    progress: &Progress,
) -> anyhow::Result<(Latencies, Duration)>
where
    R: Fn(&str, usize) -> (hyper::Method, String, Option<Bytes>) + Clone + Send + 'static,
{
    let service = setup.service.as_ref().context("rest needs a hub")?;
    let https = SocketAddr::new(setup.endpoint.address.ip(), service.https_port);
    let authorization: Arc<str> = Arc::from(service.authorization.as_str());
    let mut connections = Vec::with_capacity(clients);
    for _ in 0..clients {
        connections.push(
            http::HttpConnection::open(
                https,
                &setup.endpoint,
                &service.connection.host_name,
                Arc::clone(&authorization),
            )
            .await?,
        );
    }
    let devices = Arc::new(setup.devices.clone());
    let started = Instant::now();
    let until = started + Duration::from_secs(seconds);
    let mut tasks = Vec::new();
    for (client, mut connection) in connections.into_iter().enumerate() {
        let progress = progress.clone();
        let devices = Arc::clone(&devices);
        let request = request.clone();
        tasks.push(tokio::spawn(async move {
            let mut latencies = Latencies::default();
            // Clients start spread over one pace, so together they call at a steady rate, not in bursts
            // of every client at once.
            let mut ticker = pace.map(|pace| {
                let offset = pace.mul_f64(client as f64 / clients as f64);
                let mut ticker = tokio::time::interval_at(tokio::time::Instant::now() + offset, pace);
                ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
                ticker
            });
            let mut n = client;
            while Instant::now() < until {
                if let Some(ticker) = ticker.as_mut() {
                    ticker.tick().await;
                }
                let (method, path, body) = request(&devices[n % devices.len()], n);
                let sent = Instant::now();
                connection.call(method, &path, body).await?;
                latencies.record(sent.elapsed());
                progress.add(1);
                n += REST_DEVICE_STRIDE;
            }
            anyhow::Ok(latencies)
        }));
    }
    let mut latencies = Latencies::default();
    for task in tasks {
        latencies.merge(task.await??);
    }
    Ok((latencies, started.elapsed()))
}

/// Direct methods, called over HTTPS and answered over MQTT by every device at once.
async fn method(args: &BenchArgs, setup: &Setup) -> anyhow::Result<Report> {
    let (progress, printer) = Progress::start(format!("{} connecting", setup.label));
    let mut connections = connect_all(setup, args.connect_concurrency, &progress).await?;
    printer.abort();
    for connection in &mut connections {
        connection.subscribe(&["$iothub/methods/POST/#"]).await?;
    }
    // Devices answer a little longer than the back end calls, for the last calls.
    let answer_until = Instant::now() + Duration::from_secs(args.seconds + 5);
    let answerers: Vec<_> = connections
        .into_iter()
        .map(|mut connection| {
            tokio::spawn(async move {
                let answered = connection.answer_methods(answer_until).await;
                connection.disconnect().await;
                answered
            })
        })
        .collect();
    let clients = args.clients.max(1);
    // A total rate is shared by the clients: each calls once per clients/rate seconds.
    let pace = args
        .rate
        .map(|rate| Duration::from_secs_f64(clients as f64 / rate.max(1) as f64));
    let (progress, printer) = Progress::start(format!("\n{} method", setup.label));
    let call = |device: &str, n: usize| {
        let body = format!(r#"{{"methodName":"bench","payload":{{"n":{n}}},"responseTimeoutInSeconds":30}}"#);
        (
            hyper::Method::POST,
            format!("/twins/{device}/methods"),
            Some(Bytes::from(body)),
        )
    };
    let (latencies, elapsed) = rest_phase(setup, clients, args.seconds, pace, call, &progress).await?;
    printer.abort();
    for answerer in answerers {
        answerer.await??;
    }
    let mut report = report(args, setup, elapsed, latencies);
    report.in_flight = clients;
    Ok(report)
}

/// Unsettled cloud-to-device sends on the back end's one link, at most.
const C2D_IN_FLIGHT: usize = 256;
/// After the last send is settled, how long every accepted message has to reach its device.
const C2D_GRACE: Duration = Duration::from_secs(10);

/// Cloud-to-device messages: sent over AMQP by one back end, taken over MQTT by every device.
async fn cloud_to_device(args: &BenchArgs, setup: &Setup) -> anyhow::Result<Report> {
    use crate::cloud_to_device::{CloudToDeviceSender, Outgoing, Refused};
    use std::sync::atomic::{AtomicU64, Ordering};
    let service = setup.service.clone().context("c2d needs a hub")?;
    let (progress, printer) = Progress::start(format!("{} connecting", setup.label));
    let mut connections = connect_all(setup, args.connect_concurrency, &progress).await?;
    printer.abort();
    for (device_id, connection) in setup.devices.iter().zip(&mut connections) {
        let filter = format!("devices/{device_id}/messages/devicebound/#");
        connection
            .subscribe_with(&[(filter.as_str(), rmqtt_codec::types::QoS::AtLeastOnce)])
            .await?;
    }
    // Messages of this run carry its number: what earlier runs left in the queues is taken and ignored.
    let run = (unix_nanos() % 1_000_000_000_000) as u64;
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let arrived = Arc::new(AtomicU64::new(0));
    let listeners: Vec<_> = connections
        .into_iter()
        .map(|mut connection| {
            let stopped = stopped.clone();
            let arrived = Arc::clone(&arrived);
            tokio::spawn(async move {
                let result = connection.cloud_to_device_messages(run, stopped, &arrived).await;
                connection.disconnect().await;
                result
            })
        })
        .collect();
    let (_, ca) = crate::client::connection_and_ca(&args.access)?;
    let mut sender = CloudToDeviceSender::connect(
        &service.connection.host_name,
        args.amqp_port,
        tls_config(ca.as_ref())?,
        &service.connection.key_name,
        &service.connection.key,
    )
    .await?;
    let label = match args.rate {
        Some(rate) => format!("\n{} c2d at {rate}/s", setup.label),
        None => format!("\n{} c2d", setup.label),
    };
    let (progress, printer) = Progress::start(label);
    let permits = Arc::new(Semaphore::new(C2D_IN_FLIGHT));
    let mut ticker = args.rate.map(|rate| {
        let mut ticker = tokio::time::interval(Duration::from_secs_f64(1.0 / rate.max(1) as f64));
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
        ticker
    });
    let started = Instant::now();
    let until = started + Duration::from_secs(args.seconds);
    let mut outcomes = Vec::new();
    let mut n = 0u64;
    while Instant::now() < until {
        if let Some(ticker) = ticker.as_mut() {
            ticker.tick().await;
        }
        let permit = Arc::clone(&permits).acquire_owned().await?;
        let device = &setup.devices[(n % setup.devices.len() as u64) as usize];
        let message = Outgoing {
            device_id: device.clone(),
            body: format!(r#"{{"run":{run},"n":{n},"sent":{}}}"#, unix_nanos()).into_bytes(),
            ..Outgoing::default()
        };
        let in_flight = sender.send_pipelined(&message).await?;
        let progress = progress.clone();
        let sequence = n;
        outcomes.push(tokio::spawn(async move {
            let _permit = permit;
            let outcome = in_flight.outcome().await;
            if outcome.is_ok() {
                progress.add(1);
            }
            (sequence, outcome)
        }));
        n += 1;
    }
    let mut accepted = Vec::with_capacity(outcomes.len());
    let mut refused_queue_full = 0u64;
    let mut failure = None;
    for outcome in outcomes {
        match outcome.await? {
            (sequence, Ok(())) => accepted.push(sequence),
            (_, Err(error)) if error.downcast_ref::<Refused>().is_some_and(Refused::is_queue_full) => {
                refused_queue_full += 1;
            }
            (_, Err(error)) => {
                failure.get_or_insert(error);
            }
        }
    }
    let elapsed = started.elapsed();
    printer.abort();
    sender.close().await;
    if let Some(error) = failure {
        let _ = stop.send(true);
        return Err(error.context("a cloud-to-device send failed"));
    }
    // Every accepted message must reach its device: they have a grace period after the last settlement.
    let deadline = Instant::now() + C2D_GRACE;
    while (arrived.load(Ordering::Relaxed) as usize) < accepted.len() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let _ = stop.send(true);
    let mut arrivals: std::collections::HashMap<u64, Duration> = std::collections::HashMap::new();
    let mut last_arrival: Option<Instant> = None;
    for listener in listeners {
        let (device_arrivals, last) = listener.await??;
        arrivals.extend(device_arrivals);
        last_arrival = last_arrival.max(last);
    }
    let mut latencies = Latencies::default();
    let mut missing = 0u64;
    for sequence in &accepted {
        match arrivals.get(sequence) {
            Some(latency) => latencies.record(*latency),
            None => missing += 1,
        }
    }
    if missing > 0 {
        bail!(
            "{missing} of {} accepted cloud-to-device messages never reached their device within {} s",
            accepted.len(),
            C2D_GRACE.as_secs()
        );
    }
    let delivered_elapsed = last_arrival.map_or(elapsed, |last| last.saturating_duration_since(started));
    let count = accepted.len() as u64;
    Ok(Report {
        label: setup.label.clone(),
        scenario: Some(Scenario::C2d),
        devices: setup.devices.len(),
        in_flight: C2D_IN_FLIGHT,
        seconds: elapsed.as_secs_f64(),
        operations: count,
        per_second: count as f64 / elapsed.as_secs_f64().max(1e-9),
        latency: latencies.summary(),
        delivered_per_second: Some(arrivals.len() as f64 / delivered_elapsed.as_secs_f64().max(1e-9)),
        refused_queue_full: Some(refused_queue_full),
        ..Report::default()
    })
}

/// GETs for `seconds`, then PATCHes (tags) for `seconds`, each with K clients.
async fn rest(args: &BenchArgs, setup: &Setup) -> anyhow::Result<Report> {
    let (progress, printer) = Progress::start(format!("{} rest GET", setup.label));
    let twin_get = |device: &str, _: usize| (hyper::Method::GET, format!("/twins/{device}"), None);
    let (gets, get_elapsed) = rest_phase(setup, args.clients, args.seconds, None, twin_get, &progress).await?;
    printer.abort();
    let (progress, printer) = Progress::start(format!("\n{} rest PATCH", setup.label));
    let tag_patch = |device: &str, n: usize| {
        let body = Bytes::from(format!(r#"{{"tags":{{"bench":{n}}}}}"#));
        (hyper::Method::PATCH, format!("/twins/{device}"), Some(body))
    };
    let (patches, patch_elapsed) = rest_phase(setup, args.clients, args.seconds, None, tag_patch, &progress).await?;
    printer.abort();
    let get_count = gets.len() as u64;
    let patch_count = patches.len() as u64;
    Ok(Report {
        label: setup.label.clone(),
        scenario: Some(Scenario::Rest),
        devices: setup.devices.len(),
        in_flight: args.clients,
        seconds: get_elapsed.as_secs_f64(),
        operations: get_count,
        // The headline figures are the GETs'; the PATCHes' are beside them.
        per_second: get_count as f64 / get_elapsed.as_secs_f64().max(1e-9),
        latency: gets.summary(),
        patch_per_second: Some(patch_count as f64 / patch_elapsed.as_secs_f64().max(1e-9)),
        patch_latency: Some(patches.summary()),
        ..Report::default()
    })
}

/// Schedules a twin-update job over every device and waits for it; its rate is the hub's record of it.
async fn job(args: &BenchArgs, setup: &Setup) -> anyhow::Result<Report> {
    let service = setup.service.clone().context("job needs a hub")?;
    let run = unix_now();
    let job_id = format!("bench-job-{run}");
    let body = serde_json::json!({
        "type": "scheduleUpdateTwin",
        "queryCondition": "STARTSWITH(deviceId, 'bench-')",
        "updateTwin": {"etag": "*", "properties": {"desired": {"benchJob": run}}},
    });
    service
        .call_json(reqwest::Method::PUT, &format!("/jobs/v2/{job_id}"), Some(&body))
        .await?;
    let (progress, printer) = Progress::start(format!("{} job", setup.label));
    let job = loop {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let job = service
            .call_json(reqwest::Method::GET, &format!("/jobs/v2/{job_id}"), None)
            .await?;
        let statistics = &job["deviceJobStatistics"];
        progress.set(statistics["succeededCount"].as_u64().unwrap_or(0));
        if !matches!(job["status"].as_str(), Some("queued" | "scheduled" | "running")) {
            break job;
        }
    };
    printer.abort();
    if job["status"] != "completed" {
        bail!("the job ended {}: {job}", job["status"]);
    }
    let time = |field: &str| {
        job[field]
            .as_str()
            .and_then(twinhub_core::Timestamp::parse_iso8601)
            .with_context(|| format!("the job's {field} is not a time: {job}"))
    };
    let elapsed = Duration::from_nanos(u64::try_from(time("endTime")?.0 - time("startTime")?.0).unwrap_or(0));
    let updated = job["deviceJobStatistics"]["succeededCount"].as_u64().unwrap_or(0);
    let check = serde_json::json!({
        "query": format!("SELECT COUNT() AS n FROM devices WHERE properties.desired.benchJob = {run}")
    });
    let counted = service
        .call_json(reqwest::Method::POST, "/devices/query", Some(&check))
        .await?;
    let patched = counted[0]["n"].as_u64().unwrap_or(0);
    // Every bench device is selected (those registered by earlier runs with more devices too).
    if patched < setup.devices.len() as u64 || updated != patched {
        bail!(
            "the job updated {updated} devices; {patched} twins have its patch, of {}",
            setup.devices.len()
        );
    }
    Ok(Report {
        label: setup.label.clone(),
        scenario: Some(args.scenario),
        devices: patched as usize,
        seconds: elapsed.as_secs_f64(),
        operations: updated,
        per_second: updated as f64 / elapsed.as_secs_f64().max(1e-9),
        verified_devices: Some(patched as usize),
        ..Report::default()
    })
}

/// The tag the query scenario writes and asks by.
const QUERY_TAG: &str = "benchQuery";

/// Tags every device with its number, then K clients query for one device each by that tag.
async fn query(args: &BenchArgs, setup: &Setup) -> anyhow::Result<Report> {
    let service = setup.service.clone().context("query needs a hub")?;
    eprintln!("tagging {} devices ...", thousands(setup.devices.len() as u64));
    let permits = Arc::new(Semaphore::new(args.clients.max(1)));
    let mut tags = Vec::with_capacity(setup.devices.len());
    for (number, device) in setup.devices.iter().enumerate() {
        let service = service.clone();
        let path = format!("/twins/{device}");
        let permits = Arc::clone(&permits);
        tags.push(tokio::spawn(async move {
            let _permit = permits.acquire_owned().await?;
            let patch = serde_json::json!({ "tags": { QUERY_TAG: number } });
            service.call(reqwest::Method::PATCH, &path, Some(&patch)).await?;
            anyhow::Ok(())
        }));
    }
    for tag in tags {
        tag.await??;
    }
    // Where the queries go: one check that the answer is the one twin asked for, so the figures are
    // those of a query that works (on the node that serves them, after writes through another).
    let probe = setup.devices.len() / 2;
    let https = SocketAddr::new(setup.endpoint.address.ip(), service.https_port);
    let mut check = http::HttpConnection::open(
        https,
        &setup.endpoint,
        &service.connection.host_name,
        Arc::from(service.authorization.as_str()),
    )
    .await?;
    let (method, path, body) = selective_query(probe);
    let answer: serde_json::Value = serde_json::from_slice(&check.call(method, &path, body).await?)?;
    let ids: Vec<&str> = answer
        .as_array()
        .map(|twins| twins.iter().filter_map(|twin| twin["deviceId"].as_str()).collect())
        .unwrap_or_default();
    if ids != [setup.devices[probe].as_str()] {
        bail!("the query for {} answered {answer}", setup.devices[probe]);
    }
    let (progress, printer) = Progress::start(format!("{} query", setup.label));
    let count = setup.devices.len();
    let ask = move |_: &str, n: usize| selective_query(n % count);
    let (latencies, elapsed) = rest_phase(setup, args.clients, args.seconds, None, ask, &progress).await?;
    printer.abort();
    let mut report = report(args, setup, elapsed, latencies);
    report.in_flight = args.clients;
    Ok(report)
}

fn selective_query(number: usize) -> (hyper::Method, String, Option<Bytes>) {
    let body = serde_json::json!({ "query": format!("SELECT * FROM devices WHERE tags.{QUERY_TAG} = {number}") });
    (
        hyper::Method::POST,
        "/devices/query".to_owned(),
        Some(Bytes::from(body.to_string())),
    )
}

/// Each REST client walks the devices with a prime stride, so clients spread over different twins.
const REST_DEVICE_STRIDE: usize = 7919;

fn print_table(report: &Report) {
    println!(
        "{:<10} {:<10} {:>8} {:>6} {:>8} {:>12} {:>12} {:>9} {:>9} {:>9}",
        "server", "scenario", "devices", "W", "seconds", "operations", "per second", "p50 ms", "p99 ms", "p999 ms"
    );
    let scenario = report
        .scenario
        .map(|scenario| format!("{scenario:?}").to_lowercase())
        .unwrap_or_default();
    println!(
        "{:<10} {:<10} {:>8} {:>6} {:>8.1} {:>12} {:>12} {:>9.2} {:>9.2} {:>9.2}",
        report.label,
        scenario,
        report.devices,
        report.in_flight,
        report.seconds,
        thousands(report.operations),
        thousands(report.per_second as u64),
        report.latency.p50_ms,
        report.latency.p99_ms,
        report.latency.p999_ms
    );
    if let (Some(rate), Some(patch)) = (report.patch_per_second, report.patch_latency) {
        println!(
            "  (the row above is GET) PATCH: {}/s, p50 {:.2} ms, p99 {:.2} ms, p999 {:.2} ms",
            thousands(rate as u64),
            patch.p50_ms,
            patch.p99_ms,
            patch.p999_ms
        );
    }
    if let Some(bytes) = report.bytes_per_connection {
        println!("  server memory per connection: {:.1} KB", bytes / 1024.0);
    }
    if let Some(delivered) = report.delivered_per_second {
        println!(
            "  (the row above is sends accepted, latency from send to the device) delivered: {}/s, \
             every accepted message reached its device",
            thousands(delivered as u64)
        );
    }
    if let Some(refused) = report.refused_queue_full.filter(|refused| *refused > 0) {
        println!(
            "  refused because a device's queue was full (50 messages): {}",
            thousands(refused)
        );
    }
    match (report.verified_devices, report.scenario) {
        (Some(verified), Some(Scenario::Job)) => {
            println!("  verified: a query counts {verified} twins holding the job's patch")
        }
        (Some(verified), _) => {
            println!("  verified: the last acknowledged patch of {verified} sampled devices is in their twins")
        }
        (None, _) => {}
    }
}
