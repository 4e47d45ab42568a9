//! What a committed write did, as the hub tells its transports (and, in a cluster, every other node).

use crate::twin::DesiredChange;
use crate::DeviceId;

/// What a committed write did, published after the commit (so subscribers never see a write that could
/// still be lost), in commit order.
#[derive(Clone, Debug, PartialEq)]
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
    /// A module's desired properties changed: its connections that subscribed are notified.
    ModuleDesiredChanged {
        device_id: DeviceId,
        module_id: crate::ModuleId,
        change: DesiredChange,
    },
}
