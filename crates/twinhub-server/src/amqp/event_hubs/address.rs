//! What an Event Hubs link's address names. Node attaches `<hub>/ConsumerGroups/<cg>/Partitions/<id>`,
//! Python the same as an absolute `amqps://<host>[:port]/...` URL; keywords and names compare without case.

use twinhub_core::device_auth::entity_path;

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum EventHubAddress {
    Management,
    Partition {
        /// Lower-cased: consumer groups compare without case.
        consumer_group: String,
        partition: String,
    },
}

/// The Event Hubs entity `address` names under hub `hub_name`, if any.
pub fn parse(address: &str, hub_name: &str) -> Option<EventHubAddress> {
    if address.eq_ignore_ascii_case("$management") {
        return Some(EventHubAddress::Management);
    }
    let path = entity_path(address);
    let segments: Vec<&str> = path.split('/').collect();
    match segments.as_slice() {
        [hub, "$management"] if hub.eq_ignore_ascii_case(hub_name) => Some(EventHubAddress::Management),
        [hub, "consumergroups", consumer_group, "partitions", partition] if hub.eq_ignore_ascii_case(hub_name) => {
            Some(EventHubAddress::Partition {
                consumer_group: (*consumer_group).to_owned(),
                partition: (*partition).to_owned(),
            })
        }
        _ => None,
    }
}

impl EventHubAddress {
    /// The entity path a token must cover to use this link (lower case, as `entity_path` gives).
    pub fn entity_path(&self, hub_name: &str) -> String {
        let hub = hub_name.to_ascii_lowercase();
        match self {
            EventHubAddress::Management => hub,
            EventHubAddress::Partition {
                consumer_group,
                partition,
            } => format!("{hub}/consumergroups/{consumer_group}/partitions/{partition}"),
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
            consumer_group: "$default".into(),
            partition: "3".into(),
        };
        let expected = Some(address.clone());
        assert_eq!(parse("myhub/ConsumerGroups/$Default/Partitions/3", "myhub"), expected);
        assert_eq!(
            parse(
                "amqps://127.0.0.1:5671/MyHub/ConsumerGroups/$Default/Partitions/3",
                "myhub"
            ),
            expected
        );
        assert_eq!(parse("$management", "myhub"), Some(EventHubAddress::Management));
        assert_eq!(parse("otherhub/ConsumerGroups/$Default/Partitions/3", "myhub"), None);
        assert_eq!(parse("/devices/d1/messages/events", "myhub"), None);
        assert_eq!(
            address.entity_path("MyHub"),
            "myhub/consumergroups/$default/partitions/3"
        );
        assert!(covers("myhub/consumergroups/$default", &address.entity_path("myhub")));
        assert!(covers("myhub", &address.entity_path("myhub")));
        assert!(!covers("myhub/consumergroups/$def", &address.entity_path("myhub")));
    }
}
