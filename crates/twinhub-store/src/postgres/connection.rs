//! One connection to PostgreSQL: opened, its schema made ready, its statements prepared.

use super::schema::{self, quote_identifier};
use std::time::Duration;
use tokio_postgres::config::Host;
use tokio_postgres::{Client, Config, NoTls, Statement};

/// What went wrong talking to PostgreSQL, with its causes in the text: a tokio-postgres error alone
/// reads "db error" or "error connecting to server", and what PostgreSQL answered is in its source.
#[derive(Debug)]
pub enum PostgresError {
    Postgres(tokio_postgres::Error),
    /// The database is not one this store can use.
    Unusable(String),
    /// PostgreSQL did not answer within the time the store gives it.
    TimedOut(&'static str),
}

impl PostgresError {
    /// Whether PostgreSQL was out of reach (down, restarting, cut off, too slow, out of connections)
    /// rather than refusing what was asked: the request may succeed later.
    pub fn is_unavailable(&self) -> bool {
        match self {
            PostgresError::Postgres(error) => match error.as_db_error() {
                // No answer from the server at all: the connection failed or closed.
                None => true,
                Some(db) => {
                    let code = db.code().code();
                    // 08: connection exceptions; 53: insufficient resources; 57: operator
                    // intervention (shutdown, cannot connect now, statement timeout).
                    code.starts_with("08") || code.starts_with("53") || code.starts_with("57")
                }
            },
            PostgresError::TimedOut(_) => true,
            PostgresError::Unusable(_) => false,
        }
    }
}

/// A failed read as the store reports it: `Unavailable` when PostgreSQL was out of reach.
pub(super) fn read_failure(error: impl Into<PostgresError>) -> crate::StoreError {
    let error = error.into();
    if error.is_unavailable() {
        crate::StoreError::Unavailable(Box::new(error))
    } else {
        crate::StoreError::Read(Box::new(error))
    }
}

/// A failed write as the store reports it: `Unavailable` when PostgreSQL was out of reach.
pub(super) fn write_failure(error: impl Into<PostgresError>) -> crate::StoreError {
    let error = error.into();
    if error.is_unavailable() {
        crate::StoreError::Unavailable(Box::new(error))
    } else {
        crate::StoreError::Write(Box::new(error))
    }
}

impl From<tokio_postgres::Error> for PostgresError {
    fn from(error: tokio_postgres::Error) -> Self {
        PostgresError::Postgres(error)
    }
}

impl std::fmt::Display for PostgresError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PostgresError::Postgres(error) => {
                write!(f, "{error}")?;
                let mut cause = std::error::Error::source(error);
                while let Some(error) = cause {
                    write!(f, ": {error}")?;
                    cause = error.source();
                }
                Ok(())
            }
            PostgresError::Unusable(text) => f.write_str(text),
            PostgresError::TimedOut(what) => write!(f, "PostgreSQL did not answer {what} in time"),
        }
    }
}

/// No `source`: the text already holds every cause, and reports that walk the chain would repeat them.
impl std::error::Error for PostgresError {}

/// How long a connection attempt may take when the URL does not say (`connect_timeout`).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

pub(super) struct Connection {
    pub client: Client,
    pub statements: Statements,
}

/// Prepared once per connection.
pub(super) struct Statements {
    pub lock_seq: Statement,
    pub set_seq: Statement,
    pub select_seq: Statement,
    pub commits_after: Statement,
    pub commits_after_limited: Statement,
    pub insert_commit: Statement,
    pub notify_commit: Statement,
    pub trim_commits: Statement,
    pub upsert_devices: Statement,
    pub upsert_sessions: Statement,
    pub delete_sessions: Statement,
    pub upsert_consumer_groups: Statement,
    pub delete_consumer_groups: Statement,
    pub upsert_settings: Statement,
    pub upsert_modules: Statement,
    pub delete_modules: Statement,
    pub upsert_jobs: Statement,
    pub upsert_c2d: Statement,
    pub delete_c2d: Statement,
    pub upsert_feedback: Statement,
    pub delete_feedback: Statement,
}

/// The connection settings, with the connection timeout set when the URL left it open.
pub(super) fn config(url: &str) -> Result<Config, PostgresError> {
    let mut config: Config = url.parse()?;
    if config.get_connect_timeout().is_none() {
        config.connect_timeout(CONNECT_TIMEOUT);
    }
    Ok(config)
}

/// Where a store is, for errors and logs: hosts, ports, user, database and schema, never the password.
pub(super) fn describe(config: &Config, schema: Option<&str>) -> String {
    let hosts: Vec<String> = config
        .get_hosts()
        .iter()
        .map(|host| match host {
            Host::Tcp(name) => name.clone(),
            #[cfg(unix)]
            Host::Unix(path) => path.display().to_string(),
        })
        .collect();
    let ports: Vec<String> = config.get_ports().iter().map(u16::to_string).collect();
    let mut text = format!("postgresql host={}", hosts.join(","));
    if !ports.is_empty() {
        text.push_str(&format!(" port={}", ports.join(",")));
    }
    if let Some(user) = config.get_user() {
        text.push_str(&format!(" user={user}"));
    }
    if let Some(dbname) = config.get_dbname() {
        text.push_str(&format!(" dbname={dbname}"));
    }
    if let Some(schema) = schema {
        text.push_str(&format!(" schema={schema}"));
    }
    text
}

impl Connection {
    /// Connects, creates the tables when missing (in `schema`, created too, when given), checks the
    /// schema version and prepares the statements.
    pub async fn open(config: &Config, schema: Option<&str>) -> Result<Connection, PostgresError> {
        let (mut client, connection) = config.connect(NoTls).await?;
        tokio::spawn(async move {
            if let Err(error) = connection.await {
                tracing::warn!(%error, "the PostgreSQL store's connection ended");
            }
        });

        let setup = client.transaction().await?;
        setup
            .execute("SELECT pg_advisory_xact_lock($1)", &[&schema::SCHEMA_LOCK])
            .await?;
        if let Some(schema) = schema {
            let schema = quote_identifier(schema);
            // A session-wide SET: it outlasts this transaction once it commits.
            setup
                .batch_execute(&format!(
                    "CREATE SCHEMA IF NOT EXISTS {schema}; SET search_path TO {schema}"
                ))
                .await?;
        }
        setup.batch_execute(schema::CREATE_TABLES).await?;
        setup
            .execute(schema::INSERT_VERSION, &[&schema::SCHEMA_VERSION])
            .await?;
        setup
            .execute(schema::UPGRADE_VERSION, &[&schema::SCHEMA_VERSION])
            .await?;
        let version: i32 = setup.query_one(schema::SELECT_VERSION, &[]).await?.try_get(0)?;
        if version > schema::SCHEMA_VERSION {
            setup.rollback().await?;
            return Err(PostgresError::Unusable(format!(
                "the database has schema version {version}, newer than this twinhub's {}",
                schema::SCHEMA_VERSION
            )));
        }
        setup.commit().await?;

        // `commit` promises durability when COMMIT returns: that takes synchronous_commit other than
        // off (on, the default, or local, remote_write, remote_apply, which are kept as they are).
        let synchronous_commit: String = client.query_one("SHOW synchronous_commit", &[]).await?.try_get(0)?;
        if synchronous_commit == "off" {
            tracing::warn!("PostgreSQL has synchronous_commit off; the store turns it on for its connection");
            client.batch_execute("SET synchronous_commit TO on").await?;
        }

        let statements = Statements {
            lock_seq: client.prepare(schema::LOCK_SEQ).await?,
            set_seq: client.prepare(schema::SET_SEQ).await?,
            select_seq: client.prepare(schema::SELECT_SEQ).await?,
            commits_after: client.prepare(schema::COMMITS_AFTER).await?,
            commits_after_limited: client.prepare(schema::COMMITS_AFTER_LIMITED).await?,
            insert_commit: client.prepare(schema::INSERT_COMMIT).await?,
            notify_commit: client.prepare(schema::NOTIFY_COMMIT).await?,
            trim_commits: client.prepare(schema::TRIM_COMMITS).await?,
            upsert_devices: client.prepare(schema::UPSERT_DEVICES).await?,
            upsert_sessions: client.prepare(schema::UPSERT_SESSIONS).await?,
            delete_sessions: client.prepare(schema::DELETE_SESSIONS).await?,
            upsert_consumer_groups: client.prepare(schema::UPSERT_CONSUMER_GROUPS).await?,
            delete_consumer_groups: client.prepare(schema::DELETE_CONSUMER_GROUPS).await?,
            upsert_settings: client.prepare(schema::UPSERT_SETTINGS).await?,
            upsert_modules: client.prepare(schema::UPSERT_MODULES).await?,
            delete_modules: client.prepare(schema::DELETE_MODULES).await?,
            upsert_jobs: client.prepare(schema::UPSERT_JOBS).await?,
            upsert_c2d: client.prepare(schema::UPSERT_C2D).await?,
            delete_c2d: client.prepare(schema::DELETE_C2D).await?,
            upsert_feedback: client.prepare(schema::UPSERT_FEEDBACK).await?,
            delete_feedback: client.prepare(schema::DELETE_FEEDBACK).await?,
        };
        Ok(Connection { client, statements })
    }
}
