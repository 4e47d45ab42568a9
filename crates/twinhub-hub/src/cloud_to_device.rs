//! Cloud-to-device messages in the hub: every device's queue, kept by the writer (so queue changes are
//! group-committed with everything else, and never race), the rules of `twinhub_core::c2d`, and the
//! feedback records waiting for back ends.
//!
//! Every change to a queue is a store write in the same batch: a message is durable before its send is
//! acknowledged, a redelivery's count before the message goes out again, a settlement before it is
//! answered. A first delivery's count is not stored (after a crash the message comes again with count 1,
//! which it would anyway). Locks are not stored: no connection survives a restart, so every message is
//! unlocked after one.

use crate::writer::Batch;
use crate::HubError;
use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use tokio::sync::Notify;
use twinhub_core::c2d::{Feedback, FeedbackRecord, OutgoingMessage, QueuedMessage, Settlement};
use twinhub_core::{DeviceId, Timestamp};
use twinhub_store::StoreWrite;

/// Feedback records kept for back ends at most; past it the oldest go (logged), so a hub nobody reads
/// feedback from does not grow without end.
pub const FEEDBACK_RECORDS_MAX: usize = 100_000;

/// A change to a device's queue.
#[derive(Debug)]
pub(crate) enum CloudToDeviceOp {
    Send(Box<OutgoingMessage>),
    /// The next message, locked with this token.
    Receive {
        lock_token: String,
    },
    Settle {
        lock_token: String,
        settlement: Settlement,
    },
    Purge,
}

/// Every device's queue, as of the last commit (and, while a batch is built, as of that batch).
#[derive(Default)]
pub(crate) struct CloudToDeviceState {
    queues: HashMap<DeviceId, twinhub_core::c2d::DeviceQueue>,
    next_feedback: u64,
    /// Queues as they were before this batch changed them, to put back if its commit fails.
    undo: HashMap<DeviceId, Option<twinhub_core::c2d::DeviceQueue>>,
    undo_next_feedback: u64,
}

impl CloudToDeviceState {
    /// The queues and feedback the store kept; messages of devices that no longer exist are left out.
    pub(crate) fn restore(
        messages: Vec<(DeviceId, QueuedMessage)>,
        feedback: &[(u64, FeedbackRecord)],
        device_exists: impl Fn(&DeviceId) -> bool,
    ) -> CloudToDeviceState {
        let mut by_device: HashMap<DeviceId, Vec<QueuedMessage>> = HashMap::new();
        for (device_id, message) in messages {
            if device_exists(&device_id) {
                by_device.entry(device_id).or_default().push(message);
            }
        }
        CloudToDeviceState {
            queues: by_device
                .into_iter()
                .map(|(device_id, messages)| (device_id, twinhub_core::c2d::DeviceQueue::restore(messages)))
                .collect(),
            next_feedback: feedback.iter().map(|(number, _)| number + 1).max().unwrap_or(0),
            undo: HashMap::new(),
            undo_next_feedback: 0,
        }
    }

    /// How many messages a device's queue holds.
    pub(crate) fn depth(&self, device_id: &DeviceId) -> usize {
        self.queues.get(device_id).map_or(0, |queue| queue.len())
    }

    /// How many messages each device's queue holds (for `cloudToDeviceMessageCount`).
    pub(crate) fn depths(&self) -> impl Iterator<Item = (&DeviceId, usize)> {
        self.queues.iter().map(|(device_id, queue)| (device_id, queue.len()))
    }

    pub(crate) fn begin_batch(&mut self) {
        self.undo.clear();
        self.undo_next_feedback = self.next_feedback;
    }

    /// The batch's commit failed: every queue as it was before it.
    pub(crate) fn roll_back(&mut self) {
        for (device_id, queue) in self.undo.drain() {
            match queue {
                Some(queue) => self.queues.insert(device_id, queue),
                None => self.queues.remove(&device_id),
            };
        }
        self.next_feedback = self.undo_next_feedback;
    }

    fn queue_mut(&mut self, device_id: &DeviceId) -> &mut twinhub_core::c2d::DeviceQueue {
        if !self.undo.contains_key(device_id) {
            self.undo.insert(device_id.clone(), self.queues.get(device_id).cloned());
        }
        self.queues.entry(device_id.clone()).or_default()
    }

    /// What of a device's queue is stored, by sequence number: each message's delivery count. What a
    /// change is compared against to find its store writes, without copying the messages.
    fn delivery_counts(&self, device_id: &DeviceId) -> HashMap<u64, u32> {
        self.queues
            .get(device_id)
            .map(|queue| {
                queue
                    .messages()
                    .iter()
                    .map(|message| (message.sequence_number, message.delivery_count))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Whether any queue has a message or a lock due now.
    pub(crate) fn any_due(&self, now: Timestamp) -> bool {
        self.queues.values().any(|queue| queue.has_due(now))
    }

    /// Devices with a message or a lock due now.
    fn due(&self, now: Timestamp) -> Vec<DeviceId> {
        self.queues
            .iter()
            .filter(|(_, queue)| queue.has_due(now))
            .map(|(device_id, _)| device_id.clone())
            .collect()
    }
}

/// A stored change to one message of a queue, as another node committed it.
pub(crate) enum StoredQueueChange {
    Upsert(Box<QueuedMessage>),
    Delete(u64),
}

/// What a queue change answers.
pub(crate) enum CloudToDeviceOutcome {
    Sent,
    Received(Option<Box<QueuedMessage>>),
    Settled,
    Purged(usize),
}

impl Batch<'_> {
    pub(crate) fn cloud_to_device(
        &mut self,
        device_id: DeviceId,
        op: CloudToDeviceOp,
        now: Timestamp,
    ) -> Result<CloudToDeviceOutcome, HubError> {
        self.existing(&device_id)?;
        let before = self.c2d.delivery_counts(&device_id);
        let queue = self.c2d.queue_mut(&device_id);
        let (outcome, feedback) = match op {
            CloudToDeviceOp::Send(message) => {
                let (_, feedback) = queue.enqueue(*message, now)?;
                self.c2d_ready.push(device_id.clone());
                (CloudToDeviceOutcome::Sent, feedback)
            }
            CloudToDeviceOp::Receive { lock_token } => {
                let (received, feedback) = queue.receive(lock_token, now);
                (CloudToDeviceOutcome::Received(received.map(Box::new)), feedback)
            }
            CloudToDeviceOp::Settle { lock_token, settlement } => {
                let feedback = queue.settle(&lock_token, settlement, now)?;
                if settlement == Settlement::Abandon {
                    self.c2d_ready.push(device_id.clone());
                }
                (CloudToDeviceOutcome::Settled, feedback)
            }
            CloudToDeviceOp::Purge => {
                let purged = queue.purge();
                (CloudToDeviceOutcome::Purged(purged), Vec::new())
            }
        };
        self.queue_changed(&device_id, &before, feedback);
        Ok(outcome)
    }

    /// Expires messages and times out locks in every queue with something due.
    pub(crate) fn cloud_to_device_sweep(&mut self, now: Timestamp) {
        for device_id in self.c2d.due(now) {
            let before = self.c2d.delivery_counts(&device_id);
            let feedback = self.c2d.queue_mut(&device_id).expire_due(now);
            // A timed-out lock gives a message back: the device may take it again.
            self.c2d_ready.push(device_id.clone());
            self.queue_changed(&device_id, &before, feedback);
        }
    }

    /// A deleted device's queue goes with it.
    pub(crate) fn cloud_to_device_forget(&mut self, device_id: &DeviceId) {
        if !self.c2d.queues.contains_key(device_id) {
            return;
        }
        let before = self.c2d.delivery_counts(device_id);
        self.c2d.queue_mut(device_id).purge();
        for sequence_number in before.into_keys() {
            self.writes.push(StoreWrite::DeleteCloudToDevice {
                device_id: device_id.clone(),
                sequence_number,
            });
        }
        self.c2d.queues.remove(device_id);
    }

    /// A change another node of the cluster stored to a device's queue: applied without a store write
    /// of its own (it is stored), keeping this node's locks.
    pub(crate) fn cloud_to_device_stored(&mut self, device_id: &DeviceId, stored: StoredQueueChange) {
        if !self.registry.contains_key(device_id) {
            return;
        }
        let queue = self.c2d.queue_mut(device_id);
        match stored {
            StoredQueueChange::Upsert(message) => {
                queue.apply_stored(*message);
                self.c2d_ready.push(device_id.clone());
            }
            StoredQueueChange::Delete(sequence_number) => queue.remove_stored(sequence_number),
        }
        let depth = queue.len();
        self.set_message_count(device_id, depth);
    }

    /// A feedback record another node made: numbering goes on after it.
    pub(crate) fn feedback_stored(&mut self, sequence_number: u64, record: FeedbackRecord) {
        self.c2d.next_feedback = self.c2d.next_feedback.max(sequence_number + 1);
        self.feedback.push((sequence_number, record));
    }

    /// A deleted device's queue, gone on another node: nothing to store here.
    pub(crate) fn cloud_to_device_dropped(&mut self, device_id: &DeviceId) {
        if self.c2d.queues.contains_key(device_id) {
            self.c2d.queue_mut(device_id);
            self.c2d.queues.remove(device_id);
        }
    }

    /// Back ends received these feedback records.
    pub(crate) fn feedback_received(&mut self, numbers: Vec<u64>) {
        self.writes.extend(numbers.into_iter().map(StoreWrite::DeleteFeedback));
    }

    /// The store writes for what changed in a queue (messages gone, new or with a new delivery count;
    /// locks alone are not stored), its feedback, and the device's `cloudToDeviceMessageCount`.
    fn queue_changed(&mut self, device_id: &DeviceId, old: &HashMap<u64, u32>, feedback: Vec<Feedback>) {
        let now_queued: &[QueuedMessage] = self.c2d.queues.get(device_id).map_or(&[], |queue| queue.messages());
        let mut remaining = std::collections::HashSet::new();
        for message in now_queued {
            remaining.insert(message.sequence_number);
            // New messages are stored, and redeliveries' counts; a first delivery is not: a crash before
            // the next write forgets one delivery of a message that comes again anyway, and saves a
            // write per message.
            let store = match old.get(&message.sequence_number) {
                None => true,
                Some(&count) => count != message.delivery_count && message.delivery_count > 1,
            };
            if store {
                self.writes.push(StoreWrite::UpsertCloudToDevice {
                    device_id: device_id.clone(),
                    message: Box::new(message.clone()),
                });
            }
        }
        for sequence_number in old.keys().filter(|number| !remaining.contains(number)) {
            self.writes.push(StoreWrite::DeleteCloudToDevice {
                device_id: device_id.clone(),
                sequence_number: *sequence_number,
            });
        }
        // An empty queue stays: it numbers its messages on, so a device never sees a sequence number twice
        // while the hub runs.
        let depth = now_queued.len();
        let generation_id = self
            .registry
            .get(device_id)
            .map(|record| record.identity.generation_id.clone())
            .unwrap_or_default();
        for feedback in feedback {
            let number = self.c2d.next_feedback;
            self.c2d.next_feedback += 1;
            let record = FeedbackRecord {
                device_id: device_id.to_string(),
                device_generation_id: generation_id.clone(),
                feedback,
            };
            self.writes.push(StoreWrite::UpsertFeedback {
                sequence_number: number,
                record: record.clone(),
            });
            self.feedback.push((number, record));
        }
        if old.len() != depth {
            self.set_message_count(device_id, depth);
        }
    }

    /// `cloudToDeviceMessageCount` follows the queue in memory; it is not a stored write of its own
    /// (the queue is stored, and the count is set from it at start).
    pub(crate) fn set_message_count(&mut self, device_id: &DeviceId, depth: usize) {
        let Some(current) = self.registry.get(device_id) else {
            return;
        };
        if let Some(record) = with_message_count(current, depth) {
            self.replace_in_memory(std::sync::Arc::new(record));
        }
    }
}

/// The record with `cloudToDeviceMessageCount` = `depth`, or `None` when it already says so.
pub(crate) fn with_message_count(
    record: &twinhub_core::DeviceRecord,
    depth: usize,
) -> Option<twinhub_core::DeviceRecord> {
    let count = u32::try_from(depth).unwrap_or(u32::MAX);
    if record.identity.cloud_to_device_message_count == count {
        return None;
    }
    let mut identity = (*record.identity).clone();
    identity.cloud_to_device_message_count = count;
    Some(twinhub_core::DeviceRecord::new(
        identity,
        record.twin.clone(),
        record.presence.clone(),
    ))
}

/// Feedback records for back ends, in the order they were made; each goes to one receiver. Durable in the
/// store until a receiver took it ([`crate::Hub::feedback_received`]).
#[derive(Default)]
pub struct FeedbackQueue {
    records: Mutex<VecDeque<(u64, FeedbackRecord)>>,
    ready: Notify,
}

impl FeedbackQueue {
    pub(crate) fn restore(records: Vec<(u64, FeedbackRecord)>) -> FeedbackQueue {
        let mut records = records;
        records.sort_by_key(|(number, _)| *number);
        FeedbackQueue {
            records: Mutex::new(records.into()),
            ready: Notify::new(),
        }
    }

    fn records(&self) -> std::sync::MutexGuard<'_, VecDeque<(u64, FeedbackRecord)>> {
        self.records.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    pub(crate) fn push(&self, new: Vec<(u64, FeedbackRecord)>) {
        if new.is_empty() {
            return;
        }
        {
            let mut records = self.records();
            records.extend(new);
            let excess = records.len().saturating_sub(FEEDBACK_RECORDS_MAX);
            if excess > 0 {
                tracing::warn!(excess, "feedback nobody received is dropped, oldest first");
                records.drain(..excess);
            }
        }
        self.ready.notify_waiters();
        self.ready.notify_one();
    }

    /// Up to `max` records, waiting for the first; they are the caller's to send, then to confirm with
    /// `Hub::feedback_received`, or to give back with [`FeedbackQueue::give_back`].
    pub async fn take(&self, max: usize) -> Vec<(u64, FeedbackRecord)> {
        loop {
            let ready = self.ready.notified();
            {
                let mut records = self.records();
                if !records.is_empty() {
                    let count = records.len().min(max.max(1));
                    return records.drain(..count).collect();
                }
            }
            ready.await;
        }
    }

    /// Records a receiver took but could not send: first in line again.
    pub fn give_back(&self, taken: Vec<(u64, FeedbackRecord)>) {
        if taken.is_empty() {
            return;
        }
        {
            let mut records = self.records();
            for record in taken.into_iter().rev() {
                records.push_front(record);
            }
        }
        self.ready.notify_one();
    }

    /// Records a back end received through another node of the cluster.
    pub(crate) fn forget(&self, numbers: &[u64]) {
        if numbers.is_empty() {
            return;
        }
        self.records().retain(|(number, _)| !numbers.contains(number));
    }

    pub fn len(&self) -> usize {
        self.records().len()
    }

    pub fn is_empty(&self) -> bool {
        self.records().is_empty()
    }
}
