//! Hub events to the MQTT sessions they concern: a disabled or deleted device's connections closed, a
//! deleted device's sessions forgotten. (Desired changes and method requests reach connections through
//! the hub's device router.)

use super::session::Sessions;
use std::sync::{Arc, Weak};
use tokio::sync::broadcast::{self, error::RecvError};
use twinhub_core::DeviceStatus;
use twinhub_hub::{Hub, HubEvent};

pub(crate) async fn run(mut events: broadcast::Receiver<HubEvent>, hub: Weak<Hub>, sessions: Arc<Sessions>) {
    loop {
        match events.recv().await {
            Ok(HubEvent::DesiredChanged { .. } | HubEvent::ModuleDesiredChanged { .. }) => {}
            Ok(HubEvent::DeviceUpdated { device_id }) => {
                let Some(hub) = hub.upgrade() else { return };
                let disabled = hub
                    .device(&device_id)
                    .map(|record| record.identity.status == DeviceStatus::Disabled)
                    .unwrap_or(true);
                if disabled {
                    for session in sessions.of_device(&device_id) {
                        tracing::info!(%device_id, "closing the connection of a disabled device");
                        session.close_owner();
                    }
                }
            }
            Ok(HubEvent::DeviceDeleted { device_id }) => {
                // Closes its connections and forgets its sessions: a device created again under the same
                // id starts fresh.
                let stored = sessions.remove_device(&device_id);
                if let Some(hub) = hub.upgrade() {
                    for client_id in stored {
                        if let Err(error) = hub.store_session(client_id, None).await {
                            tracing::warn!(%error, %device_id, "could not forget the session of a deleted device");
                        }
                    }
                }
            }
            Err(RecvError::Lagged(missed)) => {
                // Whatever was missed, the registry tells: close the connections of devices now disabled
                // or gone (a gone device's sessions are forgotten when the device id is used again).
                tracing::warn!(
                    missed,
                    "the MQTT router fell behind the hub's events; checking every session"
                );
                let Some(hub) = hub.upgrade() else { return };
                for session in sessions.all() {
                    let usable = hub
                        .device(&session.client.device_id)
                        .is_ok_and(|record| record.identity.status != DeviceStatus::Disabled);
                    if !usable {
                        session.close_owner();
                    }
                }
            }
            Err(RecvError::Closed) => return,
        }
    }
}
