//! The embedded store: fjall (an LSM tree with a write-ahead journal) in `<data-dir>/store`.
//!
//! One keyspace, `devices`: key = the device id's UTF-8 bytes, value = [`FORMAT_V1`] followed by the
//! record in postcard. The leading byte lets a later format be read next to this one without a migration.
//!
//! Durability: a commit is one fjall write batch (atomic in the journal) followed by an `fsync` of the
//! journal (`PersistMode::SyncAll`) before `commit` returns, so the hub acknowledges nothing that a kill
//! or a power cut could take back. The hub's writer groups concurrent writes into one batch, so the cost
//! of the fsync is shared by every write in it.

use crate::{Store, StoreError, StoreWrite};
use fjall::{Database, Keyspace, KeyspaceCreateOptions, PersistMode, Slice};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use twinhub_core::DeviceRecord;

/// The first byte of every stored value.
const FORMAT_V1: u8 = 1;

/// Below this many records, decoding at start runs on one thread: spawning costs more than it saves.
const PARALLEL_DECODE_MIN: usize = 4096;

pub struct EmbeddedStore {
    inner: Arc<Inner>,
}

struct Inner {
    db: Database,
    devices: Keyspace,
    path: PathBuf,
}

impl EmbeddedStore {
    /// Opens the store in `dir`, creating it when missing. Fails when another process holds it.
    pub fn open(dir: &Path) -> Result<Self, StoreError> {
        let open_error = |source: Box<dyn std::error::Error + Send + Sync>| StoreError::Open {
            path: dir.display().to_string(),
            source,
        };
        std::fs::create_dir_all(dir).map_err(|e| open_error(Box::new(e)))?;
        let db = Database::builder(dir)
            // We fsync on every commit ourselves; fjall's own periodic persist would add nothing.
            .manual_journal_persist(true)
            .open()
            .map_err(|e| open_error(Box::new(e)))?;
        let devices = db
            .keyspace("devices", KeyspaceCreateOptions::default)
            .map_err(|e| open_error(Box::new(e)))?;
        Ok(EmbeddedStore {
            inner: Arc::new(Inner {
                db,
                devices,
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
            }
        }
        writes.commit().map_err(|e| StoreError::Write(Box::new(e)))
    }
}

fn encode(record: &DeviceRecord) -> Result<Vec<u8>, StoreError> {
    let mut bytes = vec![FORMAT_V1];
    let body = postcard::to_stdvec(record).map_err(|e| StoreError::Write(Box::new(e)))?;
    bytes.extend_from_slice(&body);
    Ok(bytes)
}

fn decode(key: &[u8], value: &[u8]) -> Result<DeviceRecord, StoreError> {
    let corrupt = |reason: String| StoreError::Corrupt {
        key: String::from_utf8_lossy(key).into_owned(),
        reason,
    };
    let (format, body) = value
        .split_first()
        .ok_or_else(|| corrupt("the value is empty".to_owned()))?;
    if *format != FORMAT_V1 {
        return Err(corrupt(format!("unknown format {format}")));
    }
    let record: DeviceRecord = postcard::from_bytes(body).map_err(|e| corrupt(e.to_string()))?;
    if record.identity.device_id.as_str().as_bytes() != key {
        return Err(corrupt(format!(
            "the record holds device '{}'",
            record.identity.device_id.as_str()
        )));
    }
    Ok(record)
}

/// Decodes on every core: at a million twins decoding, not reading, is what start time is made of.
fn decode_all(raw: &[(Slice, Slice)]) -> Result<Vec<DeviceRecord>, StoreError> {
    let decode_chunk = |chunk: &[(Slice, Slice)]| -> Result<Vec<DeviceRecord>, StoreError> {
        chunk.iter().map(|(key, value)| decode(key, value)).collect()
    };
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    if raw.len() < PARALLEL_DECODE_MIN || threads == 1 {
        return decode_chunk(raw);
    }
    let chunk_len = raw.len().div_ceil(threads);
    let parts: Vec<Result<Vec<DeviceRecord>, StoreError>> = std::thread::scope(|scope| {
        let handles: Vec<_> = raw
            .chunks(chunk_len)
            .map(|chunk| scope.spawn(move || decode_chunk(chunk)))
            .collect();
        handles
            .into_iter()
            .map(|handle| {
                handle
                    .join()
                    .unwrap_or_else(|_| Err(StoreError::Read("a decoding thread panicked".into())))
            })
            .collect()
    });
    let mut records = Vec::with_capacity(raw.len());
    for part in parts {
        records.extend(part?);
    }
    Ok(records)
}

#[async_trait::async_trait]
impl Store for EmbeddedStore {
    async fn load_all(&self) -> Result<Vec<DeviceRecord>, StoreError> {
        let inner = Arc::clone(&self.inner);
        tokio::task::spawn_blocking(move || inner.load_all())
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
