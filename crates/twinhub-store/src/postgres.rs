//! The PostgreSQL store: the hub's state in a database several nodes share (the cluster's source of
//! truth; see docs/cluster.md). It keeps the [`Store`] contract and is a [`ClusterStore`]: each commit
//! is taken in turn across nodes on top of what the others committed, and kept in the commit log
//! (`commits`) that every node follows.
//!
//! Tables (created when missing, in one transaction, by every [`PostgresStore::connect`]; see
//! `postgres/schema.rs`): `schema_version`; `hub_seq`, the one global commit sequence; `devices`
//! (`device_id`, `seq`, `record`: the bytes of [`crate::codec::encode`], NULL for a deleted device's
//! tombstone); `sessions`, `consumer_groups`, `c2d_messages` and `c2d_feedback`, holding what the
//! embedded store's keyspaces of the same names hold, in the same encodings.
//!
//! A commit is one transaction: it first takes the next `hub_seq` (which serialises committers, so
//! commits become visible in `seq` order), writes every device row with that `seq`, and is durable when
//! COMMIT returns (`synchronous_commit` on, PostgreSQL's default; the store turns it on for its
//! connection when the server has it off).
//!
//! Three connections: one for commits (the hub commits from one writer task, one batch at a time, so a
//! pool would buy nothing), one for reads (loads, the log outside a turn, the last commit number: these
//! must not wait behind a commit that waits for the turn), and one that LISTENs for other nodes' commits
//! (`postgres/listen.rs`). A connection that ended (PostgreSQL restarted, the network cut it) is opened
//! again by the next call; the call that found it broken fails. No TLS yet (`NoTls`): use a local or
//! otherwise trusted network.

use crate::cluster::{BuildCommit, ClusterStore, Commit, HoldChange, LapsedNode, Loaded};
use crate::codec::{cloud_to_device_key, decode_all, decode_cloud_to_device, decode_feedback, decode_session};
use crate::{Store, StoreError, StoreWrite};
use connection::Connection;
pub use connection::PostgresError;
use futures_util::{pin_mut, TryStreamExt};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use tokio::sync::watch;
use tokio::sync::{MappedMutexGuard, Mutex, MutexGuard};
use tokio_postgres::GenericClient;
use tokio_postgres::{Config, Row};
use twinhub_core::c2d::{FeedbackRecord, QueuedMessage};
use twinhub_core::session::SessionRecord;
use twinhub_core::{DeviceId, DeviceRecord};

mod batch;
mod commit;
mod connection;
mod listen;
mod presence;
mod schema;

pub struct PostgresStore {
    config: Config,
    /// The schema the tables live in (`search_path`), when one was asked for.
    schema: Option<String>,
    /// Where, for errors: never the password.
    described: String,
    /// For commits. `None` once a connection broke and before the next call opens another.
    connection: Mutex<Option<Connection>>,
    /// For reads, likewise.
    reader: Mutex<Option<Connection>>,
    /// This node's name in the commit log.
    node: String,
    /// This process among the presence leases: the node's name and a random part, so that two processes
    /// under one name (or a node restarted) never share a lease.
    lease: String,
    /// Where commits are announced (NOTIFY): one channel per schema, so hubs sharing a database do not
    /// wake each other.
    channel: String,
    /// Commits made through this store, for trimming the log now and then.
    commits: AtomicU64,
    /// The listener's latest news, once someone asked for it.
    notifications: OnceLock<watch::Receiver<u64>>,
}

impl PostgresStore {
    /// Connects to the database `url` names and makes its tables ready (created when missing) in the
    /// default `search_path` (usually `public`). `url` is either form tokio-postgres accepts:
    /// `postgresql://user@host:5432/db` or `host=127.0.0.1 user=postgres dbname=twinhub`; without a
    /// `connect_timeout` a connection attempt gives up after 10 s. Must be called inside a Tokio runtime
    /// (the connection runs as a task).
    pub async fn connect(url: &str) -> Result<PostgresStore, StoreError> {
        Self::open(url, None).await
    }

    /// As [`Self::connect`], with every table in the schema `schema` (created when missing), which the
    /// store's connection puts first in its `search_path`. Any text is a valid name (it is quoted as an
    /// identifier). Tests use a schema each, so they run side by side on one database and can drop what
    /// they made; several hubs can share a database this way too.
    pub async fn connect_in_schema(url: &str, schema: &str) -> Result<PostgresStore, StoreError> {
        Self::open(url, Some(schema)).await
    }

    async fn open(url: &str, schema: Option<&str>) -> Result<PostgresStore, StoreError> {
        let config = connection::config(url).map_err(|source| StoreError::Open {
            path: "postgresql (the connection URL does not parse)".to_owned(),
            source: Box::new(source),
        })?;
        let described = connection::describe(&config, schema);
        let connection = Connection::open(&config, schema)
            .await
            .map_err(|source| StoreError::Open {
                path: described.clone(),
                source: Box::new(source),
            })?;
        let channel = match schema {
            Some(schema) => format!("twinhub_commits:{schema}"),
            None => "twinhub_commits".to_owned(),
        };
        Ok(PostgresStore {
            config,
            schema: schema.map(str::to_owned),
            described,
            connection: Mutex::new(Some(connection)),
            reader: Mutex::new(None),
            node: format!("node-{}", std::process::id()),
            lease: lease_name(&format!("node-{}", std::process::id())),
            channel,
            commits: AtomicU64::new(0),
            notifications: OnceLock::new(),
        })
    }

    /// Names this node in the commit log (by default `node-<process id>`).
    pub fn with_node_name(mut self, node: &str) -> PostgresStore {
        self.node = node.to_owned();
        self.lease = lease_name(node);
        self
    }

    /// The cluster's identity: a random id made with its tables, the same for every node of it and
    /// different for every database (so a cluster's streams elsewhere are its own).
    pub async fn cluster_identity(&self) -> Result<String, StoreError> {
        let connection = self.reader().await.map_err(connection::read_failure)?;
        let row = connection
            .client
            .query_one(schema::SELECT_CLUSTER_IDENTITY, &[])
            .await
            .map_err(connection::read_failure)?;
        row.try_get(0).map_err(read_error)
    }

    /// The files every node of the cluster shares (policies, CA), by name; none before the first node
    /// or `twinhub cluster init` offered them.
    pub async fn cluster_files(&self) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        let connection = self.reader().await.map_err(connection::read_failure)?;
        load_rows(&connection.client, schema::SELECT_CLUSTER_FILES, |row| {
            Ok((row.try_get(0).map_err(read_error)?, row.try_get(1).map_err(read_error)?))
        })
        .await
    }

    /// Offers this node's files as the cluster's; the files of the first offer stay (a file already
    /// there is kept). Read them back with [`Self::cluster_files`].
    pub async fn offer_cluster_files(&self, files: &[(String, Vec<u8>)]) -> Result<(), StoreError> {
        let connection = self.reader().await.map_err(connection::write_failure)?;
        let (names, contents): (Vec<&str>, Vec<&[u8]>) = files
            .iter()
            .map(|(name, content)| (name.as_str(), content.as_slice()))
            .unzip();
        connection
            .client
            .execute(schema::OFFER_CLUSTER_FILES, &[&names, &contents])
            .await
            .map_err(connection::write_failure)?;
        Ok(())
    }

    /// Where this store is: hosts, ports, user, database, schema (no password).
    pub fn describe(&self) -> &str {
        &self.described
    }

    /// The commit connection, opened again first when the last one ended.
    async fn connection(&self) -> Result<MappedMutexGuard<'_, Connection>, PostgresError> {
        self.open_slot(&self.connection).await
    }

    /// The read connection, opened first when there is none.
    async fn reader(&self) -> Result<MappedMutexGuard<'_, Connection>, PostgresError> {
        self.open_slot(&self.reader).await
    }

    async fn open_slot<'a>(
        &self,
        slot: &'a Mutex<Option<Connection>>,
    ) -> Result<MappedMutexGuard<'a, Connection>, PostgresError> {
        let mut slot = slot.lock().await;
        if slot.as_ref().is_none_or(|connection| connection.client.is_closed()) {
            *slot = None;
            tracing::info!(store = %self.described, "opening a new PostgreSQL connection");
            *slot = Some(Connection::open(&self.config, self.schema.as_deref()).await?);
        }
        MutexGuard::try_map(slot, Option::as_mut)
            .map_err(|_| PostgresError::Unusable("no PostgreSQL connection".into()))
    }

    async fn commit_with(&self, applied: Option<u64>, build: BuildCommit<'_>) -> Result<u64, StoreError> {
        let commit = async {
            let mut connection = self.connection().await.map_err(connection::write_failure)?;
            let committer = commit::Committer {
                node: &self.node,
                channel: &self.channel,
                count: self.commits.fetch_add(1, Ordering::Relaxed),
            };
            commit::commit_in_turn(&mut connection, committer, applied, build).await
        };
        // Bound first: the timed-out future (and the connection's lock it holds) must be dropped
        // before the lock is taken again below.
        let committed = tokio::time::timeout(COMMIT_TIMEOUT, commit).await;
        match committed {
            Ok(committed) => committed,
            Err(_) => {
                // The transaction's fate is unknown to this connection: the next commit opens another.
                // (Had it committed, the commit comes back to this node through the log.)
                *self.connection.lock().await = None;
                Err(StoreError::Unavailable(Box::new(PostgresError::TimedOut("a commit"))))
            }
        }
    }

    /// A read on the read connection, given [`READ_TIMEOUT`].
    async fn read_within<T>(
        &self,
        what: &'static str,
        read: impl std::future::Future<Output = Result<T, StoreError>>,
    ) -> Result<T, StoreError> {
        let result = tokio::time::timeout(READ_TIMEOUT, read).await;
        match result {
            Ok(result) => result,
            Err(_) => {
                *self.reader.lock().await = None;
                Err(StoreError::Unavailable(Box::new(PostgresError::TimedOut(what))))
            }
        }
    }
}

fn lease_name(node: &str) -> String {
    format!("{node}/{:016x}", rand::random::<u64>())
}

/// How long a commit may take before it is refused as "store unavailable": a PostgreSQL that stopped
/// answering (a cut network) would otherwise hold every write of the node.
const COMMIT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// How long the reads a node makes while serving (the log, the last commit number) may take.
const READ_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(2);

/// Every row `sql` selects through `client`, each turned into a value by `row` as it arrives.
async fn load_rows<T>(
    client: &impl GenericClient,
    sql: &str,
    row: impl Fn(&Row) -> Result<T, StoreError>,
) -> Result<Vec<T>, StoreError> {
    let rows = client
        .query_raw(sql, std::iter::empty::<i64>())
        .await
        .map_err(read_error)?;
    pin_mut!(rows);
    let mut values = Vec::new();
    while let Some(next) = rows.try_next().await.map_err(read_error)? {
        values.push(row(&next)?);
    }
    Ok(values)
}

fn read_error(error: tokio_postgres::Error) -> StoreError {
    connection::read_failure(error)
}

/// A sequence number read back: the store writes none below 0.
fn from_bigint(value: i64, what: impl FnOnce() -> String) -> Result<u64, StoreError> {
    u64::try_from(value).map_err(|_| StoreError::Corrupt {
        key: what(),
        reason: format!("a negative sequence number, {value}"),
    })
}

// Each table's load, through any client: the reader connection, or the one transaction of a
// consistent load.

async fn load_devices(client: &impl GenericClient) -> Result<Vec<DeviceRecord>, StoreError> {
    let raw: Vec<(String, Vec<u8>)> = load_rows(client, schema::LOAD_DEVICES, |row| {
        Ok((row.try_get(0).map_err(read_error)?, row.try_get(1).map_err(read_error)?))
    })
    .await?;
    // Decoding is the CPU-heavy part of a start (decode_all spreads it over every core): off the
    // async threads, as the embedded store does.
    tokio::task::spawn_blocking(move || decode_all(&raw))
        .await
        .map_err(|e| StoreError::Read(Box::new(e)))?
}

async fn load_sessions(client: &impl GenericClient) -> Result<Vec<SessionRecord>, StoreError> {
    load_rows(client, schema::LOAD_SESSIONS, |row| {
        let client_id: &str = row.try_get(0).map_err(read_error)?;
        let record: &[u8] = row.try_get(1).map_err(read_error)?;
        decode_session(client_id.as_bytes(), record)
    })
    .await
}

async fn load_consumer_groups(client: &impl GenericClient) -> Result<Vec<String>, StoreError> {
    load_rows(client, schema::LOAD_CONSUMER_GROUPS, |row| {
        let key: &str = row.try_get(0).map_err(read_error)?;
        let name: String = row.try_get(1).map_err(read_error)?;
        if twinhub_core::consumer_group::key(&name) != key {
            return Err(StoreError::Corrupt {
                key: format!("consumer group {key}"),
                reason: format!("the row holds consumer group '{name}'"),
            });
        }
        Ok(name)
    })
    .await
}

async fn load_cloud_to_device(client: &impl GenericClient) -> Result<Vec<(DeviceId, QueuedMessage)>, StoreError> {
    load_rows(client, schema::LOAD_C2D, |row| {
        let device_id: &str = row.try_get(0).map_err(read_error)?;
        let sequence_number: i64 = row.try_get(1).map_err(read_error)?;
        let message: &[u8] = row.try_get(2).map_err(read_error)?;
        let what = || format!("cloud-to-device message {device_id} {sequence_number}");
        let sequence_number = from_bigint(sequence_number, what)?;
        let device_id = DeviceId::new(device_id).map_err(|e| StoreError::Corrupt {
            key: what(),
            reason: format!("not a device id: {e:?}"),
        })?;
        // The embedded store's key, so that one function checks both stores' rows.
        decode_cloud_to_device(&cloud_to_device_key(&device_id, sequence_number), message)
    })
    .await
}

async fn load_modules(client: &impl GenericClient) -> Result<Vec<twinhub_core::module::ModuleRecord>, StoreError> {
    load_rows(client, schema::LOAD_MODULES, |row| {
        let key: &str = row.try_get(0).map_err(read_error)?;
        let record: &[u8] = row.try_get(1).map_err(read_error)?;
        crate::codec::decode_module(key.as_bytes(), record)
    })
    .await
}

async fn load_jobs(client: &impl GenericClient) -> Result<Vec<crate::codec::JobEntry>, StoreError> {
    load_rows(client, schema::LOAD_JOBS, |row| {
        let key: &str = row.try_get(0).map_err(read_error)?;
        let record: &[u8] = row.try_get(1).map_err(read_error)?;
        crate::codec::decode_job_entry(key.as_bytes(), record)
    })
    .await
}

async fn load_settings(client: &impl GenericClient) -> Result<Vec<(String, String)>, StoreError> {
    load_rows(client, schema::LOAD_SETTINGS, |row| {
        Ok((row.try_get(0).map_err(read_error)?, row.try_get(1).map_err(read_error)?))
    })
    .await
}

async fn load_feedback(client: &impl GenericClient) -> Result<Vec<(u64, FeedbackRecord)>, StoreError> {
    load_rows(client, schema::LOAD_FEEDBACK, |row| {
        let sequence_number: i64 = row.try_get(0).map_err(read_error)?;
        let record: &[u8] = row.try_get(1).map_err(read_error)?;
        let sequence_number = from_bigint(sequence_number, || format!("feedback {sequence_number}"))?;
        decode_feedback(&sequence_number.to_be_bytes(), record)
    })
    .await
}

#[async_trait::async_trait]
impl Store for PostgresStore {
    async fn load_all(&self) -> Result<Vec<DeviceRecord>, StoreError> {
        load_devices(&self.reader().await.map_err(connection::read_failure)?.client).await
    }

    async fn load_sessions(&self) -> Result<Vec<SessionRecord>, StoreError> {
        load_sessions(&self.reader().await.map_err(connection::read_failure)?.client).await
    }

    async fn load_consumer_groups(&self) -> Result<Vec<String>, StoreError> {
        load_consumer_groups(&self.reader().await.map_err(connection::read_failure)?.client).await
    }

    async fn load_cloud_to_device(&self) -> Result<Vec<(DeviceId, QueuedMessage)>, StoreError> {
        load_cloud_to_device(&self.reader().await.map_err(connection::read_failure)?.client).await
    }

    async fn load_feedback(&self) -> Result<Vec<(u64, FeedbackRecord)>, StoreError> {
        load_feedback(&self.reader().await.map_err(connection::read_failure)?.client).await
    }

    async fn load_settings(&self) -> Result<Vec<(String, String)>, StoreError> {
        load_settings(&self.reader().await.map_err(connection::read_failure)?.client).await
    }

    async fn load_modules(&self) -> Result<Vec<twinhub_core::module::ModuleRecord>, StoreError> {
        load_modules(&self.reader().await.map_err(connection::read_failure)?.client).await
    }

    async fn load_jobs(&self) -> Result<Vec<crate::codec::JobEntry>, StoreError> {
        load_jobs(&self.reader().await.map_err(connection::read_failure)?.client).await
    }

    /// One snapshot for every table and the sequence number: the state is exactly as of `seq`, and the
    /// log is followed from there.
    async fn load(&self) -> Result<Loaded, StoreError> {
        let mut connection = self.reader().await.map_err(connection::read_failure)?;
        let Connection { client, statements } = &mut *connection;
        // One snapshot for every table and the sequence number: the state is exactly as of `seq`.
        let transaction = client
            .build_transaction()
            .isolation_level(tokio_postgres::IsolationLevel::RepeatableRead)
            .read_only(true)
            .start()
            .await
            .map_err(read_error)?;
        let seq = commit::committed_seq(&transaction, &statements.select_seq).await?;
        let loaded = Loaded {
            records: load_devices(&transaction).await?,
            sessions: load_sessions(&transaction).await?,
            consumer_groups: load_consumer_groups(&transaction).await?,
            cloud_to_device: load_cloud_to_device(&transaction).await?,
            feedback: load_feedback(&transaction).await?,
            settings: load_settings(&transaction).await?,
            modules: load_modules(&transaction).await?,
            jobs: load_jobs(&transaction).await?,
            seq,
        };
        transaction.commit().await.map_err(read_error)?;
        Ok(loaded)
    }

    /// A commit on its own: the turn is taken (other nodes' commits wait), the log is not read.
    async fn commit(&self, batch: Vec<StoreWrite>) -> Result<(), StoreError> {
        if batch.is_empty() {
            return Ok(());
        }
        self.commit_with(None, Box::new(move |_| (batch, Vec::new())))
            .await
            .map(|_| ())
    }

    fn cluster(&self) -> Option<&dyn ClusterStore> {
        Some(self)
    }
}

#[async_trait::async_trait]
impl ClusterStore for PostgresStore {
    async fn commit_in_turn(&self, applied: u64, build: BuildCommit<'_>) -> Result<u64, StoreError> {
        self.commit_with(Some(applied), build).await
    }

    async fn commits_after(&self, applied: u64) -> Result<Vec<Commit>, StoreError> {
        self.read_within("a read of the commit log", async {
            let connection = self.reader().await.map_err(connection::read_failure)?;
            commit::commits_after(&connection, applied).await
        })
        .await
    }

    async fn committed_seq(&self) -> Result<u64, StoreError> {
        self.read_within("a read of the last commit", async {
            let connection = self.reader().await.map_err(connection::read_failure)?;
            commit::committed_seq(&connection.client, &connection.statements.select_seq).await
        })
        .await
    }

    async fn load_session(&self, client_id: &str) -> Result<Option<SessionRecord>, StoreError> {
        self.read_within("a read of a session", async {
            let connection = self.reader().await.map_err(connection::read_failure)?;
            let row = connection
                .client
                .query_opt(schema::LOAD_SESSION, &[&client_id])
                .await
                .map_err(connection::read_failure)?;
            row.map(|row| {
                let record: &[u8] = row.try_get(0).map_err(read_error)?;
                decode_session(client_id.as_bytes(), record)
            })
            .transpose()
        })
        .await
    }

    fn lease_name(&self) -> &str {
        &self.lease
    }

    async fn renew_lease(&self) -> Result<bool, StoreError> {
        self.read_within("a renewal of the node's lease", async {
            let connection = self.reader().await.map_err(connection::write_failure)?;
            presence::renew_lease(&connection.client, &self.lease).await
        })
        .await
    }

    async fn record_holds(&self, changes: &[HoldChange]) -> Result<(), StoreError> {
        self.read_within("a record of the devices the node holds", async {
            let connection = self.reader().await.map_err(connection::write_failure)?;
            presence::record_holds(&connection.client, &self.lease, changes).await
        })
        .await
    }

    async fn lapsed_nodes(&self) -> Result<Vec<LapsedNode>, StoreError> {
        self.read_within("a look for lapsed leases", async {
            let connection = self.reader().await.map_err(connection::read_failure)?;
            presence::lapsed_nodes(&connection.client, &self.lease).await
        })
        .await
    }

    async fn forget_node(&self, node: &str) -> Result<(), StoreError> {
        self.read_within("forgetting a lapsed node", async {
            let connection = self.reader().await.map_err(connection::write_failure)?;
            presence::forget_node(&connection.client, node).await
        })
        .await
    }

    fn commit_notifications(&self) -> watch::Receiver<u64> {
        self.notifications
            .get_or_init(|| {
                let (seen, receiver) = watch::channel(0);
                tokio::spawn(listen::follow(
                    self.config.clone(),
                    self.schema.clone(),
                    self.channel.clone(),
                    seen,
                ));
                receiver
            })
            .clone()
    }
}
