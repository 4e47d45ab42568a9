//! `twinhub`: run a hub, and talk to one (the CLI for people, in the spirit of `az iot hub`).

mod bench;
mod client;
mod cloud_to_device;
mod cluster;
mod commands;
mod event_hubs;
mod monitor;
mod query;
mod routes;
mod serve;

use clap::{Parser, Subcommand};
use std::net::IpAddr;
use std::path::PathBuf;
use std::process::ExitCode;

/// Twins are many small allocations; see the `mimalloc` note in the workspace Cargo.toml.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "twinhub",
    version,
    about = "A self-hosted IoT hub that speaks Azure IoT Hub's protocols"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

/// How a client command finds the hub: a connection string, or a hub's data directory (owner policy).
#[derive(clap::Args, Clone, Debug)]
pub struct HubAccess {
    /// A service connection string (HostName=...;SharedAccessKeyName=...;SharedAccessKey=...).
    #[arg(long, env = "TWINHUB_CONNECTION_STRING", global = true, hide_env_values = true)]
    connection_string: Option<String>,
    /// Use the iothubowner policy and CA of the hub with this data directory.
    #[arg(long, global = true)]
    data_dir: Option<PathBuf>,
    /// A PEM file of the CA to trust (default: the data directory's CA, else the system's roots).
    #[arg(long, env = "TWINHUB_CA_CERT", global = true)]
    ca_cert: Option<PathBuf>,
}

#[derive(Subcommand)]
enum Command {
    /// Run the hub.
    Serve(serve::ServeArgs),
    /// A cluster of nodes on PostgreSQL (docs/cluster.md).
    Cluster {
        #[command(subcommand)]
        command: cluster::ClusterCommand,
    },
    /// Print a policy's connection string (the last line of output).
    ConnectionString {
        #[arg(long, default_value = "./twinhub-data")]
        data_dir: PathBuf,
        /// The policy (default: iothubowner; with --event-hubs, service).
        #[arg(long)]
        policy: Option<String>,
        /// The Event Hubs-compatible endpoint's connection string, for the Event Hubs SDKs.
        #[arg(long)]
        event_hubs: bool,
    },
    /// Print a SAS token for a policy (`Authorization` header value), for tools like curl.
    Token {
        #[arg(long, default_value = "./twinhub-data")]
        data_dir: PathBuf,
        /// The policy (default: iothubowner).
        #[arg(long, default_value = "iothubowner")]
        policy: String,
        /// How long the token is valid, in seconds.
        #[arg(long, default_value_t = 3600)]
        seconds: u64,
    },
    /// Print the path of the hub's CA certificate, PEM (the last line of output).
    CaCert {
        #[arg(long, default_value = "./twinhub-data")]
        data_dir: PathBuf,
    },
    /// Device identities.
    Device {
        #[command(subcommand)]
        command: commands::DeviceCommand,
        #[command(flatten)]
        access: HubAccess,
    },
    /// Run an IoT Hub query (`SELECT ... FROM devices ...`) and print every page.
    Query {
        /// The query, e.g. "SELECT * FROM devices WHERE tags.location.region = 'US'".
        sql: String,
        /// Items per request (x-ms-max-item-count).
        #[arg(long)]
        page_size: Option<usize>,
        /// Print the results as JSON instead of a table.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        access: HubAccess,
    },
    /// Load a running hub (or, with --broker, a plain MQTT broker) with simulated devices and back ends,
    /// and print what it sustained.
    Bench(bench::BenchArgs),
    /// Print device-to-cloud events as they arrive, from the hub's Event Hubs-compatible endpoint.
    MonitorEvents(monitor::MonitorArgs),
    /// Message routes of a running hub: list, add, remove, test; the fallback route.
    Route {
        #[command(subcommand)]
        command: routes::RouteCommand,
        #[command(flatten)]
        access: HubAccess,
    },
    /// Consumer groups of the Event Hubs-compatible endpoint.
    ConsumerGroup {
        #[command(subcommand)]
        command: commands::ConsumerGroupCommand,
        #[command(flatten)]
        access: HubAccess,
    },
    /// Direct methods on devices.
    Method {
        #[command(subcommand)]
        command: commands::MethodCommand,
        #[command(flatten)]
        access: HubAccess,
    },
    /// Cloud-to-device messages.
    C2d {
        #[command(subcommand)]
        command: commands::C2dCommand,
        #[command(flatten)]
        access: HubAccess,
    },
    /// Device twins.
    Twin {
        #[command(subcommand)]
        command: commands::TwinCommand,
        #[command(flatten)]
        access: HubAccess,
    },
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()))
        .with_writer(std::io::stderr)
        // Colours for a terminal only: a log file or a service manager's journal gets plain text.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("error: cannot start the runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Serve(args) => serve::run(args).await,
        Command::Cluster { command } => cluster::run(command).await,
        Command::ConnectionString {
            data_dir,
            policy,
            event_hubs,
        } => {
            let policies = twinhub_server::HubMaterial::policies_in(&data_dir, false)?;
            let default_policy = if event_hubs { "service" } else { "iothubowner" };
            let policy = twinhub_server::HubMaterial::policy(&policies, policy.as_deref().unwrap_or(default_policy))?;
            let served = twinhub_server::material::read_served_as(&data_dir)?;
            if event_hubs {
                println!(
                    "{}",
                    twinhub_core::policy::event_hubs_connection_string(&served.hostname, &served.hub_name, policy)
                );
            } else {
                println!(
                    "{}",
                    twinhub_core::policy::service_connection_string(&served.hostname, policy)
                );
            }
            Ok(())
        }
        Command::Token {
            data_dir,
            policy,
            seconds,
        } => {
            let policies = twinhub_server::HubMaterial::policies_in(&data_dir, false)?;
            let policy = twinhub_server::HubMaterial::policy(&policies, &policy)?;
            let served = twinhub_server::material::read_served_as(&data_dir)?;
            let expiry = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)?
                .as_secs()
                + seconds;
            let token = twinhub_core::sas::sign(&served.hostname, &policy.primary_key, Some(&policy.name), expiry)?;
            println!("{token}");
            Ok(())
        }
        Command::CaCert { data_dir } => {
            let path = data_dir.join(twinhub_server::material::CA_CERT_FILE);
            anyhow::ensure!(
                path.exists(),
                "{} does not exist: no hub has run with this data directory yet",
                path.display()
            );
            println!("{}", std::fs::canonicalize(&path)?.display());
            Ok(())
        }
        Command::Bench(args) => bench::run(args).await,
        Command::MonitorEvents(args) => monitor::run(args).await,
        Command::ConsumerGroup { command, access } => commands::consumer_group(command, &access).await,
        Command::Route { command, access } => routes::run(command, &access).await,
        Command::Device { command, access } => commands::device(command, &access).await,
        Command::Twin { command, access } => commands::twin(command, &access).await,
        Command::Method { command, access } => commands::method(command, &access).await,
        Command::C2d { command, access } => commands::c2d(command, &access).await,
        Command::Query {
            sql,
            page_size,
            json,
            access,
        } => query::run(&sql, page_size, json, &access).await,
    }
}

/// `--bind` default: every IPv4 address.
pub fn default_bind() -> IpAddr {
    IpAddr::from([0, 0, 0, 0])
}
