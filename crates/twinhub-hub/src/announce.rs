//! The hub's own messages a batch's writes make (twin changes, lifecycle, connection state), for a device
//! or a module alike, built only for the sources some route takes. Routed after the commit
//! (`routing.rs`).

use crate::writer::Batch;
use twinhub_core::event::EventOrigin;
use twinhub_core::hub_message::{TwinChanges, TwinOperation};
use twinhub_core::module::ModuleRecord;
use twinhub_core::routing::RoutingSource;
use twinhub_core::twin::{DesiredChange, ReportedPatch, SectionWrite, TwinPatch};
use twinhub_core::{ConnectionState, DeviceRecord, Timestamp, Twin};

/// Whose twin a hub message is about: a device, or one of its modules (IoT Hub's module form: `moduleId`,
/// `iothub-connection-module-id`, the module twin as the document).
#[derive(Clone, Copy)]
pub(crate) enum TwinOwner<'a> {
    Device(&'a DeviceRecord),
    Module(&'a ModuleRecord),
}

impl TwinOwner<'_> {
    fn record(&self) -> &DeviceRecord {
        match self {
            TwinOwner::Device(record) => record,
            TwinOwner::Module(module) => &module.record,
        }
    }

    /// Who the message is about, as consumers see it (`iothub-connection-device-id`, `-module-id`).
    fn origin(&self) -> EventOrigin {
        let identity = &self.record().identity;
        EventOrigin {
            device_id: identity.device_id.clone(),
            module_id: match self {
                TwinOwner::Device(_) => None,
                TwinOwner::Module(module) => Some(module.module_id.as_str().to_owned()),
            },
            generation_id: identity.generation_id.clone(),
        }
    }

    /// The twin document lifecycle events and replacements carry.
    fn document(&self) -> serde_json::Value {
        match self {
            TwinOwner::Device(record) => twinhub_core::json::twin_json(record),
            TwinOwner::Module(module) => twinhub_core::module::module_twin_json(module),
        }
    }
}

impl Batch<'_> {
    fn announces(&self, source: RoutingSource) -> bool {
        self.announcer.sources.contains(source)
    }

    /// `deviceConnected` or `deviceDisconnected`.
    pub(crate) fn announce_connection(&mut self, owner: TwinOwner, state: ConnectionState, now: Timestamp) {
        if self.announces(RoutingSource::DeviceConnectionStateEvents) {
            let connected = state == ConnectionState::Connected;
            let message = self.announcer.messages.connection_state(owner.origin(), connected, now);
            self.hub_messages.push(message);
        }
    }

    /// `createDeviceIdentity` or `deleteDeviceIdentity`, with the twin.
    pub(crate) fn announce_lifecycle(&mut self, owner: TwinOwner, created: bool, now: Timestamp) {
        if self.announces(RoutingSource::DeviceLifecycleEvents) {
            let message = self
                .announcer
                .messages
                .lifecycle(owner.origin(), created, &owner.document(), now);
            self.hub_messages.push(message);
        }
    }

    /// `replaceTwin`, with the twin as replaced (`owner` is the new record).
    pub(crate) fn announce_replacement(&mut self, owner: TwinOwner, now: Timestamp) {
        if self.announces(RoutingSource::TwinChangeEvents) {
            let message = self.announcer.messages.twin_change(
                owner.origin(),
                TwinOperation::Replace,
                &owner.record().twin,
                &TwinChanges::default(),
                Some(owner.document()),
                now,
            );
            self.hub_messages.push(message);
        }
    }

    /// `updateTwin` for a reported patch (`owner` as it was, `twin` as it is now).
    pub(crate) fn announce_reported(&mut self, owner: TwinOwner, twin: &Twin, patch: &ReportedPatch, now: Timestamp) {
        if self.announces(RoutingSource::TwinChangeEvents) {
            let changes = TwinChanges {
                reported: Some(&patch.0),
                ..TwinChanges::default()
            };
            self.announce_update(owner, twin, &changes, now);
        }
    }

    /// `updateTwin` for a back end's patch of tags and desired properties, when it changed anything
    /// (`owner` as it was, `twin` as it is now).
    pub(crate) fn announce_patch(
        &mut self,
        owner: TwinOwner,
        twin: &Twin,
        patch: &TwinPatch,
        desired: Option<&DesiredChange>,
        now: Timestamp,
    ) {
        if !self.announces(RoutingSource::TwinChangeEvents) || twin.version == owner.record().twin.version {
            return;
        }
        let cleared;
        let tags = match &patch.tags {
            Some(SectionWrite::Merge(tags)) => Some(tags),
            Some(SectionWrite::Clear) => {
                // Every tag it had, removed.
                cleared = owner
                    .record()
                    .twin
                    .tags
                    .iter()
                    .map(|(key, _)| (key.to_owned(), serde_json::Value::Null))
                    .collect();
                Some(&cleared)
            }
            None => None,
        };
        let changes = TwinChanges {
            tags,
            desired: desired.map(|change| &change.patch),
            reported: None,
        };
        self.announce_update(owner, twin, &changes, now);
    }

    fn announce_update(&mut self, owner: TwinOwner, twin: &Twin, changes: &TwinChanges, now: Timestamp) {
        let message =
            self.announcer
                .messages
                .twin_change(owner.origin(), TwinOperation::Update, twin, changes, None, now);
        self.hub_messages.push(message);
    }
}
