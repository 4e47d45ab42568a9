//! The embedded store: fjall (an LSM tree with a write-ahead journal) in `<data-dir>/store`.
//!
//! Two keyspaces: `devices` (key = the device id's UTF-8 bytes, value = the record as [`crate::codec`]
//! encodes it), `sessions` (key = the MQTT client id, value = the session's subscriptions) and
//! `consumer_groups` (the Event Hubs-compatible endpoint's, created by back ends), `c2d` (cloud-to-device
//! messages: key = device id, NUL, sequence number big-endian; value = the queued message) and
//! `c2d_feedback` (feedback records not yet received: key = their number big-endian). The
//! telemetry event log lives in the same database, in keyspaces of its own (`event_log`).
//!
//! Durability: a commit is one fjall write batch (atomic in the journal) followed by an `fsync` of the
//! journal (`PersistMode::SyncAll`) before `commit` returns, so the hub acknowledges nothing that a kill
//! or a power cut could take back. The hub's writer groups concurrent writes into one batch, so the cost
//! of the fsync is shared by every write in it.

use crate::codec::{
    cloud_to_device_key, decode_all, decode_cloud_to_device, decode_feedback, decode_session, encode,
    encode_cloud_to_device, encode_feedback, encode_session,
};
use crate::events::EVENT_PARTITIONS_DEFAULT;
use crate::{Store, StoreError, StoreWrite};
use event_log::EventLog;
use fjall::{Database, Keyspace, KeyspaceCreateOptions, PersistMode, Slice};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use twinhub_core::c2d::{FeedbackRecord, QueuedMessage};
use twinhub_core::session::SessionRecord;
use twinhub_core::{DeviceId, DeviceRecord};

/// The most journal kept before memtables are flushed to tables.
const JOURNAL_BYTES_MAX: u64 = 64 * 1024 * 1024;

mod event_log;

/// What a store is created with. Only a new store takes them: an existing one keeps what it was created
/// with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StoreOptions {
    /// Partitions of the telemetry event log, `EVENT_PARTITIONS_MIN..=EVENT_PARTITIONS_MAX`.
    pub event_partitions: u16,
}

impl Default for StoreOptions {
    fn default() -> Self {
        StoreOptions {
            event_partitions: EVENT_PARTITIONS_DEFAULT,
        }
    }
}

pub struct EmbeddedStore {
    inner: Arc<Inner>,
    events: Arc<EventLog>,
}

struct Inner {
    db: Database,
    devices: Keyspace,
    sessions: Keyspace,
    /// Key: the consumer group's name in lower case; value: the name as created.
    consumer_groups: Keyspace,
    settings: Keyspace,
    modules: Keyspace,
    /// Jobs under `<job>`, their devices' steps under `<job>/<device>`.
    jobs: Keyspace,
    cloud_to_device: Keyspace,
    feedback: Keyspace,
    path: PathBuf,
}

impl EmbeddedStore {
    /// Opens the store in `dir`, creating it when missing (with the default options). Fails when another
    /// process holds it.
    pub fn open(dir: &Path) -> Result<Self, StoreError> {
        Self::open_with(dir, StoreOptions::default())
    }

    /// Opens the store in `dir`, creating it with `options` when missing. An existing store keeps the
    /// options it was created with (a different event partition count is logged as a warning).
    pub fn open_with(dir: &Path, options: StoreOptions) -> Result<Self, StoreError> {
        let open_error = |source: Box<dyn std::error::Error + Send + Sync>| StoreError::Open {
            path: dir.display().to_string(),
            source,
        };
        std::fs::create_dir_all(dir).map_err(|e| open_error(Box::new(e)))?;
        let db = Database::builder(dir)
            // We fsync on every commit ourselves; fjall's own periodic persist would add nothing.
            .manual_journal_persist(true)
            // Everything in the journal is replayed at start: a smaller bound (fjall's default is 512 MiB,
            // some 400k twins) keeps a start after a crash close to a clean start. See docs/storage.md.
            .max_journaling_size(JOURNAL_BYTES_MAX)
            .open()
            .map_err(|e| open_error(Box::new(e)))?;
        let devices = db
            .keyspace("devices", KeyspaceCreateOptions::default)
            .map_err(|e| open_error(Box::new(e)))?;
        let sessions = db
            .keyspace("sessions", KeyspaceCreateOptions::default)
            .map_err(|e| open_error(Box::new(e)))?;
        let consumer_groups = db
            .keyspace("consumer_groups", KeyspaceCreateOptions::default)
            .map_err(|e| open_error(Box::new(e)))?;
        let settings = db
            .keyspace("settings", KeyspaceCreateOptions::default)
            .map_err(|e| open_error(Box::new(e)))?;
        let modules = db
            .keyspace("modules", KeyspaceCreateOptions::default)
            .map_err(|e| open_error(Box::new(e)))?;
        let jobs = db
            .keyspace("jobs", KeyspaceCreateOptions::default)
            .map_err(|e| open_error(Box::new(e)))?;
        let cloud_to_device = db
            .keyspace("c2d", KeyspaceCreateOptions::default)
            .map_err(|e| open_error(Box::new(e)))?;
        let feedback = db
            .keyspace("c2d_feedback", KeyspaceCreateOptions::default)
            .map_err(|e| open_error(Box::new(e)))?;
        let events = EventLog::open(&db, dir, options.event_partitions)?;
        Ok(EmbeddedStore {
            events: Arc::new(events),
            inner: Arc::new(Inner {
                db,
                devices,
                sessions,
                consumer_groups,
                settings,
                modules,
                jobs,
                cloud_to_device,
                feedback,
                path: dir.to_path_buf(),
            }),
        })
    }

    pub fn path(&self) -> &Path {
        &self.inner.path
    }
}

impl Inner {
    fn load_all(&self) -> Result<Vec<DeviceRecord>, StoreError> {
        let mut raw: Vec<(Slice, Slice)> = Vec::with_capacity(self.devices.approximate_len());
        for guard in self.devices.iter() {
            let pair = guard.into_inner().map_err(|e| StoreError::Read(Box::new(e)))?;
            raw.push(pair);
        }
        decode_all(&raw)
    }

    fn load_sessions(&self) -> Result<Vec<SessionRecord>, StoreError> {
        let mut sessions = Vec::new();
        for guard in self.sessions.iter() {
            let (key, value) = guard.into_inner().map_err(|e| StoreError::Read(Box::new(e)))?;
            sessions.push(decode_session(&key, &value)?);
        }
        Ok(sessions)
    }

    fn load_consumer_groups(&self) -> Result<Vec<String>, StoreError> {
        let mut names = Vec::new();
        for guard in self.consumer_groups.iter() {
            let (key, value) = guard.into_inner().map_err(|e| StoreError::Read(Box::new(e)))?;
            let name = String::from_utf8(value.to_vec()).map_err(|_| StoreError::Corrupt {
                key: String::from_utf8_lossy(&key).into_owned(),
                reason: "a consumer group name that is not UTF-8".into(),
            })?;
            names.push(name);
        }
        Ok(names)
    }

    fn load_settings(&self) -> Result<Vec<(String, String)>, StoreError> {
        let mut settings = Vec::new();
        for guard in self.settings.iter() {
            let (key, value) = guard.into_inner().map_err(|e| StoreError::Read(Box::new(e)))?;
            let text = |bytes: &[u8]| {
                String::from_utf8(bytes.to_vec()).map_err(|_| StoreError::Corrupt {
                    key: String::from_utf8_lossy(&key).into_owned(),
                    reason: "a setting that is not UTF-8".into(),
                })
            };
            settings.push((text(&key)?, text(&value)?));
        }
        Ok(settings)
    }

    fn load_modules(&self) -> Result<Vec<twinhub_core::module::ModuleRecord>, StoreError> {
        let mut modules = Vec::new();
        for guard in self.modules.iter() {
            let (key, value) = guard.into_inner().map_err(|e| StoreError::Read(Box::new(e)))?;
            modules.push(crate::codec::decode_module(&key, &value)?);
        }
        Ok(modules)
    }

    fn load_jobs(&self) -> Result<Vec<crate::codec::JobEntry>, StoreError> {
        let mut entries = Vec::new();
        for guard in self.jobs.iter() {
            let (key, value) = guard.into_inner().map_err(|e| StoreError::Read(Box::new(e)))?;
            entries.push(crate::codec::decode_job_entry(&key, &value)?);
        }
        Ok(entries)
    }

    fn load_cloud_to_device(&self) -> Result<Vec<(DeviceId, QueuedMessage)>, StoreError> {
        let mut messages = Vec::new();
        for guard in self.cloud_to_device.iter() {
            let (key, value) = guard.into_inner().map_err(|e| StoreError::Read(Box::new(e)))?;
            messages.push(decode_cloud_to_device(&key, &value)?);
        }
        Ok(messages)
    }

    fn load_feedback(&self) -> Result<Vec<(u64, FeedbackRecord)>, StoreError> {
        let mut records = Vec::new();
        for guard in self.feedback.iter() {
            let (key, value) = guard.into_inner().map_err(|e| StoreError::Read(Box::new(e)))?;
            records.push(decode_feedback(&key, &value)?);
        }
        Ok(records)
    }

    fn commit(&self, batch: Vec<StoreWrite>) -> Result<(), StoreError> {
        if batch.is_empty() {
            return Ok(());
        }
        let mut writes = self.db.batch().durability(Some(PersistMode::SyncAll));
        for write in batch {
            match write {
                StoreWrite::Upsert(record) => {
                    let key = record.identity.device_id.as_str().as_bytes().to_vec();
                    writes.insert(&self.devices, key, encode(&record)?);
                }
                StoreWrite::Delete(id) => writes.remove(&self.devices, id.as_str().as_bytes().to_vec()),
                StoreWrite::UpsertSession(session) => {
                    let key = session.client_id.as_bytes().to_vec();
                    writes.insert(&self.sessions, key, encode_session(&session)?);
                }
                StoreWrite::DeleteSession(client_id) => writes.remove(&self.sessions, client_id.into_bytes()),
                StoreWrite::UpsertConsumerGroup(name) => {
                    let key = twinhub_core::consumer_group::key(&name).into_bytes();
                    writes.insert(&self.consumer_groups, key, name.into_bytes());
                }
                StoreWrite::DeleteConsumerGroup(name) => writes.remove(
                    &self.consumer_groups,
                    twinhub_core::consumer_group::key(&name).into_bytes(),
                ),
                StoreWrite::UpsertCloudToDevice { device_id, message } => writes.insert(
                    &self.cloud_to_device,
                    cloud_to_device_key(&device_id, message.sequence_number),
                    encode_cloud_to_device(&message)?,
                ),
                StoreWrite::DeleteCloudToDevice {
                    device_id,
                    sequence_number,
                } => writes.remove(&self.cloud_to_device, cloud_to_device_key(&device_id, sequence_number)),
                StoreWrite::UpsertFeedback {
                    sequence_number,
                    record,
                } => writes.insert(
                    &self.feedback,
                    sequence_number.to_be_bytes().to_vec(),
                    encode_feedback(&record)?,
                ),
                StoreWrite::DeleteFeedback(sequence_number) => {
                    writes.remove(&self.feedback, sequence_number.to_be_bytes().to_vec())
                }
                StoreWrite::PutSetting { name, value } => {
                    writes.insert(&self.settings, name.into_bytes(), value.into_bytes())
                }
                StoreWrite::UpsertModule(module) => writes.insert(
                    &self.modules,
                    crate::codec::module_key(module.device_id(), &module.module_id).into_bytes(),
                    crate::codec::encode_module(&module)?,
                ),
                StoreWrite::DeleteModule { device_id, module_id } => writes.remove(
                    &self.modules,
                    crate::codec::module_key(&device_id, &module_id).into_bytes(),
                ),
                StoreWrite::UpsertJob(job) => writes.insert(
                    &self.jobs,
                    crate::codec::job_key(&job.job_id).into_bytes(),
                    crate::codec::encode_job(&job)?,
                ),
                StoreWrite::UpsertDeviceJob(step) => writes.insert(
                    &self.jobs,
                    crate::codec::device_job_key(&step.job_id, &step.device_id).into_bytes(),
                    crate::codec::encode_device_job(&step)?,
                ),
            }
        }
        writes.commit().map_err(|e| StoreError::Write(Box::new(e)))
    }
}

#[async_trait::async_trait]
impl Store for EmbeddedStore {
    async fn load_all(&self) -> Result<Vec<DeviceRecord>, StoreError> {
        let inner = Arc::clone(&self.inner);
        tokio::task::spawn_blocking(move || inner.load_all())
            .await
            .map_err(|e| StoreError::Read(Box::new(e)))?
    }

    async fn load_sessions(&self) -> Result<Vec<SessionRecord>, StoreError> {
        let inner = Arc::clone(&self.inner);
        tokio::task::spawn_blocking(move || inner.load_sessions())
            .await
            .map_err(|e| StoreError::Read(Box::new(e)))?
    }

    async fn load_consumer_groups(&self) -> Result<Vec<String>, StoreError> {
        let inner = Arc::clone(&self.inner);
        tokio::task::spawn_blocking(move || inner.load_consumer_groups())
            .await
            .map_err(|e| StoreError::Read(Box::new(e)))?
    }

    async fn load_settings(&self) -> Result<Vec<(String, String)>, StoreError> {
        let inner = Arc::clone(&self.inner);
        tokio::task::spawn_blocking(move || inner.load_settings())
            .await
            .map_err(|e| StoreError::Read(Box::new(e)))?
    }

    async fn load_modules(&self) -> Result<Vec<twinhub_core::module::ModuleRecord>, StoreError> {
        let inner = Arc::clone(&self.inner);
        tokio::task::spawn_blocking(move || inner.load_modules())
            .await
            .map_err(|e| StoreError::Read(Box::new(e)))?
    }

    async fn load_jobs(&self) -> Result<Vec<crate::codec::JobEntry>, StoreError> {
        let inner = Arc::clone(&self.inner);
        tokio::task::spawn_blocking(move || inner.load_jobs())
            .await
            .map_err(|e| StoreError::Read(Box::new(e)))?
    }

    async fn load_cloud_to_device(&self) -> Result<Vec<(DeviceId, QueuedMessage)>, StoreError> {
        let inner = Arc::clone(&self.inner);
        tokio::task::spawn_blocking(move || inner.load_cloud_to_device())
            .await
            .map_err(|e| StoreError::Read(Box::new(e)))?
    }

    async fn load_feedback(&self) -> Result<Vec<(u64, FeedbackRecord)>, StoreError> {
        let inner = Arc::clone(&self.inner);
        tokio::task::spawn_blocking(move || inner.load_feedback())
            .await
            .map_err(|e| StoreError::Read(Box::new(e)))?
    }

    async fn commit(&self, batch: Vec<StoreWrite>) -> Result<(), StoreError> {
        let inner = Arc::clone(&self.inner);
        tokio::task::spawn_blocking(move || inner.commit(batch))
            .await
            .map_err(|e| StoreError::Write(Box::new(e)))?
    }
}

#[cfg(test)]
mod tests;
