//! Module identities and module twins: kept beside the devices in the snapshot, changed only by the
//! writer, with the same rules for etags, `If-Match` and twin versions as devices. Deleting a device
//! deletes its modules in the same commit.

use crate::announce::TwinOwner;
use crate::device_router::Endpoint;
use crate::writer::PresenceEvent;
use crate::writer::{submit, Batch, WriteOp, WriteOutcome};
use crate::{Hub, HubError};
use std::sync::Arc;
use twinhub_core::etag::IfMatch;
use twinhub_core::module::{ModuleDraft, ModuleRecord};
use twinhub_core::record::Presence;
use twinhub_core::twin::{ReportedPatch, TwinPatch, TwinReplacement};
use twinhub_core::{DeviceId, DeviceRecord, ModuleId, Timestamp};
use twinhub_store::StoreWrite;

/// A change to a module, applied by the writer.
pub(crate) enum ModuleOp {
    /// Create or replace a module identity. No `If-Match`: create only; `*`: either; an etag: replace
    /// that version only.
    Put {
        device_id: DeviceId,
        draft: ModuleDraft,
        if_match: IfMatch,
    },
    Delete {
        device_id: DeviceId,
        module_id: ModuleId,
        if_match: IfMatch,
    },
    PatchTwin {
        device_id: DeviceId,
        module_id: ModuleId,
        patch: TwinPatch,
        if_match: IfMatch,
    },
    ReplaceTwin {
        device_id: DeviceId,
        module_id: ModuleId,
        replacement: TwinReplacement,
        if_match: IfMatch,
    },
    /// The module's own reported properties, from its connection.
    PatchReported {
        device_id: DeviceId,
        module_id: ModuleId,
        patch: ReportedPatch,
    },
    /// A module connection opened, closed or showed activity.
    Presence {
        device_id: DeviceId,
        module_id: ModuleId,
        event: PresenceEvent,
    },
}

/// The module an endpoint names, if any.
fn module_of(endpoint: &Endpoint) -> Result<Option<ModuleId>, HubError> {
    endpoint
        .module_id
        .as_deref()
        .map(|module| ModuleId::new(module).map_err(|error| HubError::InvalidArgument(error.to_string())))
        .transpose()
}

fn not_found(device_id: &DeviceId, module_id: &ModuleId) -> HubError {
    HubError::ModuleNotFound {
        device: device_id.clone(),
        module: module_id.clone(),
    }
}

fn precondition_failed(device_id: &DeviceId, if_match: &IfMatch) -> HubError {
    HubError::PreconditionFailed {
        device: device_id.clone(),
        given: match if_match {
            IfMatch::Etag(etag) => etag.clone(),
            _ => String::new(),
        },
    }
}

impl Batch<'_> {
    pub(crate) fn apply_module(&mut self, op: ModuleOp, now: Timestamp) -> Result<WriteOutcome, HubError> {
        match op {
            ModuleOp::Put {
                device_id,
                draft,
                if_match,
            } => {
                self.existing(&device_id)?;
                let key = (device_id.clone(), draft.module_id.clone());
                let existing = self.modules.get(&key).cloned();
                match (&existing, &if_match) {
                    (Some(_), IfMatch::Absent) => {
                        return Err(HubError::ModuleAlreadyExists {
                            device: device_id,
                            module: draft.module_id,
                        })
                    }
                    (Some(existing), _) if !if_match.allows(&existing.etag()) => {
                        return Err(precondition_failed(&device_id, &if_match))
                    }
                    (None, IfMatch::Etag(_)) => return Err(not_found(&device_id, &draft.module_id)),
                    _ => {}
                }
                let module = self.store_module(draft.into_record(existing.as_deref(), now)?);
                if existing.is_none() {
                    self.announce_lifecycle(TwinOwner::Module(&module), true, now);
                }
                Ok(WriteOutcome::Module(module))
            }
            ModuleOp::Delete {
                device_id,
                module_id,
                if_match,
            } => {
                let existing = self.module(&device_id, &module_id)?;
                if !if_match.allows(&existing.etag()) {
                    return Err(precondition_failed(&device_id, &if_match));
                }
                self.forget_module(&device_id, &module_id);
                Ok(WriteOutcome::Deleted)
            }
            ModuleOp::PatchTwin {
                device_id,
                module_id,
                patch,
                if_match,
            } => {
                let existing = self.module_twin_for_write(&device_id, &module_id, &if_match)?;
                let (twin, desired) = existing.record.twin.patched(&patch, now, &self.config.rules)?;
                self.announce_patch(TwinOwner::Module(&existing), &twin, &patch, desired.as_ref(), now);
                if let Some(change) = desired {
                    self.events.push(crate::HubEvent::ModuleDesiredChanged {
                        device_id: device_id.clone(),
                        module_id: module_id.clone(),
                        change,
                    });
                }
                let record =
                    DeviceRecord::new(existing.record.identity.clone(), twin, existing.record.presence.clone());
                Ok(WriteOutcome::Module(self.store_module(existing.with_record(record))))
            }
            ModuleOp::ReplaceTwin {
                device_id,
                module_id,
                replacement,
                if_match,
            } => {
                let existing = self.module_twin_for_write(&device_id, &module_id, &if_match)?;
                let (twin, change) = existing.record.twin.replaced(&replacement, now, &self.config.rules)?;
                self.events.push(crate::HubEvent::ModuleDesiredChanged {
                    device_id: device_id.clone(),
                    module_id: module_id.clone(),
                    change,
                });
                let record =
                    DeviceRecord::new(existing.record.identity.clone(), twin, existing.record.presence.clone());
                let module = self.store_module(existing.with_record(record));
                self.announce_replacement(TwinOwner::Module(&module), now);
                Ok(WriteOutcome::Module(module))
            }
            ModuleOp::PatchReported {
                device_id,
                module_id,
                patch,
            } => {
                let existing = self.module(&device_id, &module_id)?;
                let twin = existing.record.twin.with_reported(&patch, now, &self.config.rules)?;
                self.announce_reported(TwinOwner::Module(&existing), &twin, &patch, now);
                let presence = Presence {
                    last_activity: Some(now),
                    ..existing.record.presence.clone()
                };
                let record = DeviceRecord::new(existing.record.identity.clone(), twin, presence);
                Ok(WriteOutcome::Module(self.store_module(existing.with_record(record))))
            }
            ModuleOp::Presence {
                device_id,
                module_id,
                event,
            } => self.presence(
                twinhub_store::Holder {
                    device_id,
                    module_id: Some(module_id),
                },
                event,
                now,
            ),
        }
    }

    /// Puts `presence` in a module's record, announcing a change of its connection state; the module
    /// as it is now.
    pub(crate) fn show_module_presence(
        &mut self,
        device_id: &DeviceId,
        module_id: &ModuleId,
        presence: Presence,
        now: Timestamp,
    ) -> Result<WriteOutcome, HubError> {
        let existing = self.module(device_id, module_id)?;
        if presence == existing.record.presence {
            return Ok(WriteOutcome::Module(existing));
        }
        if presence.connection_state != existing.record.presence.connection_state {
            self.announce_connection(TwinOwner::Module(&existing), presence.connection_state, now);
        }
        let record = DeviceRecord::new(existing.record.identity.clone(), existing.record.twin.clone(), presence);
        Ok(WriteOutcome::Module(self.store_module(existing.with_record(record))))
    }

    fn module(&self, device_id: &DeviceId, module_id: &ModuleId) -> Result<Arc<ModuleRecord>, HubError> {
        self.modules
            .get(&(device_id.clone(), module_id.clone()))
            .cloned()
            .ok_or_else(|| not_found(device_id, module_id))
    }

    /// The module, when `If-Match` allows writing its twin (the twin's etag).
    fn module_twin_for_write(
        &self,
        device_id: &DeviceId,
        module_id: &ModuleId,
        if_match: &IfMatch,
    ) -> Result<Arc<ModuleRecord>, HubError> {
        let module = self.module(device_id, module_id)?;
        if !if_match.allows(&module.record.twin.etag()) {
            return Err(precondition_failed(device_id, if_match));
        }
        Ok(module)
    }

    fn store_module(&mut self, module: ModuleRecord) -> Arc<ModuleRecord> {
        let module = Arc::new(module);
        let key = (module.device_id().clone(), module.module_id.clone());
        self.touched_modules.push(key.clone());
        self.modules.insert(key, Arc::clone(&module));
        self.writes.push(StoreWrite::UpsertModule(Arc::clone(&module)));
        module
    }

    fn forget_module(&mut self, device_id: &DeviceId, module_id: &ModuleId) {
        let key = (device_id.clone(), module_id.clone());
        self.touched_modules.push(key.clone());
        if let Some(module) = self.modules.remove(&key) {
            self.announce_lifecycle(TwinOwner::Module(&module), false, Timestamp::now());
        }
        self.writes.push(StoreWrite::DeleteModule {
            device_id: device_id.clone(),
            module_id: module_id.clone(),
        });
    }

    /// Every module of a device being deleted goes with it, in the same commit.
    pub(crate) fn delete_modules_of(&mut self, device_id: &DeviceId) {
        let module_ids: Vec<ModuleId> = modules_of(&self.modules, device_id)
            .map(|module| module.module_id.clone())
            .collect();
        for module_id in module_ids {
            self.forget_module(device_id, &module_id);
        }
    }

    /// Another node's module write, already stored.
    pub(crate) fn module_stored(&mut self, write: StoreWrite) {
        match write {
            StoreWrite::UpsertModule(module) => {
                let key = (module.device_id().clone(), module.module_id.clone());
                self.touched_modules.push(key.clone());
                self.modules.insert(key, module);
            }
            StoreWrite::DeleteModule { device_id, module_id } => {
                let key = (device_id, module_id);
                self.touched_modules.push(key.clone());
                self.modules.remove(&key);
            }
            _ => {}
        }
    }
}

/// The modules of `device_id`, in module id order.
pub(crate) fn modules_of<'m>(
    modules: &'m crate::Modules,
    device_id: &DeviceId,
) -> impl Iterator<Item = &'m Arc<ModuleRecord>> {
    let device_id = device_id.clone();
    modules
        .range((device_id.clone(), min_module_id())..)
        .take_while(move |((device, _), _)| *device == device_id)
        .map(|(_, module)| module)
}

/// The smallest module id there is (ids are at least one character; "!" is the smallest allowed).
fn min_module_id() -> ModuleId {
    // Every valid id sorts at or after "!" (0x21), the smallest character ids may hold.
    ModuleId::new("!").unwrap_or_else(|_| unreachable!("'!' is a valid module id"))
}

impl Hub {
    /// The twin of a connection's identity: its device's, or its module's.
    pub fn twin_of(&self, endpoint: &Endpoint) -> Result<Arc<DeviceRecord>, HubError> {
        match module_of(endpoint)? {
            None => self.device(&endpoint.device_id),
            Some(module_id) => Ok(Arc::clone(&self.module(&endpoint.device_id, &module_id)?.record)),
        }
    }

    /// Reported properties from a device's or a module's connection.
    pub async fn patch_reported_of(
        &self,
        endpoint: &Endpoint,
        patch: ReportedPatch,
    ) -> Result<Arc<DeviceRecord>, HubError> {
        match module_of(endpoint)? {
            None => self.patch_reported(endpoint.device_id.clone(), patch).await,
            Some(module_id) => {
                let op = ModuleOp::PatchReported {
                    device_id: endpoint.device_id.clone(),
                    module_id,
                    patch,
                };
                let module = submit(&self.writes, WriteOp::Module(op)).await?.module()?;
                Ok(Arc::clone(&module.record))
            }
        }
    }

    /// A device's or module's connection opened (`Connected`), closed or showed activity.
    pub async fn presence_of(&self, endpoint: &Endpoint, event: PresenceEvent) -> Result<(), HubError> {
        match module_of(endpoint)? {
            None => match event {
                PresenceEvent::Connected => self.device_connected(endpoint.device_id.clone()).await.map(|_| ()),
                PresenceEvent::Disconnected => self.device_disconnected(endpoint.device_id.clone()).await,
                PresenceEvent::Active => self.device_active(endpoint.device_id.clone()).await,
            },
            Some(module_id) => {
                let op = ModuleOp::Presence {
                    device_id: endpoint.device_id.clone(),
                    module_id,
                    event,
                };
                submit(&self.writes, WriteOp::Module(op)).await.map(|_| ())
            }
        }
    }

    /// A module identity with its twin; `ModuleNotFound` when the device has no such module.
    pub fn module(&self, device_id: &DeviceId, module_id: &ModuleId) -> Result<Arc<ModuleRecord>, HubError> {
        self.snapshot()
            .modules
            .get(&(device_id.clone(), module_id.clone()))
            .cloned()
            .ok_or_else(|| not_found(device_id, module_id))
    }

    /// A device's modules, in module id order; `DeviceNotFound` when there is no such device.
    pub fn modules_of(&self, device_id: &DeviceId) -> Result<Vec<Arc<ModuleRecord>>, HubError> {
        self.device(device_id)?;
        let snapshot = self.snapshot();
        Ok(modules_of(&snapshot.modules, device_id).cloned().collect())
    }

    pub async fn put_module(
        &self,
        device_id: DeviceId,
        draft: ModuleDraft,
        if_match: IfMatch,
    ) -> Result<Arc<ModuleRecord>, HubError> {
        let op = ModuleOp::Put {
            device_id,
            draft,
            if_match,
        };
        submit(&self.writes, WriteOp::Module(op)).await?.module()
    }

    pub async fn delete_module(
        &self,
        device_id: DeviceId,
        module_id: ModuleId,
        if_match: IfMatch,
    ) -> Result<(), HubError> {
        let op = ModuleOp::Delete {
            device_id,
            module_id,
            if_match,
        };
        submit(&self.writes, WriteOp::Module(op)).await.map(|_| ())
    }

    pub async fn patch_module_twin(
        &self,
        device_id: DeviceId,
        module_id: ModuleId,
        patch: TwinPatch,
        if_match: IfMatch,
    ) -> Result<Arc<ModuleRecord>, HubError> {
        let op = ModuleOp::PatchTwin {
            device_id,
            module_id,
            patch,
            if_match,
        };
        submit(&self.writes, WriteOp::Module(op)).await?.module()
    }

    pub async fn replace_module_twin(
        &self,
        device_id: DeviceId,
        module_id: ModuleId,
        replacement: TwinReplacement,
        if_match: IfMatch,
    ) -> Result<Arc<ModuleRecord>, HubError> {
        let op = ModuleOp::ReplaceTwin {
            device_id,
            module_id,
            replacement,
            if_match,
        };
        submit(&self.writes, WriteOp::Module(op)).await?.module()
    }
}
