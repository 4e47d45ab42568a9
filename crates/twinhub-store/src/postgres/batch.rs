//! A commit's writes as rows per table: encoded, and reduced to the last write of each key.
//!
//! Applying a batch in order inside one transaction leaves each key as its last write left it, and
//! nothing between the writes is visible to anyone (the transaction commits whole or not at all). So the
//! last write per key is the batch, and it lets one multi-row statement per table and kind of write carry
//! a whole batch: an upsert then a delete of one device leaves a tombstone, a delete then an upsert
//! leaves the record. Keys are kept sorted, so rows are always written (and locked) in key order.

use crate::cluster::LoggedWrite;
use crate::StoreError;
#[cfg(test)]
use crate::StoreWrite;
use std::collections::BTreeMap;

/// Per table: key → `Some(value)` to upsert, `None` to delete (for devices: to leave a tombstone).
#[derive(Debug, Default, PartialEq)]
pub(super) struct Grouped {
    pub devices: BTreeMap<String, Option<Vec<u8>>>,
    pub sessions: BTreeMap<String, Option<Vec<u8>>>,
    /// Key: the name without case ([`twinhub_core::consumer_group::key`]); value: the name as given.
    pub consumer_groups: BTreeMap<String, Option<String>>,
    pub cloud_to_device: BTreeMap<(String, i64), Option<Vec<u8>>>,
    pub feedback: BTreeMap<i64, Option<Vec<u8>>>,
    pub settings: BTreeMap<String, String>,
    /// Key: `<device>/<module>`.
    pub modules: BTreeMap<String, Option<Vec<u8>>>,
    /// Key: `<job>` or `<job>/<device>`.
    pub jobs: BTreeMap<String, Option<Vec<u8>>>,
}

/// The rows of one table: those to upsert (keys and values, in the same order) and the keys to delete.
pub(super) struct Rows<K, V> {
    pub upsert_keys: Vec<K>,
    pub upsert_values: Vec<V>,
    pub delete_keys: Vec<K>,
}

impl<K, V> Rows<K, V> {
    pub fn of(map: BTreeMap<K, Option<V>>) -> Rows<K, V> {
        let mut rows = Rows {
            upsert_keys: Vec::new(),
            upsert_values: Vec::new(),
            delete_keys: Vec::new(),
        };
        for (key, value) in map {
            match value {
                Some(value) => {
                    rows.upsert_keys.push(key);
                    rows.upsert_values.push(value);
                }
                None => rows.delete_keys.push(key),
            }
        }
        rows
    }
}

/// A sequence number as PostgreSQL's `bigint`. The hub numbers from 0 upwards, so the top half of `u64`
/// is never reached; should it be, the commit fails instead of storing a number that reads back wrong.
pub(super) fn to_bigint(sequence_number: u64) -> Result<i64, StoreError> {
    i64::try_from(sequence_number).map_err(|_| {
        StoreError::Write(format!("sequence number {sequence_number} is beyond PostgreSQL's bigint").into())
    })
}

impl Grouped {
    #[cfg(test)]
    pub fn from_batch(batch: Vec<StoreWrite>) -> Result<Grouped, StoreError> {
        Grouped::from_logged(crate::cluster::log_writes(&batch)?)
    }

    /// The rows of writes already in stored form (as the commit log has them: encoded once for both),
    /// taken whole: the log is encoded from them first.
    pub fn from_logged(writes: Vec<LoggedWrite>) -> Result<Grouped, StoreError> {
        let mut grouped = Grouped::default();
        for write in writes {
            match write {
                LoggedWrite::Device(id, value) => {
                    grouped.devices.insert(id, value);
                }
                LoggedWrite::Session(client_id, value) => {
                    grouped.sessions.insert(client_id, value);
                }
                LoggedWrite::ConsumerGroup { name, create } => {
                    let key = twinhub_core::consumer_group::key(&name);
                    grouped.consumer_groups.insert(key, create.then_some(name));
                }
                LoggedWrite::CloudToDevice(device_id, sequence_number, value) => {
                    let key = (device_id, to_bigint(sequence_number)?);
                    grouped.cloud_to_device.insert(key, value);
                }
                LoggedWrite::Feedback(sequence_number, value) => {
                    grouped.feedback.insert(to_bigint(sequence_number)?, value);
                }
                LoggedWrite::Setting { name, value } => {
                    grouped.settings.insert(name, value);
                }
                LoggedWrite::Module(key, value) => {
                    grouped.modules.insert(key, value);
                }
                LoggedWrite::Job(key, value) => {
                    grouped.jobs.insert(key, value);
                }
            }
        }
        Ok(grouped)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use twinhub_core::session::SessionRecord;
    use twinhub_core::DeviceId;

    fn session(client_id: &str) -> SessionRecord {
        SessionRecord {
            client_id: client_id.to_owned(),
            subscriptions: Vec::new(),
        }
    }

    #[test]
    fn the_last_write_of_each_key_wins_and_keys_come_sorted() {
        let grouped = Grouped::from_batch(vec![
            StoreWrite::UpsertSession(session("b")),
            StoreWrite::DeleteSession("b".into()),
            StoreWrite::DeleteSession("a".into()),
            StoreWrite::UpsertSession(session("a")),
            StoreWrite::UpsertConsumerGroup("Group".into()),
            StoreWrite::UpsertConsumerGroup("GROUP".into()),
            StoreWrite::DeleteFeedback(3),
            StoreWrite::Delete(DeviceId::new("d").expect("valid id")),
        ])
        .expect("grouped");
        let sessions = Rows::of(grouped.sessions);
        assert_eq!(sessions.upsert_keys, vec!["a".to_owned()]);
        assert_eq!(sessions.delete_keys, vec!["b".to_owned()]);
        assert_eq!(
            grouped.consumer_groups.into_iter().collect::<Vec<_>>(),
            vec![("group".to_owned(), Some("GROUP".to_owned()))]
        );
        assert_eq!(grouped.feedback.into_iter().collect::<Vec<_>>(), vec![(3, None)]);
        assert_eq!(
            grouped.devices.into_iter().collect::<Vec<_>>(),
            vec![("d".to_owned(), None)]
        );
    }

    #[test]
    fn a_sequence_number_beyond_bigint_fails_the_commit() {
        assert_eq!(to_bigint(0).ok(), Some(0));
        assert_eq!(to_bigint(i64::MAX as u64).ok(), Some(i64::MAX));
        assert!(matches!(
            Grouped::from_batch(vec![StoreWrite::DeleteFeedback(u64::MAX)]),
            Err(StoreError::Write(_))
        ));
    }
}
