//! Automatic device configurations in the hub: the set in the snapshot (stored as one setting, so every
//! store and every node of a cluster keeps it like the routes), the writer's operations, and what a
//! configuration's metrics count. The applier that keeps twins holding their configuration's content is
//! `configuration_applier.rs`.
//!
//! A twin holds the content of the configuration that wins it: of those whose target condition selects
//! it and that have device content, the highest priority, then the newest. Applying is a writer
//! operation checked against the twin as the batch has it, so two appliers (two nodes) write it once.

use crate::writer::{submit, Batch, WriteOp, WriteOutcome};
use crate::{Hub, HubError};
use std::collections::BTreeMap;
use std::sync::Arc;
use twinhub_core::configuration::{parse, Configuration, ConfigurationMetrics, CONFIGURATIONS_MAX};
use twinhub_core::etag::IfMatch;
use twinhub_core::module::ModuleRecord;
use twinhub_core::{DeviceId, DeviceRecord, ModuleId, Timestamp};
use twinhub_query::CompiledQuery;
use twinhub_store::StoreWrite;

/// The setting the configurations are stored under, as JSON.
pub const CONFIGURATIONS_SETTING: &str = "configurations";

/// What a configuration's target condition selects.
enum Target {
    Nothing,
    EveryDevice,
    Devices(CompiledQuery),
    /// `FROM devices.modules WHERE ...`: module twins.
    Modules(CompiledQuery),
}

/// A configuration with its target condition compiled.
pub struct Compiled {
    pub configuration: Configuration,
    target: Target,
}

impl Compiled {
    fn new(configuration: Configuration) -> Result<Compiled, HubError> {
        let condition = configuration.target_condition.trim();
        let target = match (condition, configuration.module_condition()) {
            (_, Some(modules)) => Target::Modules(CompiledQuery::parse(&format!(
                "SELECT * FROM devices.modules WHERE {modules}"
            ))?),
            ("", None) => Target::Nothing,
            ("*", None) => Target::EveryDevice,
            (condition, None) => Target::Devices(CompiledQuery::parse(&format!(
                "SELECT * FROM devices WHERE {condition}"
            ))?),
        };
        for query in configuration.metric_queries.values() {
            CompiledQuery::parse(query)?;
        }
        Ok(Compiled { configuration, target })
    }

    pub fn targets(&self, record: &DeviceRecord) -> bool {
        match &self.target {
            Target::EveryDevice => true,
            Target::Devices(query) => query.matches(record),
            Target::Nothing | Target::Modules(_) => false,
        }
    }

    pub fn targets_module(&self, module: &ModuleRecord) -> bool {
        match &self.target {
            Target::Modules(query) => query.matches(module),
            _ => false,
        }
    }

    /// A module configuration: it selects module twins.
    pub fn is_for_modules(&self) -> bool {
        matches!(self.target, Target::Modules(_))
    }
}

/// Every configuration, by id.
#[derive(Clone, Default)]
pub struct ConfigurationSet {
    by_id: imbl::OrdMap<String, Arc<Compiled>>,
}

impl std::fmt::Debug for ConfigurationSet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.by_id.keys()).finish()
    }
}

impl ConfigurationSet {
    pub(crate) fn from_stored(json: &str) -> Result<ConfigurationSet, HubError> {
        let stored: Vec<Configuration> = serde_json::from_str(json)
            .map_err(|error| HubError::InvalidArgument(format!("the stored configurations are unreadable: {error}")))?;
        let mut set = ConfigurationSet::default();
        for configuration in stored {
            let id = configuration.id.clone();
            set.by_id.insert(id, Arc::new(Compiled::new(configuration)?));
        }
        Ok(set)
    }

    fn to_stored(&self) -> String {
        let all: Vec<&Configuration> = self.by_id.values().map(|compiled| &compiled.configuration).collect();
        serde_json::to_string(&all).unwrap_or_else(|_| "[]".into())
    }

    pub fn get(&self, id: &str) -> Option<&Arc<Compiled>> {
        self.by_id.get(id)
    }

    pub fn is_empty(&self) -> bool {
        self.by_id.is_empty()
    }

    pub fn iter(&self) -> impl Iterator<Item = &Arc<Compiled>> {
        self.by_id.values()
    }

    /// Whether two sets are the same one (not changed in between).
    pub fn same(&self, other: &ConfigurationSet) -> bool {
        self.by_id.ptr_eq(&other.by_id)
    }

    /// The configuration that wins `record`: of those with device content that select it, the one that
    /// outranks the others.
    pub fn winner_for(&self, record: &DeviceRecord) -> Option<&Arc<Compiled>> {
        self.best(|compiled| compiled.configuration.has_device_content() && compiled.targets(record))
    }

    /// The module configuration that wins a module twin, as `winner_for` for device twins.
    pub fn winner_for_module(&self, module: &ModuleRecord) -> Option<&Arc<Compiled>> {
        self.best(|compiled| compiled.configuration.has_module_content() && compiled.targets_module(module))
    }

    fn best(&self, candidate: impl Fn(&Compiled) -> bool) -> Option<&Arc<Compiled>> {
        self.by_id
            .values()
            .filter(|compiled| candidate(compiled))
            .reduce(|best, next| {
                if next.configuration.outranks(&best.configuration) {
                    next
                } else {
                    best
                }
            })
    }
}

/// A change to the configurations, or a twin given its configuration's content.
#[derive(Debug)]
pub enum ConfigurationOp {
    Put {
        id: String,
        body: serde_json::Value,
        if_match: IfMatch,
    },
    Delete {
        id: String,
        if_match: IfMatch,
    },
    /// The twin of `device_id` (or of its module `module_id`) given the content of `configuration_id`, if
    /// that one still wins it and the twin does not hold it yet.
    Apply {
        device_id: DeviceId,
        module_id: Option<ModuleId>,
        configuration_id: String,
    },
}

fn not_found(id: &str) -> HubError {
    HubError::ConfigurationNotFound(id.to_owned())
}

impl Batch<'_> {
    pub(crate) fn apply_configuration(
        &mut self,
        op: ConfigurationOp,
        now: Timestamp,
    ) -> Result<WriteOutcome, HubError> {
        match op {
            ConfigurationOp::Put { id, body, if_match } => {
                let previous = self.configurations.get(&id).cloned();
                if let (IfMatch::Etag(given), Some(previous)) = (&if_match, &previous) {
                    if *given != previous.configuration.etag() {
                        return Err(HubError::ConfigurationEtagMismatch(id));
                    }
                }
                if matches!(if_match, IfMatch::Etag(_)) && previous.is_none() {
                    return Err(not_found(&id));
                }
                if previous.is_none() && self.configurations.by_id.len() >= CONFIGURATIONS_MAX {
                    return Err(HubError::TooManyConfigurations(CONFIGURATIONS_MAX));
                }
                let configuration = parse(
                    &id,
                    &body,
                    previous.as_ref().map(|previous| &previous.configuration),
                    &self.config.rules,
                    now,
                )
                .map_err(|error| HubError::InvalidArgument(error.to_string()))?;
                let compiled = Arc::new(Compiled::new(configuration)?);
                self.configurations.by_id.insert(id, Arc::clone(&compiled));
                self.store_configurations();
                Ok(WriteOutcome::Configuration(compiled))
            }
            ConfigurationOp::Delete { id, if_match } => {
                let previous = self.configurations.get(&id).cloned().ok_or_else(|| not_found(&id))?;
                if !if_match.allows(&previous.configuration.etag()) {
                    return Err(HubError::ConfigurationEtagMismatch(id));
                }
                self.configurations.by_id.remove(&id);
                self.store_configurations();
                Ok(WriteOutcome::Done)
            }
            ConfigurationOp::Apply {
                device_id,
                module_id: Some(module_id),
                configuration_id,
            } => {
                let Some(module) = self.modules.get(&(device_id.clone(), module_id.clone())).cloned() else {
                    return Ok(WriteOutcome::Done);
                };
                let Some(winner) = self.configurations.winner_for_module(&module).cloned() else {
                    return Ok(WriteOutcome::Done);
                };
                let desired = module.record.twin.desired.to_json_without_metadata();
                if winner.configuration.id != configuration_id
                    || winner.configuration.module_content_is_held_by(&desired)
                {
                    return Ok(WriteOutcome::Done);
                }
                let patch = winner.configuration.module_patch(&self.config.rules)?;
                self.apply_module(
                    crate::modules::ModuleOp::PatchTwin {
                        device_id,
                        module_id,
                        patch,
                        if_match: IfMatch::Any,
                    },
                    now,
                )
            }
            ConfigurationOp::Apply {
                device_id,
                module_id: None,
                configuration_id,
            } => {
                let Some(record) = self.registry.get(&device_id).cloned() else {
                    return Ok(WriteOutcome::Done);
                };
                let Some(winner) = self.configurations.winner_for(&record).cloned() else {
                    return Ok(WriteOutcome::Done);
                };
                let desired = record.twin.desired.to_json_without_metadata();
                if winner.configuration.id != configuration_id || winner.configuration.is_held_by(&desired) {
                    return Ok(WriteOutcome::Done);
                }
                let patch = winner.configuration.device_patch(&self.config.rules)?;
                self.patch_device_twin(&device_id, &patch, &IfMatch::Any, now)
                    .map(WriteOutcome::Record)
            }
        }
    }

    fn store_configurations(&mut self) {
        self.writes.push(StoreWrite::PutSetting {
            name: CONFIGURATIONS_SETTING.into(),
            value: self.configurations.to_stored(),
        });
    }
}

impl Hub {
    /// `PUT /configurations/{id}`: created, or updated (`If-Match` given: only at that etag).
    pub async fn put_configuration(
        &self,
        id: String,
        body: serde_json::Value,
        if_match: IfMatch,
    ) -> Result<Arc<Compiled>, HubError> {
        match submit(
            &self.writes,
            WriteOp::Configuration(ConfigurationOp::Put { id, body, if_match }),
        )
        .await?
        {
            WriteOutcome::Configuration(compiled) => Ok(compiled),
            _ => Err(HubError::Internal(
                "the writer answered a configuration write with no configuration",
            )),
        }
    }

    pub async fn delete_configuration(&self, id: String, if_match: IfMatch) -> Result<(), HubError> {
        submit(
            &self.writes,
            WriteOp::Configuration(ConfigurationOp::Delete { id, if_match }),
        )
        .await
        .map(|_| ())
    }

    /// Every configuration with its metrics, in id order.
    pub async fn configurations(&self) -> Vec<(Arc<Compiled>, ConfigurationMetrics)> {
        self.read_barrier().await;
        let snapshot = self.snapshot();
        snapshot
            .configurations
            .iter()
            .map(|compiled| (Arc::clone(compiled), metrics(&snapshot, compiled)))
            .collect()
    }

    pub async fn configuration(&self, id: &str) -> Result<(Arc<Compiled>, ConfigurationMetrics), HubError> {
        self.read_barrier().await;
        let snapshot = self.snapshot();
        let compiled = snapshot.configurations.get(id).cloned().ok_or_else(|| not_found(id))?;
        let metrics = metrics(&snapshot, &compiled);
        Ok((compiled, metrics))
    }

    /// `POST /devices/{id}/applyConfigurationContent`: `deviceContent` patched into the device's twin, and
    /// `modulesContent` (an edge deployment: `$edgeAgent`, `$edgeHub`, ...) into each named module's twin,
    /// the module created first where the device has none of that name (IoT Hub gives every edge device
    /// its `$edgeAgent` and `$edgeHub`).
    pub async fn apply_configuration_content(
        &self,
        device_id: DeviceId,
        content: &serde_json::Value,
    ) -> Result<(), HubError> {
        self.read_barrier().await;
        self.device(&device_id)?;
        let body = serde_json::json!({ "content": content });
        let parsed = parse("applied-content", &body, None, self.rules(), Timestamp::now())
            .map_err(|error| HubError::InvalidArgument(error.to_string()))?;
        if parsed.has_device_content() {
            let patch = parsed.device_patch(self.rules())?;
            self.patch_twin(device_id.clone(), patch, IfMatch::Any).await?;
        }
        for (module, twin) in &parsed.modules_content {
            let module_id =
                twinhub_core::ModuleId::new(module).map_err(|error| HubError::InvalidArgument(error.to_string()))?;
            let desired = twin
                .get("properties.desired")
                .cloned()
                .unwrap_or_else(|| serde_json::json!({}));
            let patch = twinhub_core::TwinPatch::from_json(
                &serde_json::json!({"properties": {"desired": desired}}),
                self.rules(),
            )?;
            if self.module(&device_id, &module_id).is_err() {
                let draft =
                    twinhub_core::module::ModuleDraft::from_json(&serde_json::json!({}), &device_id, &module_id)?;
                match self.put_module(device_id.clone(), draft, IfMatch::Absent).await {
                    Ok(_) | Err(HubError::ModuleAlreadyExists { .. }) => {}
                    Err(error) => return Err(error),
                }
            }
            self.patch_module_twin(device_id.clone(), module_id, patch, IfMatch::Any)
                .await?;
        }
        Ok(())
    }

    /// `POST /configurations/testQueries`: what is wrong with a target condition and metric queries
    /// (an empty text: nothing).
    pub fn test_configuration_queries(
        &self,
        target_condition: &str,
        metric_queries: &BTreeMap<String, String>,
    ) -> (String, BTreeMap<String, String>) {
        let condition = target_condition.trim();
        let condition_error = match condition {
            "" | "*" => String::new(),
            condition => CompiledQuery::parse(&format!("SELECT * FROM devices WHERE {condition}"))
                .err()
                .map(|error| error.to_string())
                .unwrap_or_default(),
        };
        let metric_errors = metric_queries
            .iter()
            .map(|(name, query)| {
                let error = CompiledQuery::parse(query).err().map(|error| error.to_string());
                (name.clone(), error.unwrap_or_default())
            })
            .collect();
        (condition_error, metric_errors)
    }
}

/// What a configuration's queries count over a snapshot.
fn metrics(snapshot: &crate::Snapshot, compiled: &Arc<Compiled>) -> ConfigurationMetrics {
    let mut metrics = ConfigurationMetrics::default();
    for module in snapshot.modules.values().filter(|_| compiled.is_for_modules()) {
        if !compiled.targets_module(module) {
            continue;
        }
        metrics.targeted += 1;
        let wins = snapshot
            .configurations
            .winner_for_module(module)
            .is_some_and(|winner| Arc::ptr_eq(winner, compiled));
        let desired = module.record.twin.desired.to_json_without_metadata();
        if wins && compiled.configuration.module_content_is_held_by(&desired) {
            metrics.applied += 1;
        }
    }
    for record in snapshot.devices.values() {
        if !compiled.targets(record) {
            continue;
        }
        metrics.targeted += 1;
        let wins = snapshot
            .configurations
            .winner_for(record)
            .is_some_and(|winner| Arc::ptr_eq(winner, compiled));
        if wins
            && compiled
                .configuration
                .is_held_by(&record.twin.desired.to_json_without_metadata())
        {
            metrics.applied += 1;
        }
    }
    for (name, query) in &compiled.configuration.metric_queries {
        let count = match CompiledQuery::parse(query) {
            Ok(query) if query.query.from == twinhub_query::ast::Collection::DeviceModules => snapshot
                .modules
                .values()
                .filter(|module| query.matches(&***module))
                .count(),
            Ok(query) => snapshot
                .devices
                .values()
                .filter(|record| query.matches(&***record))
                .count(),
            Err(_) => 0,
        };
        metrics.custom.insert(name.clone(), count as u64);
    }
    metrics
}
