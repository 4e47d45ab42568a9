//! What a device has been given of its desired properties, and what it must be sent next: the one rule
//! behind README's "devices never miss desired properties", used by every device transport (an MQTT
//! session keeps one cursor, AMQP one per device).
//!
//! IoT Hub notifies a subscribed device of each desired change and nothing else: a change that lands
//! before the subscription is acknowledged (after the device's twin GET, while it was away, or while the
//! hub restarted) is never sent. twinhub closes those gaps by comparing the twin's desired `$version`
//! with the last one the device was given, and sending the whole desired document once when it moved.

/// The desired `$version` a device was last given (a twin GET, a notification, a whole document).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum DesiredCursor {
    /// Nothing given yet, and nothing lost: a device starting afresh, which, as on IoT Hub, hears of the
    /// changes made after it subscribed (it reads its twin for the rest).
    #[default]
    Fresh,
    /// The hub lost track (it restarted since): the device may hold any version, so it is sent the whole
    /// document when it subscribes or comes back.
    Unknown,
    Given(u64),
}

impl DesiredCursor {
    /// A twin GET answered with desired `$version` `version`.
    pub fn gave(&mut self, version: u64) {
        if !self.covers(version) {
            *self = DesiredCursor::Given(version);
        }
    }

    /// Whether the device already has `version` (a notification for it would repeat or reorder).
    pub fn covers(&self, version: u64) -> bool {
        matches!(self, DesiredCursor::Given(given) if *given >= version)
    }

    /// A notification of the change to `version` is ready: whether to send it. Sending it is giving it.
    pub fn take_change(&mut self, version: u64) -> bool {
        if self.covers(version) {
            return false;
        }
        *self = DesiredCursor::Given(version);
        true
    }

    /// The device's subscription to desired changes took effect (changes from now on reach it) with the
    /// twin at `current`: a fresh device starts from here.
    pub fn subscribing(&mut self, current: u64) {
        if *self == DesiredCursor::Fresh {
            *self = DesiredCursor::Given(current);
        }
    }

    /// The subscription was acknowledged with the twin at `current`: whether to send the whole document
    /// right after the acknowledgement, because the device was given an older version (a change landed
    /// between its GET and now) or the hub knows nothing of what it has. Sending it is giving it.
    pub fn subscribed(&mut self, current: u64) -> bool {
        self.subscribing(current);
        self.catch_up(current)
    }

    /// The device came back, or notifications were lost on the way (a full queue, a lagging router):
    /// whether to send the whole document at `current`. Sending it is giving it.
    pub fn catch_up(&mut self, current: u64) -> bool {
        if self.covers(current) {
            return false;
        }
        *self = DesiredCursor::Given(current);
        true
    }

    /// A notification of `version` may not have reached the device (never acknowledged): it counts as
    /// given only up to the version before.
    pub fn unacknowledged(&mut self, version: u64) {
        if let DesiredCursor::Given(given) = *self {
            *self = DesiredCursor::Given(given.min(version.saturating_sub(1)));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_fresh_device_starts_where_it_subscribed() {
        let mut cursor = DesiredCursor::Fresh;
        assert!(!cursor.subscribed(4));
        assert!(!cursor.take_change(4), "the version it subscribed at is not sent again");
        assert!(cursor.take_change(5));
    }

    #[test]
    fn a_change_between_the_get_and_the_subscription_sends_the_whole_document() {
        let mut cursor = DesiredCursor::Fresh;
        cursor.gave(1);
        assert!(cursor.subscribed(2));
        assert_eq!(cursor, DesiredCursor::Given(2));
        assert!(!cursor.take_change(2), "the queued notification it covers is skipped");
        let mut unchanged = DesiredCursor::Fresh;
        unchanged.gave(3);
        assert!(!unchanged.subscribed(3));
    }

    #[test]
    fn a_device_the_hub_knows_nothing_of_gets_the_whole_document() {
        let mut cursor = DesiredCursor::Unknown;
        assert!(
            cursor.subscribed(1),
            "even at the first version: the device may hold another"
        );
        let mut returning = DesiredCursor::Unknown;
        assert!(returning.catch_up(7));
        assert!(!returning.catch_up(7), "once");
    }

    #[test]
    fn notifications_go_in_version_order_and_unacknowledged_ones_count_as_missed() {
        let mut cursor = DesiredCursor::Given(3);
        assert!(!cursor.take_change(2));
        assert!(cursor.take_change(4));
        assert!(cursor.take_change(6));
        cursor.unacknowledged(5);
        assert_eq!(cursor, DesiredCursor::Given(4));
        assert!(cursor.catch_up(6));
        cursor.gave(2);
        assert_eq!(cursor, DesiredCursor::Given(6), "a GET never moves it back");
        let mut unknown = DesiredCursor::Unknown;
        unknown.unacknowledged(3);
        assert_eq!(unknown, DesiredCursor::Unknown);
    }
}
