//! Message routing conditions, IoT Hub's routing query language: the query language's expressions over a
//! message instead of a twin. A bare name is an application property; `$contentType`, `$connectionDeviceId`
//! and the other system properties are the message's; `$body.a.b[0]` reads a JSON body (only when the
//! content type says JSON and the encoding UTF-8, -16 or -32, as on IoT Hub); `$twin.tags...` and
//! `$twin.properties...` read the sending device's twin. A condition passes only when it is `true`:
//! `undefined` and `null` do not route.

use crate::ast::Expr;
use crate::document::FieldPath;
use crate::eval::{passes, Resolve};
use crate::value::{ObjectRef, QValue};
use crate::QueryError;
use std::borrow::Cow;
use std::sync::OnceLock;
use twinhub_core::event::{DeviceEvent, EventOrigin, EventValue};
use twinhub_core::{DeviceRecord, Timestamp};

/// A parsed routing condition, ready to run over any number of messages.
#[derive(Clone, Debug)]
pub struct RoutingCondition {
    condition: Expr,
    /// Whether any path reads the device's twin: the router looks it up only then.
    reads_twin: bool,
}

impl RoutingCondition {
    /// Parses a condition; an empty one is `true` (IoT Hub's default). Errors say where, as query
    /// errors do.
    pub fn parse(text: &str) -> Result<RoutingCondition, QueryError> {
        let text = if text.trim().is_empty() { "true" } else { text };
        let condition = crate::parser::parse_condition(text)?;
        let mut reads_twin = false;
        visit_paths(&condition, &mut |path| {
            reads_twin |= path
                .written
                .first()
                .is_some_and(|root| root.eq_ignore_ascii_case("$twin"));
        });
        Ok(RoutingCondition { condition, reads_twin })
    }

    pub fn reads_twin(&self) -> bool {
        self.reads_twin
    }

    pub fn matches(&self, message: &RoutedMessage) -> bool {
        passes(&self.condition, message)
    }
}

fn visit_paths(expr: &Expr, visit: &mut impl FnMut(&FieldPath)) {
    match expr {
        Expr::Constant(_) => {}
        Expr::Path(path) => visit(path),
        Expr::Not(inner) | Expr::Negate(inner) => visit_paths(inner, visit),
        Expr::Binary(_, left, right) => {
            visit_paths(left, visit);
            visit_paths(right, visit);
        }
        Expr::In { value, list, .. } => {
            visit_paths(value, visit);
            visit_paths(list, visit);
        }
        Expr::Call(_, args) => args.iter().for_each(|arg| visit_paths(arg, visit)),
    }
}

/// A message as conditions see it: the event, who sent it, when the hub took it, and the sender's twin
/// (when a condition reads it). The body is parsed once, on the first `$body` path.
pub struct RoutedMessage<'a> {
    pub event: &'a DeviceEvent,
    pub origin: &'a EventOrigin,
    pub enqueued_time: Timestamp,
    pub twin: Option<&'a DeviceRecord>,
    body: OnceLock<Option<serde_json::Value>>,
}

impl<'a> RoutedMessage<'a> {
    pub fn new(
        event: &'a DeviceEvent,
        origin: &'a EventOrigin,
        enqueued_time: Timestamp,
        twin: Option<&'a DeviceRecord>,
    ) -> RoutedMessage<'a> {
        RoutedMessage {
            event,
            origin,
            enqueued_time,
            twin,
            body: OnceLock::new(),
        }
    }

    /// The body as JSON when the message says it is JSON in UTF-8, -16 or -32; otherwise `$body` is undefined.
    fn body(&self) -> Option<&serde_json::Value> {
        self.body
            .get_or_init(|| {
                let properties = &self.event.properties;
                let json = properties.content_type.as_deref().is_some_and(|content_type| {
                    let media_type = content_type.split(';').next().unwrap_or_default().trim();
                    media_type.eq_ignore_ascii_case("application/json")
                });
                if !json {
                    return None;
                }
                let text = decode_text(&self.event.body, properties.content_encoding.as_deref()?)?;
                serde_json::from_str(text.trim_start_matches('\u{feff}')).ok()
            })
            .as_ref()
    }

    fn system_property(&self, name: &str) -> Option<QValue<'_>> {
        let properties = &self.event.properties;
        let text = |value: Option<&'a str>| value.map_or(QValue::Undefined, |s| QValue::Str(Cow::Borrowed(s)));
        let lower = name.to_ascii_lowercase();
        Some(match lower.as_str() {
            "contenttype" => text(properties.content_type.as_deref()),
            "contentencoding" => text(properties.content_encoding.as_deref()),
            "connectiondeviceid" => QValue::Str(Cow::Borrowed(self.origin.device_id.as_str())),
            "connectionmoduleid" => text(self.origin.module_id.as_deref()),
            "connectiondevicegenerationid" => QValue::Str(Cow::Borrowed(&self.origin.generation_id)),
            "enqueuedtime" => QValue::Str(Cow::Owned(self.enqueued_time.to_iso8601())),
            "messageid" => properties.message_id.as_ref().map_or(QValue::Undefined, event_value),
            "correlationid" => properties
                .correlation_id
                .as_ref()
                .map_or(QValue::Undefined, event_value),
            "userid" => properties
                .user_id
                .as_deref()
                .map_or(QValue::Undefined, |bytes| QValue::Str(String::from_utf8_lossy(bytes))),
            _ => return None,
        })
    }

    fn application_property(&self, name: &str) -> QValue<'_> {
        self.event
            .application_properties
            .iter()
            .find(|(key, _)| key.eq_ignore_ascii_case(name))
            .map_or(QValue::Undefined, |(_, value)| event_value(value))
    }
}

impl Resolve for RoutedMessage<'_> {
    fn resolve<'a>(&'a self, path: &'a FieldPath) -> QValue<'a> {
        let Some((root, rest)) = path.written.split_first() else {
            return QValue::Undefined;
        };
        if let Some(system) = root.strip_prefix('$') {
            if system.eq_ignore_ascii_case("body") {
                return self.body().map_or(QValue::Undefined, |body| walk_json(body, rest));
            }
            if system.eq_ignore_ascii_case("twin") {
                return match self.twin {
                    Some(twin) if !rest.is_empty() => FieldPath::new(rest.to_vec()).resolve(twin),
                    _ => QValue::Undefined,
                };
            }
            if let Some(value) = self.system_property(system) {
                return if rest.is_empty() { value } else { QValue::Undefined };
            }
        }
        if !rest.is_empty() {
            // Application properties are flat: they have no members.
            return QValue::Undefined;
        }
        // A `$name` that is no system property is an application property (with or without the `$`).
        match self.application_property(root) {
            QValue::Undefined => root
                .strip_prefix('$')
                .map_or(QValue::Undefined, |name| self.application_property(name)),
            found => found,
        }
    }
}

fn event_value(value: &EventValue) -> QValue<'_> {
    match value {
        EventValue::Null => QValue::Null,
        EventValue::Bool(b) => QValue::Bool(*b),
        EventValue::Long(n) => QValue::Number(*n as f64),
        EventValue::ULong(n) => QValue::Number(*n as f64),
        EventValue::Double(n) => QValue::Number(*n),
        EventValue::String(s) | EventValue::Symbol(s) => QValue::Str(Cow::Borrowed(s)),
        EventValue::Uuid(bytes) => QValue::Str(Cow::Owned(uuid_text(bytes))),
        EventValue::Timestamp(millis) => {
            QValue::Str(Cow::Owned(Timestamp(millis.saturating_mul(1_000_000)).to_iso8601()))
        }
        EventValue::Binary(_) => QValue::Undefined,
    }
}

fn uuid_text(bytes: &[u8; 16]) -> String {
    let hex: String = bytes.iter().map(|byte| format!("{byte:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &hex[0..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..32]
    )
}

/// A body as text in the encodings IoT Hub reads `$body` in: UTF-8, UTF-16 and UTF-32 (little-endian,
/// as .NET writes them, unless a byte order mark or a `be` name says otherwise). `None` for another
/// encoding, or bytes that are not text in it.
fn decode_text<'b>(body: &'b [u8], encoding: &str) -> Option<Cow<'b, str>> {
    let encoding = encoding.to_ascii_lowercase().replace('-', "");
    let big_endian = encoding.ends_with("be");
    match encoding.trim_end_matches("be").trim_end_matches("le") {
        "utf8" => std::str::from_utf8(body).ok().map(Cow::Borrowed),
        "utf16" => {
            if !body.len().is_multiple_of(2) {
                return None;
            }
            let big_endian = big_endian || body.starts_with(&[0xfe, 0xff]);
            let units: Vec<u16> = body
                .chunks_exact(2)
                .map(|pair| {
                    let pair = [pair[0], pair[1]];
                    if big_endian {
                        u16::from_be_bytes(pair)
                    } else {
                        u16::from_le_bytes(pair)
                    }
                })
                .collect();
            String::from_utf16(&units).ok().map(Cow::Owned)
        }
        "utf32" => {
            if !body.len().is_multiple_of(4) {
                return None;
            }
            let big_endian = big_endian || body.starts_with(&[0, 0, 0xfe, 0xff]);
            body.chunks_exact(4)
                .map(|quad| {
                    let quad = [quad[0], quad[1], quad[2], quad[3]];
                    char::from_u32(if big_endian {
                        u32::from_be_bytes(quad)
                    } else {
                        u32::from_le_bytes(quad)
                    })
                })
                .collect::<Option<String>>()
                .map(Cow::Owned)
        }
        _ => None,
    }
}

/// The value at `path` below `value`: object members by name, array elements by index.
fn walk_json<'a>(value: &'a serde_json::Value, path: &[String]) -> QValue<'a> {
    let mut at = value;
    for part in path {
        let next = match at {
            serde_json::Value::Object(members) => members.get(part),
            serde_json::Value::Array(items) => part.parse::<usize>().ok().and_then(|index| items.get(index)),
            _ => None,
        };
        match next {
            Some(next) => at = next,
            None => return QValue::Undefined,
        }
    }
    json_value(at)
}

fn json_value(value: &serde_json::Value) -> QValue<'_> {
    match value {
        serde_json::Value::Null => QValue::Null,
        serde_json::Value::Bool(b) => QValue::Bool(*b),
        serde_json::Value::Number(n) => QValue::Number(n.as_f64().unwrap_or(f64::NAN)),
        serde_json::Value::String(s) => QValue::Str(Cow::Borrowed(s)),
        serde_json::Value::Array(items) => QValue::Array(items.iter().map(json_value).collect()),
        object @ serde_json::Value::Object(_) => QValue::Object(ObjectRef::Json(object.clone())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use twinhub_core::event::EventProperties;
    use twinhub_core::json::DeviceDraft;
    use twinhub_core::record::Presence;
    use twinhub_core::twin::TwinPatch;
    use twinhub_core::{DeviceId, Twin};

    fn origin() -> EventOrigin {
        EventOrigin {
            device_id: DeviceId::new("sensor-1").unwrap(),
            module_id: None,
            generation_id: "g1".into(),
        }
    }

    fn json_event(body: &str) -> DeviceEvent {
        DeviceEvent {
            body: body.as_bytes().to_vec(),
            properties: EventProperties {
                content_type: Some("application/json".into()),
                content_encoding: Some("utf-8".into()),
                message_id: Some(EventValue::String("m-1".into())),
                ..EventProperties::default()
            },
            application_properties: vec![
                ("level".into(), EventValue::String("critical".into())),
                ("count".into(), EventValue::Long(7)),
            ],
            annotations: Vec::new(),
        }
    }

    fn matches(condition: &str, event: &DeviceEvent, twin: Option<&DeviceRecord>) -> bool {
        let origin = origin();
        let message = RoutedMessage::new(event, &origin, Timestamp(0), twin);
        RoutingCondition::parse(condition).unwrap().matches(&message)
    }

    #[test]
    fn application_and_system_properties() {
        let event = json_event(r#"{"temperature": 31}"#);
        assert!(matches("level = 'critical'", &event, None));
        assert!(matches("LEVEL = 'critical' AND count > 5", &event, None));
        assert!(!matches("level = 'normal'", &event, None));
        assert!(matches("$connectionDeviceId = 'sensor-1'", &event, None));
        assert!(matches(
            "$contentType = 'application/json' AND $messageId = 'm-1'",
            &event,
            None
        ));
        assert!(matches("", &event, None), "an empty condition is true");
        assert!(!matches("missing = 'x'", &event, None), "undefined does not route");
        assert!(matches("NOT IS_DEFINED(missing)", &event, None));
    }

    #[test]
    fn the_body_is_read_only_as_json_with_a_text_encoding() {
        let mut event = json_event(r#"{"weather": {"temperature": 31, "readings": [1, 2, 40]}, "on": true}"#);
        assert!(matches("$body.weather.temperature > 30", &event, None));
        assert!(matches("$body.weather.readings[2] = 40", &event, None));
        assert!(matches("$body.on = true", &event, None));
        assert!(!matches("$body.weather.readings[3] = 40", &event, None));
        event.properties.content_encoding = None;
        assert!(!matches("$body.weather.temperature > 30", &event, None));
        let not_json = json_event("temperature=31");
        assert!(!matches("$body.temperature > 30", &not_json, None));
    }

    #[test]
    fn the_body_is_read_in_utf16_and_utf32_too() {
        let text = r#"{"temperature": 31}"#;
        let mut event = json_event("");
        event.properties.content_encoding = Some("UTF-16".into());
        event.body = text.encode_utf16().flat_map(u16::to_le_bytes).collect();
        assert!(matches("$body.temperature > 30", &event, None));
        event.properties.content_encoding = Some("utf-16be".into());
        event.body = text.encode_utf16().flat_map(u16::to_be_bytes).collect();
        assert!(matches("$body.temperature > 30", &event, None));
        event.properties.content_encoding = Some("utf-32".into());
        event.body = text.chars().flat_map(|c| (c as u32).to_le_bytes()).collect();
        assert!(matches("$body.temperature > 30", &event, None));
        event.properties.content_encoding = Some("latin-1".into());
        assert!(!matches("$body.temperature > 30", &event, None));
    }

    #[test]
    fn the_twin_is_the_senders() {
        let event = json_event("{}");
        let rules = twinhub_core::TwinRules::default();
        let now = Timestamp(0);
        let draft = DeviceDraft::from_json(&serde_json::json!({"deviceId": "sensor-1"}), "deviceId").unwrap();
        let patch = TwinPatch::from_json(&serde_json::json!({"tags": {"plant": "north"}}), &rules).unwrap();
        let twin = Twin::new(now).patched(&patch, now, &rules).unwrap().0;
        let twin = DeviceRecord::new(
            draft.into_identity(None, now, |_| None).unwrap(),
            twin,
            Presence::default(),
        );
        let condition = RoutingCondition::parse("$twin.tags.plant = 'north'").unwrap();
        assert!(condition.reads_twin());
        assert!(matches("$twin.tags.plant = 'north'", &event, Some(&twin)));
        assert!(!matches("$twin.tags.plant = 'north'", &event, None));
        assert!(!RoutingCondition::parse("level = 'x'").unwrap().reads_twin());
    }

    #[test]
    fn errors_say_where() {
        let error = RoutingCondition::parse("level = 'x' AND").unwrap_err().to_string();
        assert!(error.contains("column"), "{error}");
        assert!(RoutingCondition::parse("level = 'x' garbage").is_err());
        assert!(RoutingCondition::parse("$body.a[x] = 1").is_err());
    }
}
