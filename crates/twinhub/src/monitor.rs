//! `twinhub monitor-events`, in the spirit of `az iot hub monitor-events`: reads the hub's Event
//! Hubs-compatible endpoint and prints each device-to-cloud event as one line of JSON as it arrives.

use crate::event_hubs::{annotation, event_json, Consumer, ConsumerConfig, Start};
use crate::HubAccess;
use anyhow::Context;
use fe2o3_amqp::types::primitives::Value;
use std::time::Duration;
use twinhub_core::policy::ServiceConnectionString;

#[derive(clap::Args)]
pub struct MonitorArgs {
    /// Only this device's events.
    #[arg(long)]
    device: Option<String>,
    #[arg(long, default_value = "$Default")]
    consumer_group: String,
    /// Start from the oldest retained event (default: only events enqueued from now on).
    #[arg(long)]
    from_start: bool,
    /// Stop after printing this many events.
    #[arg(long)]
    count: Option<usize>,
    /// Stop after this many seconds.
    #[arg(long)]
    timeout: Option<u64>,
    /// The Event Hubs-compatible endpoint's name (default: what the data directory's hub served as, else the
    /// first label of the host name).
    #[arg(long)]
    hub_name: Option<String>,
    /// The hub's AMQP port.
    #[arg(long, default_value_t = 5671)]
    amqp_port: u16,
    #[command(flatten)]
    access: HubAccess,
}

pub async fn run(args: MonitorArgs) -> anyhow::Result<()> {
    let (connection_string, ca) = crate::client::connection_and_ca(&args.access)?;
    let connection = ServiceConnectionString::parse(&connection_string).context("invalid connection string")?;
    let hub_name = match (&args.hub_name, &args.access.data_dir) {
        (Some(name), _) => name.clone(),
        (None, Some(dir)) => twinhub_server::material::read_served_as(dir)?.hub_name,
        (None, None) => twinhub_server::default_hub_name(&connection.host_name),
    };
    let config = ConsumerConfig {
        host: connection.host_name.clone(),
        port: args.amqp_port,
        tls: crate::bench::tls_config(ca.as_ref())?,
        hub_name,
        policy_name: connection.key_name.clone(),
        policy_key: connection.key.clone(),
        consumer_group: args.consumer_group.clone(),
    };
    let mut consumer = Consumer::connect(config).await?;
    let start = if args.from_start {
        Start::Earliest
    } else {
        Start::Latest
    };
    let mut incoming = consumer.receive_all(start).await?;
    eprintln!("monitoring events (Ctrl-C to stop)");
    let deadline = args
        .timeout
        .map(|seconds| tokio::time::Instant::now() + Duration::from_secs(seconds));
    let mut printed = 0;
    loop {
        let next = match deadline {
            Some(deadline) => match tokio::time::timeout_at(deadline, incoming.recv()).await {
                Ok(next) => next,
                Err(_) => break,
            },
            None => incoming.recv().await,
        };
        let Some(message) = next else { break };
        let origin = match annotation(&message, "iothub-connection-device-id") {
            Some(Value::String(device)) => device.clone(),
            _ => String::new(),
        };
        if args.device.as_ref().is_some_and(|device| *device != origin) {
            continue;
        }
        println!("{}", event_json(&message));
        printed += 1;
        if args.count.is_some_and(|count| printed >= count) {
            break;
        }
    }
    consumer.close().await;
    Ok(())
}
