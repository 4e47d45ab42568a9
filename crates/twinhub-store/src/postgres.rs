//! The PostgreSQL store: the hub's state in a database several nodes can share (the cluster's source of
//! truth; see the scale-out design). This first slice is the [`Store`] contract alone: a node loads
//! everything at start and commits its writer's batches; nothing tails the change feed yet.
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
//! One connection, behind an async mutex: the hub commits from one writer task, one batch at a time, so
//! a pool would buy nothing. A connection that ended (PostgreSQL restarted, the network cut it) is opened
//! again by the next call; the call that found it broken fails. No TLS yet (`NoTls`): use a local or
//! otherwise trusted network.

use crate::codec::{cloud_to_device_key, decode_all, decode_cloud_to_device, decode_feedback, decode_session};
use crate::{Store, StoreError, StoreWrite};
use batch::Grouped;
use connection::Connection;
pub use connection::PostgresError;
use futures_util::{pin_mut, TryStreamExt};
use tokio::sync::{MappedMutexGuard, Mutex, MutexGuard};
use tokio_postgres::{Config, Row};
use twinhub_core::c2d::{FeedbackRecord, QueuedMessage};
use twinhub_core::session::SessionRecord;
use twinhub_core::{DeviceId, DeviceRecord};

mod batch;
mod commit;
mod connection;
mod schema;

pub struct PostgresStore {
    config: Config,
    /// The schema the tables live in (`search_path`), when one was asked for.
    schema: Option<String>,
    /// Where, for errors: never the password.
    described: String,
    /// `None` once a connection broke and before the next call opens another.
    connection: Mutex<Option<Connection>>,
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
        Ok(PostgresStore {
            config,
            schema: schema.map(str::to_owned),
            described,
            connection: Mutex::new(Some(connection)),
        })
    }

    /// Where this store is: hosts, ports, user, database, schema (no password).
    pub fn describe(&self) -> &str {
        &self.described
    }

    /// The connection, opened again first when the last one ended.
    async fn connection(&self) -> Result<MappedMutexGuard<'_, Connection>, PostgresError> {
        let mut slot = self.connection.lock().await;
        if slot.as_ref().is_none_or(|connection| connection.client.is_closed()) {
            *slot = None;
            tracing::info!(store = %self.described, "opening a new PostgreSQL connection");
            *slot = Some(Connection::open(&self.config, self.schema.as_deref()).await?);
        }
        MutexGuard::try_map(slot, Option::as_mut)
            .map_err(|_| PostgresError::Unusable("no PostgreSQL connection".into()))
    }

    /// Every row `sql` selects, each turned into a value by `row` as it arrives.
    async fn load<T>(&self, sql: &str, row: impl Fn(&Row) -> Result<T, StoreError>) -> Result<Vec<T>, StoreError> {
        let connection = self.connection().await.map_err(|e| StoreError::Read(Box::new(e)))?;
        let rows = connection
            .client
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
}

fn read_error(error: tokio_postgres::Error) -> StoreError {
    StoreError::Read(Box::new(PostgresError::from(error)))
}

/// A sequence number read back: the store writes none below 0.
fn from_bigint(value: i64, what: impl FnOnce() -> String) -> Result<u64, StoreError> {
    u64::try_from(value).map_err(|_| StoreError::Corrupt {
        key: what(),
        reason: format!("a negative sequence number, {value}"),
    })
}

#[async_trait::async_trait]
impl Store for PostgresStore {
    async fn load_all(&self) -> Result<Vec<DeviceRecord>, StoreError> {
        let raw: Vec<(String, Vec<u8>)> = self
            .load(schema::LOAD_DEVICES, |row| {
                Ok((row.try_get(0).map_err(read_error)?, row.try_get(1).map_err(read_error)?))
            })
            .await?;
        // Decoding is the CPU-heavy part of a start (decode_all spreads it over every core): off the
        // async threads, as the embedded store does.
        tokio::task::spawn_blocking(move || decode_all(&raw))
            .await
            .map_err(|e| StoreError::Read(Box::new(e)))?
    }

    async fn load_sessions(&self) -> Result<Vec<SessionRecord>, StoreError> {
        self.load(schema::LOAD_SESSIONS, |row| {
            let client_id: &str = row.try_get(0).map_err(read_error)?;
            let record: &[u8] = row.try_get(1).map_err(read_error)?;
            decode_session(client_id.as_bytes(), record)
        })
        .await
    }

    async fn load_consumer_groups(&self) -> Result<Vec<String>, StoreError> {
        self.load(schema::LOAD_CONSUMER_GROUPS, |row| {
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

    async fn load_cloud_to_device(&self) -> Result<Vec<(DeviceId, QueuedMessage)>, StoreError> {
        self.load(schema::LOAD_C2D, |row| {
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

    async fn load_feedback(&self) -> Result<Vec<(u64, FeedbackRecord)>, StoreError> {
        self.load(schema::LOAD_FEEDBACK, |row| {
            let sequence_number: i64 = row.try_get(0).map_err(read_error)?;
            let record: &[u8] = row.try_get(1).map_err(read_error)?;
            let sequence_number = from_bigint(sequence_number, || format!("feedback {sequence_number}"))?;
            decode_feedback(&sequence_number.to_be_bytes(), record)
        })
        .await
    }

    async fn commit(&self, batch: Vec<StoreWrite>) -> Result<(), StoreError> {
        if batch.is_empty() {
            return Ok(());
        }
        // Encoded and reduced to the last write per key before the transaction starts (batch.rs).
        let grouped = Grouped::from_batch(batch)?;
        let mut connection = self.connection().await.map_err(|e| StoreError::Write(Box::new(e)))?;
        commit::commit(&mut connection, grouped).await
    }
}
