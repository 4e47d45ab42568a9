//! Bulk registry operations (`POST /devices`): up to 100 creates, updates and deletes in one commit.
//! Each operation succeeds or fails on its own, as on IoT Hub; the failures are listed in the outcome.
//! Ref: service-rest notes §4.1 (Node sends `Update`, `DeleteIfMatchETag`, ... capitalised; Python lower case).

use crate::writer::Batch;
use crate::{HubError, BULK_DEVICES_MAX};
use std::collections::HashSet;
use twinhub_core::etag::IfMatch;
use twinhub_core::json::DeviceDraft;
use twinhub_core::twin::TwinPatch;
use twinhub_core::{DeviceId, Timestamp};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ImportMode {
    Create,
    Update,
    UpdateIfMatchETag,
    Delete,
    DeleteIfMatchETag,
    UpdateTwin,
    UpdateTwinIfMatchETag,
}

impl ImportMode {
    /// Case-insensitive, as the SDKs disagree on case.
    pub fn parse(text: &str) -> Option<ImportMode> {
        Some(match text.to_ascii_lowercase().as_str() {
            "create" => ImportMode::Create,
            "update" => ImportMode::Update,
            "updateifmatchetag" => ImportMode::UpdateIfMatchETag,
            "delete" => ImportMode::Delete,
            "deleteifmatchetag" => ImportMode::DeleteIfMatchETag,
            "updatetwin" => ImportMode::UpdateTwin,
            "updatetwinifmatchetag" => ImportMode::UpdateTwinIfMatchETag,
            _ => return None,
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            ImportMode::Create => "create",
            ImportMode::Update => "update",
            ImportMode::UpdateIfMatchETag => "updateIfMatchETag",
            ImportMode::Delete => "delete",
            ImportMode::DeleteIfMatchETag => "deleteIfMatchETag",
            ImportMode::UpdateTwin => "updateTwin",
            ImportMode::UpdateTwinIfMatchETag => "updateTwinIfMatchETag",
        }
    }
}

#[derive(Clone, Debug)]
pub struct BulkOperation {
    pub mode: ImportMode,
    pub draft: DeviceDraft,
    /// The device etag for the `IfMatchETag` modes.
    pub etag: Option<String>,
    /// The twin etag for `updateTwinIfMatchETag`.
    pub twin_etag: Option<String>,
    /// Tags and desired to set on create or merge on updateTwin.
    pub twin_patch: TwinPatch,
}

/// One operation that failed, and why (the error the single-device API would have given).
#[derive(Debug)]
pub struct BulkError {
    pub device_id: DeviceId,
    pub mode: ImportMode,
    pub error: HubError,
}

#[derive(Debug, Default)]
pub struct BulkOutcome {
    pub errors: Vec<BulkError>,
}

impl BulkOutcome {
    pub fn is_successful(&self) -> bool {
        self.errors.is_empty()
    }
}

pub(crate) fn check_request(operations: &[BulkOperation]) -> Result<(), HubError> {
    if operations.is_empty() || operations.len() > BULK_DEVICES_MAX {
        return Err(HubError::InvalidArgument(format!(
            "a bulk request carries 1 to {BULK_DEVICES_MAX} devices; this one has {}",
            operations.len()
        )));
    }
    let mut seen = HashSet::new();
    for operation in operations {
        if !seen.insert(&operation.draft.device_id) {
            return Err(HubError::DeviceDefinedMultipleTimes(operation.draft.device_id.clone()));
        }
    }
    Ok(())
}

fn if_match(etag: &Option<String>, required: bool) -> IfMatch {
    match (required, etag) {
        (true, Some(etag)) => IfMatch::parse(Some(etag)),
        // An IfMatchETag mode without an etag can match nothing.
        (true, None) => IfMatch::Etag(String::new()),
        (false, _) => IfMatch::Any,
    }
}

pub(crate) fn apply(batch: &mut Batch<'_>, operations: Vec<BulkOperation>, now: Timestamp) -> BulkOutcome {
    let mut outcome = BulkOutcome::default();
    for operation in operations {
        let device_id = operation.draft.device_id.clone();
        let mode = operation.mode;
        if let Err(error) = apply_one(batch, operation, now) {
            outcome.errors.push(BulkError { device_id, mode, error });
        }
    }
    outcome
}

fn apply_one(batch: &mut Batch<'_>, operation: BulkOperation, now: Timestamp) -> Result<(), HubError> {
    let id = operation.draft.device_id.clone();
    match operation.mode {
        ImportMode::Create => {
            let record = batch.put_device(operation.draft, &IfMatch::Absent, now)?;
            if operation.twin_patch != TwinPatch::default() {
                let (twin, _) = record.twin.patched(&operation.twin_patch, now, &batch.config.rules)?;
                batch.store_twin(&record, twin);
            }
            Ok(())
        }
        ImportMode::Update | ImportMode::UpdateIfMatchETag => {
            batch.existing(&id)?;
            let condition = if_match(&operation.etag, operation.mode == ImportMode::UpdateIfMatchETag);
            batch.put_device(operation.draft, &condition, now).map(|_| ())
        }
        ImportMode::Delete | ImportMode::DeleteIfMatchETag => {
            let condition = if_match(&operation.etag, operation.mode == ImportMode::DeleteIfMatchETag);
            batch.delete_device(&id, &condition)
        }
        ImportMode::UpdateTwin | ImportMode::UpdateTwinIfMatchETag => {
            let current = batch.existing(&id)?;
            let condition = if_match(
                &operation.twin_etag,
                operation.mode == ImportMode::UpdateTwinIfMatchETag,
            );
            if !condition.allows(&current.twin.etag()) {
                return Err(HubError::PreconditionFailed {
                    device: id,
                    given: operation.twin_etag.unwrap_or_default(),
                });
            }
            let (twin, change) = current.twin.patched(&operation.twin_patch, now, &batch.config.rules)?;
            batch.announce_patch(
                crate::announce::TwinOwner::Device(&current),
                &twin,
                &operation.twin_patch,
                change.as_ref(),
                now,
            );
            if let Some(change) = change {
                batch
                    .events
                    .push(crate::HubEvent::DesiredChanged { device_id: id, change });
            }
            batch.store_twin(&current, twin);
            Ok(())
        }
    }
}
