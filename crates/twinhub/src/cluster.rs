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
    },
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
            let policies = HubMaterial::policies_in(&data_dir, false)?;
            let owner = HubMaterial::policy(&policies, "iothubowner")?;
            println!("iothubowner connection string:");
            println!("{}", twinhub_core::policy::service_connection_string(&hostname, owner));
            Ok(())
        }
    }
}
