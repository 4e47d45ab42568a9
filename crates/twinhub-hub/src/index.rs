//! Ordered indexes over twin paths (equality, `IN`, ranges and prefixes), kept exact under writes: they live in the same snapshot as the
//! records (persistent maps, updated by the single writer in the batch that changes a record), so a
//! query reads records and indexes at one and the same point.
//!
//! Paths are indexed on demand: the first query over a large registry with an equality or `IN` on a
//! path asks the writer to build that path's index (see `Hub::query`).

use crate::Registry;
use imbl::{OrdMap, OrdSet};
use std::ops::Bound;
use twinhub_core::{DeviceId, DeviceRecord};
use twinhub_query::document::FieldPath;
use twinhub_query::plan::{IndexKey, Requirement};

/// Below this many twins a scan costs well under a millisecond: no index is built.
pub const INDEX_MIN_TWINS: usize = 10_000;
/// Most paths indexed at once; each costs memory and a little time on every write.
pub const INDEXED_PATHS_MAX: usize = 32;

#[derive(Clone, Debug)]
pub struct PathIndex {
    pub path: FieldPath,
    entries: OrdMap<IndexKey, OrdSet<DeviceId>>,
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
            .map(|(key, ids)| (key, ids.into_iter().collect::<OrdSet<DeviceId>>()))
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

    /// Ids of the twins whose value meets `requirement`, after `after`, in id order.
    pub fn ids(&self, requirement: &Requirement, after: Option<&str>) -> Vec<DeviceId> {
        let mut ids: Vec<DeviceId> = Vec::new();
        let mut take = |set: &OrdSet<DeviceId>| match after {
            None => ids.extend(set.iter().cloned()),
            Some(after) => ids.extend(set.range::<_, str>((Bound::Excluded(after), Bound::Unbounded)).cloned()),
        };
        let mut sets = 0;
        match requirement {
            Requirement::OneOf(keys) => {
                for set in keys.iter().filter_map(|key| self.entries.get(key)) {
                    sets += 1;
                    take(set);
                }
            }
            Requirement::Range { lower, upper } => {
                if range_is_empty(lower, upper) {
                    return ids;
                }
                for (_, set) in self.entries.range((lower.clone(), upper.clone())) {
                    sets += 1;
                    take(set);
                }
            }
            Requirement::Prefix(prefix) => {
                let start = IndexKey::Str(prefix.as_str().into());
                let within = |key: &IndexKey| matches!(key, IndexKey::Str(s) if s.starts_with(prefix.as_str()));
                for (_, set) in self
                    .entries
                    .range((Bound::Included(start), Bound::Unbounded))
                    .take_while(|(k, _)| within(k))
                {
                    sets += 1;
                    take(set);
                }
            }
        }
        // Each id sits under one key, so ids from several keys only need sorting.
        if sets > 1 {
            ids.sort_unstable();
        }
        ids
    }
}

/// `BTreeMap`-style range lookups panic on inverted bounds (`x > 5 AND x < 3` style requests never
/// reach here inverted, but `> 'z'` up to the end of strings can): check first.
fn range_is_empty(lower: &Bound<IndexKey>, upper: &Bound<IndexKey>) -> bool {
    match (lower, upper) {
        (Bound::Included(l), Bound::Included(u)) => l > u,
        (Bound::Included(l), Bound::Excluded(u))
        | (Bound::Excluded(l), Bound::Included(u))
        | (Bound::Excluded(l), Bound::Excluded(u)) => l >= u,
        _ => false,
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
        Arc::new(DeviceRecord::new(
            draft.into_identity(None, now, |_| None).expect("no edge scopes"),
            twin,
            Presence::default(),
        ))
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
        let ids = |indexes: &Indexes, requirement: &Requirement, after: Option<&str>| -> Vec<String> {
            let found = indexes.get(&path).unwrap().ids(requirement, after);
            found.iter().map(|id| id.to_string()).collect()
        };
        let us = Requirement::OneOf(vec![IndexKey::Str("US".into())]);
        assert_eq!(ids(&indexes, &us, None), ["a", "d"]);
        assert_eq!(ids(&indexes, &us, Some("a")), ["d"]);
        // b moves to US, a leaves it, d is deleted, e arrives in US.
        let moved = record("b", Some("US"));
        indexes.update(&moved.identity.device_id, registry.get("b").map(|r| &**r), Some(&moved));
        let left = record("a", Some("EU"));
        indexes.update(&left.identity.device_id, registry.get("a").map(|r| &**r), Some(&left));
        let d = registry.get("d").cloned().unwrap();
        indexes.update(&d.identity.device_id, Some(&d), None);
        let arrived = record("e", Some("US"));
        indexes.update(&arrived.identity.device_id, None, Some(&arrived));
        assert_eq!(ids(&indexes, &us, None), ["b", "e"]);
        let both = Requirement::OneOf(vec![IndexKey::Str("US".into()), IndexKey::Str("EU".into())]);
        assert_eq!(ids(&indexes, &both, None), ["a", "b", "e"]);
        let from_f = Requirement::Range {
            lower: Bound::Included(IndexKey::Str("F".into())),
            upper: Bound::Unbounded,
        };
        assert_eq!(ids(&indexes, &from_f, None), ["b", "e"]);
        assert_eq!(ids(&indexes, &Requirement::Prefix("E".into()), None), ["a"]);
        let inverted = Requirement::Range {
            lower: Bound::Excluded(IndexKey::Str("Z".into())),
            upper: Bound::Excluded(IndexKey::Str("A".into())),
        };
        assert!(ids(&indexes, &inverted, None).is_empty());
    }
}
