//! Cloud-to-device messages: IoT Hub's rules for a device's queue, with no I/O. A back end enqueues; the
//! device receives the oldest message under a lock and completes, rejects or abandons it; a lock that
//! times out, like an abandon, puts the message back with one more delivery; expiry and too many
//! deliveries dead-letter it. Each end of a message that its `ack` asks about yields a feedback record.
//!
//! Times are given by the caller (`now`), so the rules are tested without clocks; storing the queue and
//! waking devices are the hub's.

use crate::time::Timestamp;
use serde::{Deserialize, Serialize};
use std::time::Duration;

/// Messages a device's queue holds at most (IoT Hub: 50); more are refused.
pub const QUEUE_DEPTH_MAX: usize = 50;
/// Largest message, body and properties (IoT Hub: 64 KB).
pub const MESSAGE_BYTES_MAX: usize = 64 * 1024;
/// Time to live when the back end sets no expiry, and the longest allowed.
pub const TIME_TO_LIVE_DEFAULT: Duration = Duration::from_secs(3600);
pub const TIME_TO_LIVE_MAX: Duration = Duration::from_secs(48 * 3600);
/// How long a received message stays locked for its device before it goes back to the queue.
pub const LOCK_DURATION: Duration = Duration::from_secs(60);
/// Deliveries before a message is dead-lettered (IoT Hub's default maximum delivery count).
pub const DELIVERY_COUNT_MAX: u32 = 10;

/// Which ends of a message the back end wants feedback on (`iothub-ack`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum Ack {
    #[default]
    None,
    /// Completion.
    Positive,
    /// Expiry, too many deliveries, rejection.
    Negative,
    Full,
}

impl Ack {
    /// `none`, `positive`, `negative` or `full`, as the SDKs send it; anything else is refused.
    pub fn parse(text: &str) -> Option<Ack> {
        match text {
            "none" => Some(Ack::None),
            "positive" => Some(Ack::Positive),
            "negative" => Some(Ack::Negative),
            "full" => Some(Ack::Full),
            _ => None,
        }
    }

    fn wants(self, status: FeedbackStatus) -> bool {
        match self {
            Ack::None => false,
            Ack::Full => true,
            Ack::Positive => status == FeedbackStatus::Success,
            Ack::Negative => status != FeedbackStatus::Success,
        }
    }
}

/// How a message ended, as feedback records name it (`statusCode`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum FeedbackStatus {
    Success,
    Expired,
    DeliveryCountExceeded,
    Rejected,
}

impl FeedbackStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            FeedbackStatus::Success => "Success",
            FeedbackStatus::Expired => "Expired",
            FeedbackStatus::DeliveryCountExceeded => "DeliveryCountExceeded",
            FeedbackStatus::Rejected => "Rejected",
        }
    }
}

/// A feedback record for the back end: which message, and how it ended.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Feedback {
    pub original_message_id: Option<String>,
    pub status: FeedbackStatus,
    /// When the message ended.
    pub enqueued_time: Timestamp,
}

/// A feedback record as the back end reads it: [`Feedback`] and the device it is about.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FeedbackRecord {
    pub device_id: String,
    pub device_generation_id: String,
    pub feedback: Feedback,
}

impl FeedbackRecord {
    /// IoT Hub's JSON for one record, as the service SDKs parse a feedback batch (a JSON array of these).
    pub fn to_json(&self) -> serde_json::Value {
        let status = self.feedback.status.as_str();
        serde_json::json!({
            "originalMessageId": self.feedback.original_message_id,
            "deviceGenerationId": self.device_generation_id,
            "deviceId": self.device_id,
            "enqueuedTimeUtc": self.feedback.enqueued_time.to_iso8601(),
            "statusCode": status,
            "description": status,
        })
    }
}

/// A fresh lock token: a random UUID's text, which HTTP puts in an `ETag` and AMQP in a 16-byte
/// delivery tag.
pub fn new_lock_token() -> String {
    use rand::RngCore;
    let mut bytes = [0u8; 16];
    rand::rng().fill_bytes(&mut bytes);
    // Version 4, variant 1: a well-formed random UUID.
    bytes[6] = (bytes[6] & 0x0f) | 0x40;
    bytes[8] = (bytes[8] & 0x3f) | 0x80;
    uuid_text(&bytes)
}

/// A UUID's 16 bytes as its text (`xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx`, lower case).
pub fn uuid_text(bytes: &[u8; 16]) -> String {
    let hex: String = bytes.iter().map(|byte| format!("{byte:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &hex[..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..]
    )
}

/// A UUID's text as its 16 bytes (hyphens optional); `None` for anything else.
pub fn uuid_bytes(text: &str) -> Option<[u8; 16]> {
    let hex: String = text.chars().filter(|c| *c != '-').collect();
    if hex.len() != 32 {
        return None;
    }
    let mut bytes = [0u8; 16];
    for (index, byte) in bytes.iter_mut().enumerate() {
        *byte = u8::from_str_radix(hex.get(index * 2..index * 2 + 2)?, 16).ok()?;
    }
    Some(bytes)
}

/// A message as the back end sent it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct OutgoingMessage {
    pub message_id: Option<String>,
    pub correlation_id: Option<String>,
    pub user_id: Option<String>,
    pub content_type: Option<String>,
    pub content_encoding: Option<String>,
    /// Absolute expiry; `None`: [`TIME_TO_LIVE_DEFAULT`] from enqueueing.
    pub expiry: Option<Timestamp>,
    pub ack: Ack,
    pub properties: Vec<(String, String)>,
    #[serde(with = "serde_bytes")]
    pub body: Vec<u8>,
}

impl OutgoingMessage {
    /// Bytes it counts for against [`MESSAGE_BYTES_MAX`].
    pub fn size(&self) -> usize {
        let text = |value: &Option<String>| value.as_ref().map_or(0, String::len);
        self.body.len()
            + text(&self.message_id)
            + text(&self.correlation_id)
            + text(&self.user_id)
            + text(&self.content_type)
            + text(&self.content_encoding)
            + self
                .properties
                .iter()
                .map(|(name, value)| name.len() + value.len())
                .sum::<usize>()
    }
}

/// A lock on a delivered message: the token the device settles it with, and until when it holds.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lock {
    pub token: String,
    pub until: Timestamp,
}

/// A message in a device's queue.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueuedMessage {
    /// Unique in the device's queue, rising: the order of delivery.
    pub sequence_number: u64,
    pub enqueued_time: Timestamp,
    pub expiry: Timestamp,
    /// Times it was handed to the device.
    pub delivery_count: u32,
    pub lock: Option<Lock>,
    pub message: OutgoingMessage,
}

#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum QueueError {
    #[error("the device's queue holds {QUEUE_DEPTH_MAX} messages, the most IoT Hub allows")]
    QueueFull,
    #[error("the message is {0} bytes with its properties, more than the 65536 bytes IoT Hub allows")]
    TooLarge(usize),
    #[error("the expiry is in the past or more than 48 hours away")]
    Expiry,
    #[error("no message of this device is locked with this lock token, or its lock expired")]
    LockLost,
}

/// How a device settles a message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Settlement {
    Complete,
    Reject,
    Abandon,
}

/// One device's queue: messages in sequence order, the oldest delivered first.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceQueue {
    messages: Vec<QueuedMessage>,
    next_sequence_number: u64,
}

/// What a change to a queue produced for the back end.
pub type FeedbackRecords = Vec<Feedback>;

impl DeviceQueue {
    /// A queue as the store kept it: its messages in sequence order, none locked (no connection survives
    /// a restart), numbering on after the last.
    pub fn restore(mut messages: Vec<QueuedMessage>) -> DeviceQueue {
        messages.sort_by_key(|queued| queued.sequence_number);
        for queued in &mut messages {
            queued.lock = None;
        }
        let next_sequence_number = messages.last().map_or(0, |last| last.sequence_number + 1);
        DeviceQueue {
            messages,
            next_sequence_number,
        }
    }

    /// Whether a message expires or a lock times out at or before `now`: then [`Self::expire_due`] has
    /// something to do.
    pub fn has_due(&self, now: Timestamp) -> bool {
        self.messages
            .iter()
            .any(|queued| queued.expiry <= now || queued.lock.as_ref().is_some_and(|lock| lock.until <= now))
    }

    /// Expires messages and releases timed-out locks now, as any other change would first.
    pub fn expire_due(&mut self, now: Timestamp) -> FeedbackRecords {
        self.expire(now)
    }

    pub fn len(&self) -> usize {
        self.messages.len()
    }

    pub fn is_empty(&self) -> bool {
        self.messages.is_empty()
    }

    pub fn messages(&self) -> &[QueuedMessage] {
        &self.messages
    }

    /// Adds a message, after dropping expired ones (whose feedback is returned). Refused when the queue
    /// is full, the message too large, or its expiry outside now..now+48 h.
    pub fn enqueue(&mut self, message: OutgoingMessage, now: Timestamp) -> Result<(u64, FeedbackRecords), QueueError> {
        let size = message.size();
        if size > MESSAGE_BYTES_MAX {
            return Err(QueueError::TooLarge(size));
        }
        let expiry = match message.expiry {
            None => after(now, TIME_TO_LIVE_DEFAULT),
            Some(expiry) if expiry > now && expiry <= after(now, TIME_TO_LIVE_MAX) => expiry,
            Some(_) => return Err(QueueError::Expiry),
        };
        // Refused before anything changes: a refusal leaves the queue as it was.
        let live = self.messages.iter().filter(|queued| queued.expiry > now).count();
        if live >= QUEUE_DEPTH_MAX {
            return Err(QueueError::QueueFull);
        }
        let feedback = self.expire(now);
        let sequence_number = self.next_sequence_number;
        self.next_sequence_number += 1;
        self.messages.push(QueuedMessage {
            sequence_number,
            enqueued_time: now,
            expiry,
            delivery_count: 0,
            lock: None,
            message,
        });
        Ok((sequence_number, feedback))
    }

    /// The oldest message not locked, now locked with `token` for [`LOCK_DURATION`] and counted as one
    /// more delivery; first, expired messages and those past their last delivery leave the queue.
    pub fn receive(&mut self, token: String, now: Timestamp) -> (Option<QueuedMessage>, FeedbackRecords) {
        let feedback = self.expire(now);
        let next = self.messages.iter_mut().find(|queued| queued.lock.is_none());
        let received = next.map(|queued| {
            queued.delivery_count += 1;
            queued.lock = Some(Lock {
                token,
                until: after(now, LOCK_DURATION),
            });
            queued.clone()
        });
        (received, feedback)
    }

    /// Settles the message locked with `token`: complete removes it (Success), reject dead-letters it
    /// (Rejected), abandon unlocks it for another delivery, or dead-letters it when it had its last one
    /// (DeliveryCountExceeded). A token that locks nothing (settled already, lock expired) is refused
    /// and changes nothing.
    pub fn settle(
        &mut self,
        token: &str,
        settlement: Settlement,
        now: Timestamp,
    ) -> Result<FeedbackRecords, QueueError> {
        // Nothing changes before the token is known good: a refusal leaves the queue as it was.
        let index = self
            .messages
            .iter()
            .position(|queued| {
                queued
                    .lock
                    .as_ref()
                    .is_some_and(|lock| lock.token == token && lock.until > now)
            })
            .ok_or(QueueError::LockLost)?;
        let ended = match settlement {
            Settlement::Complete => Some(FeedbackStatus::Success),
            Settlement::Reject => Some(FeedbackStatus::Rejected),
            Settlement::Abandon if self.messages[index].delivery_count >= DELIVERY_COUNT_MAX => {
                Some(FeedbackStatus::DeliveryCountExceeded)
            }
            Settlement::Abandon => None,
        };
        let mut feedback = Vec::new();
        match ended {
            Some(status) => {
                let queued = self.messages.remove(index);
                feedback.extend(feedback_for(&queued, status, now));
            }
            None => self.messages[index].lock = None,
        }
        feedback.extend(self.expire(now));
        Ok(feedback)
    }

    /// A message as another node stored it (in a cluster): added, or its stored state (delivery count)
    /// taken over. A lock this node holds on it stays: locks are never stored, so the stored form has none.
    pub fn apply_stored(&mut self, mut stored: QueuedMessage) {
        match self
            .messages
            .binary_search_by_key(&stored.sequence_number, |queued| queued.sequence_number)
        {
            Ok(index) => {
                stored.lock = self.messages[index].lock.take();
                self.messages[index] = stored;
            }
            Err(index) => {
                stored.lock = None;
                self.next_sequence_number = self.next_sequence_number.max(stored.sequence_number + 1);
                self.messages.insert(index, stored);
            }
        }
    }

    /// A message another node took out of the queue (settled, expired, purged).
    pub fn remove_stored(&mut self, sequence_number: u64) {
        self.messages.retain(|queued| queued.sequence_number != sequence_number);
    }

    /// Empties the queue (`DELETE /devices/{id}/commands`); returns how many messages it held.
    pub fn purge(&mut self) -> usize {
        std::mem::take(&mut self.messages).len()
    }

    /// Locks that timed out are released; a message that had its last delivery is dead-lettered instead.
    fn release_expired_locks(&mut self, now: Timestamp) -> FeedbackRecords {
        let mut feedback = Vec::new();
        self.messages.retain_mut(|queued| {
            if queued.lock.as_ref().is_none_or(|lock| lock.until > now) {
                return true;
            }
            queued.lock = None;
            if queued.delivery_count >= DELIVERY_COUNT_MAX {
                feedback.extend(feedback_for(queued, FeedbackStatus::DeliveryCountExceeded, now));
                return false;
            }
            true
        });
        feedback
    }

    /// Drops expired messages (locked or not) and releases timed-out locks.
    fn expire(&mut self, now: Timestamp) -> FeedbackRecords {
        let mut feedback = self.release_expired_locks(now);
        self.messages.retain(|queued| {
            if queued.expiry > now {
                return true;
            }
            feedback.extend(feedback_for(queued, FeedbackStatus::Expired, now));
            false
        });
        feedback
    }
}

fn feedback_for(queued: &QueuedMessage, status: FeedbackStatus, now: Timestamp) -> Option<Feedback> {
    queued.message.ack.wants(status).then(|| Feedback {
        original_message_id: queued.message.message_id.clone(),
        status,
        enqueued_time: now,
    })
}

fn after(time: Timestamp, duration: Duration) -> Timestamp {
    Timestamp(
        time.0
            .saturating_add(i64::try_from(duration.as_nanos()).unwrap_or(i64::MAX)),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECOND: i64 = 1_000_000_000;

    fn at(seconds: i64) -> Timestamp {
        Timestamp(1_700_000_000 * SECOND + seconds * SECOND)
    }

    fn message(id: &str, ack: Ack) -> OutgoingMessage {
        OutgoingMessage {
            message_id: Some(id.to_owned()),
            ack,
            body: b"hello".to_vec(),
            ..OutgoingMessage::default()
        }
    }

    fn statuses(feedback: &[Feedback]) -> Vec<(Option<&str>, FeedbackStatus)> {
        feedback
            .iter()
            .map(|record| (record.original_message_id.as_deref(), record.status))
            .collect()
    }

    #[test]
    fn messages_are_received_in_order_under_a_lock_and_completed_once() {
        let mut queue = DeviceQueue::default();
        queue.enqueue(message("a", Ack::Full), at(0)).unwrap();
        queue.enqueue(message("b", Ack::None), at(1)).unwrap();
        let (first, _) = queue.receive("t1".into(), at(2));
        let first = first.unwrap();
        assert_eq!(
            (first.message.message_id.as_deref(), first.delivery_count),
            (Some("a"), 1)
        );
        // Locked: the next receive gets the next message.
        let (second, _) = queue.receive("t2".into(), at(2));
        assert_eq!(second.unwrap().message.message_id.as_deref(), Some("b"));
        assert_eq!(queue.receive("t3".into(), at(2)).0, None);
        let feedback = queue.settle("t1", Settlement::Complete, at(3)).unwrap();
        assert_eq!(statuses(&feedback), [(Some("a"), FeedbackStatus::Success)]);
        assert_eq!(
            queue.settle("t1", Settlement::Complete, at(3)),
            Err(QueueError::LockLost)
        );
        // No ack asked: no feedback.
        assert!(queue.settle("t2", Settlement::Reject, at(3)).unwrap().is_empty());
        assert!(queue.is_empty());
    }

    #[test]
    fn changes_another_node_stored_keep_this_nodes_lock_and_numbering() {
        let mut here = DeviceQueue::default();
        here.enqueue(message("a", Ack::None), at(0)).unwrap();
        let (locked, _) = here.receive("t1".into(), at(1));
        let mut elsewhere = DeviceQueue::restore(vec![locked.unwrap()]);
        elsewhere.enqueue(message("b", Ack::None), at(2)).unwrap();
        for stored in elsewhere.messages() {
            here.apply_stored(stored.clone());
        }
        assert_eq!(here.len(), 2);
        // The lock taken here survives the other node's (lockless) copy of the message.
        assert_eq!(here.settle("t1", Settlement::Complete, at(3)), Ok(Vec::new()));
        let (sequence_number, _) = here.enqueue(message("c", Ack::None), at(4)).unwrap();
        assert_eq!(sequence_number, 2);
        here.remove_stored(1);
        let ids: Vec<_> = here.messages().iter().map(|m| m.message.message_id.clone()).collect();
        assert_eq!(ids, [Some("c".to_owned())]);
    }

    #[test]
    fn abandons_and_lock_timeouts_redeliver_until_the_last_delivery() {
        let mut queue = DeviceQueue::default();
        queue.enqueue(message("a", Ack::Negative), at(0)).unwrap();
        for delivery in 1..DELIVERY_COUNT_MAX {
            let (received, _) = queue.receive(format!("t{delivery}"), at(0));
            assert_eq!(received.unwrap().delivery_count, delivery);
            assert!(queue
                .settle(&format!("t{delivery}"), Settlement::Abandon, at(0))
                .unwrap()
                .is_empty());
        }
        // The last delivery's lock times out: dead-lettered.
        let (received, _) = queue.receive("last".into(), at(0));
        assert_eq!(received.unwrap().delivery_count, DELIVERY_COUNT_MAX);
        let lock_over = LOCK_DURATION.as_secs() as i64;
        let (nothing, feedback) = queue.receive("after".into(), at(lock_over));
        assert_eq!(nothing, None);
        assert_eq!(
            statuses(&feedback),
            [(Some("a"), FeedbackStatus::DeliveryCountExceeded)]
        );
        assert_eq!(
            queue.settle("last", Settlement::Complete, at(lock_over)),
            Err(QueueError::LockLost)
        );
    }

    #[test]
    fn a_timed_out_lock_gives_the_message_back() {
        let mut queue = DeviceQueue::default();
        queue.enqueue(message("a", Ack::None), at(0)).unwrap();
        queue.receive("t1".into(), at(0));
        let (again, _) = queue.receive("t2".into(), at(LOCK_DURATION.as_secs() as i64));
        assert_eq!(again.unwrap().delivery_count, 2);
        assert_eq!(
            queue.settle("t1", Settlement::Complete, at(61)),
            Err(QueueError::LockLost),
            "the old lock no longer settles it"
        );
    }

    #[test]
    fn the_queue_holds_fifty_messages_of_at_most_64_kb_that_expire() {
        let mut queue = DeviceQueue::default();
        for n in 0..QUEUE_DEPTH_MAX {
            queue.enqueue(message(&n.to_string(), Ack::Negative), at(0)).unwrap();
        }
        assert_eq!(
            queue.enqueue(message("full", Ack::None), at(0)),
            Err(QueueError::QueueFull)
        );
        let large = OutgoingMessage {
            body: vec![0; MESSAGE_BYTES_MAX + 1],
            ..OutgoingMessage::default()
        };
        assert_eq!(
            queue.enqueue(large, at(0)),
            Err(QueueError::TooLarge(MESSAGE_BYTES_MAX + 1))
        );
        let too_late = OutgoingMessage {
            expiry: Some(at(48 * 3600 + 1)),
            ..OutgoingMessage::default()
        };
        assert_eq!(queue.enqueue(too_late, at(0)), Err(QueueError::Expiry));
        // An hour later every message expired, with negative feedback, and there is room again.
        let (_, feedback) = queue
            .enqueue(message("later", Ack::None), at(TIME_TO_LIVE_DEFAULT.as_secs() as i64))
            .unwrap();
        assert_eq!(feedback.len(), QUEUE_DEPTH_MAX);
        assert!(feedback.iter().all(|record| record.status == FeedbackStatus::Expired));
        assert_eq!(queue.len(), 1);
        assert_eq!(queue.purge(), 1);
    }

    #[test]
    fn a_restored_queue_unlocks_and_numbers_on() {
        let mut queue = DeviceQueue::default();
        queue.enqueue(message("a", Ack::None), at(0)).unwrap();
        queue.enqueue(message("b", Ack::None), at(0)).unwrap();
        queue.receive("t".into(), at(0));
        let mut stored = queue.messages().to_vec();
        stored.reverse();
        let mut restored = DeviceQueue::restore(stored);
        assert!(restored.messages().iter().all(|queued| queued.lock.is_none()));
        assert_eq!(restored.messages()[0].delivery_count, 1, "deliveries are kept");
        let (sequence_number, _) = restored.enqueue(message("c", Ack::None), at(0)).unwrap();
        assert_eq!(sequence_number, 2);
        assert!(!restored.has_due(at(0)));
        assert!(restored.has_due(at(TIME_TO_LIVE_DEFAULT.as_secs() as i64)));
    }

    #[test]
    fn lock_tokens_are_random_uuids() {
        let token = new_lock_token();
        assert_eq!((token.len(), &token[14..15]), (36, "4"));
        assert_ne!(token, new_lock_token());
        let bytes = uuid_bytes(&token).unwrap();
        assert_eq!(uuid_text(&bytes), token);
        assert_eq!(uuid_bytes("not a uuid"), None);
    }

    #[test]
    fn acks_parse_as_the_sdks_send_them() {
        assert_eq!(Ack::parse("full"), Some(Ack::Full));
        assert_eq!(Ack::parse("positive"), Some(Ack::Positive));
        assert_eq!(Ack::parse("Full"), None);
        assert!(Ack::Negative.wants(FeedbackStatus::Rejected));
        assert!(!Ack::Positive.wants(FeedbackStatus::Expired));
    }
}
