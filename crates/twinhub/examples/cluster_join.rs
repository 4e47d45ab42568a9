//! How long a node takes to join a cluster of many twins: the twins are written into a PostgreSQL
//! database (the synthetic twins of the other benchmarks), then `twinhub serve --store` is started as a
//! new node and timed until it accepts connections (it has loaded and decoded every twin by then).
//!
//! ```text
//! cargo build --release -p twinhub --example cluster_join
//! target/release/examples/cluster_join --store "host=127.0.0.1 user=postgres dbname=join" [--twins 1000000]
//! ```
//!
//! The database must exist and be empty (the example refuses one that has devices). Needs root for the
//! node's standard ports.

use anyhow::Context;
use clap::Parser;
use std::sync::Arc;
use std::time::Instant;
use twinhub_store::{PostgresStore, Store, StoreWrite};

#[path = "support/synthetic.rs"]
mod synthetic;

#[derive(Parser, Debug)]
struct Args {
    /// The cluster's PostgreSQL (an empty database).
    #[arg(long)]
    store: String,
    #[arg(long, default_value_t = 1_000_000)]
    twins: usize,
    /// Twins per commit while loading.
    #[arg(long, default_value_t = 10_000)]
    batch: usize,
    /// The node's address (loopback; it listens on 443, 8883 and 5671).
    #[arg(long, default_value = "127.250.0.1")]
    address: String,
    /// The twinhub binary to start.
    #[arg(long, default_value = "target/release/twinhub")]
    binary: String,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let store = PostgresStore::connect(&args.store)
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    anyhow::ensure!(
        store.load_all().await?.is_empty(),
        "the database has devices already: give the example an empty one"
    );
    let started = Instant::now();
    let (records, section_bytes) = synthetic::build_records(args.twins)?;
    println!(
        "built {} twins (~{section_bytes} bytes of sections each) in {:.1?}",
        records.len(),
        started.elapsed()
    );
    let started = Instant::now();
    for chunk in records.chunks(args.batch.max(1)) {
        let writes = chunk
            .iter()
            .map(|record| StoreWrite::Upsert(Arc::new(record.clone())))
            .collect();
        store.commit(writes).await?;
    }
    println!("wrote them to PostgreSQL in {:.1?}", started.elapsed());
    drop(records);

    let data_dir = tempfile::tempdir()?;
    let started = Instant::now();
    let mut node = std::process::Command::new(&args.binary)
        .args([
            "serve",
            "--store",
            &args.store,
            "--hostname",
            &args.address,
            "--bind",
            &args.address,
        ])
        .arg("--data-dir")
        .arg(data_dir.path())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .with_context(|| format!("cannot start {}", args.binary))?;
    // Serving means loaded: the node binds its ports before it loads the store (so a port problem shows
    // at once), and prints this line once every twin is in memory and it accepts connections.
    let stdout = node.stdout.take().context("the node's output")?;
    let mut lines = std::io::BufRead::lines(std::io::BufReader::new(stdout));
    let (serving, line) = loop {
        match lines.next() {
            Some(Ok(line)) if line.starts_with("twinhub is serving") => break (started.elapsed(), line),
            Some(Ok(_)) => {}
            _ => anyhow::bail!("the node ended before serving: {:?}", node.wait()?),
        }
    };
    println!("{line}");
    println!(
        "a new node joined the cluster of {} twins and was serving after {:.2?}",
        args.twins, serving
    );
    let _ = node.kill();
    let _ = node.wait();
    Ok(())
}
