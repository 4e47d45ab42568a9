//! What a store several nodes share (PostgreSQL) offers beyond [`crate::Store`]: commits taken in turn
//! across nodes, and the commit log every node follows (the change feed).
//!
//! Every commit of every node gets the next number of one global sequence and is kept, whole and in
//! order, in the commit log: its writes in the order the writer made them (so a twin written twice in
//! one batch appears twice) and the hub events it raised (desired changes with the exact patch a device
//! must receive). A node that applies the log in order ends with the state every other node has, and
//! raises for its own devices the notifications the writing node raised for its own.

use crate::codec::{
    cloud_to_device_key, decode, decode_cloud_to_device, decode_feedback, decode_session, encode,
    encode_cloud_to_device, encode_feedback, encode_session, FORMAT_V1,
};
use crate::{StoreError, StoreWrite};
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use twinhub_core::c2d::{FeedbackRecord, QueuedMessage};
use twinhub_core::hub_event::HubEvent;
use twinhub_core::session::SessionRecord;
use twinhub_core::twin::DesiredChange;
use twinhub_core::{DeviceId, DeviceRecord, ModuleId, Timestamp};

/// One commit of the log, as a node reads it back.
#[derive(Clone, Debug)]
pub struct Commit {
    pub seq: u64,
    pub writes: Vec<StoreWrite>,
    pub events: Vec<HubEvent>,
}

/// Everything a hub loads at start ([`crate::Store::load`]), as of one commit sequence number.
#[derive(Debug, Default)]
pub struct Loaded {
    pub records: Vec<DeviceRecord>,
    pub sessions: Vec<SessionRecord>,
    pub consumer_groups: Vec<String>,
    pub cloud_to_device: Vec<(DeviceId, QueuedMessage)>,
    pub feedback: Vec<(u64, FeedbackRecord)>,
    /// The hub's settings, by name (JSON text).
    pub settings: Vec<(String, String)>,
    pub modules: Vec<twinhub_core::module::ModuleRecord>,
    /// Scheduled jobs and their devices' steps.
    pub jobs: Vec<crate::codec::JobEntry>,
    /// The last commit the state includes: the log is followed from the next one.
    pub seq: u64,
}

/// What a node's connections act as: a device, or a module of one. Kept in the leases' tables as
/// `<device>` or `<device>/<module>` (no id has a `/`).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Holder {
    pub device_id: DeviceId,
    pub module_id: Option<ModuleId>,
}

impl Holder {
    pub fn device(device_id: DeviceId) -> Holder {
        Holder {
            device_id,
            module_id: None,
        }
    }

    /// The text the leases' tables keep.
    pub fn key(&self) -> String {
        match &self.module_id {
            None => self.device_id.as_str().to_owned(),
            Some(module_id) => crate::codec::module_key(&self.device_id, module_id),
        }
    }

    /// The holder a key names; `None` for text no device or module id could make.
    pub fn from_key(key: &str) -> Option<Holder> {
        let (device, module) = match key.split_once('/') {
            Some((device, module)) => (device, Some(module)),
            None => (key, None),
        };
        Some(Holder {
            device_id: DeviceId::new(device).ok()?,
            module_id: module.map(ModuleId::new).transpose().ok()?,
        })
    }
}

/// A change of the devices and modules a node holds (has connections of), for presence leases.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HoldChange {
    /// The node stamped the device or module Connected at `stamp` (`connectionStateUpdatedTime`).
    Held { holder: Holder, stamp: Timestamp },
    /// The node's last connection of the device or module closed.
    Released(Holder),
}

/// A node whose lease lapsed, with the devices and modules it held and the stamps it gave them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LapsedNode {
    pub node: String,
    pub held: Vec<(Holder, Timestamp)>,
}

/// Most commits one read of the log outside the turn returns ([`ClusterStore::commits_after`]).
pub const COMMITS_READ_MAX: usize = 4096;

/// A lease lapses this long after its node last renewed it: what a dead node's devices wait, at most,
/// before another node marks them Disconnected (plus the sweep's period).
pub const LEASE_LAPSES_AFTER: std::time::Duration = std::time::Duration::from_secs(10);

/// Builds a commit once the turn is taken: given the commits other nodes made since the node's last
/// one, returns the writes and events of this node's commit (none: nothing is committed).
pub type BuildCommit<'a> = Box<dyn FnOnce(Vec<Commit>) -> (Vec<StoreWrite>, Vec<HubEvent>) + Send + 'a>;

#[async_trait::async_trait]
pub trait ClusterStore: Send + Sync {
    /// Takes the commit turn (every other node's commit waits until this one ends), hands `build` every
    /// commit after `applied`, and commits what it returns as the next commit. Returns the sequence
    /// number the node is at afterwards: its own commit's, or the last one `build` was given when it
    /// wrote nothing. On an error nothing of `build`'s is committed (except when the connection broke
    /// during COMMIT, when PostgreSQL itself cannot say; the commit then comes back through the log).
    async fn commit_in_turn(&self, applied: u64, build: BuildCommit<'_>) -> Result<u64, StoreError>;

    /// The commits after `applied`, in order, without taking the turn: what a node that is not writing
    /// reads to follow the others. At most [`COMMITS_READ_MAX`]: fewer means the log ended there when
    /// it was read, so a reader needs no second read to know it is at the end.
    async fn commits_after(&self, applied: u64) -> Result<Vec<Commit>, StoreError>;

    /// The last committed sequence number: a node that has applied it has seen every write acknowledged
    /// anywhere before this call.
    async fn committed_seq(&self) -> Result<u64, StoreError>;

    /// Told a sequence number each time some node commits (soon after; it may skip numbers, and is
    /// backed by a poll in case a notification is lost).
    fn commit_notifications(&self) -> tokio::sync::watch::Receiver<u64>;

    /// The persistent session stored for `client_id`, as committed: what a node gives a device that had
    /// its session on another node.
    async fn load_session(&self, client_id: &str) -> Result<Option<SessionRecord>, StoreError>;

    /// This node's name among the leases: unique to this process.
    fn lease_name(&self) -> &str;

    /// Renews this node's lease (taking it when it has none). `false` when there was none to renew: at
    /// the first call, or after it lapsed, when another node may have marked this node's devices
    /// Disconnected, so that the node must stamp the devices it holds anew.
    async fn renew_lease(&self) -> Result<bool, StoreError>;

    /// Records changes of the devices this node holds, in order (the last change of a device wins).
    async fn record_holds(&self, changes: &[HoldChange]) -> Result<(), StoreError>;

    /// The other nodes whose lease lapsed ([`LEASE_LAPSES_AFTER`] without renewal), with what they held.
    async fn lapsed_nodes(&self) -> Result<Vec<LapsedNode>, StoreError>;

    /// Forgets a lapsed node: its lease and its held devices (once their presence was settled).
    async fn forget_node(&self, node: &str) -> Result<(), StoreError>;
}

/// A write as the log keeps it, its value already in stored form: encoded once, for the log and for the
/// state tables alike.
#[derive(Serialize, Deserialize)]
pub(crate) enum LoggedWrite {
    Device(String, #[serde(with = "serde_bytes")] Option<Vec<u8>>),
    Session(String, #[serde(with = "serde_bytes")] Option<Vec<u8>>),
    ConsumerGroup {
        name: String,
        create: bool,
    },
    CloudToDevice(String, u64, #[serde(with = "serde_bytes")] Option<Vec<u8>>),
    Feedback(u64, #[serde(with = "serde_bytes")] Option<Vec<u8>>),
    /// Last, so commits logged before it existed still decode.
    Setting {
        name: String,
        value: String,
    },
    /// A module by its key (`<device>/<module>`): its stored form, or `None` when deleted.
    Module(String, #[serde(with = "serde_bytes")] Option<Vec<u8>>),
    /// A job (`<job>`) or a device's step of one (`<job>/<device>`): its stored form, or `None` when
    /// deleted. Last, so commits logged before it existed still decode.
    Job(String, #[serde(with = "serde_bytes")] Option<Vec<u8>>),
}

#[derive(Serialize, Deserialize)]
enum LoggedEvent {
    /// The patch as JSON text: postcard cannot read a `serde_json::Value` back.
    DesiredChanged {
        device_id: String,
        version: u64,
        patch: String,
    },
    DeviceUpdated(String),
    DeviceDeleted(String),
    /// Last, so commits logged before it existed still decode.
    ModuleDesiredChanged {
        device_id: String,
        module_id: String,
        version: u64,
        patch: String,
    },
}

#[derive(Deserialize)]
struct LoggedCommit {
    writes: Vec<LoggedWrite>,
    events: Vec<LoggedEvent>,
}

/// The same, borrowed, for encoding (postcard writes a slice as it writes a Vec).
#[derive(Serialize)]
struct LoggedCommitRef<'a> {
    writes: &'a [LoggedWrite],
    events: Vec<LoggedEvent>,
}

/// A commit as the log keeps it: the format byte, then postcard; each value in its stored form.
pub fn encode_commit(writes: &[StoreWrite], events: &[HubEvent]) -> Result<Vec<u8>, StoreError> {
    encode_logged(&log_writes(writes)?, events)
}

/// Every write in its stored form.
pub(crate) fn log_writes(writes: &[StoreWrite]) -> Result<Vec<LoggedWrite>, StoreError> {
    writes
        .iter()
        .map(|write| {
            Ok(match write {
                StoreWrite::Upsert(record) => {
                    LoggedWrite::Device(record.identity.device_id.as_str().to_owned(), Some(encode(record)?))
                }
                StoreWrite::Delete(id) => LoggedWrite::Device(id.as_str().to_owned(), None),
                StoreWrite::UpsertSession(session) => {
                    LoggedWrite::Session(session.client_id.clone(), Some(encode_session(session)?))
                }
                StoreWrite::DeleteSession(client_id) => LoggedWrite::Session(client_id.clone(), None),
                StoreWrite::UpsertConsumerGroup(name) => LoggedWrite::ConsumerGroup {
                    name: name.clone(),
                    create: true,
                },
                StoreWrite::DeleteConsumerGroup(name) => LoggedWrite::ConsumerGroup {
                    name: name.clone(),
                    create: false,
                },
                StoreWrite::UpsertCloudToDevice { device_id, message } => LoggedWrite::CloudToDevice(
                    device_id.as_str().to_owned(),
                    message.sequence_number,
                    Some(encode_cloud_to_device(message)?),
                ),
                StoreWrite::DeleteCloudToDevice {
                    device_id,
                    sequence_number,
                } => LoggedWrite::CloudToDevice(device_id.as_str().to_owned(), *sequence_number, None),
                StoreWrite::UpsertFeedback {
                    sequence_number,
                    record,
                } => LoggedWrite::Feedback(*sequence_number, Some(encode_feedback(record)?)),
                StoreWrite::DeleteFeedback(sequence_number) => LoggedWrite::Feedback(*sequence_number, None),
                StoreWrite::PutSetting { name, value } => LoggedWrite::Setting {
                    name: name.clone(),
                    value: value.clone(),
                },
                StoreWrite::UpsertModule(module) => LoggedWrite::Module(
                    crate::codec::module_key(module.device_id(), &module.module_id),
                    Some(crate::codec::encode_module(module)?),
                ),
                StoreWrite::DeleteModule { device_id, module_id } => {
                    LoggedWrite::Module(crate::codec::module_key(device_id, module_id), None)
                }
                StoreWrite::UpsertJob(job) => {
                    LoggedWrite::Job(crate::codec::job_key(&job.job_id), Some(crate::codec::encode_job(job)?))
                }
                StoreWrite::UpsertDeviceJob(step) => LoggedWrite::Job(
                    crate::codec::device_job_key(&step.job_id, &step.device_id),
                    Some(crate::codec::encode_device_job(step)?),
                ),
            })
        })
        .collect()
}

/// The log's bytes for writes already in stored form.
pub(crate) fn encode_logged(writes: &[LoggedWrite], events: &[HubEvent]) -> Result<Vec<u8>, StoreError> {
    let events = events
        .iter()
        .map(|event| match event {
            HubEvent::DesiredChanged { device_id, change } => LoggedEvent::DesiredChanged {
                device_id: device_id.as_str().to_owned(),
                version: change.version,
                patch: serde_json::Value::Object(change.patch.clone()).to_string(),
            },
            HubEvent::DeviceUpdated { device_id } => LoggedEvent::DeviceUpdated(device_id.as_str().to_owned()),
            HubEvent::DeviceDeleted { device_id } => LoggedEvent::DeviceDeleted(device_id.as_str().to_owned()),
            HubEvent::ModuleDesiredChanged {
                device_id,
                module_id,
                change,
            } => LoggedEvent::ModuleDesiredChanged {
                device_id: device_id.as_str().to_owned(),
                module_id: module_id.as_str().to_owned(),
                version: change.version,
                patch: serde_json::Value::Object(change.patch.clone()).to_string(),
            },
        })
        .collect();
    postcard::to_extend(&LoggedCommitRef { writes, events }, vec![FORMAT_V1])
        .map_err(|e| StoreError::Write(Box::new(e)))
}

/// Commit `seq` as the log kept it; `Corrupt` (never a panic) when the bytes are not one.
pub fn decode_commit(seq: u64, bytes: &[u8]) -> Result<Commit, StoreError> {
    let corrupt = |reason: String| StoreError::Corrupt {
        key: format!("commit {seq}"),
        reason,
    };
    let logged: LoggedCommit = match bytes.split_first() {
        Some((&FORMAT_V1, body)) => postcard::from_bytes(body).map_err(|e| corrupt(e.to_string()))?,
        Some((format, _)) => return Err(corrupt(format!("unknown format {format}"))),
        None => return Err(corrupt("the value is empty".into())),
    };
    let device_id = |id: &str| DeviceId::new(id).map_err(|e| corrupt(format!("'{id}' is not a device id: {e:?}")));
    let mut writes = Vec::with_capacity(logged.writes.len());
    for write in logged.writes {
        writes.push(match write {
            LoggedWrite::Device(id, Some(value)) => StoreWrite::Upsert(Arc::new(decode(id.as_bytes(), &value)?)),
            LoggedWrite::Device(id, None) => StoreWrite::Delete(device_id(&id)?),
            LoggedWrite::Session(client_id, Some(value)) => {
                StoreWrite::UpsertSession(decode_session(client_id.as_bytes(), &value)?)
            }
            LoggedWrite::Session(client_id, None) => StoreWrite::DeleteSession(client_id),
            LoggedWrite::ConsumerGroup { name, create: true } => StoreWrite::UpsertConsumerGroup(name),
            LoggedWrite::ConsumerGroup { name, create: false } => StoreWrite::DeleteConsumerGroup(name),
            LoggedWrite::CloudToDevice(id, sequence_number, Some(value)) => {
                let (device_id, message) =
                    decode_cloud_to_device(&cloud_to_device_key(&device_id(&id)?, sequence_number), &value)?;
                StoreWrite::UpsertCloudToDevice {
                    device_id,
                    message: Box::new(message),
                }
            }
            LoggedWrite::CloudToDevice(id, sequence_number, None) => StoreWrite::DeleteCloudToDevice {
                device_id: device_id(&id)?,
                sequence_number,
            },
            LoggedWrite::Feedback(sequence_number, Some(value)) => {
                let (sequence_number, record) = decode_feedback(&sequence_number.to_be_bytes(), &value)?;
                StoreWrite::UpsertFeedback {
                    sequence_number,
                    record,
                }
            }
            LoggedWrite::Feedback(sequence_number, None) => StoreWrite::DeleteFeedback(sequence_number),
            LoggedWrite::Setting { name, value } => StoreWrite::PutSetting { name, value },
            LoggedWrite::Module(key, Some(value)) => {
                StoreWrite::UpsertModule(Arc::new(crate::codec::decode_module(key.as_bytes(), &value)?))
            }
            LoggedWrite::Module(key, None) => {
                let (device, module) = key
                    .split_once('/')
                    .ok_or_else(|| corrupt(format!("'{key}' is not a module key")))?;
                StoreWrite::DeleteModule {
                    device_id: device_id(device)?,
                    module_id: twinhub_core::ModuleId::new(module)
                        .map_err(|e| corrupt(format!("'{module}' is not a module id: {e:?}")))?,
                }
            }
            LoggedWrite::Job(key, Some(value)) => match crate::codec::decode_job_entry(key.as_bytes(), &value)? {
                crate::codec::JobEntry::Job(job) => StoreWrite::UpsertJob(Arc::new(job)),
                crate::codec::JobEntry::DeviceJob(step) => StoreWrite::UpsertDeviceJob(Arc::new(step)),
            },
            // Nothing deletes jobs yet: a deletion logged by a newer node is not this node's to apply.
            LoggedWrite::Job(_, None) => continue,
        });
    }
    let mut events = Vec::with_capacity(logged.events.len());
    for event in logged.events {
        events.push(match event {
            LoggedEvent::DesiredChanged {
                device_id: id,
                version,
                patch,
            } => {
                let patch = match serde_json::from_str(&patch) {
                    Ok(serde_json::Value::Object(patch)) => patch,
                    _ => return Err(corrupt(format!("the desired patch of '{id}' is not a JSON object"))),
                };
                HubEvent::DesiredChanged {
                    device_id: device_id(&id)?,
                    change: DesiredChange { version, patch },
                }
            }
            LoggedEvent::ModuleDesiredChanged {
                device_id: id,
                module_id,
                version,
                patch,
            } => {
                let patch = match serde_json::from_str(&patch) {
                    Ok(serde_json::Value::Object(patch)) => patch,
                    _ => {
                        return Err(corrupt(format!(
                            "the desired patch of '{id}/{module_id}' is not a JSON object"
                        )))
                    }
                };
                HubEvent::ModuleDesiredChanged {
                    device_id: device_id(&id)?,
                    module_id: twinhub_core::ModuleId::new(&module_id)
                        .map_err(|e| corrupt(format!("'{module_id}' is not a module id: {e:?}")))?,
                    change: DesiredChange { version, patch },
                }
            }
            LoggedEvent::DeviceUpdated(id) => HubEvent::DeviceUpdated {
                device_id: device_id(&id)?,
            },
            LoggedEvent::DeviceDeleted(id) => HubEvent::DeviceDeleted {
                device_id: device_id(&id)?,
            },
        });
    }
    Ok(Commit { seq, writes, events })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_commit_reads_back_as_written_in_order() {
        let id = DeviceId::new("d1").expect("valid id");
        let now = twinhub_core::Timestamp(1_700_000_000_000);
        let draft = twinhub_core::json::DeviceDraft::from_json(&serde_json::json!({ "deviceId": "d1" }), "deviceId")
            .expect("valid device");
        let record = DeviceRecord::new(
            draft.into_identity(None, now, |_| None).expect("no edge scopes"),
            twinhub_core::Twin::new(now),
            Default::default(),
        );
        let mut patch = serde_json::Map::new();
        patch.insert("a".into(), serde_json::json!({"b": null}));
        let writes = vec![
            StoreWrite::Upsert(Arc::new(record.clone())),
            StoreWrite::Delete(id.clone()),
            StoreWrite::UpsertConsumerGroup("Group".into()),
            StoreWrite::DeleteFeedback(7),
        ];
        let events = vec![
            HubEvent::DesiredChanged {
                device_id: id.clone(),
                change: DesiredChange { version: 3, patch },
            },
            HubEvent::DeviceDeleted { device_id: id.clone() },
        ];
        let bytes = encode_commit(&writes, &events).expect("encoded");
        let commit = decode_commit(42, &bytes).expect("decoded");
        assert_eq!(commit.seq, 42);
        assert_eq!(commit.events, events);
        assert!(matches!(&commit.writes[0], StoreWrite::Upsert(back) if **back == record));
        assert!(matches!(&commit.writes[1], StoreWrite::Delete(back) if *back == id));
        assert!(matches!(&commit.writes[2], StoreWrite::UpsertConsumerGroup(name) if name == "Group"));
        assert!(matches!(commit.writes[3], StoreWrite::DeleteFeedback(7)));
    }

    #[test]
    fn garbage_is_corrupt_not_a_panic() {
        for bytes in [&[][..], &[9, 1, 2][..], &[FORMAT_V1, 0xff, 0xff, 0xff][..]] {
            assert!(matches!(decode_commit(1, bytes), Err(StoreError::Corrupt { .. })));
        }
    }
}
