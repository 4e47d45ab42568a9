pub use twinhub_core::hub_event::HubEvent;

/// How many events a slow subscriber may fall behind before it is told it lagged.
pub const EVENT_QUEUE_MAX: usize = 16 * 1024;
