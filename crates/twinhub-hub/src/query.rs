//! Queries over the registry snapshot. The snapshot a query reads is taken after every acknowledged
//! write has been swapped in, so a query sees every write acknowledged before it was sent
//! (read-your-writes), and it is ordered by device id, which is what the paging cursor relies on.

use crate::index::{INDEXED_PATHS_MAX, INDEX_MIN_TWINS};
use crate::writer::WriteOp;
use crate::{Hub, HubError, ModuleKey, Snapshot};
use std::ops::Bound;
use std::sync::Arc;
use twinhub_core::job::DeviceJobRecord;
use twinhub_core::module::ModuleRecord;
use twinhub_core::{DeviceId, DeviceRecord, JobId, ModuleId};
use twinhub_query::ast::Collection;
use twinhub_query::document::Field;
use twinhub_query::plan::{self, Constraint, IndexKey, Requirement};
use twinhub_query::{CompiledQuery, OrderedTwins, Page, PAGE_SIZE_DEFAULT};

struct SnapshotView(Arc<Snapshot>);

impl OrderedTwins for SnapshotView {
    fn after<'a>(&'a self, after: Option<&str>) -> Box<dyn Iterator<Item = &'a DeviceRecord> + 'a> {
        let devices = &self.0.devices;
        match after {
            None => Box::new(devices.values().map(|record| &**record)),
            Some(id) => Box::new(
                devices
                    .range::<_, str>((Bound::Excluded(id), Bound::Unbounded))
                    .map(|(_, record)| &**record),
            ),
        }
    }

    fn candidates<'a>(
        &'a self,
        constraint: &Constraint<'_>,
        after: Option<&str>,
    ) -> Option<Box<dyn Iterator<Item = &'a DeviceRecord> + 'a>> {
        let ids: Vec<DeviceId> = match (constraint.path.field, &constraint.requirement) {
            (Field::DeviceId, Requirement::OneOf(keys)) if constraint.path.rest.is_empty() => {
                // The registry is keyed by id: an id constraint needs no index.
                let mut ids: Vec<DeviceId> = keys
                    .iter()
                    .filter_map(|key| match key {
                        IndexKey::Str(id) => self.0.devices.get_key_value(id.as_ref()).map(|(id, _)| id.clone()),
                        _ => None,
                    })
                    .filter(|id| after.is_none_or(|after| id.as_str() > after))
                    .collect();
                ids.sort_unstable();
                ids.dedup();
                ids
            }
            _ => self.0.indexes.get(constraint.path)?.ids(&constraint.requirement, after),
        };
        let devices = &self.0.devices;
        Some(Box::new(
            ids.into_iter()
                .filter_map(move |id| devices.get(&id).map(|record| &**record)),
        ))
    }
}

/// Module twins in `<device>/<module>` order (`devices.modules`), with their own indexes.
struct ModulesView(Arc<Snapshot>);

/// A module row's paging cursor (`<device>/<module>`) as its key; `None` when it names no module.
fn module_cursor(after: Option<&str>) -> Option<ModuleKey> {
    let (device, module) = after?.split_once('/')?;
    Some((DeviceId::new(device).ok()?, ModuleId::new(module).ok()?))
}

impl OrderedTwins<ModuleRecord> for ModulesView {
    fn after<'a>(&'a self, after: Option<&str>) -> Box<dyn Iterator<Item = &'a ModuleRecord> + 'a> {
        let modules = &self.0.modules;
        match module_cursor(after) {
            None => Box::new(modules.values().map(|module| &**module)),
            Some(key) => Box::new(
                modules
                    .range((Bound::Excluded(key), Bound::Unbounded))
                    .map(|(_, module)| &**module),
            ),
        }
    }

    fn candidates<'a>(
        &'a self,
        constraint: &Constraint<'_>,
        after: Option<&str>,
    ) -> Option<Box<dyn Iterator<Item = &'a ModuleRecord> + 'a>> {
        let after = module_cursor(after);
        let modules = &self.0.modules;
        let keys: Vec<ModuleKey> = match (constraint.path.field, &constraint.requirement) {
            (Field::DeviceId, Requirement::OneOf(ids)) if constraint.path.rest.is_empty() => {
                // A device's modules are one range of the map: a device id constraint needs no index.
                let mut devices: Vec<DeviceId> = ids
                    .iter()
                    .filter_map(|id| match id {
                        IndexKey::Str(id) => DeviceId::new(id).ok(),
                        _ => None,
                    })
                    .collect();
                devices.sort_unstable();
                devices.dedup();
                devices
                    .iter()
                    .flat_map(|device| crate::modules::modules_of(modules, device))
                    .map(|module| (module.device_id().clone(), module.module_id.clone()))
                    .filter(|key| after.as_ref().is_none_or(|after| key > after))
                    .collect()
            }
            _ => self
                .0
                .module_indexes
                .get(constraint.path)?
                .ids(&constraint.requirement, after.as_ref()),
        };
        Some(Box::new(
            keys.into_iter()
                .filter_map(move |key| modules.get(&key).map(|module| &**module)),
        ))
    }
}

/// Every device's step of every job (`devices.jobs`), in `<job>/<device>` order. Scanned.
struct DeviceJobsView(Arc<Snapshot>);

impl OrderedTwins<DeviceJobRecord> for DeviceJobsView {
    fn after<'a>(&'a self, after: Option<&str>) -> Box<dyn Iterator<Item = &'a DeviceJobRecord> + 'a> {
        let steps = &self.0.device_jobs;
        let start = after.and_then(|key| {
            let (job, device) = key.split_once('/')?;
            Some((JobId::new(job).ok()?, DeviceId::new(device).ok()?))
        });
        match start {
            None => Box::new(steps.values().map(|step| &**step)),
            Some(key) => Box::new(
                steps
                    .range((Bound::Excluded(key), Bound::Unbounded))
                    .map(|(_, step)| &**step),
            ),
        }
    }
}

impl Hub {
    /// One page of a query, over the latest snapshot.
    pub async fn query(
        &self,
        text: &str,
        page_size: Option<usize>,
        continuation: Option<&str>,
    ) -> Result<Page, HubError> {
        let query = CompiledQuery::parse(text)?;
        self.index_for(&query).await?;
        // In a cluster: every write acknowledged anywhere before the query is in what it reads.
        self.read_barrier().await;
        let snapshot = self.snapshot();
        let continuation = continuation.map(str::to_owned);
        let page_size = page_size.unwrap_or(PAGE_SIZE_DEFAULT);
        // A query may scan every twin: keep it off the threads that serve connections.
        let page = tokio::task::spawn_blocking(move || match query.query.from {
            Collection::DeviceModules => query.page(&ModulesView(snapshot), page_size, continuation.as_deref()),
            Collection::DeviceJobs => query.page(&DeviceJobsView(snapshot), page_size, continuation.as_deref()),
            _ => query.page(&SnapshotView(snapshot), page_size, continuation.as_deref()),
        })
        .await
        .map_err(|_| HubError::Internal("the query task failed"))??;
        Ok(page)
    }

    /// Asks the writer to index the query's most selective constrained path, when the registry is big
    /// enough for a scan to matter and no index serves the query yet. The index appears in the snapshot
    /// of the writer's batch, which is at least as new as any write acknowledged before this query.
    async fn index_for(&self, query: &CompiledQuery) -> Result<(), HubError> {
        let snapshot = self.snapshot();
        let collection = query.query.from;
        let (twins, indexed, has_index): (usize, usize, &dyn Fn(&_) -> bool) = match collection {
            Collection::DeviceModules => (snapshot.modules.len(), snapshot.module_indexes.len(), &|path| {
                snapshot.module_indexes.get(path).is_some()
            }),
            _ => (snapshot.devices.len(), snapshot.indexes.len(), &|path| {
                snapshot.indexes.get(path).is_some()
            }),
        };
        if twins < INDEX_MIN_TWINS || indexed >= INDEXED_PATHS_MAX {
            return Ok(());
        }
        let constraints = plan::constraints(query.query.condition.as_ref());
        let served = constraints
            .iter()
            .any(|c| c.path.field == Field::DeviceId || has_index(c.path));
        let Some(first) = constraints.first().filter(|_| !served) else {
            return Ok(());
        };
        tracing::info!(path = %first.path.dotted(), ?collection, "indexing a queried path");
        self.write(WriteOp::AddIndex(collection, first.path.clone()))
            .await
            .map(|_| ())
    }
}
