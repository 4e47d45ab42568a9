//! IoT Hub's MQTT topics, typed: what a device publishes and subscribes to, checked against the identity
//! it connected as, and the topics the hub publishes on. Ref: device-mqtt-http notes §4.3, §4.5.

use super::session::ClientIdentity;

/// A device's PUBLISH, by what it asks for.
#[derive(Debug, PartialEq, Eq)]
pub enum Inbound<'a> {
    TwinGet {
        rid: &'a str,
    },
    TwinPatchReported {
        rid: &'a str,
    },
    /// `$iothub/twin/<something else>/?$rid=`: answered with an error, never left hanging.
    TwinUnsupported {
        rid: &'a str,
    },
    /// `devices/{id}/messages/events/{property bag}` (or the module form).
    Telemetry {
        bag: &'a str,
    },
    /// `$iothub/methods/res/{status}/?$rid=`: a device's answer to a direct method.
    MethodResponse {
        status: i32,
        rid: &'a str,
    },
}

/// Why a PUBLISH is refused. The connection is closed: IoT Hub does the same for unauthorized topics.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum TopicError {
    #[error("the topic belongs to another device or module")]
    NotOwnTopic,
    #[error("the topic is not one of IoT Hub's device topics")]
    Unknown,
    #[error("a twin request without a $rid cannot be answered")]
    MissingRequestId,
}

/// The `$rid` of a twin topic's query string, exactly as sent (echoed byte for byte).
fn request_id(query: &str) -> Option<&str> {
    query
        .split('&')
        .find_map(|pair| pair.strip_prefix("$rid="))
        .filter(|rid| !rid.is_empty())
}

/// `<path>/?<query>` or `<path>?<query>` → (path without the trailing slash, query).
fn split_query(topic: &str) -> (&str, &str) {
    match topic.split_once('?') {
        Some((path, query)) => (path.trim_end_matches('/'), query),
        None => (topic.trim_end_matches('/'), ""),
    }
}

/// The telemetry prefix a client may publish under: `devices/{id}/messages/events/` or
/// `devices/{id}/modules/{mid}/messages/events/`.
fn telemetry_prefix(client: &ClientIdentity) -> String {
    match &client.module_id {
        Some(module) => format!("devices/{}/modules/{module}/messages/events", client.device_id),
        None => format!("devices/{}/messages/events", client.device_id),
    }
}

pub fn parse_publish<'a>(topic: &'a str, client: &ClientIdentity) -> Result<Inbound<'a>, TopicError> {
    if let Some(rest) = topic.strip_prefix("$iothub/twin/") {
        let (path, query) = split_query(rest);
        let rid = request_id(query).ok_or(TopicError::MissingRequestId)?;
        return Ok(match path {
            "GET" => Inbound::TwinGet { rid },
            "PATCH/properties/reported" => Inbound::TwinPatchReported { rid },
            _ => Inbound::TwinUnsupported { rid },
        });
    }
    if let Some(rest) = topic.strip_prefix("$iothub/methods/res/") {
        let (path, query) = split_query(rest);
        let status = path.parse::<i32>().map_err(|_| TopicError::Unknown)?;
        let rid = request_id(query).ok_or(TopicError::MissingRequestId)?;
        return Ok(Inbound::MethodResponse { status, rid });
    }
    if topic.starts_with("devices/") {
        let own = telemetry_prefix(client);
        let tail = topic.strip_prefix(own.as_str());
        return match tail {
            Some("") => Ok(Inbound::Telemetry { bag: "" }),
            Some(bag) if bag.starts_with('/') => Ok(Inbound::Telemetry { bag }),
            _ => Err(TopicError::NotOwnTopic),
        };
    }
    Err(TopicError::Unknown)
}

/// What a SUBSCRIBE topic filter asks for; `None`: refused (SUBACK 0x80).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Subscription {
    TwinResponses,
    DesiredPatches,
    Methods,
    CloudToDevice,
    ModuleInputs,
}

impl Subscription {
    pub const ALL: [Subscription; 5] = [
        Subscription::TwinResponses,
        Subscription::DesiredPatches,
        Subscription::Methods,
        Subscription::CloudToDevice,
        Subscription::ModuleInputs,
    ];

    pub fn index(self) -> usize {
        self as usize
    }
}

pub fn parse_filter(filter: &str, client: &ClientIdentity) -> Option<Subscription> {
    match filter {
        "$iothub/twin/res/#" => Some(Subscription::TwinResponses),
        "$iothub/twin/PATCH/properties/desired/#" => Some(Subscription::DesiredPatches),
        "$iothub/methods/POST/#" => Some(Subscription::Methods),
        _ => {
            let device = client.device_id.as_str();
            let rest = filter.strip_prefix("devices/")?.strip_prefix(device)?;
            match (&client.module_id, rest) {
                (None, "/messages/devicebound/#") => Some(Subscription::CloudToDevice),
                (Some(module), rest) => {
                    let inputs = rest.strip_prefix("/modules/")?.strip_prefix(module.as_str())?;
                    (inputs == "/inputs/#").then_some(Subscription::ModuleInputs)
                }
                _ => None,
            }
        }
    }
}

/// The filter a device subscribes with for `subscription` (what `parse_filter` maps back).
pub fn filter_of(subscription: Subscription, client: &ClientIdentity) -> String {
    match subscription {
        Subscription::TwinResponses => "$iothub/twin/res/#".to_owned(),
        Subscription::DesiredPatches => "$iothub/twin/PATCH/properties/desired/#".to_owned(),
        Subscription::Methods => "$iothub/methods/POST/#".to_owned(),
        Subscription::CloudToDevice => format!("devices/{}/messages/devicebound/#", client.device_id),
        Subscription::ModuleInputs => format!(
            "devices/{}/modules/{}/inputs/#",
            client.device_id,
            client.module_id.as_deref().unwrap_or_default()
        ),
    }
}

/// `$iothub/twin/res/{status}/?$rid={rid}[&$version={n}]`: the slash before `?` is kept, Python reads the
/// status as the fourth segment.
pub fn twin_response(status: u16, rid: &str, version: Option<u64>) -> String {
    match version {
        Some(version) => format!("$iothub/twin/res/{status}/?$rid={rid}&$version={version}"),
        None => format!("$iothub/twin/res/{status}/?$rid={rid}"),
    }
}

/// `$iothub/methods/POST/{name}/?$rid={rid}`, the slash before `?` kept as IoT Hub sends it.
pub fn method_request(name: &str, rid: &str) -> String {
    format!("$iothub/methods/POST/{name}/?$rid={rid}")
}

pub fn desired_patch(version: u64) -> String {
    format!("$iothub/twin/PATCH/properties/desired/?$version={version}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use twinhub_core::DeviceId;

    fn device(id: &str) -> ClientIdentity {
        ClientIdentity {
            device_id: DeviceId::new(id).unwrap(),
            module_id: None,
        }
    }

    fn module(id: &str, module: &str) -> ClientIdentity {
        ClientIdentity {
            device_id: DeviceId::new(id).unwrap(),
            module_id: Some(module.to_owned()),
        }
    }

    #[test]
    fn twin_requests_keep_their_request_id_as_sent() {
        let d1 = device("d1");
        let rid = "1a09c44b-37a8-4fcd-b38a-fff8b9ead0ec";
        assert_eq!(
            parse_publish(&format!("$iothub/twin/GET/?$rid={rid}"), &d1),
            Ok(Inbound::TwinGet { rid })
        );
        assert_eq!(
            parse_publish("$iothub/twin/GET?$rid=7", &d1),
            Ok(Inbound::TwinGet { rid: "7" })
        );
        assert_eq!(
            parse_publish("$iothub/twin/PATCH/properties/reported/?$rid=a%20b&$version=3", &d1),
            Ok(Inbound::TwinPatchReported { rid: "a%20b" })
        );
        assert_eq!(
            parse_publish("$iothub/twin/PUT/?$rid=9", &d1),
            Ok(Inbound::TwinUnsupported { rid: "9" })
        );
        assert_eq!(
            parse_publish("$iothub/twin/GET/", &d1),
            Err(TopicError::MissingRequestId)
        );
        assert_eq!(
            parse_publish("$iothub/twin/GET/?$rid=", &d1),
            Err(TopicError::MissingRequestId)
        );
    }

    #[test]
    fn telemetry_only_on_the_clients_own_topics() {
        let d1 = device("d1");
        for topic in [
            "devices/d1/messages/events/",
            "devices/d1/messages/events",
            "devices/d1/messages/events/%24.mid=1&a=b",
        ] {
            assert!(
                matches!(parse_publish(topic, &d1), Ok(Inbound::Telemetry { .. })),
                "{topic}"
            );
        }
        for topic in [
            "devices/d2/messages/events/",
            "devices/d10/messages/events/",
            "devices/d1/messages/eventsX",
            "devices/d1/modules/m1/messages/events/",
        ] {
            assert_eq!(parse_publish(topic, &d1), Err(TopicError::NotOwnTopic), "{topic}");
        }
        let m1 = module("d1", "m1");
        assert_eq!(
            parse_publish("devices/d1/modules/m1/messages/events/%24.on=out&k=v/", &m1),
            Ok(Inbound::Telemetry {
                bag: "/%24.on=out&k=v/"
            })
        );
        assert_eq!(
            parse_publish("devices/d1/messages/events/", &m1),
            Err(TopicError::NotOwnTopic)
        );
        assert_eq!(
            parse_publish("$iothub/methods/res/200/?$rid=1f", &d1),
            Ok(Inbound::MethodResponse { status: 200, rid: "1f" })
        );
        assert_eq!(
            parse_publish("$iothub/methods/res/-1?$rid=2", &d1),
            Ok(Inbound::MethodResponse { status: -1, rid: "2" })
        );
        assert_eq!(
            parse_publish("$iothub/methods/res/200/", &d1),
            Err(TopicError::MissingRequestId)
        );
        assert_eq!(
            parse_publish("$iothub/methods/res/x/?$rid=1", &d1),
            Err(TopicError::Unknown)
        );
        assert_eq!(parse_publish("hello/world", &d1), Err(TopicError::Unknown));
    }

    #[test]
    fn subscriptions_to_own_topics_only() {
        let d1 = device("d1");
        assert_eq!(
            parse_filter("$iothub/twin/res/#", &d1),
            Some(Subscription::TwinResponses)
        );
        assert_eq!(
            parse_filter("$iothub/twin/PATCH/properties/desired/#", &d1),
            Some(Subscription::DesiredPatches)
        );
        assert_eq!(parse_filter("$iothub/methods/POST/#", &d1), Some(Subscription::Methods));
        assert_eq!(
            parse_filter("devices/d1/messages/devicebound/#", &d1),
            Some(Subscription::CloudToDevice)
        );
        for filter in [
            "#",
            "$iothub/#",
            "devices/d2/messages/devicebound/#",
            "devices/+/messages/devicebound/#",
        ] {
            assert_eq!(parse_filter(filter, &d1), None, "{filter}");
        }
        let m1 = module("d1", "m1");
        assert_eq!(
            parse_filter("devices/d1/modules/m1/inputs/#", &m1),
            Some(Subscription::ModuleInputs)
        );
        assert_eq!(parse_filter("devices/d1/modules/m2/inputs/#", &m1), None);
    }

    #[test]
    fn filters_map_back_to_their_subscription() {
        for client in [device("d1"), module("d1", "m1")] {
            for subscription in Subscription::ALL {
                let filter = filter_of(subscription, &client);
                let expected = match (subscription, &client.module_id) {
                    (Subscription::CloudToDevice, Some(_)) | (Subscription::ModuleInputs, None) => None,
                    _ => Some(subscription),
                };
                assert_eq!(parse_filter(&filter, &client), expected, "{filter}");
            }
        }
    }

    #[test]
    fn response_topics_keep_the_slash_before_the_query() {
        assert_eq!(twin_response(200, "r1", None), "$iothub/twin/res/200/?$rid=r1");
        assert_eq!(
            twin_response(204, "r1", Some(6)),
            "$iothub/twin/res/204/?$rid=r1&$version=6"
        );
        assert_eq!(desired_patch(4), "$iothub/twin/PATCH/properties/desired/?$version=4");
        assert_eq!(method_request("reboot", "a1"), "$iothub/methods/POST/reboot/?$rid=a1");
    }
}
