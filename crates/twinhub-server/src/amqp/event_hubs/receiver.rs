//! A partition receiver: events of one partition from where the filter says, each sent pre-settled as soon
//! as it is durable, as far as the client's link credit allows (fe2o3 waits for credit). Owner levels
//! (epochs), per consumer group and partition, as Event Hubs has them: a receiver with an owner level at
//! least the current one takes the partition over and the others are detached with `amqp:link:stolen`; a
//! lower one, or one without an owner level while an owned one reads, is refused; at most five receivers
//! without an owner level read at once.

use super::filter::StartPosition;
use super::message::to_amqp;
use fe2o3_amqp::link::Sender;
use fe2o3_amqp::types::definitions::{AmqpError, Error as AmqpErrorBody, ErrorCondition, LinkError};
use fe2o3_amqp::Sendable;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use tokio::sync::Notify;
use twinhub_hub::{EventLog, HubError};

/// Receivers without an owner level one consumer group may have on a partition.
const UNOWNED_RECEIVERS_MAX: usize = 5;
/// Most events read from the log at a time, and their bytes.
const READ_EVENTS_MAX: usize = 256;
const READ_BYTES_MAX: usize = 1024 * 1024;

/// Why a receiver was refused or ended, as an AMQP error the SDKs understand.
#[derive(Debug)]
pub struct Refusal {
    pub condition: ErrorCondition,
    pub description: String,
}

impl Refusal {
    fn new(condition: ErrorCondition, description: impl Into<String>) -> Self {
        Refusal {
            condition,
            description: description.into(),
        }
    }

    pub fn argument_out_of_range(description: impl Into<String>) -> Self {
        Refusal::new(
            ErrorCondition::Custom("com.microsoft:argument-out-of-range".into()),
            description,
        )
    }

    pub fn not_found(description: impl Into<String>) -> Self {
        Refusal::new(ErrorCondition::AmqpError(AmqpError::NotFound), description)
    }

    pub fn argument_error(description: impl Into<String>) -> Self {
        Refusal::new(
            ErrorCondition::Custom("com.microsoft:argument-error".into()),
            description,
        )
    }

    pub fn into_error(self) -> AmqpErrorBody {
        AmqpErrorBody::new(self.condition, Some(self.description), None)
    }
}

struct Registered {
    id: u64,
    owner_level: Option<i64>,
    stolen: Arc<Notify>,
}

/// The receivers reading each (consumer group, partition), across connections.
#[derive(Default)]
pub struct Receivers {
    by_partition: Mutex<HashMap<(String, u16), Vec<Registered>>>,
    next_id: std::sync::atomic::AtomicU64,
}

/// A registered receiver; unregisters when dropped.
pub struct Registration {
    receivers: Arc<Receivers>,
    key: (String, u16),
    id: u64,
    pub stolen: Arc<Notify>,
}

impl Drop for Registration {
    fn drop(&mut self) {
        let mut map = self.receivers.map();
        if let Some(list) = map.get_mut(&self.key) {
            list.retain(|registered| registered.id != self.id);
            if list.is_empty() {
                map.remove(&self.key);
            }
        }
    }
}

impl Receivers {
    fn map(&self) -> std::sync::MutexGuard<'_, HashMap<(String, u16), Vec<Registered>>> {
        self.by_partition
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Applies the owner-level rules to a new receiver.
    pub fn register(
        self: &Arc<Self>,
        consumer_group: &str,
        partition: u16,
        owner_level: Option<i64>,
    ) -> Result<Registration, Refusal> {
        let key = (consumer_group.to_owned(), partition);
        let mut map = self.map();
        let list = map.entry(key.clone()).or_default();
        let current = list.iter().filter_map(|registered| registered.owner_level).max();
        let stolen = |description: String| Refusal::new(ErrorCondition::LinkError(LinkError::Stolen), description);
        match (owner_level, current) {
            (Some(level), Some(current)) if level < current => {
                return Err(stolen(format!(
                    "a receiver with owner level {current} reads this partition; {level} is lower"
                )))
            }
            (Some(_), _) => {
                for registered in list.drain(..) {
                    registered.stolen.notify_one();
                }
            }
            (None, Some(current)) => {
                return Err(stolen(format!(
                    "a receiver with owner level {current} reads this partition"
                )))
            }
            (None, None) if list.len() >= UNOWNED_RECEIVERS_MAX => {
                return Err(Refusal::new(
                    ErrorCondition::AmqpError(AmqpError::ResourceLimitExceeded),
                    format!("at most {UNOWNED_RECEIVERS_MAX} receivers without an owner level read a partition of a consumer group"),
                ))
            }
            (None, None) => {}
        }
        let id = self.next_id.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let notify = Arc::new(Notify::new());
        list.push(Registered {
            id,
            owner_level,
            stolen: Arc::clone(&notify),
        });
        Ok(Registration {
            receivers: Arc::clone(self),
            key,
            id,
            stolen: notify,
        })
    }
}

/// The first sequence number a receiver reads, or why its start is refused.
pub async fn first_sequence(log: &EventLog, partition: u16, start: StartPosition) -> Result<u64, Refusal> {
    let state = *log
        .watch(partition)
        .ok_or_else(|| Refusal::argument_out_of_range(format!("the partition '{partition}' does not exist")))?
        .borrow();
    let sequence = match start {
        StartPosition::Earliest => state.first,
        StartPosition::Latest => state.next,
        StartPosition::Sequence { number, inclusive } => {
            let from = if inclusive { number } else { number.saturating_add(1) };
            if from > state.next {
                return Err(Refusal::argument_out_of_range(format!(
                    "the position {number} is past the end of partition {partition}: its next sequence number is {}",
                    state.next
                )));
            }
            from.max(state.first)
        }
        StartPosition::EnqueuedTime { millis, inclusive } => {
            let millis = if inclusive { millis } else { millis.saturating_add(1) };
            let time = twinhub_core::Timestamp(millis.saturating_mul(1_000_000));
            log.first_at_or_after(partition, time)
                .await
                .map_err(|error| Refusal::new(ErrorCondition::AmqpError(AmqpError::InternalError), error.to_string()))?
                .unwrap_or(state.next)
        }
    };
    Ok(sequence)
}

/// Sends the partition's events from `next` on until the client detaches, the receiver is stolen, or the
/// connection ends.
pub async fn serve(mut sender: Sender, log: Arc<EventLog>, partition: u16, mut next: u64, registration: Registration) {
    let Some(mut watch) = log.watch(partition) else { return };
    loop {
        let state = *watch.borrow_and_update();
        // Retention may have trimmed what this receiver had not read yet.
        next = next.max(state.first);
        if next < state.next {
            let events = match log.read(partition, next, READ_EVENTS_MAX, READ_BYTES_MAX).await {
                Ok(events) => events,
                Err(error) => {
                    detach(sender, internal(&error)).await;
                    return;
                }
            };
            for stored in events {
                next = stored.sequence_number + 1;
                let sendable = Sendable::builder().message(to_amqp(&stored)).settled(true).build();
                tokio::select! {
                    sent = sender.send(sendable) => {
                        if sent.is_err() {
                            return;
                        }
                    }
                    _ = registration.stolen.notified() => {
                        detach(sender, stolen()).await;
                        return;
                    }
                }
            }
            continue;
        }
        tokio::select! {
            changed = watch.changed() => {
                if changed.is_err() {
                    return;
                }
            }
            _ = registration.stolen.notified() => {
                detach(sender, stolen()).await;
                return;
            }
            _ = sender.on_detach() => return,
        }
    }
}

fn stolen() -> AmqpErrorBody {
    AmqpErrorBody::new(
        ErrorCondition::LinkError(LinkError::Stolen),
        Some("a receiver with a higher or equal owner level took this partition over".into()),
        None,
    )
}

fn internal(error: &HubError) -> AmqpErrorBody {
    AmqpErrorBody::new(
        ErrorCondition::AmqpError(AmqpError::InternalError),
        Some(error.to_string()),
        None,
    )
}

async fn detach(sender: Sender, error: AmqpErrorBody) {
    let _ = sender.close_with_error(error).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn owner_levels_take_partitions_over_and_lower_ones_are_refused() {
        let receivers = Arc::new(Receivers::default());
        let plain: Vec<_> = (0..5)
            .map(|_| receivers.register("$default", 0, None).unwrap())
            .collect();
        assert!(
            receivers.register("$default", 0, None).is_err(),
            "a sixth without owner level"
        );
        assert!(
            receivers.register("other", 0, None).is_ok(),
            "another consumer group is apart"
        );
        let owner = receivers.register("$default", 0, Some(0)).unwrap();
        assert!(receivers.register("$default", 0, None).is_err());
        drop(plain);
        let higher = receivers.register("$default", 0, Some(3)).unwrap();
        assert!(receivers.register("$default", 0, Some(2)).is_err());
        let equal = receivers.register("$default", 0, Some(3)).unwrap();
        drop((owner, higher, equal));
        assert!(
            receivers.register("$default", 0, None).is_ok(),
            "all gone: anyone may read"
        );
    }
}
