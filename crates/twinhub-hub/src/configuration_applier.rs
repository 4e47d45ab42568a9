//! Keeps every twin holding the content of the configuration that wins it, continuously: a quarter of a
//! second after any change of the twins or of the configurations, the twins whose winning configuration's
//! content they do not hold are given it (a device created or retagged into a configuration's target, a
//! new or reprioritised configuration). IoT Hub re-evaluates every few minutes; twinhub within a second.
//!
//! Runs on every node of a cluster: each application is a writer operation checked against the twin as
//! the batch has it, so a twin is written once whoever proposes it.

use crate::configurations::ConfigurationOp;
use crate::writer::{submit, WriteOp};
use crate::{Hub, HubError, Registry};
use futures_util::future::join_all;
use std::sync::Weak;
use std::time::Duration;
use twinhub_core::{DeviceId, ModuleId};

/// How soon after a change the applier looks.
const LOOK_EVERY: Duration = Duration::from_millis(250);
/// Twins given their content per look: a configuration over a large fleet leaves the writer room.
const APPLIED_PER_LOOK_MAX: usize = 2_000;

pub(crate) async fn run(hub: Weak<Hub>) {
    let mut ticker = tokio::time::interval(LOOK_EVERY);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // What the last complete look saw: nothing to do again until either changes.
    let mut seen: Option<(Registry, crate::Modules, crate::configurations::ConfigurationSet)> = None;
    loop {
        ticker.tick().await;
        let Some(hub) = hub.upgrade() else { return };
        let snapshot = hub.snapshot();
        if snapshot.configurations.is_empty() {
            seen = None;
            continue;
        }
        if let Some((devices, modules, configurations)) = &seen {
            if devices.ptr_eq(&snapshot.devices)
                && modules.ptr_eq(&snapshot.modules)
                && configurations.same(&snapshot.configurations)
            {
                continue;
            }
        }
        let looked_at = std::sync::Arc::clone(&snapshot);
        let due = tokio::task::spawn_blocking(move || due(&looked_at))
            .await
            .unwrap_or_default();
        let complete = due.len() <= APPLIED_PER_LOOK_MAX;
        let applies = due
            .into_iter()
            .take(APPLIED_PER_LOOK_MAX)
            .map(|(device_id, module_id, configuration_id)| {
                submit(
                    &hub.writes,
                    WriteOp::Configuration(ConfigurationOp::Apply {
                        device_id,
                        module_id,
                        configuration_id,
                    }),
                )
            });
        let mut failed = false;
        for result in join_all(applies).await {
            match result {
                Ok(_) => {}
                Err(HubError::ShuttingDown) => return,
                Err(error) => {
                    failed = true;
                    tracing::warn!(%error, "a configuration could not be applied to a twin; trying again");
                }
            }
        }
        seen = (complete && !failed).then(|| {
            (
                snapshot.devices.clone(),
                snapshot.modules.clone(),
                snapshot.configurations.clone(),
            )
        });
    }
}

/// The device and module twins that do not hold the content of the configuration that wins them, with
/// that configuration.
fn due(snapshot: &crate::Snapshot) -> Vec<(DeviceId, Option<ModuleId>, String)> {
    let configurations = &snapshot.configurations;
    let devices = snapshot.devices.values().filter_map(|record| {
        let winner = configurations.winner_for(record)?;
        let desired = record.twin.desired.to_json_without_metadata();
        (!winner.configuration.is_held_by(&desired))
            .then(|| (record.identity.device_id.clone(), None, winner.configuration.id.clone()))
    });
    let for_modules = configurations.iter().any(|compiled| compiled.is_for_modules());
    let modules = snapshot.modules.values().filter(|_| for_modules).filter_map(|module| {
        let winner = configurations.winner_for_module(module)?;
        let desired = module.record.twin.desired.to_json_without_metadata();
        (!winner.configuration.module_content_is_held_by(&desired)).then(|| {
            (
                module.device_id().clone(),
                Some(module.module_id.clone()),
                winner.configuration.id.clone(),
            )
        })
    });
    devices.chain(modules).collect()
}
