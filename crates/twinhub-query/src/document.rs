//! How a path reads a twin. Paths are resolved once, when the query is parsed, to a `Field` (the root
//! member, matched case-insensitively as IoT Hub matches system properties) and the rest of the path
//! (case-sensitive property names), so evaluating over a million twins does no string matching on roots.

use crate::value::{ObjectRef, QValue};
use std::borrow::Cow;
use twinhub_core::time::iso8601_or_never;
use twinhub_core::twin::{Members, NodeContent, Section};
use twinhub_core::value::{Object, Value};
use twinhub_core::DeviceRecord;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Field {
    DeviceId,
    Etag,
    DeviceEtag,
    Status,
    StatusReason,
    StatusUpdateTime,
    ConnectionState,
    LastActivityTime,
    CloudToDeviceMessageCount,
    AuthenticationType,
    X509Thumbprint,
    ModelId,
    Version,
    Tags,
    Properties,
    Capabilities,
    DeviceScope,
    ParentScopes,
    /// Not a member of device twins: always undefined.
    Unknown,
}

const FIELDS: &[(&str, Field)] = &[
    ("deviceId", Field::DeviceId),
    ("etag", Field::Etag),
    ("deviceEtag", Field::DeviceEtag),
    ("status", Field::Status),
    ("statusReason", Field::StatusReason),
    ("statusUpdateTime", Field::StatusUpdateTime),
    ("connectionState", Field::ConnectionState),
    ("lastActivityTime", Field::LastActivityTime),
    ("cloudToDeviceMessageCount", Field::CloudToDeviceMessageCount),
    ("authenticationType", Field::AuthenticationType),
    ("x509Thumbprint", Field::X509Thumbprint),
    ("modelId", Field::ModelId),
    ("version", Field::Version),
    ("tags", Field::Tags),
    ("properties", Field::Properties),
    ("capabilities", Field::Capabilities),
    ("deviceScope", Field::DeviceScope),
    ("parentScopes", Field::ParentScopes),
];

/// A path resolved against the twin's shape.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct FieldPath {
    pub field: Field,
    /// The members below the root, as written.
    pub rest: Vec<String>,
    /// The path as written, for error messages.
    pub written: Vec<String>,
}

impl FieldPath {
    pub fn new(written: Vec<String>) -> FieldPath {
        let root = written.first().map(String::as_str).unwrap_or_default();
        let field = FIELDS
            .iter()
            .find(|(name, _)| name.eq_ignore_ascii_case(root))
            .map_or(Field::Unknown, |(_, field)| *field);
        FieldPath {
            field,
            rest: written.iter().skip(1).cloned().collect(),
            written,
        }
    }

    /// The name a projection shows when it has no alias: the last member, in the document's own casing
    /// for system properties (`SELECT DeviceId` → `deviceId`).
    pub fn output_name(&self) -> String {
        match self.rest.last() {
            Some(last) => last.clone(),
            None if self.field == Field::Unknown => self.written.first().cloned().unwrap_or_default(),
            None => self.output_root().to_owned(),
        }
    }

    fn output_root(&self) -> &'static str {
        FIELDS
            .iter()
            .find(|(_, field)| *field == self.field)
            .map_or("", |(name, _)| name)
    }

    pub fn dotted(&self) -> String {
        self.written.join(".")
    }

    pub fn resolve<'a>(&self, record: &'a DeviceRecord) -> QValue<'a> {
        let identity = &record.identity;
        let string = |s: String| QValue::Str(Cow::Owned(s));
        let top = match self.field {
            Field::DeviceId => QValue::Str(Cow::Borrowed(identity.device_id.as_str())),
            Field::Etag => string(record.twin.etag()),
            Field::DeviceEtag => string(identity.etag()),
            Field::Status => QValue::Str(Cow::Borrowed(identity.status.as_str())),
            Field::StatusReason => identity
                .status_reason
                .as_deref()
                .map_or(QValue::Null, |s| QValue::Str(s.into())),
            Field::StatusUpdateTime => string(iso8601_or_never(identity.status_updated)),
            Field::ConnectionState => QValue::Str(Cow::Borrowed(record.presence.connection_state.as_str())),
            Field::LastActivityTime => string(iso8601_or_never(record.presence.last_activity)),
            Field::CloudToDeviceMessageCount => QValue::Number(f64::from(identity.cloud_to_device_message_count)),
            Field::AuthenticationType => QValue::Str(Cow::Borrowed(identity.authentication_type.as_str())),
            Field::ModelId => QValue::Str(Cow::Borrowed("")),
            Field::Version => QValue::Number(record.twin.version as f64),
            Field::DeviceScope => identity
                .device_scope
                .as_deref()
                .map_or(QValue::Undefined, |s| QValue::Str(s.into())),
            Field::Tags => return walk_object(&record.twin.tags, &self.rest),
            Field::Properties => return self.resolve_properties(record),
            Field::Capabilities => {
                return match self.rest.as_slice() {
                    [] => QValue::from_json(serde_json::json!({"iotEdge": identity.iot_edge})),
                    [member] if member == "iotEdge" => QValue::Bool(identity.iot_edge),
                    _ => QValue::Undefined,
                }
            }
            Field::X509Thumbprint | Field::ParentScopes => {
                // Rarely queried: read from the rendered twin rather than mirror its shape here.
                let mut value = twinhub_core::json::twin_json(record)
                    .get(self.output_root())
                    .cloned()
                    .unwrap_or_default();
                for member in &self.rest {
                    value = value.get(member).cloned().unwrap_or_default();
                }
                return if value.is_null() {
                    QValue::Undefined
                } else {
                    QValue::from_json(value)
                };
            }
            Field::Unknown => QValue::Undefined,
        };
        if self.rest.is_empty() {
            top
        } else {
            QValue::Undefined
        }
    }

    fn resolve_properties<'a>(&self, record: &'a DeviceRecord) -> QValue<'a> {
        let (section, desired) = match self.rest.first().map(String::as_str) {
            None => return QValue::from_json(record.twin.properties_json()),
            Some("desired") => (&record.twin.desired, true),
            Some("reported") => (&record.twin.reported, false),
            Some(_) => return QValue::Undefined,
        };
        walk_section(section, desired, &self.rest[1..])
    }
}

fn walk_object<'a>(object: &'a Object, path: &[String]) -> QValue<'a> {
    let Some((first, rest)) = path.split_first() else {
        return QValue::Object(ObjectRef::Tags(object));
    };
    match object.get(first) {
        None => QValue::Undefined,
        Some(Value::Object(inner)) => walk_object(inner, rest),
        Some(value) if rest.is_empty() => QValue::from_value(value),
        Some(_) => QValue::Undefined,
    }
}

fn walk_section<'a>(section: &'a Section, desired: bool, path: &[String]) -> QValue<'a> {
    match path {
        [] => QValue::Object(ObjectRef::Section(section, desired)),
        [version] if version == "$version" => QValue::Number(section.version as f64),
        [metadata, ..] if metadata == "$metadata" => {
            let mut value = section.to_json(desired);
            for member in path {
                value = value.get(member).cloned().unwrap_or_default();
            }
            if value.is_null() {
                QValue::Undefined
            } else {
                QValue::from_json(value)
            }
        }
        _ => walk_members(&section.members, path),
    }
}

fn walk_members<'a>(members: &'a Members, path: &[String]) -> QValue<'a> {
    let Some((first, rest)) = path.split_first() else {
        return QValue::Object(ObjectRef::Members(members));
    };
    match members.get(first) {
        None => QValue::Undefined,
        Some(node) => match &node.content {
            NodeContent::Members(inner) => walk_members(inner, rest),
            NodeContent::Leaf(_) if rest.is_empty() => QValue::from_node(node),
            NodeContent::Leaf(_) => QValue::Undefined,
        },
    }
}
