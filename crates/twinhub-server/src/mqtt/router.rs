//! Hub events to the sessions they concern: desired changes to the device's session, in commit order;
//! a disabled or deleted device's connections closed. Never blocks on a connection: a full mailbox, or
//! events this router missed because it lagged, become a request for a full desired resync.

use super::session::Sessions;
use std::sync::{Arc, Weak};
use tokio::sync::broadcast::{self, error::RecvError};
use twinhub_core::DeviceStatus;
use twinhub_hub::{Hub, HubEvent};

pub(crate) async fn run(mut events: broadcast::Receiver<HubEvent>, hub: Weak<Hub>, sessions: Arc<Sessions>) {
    loop {
        match events.recv().await {
            Ok(HubEvent::DesiredChanged { device_id, change }) => {
                if let Some(session) = sessions.get(device_id.as_str()) {
                    session.deliver_desired(&Arc::new(change));
                }
            }
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
                tracing::warn!(
                    missed,
                    "desired notifications fell behind; connected devices get the full desired document"
                );
                for session in sessions.all() {
                    session.request_resync();
                }
            }
            Err(RecvError::Closed) => return,
        }
    }
}
