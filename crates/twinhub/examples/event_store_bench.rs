//! The event log benchmark: durable appends and sequential reads of telemetry through the `EventStore`
//! trait the hub calls, on the embedded store (fjall).
//!
//! ```text
//! cargo run --release -p twinhub --example event_store_bench -- [--seconds 3] [--batch 1,64,1024]
//!     [--body 256,4096] [--partitions 4] [--backlog 1000000] [--dir DIR] [--json FILE]
//! ```
//!
//! Appends: per body size and batch size, a fresh store, batches spread round-robin over the partitions
//! (as the hub spreads devices), every batch fsynced; events/s and MB/s of bodies and of stored bytes,
//! with the latency of one append. Backlog: `--backlog` events of 256-byte bodies, then the store is
//! reopened (how long bounds take at start), read back sequentially partition by partition as a consumer
//! catching up would, searched by time, and the tail read (append one event, read it back) timed. Bodies
//! are pseudo-random: telemetry JSON compresses, random bytes do not, so the stored sizes are the worst
//! case. See docs/event-log.md.

use anyhow::Context;
use clap::Parser;
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use twinhub_core::event::{DeviceEvent, EventOrigin, EventProperties, EventValue};
use twinhub_core::{DeviceId, Timestamp};
use twinhub_store::{EmbeddedStore, EventAppend, EventStore, StoreOptions};

/// The binary's allocator, so that the figures are the product's.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// What one read asks for while catching up (an Event Hubs receiver's prefetch is of this order).
const READ_EVENTS_MAX: usize = 1024;
const READ_BYTES_MAX: usize = 1024 * 1024;
/// Events per batch when filling the backlog.
const BACKLOG_BATCH: usize = 1024;
/// Body of the backlog's events.
const BACKLOG_BODY_BYTES: usize = 256;
/// Samples of the tail read and of the time search.
const LATENCY_SAMPLES: usize = 1000;

#[derive(Parser, Debug)]
#[command(about = "Durable event log throughput: appends, sequential reads, time search")]
struct Args {
    /// Seconds of appends per body and batch size.
    #[arg(long, default_value_t = 3.0)]
    seconds: f64,
    /// Events per append (the hub's group commit carries up to 1024).
    #[arg(long, value_delimiter = ',', default_value = "1,64,1024")]
    batch: Vec<usize>,
    /// Body sizes in bytes.
    #[arg(long, value_delimiter = ',', default_value = "256,4096")]
    body: Vec<usize>,
    #[arg(long, default_value_t = 4)]
    partitions: u16,
    /// Events in the backlog that is read back (0: skip).
    #[arg(long, default_value_t = 1_000_000)]
    backlog: u64,
    /// Where the stores are created (default: a temporary directory). Use a real disk, not tmpfs.
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Also write every figure as JSON here.
    #[arg(long)]
    json: Option<PathBuf>,
}

/// Makes events for the partitions in turn, numbering each partition's from 0 as the hub does.
struct EventSource {
    next_sequence: Vec<u64>,
    next_partition: u16,
    random: u64,
    origin: EventOrigin,
    started: Instant,
}

impl EventSource {
    fn new(partitions: u16) -> anyhow::Result<Self> {
        Ok(EventSource {
            next_sequence: vec![0; usize::from(partitions)],
            next_partition: 0,
            random: 0x9e37_79b9_7f4a_7c15,
            origin: EventOrigin {
                device_id: DeviceId::new("bench-device-0001")?,
                module_id: None,
                generation_id: "638412345678901234".to_owned(),
            },
            started: Instant::now(),
        })
    }

    /// xorshift64: incompressible bytes, cheaply.
    fn random_body(&mut self, bytes: usize) -> Vec<u8> {
        let mut body = Vec::with_capacity(bytes + 8);
        while body.len() < bytes {
            self.random ^= self.random << 13;
            self.random ^= self.random >> 7;
            self.random ^= self.random << 17;
            body.extend_from_slice(&self.random.to_le_bytes());
        }
        body.truncate(bytes);
        body
    }

    fn batch(&mut self, events: usize, body_bytes: usize) -> Vec<EventAppend> {
        let now = Timestamp(self.started.elapsed().as_nanos() as i64);
        (0..events)
            .map(|_| {
                let partition = self.next_partition;
                self.next_partition = (partition + 1) % self.next_sequence.len() as u16;
                let sequence_number = self.next_sequence[usize::from(partition)];
                self.next_sequence[usize::from(partition)] += 1;
                EventAppend {
                    partition,
                    enqueued_time: now,
                    origin: self.origin.clone(),
                    event: DeviceEvent {
                        body: self.random_body(body_bytes),
                        properties: EventProperties {
                            message_id: Some(EventValue::String(format!("msg-{sequence_number}"))),
                            content_type: Some("application/json".to_owned()),
                            content_encoding: Some("utf-8".to_owned()),
                            ..EventProperties::default()
                        },
                        application_properties: vec![("alert".to_owned(), EventValue::Bool(false))],
                        annotations: Vec::new(),
                    },
                }
            })
            .collect()
    }
}

fn percentile(sorted: &[Duration], fraction: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    sorted[((sorted.len() - 1) as f64 * fraction).round() as usize]
}

fn ms(duration: Duration) -> f64 {
    duration.as_secs_f64() * 1000.0
}

fn megabytes(bytes: u64) -> f64 {
    bytes as f64 / 1_000_000.0
}

async fn stored_bytes(store: &EmbeddedStore) -> anyhow::Result<u64> {
    Ok(store
        .event_bounds()
        .await?
        .iter()
        .map(|bounds| bounds.retained_bytes)
        .sum())
}

/// Appends batches of `batch` events for `seconds` into a fresh store; one row of the append table.
async fn appends(dir: &Path, args: &Args, body_bytes: usize, batch: usize) -> anyhow::Result<Value> {
    let options = StoreOptions {
        event_partitions: args.partitions,
    };
    let store = EmbeddedStore::open_with(dir, options)?;
    let mut source = EventSource::new(args.partitions)?;
    let mut latencies = Vec::new();
    let mut events = 0u64;
    let mut body_total = 0u64;
    let mut appending = Duration::ZERO;
    let deadline = Instant::now() + Duration::from_secs_f64(args.seconds);
    while Instant::now() < deadline {
        let appends = source.batch(batch, body_bytes);
        let started = Instant::now();
        store.append_events(appends).await?;
        let took = started.elapsed();
        appending += took;
        latencies.push(took);
        events += batch as u64;
        body_total += (batch * body_bytes) as u64;
    }
    let stored = stored_bytes(&store).await?;
    latencies.sort();
    let seconds = appending.as_secs_f64();
    let row = json!({
        "body_bytes": body_bytes,
        "batch": batch,
        "events": events,
        "events_per_second": events as f64 / seconds,
        "body_mb_per_second": megabytes(body_total) / seconds,
        "stored_mb_per_second": megabytes(stored) / seconds,
        "stored_bytes_per_event": stored as f64 / events as f64,
        "append_p50_ms": ms(percentile(&latencies, 0.5)),
        "append_p99_ms": ms(percentile(&latencies, 0.99)),
    });
    println!(
        "| {body_bytes} | {batch} | {:.0} | {:.1} | {:.1} | {:.2} | {:.2} |",
        row["events_per_second"].as_f64().unwrap_or_default(),
        row["body_mb_per_second"].as_f64().unwrap_or_default(),
        row["stored_mb_per_second"].as_f64().unwrap_or_default(),
        row["append_p50_ms"].as_f64().unwrap_or_default(),
        row["append_p99_ms"].as_f64().unwrap_or_default(),
    );
    Ok(row)
}

/// Fills a backlog, reopens, reads it all back, searches it by time, times the tail read, trims it.
async fn backlog(dir: &Path, args: &Args) -> anyhow::Result<Value> {
    let options = StoreOptions {
        event_partitions: args.partitions,
    };
    let mut source = EventSource::new(args.partitions)?;
    let filled = {
        let store = EmbeddedStore::open_with(dir, options)?;
        let started = Instant::now();
        let mut written = 0u64;
        while written < args.backlog {
            let batch = BACKLOG_BATCH.min((args.backlog - written) as usize);
            store.append_events(source.batch(batch, BACKLOG_BODY_BYTES)).await?;
            written += batch as u64;
        }
        started.elapsed()
    };
    println!(
        "- filled {} events of {BACKLOG_BODY_BYTES}-byte bodies in batches of {BACKLOG_BATCH}: {:.1} s ({:.0} events/s)",
        args.backlog,
        filled.as_secs_f64(),
        args.backlog as f64 / filled.as_secs_f64()
    );

    let started = Instant::now();
    let store = EmbeddedStore::open_with(dir, options)?;
    let bounds = store.event_bounds().await?;
    let reopened = started.elapsed();
    let stored: u64 = bounds.iter().map(|partition| partition.retained_bytes).sum();
    println!(
        "- reopened with the bounds of every partition: {:.0} ms ({} events, {:.0} MB stored)",
        ms(reopened),
        bounds.iter().map(|partition| partition.len()).sum::<u64>(),
        megabytes(stored)
    );

    let started = Instant::now();
    let mut read = 0u64;
    let mut reads = 0u64;
    for (partition, partition_bounds) in (0u16..).zip(&bounds) {
        let mut from = partition_bounds.first;
        while from < partition_bounds.next {
            let events = store
                .read_events(partition, from, READ_EVENTS_MAX, READ_BYTES_MAX)
                .await?;
            let last = events.last().context("a read below next returned nothing")?;
            from = last.sequence_number + 1;
            read += events.len() as u64;
            reads += 1;
        }
    }
    let reading = started.elapsed();
    println!(
        "- read back sequentially, {READ_EVENTS_MAX} events or {READ_BYTES_MAX} bytes per read: {:.0} events/s, {:.0} MB/s stored ({reads} reads)",
        read as f64 / reading.as_secs_f64(),
        megabytes(stored) / reading.as_secs_f64()
    );

    // Times spread over the backlog's: each search is a binary search of point reads.
    let last_time = store
        .read_events(0, bounds[0].next.saturating_sub(1), 1, usize::MAX)
        .await?
        .first()
        .map_or(0, |event| event.enqueued_time.0);
    let mut searches = Vec::with_capacity(LATENCY_SAMPLES);
    for sample in 0..LATENCY_SAMPLES {
        let time = Timestamp(last_time / LATENCY_SAMPLES as i64 * sample as i64);
        let partition = (sample % usize::from(args.partitions)) as u16;
        let started = Instant::now();
        store.first_at_or_after(partition, time).await?;
        searches.push(started.elapsed());
    }
    searches.sort();

    // The consumer hot path: the newest event, read right after it was appended.
    let mut tail_reads = Vec::with_capacity(LATENCY_SAMPLES);
    for _ in 0..LATENCY_SAMPLES {
        let batch = source.batch(1, BACKLOG_BODY_BYTES);
        let partition = batch[0].partition;
        let sequence_number = store.append_events(batch).await?[0];
        let started = Instant::now();
        let events = store
            .read_events(partition, sequence_number, READ_EVENTS_MAX, READ_BYTES_MAX)
            .await?;
        tail_reads.push(started.elapsed());
        anyhow::ensure!(events.len() == 1, "the tail read returned {} events", events.len());
    }
    tail_reads.sort();
    println!(
        "- first_at_or_after: p50 {:.3} ms, p99 {:.3} ms; tail read (the event just appended): p50 {:.3} ms, p99 {:.3} ms",
        ms(percentile(&searches, 0.5)),
        ms(percentile(&searches, 0.99)),
        ms(percentile(&tail_reads, 0.5)),
        ms(percentile(&tail_reads, 0.99))
    );

    let disk_before = directory_bytes(dir);
    let started = Instant::now();
    for (partition, partition_bounds) in (0u16..).zip(store.event_bounds().await?) {
        store.trim_events(partition, partition_bounds.next).await?;
    }
    let trimming = started.elapsed();
    let disk_after = directory_bytes(dir);
    // Dropped tables are deleted once no reader holds them; the journal and the memtables keep what they
    // hold until they are flushed. Closing the store shows what stays for good.
    drop(store);
    let disk_closed = directory_bytes(dir);
    println!(
        "- trimmed the backlog, every partition: {:.0} ms; directory {:.0} MB before, {:.0} MB after, {:.0} MB once closed",
        ms(trimming),
        megabytes(disk_before),
        megabytes(disk_after),
        megabytes(disk_closed)
    );

    Ok(json!({
        "events": args.backlog,
        "body_bytes": BACKLOG_BODY_BYTES,
        "fill_seconds": filled.as_secs_f64(),
        "stored_bytes": stored,
        "reopen_ms": ms(reopened),
        "read_events_per_second": read as f64 / reading.as_secs_f64(),
        "read_stored_mb_per_second": megabytes(stored) / reading.as_secs_f64(),
        "first_at_or_after_p50_ms": ms(percentile(&searches, 0.5)),
        "first_at_or_after_p99_ms": ms(percentile(&searches, 0.99)),
        "tail_read_p50_ms": ms(percentile(&tail_reads, 0.5)),
        "tail_read_p99_ms": ms(percentile(&tail_reads, 0.99)),
        "trim_ms": ms(trimming),
        "directory_bytes_before_trim": disk_before,
        "directory_bytes_after_trim": disk_after,
        "directory_bytes_after_trim_closed": disk_closed,
    }))
}

/// Bytes of the files under `dir`, what the store takes on disk.
fn directory_bytes(dir: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .flatten()
        .map(|entry| match entry.metadata() {
            Ok(metadata) if metadata.is_dir() => directory_bytes(&entry.path()),
            Ok(metadata) => metadata.len(),
            Err(_) => 0,
        })
        .sum()
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let temporary;
    let root = match &args.dir {
        Some(dir) => dir.join("event-store-bench"),
        None => {
            temporary = tempfile::tempdir()?;
            temporary.path().to_path_buf()
        }
    };
    std::fs::create_dir_all(&root)?;
    let runtime = tokio::runtime::Runtime::new()?;
    println!(
        "# event store benchmark: {}",
        std::env::args().collect::<Vec<_>>().join(" ")
    );
    println!("\n## durable appends, {} partitions\n", args.partitions);
    println!(
        "| body (B) | events per append | events/s | body MB/s | stored MB/s | append p50 (ms) | append p99 (ms) |"
    );
    println!("|---|---|---|---|---|---|---|");
    let mut append_rows = Vec::new();
    for &body_bytes in &args.body {
        for &batch in &args.batch {
            let dir = root.join(format!("appends-{body_bytes}-{batch}"));
            append_rows.push(runtime.block_on(appends(&dir, &args, body_bytes, batch))?);
            std::fs::remove_dir_all(&dir)?;
        }
    }
    let backlog_figures = if args.backlog > 0 {
        println!("\n## backlog\n");
        let dir = root.join("backlog");
        let figures = runtime.block_on(backlog(&dir, &args))?;
        std::fs::remove_dir_all(&dir)?;
        figures
    } else {
        Value::Null
    };
    if let Some(path) = &args.json {
        let report = json!({ "appends": append_rows, "backlog": backlog_figures });
        std::fs::write(path, serde_json::to_vec_pretty(&report)?)?;
    }
    Ok(())
}
