//! Ordered indexes over twin paths (equality, `IN`, ranges and prefixes), kept exact under writes: they live in the same snapshot as the
//! records (persistent maps, updated by the single writer in the batch that changes a record), so a
//! query reads records and indexes at one and the same point.
//!
//! Paths are indexed on demand: the first query over a large registry with an equality or `IN` on a
//! path asks the writer to build that path's index (see `Hub::query`). Device twins and module twins
//! have indexes of their own, keyed by what orders each collection (`K`: a device id, or a device and
//! module id).

use imbl::{OrdMap, OrdSet};
use std::borrow::Borrow;
use std::ops::Bound;
use std::sync::Arc;
use twinhub_query::document::FieldPath;
use twinhub_query::eval::Resolve;
use twinhub_query::plan::{IndexKey, Requirement};

/// Below this many twins a scan costs well under a millisecond: no index is built.
pub const INDEX_MIN_TWINS: usize = 10_000;
/// Most paths indexed at once; each costs memory and a little time on every write.
pub const INDEXED_PATHS_MAX: usize = 32;

#[derive(Clone)]
pub struct PathIndex<K> {
    pub path: FieldPath,
    entries: OrdMap<IndexKey, OrdSet<K>>,
}

impl<K> std::fmt::Debug for PathIndex<K> {
    /// The path and how many values it holds: the ids themselves would fill a log.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PathIndex")
            .field("path", &self.path.dotted())
            .field("values", &self.entries.len())
            .finish()
    }
}

#[derive(Clone, Debug)]
pub struct Indexes<K> {
    paths: Vec<PathIndex<K>>,
}

impl<K> Default for Indexes<K> {
    fn default() -> Self {
        Indexes { paths: Vec::new() }
    }
}

impl<K: Ord + Clone> PathIndex<K> {
    fn build<'r, R: Resolve + 'r>(path: FieldPath, rows: impl Iterator<Item = (K, &'r R)>) -> PathIndex<K> {
        let mut grouped: std::collections::HashMap<IndexKey, Vec<K>> = std::collections::HashMap::new();
        for (id, row) in rows {
            if let Some(key) = IndexKey::of_value(&row.resolve(&path)) {
                grouped.entry(key).or_default().push(id);
            }
        }
        let entries = grouped
            .into_iter()
            .map(|(key, ids)| (key, ids.into_iter().collect::<OrdSet<K>>()))
            .collect();
        PathIndex { path, entries }
    }

    fn update<R: Resolve>(&mut self, id: &K, before: Option<&R>, after: Option<&R>) {
        let old = before.and_then(|row| IndexKey::of_value(&row.resolve(&self.path)));
        let new = after.and_then(|row| IndexKey::of_value(&row.resolve(&self.path)));
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
    pub fn ids<Q>(&self, requirement: &Requirement, after: Option<&Q>) -> Vec<K>
    where
        K: Borrow<Q>,
        Q: Ord + ?Sized,
    {
        let mut ids: Vec<K> = Vec::new();
        let mut take = |set: &OrdSet<K>| match after {
            None => ids.extend(set.iter().cloned()),
            Some(after) => ids.extend(set.range::<_, Q>((Bound::Excluded(after), Bound::Unbounded)).cloned()),
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

impl<K: Ord + Clone> Indexes<K> {
    pub fn get(&self, path: &FieldPath) -> Option<&PathIndex<K>> {
        self.paths.iter().find(|index| index.path == *path)
    }

    pub fn len(&self) -> usize {
        self.paths.len()
    }

    pub fn is_empty(&self) -> bool {
        self.paths.is_empty()
    }

    /// Builds the index of `path` over `rows` unless it exists or the limit is reached.
    pub fn add<'r, R: Resolve + 'r>(&mut self, path: FieldPath, rows: impl Iterator<Item = (K, &'r R)>) {
        if self.get(&path).is_none() && self.paths.len() < INDEXED_PATHS_MAX {
            self.paths.push(PathIndex::build(path, rows));
        }
    }

    /// Follows the changes of the `touched` rows from `before` to `after` (each once, however often it
    /// was touched).
    pub fn follow<R: Resolve>(&mut self, touched: &mut Vec<K>, before: &OrdMap<K, Arc<R>>, after: &OrdMap<K, Arc<R>>) {
        if self.paths.is_empty() {
            return;
        }
        touched.sort_unstable();
        touched.dedup();
        for key in touched.iter() {
            self.update(key, before.get(key).map(|row| &**row), after.get(key).map(|row| &**row));
        }
    }

    /// Follows one row's change (`None`: absent before / deleted).
    pub fn update<R: Resolve>(&mut self, id: &K, before: Option<&R>, after: Option<&R>) {
        for index in &mut self.paths {
            index.update(id, before, after);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Registry;
    use twinhub_core::json::DeviceDraft;
    use twinhub_core::record::Presence;
    use twinhub_core::twin::TwinPatch;
    use twinhub_core::{DeviceId, DeviceRecord, Timestamp, Twin, TwinRules};

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
        indexes.add(
            path.clone(),
            registry.iter().map(|(id, record)| (id.clone(), &**record)),
        );
        let ids = |indexes: &Indexes<DeviceId>, requirement: &Requirement, after: Option<&str>| -> Vec<String> {
            let found = indexes.get(&path).unwrap().ids(requirement, after);
            found.iter().map(|id| id.to_string()).collect()
        };
        let us = Requirement::OneOf(vec![IndexKey::Str("US".into())]);
        assert_eq!(ids(&indexes, &us, None), ["a", "d"]);
        assert_eq!(ids(&indexes, &us, Some("a")), ["d"]);
        // b moves to US, a leaves it, d is deleted, e arrives in US.
        let moved = record("b", Some("US"));
        indexes.update(
            &moved.identity.device_id,
            registry.get("b").map(|r| &**r),
            Some(&*moved),
        );
        let left = record("a", Some("EU"));
        indexes.update(&left.identity.device_id, registry.get("a").map(|r| &**r), Some(&*left));
        let d = registry.get("d").cloned().unwrap();
        indexes.update::<DeviceRecord>(&d.identity.device_id, Some(&d), None);
        let arrived = record("e", Some("US"));
        indexes.update(&arrived.identity.device_id, None, Some(&*arrived));
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
