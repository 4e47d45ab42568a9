//! Equality indexes over twin paths, kept exact under writes: they live in the same snapshot as the
//! records (persistent maps, updated by the single writer in the batch that changes a record), so a
//! query reads records and indexes at one and the same point.
//!
//! Paths are indexed on demand: the first query over a large registry with an equality or `IN` on a
//! path asks the writer to build that path's index (see `Hub::query`).

use crate::Registry;
use imbl::{HashMap, OrdSet};
use twinhub_core::{DeviceId, DeviceRecord};
use twinhub_query::document::FieldPath;
use twinhub_query::plan::IndexKey;

/// Below this many twins a scan costs well under a millisecond: no index is built.
pub const INDEX_MIN_TWINS: usize = 10_000;
/// Most paths indexed at once; each costs memory and a little time on every write.
pub const INDEXED_PATHS_MAX: usize = 32;

#[derive(Clone, Debug)]
pub struct PathIndex {
    pub path: FieldPath,
    entries: HashMap<IndexKey, OrdSet<DeviceId>>,
}

#[derive(Clone, Debug, Default)]
pub struct Indexes {
    paths: Vec<PathIndex>,
}

impl PathIndex {
    fn build(path: FieldPath, registry: &Registry) -> PathIndex {
        let mut grouped: std::collections::HashMap<IndexKey, Vec<DeviceId>> = std::collections::HashMap::new();
        for (id, record) in registry.iter() {
            if let Some(key) = IndexKey::of_value(&path.resolve(record)) {
                grouped.entry(key).or_default().push(id.clone());
            }
        }
        let entries = grouped
            .into_iter()
            .map(|(key, ids)| (key, ids.into_iter().collect()))
            .collect();
        PathIndex { path, entries }
    }

    fn update(&mut self, id: &DeviceId, before: Option<&DeviceRecord>, after: Option<&DeviceRecord>) {
        let old = before.and_then(|record| IndexKey::of_value(&self.path.resolve(record)));
        let new = after.and_then(|record| IndexKey::of_value(&self.path.resolve(record)));
        if old == new {
            return;
        }
        if let Some(old) = old {
            let now_empty = self.entries.get_mut(&old).is_some_and(|ids| {
                ids.remove(id);
                ids.is_empty()
            });
            if now_empty {
                self.entries.remove(&old);
            }
        }
        if let Some(new) = new {
            self.entries.entry(new).or_default().insert(id.clone());
        }
    }

    /// Ids whose value has one of `keys`, after `after`, in id order.
    pub fn ids_after(&self, keys: &[IndexKey], after: Option<&str>) -> Vec<DeviceId> {
        let mut ids: Vec<DeviceId> = Vec::new();
        for key in keys {
            if let Some(set) = self.entries.get(key) {
                match after {
                    None => ids.extend(set.iter().cloned()),
                    Some(after) => ids.extend(
                        set.range::<_, str>((std::ops::Bound::Excluded(after), std::ops::Bound::Unbounded))
                            .cloned(),
                    ),
                }
            }
        }
        if keys.len() > 1 {
            ids.sort_unstable();
            ids.dedup();
        }
        ids
    }
}

impl Indexes {
    pub fn get(&self, path: &FieldPath) -> Option<&PathIndex> {
        self.paths.iter().find(|index| index.path == *path)
    }

    pub fn len(&self) -> usize {
        self.paths.len()
    }

    pub fn is_empty(&self) -> bool {
        self.paths.is_empty()
    }

    /// Builds the index of `path` over `registry` unless it exists or the limit is reached.
    pub fn add(&mut self, path: FieldPath, registry: &Registry) {
        if self.get(&path).is_none() && self.paths.len() < INDEXED_PATHS_MAX {
            self.paths.push(PathIndex::build(path, registry));
        }
    }

    /// Follows one record's change (`None`: absent before / deleted).
    pub fn update(&mut self, id: &DeviceId, before: Option<&DeviceRecord>, after: Option<&DeviceRecord>) {
        for index in &mut self.paths {
            index.update(id, before, after);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use twinhub_core::json::DeviceDraft;
    use twinhub_core::record::Presence;
    use twinhub_core::twin::TwinPatch;
    use twinhub_core::{Timestamp, Twin, TwinRules};

    fn record(id: &str, region: Option<&str>) -> Arc<DeviceRecord> {
        let now = Timestamp::now();
        let rules = TwinRules::default();
        let draft = DeviceDraft::from_json(&serde_json::json!({ "deviceId": id }), "deviceId").unwrap();
        let mut twin = Twin::new(now);
        if let Some(region) = region {
            let patch = TwinPatch::from_json(&serde_json::json!({"tags": {"region": region}}), &rules).unwrap();
            twin = twin.patched(&patch, now, &rules).unwrap().0;
        }
        Arc::new(DeviceRecord {
            identity: draft.into_identity(None, now),
            twin,
            presence: Presence::default(),
        })
    }

    #[test]
    fn the_index_follows_changes_and_deletes() {
        let path = FieldPath::new(vec!["tags".into(), "region".into()]);
        let mut registry = Registry::new();
        for (id, region) in [("a", Some("US")), ("b", Some("EU")), ("c", None), ("d", Some("US"))] {
            let record = record(id, region);
            registry.insert(record.identity.device_id.clone(), record);
        }
        let mut indexes = Indexes::default();
        indexes.add(path.clone(), &registry);
        let us = [IndexKey::Str("US".into())];
        let ids = |indexes: &Indexes, after| -> Vec<String> {
            indexes
                .get(&path)
                .unwrap()
                .ids_after(&us, after)
                .iter()
                .map(|id| id.to_string())
                .collect()
        };
        assert_eq!(ids(&indexes, None), ["a", "d"]);
        assert_eq!(ids(&indexes, Some("a")), ["d"]);
        // b moves to US, a leaves it, d is deleted, e arrives in US.
        let moved = record("b", Some("US"));
        indexes.update(&moved.identity.device_id, registry.get("b").map(|r| &**r), Some(&moved));
        let left = record("a", Some("EU"));
        indexes.update(&left.identity.device_id, registry.get("a").map(|r| &**r), Some(&left));
        let d = registry.get("d").cloned().unwrap();
        indexes.update(&d.identity.device_id, Some(&d), None);
        let arrived = record("e", Some("US"));
        indexes.update(&arrived.identity.device_id, None, Some(&arrived));
        assert_eq!(ids(&indexes, None), ["b", "e"]);
        let both = [IndexKey::Str("US".into()), IndexKey::Str("EU".into())];
        let all: Vec<String> = indexes
            .get(&path)
            .unwrap()
            .ids_after(&both, None)
            .iter()
            .map(|i| i.to_string())
            .collect();
        assert_eq!(all, ["a", "b", "e"]);
    }
}
