use twinhub_core::twin::DesiredChange;
use twinhub_core::DeviceId;

/// How many events a slow subscriber may fall behind before it is told it lagged.
pub const EVENT_QUEUE_MAX: usize = 16 * 1024;

/// What a committed write did, published after the commit (so subscribers never see a write that could
/// still be lost), in commit order.
#[derive(Clone, Debug)]
pub enum HubEvent {
    /// Desired properties changed: devices that subscribed are notified with the patch and version.
    DesiredChanged {
        device_id: DeviceId,
        change: DesiredChange,
    },
    /// The identity changed (status, keys): transports re-check connections of that device.
    DeviceUpdated {
        device_id: DeviceId,
    },
    DeviceDeleted {
        device_id: DeviceId,
    },
}
