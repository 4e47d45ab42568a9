//! Custom endpoints (NATS JetStream subjects, webhooks): what a route sends there is appended to the
//! endpoint's durable outbox before the sender is answered, then a delivery task per outbox partition
//! hands each message to the endpoint's sink, in order, retrying with back-off until it is taken, and
//! stores how far it got. A crash redelivers from there: at least once. An endpoint out of reach for long
//! fills its outbox up to its bound (`OUTBOX_BYTES_MAX` per partition, a day): past that the oldest
//! messages go, and what went undelivered is counted and logged, never silently lost.
//!
//! The edge provides the outboxes and sinks ([`EndpointFactory`]): the hub neither opens files nor speaks
//! NATS or HTTP.

use crate::event_log::{EventLog, EventLogConfig, PartitionState};
use crate::HubError;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;
use twinhub_core::event::StoredEvent;
use twinhub_core::routing::EndpointSpec;
use twinhub_store::{EventStore, Store, StoreWrite};

/// Bound of an outbox partition: what an endpoint out of reach may leave waiting.
pub const OUTBOX_BYTES_MAX: u64 = 256 * 1024 * 1024;
/// Messages one delivery round reads.
const DELIVERY_BATCH_MAX: usize = 256;
/// Back-off between attempts at one message: doubling from the first to the last.
const RETRY_FIRST: Duration = Duration::from_millis(100);
const RETRY_LAST: Duration = Duration::from_secs(10);

/// Delivers one message to where an endpoint points.
#[async_trait::async_trait]
pub trait EndpointSink: Send + Sync {
    async fn deliver(&self, message: &StoredEvent) -> Result<(), String>;
}

/// An endpoint as the edge opened it.
pub enum OpenedEndpoint {
    /// An event hub inside twinhub: the log consumers read.
    EventHub(Arc<dyn EventStore>),
    /// An outbox (the events, and a store for how far delivery got) delivered to a sink.
    Delivered {
        outbox: Arc<dyn EventStore>,
        positions: Arc<dyn Store>,
        sink: Arc<dyn EndpointSink>,
    },
}

/// Opens custom endpoints (given to the hub by the server).
#[async_trait::async_trait]
pub trait EndpointFactory: Send + Sync {
    async fn open(&self, spec: &EndpointSpec) -> Result<OpenedEndpoint, String>;
}

/// The factory as the hub's configuration carries it.
#[derive(Clone)]
pub struct FactoryHandle(pub Arc<dyn EndpointFactory>);

impl std::fmt::Debug for FactoryHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("EndpointFactory")
    }
}

/// An open custom endpoint: its outbox and its delivery.
pub struct CustomEndpoint {
    pub spec: EndpointSpec,
    pub(crate) outbox: Arc<EventLog>,
    delivered: Arc<AtomicU64>,
    dropped: Arc<AtomicU64>,
    stop: watch::Sender<bool>,
}

impl CustomEndpoint {
    pub(crate) async fn open(spec: EndpointSpec, factory: &dyn EndpointFactory) -> Result<CustomEndpoint, HubError> {
        let opened = factory.open(&spec).await.map_err(|reason| {
            HubError::InvalidArgument(format!("endpoint {:?} cannot be opened: {reason}", spec.name))
        })?;
        let (stop, stopped) = watch::channel(false);
        let delivered = Arc::new(AtomicU64::new(0));
        let dropped = Arc::new(AtomicU64::new(0));
        let outbox = match opened {
            OpenedEndpoint::EventHub(log) => EventLog::open(log, EventLogConfig::default()).await?,
            OpenedEndpoint::Delivered {
                outbox,
                positions,
                sink,
            } => {
                let config = EventLogConfig {
                    partition_bytes_max: OUTBOX_BYTES_MAX,
                    ..EventLogConfig::default()
                };
                let outbox = EventLog::open(outbox, config).await?;
                let from = load_positions(&*positions).await?;
                for partition in 0..outbox.partition_count() {
                    let delivery = Delivery {
                        name: spec.name.clone(),
                        partition,
                        outbox: Arc::clone(&outbox),
                        positions: Arc::clone(&positions),
                        sink: Arc::clone(&sink),
                        delivered: Arc::clone(&delivered),
                        dropped: Arc::clone(&dropped),
                        stopped: stopped.clone(),
                    };
                    tokio::spawn(delivery.run(from.get(&partition).copied()));
                }
                outbox
            }
        };
        Ok(CustomEndpoint {
            spec,
            outbox,
            delivered,
            dropped,
            stop,
        })
    }

    /// The event hub consumers read, when the endpoint is an event hub inside twinhub.
    pub fn event_hub(&self) -> Option<&Arc<EventLog>> {
        matches!(self.spec.kind, twinhub_core::routing::EndpointKind::EventHub { .. }).then_some(&self.outbox)
    }

    /// Messages the endpoint took.
    pub fn delivered(&self) -> u64 {
        self.delivered.load(Ordering::Relaxed)
    }

    /// Messages that left the outbox undelivered (its bound reached).
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    /// Stops delivering (the endpoint was removed); what is in its outbox stays there.
    pub(crate) fn close(&self) {
        self.stop.send_replace(true);
    }
}

impl Drop for CustomEndpoint {
    fn drop(&mut self) {
        self.close();
    }
}

fn position_setting(partition: u16) -> String {
    format!("delivered/{partition}")
}

/// Where each partition's delivery stands: the next sequence number to deliver.
async fn load_positions(store: &dyn Store) -> Result<std::collections::HashMap<u16, u64>, HubError> {
    let settings = store.load_settings().await.map_err(HubError::Store)?;
    Ok(settings
        .into_iter()
        .filter_map(|(name, value)| {
            let partition = name.strip_prefix("delivered/")?.parse().ok()?;
            Some((partition, value.parse().ok()?))
        })
        .collect())
}

struct Delivery {
    name: String,
    partition: u16,
    outbox: Arc<EventLog>,
    positions: Arc<dyn Store>,
    sink: Arc<dyn EndpointSink>,
    delivered: Arc<AtomicU64>,
    dropped: Arc<AtomicU64>,
    stopped: watch::Receiver<bool>,
}

impl Delivery {
    async fn run(mut self, from: Option<u64>) {
        let Some(mut ends) = self.outbox.watch(self.partition) else {
            return;
        };
        let mut next = from.unwrap_or_else(|| ends.borrow().first);
        loop {
            let state: PartitionState = *ends.borrow_and_update();
            if state.first > next {
                let lost = state.first - next;
                self.dropped.fetch_add(lost, Ordering::Relaxed);
                tracing::error!(
                    endpoint = %self.name,
                    partition = self.partition,
                    lost,
                    "the outbox reached its bound: undelivered messages were dropped"
                );
                next = state.first;
            }
            if next >= state.next {
                tokio::select! {
                    changed = ends.changed() => if changed.is_err() { return },
                    _ = self.stopped.changed() => return,
                }
                continue;
            }
            let events = match self
                .outbox
                .read(self.partition, next, DELIVERY_BATCH_MAX, usize::MAX)
                .await
            {
                Ok(events) => events,
                Err(error) => {
                    tracing::warn!(endpoint = %self.name, %error, "reading the outbox failed; trying again");
                    if self.pause(RETRY_LAST).await {
                        return;
                    }
                    continue;
                }
            };
            for event in &events {
                if !self.deliver(event).await {
                    return;
                }
                next = event.sequence_number + 1;
                self.delivered.fetch_add(1, Ordering::Relaxed);
            }
            let write = StoreWrite::PutSetting {
                name: position_setting(self.partition),
                value: next.to_string(),
            };
            if let Err(error) = self.positions.commit(vec![write]).await {
                // Delivered again after a restart, at worst.
                tracing::warn!(endpoint = %self.name, %error, "storing the delivery position failed");
            }
        }
    }

    /// Delivers one message, retrying with back-off; false once the endpoint is stopped.
    async fn deliver(&mut self, event: &StoredEvent) -> bool {
        let mut wait = RETRY_FIRST;
        loop {
            match self.sink.deliver(event).await {
                Ok(()) => return true,
                Err(error) => {
                    tracing::warn!(
                        endpoint = %self.name,
                        partition = self.partition,
                        sequence_number = event.sequence_number,
                        %error,
                        retry_in = ?wait,
                        "delivery failed; retrying"
                    );
                }
            }
            if self.pause(wait).await {
                return false;
            }
            wait = (wait * 2).min(RETRY_LAST);
        }
    }

    /// Waits `wait`; true when the endpoint was stopped meanwhile.
    async fn pause(&mut self, wait: Duration) -> bool {
        tokio::select! {
            _ = tokio::time::sleep(wait) => *self.stopped.borrow(),
            _ = self.stopped.changed() => true,
        }
    }
}
