//! MQTT sessions, kept per client id across connections (clean session 0), because the SDKs rely on it:
//! token renewal is a full reconnect that subscribes to nothing again (device-mqtt-http notes §4.9).
//!
//! A session outlives its connections; at most one connection owns it at a time. A new CONNECT with the
//! same client id takes the session over and closes the old connection (in a cluster, on whichever
//! node it is: `twinhub_hub::takeover`). Sessions live in memory: a hub
//! restart ends them (the twin's `connectionState` says so), as it ends every connection.

use super::topic::{self, Subscription};
use super::wire::QoS;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use tokio::sync::Notify;
use twinhub_core::desired_delivery::DesiredCursor;
use twinhub_core::session::{SessionRecord, StoredSubscription};
use twinhub_core::DeviceId;
use twinhub_hub::Interests;

/// Who a connection acts as: a device, or one of its modules (`deviceId/moduleId`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClientIdentity {
    pub device_id: DeviceId,
    pub module_id: Option<String>,
}

impl ClientIdentity {
    /// The MQTT client id: `deviceId` or `deviceId/moduleId`.
    pub fn parse(client_id: &str) -> Option<ClientIdentity> {
        let (device, module) = match client_id.split_once('/') {
            Some((device, module)) => (device, Some(module)),
            None => (client_id, None),
        };
        let device_id = DeviceId::new(device).ok()?;
        if let Some(module) = module {
            // Module ids follow device id rules.
            DeviceId::new(module).ok()?;
        }
        Some(ClientIdentity {
            device_id,
            module_id: module.map(str::to_owned),
        })
    }

    pub fn client_id(&self) -> String {
        match &self.module_id {
            Some(module) => format!("{}/{module}", self.device_id),
            None => self.device_id.to_string(),
        }
    }
}

/// The connection that owns a session, as the session layer reaches it. (Desired changes and method
/// requests reach it through the hub's device router, where it registers.)
pub struct Owner {
    pub connection_id: u64,
    /// When the connection took the session: an announcement from another node of a later connection
    /// closes it, one of an earlier one does not.
    pub attached_at: twinhub_core::Timestamp,
    /// Told to close: taken over by a new connection, or the device was disabled or deleted.
    pub close: Arc<Notify>,
}

#[derive(Default)]
pub struct SessionState {
    /// The QoS granted per subscription kind (index: `Subscription::index`).
    granted: [Option<QoS>; Subscription::ALL.len()],
    /// The desired `$version` the device was given (GET, notification, or full document); what decides
    /// whether it missed changes (`twinhub_core::desired_delivery`).
    pub desired: DesiredCursor,
    owner: Option<Owner>,
    /// Whether the store holds this session (it is persistent and has subscribed to something).
    pub stored: bool,
}

impl SessionState {
    pub fn granted(&self, subscription: Subscription) -> Option<QoS> {
        self.granted[subscription.index()]
    }

    pub fn grant(&mut self, subscription: Subscription, qos: Option<QoS>) {
        self.granted[subscription.index()] = qos;
    }

    /// What the owning connection listens to in the hub's device router.
    pub fn interests(&self) -> Interests {
        Interests {
            desired: self.granted(Subscription::DesiredPatches).is_some(),
            methods: self.granted(Subscription::Methods).is_some(),
            c2d: self.granted(Subscription::CloudToDevice).is_some(),
        }
    }

    /// What the store keeps of the session: its subscriptions.
    pub fn record(&self, client: &ClientIdentity) -> SessionRecord {
        SessionRecord {
            client_id: client.client_id(),
            subscriptions: Subscription::ALL
                .into_iter()
                .filter_map(|subscription| {
                    self.granted(subscription).map(|qos| StoredSubscription {
                        filter: topic::filter_of(subscription, client),
                        qos: u8::from(qos),
                    })
                })
                .collect(),
        }
    }
}

pub struct Session {
    pub client: ClientIdentity,
    state: Mutex<SessionState>,
}

impl Session {
    pub fn state(&self) -> MutexGuard<'_, SessionState> {
        // A panic while holding this lock leaves plain data behind; carry on with it.
        self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    pub fn close_owner(&self) {
        if let Some(owner) = &self.state().owner {
            owner.close.notify_one();
        }
    }
}

/// A session as the store kept it: its subscriptions, no owner, and nothing known of the desired version
/// the device has (so it gets the full desired document once).
fn stored_state(record: &SessionRecord, client: &ClientIdentity) -> SessionState {
    let mut state = SessionState {
        stored: true,
        desired: DesiredCursor::Unknown,
        ..SessionState::default()
    };
    for stored in &record.subscriptions {
        if let (Some(subscription), Ok(qos)) = (topic::parse_filter(&stored.filter, client), QoS::try_from(stored.qos))
        {
            state.grant(subscription, Some(qos));
        }
    }
    state
}

#[derive(Default)]
pub struct Sessions {
    by_client_id: Mutex<HashMap<String, Arc<Session>>>,
}

impl Sessions {
    fn map(&self) -> MutexGuard<'_, HashMap<String, Arc<Session>>> {
        self.by_client_id
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Gives the client's session to a new connection, closing the one that held it. Returns the session
    /// and whether it was present (CONNACK `sessionPresent`). A clean session starts empty. `stored`: the
    /// session the store holds, when this node has none (in a cluster, the device's session was on
    /// another node): the connection gets it, as after a restart.
    pub fn attach(
        &self,
        client: &ClientIdentity,
        clean_session: bool,
        owner: Owner,
        stored: Option<SessionRecord>,
    ) -> (Arc<Session>, bool) {
        let mut map = self.map();
        let key = client.client_id();
        let existing = map.get(&key).cloned();
        let (session, present) = match existing {
            Some(session) => {
                let present = {
                    let mut state = session.state();
                    if let Some(previous) = state.owner.take() {
                        previous.close.notify_one();
                    }
                    if clean_session {
                        // The store's copy, if any, is the caller's to forget (it sees `stored`).
                        let stored = state.stored;
                        *state = SessionState {
                            stored,
                            ..SessionState::default()
                        };
                    }
                    !clean_session
                };
                (session, present)
            }
            None => {
                let (state, present) = match stored {
                    Some(record) if !clean_session => (stored_state(&record, client), true),
                    _ => (SessionState::default(), false),
                };
                let session = Arc::new(Session {
                    client: client.clone(),
                    state: Mutex::new(state),
                });
                map.insert(key, Arc::clone(&session));
                (session, present)
            }
        };
        session.state().owner = Some(owner);
        (session, present)
    }

    /// Whether this node has a session for `client_id` (held or not).
    pub fn contains(&self, client_id: &str) -> bool {
        self.map().contains_key(client_id)
    }

    /// Another node of the cluster took the client, at `at` (its connection's time; `None`: its session
    /// was written there). This node's copy of the session goes, unless a connection here holds it that
    /// is newer than `at` (or `at` is unknown); an older one is closed (one connection per device, across
    /// nodes). The device's next connection here reads the session from the store.
    pub fn taken_elsewhere(&self, client_id: &str, at: Option<twinhub_core::Timestamp>) {
        let mut map = self.map();
        let Some(session) = map.get(client_id).cloned() else {
            return;
        };
        {
            let state = session.state();
            match (&state.owner, at) {
                (None, _) => {}
                (Some(owner), Some(at)) if owner.attached_at < at => owner.close.notify_one(),
                (Some(_), _) => return,
            }
        }
        map.remove(client_id);
    }

    /// The connection `connection_id` ended. A session it still owns becomes ownerless; a clean session is
    /// dropped. `undelivered_desired`: the lowest desired version the device did not acknowledge.
    pub fn detach(
        &self,
        session: &Arc<Session>,
        connection_id: u64,
        clean_session: bool,
        undelivered_desired: Option<u64>,
    ) {
        let mut map = self.map();
        let mut state = session.state();
        if state.owner.as_ref().map(|owner| owner.connection_id) != Some(connection_id) {
            // Taken over: the session belongs to the new connection now.
            return;
        }
        state.owner = None;
        if let Some(version) = undelivered_desired {
            state.desired.unacknowledged(version);
        }
        if clean_session {
            let key = session.client.client_id();
            if map.get(&key).is_some_and(|current| Arc::ptr_eq(current, session)) {
                map.remove(&key);
            }
        }
    }

    /// Sessions the store kept across a restart: their subscriptions, no owner, and nothing known of the
    /// desired version the device has (so it gets the full desired document once). Returns the client
    /// ids of stored sessions that no longer apply (the device is gone), for the caller to forget.
    pub fn restore(&self, records: Vec<SessionRecord>, device_exists: impl Fn(&DeviceId) -> bool) -> Vec<String> {
        let mut stale = Vec::new();
        let mut map = self.map();
        for record in records {
            let Some(client) = ClientIdentity::parse(&record.client_id).filter(|c| device_exists(&c.device_id)) else {
                stale.push(record.client_id);
                continue;
            };
            let session = Session {
                state: Mutex::new(stored_state(&record, &client)),
                client,
            };
            map.insert(record.client_id, Arc::new(session));
        }
        stale
    }

    /// Forgets every session of a deleted device; returns those the store holds.
    pub fn remove_device(&self, device_id: &DeviceId) -> Vec<String> {
        let mut map = self.map();
        let keys: Vec<String> = map
            .iter()
            .filter(|(_, session)| &session.client.device_id == device_id)
            .map(|(key, _)| key.clone())
            .collect();
        keys.into_iter()
            .filter_map(|key| {
                let session = map.remove(&key)?;
                session.close_owner();
                let stored = session.state().stored;
                stored.then_some(key)
            })
            .collect()
    }

    #[cfg(test)]
    pub fn get(&self, client_id: &str) -> Option<Arc<Session>> {
        self.map().get(client_id).cloned()
    }

    /// Every session of a device: its own and its modules'.
    pub fn of_device(&self, device_id: &DeviceId) -> Vec<Arc<Session>> {
        self.map()
            .values()
            .filter(|session| &session.client.device_id == device_id)
            .cloned()
            .collect()
    }

    pub fn all(&self) -> Vec<Arc<Session>> {
        self.map().values().cloned().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn owner(connection_id: u64) -> (Owner, (), Arc<Notify>) {
        let close = Arc::new(Notify::new());
        (
            Owner {
                connection_id,
                // Connections attach in the order of their ids.
                attached_at: twinhub_core::Timestamp(connection_id as i64),
                close: Arc::clone(&close),
            },
            (),
            close,
        )
    }

    #[tokio::test]
    async fn another_node_taking_the_client_closes_only_an_older_connection_here() {
        use twinhub_core::Timestamp;
        let sessions = Sessions::default();
        let client = ClientIdentity::parse("d1").unwrap();
        let (held, (), closed) = owner(10);
        sessions.attach(&client, false, held, None);
        // A session write seen in the commit log closes no connection.
        sessions.taken_elsewhere("d1", None);
        assert!(sessions.contains("d1"));
        // A connection elsewhere older than this one's: this one stays.
        sessions.taken_elsewhere("d1", Some(Timestamp(5)));
        assert!(sessions.contains("d1"));
        // A newer one: this one closes and the copy goes.
        sessions.taken_elsewhere("d1", Some(Timestamp(20)));
        assert!(!sessions.contains("d1"));
        tokio::time::timeout(std::time::Duration::from_secs(1), closed.notified())
            .await
            .expect("the older connection is told to close");
        // A copy no connection holds goes whatever the signal.
        let (held, (), _) = owner(30);
        let (session, _) = sessions.attach(&client, false, held, None);
        sessions.detach(&session, 30, false, None);
        sessions.taken_elsewhere("d1", None);
        assert!(!sessions.contains("d1"));
    }

    #[test]
    fn client_ids_name_a_device_or_a_module() {
        let device = ClientIdentity::parse("d1").unwrap();
        assert_eq!((device.device_id.as_str(), device.module_id.as_deref()), ("d1", None));
        let module = ClientIdentity::parse("d1/m1").unwrap();
        assert_eq!(module.client_id(), "d1/m1");
        assert!(ClientIdentity::parse("").is_none());
        assert!(ClientIdentity::parse("d1/").is_none());
        assert!(ClientIdentity::parse("d1/m1/x").is_none());
    }

    #[tokio::test]
    async fn a_persistent_session_keeps_subscriptions_and_a_takeover_closes_the_old_owner() {
        let sessions = Sessions::default();
        let client = ClientIdentity::parse("d1").unwrap();
        let (first, _first_mail, first_close) = owner(1);
        let (session, present) = sessions.attach(&client, false, first, None);
        assert!(!present);
        session
            .state()
            .grant(Subscription::DesiredPatches, Some(QoS::AtLeastOnce));

        let (second, (), second_close) = owner(2);
        let (again, present) = sessions.attach(&client, false, second, None);
        assert!(present && Arc::ptr_eq(&session, &again));
        tokio::time::timeout(std::time::Duration::from_secs(1), first_close.notified())
            .await
            .expect("the old connection is told to close");
        assert_eq!(
            again.state().granted(Subscription::DesiredPatches),
            Some(QoS::AtLeastOnce)
        );

        assert_eq!(
            again.state().interests(),
            Interests {
                desired: true,
                ..Interests::default()
            }
        );

        // The old connection's late detach does not take the session from the new owner.
        sessions.detach(&session, 1, false, None);
        again.close_owner();
        tokio::time::timeout(std::time::Duration::from_secs(1), second_close.notified())
            .await
            .expect("the session still belongs to the second connection");
    }

    #[test]
    fn a_clean_session_starts_empty_and_is_dropped_at_disconnect() {
        let sessions = Sessions::default();
        let client = ClientIdentity::parse("d1").unwrap();
        let (first, _, _) = owner(1);
        let (session, _) = sessions.attach(&client, false, first, None);
        session
            .state()
            .grant(Subscription::TwinResponses, Some(QoS::AtMostOnce));
        session.state().desired = DesiredCursor::Given(7);
        sessions.detach(&session, 1, false, Some(5));
        assert_eq!(
            session.state().desired,
            DesiredCursor::Given(4),
            "unacknowledged notifications count as missed"
        );

        let (clean, _, _) = owner(2);
        let (session, present) = sessions.attach(&client, true, clean, None);
        assert!(!present);
        assert_eq!(session.state().granted(Subscription::TwinResponses), None);
        sessions.detach(&session, 2, true, None);
        assert!(sessions.get("d1").is_none());
    }
}
