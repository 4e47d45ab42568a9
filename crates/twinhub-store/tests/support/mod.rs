//! What the store tests share: a harness per store (where a store lives, and a fresh instance over it)
//! and records to write.
//!
//! PostgreSQL: the server `TWINHUB_TEST_POSTGRES_URL` names (default: `host=127.0.0.1 user=postgres
//! dbname=test`); each harness makes a schema of its own with a random name and drops it when dropped.
//! When the server is unreachable the PostgreSQL tests are skipped with a note on stderr, unless
//! `TWINHUB_REQUIRE_POSTGRES=1` (CI sets it): then they fail.

#![allow(dead_code)] // each test binary uses its own part

use std::io::Write;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Arc;
use twinhub_core::json::DeviceDraft;
use twinhub_core::record::Presence;
use twinhub_core::session::{SessionRecord, StoredSubscription};
use twinhub_core::{DeviceId, DeviceRecord, Timestamp, Twin, TwinPatch, TwinRules};
use twinhub_store::{EmbeddedStore, PostgresStore, Store, StoreWrite};

pub const POSTGRES_URL_DEFAULT: &str = "host=127.0.0.1 user=postgres dbname=test";

/// Where a store lives, for the length of one test. Run the tests on the multi-threaded runtime: a
/// harness cleans up when dropped, blocking its thread, while connection tasks still have to run.
pub trait Harness: Sized {
    /// `None` when the store cannot be had here and may be skipped (the reason is printed).
    async fn start() -> Option<Self>;
    /// A new instance of the store over the same place: what a restarted hub opens. The embedded store
    /// allows one instance at a time, so drop the last one first.
    async fn open(&self) -> Box<dyn Store>;
}

pub struct EmbeddedHarness {
    dir: tempfile::TempDir,
}

impl Harness for EmbeddedHarness {
    async fn start() -> Option<Self> {
        Some(EmbeddedHarness {
            dir: tempfile::tempdir().expect("a temporary directory"),
        })
    }

    async fn open(&self) -> Box<dyn Store> {
        Box::new(EmbeddedStore::open(self.dir.path()).expect("the embedded store opens"))
    }
}

pub struct PostgresHarness {
    pub url: String,
    pub schema: String,
}

/// The skip note is printed once per test binary.
static SKIP_NOTED: AtomicBool = AtomicBool::new(false);
static SCHEMAS: AtomicU32 = AtomicU32::new(0);

impl PostgresHarness {
    /// A raw connection in the harness's schema, to look at the tables as they are.
    pub async fn client(&self) -> tokio_postgres::Client {
        let (client, connection) = tokio_postgres::connect(&self.url, tokio_postgres::NoTls)
            .await
            .expect("PostgreSQL answered a moment ago");
        tokio::spawn(connection);
        client
            .batch_execute(&format!("SET search_path TO \"{}\"", self.schema))
            .await
            .expect("set search_path");
        client
    }
}

impl Harness for PostgresHarness {
    async fn start() -> Option<Self> {
        let url = std::env::var("TWINHUB_TEST_POSTGRES_URL").unwrap_or_else(|_| POSTGRES_URL_DEFAULT.to_owned());
        let required = std::env::var("TWINHUB_REQUIRE_POSTGRES").is_ok_and(|value| value == "1");
        let probe = async {
            let (client, connection) = tokio_postgres::connect(&url, tokio_postgres::NoTls).await?;
            tokio::spawn(connection);
            client.simple_query("SELECT 1").await.map(|_| ())
        };
        if let Err(error) = probe.await {
            let error = twinhub_store::postgres::PostgresError::from(error);
            assert!(
                !required,
                "TWINHUB_REQUIRE_POSTGRES=1 but PostgreSQL at '{url}' is unreachable: {error}"
            );
            if !SKIP_NOTED.swap(true, Ordering::Relaxed) {
                // Straight to stderr, past the test harness's capture, so the skip is seen.
                let _ = writeln!(
                    std::io::stderr(),
                    "skipping the PostgreSQL store tests: PostgreSQL at '{url}' is unreachable ({error}); \
                     set TWINHUB_TEST_POSTGRES_URL, or TWINHUB_REQUIRE_POSTGRES=1 to fail instead"
                );
            }
            return None;
        }
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |elapsed| elapsed.subsec_nanos());
        let schema = format!(
            "twinhub_test_{}_{nanos}_{}",
            std::process::id(),
            SCHEMAS.fetch_add(1, Ordering::Relaxed)
        );
        Some(PostgresHarness { url, schema })
    }

    async fn open(&self) -> Box<dyn Store> {
        Box::new(
            PostgresStore::connect_in_schema(&self.url, &self.schema)
                .await
                .expect("the PostgreSQL store connects"),
        )
    }
}

impl Drop for PostgresHarness {
    /// Drops the schema, on a thread of its own: a test's runtime cannot be blocked on from inside.
    fn drop(&mut self) {
        let (url, schema) = (self.url.clone(), self.schema.clone());
        let dropped = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
            runtime.block_on(async {
                let (client, connection) = tokio_postgres::connect(&url, tokio_postgres::NoTls).await?;
                tokio::spawn(connection);
                // A lock held by a connection the test left behind makes this fail rather than hang.
                client
                    .batch_execute(&format!(
                        "SET lock_timeout = '10s'; DROP SCHEMA IF EXISTS \"{schema}\" CASCADE"
                    ))
                    .await?;
                Ok::<_, Box<dyn std::error::Error + Send + Sync>>(())
            })
        })
        .join();
        if !matches!(dropped, Ok(Ok(()))) {
            let _ = writeln!(
                std::io::stderr(),
                "the test schema {} could not be dropped",
                self.schema
            );
        }
    }
}

/// A device with tags and desired properties that differ with `tag`.
pub fn record(id: &str, tag: i64) -> DeviceRecord {
    let now = Timestamp(1_700_000_000_000 + tag);
    let rules = TwinRules::default();
    let draft = DeviceDraft::from_json(&serde_json::json!({ "deviceId": id }), "deviceId").expect("valid device");
    let patch = TwinPatch::from_json(
        &serde_json::json!({"tags": {"n": tag, "site": {"name": format!("site-{tag}")}},
                             "properties": {"desired": {"interval": tag}}}),
        &rules,
    )
    .expect("valid patch");
    let twin = Twin::new(now).patched(&patch, now, &rules).expect("within the rules").0;
    DeviceRecord::new(
        draft.into_identity(None, now, |_| None).expect("no edge scopes"),
        twin,
        Presence::default(),
    )
}

pub fn upsert(record: &DeviceRecord) -> StoreWrite {
    StoreWrite::Upsert(Arc::new(record.clone()))
}

pub fn id(text: &str) -> DeviceId {
    DeviceId::new(text).expect("valid id")
}

pub fn session(client_id: &str, filters: &[&str]) -> SessionRecord {
    SessionRecord {
        client_id: client_id.to_owned(),
        subscriptions: filters
            .iter()
            .map(|filter| StoredSubscription {
                filter: (*filter).to_owned(),
                qos: 1,
            })
            .collect(),
    }
}

/// Every record, in device id order.
pub async fn load_sorted(store: &dyn Store) -> Vec<DeviceRecord> {
    let mut records = store.load_all().await.expect("load_all");
    records.sort_by(|a, b| a.identity.device_id.cmp(&b.identity.device_id));
    records
}
