//! The store benchmark: the embedded store (fjall) side by side with redb, in one run, over the same
//! synthetic twins in the same stored form (`twinhub_store::codec`), through the same `Store` trait the
//! hub calls.
//!
//! ```text
//! cargo run --release -p twinhub --example store_bench -- [--twins 100000,1000000] [--seconds 10]
//!     [--batch 1,64,1024] [--dir DIR] [--json FILE]
//! ```
//!
//! Per size and store: the bulk load, durable update throughput per commit size (every commit fsynced,
//! as the hub's group commit does), and the start time: open the store and `Hub::start` over it, which
//! loads and decodes every record into the in-memory registry. See docs/storage.md.

use anyhow::Context;
use clap::Parser;
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};
use twinhub_core::DeviceRecord;
use twinhub_hub::{Hub, HubConfig};
use twinhub_store::codec::{decode_all, encode};
use twinhub_store::{EmbeddedStore, Store, StoreError, StoreWrite};

/// The binary's allocator, so that the figures are the product's.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[path = "support/synthetic.rs"]
mod synthetic;

#[derive(Parser, Debug)]
#[command(about = "Durable store throughput and start time: fjall (twinhub's embedded store) and redb")]
struct Args {
    /// Registry sizes, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "100000")]
    twins: Vec<usize>,
    /// Seconds of updates per commit size.
    #[arg(long, default_value_t = 5.0)]
    seconds: f64,
    /// Updates per commit (the hub's group commit carries up to 1024).
    #[arg(long, value_delimiter = ',', default_value = "1,64,1024")]
    batch: Vec<usize>,
    /// Where the stores are created (default: a temporary directory). Use a real disk, not tmpfs.
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Also write every figure as JSON here.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Keep the stores (in --dir) after the run, to start them again by hand.
    #[arg(long, requires = "dir")]
    keep: bool,
    /// Internal: start a hub over the store in this directory, print the seconds it took, exit. The
    /// benchmark measures starts in a fresh process, as `twinhub serve` starts.
    #[arg(long, hide = true, requires = "kind")]
    start_only: Option<PathBuf>,
    #[arg(long, hide = true)]
    kind: Option<String>,
}

/// The peer: redb, one table, one durable write transaction per commit.
struct RedbStore {
    db: Arc<redb::Database>,
}

const REDB_DEVICES: redb::TableDefinition<&[u8], &[u8]> = redb::TableDefinition::new("devices");

fn boxed(error: impl std::error::Error + Send + Sync + 'static) -> Box<dyn std::error::Error + Send + Sync> {
    Box::new(error)
}

impl RedbStore {
    fn open(dir: &Path) -> anyhow::Result<RedbStore> {
        std::fs::create_dir_all(dir)?;
        let db = redb::Database::create(dir.join("devices.redb"))?;
        let write = db.begin_write()?;
        write.open_table(REDB_DEVICES)?;
        write.commit()?;
        Ok(RedbStore { db: Arc::new(db) })
    }
}

#[async_trait::async_trait]
impl Store for RedbStore {
    async fn load_all(&self) -> Result<Vec<DeviceRecord>, StoreError> {
        let db = Arc::clone(&self.db);
        tokio::task::spawn_blocking(move || {
            use redb::{ReadableDatabase, ReadableTable};
            let read = db.begin_read().map_err(|e| StoreError::Read(boxed(e)))?;
            let table = read.open_table(REDB_DEVICES).map_err(|e| StoreError::Read(boxed(e)))?;
            let mut raw = Vec::new();
            for entry in table.iter().map_err(|e| StoreError::Read(boxed(e)))? {
                let (key, value) = entry.map_err(|e| StoreError::Read(boxed(e)))?;
                raw.push((key.value().to_vec(), value.value().to_vec()));
            }
            decode_all(&raw)
        })
        .await
        .map_err(|e| StoreError::Read(boxed(e)))?
    }

    async fn commit(&self, batch: Vec<StoreWrite>) -> Result<(), StoreError> {
        let db = Arc::clone(&self.db);
        tokio::task::spawn_blocking(move || {
            let write = db.begin_write().map_err(|e| StoreError::Write(boxed(e)))?;
            {
                let mut table = write
                    .open_table(REDB_DEVICES)
                    .map_err(|e| StoreError::Write(boxed(e)))?;
                for change in batch {
                    match change {
                        StoreWrite::Upsert(record) => {
                            let value = encode(&record)?;
                            table
                                .insert(record.identity.device_id.as_str().as_bytes(), value.as_slice())
                                .map_err(|e| StoreError::Write(boxed(e)))?;
                        }
                        StoreWrite::Delete(id) => {
                            table
                                .remove(id.as_str().as_bytes())
                                .map_err(|e| StoreError::Write(boxed(e)))?;
                        }
                        // The benchmark measures device records only; sessions are not written by it.
                        StoreWrite::UpsertSession(_)
                        | StoreWrite::DeleteSession(_)
                        | StoreWrite::UpsertConsumerGroup(_)
                        | StoreWrite::DeleteConsumerGroup(_)
                        | StoreWrite::UpsertCloudToDevice { .. }
                        | StoreWrite::DeleteCloudToDevice { .. }
                        | StoreWrite::UpsertFeedback { .. }
                        | StoreWrite::DeleteFeedback(_)
                        | StoreWrite::PutSetting { .. }
                        | StoreWrite::UpsertModule(_)
                        | StoreWrite::DeleteModule { .. }
                        | StoreWrite::UpsertJob(_)
                        | StoreWrite::UpsertDeviceJob(_) => {}
                    }
                }
            }
            write.commit().map_err(|e| StoreError::Write(boxed(e)))
        })
        .await
        .map_err(|e| StoreError::Write(boxed(e)))?
    }
}

#[derive(Clone, Copy, Debug, PartialEq, clap::ValueEnum)]
enum Kind {
    Fjall,
    Redb,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Fjall => "fjall (twinhub)",
            Kind::Redb => "redb",
        }
    }

    fn arg(self) -> &'static str {
        match self {
            Kind::Fjall => "fjall",
            Kind::Redb => "redb",
        }
    }

    fn open(self, dir: &Path) -> anyhow::Result<Arc<dyn Store>> {
        Ok(match self {
            Kind::Fjall => Arc::new(EmbeddedStore::open(dir)?),
            Kind::Redb => Arc::new(RedbStore::open(dir)?),
        })
    }
}

struct StoreReport {
    kind: Kind,
    bulk_load: Duration,
    /// (updates per commit, updates per second, commit p50 ms, commit p99 ms)
    updates: Vec<(usize, f64, f64, f64)>,
    /// The first start after writing, then a second one.
    starts: Vec<Duration>,
    disk_bytes: u64,
}

fn disk_usage(dir: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else { return 0 };
    entries
        .flatten()
        .map(|entry| match entry.metadata() {
            Ok(meta) if meta.is_dir() => disk_usage(&entry.path()),
            Ok(meta) => meta.len(),
            Err(_) => 0,
        })
        .sum()
}

fn percentile(sorted: &[Duration], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = ((p * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1].as_secs_f64() * 1000.0
}

/// Each update rewrites one whole record, as a twin patch does: a changed reported temperature.
fn updated(record: &DeviceRecord, step: u64) -> anyhow::Result<Arc<DeviceRecord>> {
    let rules = twinhub_core::TwinRules::default();
    let patch = twinhub_core::twin::ReportedPatch::from_json(&json!({"temperature": step as f64 / 10.0}), &rules)
        .map_err(|e| anyhow::anyhow!("{e:?}"))?;
    let twin = record
        .twin
        .with_reported(&patch, twinhub_core::Timestamp::now(), &rules)
        .map_err(|e| anyhow::anyhow!("{e:?}"))?;
    Ok(Arc::new(DeviceRecord::new(
        record.identity.clone(),
        twin,
        record.presence.clone(),
    )))
}

async fn run_store(kind: Kind, records: &[DeviceRecord], dir: &Path, args: &Args) -> anyhow::Result<StoreReport> {
    let store = kind.open(dir)?;
    let started = Instant::now();
    for chunk in records.chunks(1024) {
        let batch = chunk.iter().map(|r| StoreWrite::Upsert(Arc::new(r.clone()))).collect();
        store.commit(batch).await?;
    }
    let bulk_load = started.elapsed();
    eprintln!("  {}: bulk load {:.2} s", kind.name(), bulk_load.as_secs_f64());

    let mut rng = synthetic::Rng(0x5702_E0B5);
    let mut updates = Vec::new();
    for &batch_len in &args.batch {
        let mut commits = Vec::new();
        let mut done = 0usize;
        let started = Instant::now();
        while started.elapsed().as_secs_f64() < args.seconds {
            let mut batch = Vec::with_capacity(batch_len);
            for _ in 0..batch_len {
                let record = &records[rng.below(records.len() as u64) as usize];
                batch.push(StoreWrite::Upsert(updated(record, rng.next() % 1000)?));
            }
            let commit_started = Instant::now();
            store.commit(batch).await?;
            commits.push(commit_started.elapsed());
            done += batch_len;
        }
        let rate = done as f64 / started.elapsed().as_secs_f64();
        commits.sort();
        let row = (batch_len, rate, percentile(&commits, 0.5), percentile(&commits, 0.99));
        eprintln!(
            "  {}: {} per commit: {:.0} updates/s, commit p50 {:.2} ms p99 {:.2} ms",
            kind.name(),
            batch_len,
            row.1,
            row.2,
            row.3
        );
        updates.push(row);
    }
    drop(store);

    // Start, what `twinhub serve` does before it listens, in a fresh process: open the store and load and
    // decode every record into the hub's registry. The first start after writing also replays the
    // store's journal (as after a crash); the second starts from a cleanly closed store.
    let mut starts = Vec::new();
    for _ in 0..2 {
        let output = std::process::Command::new(std::env::current_exe()?)
            .args(["--kind", kind.arg(), "--start-only"])
            .arg(dir)
            .output()?;
        anyhow::ensure!(
            output.status.success(),
            "{} start failed: {}",
            kind.name(),
            String::from_utf8_lossy(&output.stderr)
        );
        let stdout = String::from_utf8_lossy(&output.stdout);
        let (seconds, loaded) = stdout.trim().split_once(' ').context("the start's output")?;
        let (seconds, loaded): (f64, usize) = (seconds.parse()?, loaded.parse()?);
        anyhow::ensure!(
            loaded == records.len(),
            "{} started with {loaded} of {} twins",
            kind.name(),
            records.len()
        );
        eprintln!("  {}: start with {} twins {seconds:.2} s", kind.name(), records.len());
        starts.push(Duration::from_secs_f64(seconds));
    }
    Ok(StoreReport {
        kind,
        bulk_load,
        updates,
        starts,
        disk_bytes: disk_usage(dir),
    })
}

fn print_size(n: usize, record_bytes: usize, reports: &[StoreReport]) {
    println!("\n## {n} twins (stored record {record_bytes} bytes on average)\n");
    println!(
        "| figure | {} | ratio |",
        reports.iter().map(|r| r.kind.name()).collect::<Vec<_>>().join(" | ")
    );
    println!("|---|{}---|", "---|".repeat(reports.len()));
    let ratio = |a: f64, b: f64| {
        if b > 0.0 {
            format!("{:.2}", a / b)
        } else {
            "-".to_owned()
        }
    };
    let row = |label: String, values: Vec<f64>, format: &dyn Fn(f64) -> String, higher_is_better: bool| {
        let cells: Vec<String> = values.iter().map(|v| format(*v)).collect();
        let r = if values.len() == 2 {
            if higher_is_better {
                ratio(values[0], values[1])
            } else {
                ratio(values[1], values[0])
            }
        } else {
            "-".to_owned()
        };
        println!("| {label} | {} | {r} |", cells.join(" | "));
    };
    row(
        "bulk load (s)".into(),
        reports.iter().map(|r| r.bulk_load.as_secs_f64()).collect(),
        &|v| format!("{v:.2}"),
        false,
    );
    for (i, (batch, ..)) in reports[0].updates.iter().enumerate() {
        row(
            format!("durable updates/s, {batch} per commit"),
            reports.iter().map(|r| r.updates[i].1).collect(),
            &|v| format!("{v:.0}"),
            true,
        );
        row(
            format!("commit p99 (ms), {batch} per commit"),
            reports.iter().map(|r| r.updates[i].3).collect(),
            &|v| format!("{v:.2}"),
            false,
        );
    }
    for (i, label) in ["start after writing: open + Hub::start (s)", "start again (s)"]
        .into_iter()
        .enumerate()
    {
        row(
            label.into(),
            reports.iter().map(|r| r.starts[i].as_secs_f64()).collect(),
            &|v| format!("{v:.2}"),
            false,
        );
    }
    row(
        "on disk (MB)".into(),
        reports.iter().map(|r| r.disk_bytes as f64 / 1e6).collect(),
        &|v| format!("{v:.0}"),
        false,
    );
    println!("\nratio: fjall ÷ redb for rates, redb ÷ fjall for times and sizes (above 1: fjall is better)");
}

fn report_json(n: usize, reports: &[StoreReport]) -> Value {
    json!({
        "twins": n,
        "stores": reports.iter().map(|r| json!({
            "store": r.kind.name(),
            "bulk_load_s": r.bulk_load.as_secs_f64(),
            "updates": r.updates.iter().map(|(batch, rate, p50, p99)| json!({
                "per_commit": batch, "updates_per_s": rate, "commit_p50_ms": p50, "commit_p99_ms": p99,
            })).collect::<Vec<_>>(),
            "start_after_writing_s": r.starts[0].as_secs_f64(),
            "start_again_s": r.starts[1].as_secs_f64(),
            "disk_bytes": r.disk_bytes,
        })).collect::<Vec<_>>(),
    })
}

/// The `--start-only` child: times a hub start over an existing store and checks it loaded records.
fn start_only(kind: Kind, dir: &Path) -> anyhow::Result<()> {
    let started = Instant::now();
    let runtime = tokio::runtime::Runtime::new()?;
    let loaded = runtime.block_on(async {
        let hub = Hub::start(kind.open(dir)?, HubConfig::default()).await?;
        anyhow::Ok(hub.snapshot().devices.len())
    })?;
    let elapsed = started.elapsed().as_secs_f64();
    println!("{elapsed} {loaded}");
    Ok(())
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if let (Some(dir), Some(kind)) = (&args.start_only, &args.kind) {
        let kind = <Kind as clap::ValueEnum>::from_str(kind, true).map_err(|e| anyhow::anyhow!(e))?;
        return start_only(kind, dir);
    }
    let runtime = tokio::runtime::Runtime::new()?;
    let scratch = tempfile::TempDir::new_in(args.dir.clone().unwrap_or_else(std::env::temp_dir))
        .context("creating the benchmark directory")?;
    let scratch_path = if args.keep {
        scratch.keep()
    } else {
        scratch.path().to_path_buf()
    };
    println!("# store benchmark: {}", std::env::args().collect::<Vec<_>>().join(" "));
    let mut all = Vec::new();
    for &n in &args.twins {
        eprintln!("{n} twins: generating");
        let (records, _) = synthetic::build_records(n)?;
        let record_bytes = records
            .iter()
            .take(1000)
            .map(|r| encode(r).map(|b| b.len()).unwrap_or(0))
            .sum::<usize>()
            / records.len().clamp(1, 1000);
        let mut reports = Vec::new();
        for kind in [Kind::Fjall, Kind::Redb] {
            let dir = scratch_path.join(format!("{n}-{kind:?}"));
            reports.push(runtime.block_on(run_store(kind, &records, &dir, &args))?);
            if args.keep {
                eprintln!("  kept {}", dir.display());
            } else {
                std::fs::remove_dir_all(&dir).ok();
            }
        }
        print_size(n, record_bytes, &reports);
        all.push(report_json(n, &reports));
    }
    if let Some(path) = &args.json {
        std::fs::write(path, serde_json::to_string_pretty(&all)?)?;
    }
    Ok(())
}
