//! The query benchmark: the same queries over the same synthetic twins through the hub's engine
//! (`Hub::query`), through the REST API (`POST /devices/query` over HTTPS), and in PostgreSQL (jsonb with a
//! GIN `jsonb_path_ops` index), with p50/p99 latencies per query shape and registry size.
//!
//! ```text
//! cargo run --release -p twinhub --example query_bench -- [--twins 100000,1000000] [--runs 30]
//!     [--skip-postgres] [--skip-rest] [--json FILE] [--postgres "host=127.0.0.1 user=postgres dbname=test"]
//! ```
//!
//! `bench/query.sh` wraps it and makes sure PostgreSQL is running. See docs/query-benchmark.md.

use anyhow::{bail, Context};
use clap::Parser;
use futures_util::SinkExt;
use serde_json::{json, Value};
use std::net::{IpAddr, Ipv4Addr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use twinhub_core::DeviceRecord;
use twinhub_hub::Hub;
use twinhub_server::{RunningHub, ServeConfig};
use twinhub_store::{Store, StoreError, StoreWrite};

#[derive(Parser, Debug)]
#[command(about = "Query latency: twinhub engine, twinhub REST API, PostgreSQL jsonb")]
struct Args {
    /// Registry sizes to run, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "100000")]
    twins: Vec<usize>,
    /// Timed runs per query (after one warm-up run).
    #[arg(long, default_value_t = 30)]
    runs: usize,
    /// Leave PostgreSQL out.
    #[arg(long)]
    skip_postgres: bool,
    /// Leave the REST API out.
    #[arg(long)]
    skip_rest: bool,
    /// PostgreSQL connection (tokio-postgres syntax).
    #[arg(long, default_value = "host=127.0.0.1 user=postgres dbname=test")]
    postgres: String,
    /// Also write every figure as JSON here.
    #[arg(long)]
    json: Option<std::path::PathBuf>,
}

/// Results per page, the most the hub allows.
const PAGE_SIZE: usize = 10_000;

/// The binary's allocator, so that the figures are the product's.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[path = "support/synthetic.rs"]
mod synthetic;
use synthetic::build_records;

/// Hands the synthetic records to the hub once; accepts every commit (the bench writes nothing but the
/// hub's own index requests).
struct MemoryStore {
    records: Mutex<Option<Vec<DeviceRecord>>>,
    loaded_at: Mutex<Option<Instant>>,
}

#[async_trait::async_trait]
impl Store for MemoryStore {
    async fn load_all(&self) -> Result<Vec<DeviceRecord>, StoreError> {
        *self.loaded_at.lock().unwrap() = Some(Instant::now());
        Ok(self.records.lock().unwrap().take().unwrap_or_default())
    }

    async fn commit(&self, _batch: Vec<StoreWrite>) -> Result<(), StoreError> {
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------------------
// Query shapes.

struct Shape {
    name: &'static str,
    /// The IoT Hub query.
    query: String,
    /// Equivalent PostgreSQL.
    sql: String,
    aggregate: bool,
}

fn contains(path: &[&str], value: &str) -> String {
    let mut doc = json!(value);
    for key in path.iter().rev() {
        doc = json!({ *key: doc });
    }
    format!("doc @> '{doc}'")
}

fn shapes() -> Vec<Shape> {
    let plant = ["tags", "location", "plant"];
    let twin = |name, query: &str, filter: String| Shape {
        name,
        query: format!("SELECT * FROM devices WHERE {query}"),
        sql: format!("SELECT doc::text FROM bench_twins WHERE {filter}"),
        aggregate: false,
    };
    vec![
        twin(
            "eq tag (plant)",
            "tags.location.plant = 'plant-00042'",
            contains(&plant, "plant-00042"),
        ),
        twin(
            "eq tag AND eq reported",
            "tags.location.plant = 'plant-00042' AND properties.reported.connectivity.type = 'cellular'",
            format!(
                "doc @> '{}'",
                json!({"tags": {"location": {"plant": "plant-00042"}},
                       "properties": {"reported": {"connectivity": {"type": "cellular"}}}})
            ),
        ),
        twin(
            "range (temperature > 99.5)",
            "properties.reported.temperature > 99.5",
            "(doc->'properties'->'reported'->>'temperature')::float8 > 99.5".into(),
        ),
        twin(
            "IN 2 fleets (broad)",
            "tags.fleet IN ['fleet-1', 'fleet-2']",
            format!(
                "{} OR {}",
                contains(&["tags", "fleet"], "fleet-1"),
                contains(&["tags", "fleet"], "fleet-2")
            ),
        ),
        twin(
            "IN 3 plants (selective)",
            "tags.location.plant IN ['plant-00042', 'plant-00043', 'plant-00044']",
            format!(
                "{} OR {} OR {}",
                contains(&plant, "plant-00042"),
                contains(&plant, "plant-00043"),
                contains(&plant, "plant-00044")
            ),
        ),
        twin(
            "STARTSWITH plant",
            "STARTSWITH(tags.location.plant, 'plant-0004')",
            "doc->'tags'->'location'->>'plant' LIKE 'plant-0004%'".into(),
        ),
        Shape {
            name: "COUNT region",
            query: "SELECT COUNT() AS n FROM devices WHERE tags.location.region = 'us-east'".into(),
            sql: format!(
                "SELECT count(*)::text FROM bench_twins WHERE {}",
                contains(&["tags", "location", "region"], "us-east")
            ),
            aggregate: true,
        },
        Shape {
            name: "GROUP BY connectivity",
            query: "SELECT properties.reported.connectivity.type AS t, COUNT() AS n FROM devices \
                    GROUP BY properties.reported.connectivity.type"
                .into(),
            sql: "SELECT doc->'properties'->'reported'->'connectivity'->>'type' AS t, count(*)::text AS n \
                  FROM bench_twins GROUP BY doc->'properties'->'reported'->'connectivity'->>'type'"
                .into(),
            aggregate: true,
        },
    ]
}

// ---------------------------------------------------------------------------------------------------
// Timing.

#[derive(Clone, Copy, Debug)]
struct Latency {
    p50: Duration,
    p99: Duration,
}

/// Nearest-rank percentiles. With 30 runs, p99 is the slowest run.
fn latency(mut samples: Vec<Duration>) -> Latency {
    samples.sort_unstable();
    let rank = |p: f64| {
        let r = ((p / 100.0) * samples.len() as f64).ceil() as usize;
        samples[r.clamp(1, samples.len()) - 1]
    };
    Latency {
        p50: rank(50.0),
        p99: rank(99.0),
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// One warm-up run, then `runs` timed runs; each run returns (time, rows, summary).
async fn measure<F, Fut>(runs: usize, mut run: F) -> anyhow::Result<(Latency, usize, String)>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<(Duration, usize, String)>>,
{
    let (_, rows, summary) = run().await?;
    let mut samples = Vec::with_capacity(runs);
    for _ in 0..runs {
        let (elapsed, again, _) = run().await?;
        if again != rows {
            bail!("the result count changed between runs: {rows} then {again}");
        }
        samples.push(elapsed);
    }
    Ok((latency(samples), rows, summary))
}

/// What aggregate rows say, in a stable order, e.g. `n=12500` or `cellular=40012 ethernet=19950 ...`.
fn summarize(rows: &[Value], aggregate: bool) -> String {
    if !aggregate {
        return String::new();
    }
    let mut parts: Vec<String> = rows
        .iter()
        .map(|row| match row.get("t") {
            Some(t) => format!("{}={}", t.as_str().unwrap_or("?"), row["n"]),
            None => format!("n={}", row["n"]),
        })
        .collect();
    parts.sort();
    parts.join(" ")
}

async fn engine_run(hub: &Hub, shape: &Shape) -> anyhow::Result<(Duration, usize, String)> {
    let started = Instant::now();
    let mut items = Vec::new();
    let mut token: Option<String> = None;
    loop {
        let page = hub.query(&shape.query, Some(PAGE_SIZE), token.as_deref()).await?;
        items.extend(page.items);
        match page.continuation {
            Some(next) => token = Some(next),
            None => break,
        }
    }
    let elapsed = started.elapsed();
    let items: Vec<Value> = items
        .iter()
        .map(|item| serde_json::from_str(item))
        .collect::<Result<_, _>>()?;
    Ok((elapsed, items.len(), summarize(&items, shape.aggregate)))
}

struct RestClient {
    http: reqwest::Client,
    url: String,
    host_name: String,
    key_name: String,
    key: String,
}

impl RestClient {
    fn token(&self) -> anyhow::Result<String> {
        let now = SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs();
        twinhub_core::sas::sign(&self.host_name, &self.key, Some(&self.key_name), now + 3600)
            .map_err(|e| anyhow::anyhow!("signing: {e:?}"))
    }

    /// Times the requests up to the last byte of each body; parsing the JSON to count rows is not timed.
    async fn run(&self, shape: &Shape) -> anyhow::Result<(Duration, usize, String)> {
        let token = self.token()?;
        let body = json!({ "query": shape.query }).to_string();
        let mut elapsed = Duration::ZERO;
        let mut items = Vec::new();
        let mut continuation: Option<String> = None;
        loop {
            let started = Instant::now();
            let mut request = self
                .http
                .post(&self.url)
                .header("Authorization", &token)
                .header("Content-Type", "application/json; charset=utf-8")
                .header("x-ms-max-item-count", PAGE_SIZE.to_string())
                .body(body.clone());
            if let Some(token) = &continuation {
                request = request.header("x-ms-continuation", token);
            }
            let response = request.send().await?;
            let status = response.status();
            continuation = response
                .headers()
                .get("x-ms-continuation")
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned);
            let bytes = response.bytes().await?;
            elapsed += started.elapsed();
            if !status.is_success() {
                bail!("{}: HTTP {status}: {}", shape.name, String::from_utf8_lossy(&bytes));
            }
            match serde_json::from_slice::<Value>(&bytes)? {
                Value::Array(page) => items.extend(page),
                other => bail!("{}: not an array: {other}", shape.name),
            }
            if continuation.is_none() {
                break;
            }
        }
        Ok((elapsed, items.len(), summarize(&items, shape.aggregate)))
    }
}

async fn postgres_run(
    client: &tokio_postgres::Client,
    statement: &tokio_postgres::Statement,
    shape: &Shape,
) -> anyhow::Result<(Duration, usize, String)> {
    let started = Instant::now();
    let rows = client.query(statement, &[]).await?;
    let elapsed = started.elapsed();
    let summary = if shape.aggregate {
        let values: Vec<Value> = rows
            .iter()
            .map(|row| {
                if row.len() == 2 {
                    let t: Option<String> = row.get(0);
                    let n: String = row.get(1);
                    json!({"t": t, "n": n.parse::<u64>().unwrap_or_default()})
                } else {
                    let n: String = row.get(0);
                    json!({"n": n.parse::<u64>().unwrap_or_default()})
                }
            })
            .collect();
        summarize(&values, true)
    } else {
        // Make sure the documents arrived whole, as a client would use them.
        let bytes: usize = rows.iter().map(|row| row.get::<_, &str>(0).len()).sum();
        std::hint::black_box(bytes);
        String::new()
    };
    Ok((elapsed, rows.len(), summary))
}

// ---------------------------------------------------------------------------------------------------
// One registry size.

struct Row {
    shape: &'static str,
    query: String,
    sql: String,
    results: usize,
    summary: String,
    engine: Latency,
    rest: Option<Latency>,
    postgres: Option<(Latency, usize, String)>,
}

struct SizeReport {
    twins: usize,
    section_bytes: usize,
    twin_json_bytes: usize,
    /// Microseconds to render one twin as JSON text (twin_json + to_string).
    render_us: f64,
    generate: Duration,
    hub_start: Duration,
    postgres_load: Option<PostgresLoad>,
    rows: Vec<Row>,
}

struct PostgresLoad {
    copy: Duration,
    index: Duration,
    analyze: Duration,
    table_bytes: i64,
    index_bytes: i64,
}

async fn start_hub(records: Vec<DeviceRecord>, data_dir: &std::path::Path) -> anyhow::Result<(RunningHub, Duration)> {
    let store = Arc::new(MemoryStore {
        records: Mutex::new(Some(records)),
        loaded_at: Mutex::new(None),
    });
    let address = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 77));
    let mut config = ServeConfig::new(data_dir.to_owned(), address.to_string(), address);
    config.store = Some(store.clone());
    let running = match twinhub_server::serve(config.clone()).await {
        Ok(running) => running,
        Err(error) => {
            // Port 443 taken or not allowed: any free port on the same address.
            eprintln!("  cannot serve on {address}:443 ({error}); using a free port");
            store.records.lock().unwrap().get_or_insert_with(Vec::new);
            config.https_port = 0;
            twinhub_server::serve(config).await?
        }
    };
    let loaded_at = store
        .loaded_at
        .lock()
        .unwrap()
        .context("the hub never loaded the store")?;
    Ok((running, loaded_at.elapsed()))
}

async fn postgres_load(client: &tokio_postgres::Client, hub: &Hub) -> anyhow::Result<PostgresLoad> {
    client
        .batch_execute(
            "DROP TABLE IF EXISTS bench_twins; \
             CREATE TABLE bench_twins (id text PRIMARY KEY, doc jsonb NOT NULL)",
        )
        .await?;
    let started = Instant::now();
    let sink = client
        .copy_in::<_, bytes::Bytes>("COPY bench_twins (id, doc) FROM STDIN")
        .await?;
    let mut sink = Box::pin(sink);
    let snapshot = hub.snapshot();
    let mut buffer = Vec::with_capacity(4 << 20);
    for (id, record) in snapshot.devices.iter() {
        let doc = twinhub_core::json::twin_json(record).to_string();
        buffer.extend_from_slice(id.as_str().as_bytes());
        buffer.push(b'\t');
        // COPY text format: backslash is the escape character; JSON has no raw tabs or newlines.
        for byte in doc.bytes() {
            if byte == b'\\' {
                buffer.push(b'\\');
            }
            buffer.push(byte);
        }
        buffer.push(b'\n');
        if buffer.len() >= 4 << 20 {
            sink.send(bytes::Bytes::from(std::mem::take(&mut buffer))).await?;
            buffer.reserve(4 << 20);
        }
    }
    if !buffer.is_empty() {
        sink.send(bytes::Bytes::from(buffer)).await?;
    }
    let copied = sink.as_mut().finish().await?;
    let copy = started.elapsed();
    if copied as usize != snapshot.devices.len() {
        bail!("COPY loaded {copied} rows of {}", snapshot.devices.len());
    }
    let started = Instant::now();
    client
        .batch_execute("CREATE INDEX bench_twins_doc ON bench_twins USING gin (doc jsonb_path_ops)")
        .await?;
    let index = started.elapsed();
    let started = Instant::now();
    client.batch_execute("ANALYZE bench_twins").await?;
    let analyze = started.elapsed();
    let sizes = client
        .query_one(
            "SELECT pg_table_size('bench_twins'), pg_relation_size('bench_twins_doc')",
            &[],
        )
        .await?;
    Ok(PostgresLoad {
        copy,
        index,
        analyze,
        table_bytes: sizes.get(0),
        index_bytes: sizes.get(1),
    })
}

async fn run_size(args: &Args, n: usize) -> anyhow::Result<SizeReport> {
    eprintln!("== {n} twins");
    let started = Instant::now();
    let (records, section_bytes) = build_records(n)?;
    let generate = started.elapsed();
    // What rendering one full twin (twin_json, as `SELECT *` returns it) costs, over the first 1000.
    let sample = records.len().clamp(1, 1000);
    let render_started = Instant::now();
    let twin_json_bytes = records
        .iter()
        .take(sample)
        .map(|r| twinhub_core::json::twin_json(r).to_string().len())
        .sum::<usize>()
        / sample;
    let render_us = render_started.elapsed().as_secs_f64() * 1e6 / sample as f64;
    eprintln!(
        "  generated in {generate:.1?}: {section_bytes} B of tags+desired+reported per twin, {twin_json_bytes} B as twin JSON"
    );

    let data_dir = tempfile::tempdir()?;
    let (running, hub_start) = start_hub(records, data_dir.path()).await?;
    let hub = Arc::clone(&running.hub);
    eprintln!(
        "  hub started over {} twins in {:.1?}, serving on https://{}",
        hub.statistics().total,
        hub_start,
        running.https_address
    );

    let rest = if args.skip_rest {
        None
    } else {
        let owner = twinhub_server::HubMaterial::policy(&running.material.policies, "iothubowner")?;
        let pem = std::fs::read(&running.material.ca_cert_path)?;
        let http = reqwest::Client::builder()
            .use_rustls_tls()
            .add_root_certificate(reqwest::Certificate::from_pem(&pem)?)
            .build()?;
        let host_name = running.https_address.ip().to_string();
        let url = if running.https_address.port() == 443 {
            format!("https://{host_name}/devices/query?api-version=2021-04-12")
        } else {
            format!("https://{}/devices/query?api-version=2021-04-12", running.https_address)
        };
        Some(RestClient {
            http,
            url,
            host_name,
            key_name: owner.name.clone(),
            key: owner.primary_key.clone(),
        })
    };

    let postgres = if args.skip_postgres {
        None
    } else {
        let (client, connection) = tokio_postgres::connect(&args.postgres, tokio_postgres::NoTls)
            .await
            .with_context(|| format!("connecting to PostgreSQL ({})", args.postgres))?;
        tokio::spawn(async move {
            if let Err(error) = connection.await {
                eprintln!("PostgreSQL connection: {error}");
            }
        });
        eprintln!("  loading PostgreSQL ...");
        let load = postgres_load(&client, &hub).await?;
        eprintln!(
            "  PostgreSQL: COPY {:.1?}, GIN index {:.1?}, ANALYZE {:.1?}; table {} MB, index {} MB",
            load.copy,
            load.index,
            load.analyze,
            load.table_bytes >> 20,
            load.index_bytes >> 20
        );
        Some((client, load))
    };

    let mut rows = Vec::new();
    for shape in shapes() {
        eprintln!("  {} ...", shape.name);
        let (engine, results, summary) = measure(args.runs, || engine_run(&hub, &shape)).await?;
        let rest_latency = match &rest {
            None => None,
            Some(client) => {
                let (latency, rest_results, rest_summary) = measure(args.runs, || client.run(&shape)).await?;
                if rest_results != results || rest_summary != summary {
                    bail!(
                        "{}: REST returned {rest_results} ({rest_summary}), the engine {results} ({summary})",
                        shape.name
                    );
                }
                Some(latency)
            }
        };
        let postgres_latency = match &postgres {
            None => None,
            Some((client, _)) => {
                let statement = client.prepare(&shape.sql).await?;
                let measured = measure(args.runs, || postgres_run(client, &statement, &shape)).await?;
                if measured.1 != results || measured.2 != summary {
                    eprintln!(
                        "  WARNING {}: PostgreSQL returned {} ({}), the engine {results} ({summary})",
                        shape.name, measured.1, measured.2
                    );
                }
                Some(measured)
            }
        };
        rows.push(Row {
            shape: shape.name,
            query: shape.query.clone(),
            sql: shape.sql.clone(),
            results,
            summary,
            engine,
            rest: rest_latency,
            postgres: postgres_latency,
        });
    }
    running.shutdown();
    Ok(SizeReport {
        twins: n,
        section_bytes,
        twin_json_bytes,
        render_us,
        generate,
        hub_start,
        postgres_load: postgres.map(|(_, load)| load),
        rows,
    })
}

// ---------------------------------------------------------------------------------------------------
// Output.

fn pair(latency: Option<Latency>) -> String {
    match latency {
        Some(l) => format!("{:.2} / {:.2}", ms(l.p50), ms(l.p99)),
        None => "-".into(),
    }
}

fn print_report(report: &SizeReport, runs: usize) {
    println!();
    println!(
        "### {} twins ({} B tags+desired+reported, {} B twin JSON with $metadata; {runs} runs after 1 warm-up)",
        report.twins, report.section_bytes, report.twin_json_bytes
    );
    println!();
    println!(
        "rendering one twin as JSON text (twin_json + to_string): {:.1} µs",
        report.render_us
    );
    println!(
        "generate: {:.2} s; hub start (Hub::start over the records, from load_all to serving): {:.2} s",
        report.generate.as_secs_f64(),
        report.hub_start.as_secs_f64()
    );
    if let Some(load) = &report.postgres_load {
        println!(
            "PostgreSQL load: {:.2} s (COPY {:.2} s + GIN index {:.2} s + ANALYZE {:.2} s); table {} MB, GIN index {} MB",
            (load.copy + load.index + load.analyze).as_secs_f64(),
            load.copy.as_secs_f64(),
            load.index.as_secs_f64(),
            load.analyze.as_secs_f64(),
            load.table_bytes >> 20,
            load.index_bytes >> 20
        );
    }
    println!();
    println!(
        "| shape | results | engine p50 / p99 ms | REST p50 / p99 ms | PostgreSQL p50 / p99 ms | PG p50 / engine p50 |"
    );
    println!("|---|---|---|---|---|---|");
    for row in &report.rows {
        let results = if row.summary.is_empty() {
            row.results.to_string()
        } else {
            format!("{} ({})", row.results, row.summary)
        };
        let (postgres, ratio) = match &row.postgres {
            Some((latency, _, _)) => (
                pair(Some(*latency)),
                format!("{:.2}", ms(latency.p50) / ms(row.engine.p50).max(1e-6)),
            ),
            None => ("-".into(), "-".into()),
        };
        println!(
            "| {} | {results} | {} | {} | {postgres} | {ratio} |",
            row.shape,
            pair(Some(row.engine)),
            pair(row.rest)
        );
    }
}

fn latency_json(latency: Option<Latency>) -> Value {
    match latency {
        Some(l) => json!({"p50_ms": ms(l.p50), "p99_ms": ms(l.p99)}),
        None => Value::Null,
    }
}

fn report_json(reports: &[SizeReport], runs: usize) -> Value {
    json!({
        "runs": runs,
        "page_size": PAGE_SIZE,
        "sizes": reports.iter().map(|r| json!({
            "twins": r.twins,
            "section_bytes": r.section_bytes,
            "twin_json_bytes": r.twin_json_bytes,
            "render_us": r.render_us,
            "generate_s": r.generate.as_secs_f64(),
            "hub_start_s": r.hub_start.as_secs_f64(),
            "postgres_load": r.postgres_load.as_ref().map(|l| json!({
                "copy_s": l.copy.as_secs_f64(),
                "index_s": l.index.as_secs_f64(),
                "analyze_s": l.analyze.as_secs_f64(),
                "table_bytes": l.table_bytes,
                "index_bytes": l.index_bytes,
            })),
            "shapes": r.rows.iter().map(|row| json!({
                "shape": row.shape,
                "query": row.query,
                "sql": row.sql,
                "results": row.results,
                "summary": row.summary,
                "engine": latency_json(Some(row.engine)),
                "rest": latency_json(row.rest),
                "postgres": latency_json(row.postgres.as_ref().map(|p| p.0)),
                "postgres_results": row.postgres.as_ref().map(|p| p.1),
            })).collect::<Vec<_>>(),
        })).collect::<Vec<_>>(),
    })
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if args.runs == 0 {
        bail!("--runs must be at least 1");
    }
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    runtime.block_on(async {
        let mut reports = Vec::new();
        for &n in &args.twins {
            let report = run_size(&args, n).await?;
            print_report(&report, args.runs);
            reports.push(report);
            if let Some(path) = &args.json {
                std::fs::write(path, serde_json::to_string_pretty(&report_json(&reports, args.runs))?)?;
            }
        }
        Ok(())
    })
}
