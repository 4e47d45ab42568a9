//! What an Event Hubs link's address names. Node attaches `<hub>/ConsumerGroups/<cg>/Partitions/<id>`,
//! Python the same as an absolute `amqps://<host>[:port]/...` URL; keywords and names compare without case.

use twinhub_core::device_auth::entity_path;

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum EventHubAddress {
    /// `$management` or `<event hub>/$management`: requests name the event hub they are about.
    Management,
    Partition {
        /// The event hub, lower-cased: the built-in endpoint's name, or a custom event hub's.
        event_hub: String,
        /// Lower-cased: consumer groups compare without case.
        consumer_group: String,
        partition: String,
    },
}

/// The Event Hubs entity `address` names, if it names one (whether that event hub exists is the
/// caller's to say).
pub fn parse(address: &str) -> Option<EventHubAddress> {
    if address.eq_ignore_ascii_case("$management") {
        return Some(EventHubAddress::Management);
    }
    let path = entity_path(address);
    let segments: Vec<&str> = path.split('/').collect();
    match segments.as_slice() {
        [_, "$management"] => Some(EventHubAddress::Management),
        [event_hub, "consumergroups", consumer_group, "partitions", partition] => Some(EventHubAddress::Partition {
            event_hub: (*event_hub).to_owned(),
            consumer_group: (*consumer_group).to_owned(),
            partition: (*partition).to_owned(),
        }),
        _ => None,
    }
}

impl EventHubAddress {
    /// The entity path a token must cover to use this link (lower case, as `entity_path` gives).
    pub fn entity_path(&self) -> String {
        match self {
            EventHubAddress::Management => String::new(),
            EventHubAddress::Partition {
                event_hub,
                consumer_group,
                partition,
            } => format!("{event_hub}/consumergroups/{consumer_group}/partitions/{partition}"),
        }
    }
}

/// Whether a token scope (an entity path) covers `path`: equal, or a whole-segment prefix of it.
pub fn covers(scope: &str, path: &str) -> bool {
    path == scope || path.starts_with(&format!("{scope}/"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_sdks_addresses_name_a_partition_of_a_consumer_group() {
        let address = EventHubAddress::Partition {
            event_hub: "myhub".into(),
            consumer_group: "$default".into(),
            partition: "3".into(),
        };
        let expected = Some(address.clone());
        assert_eq!(parse("myhub/ConsumerGroups/$Default/Partitions/3"), expected);
        assert_eq!(
            parse("amqps://127.0.0.1:5671/MyHub/ConsumerGroups/$Default/Partitions/3"),
            expected
        );
        assert_eq!(parse("$management"), Some(EventHubAddress::Management));
        assert_eq!(parse("MyHub/$management"), Some(EventHubAddress::Management));
        assert!(matches!(
            parse("alerts/ConsumerGroups/$Default/Partitions/3"),
            Some(EventHubAddress::Partition { event_hub, .. }) if event_hub == "alerts"
        ));
        assert_eq!(parse("/devices/d1/messages/events"), None);
        assert_eq!(address.entity_path(), "myhub/consumergroups/$default/partitions/3");
        assert!(covers("myhub/consumergroups/$default", &address.entity_path()));
        assert!(covers("myhub", &address.entity_path()));
        assert!(!covers("myhub/consumergroups/$def", &address.entity_path()));
    }
}
