//! The Event Hubs-compatible endpoint: the hub's device-to-cloud events read with the Event Hubs SDKs
//! (`@azure/event-hubs`, `azure-eventhub`), on the same AMQP listener as devices. Ref:
//! shared/protocol/eventhubs-endpoint.md.
//!
//! - `address`: which entity a link names (`<hub>/ConsumerGroups/<cg>/Partitions/<id>`, `$management`).
//! - `filter`: where a receiver starts (offset, sequence number, enqueued time; `-1`, `@latest`).
//! - `message`: a stored event as the AMQP message consumers read.
//! - `management`: `$management` READ of the event hub and its partitions.
//! - `receiver`: a partition receiver link: events from the log as they commit, link credit, owner levels.

pub mod address;
pub mod filter;
pub mod management;
pub mod message;
pub mod receiver;
