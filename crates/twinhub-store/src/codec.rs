//! How a device record is stored as bytes: a format byte, then the record in postcard.
//!
//! postcard, not JSON: at start every record is decoded, and decoding a million ~1 KB twins from JSON
//! takes seconds where postcard takes a fraction of that. The leading format byte lets a later format be
//! read next to this one without a migration.

use crate::StoreError;
use twinhub_core::c2d::{FeedbackRecord, QueuedMessage};
use twinhub_core::job::{DeviceJobRecord, JobRecord};
use twinhub_core::module::ModuleRecord;
use twinhub_core::session::SessionRecord;
use twinhub_core::{DeviceId, DeviceRecord};

/// The first byte of every stored value.
pub const FORMAT_V1: u8 = 1;

/// Below this many records, decoding at start runs on one thread: spawning costs more than it saves.
pub const PARALLEL_DECODE_MIN: usize = 4096;

/// The stored form of `record`.
pub fn encode(record: &DeviceRecord) -> Result<Vec<u8>, StoreError> {
    postcard::to_extend(record, vec![FORMAT_V1]).map_err(|e| StoreError::Write(Box::new(e)))
}

/// The record stored under `key`; `Corrupt` (never a panic) when the bytes are not a record of that key.
pub fn decode(key: &[u8], value: &[u8]) -> Result<DeviceRecord, StoreError> {
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
pub fn decode_all<K, V>(raw: &[(K, V)]) -> Result<Vec<DeviceRecord>, StoreError>
where
    K: AsRef<[u8]> + Sync,
    V: AsRef<[u8]> + Sync,
{
    let decode_chunk = |chunk: &[(K, V)]| -> Result<Vec<DeviceRecord>, StoreError> {
        chunk
            .iter()
            .map(|(key, value)| decode(key.as_ref(), value.as_ref()))
            .collect()
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

/// The stored form of a session: the same format byte, then postcard.
pub fn encode_session(session: &SessionRecord) -> Result<Vec<u8>, StoreError> {
    postcard::to_extend(session, vec![FORMAT_V1]).map_err(|e| StoreError::Write(Box::new(e)))
}

/// The session stored under `key`; `Corrupt` when the bytes are not a session of that client id.
pub fn decode_session(key: &[u8], value: &[u8]) -> Result<SessionRecord, StoreError> {
    let corrupt = |reason: String| StoreError::Corrupt {
        key: format!("session {}", String::from_utf8_lossy(key)),
        reason,
    };
    match value.split_first() {
        Some((&FORMAT_V1, body)) => {
            let session: SessionRecord = postcard::from_bytes(body).map_err(|e| corrupt(e.to_string()))?;
            if session.client_id.as_bytes() != key {
                return Err(corrupt(format!("the session holds client '{}'", session.client_id)));
            }
            Ok(session)
        }
        Some((format, _)) => Err(corrupt(format!("unknown format {format}"))),
        None => Err(corrupt("the value is empty".to_owned())),
    }
}

/// The key a module is stored under: `<device id>/<module id>` (no id has a `/`), so a device's modules
/// are one key range.
pub fn module_key(device_id: &DeviceId, module_id: &twinhub_core::ModuleId) -> String {
    format!("{device_id}/{module_id}")
}

pub fn encode_module(module: &ModuleRecord) -> Result<Vec<u8>, StoreError> {
    postcard::to_extend(module, vec![FORMAT_V1]).map_err(|e| StoreError::Write(Box::new(e)))
}

/// The module stored under `key`; `Corrupt` when the bytes are not a module of that key.
pub fn decode_module(key: &[u8], value: &[u8]) -> Result<ModuleRecord, StoreError> {
    let corrupt = |reason: String| StoreError::Corrupt {
        key: format!("module {}", String::from_utf8_lossy(key)),
        reason,
    };
    match value.split_first() {
        Some((&FORMAT_V1, body)) => {
            let module: ModuleRecord = postcard::from_bytes(body).map_err(|e| corrupt(e.to_string()))?;
            if module_key(module.device_id(), &module.module_id).as_bytes() != key {
                return Err(corrupt("the value holds another module".to_owned()));
            }
            Ok(module)
        }
        Some((format, _)) => Err(corrupt(format!("unknown format {format}"))),
        None => Err(corrupt("the value is empty".to_owned())),
    }
}

/// The key a job is stored under: its id. Its devices' steps follow it under `<job id>/<device id>`
/// (no id has a `/`), so a job and its steps are one key range.
pub fn job_key(job_id: &twinhub_core::JobId) -> String {
    job_id.as_str().to_owned()
}

pub fn device_job_key(job_id: &twinhub_core::JobId, device_id: &DeviceId) -> String {
    format!("{job_id}/{device_id}")
}

pub fn encode_job(job: &JobRecord) -> Result<Vec<u8>, StoreError> {
    postcard::to_extend(job, vec![FORMAT_V1]).map_err(|e| StoreError::Write(Box::new(e)))
}

pub fn encode_device_job(step: &DeviceJobRecord) -> Result<Vec<u8>, StoreError> {
    postcard::to_extend(step, vec![FORMAT_V1]).map_err(|e| StoreError::Write(Box::new(e)))
}

/// What the jobs' key range holds under one key.
#[derive(Clone, Debug, PartialEq)]
pub enum JobEntry {
    Job(JobRecord),
    DeviceJob(DeviceJobRecord),
}

/// The job or device step stored under `key`; `Corrupt` when the bytes are not that of that key.
pub fn decode_job_entry(key: &[u8], value: &[u8]) -> Result<JobEntry, StoreError> {
    let corrupt = |reason: String| StoreError::Corrupt {
        key: format!("job {}", String::from_utf8_lossy(key)),
        reason,
    };
    let body = match value.split_first() {
        Some((&FORMAT_V1, body)) => body,
        Some((format, _)) => return Err(corrupt(format!("unknown format {format}"))),
        None => return Err(corrupt("the value is empty".to_owned())),
    };
    let entry = if key.contains(&b'/') {
        let step: DeviceJobRecord = postcard::from_bytes(body).map_err(|e| corrupt(e.to_string()))?;
        if device_job_key(&step.job_id, &step.device_id).as_bytes() != key {
            return Err(corrupt("the value holds another device's step".to_owned()));
        }
        JobEntry::DeviceJob(step)
    } else {
        let job: JobRecord = postcard::from_bytes(body).map_err(|e| corrupt(e.to_string()))?;
        if job_key(&job.job_id).as_bytes() != key {
            return Err(corrupt("the value holds another job".to_owned()));
        }
        JobEntry::Job(job)
    };
    Ok(entry)
}

/// The key of a cloud-to-device message: the device id's bytes, a NUL (no device id has one), then the
/// sequence number big-endian, so a device's messages are one key range in sequence order.
pub fn cloud_to_device_key(device_id: &DeviceId, sequence_number: u64) -> Vec<u8> {
    let mut key = Vec::with_capacity(device_id.as_str().len() + 9);
    key.extend_from_slice(device_id.as_str().as_bytes());
    key.push(0);
    key.extend_from_slice(&sequence_number.to_be_bytes());
    key
}

pub fn encode_cloud_to_device(message: &QueuedMessage) -> Result<Vec<u8>, StoreError> {
    postcard::to_extend(message, vec![FORMAT_V1]).map_err(|e| StoreError::Write(Box::new(e)))
}

/// The device and message stored under `key`; `Corrupt` (never a panic) when the bytes are not one.
pub fn decode_cloud_to_device(key: &[u8], value: &[u8]) -> Result<(DeviceId, QueuedMessage), StoreError> {
    let corrupt = |reason: String| StoreError::Corrupt {
        key: String::from_utf8_lossy(key).into_owned(),
        reason,
    };
    let split = key
        .len()
        .checked_sub(9)
        .filter(|&at| key[at] == 0)
        .ok_or_else(|| corrupt("a cloud-to-device key is a device id, a NUL and 8 bytes".into()))?;
    let device_id = std::str::from_utf8(&key[..split])
        .ok()
        .and_then(|id| DeviceId::new(id).ok())
        .ok_or_else(|| corrupt("the key holds no valid device id".into()))?;
    let message: QueuedMessage = match value.split_first() {
        Some((&FORMAT_V1, body)) => postcard::from_bytes(body).map_err(|e| corrupt(e.to_string()))?,
        Some((format, _)) => return Err(corrupt(format!("unknown format {format}"))),
        None => return Err(corrupt("the value is empty".into())),
    };
    let mut sequence = [0u8; 8];
    sequence.copy_from_slice(&key[split + 1..]);
    if message.sequence_number != u64::from_be_bytes(sequence) {
        return Err(corrupt(
            "the key and the message disagree on the sequence number".into(),
        ));
    }
    Ok((device_id, message))
}

pub fn encode_feedback(record: &FeedbackRecord) -> Result<Vec<u8>, StoreError> {
    postcard::to_extend(record, vec![FORMAT_V1]).map_err(|e| StoreError::Write(Box::new(e)))
}

pub fn decode_feedback(key: &[u8], value: &[u8]) -> Result<(u64, FeedbackRecord), StoreError> {
    let corrupt = |reason: String| StoreError::Corrupt {
        key: format!("feedback {key:02x?}"),
        reason,
    };
    let sequence_number = <[u8; 8]>::try_from(key)
        .map(u64::from_be_bytes)
        .map_err(|_| corrupt("a feedback key has 8 bytes".into()))?;
    match value.split_first() {
        Some((&FORMAT_V1, body)) => postcard::from_bytes(body)
            .map(|record| (sequence_number, record))
            .map_err(|e| corrupt(e.to_string())),
        Some((format, _)) => Err(corrupt(format!("unknown format {format}"))),
        None => Err(corrupt("the value is empty".into())),
    }
}
