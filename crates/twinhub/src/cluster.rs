//! `twinhub cluster init`, and how a node on PostgreSQL takes the cluster's policies and CA.

use std::path::{Path, PathBuf};
use twinhub_server::HubMaterial;
use twinhub_store::PostgresStore;

#[derive(clap::Subcommand)]
pub enum ClusterCommand {
    /// Makes this data directory's policies and CA the cluster's, in PostgreSQL (created first when
    /// missing); a cluster that has them already keeps its own, and they are copied here instead. Every
    /// node started with `serve --store` takes them from there. Prints the iothubowner connection string.
    Init {
        /// The cluster's PostgreSQL (as `serve --store`).
        #[arg(long, env = "TWINHUB_STORE")]
        store: String,
        #[arg(long, default_value = "./twinhub-data")]
        data_dir: PathBuf,
        /// The host name devices and back ends use (the load balancer's), for the connection string.
        #[arg(long, default_value = "localhost")]
        hostname: String,
        /// The cluster's NATS (as `serve --bus`): its telemetry partitions are created there now.
        #[arg(long, env = "TWINHUB_BUS")]
        bus: Option<String>,
        /// With --bus: the telemetry partitions, 2 to 32 (a cluster keeps the count it was created with).
        #[arg(long, default_value_t = twinhub_store::EVENT_PARTITIONS_DEFAULT,
              value_parser = clap::value_parser!(u16).range(2..=32))]
        event_partitions: u16,
        /// With --bus: replicas of each partition's JetStream stream.
        #[arg(long, default_value_t = 1)]
        event_replicas: usize,
    },
}

/// The cluster's telemetry partitions in JetStream at `url` (created with `partitions` when the cluster
/// has none), named by the cluster identity PostgreSQL keeps: a cluster made anew under the same host
/// name starts with empty partitions.
pub async fn telemetry_in_jetstream(
    store: &PostgresStore,
    url: &str,
    partitions: u16,
    replicas: usize,
) -> anyhow::Result<twinhub_store::JetStreamEvents> {
    let cluster = store
        .cluster_identity()
        .await
        .map_err(|error| anyhow::anyhow!("cannot read the cluster's identity: {error}"))?;
    let options = twinhub_store::JetStreamOptions { partitions, replicas };
    twinhub_store::JetStreamEvents::connect(url, &cluster, options)
        .await
        .map_err(|error| anyhow::anyhow!("cannot keep telemetry in JetStream: {error}"))
}

/// Whether the files this node now has were the cluster's already, or this node's, offered first.
#[derive(Debug, PartialEq, Eq)]
pub enum Shared {
    Adopted,
    Offered,
}

/// Takes the cluster's policies and CA into `data_dir`; when the cluster has none yet, this node's
/// (created when missing) become the cluster's. Two nodes starting at once agree: the first offer stays,
/// and both take what PostgreSQL then holds.
pub async fn share_material(store: &PostgresStore, data_dir: &Path, hostname: &str) -> anyhow::Result<Shared> {
    let mut files = store.cluster_files().await?;
    let mut shared = Shared::Adopted;
    if files.is_empty() {
        let mut own = HubMaterial::shared_files(data_dir, &[hostname.to_owned()])?;
        // In the order PostgreSQL gives them back, to compare.
        own.sort();
        store.offer_cluster_files(&own).await?;
        files = store.cluster_files().await?;
        if files == own {
            shared = Shared::Offered;
        }
    }
    if HubMaterial::adopt_shared(data_dir, &files)? {
        tracing::info!(data_dir = %data_dir.display(), "took the cluster's policies and CA from PostgreSQL");
    }
    Ok(shared)
}

pub async fn run(command: ClusterCommand) -> anyhow::Result<()> {
    match command {
        ClusterCommand::Init {
            store,
            data_dir,
            hostname,
            bus,
            event_partitions,
            event_replicas,
        } => {
            let store = PostgresStore::connect(&store)
                .await
                .map_err(|error| anyhow::anyhow!("cannot use the PostgreSQL store: {error}"))?;
            match share_material(&store, &data_dir, &hostname).await? {
                Shared::Offered => println!("the cluster in {} now has this hub's policies and CA", store.describe()),
                Shared::Adopted => println!(
                    "the cluster in {} had its policies and CA already: copied into {}",
                    store.describe(),
                    data_dir.display()
                ),
            }
            if let Some(url) = &bus {
                use twinhub_store::EventStore;
                let events = telemetry_in_jetstream(&store, url, event_partitions, event_replicas).await?;
                println!(
                    "telemetry: {} partitions ({})",
                    events.partition_count(),
                    events.describe()
                );
            }
            let policies = HubMaterial::policies_in(&data_dir, false)?;
            let owner = HubMaterial::policy(&policies, "iothubowner")?;
            println!("iothubowner connection string:");
            println!("{}", twinhub_core::policy::service_connection_string(&hostname, owner));
            Ok(())
        }
    }
}
