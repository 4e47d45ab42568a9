//! The connections this node holds, per device or module, and what each connection event makes of their
//! presence. A device or module is `Connected` while it has at least one connection here (a session
//! takeover opens the new connection before the old one has closed).
//!
//! In a cluster the node also records what it holds and the `connectionStateUpdatedTime` it stamped
//! (`presence_leases.rs`): the stamp tells whether the record is still as this node left it, or another
//! node took the device or module over since.

use std::collections::HashMap;
use twinhub_core::record::Presence;
use twinhub_core::{ConnectionState, Timestamp};
use twinhub_store::{HoldChange, Holder};

use crate::writer::ACTIVITY_RESOLUTION;
use crate::PresenceEvent;

/// One device's or module's connections to this node.
#[derive(Default)]
struct HeldConnections {
    count: u32,
    /// `connectionStateUpdatedTime` as this node last left it while connected: if the record says
    /// otherwise when the last connection closes, someone else (another node) changed it since.
    marked: Option<Timestamp>,
}

/// Every device and module with connections to this node, across batches.
#[derive(Default)]
pub(crate) struct Held {
    by_holder: HashMap<Holder, HeldConnections>,
}

impl Held {
    /// A connection event of `holder`, whose record shows `current` (`None`: there is no such device or
    /// module). Returns the presence its record must show next (`None` without a record); what this node
    /// begins or stops holding goes to `holds`.
    pub(crate) fn event(
        &mut self,
        holder: &Holder,
        event: PresenceEvent,
        current: Option<&Presence>,
        now: Timestamp,
        holds: &mut Vec<HoldChange>,
    ) -> Option<Presence> {
        let held = self.by_holder.entry(holder.clone()).or_default();
        match event {
            PresenceEvent::Connected => held.count += 1,
            PresenceEvent::Disconnected => held.count = held.count.saturating_sub(1),
            PresenceEvent::Active => {}
        }
        let connected = held.count > 0;
        // The first connection to this node: this node takes it over (in a cluster, from whichever node
        // held it), even when the record already says Connected.
        let taken_here = event == PresenceEvent::Connected && held.count == 1;
        let marked = held.marked;
        if !connected {
            self.by_holder.remove(holder);
            if marked.is_some() {
                holds.push(HoldChange::Released(holder.clone()));
            }
        }
        // Deleted while connected: its connections still close and count down; nothing to show.
        let mut presence = current?.clone();
        let state = if connected {
            ConnectionState::Connected
        } else {
            ConnectionState::Disconnected
        };
        // The last connection here closed, but the state was changed since this node marked it (in a
        // cluster: it moved to another node, which marked it connected): that is the truth now.
        let moved_on = !connected && marked.is_some() && presence.connection_state_updated != marked;
        if (presence.connection_state != state && !moved_on) || taken_here {
            presence.connection_state = state;
            presence.connection_state_updated = Some(now);
        }
        let stale = presence
            .last_activity
            .is_none_or(|last| now.0.saturating_sub(last.0) >= ACTIVITY_RESOLUTION.as_nanos() as i64);
        if event != PresenceEvent::Disconnected && stale {
            presence.last_activity = Some(now);
        }
        if connected {
            if let Some(held) = self.by_holder.get_mut(holder) {
                if held.marked != presence.connection_state_updated {
                    if let Some(stamp) = presence.connection_state_updated {
                        holds.push(HoldChange::Held {
                            holder: holder.clone(),
                            stamp,
                        });
                    }
                }
                held.marked = presence.connection_state_updated;
            }
        }
        Some(presence)
    }

    /// Everything this node holds a connection of.
    pub(crate) fn holders(&self) -> Vec<Holder> {
        self.by_holder
            .iter()
            .filter(|(_, held)| held.count > 0)
            .map(|(holder, _)| holder.clone())
            .collect()
    }

    /// After this node's lease had lapsed: `holder`'s record shows `current`. Returns the presence it
    /// must show (`None`: still as this node left it), stamped Connected anew; its hold is recorded
    /// again either way.
    pub(crate) fn reassert(
        &mut self,
        holder: &Holder,
        current: &Presence,
        now: Timestamp,
        holds: &mut Vec<HoldChange>,
    ) -> Option<Presence> {
        let held = self.by_holder.get_mut(holder)?;
        if current.connection_state == ConnectionState::Connected && current.connection_state_updated == held.marked {
            if let Some(stamp) = held.marked {
                holds.push(HoldChange::Held {
                    holder: holder.clone(),
                    stamp,
                });
            }
            return None;
        }
        held.marked = Some(now);
        holds.push(HoldChange::Held {
            holder: holder.clone(),
            stamp: now,
        });
        Some(Presence {
            connection_state: ConnectionState::Connected,
            connection_state_updated: Some(now),
            last_activity: current.last_activity,
        })
    }
}

/// A lapsed node's hold of a device or module whose record shows `current`: the presence it must show
/// (Disconnected), unless someone stamped it since the lapsed node did (it moved on) or it is not
/// Connected.
pub(crate) fn released(current: &Presence, stamp: Timestamp, now: Timestamp) -> Option<Presence> {
    if current.connection_state != ConnectionState::Connected || current.connection_state_updated != Some(stamp) {
        return None;
    }
    Some(Presence {
        connection_state: ConnectionState::Disconnected,
        connection_state_updated: Some(now),
        last_activity: current.last_activity,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use twinhub_core::DeviceId;

    fn holder() -> Holder {
        Holder {
            device_id: DeviceId::new("d1").unwrap(),
            module_id: Some(twinhub_core::ModuleId::new("m1").unwrap()),
        }
    }

    #[test]
    fn connected_while_a_connection_is_held_and_the_hold_recorded_with_its_stamp() {
        let mut held = Held::default();
        let mut holds = Vec::new();
        let (t1, t2, t3) = (
            Timestamp(1_000_000_000_000),
            Timestamp(2_000_000_000_000),
            Timestamp(3_000_000_000_000),
        );
        let start = Presence::default();
        let first = held
            .event(&holder(), PresenceEvent::Connected, Some(&start), t1, &mut holds)
            .unwrap();
        assert_eq!(first.connection_state, ConnectionState::Connected);
        assert_eq!(
            holds,
            [HoldChange::Held {
                holder: holder(),
                stamp: t1
            }]
        );
        // A takeover: the second connection opens, then the first closes; still Connected, same stamp.
        let second = held
            .event(&holder(), PresenceEvent::Connected, Some(&first), t2, &mut holds)
            .unwrap();
        let after_close = held
            .event(&holder(), PresenceEvent::Disconnected, Some(&second), t2, &mut holds)
            .unwrap();
        assert_eq!(after_close.connection_state, ConnectionState::Connected);
        assert_eq!(after_close.connection_state_updated, Some(t1));
        assert_eq!(holds.len(), 1);
        assert_eq!(held.holders(), [holder()]);
        // Another node stamped it since: the last close here leaves it Connected, and the hold is released.
        let elsewhere = Presence {
            connection_state: ConnectionState::Connected,
            connection_state_updated: Some(t3),
            last_activity: None,
        };
        let last = held
            .event(&holder(), PresenceEvent::Disconnected, Some(&elsewhere), t3, &mut holds)
            .unwrap();
        assert_eq!(last.connection_state, ConnectionState::Connected);
        assert_eq!(holds.last(), Some(&HoldChange::Released(holder())));
        assert!(held.holders().is_empty());
        // A lapsed node's hold: released only where its stamp is still the record's.
        assert_eq!(released(&elsewhere, t1, t3), None);
        assert_eq!(
            released(&elsewhere, t3, t3).map(|presence| presence.connection_state),
            Some(ConnectionState::Disconnected)
        );
    }
}
