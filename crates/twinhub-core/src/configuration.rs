//! Automatic device configurations (`/configurations`): a target condition that selects device twins,
//! the desired properties (`content.deviceContent`) every selected twin is given, a priority that decides
//! between configurations that select the same twin, and metric queries. IoT Hub's rules and documents;
//! applying them is the hub's.

use crate::etag::device_etag;
use crate::twin::TwinPatch;
use crate::{Timestamp, TwinRuleViolation, TwinRules};
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};
use std::collections::BTreeMap;

/// Configurations a hub keeps (IoT Hub: 100 per hub).
pub const CONFIGURATIONS_MAX: usize = 100;
/// Longest configuration id (IoT Hub: 128 characters).
pub const ID_CHARS_MAX: usize = 128;
/// What every `deviceContent` key begins with: configurations write desired properties only.
const DESIRED_PREFIX: &str = "properties.desired";

/// A configuration as the hub keeps it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Configuration {
    pub id: String,
    pub schema_version: String,
    /// Labels, as given (strings).
    pub labels: Map<String, Value>,
    /// `deviceContent`: a desired property path (`properties.desired.firmware`) to the value it is given.
    pub device_content: BTreeMap<String, Value>,
    /// `modulesContent` and `moduleContent`, kept and returned as given.
    pub modules_content: Map<String, Value>,
    /// `moduleContent`: as `device_content`, for the module twins a module configuration selects (its
    /// target condition `FROM devices.modules WHERE ...`).
    pub module_content: BTreeMap<String, Value>,
    /// The condition (a query's WHERE clause) that selects device twins; empty selects none, `*` all.
    pub target_condition: String,
    pub priority: i64,
    /// Custom metrics: a name to its query.
    pub metric_queries: BTreeMap<String, String>,
    pub created: Timestamp,
    pub last_updated: Timestamp,
    pub etag_counter: u64,
}

/// What a configuration's queries count, as `GET` returns them.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ConfigurationMetrics {
    /// Device twins its target condition selects.
    pub targeted: u64,
    /// Device twins it is applied to: selected, not outranked by another configuration, and holding its
    /// content.
    pub applied: u64,
    /// Each custom metric's count.
    pub custom: BTreeMap<String, u64>,
}

#[derive(Debug, PartialEq, thiserror::Error)]
pub enum ConfigurationError {
    #[error("the configuration must be a JSON object")]
    NotAnObject,
    #[error("the configuration id must be 1 to 128 lower-case letters, digits or - : + % _ # * ? ! ( ) , = @ ; $ '")]
    Id,
    #[error("the id in the body ('{0}') is not the one in the path")]
    IdMismatch(String),
    #[error("{0} must be {1}")]
    Field(&'static str, &'static str),
    #[error("deviceContent keys must be properties.desired or begin with properties.desired., not '{0}'")]
    DeviceContentKey(String),
    #[error("deviceContent: {0}")]
    DeviceContent(TwinRuleViolation),
    #[error("a configuration's content cannot change once it is created")]
    ContentChanged,
}

pub fn valid_id(id: &str) -> bool {
    !id.is_empty()
        && id.chars().count() <= ID_CHARS_MAX
        && id
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "-:+%_#*?!(),=@;$'".contains(c))
}

/// `PUT /configurations/{id}`'s body, checked, as the configuration it makes at `now`: a new one
/// (`previous` is `None`), or `previous` updated (its content may not change; its labels, target
/// condition, priority and metrics may).
pub fn parse(
    id: &str,
    body: &Value,
    previous: Option<&Configuration>,
    rules: &TwinRules,
    now: Timestamp,
) -> Result<Configuration, ConfigurationError> {
    if !valid_id(id) {
        return Err(ConfigurationError::Id);
    }
    let object = body.as_object().ok_or(ConfigurationError::NotAnObject)?;
    let present = |key: &str| object.get(key).filter(|value| !value.is_null());
    if let Some(given) = present("id").and_then(Value::as_str) {
        if given != id {
            return Err(ConfigurationError::IdMismatch(given.to_owned()));
        }
    }
    let object_field = |key: &'static str| match present(key) {
        None => Ok(Map::new()),
        Some(Value::Object(map)) => Ok(map.clone()),
        Some(_) => Err(ConfigurationError::Field(key, "an object")),
    };
    let labels = object_field("labels")?;
    if labels.values().any(|value| !value.is_string()) {
        return Err(ConfigurationError::Field("labels", "an object of strings"));
    }
    let content = match present("content") {
        None => Map::new(),
        Some(Value::Object(map)) => map.clone(),
        Some(_) => return Err(ConfigurationError::Field("content", "an object")),
    };
    let content_part = |key: &'static str| match content.get(key).filter(|value| !value.is_null()) {
        None => Ok(Map::new()),
        Some(Value::Object(map)) => Ok(map.clone()),
        Some(_) => Err(ConfigurationError::Field(key, "an object")),
    };
    let device_content: BTreeMap<String, Value> = content_part("deviceContent")?.into_iter().collect();
    let module_content: BTreeMap<String, Value> = content_part("moduleContent")?.into_iter().collect();
    for key in device_content.keys().chain(module_content.keys()) {
        if !(key == DESIRED_PREFIX || key.starts_with("properties.desired.")) {
            return Err(ConfigurationError::DeviceContentKey(key.clone()));
        }
    }
    let modules_content = content_part("modulesContent")?;
    let target_condition = match present("targetCondition") {
        None => String::new(),
        Some(Value::String(text)) => text.trim().to_owned(),
        Some(_) => return Err(ConfigurationError::Field("targetCondition", "a string")),
    };
    let priority = match present("priority") {
        None => 0,
        Some(value) => value
            .as_i64()
            .filter(|priority| *priority >= 0)
            .ok_or(ConfigurationError::Field("priority", "a non-negative integer"))?,
    };
    let metrics = match present("metrics") {
        None => Map::new(),
        Some(Value::Object(map)) => map.clone(),
        Some(_) => return Err(ConfigurationError::Field("metrics", "an object")),
    };
    let metric_queries = match metrics.get("queries").filter(|value| !value.is_null()) {
        None => BTreeMap::new(),
        Some(Value::Object(queries)) => queries
            .iter()
            .map(|(name, query)| match query {
                Value::String(query) => Ok((name.clone(), query.clone())),
                _ => Err(ConfigurationError::Field(
                    "metrics.queries",
                    "an object of query strings",
                )),
            })
            .collect::<Result<_, _>>()?,
        Some(_) => return Err(ConfigurationError::Field("metrics.queries", "an object")),
    };
    let schema_version = present("schemaVersion")
        .and_then(Value::as_str)
        .unwrap_or("1.0")
        .to_owned();
    let configuration = Configuration {
        id: id.to_owned(),
        schema_version,
        labels,
        device_content,
        modules_content,
        module_content,
        target_condition,
        priority,
        metric_queries,
        created: previous.map_or(now, |previous| previous.created),
        last_updated: now,
        etag_counter: previous.map_or(1, |previous| previous.etag_counter + 1),
    };
    configuration
        .device_patch(rules)
        .and_then(|_| configuration.module_patch(rules))
        .map_err(ConfigurationError::DeviceContent)?;
    if let Some(previous) = previous {
        let content_of = |c: &Configuration| {
            (
                c.device_content.clone(),
                c.modules_content.clone(),
                c.module_content.clone(),
            )
        };
        if content_of(previous) != content_of(&configuration) {
            return Err(ConfigurationError::ContentChanged);
        }
    }
    Ok(configuration)
}

impl Configuration {
    pub fn etag(&self) -> String {
        device_etag(self.etag_counter)
    }

    /// Whether it writes anything to the device twins it selects.
    pub fn has_device_content(&self) -> bool {
        !self.device_content.is_empty()
    }

    /// Whether it writes anything to the module twins it selects (a module configuration).
    pub fn has_module_content(&self) -> bool {
        !self.module_content.is_empty()
    }

    /// A module configuration's condition over module twins (what follows `FROM devices.modules WHERE`).
    pub fn module_condition(&self) -> Option<&str> {
        let condition = self.target_condition.trim();
        let prefix = "from devices.modules where ";
        condition
            .get(..prefix.len())
            .filter(|head| head.eq_ignore_ascii_case(prefix))
            .map(|_| condition[prefix.len()..].trim())
    }

    /// The patch its device content makes: each `properties.desired.<path>` key set to its value.
    pub fn device_patch(&self, rules: &TwinRules) -> Result<TwinPatch, TwinRuleViolation> {
        content_patch(&self.device_content, rules)
    }

    /// The patch its module content makes.
    pub fn module_patch(&self, rules: &TwinRules) -> Result<TwinPatch, TwinRuleViolation> {
        content_patch(&self.module_content, rules)
    }

    /// Whether a twin whose desired properties (without metadata) are `desired` holds its device content.
    pub fn is_held_by(&self, desired: &Value) -> bool {
        holds(&self.device_content, desired)
    }

    /// Whether a module twin whose desired properties are `desired` holds its module content.
    pub fn module_content_is_held_by(&self, desired: &Value) -> bool {
        holds(&self.module_content, desired)
    }

    /// Whether it outranks `other` for a twin both select: the higher priority, then the newer.
    pub fn outranks(&self, other: &Configuration) -> bool {
        (self.priority, self.created, &self.id) > (other.priority, other.created, &other.id)
    }

    /// The configuration document. Ref: service-rest notes §4.8.
    pub fn to_json(&self, metrics: &ConfigurationMetrics) -> Value {
        let condition = if self.target_condition.is_empty() {
            String::new()
        } else {
            format!(" where {}", self.target_condition)
        };
        json!({
            "id": self.id,
            "schemaVersion": self.schema_version,
            "labels": self.labels,
            "content": {
                "deviceContent": self.device_content,
                "modulesContent": self.modules_content,
                "moduleContent": self.module_content,
            },
            "contentType": "assignment",
            "targetCondition": self.target_condition,
            "createdTimeUtc": self.created.to_iso8601(),
            "lastUpdatedTimeUtc": self.last_updated.to_iso8601(),
            "priority": self.priority,
            "systemMetrics": {
                "results": {"targetedCount": metrics.targeted, "appliedCount": metrics.applied},
                "queries": {
                    "targetedCount": format!("select deviceId from devices{condition}"),
                    "appliedCount": format!("select deviceId from devices where configurations.[[{}]].status = 'Applied'", self.id),
                },
            },
            "metrics": {"results": metrics.custom, "queries": self.metric_queries},
            "etag": self.etag(),
        })
    }
}

/// The patch `content` makes: each `properties.desired.<path>` key set to its value.
fn content_patch(content: &BTreeMap<String, Value>, rules: &TwinRules) -> Result<TwinPatch, TwinRuleViolation> {
    let mut desired = Map::new();
    for (key, value) in content {
        let path = key.strip_prefix(DESIRED_PREFIX).unwrap_or_default();
        let members: Vec<&str> = path.split('.').filter(|member| !member.is_empty()).collect();
        match members.split_last() {
            // `properties.desired` itself: its object's members are set one by one.
            None => {
                if let Value::Object(members) = value {
                    for (name, value) in members {
                        desired.insert(name.clone(), value.clone());
                    }
                }
            }
            Some((last, parents)) => {
                let mut at = &mut desired;
                for parent in parents {
                    let entry = at.entry((*parent).to_owned()).or_insert_with(|| json!({}));
                    if !entry.is_object() {
                        *entry = json!({});
                    }
                    at = entry
                        .as_object_mut()
                        .unwrap_or_else(|| unreachable!("made an object above"));
                }
                at.insert((*last).to_owned(), value.clone());
            }
        }
    }
    TwinPatch::from_json(&json!({"properties": {"desired": desired}}), rules)
}

/// Whether desired properties (without metadata) `desired` hold `content`.
fn holds(content: &BTreeMap<String, Value>, desired: &Value) -> bool {
    content.iter().all(|(key, value)| {
        let path = key.strip_prefix(DESIRED_PREFIX).unwrap_or_default();
        let mut at = desired;
        for member in path.split('.').filter(|member| !member.is_empty()) {
            match at.get(member) {
                Some(next) => at = next,
                None => return false,
            }
        }
        contains(at, value)
    })
}

/// Whether `held` holds `wanted`: equal, or for objects, every member of `wanted` held (a merge of
/// `wanted` into `held` would change nothing; `null` members are absent ones).
fn contains(held: &Value, wanted: &Value) -> bool {
    match (held, wanted) {
        (Value::Object(held), Value::Object(wanted)) => wanted.iter().all(|(name, value)| match held.get(name) {
            Some(held) => contains(held, value),
            None => value.is_null(),
        }),
        (held, wanted) => held == wanted,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body() -> Value {
        json!({"id": "firmware-2", "content": {"deviceContent": {"properties.desired.firmware": {"version": "2.0"}}},
            "targetCondition": "tags.rollout = 'yes'", "priority": 10, "labels": {"team": "ops"},
            "metrics": {"queries": {"updated": "SELECT deviceId FROM devices WHERE properties.reported.firmware.version = '2.0'"}}})
    }

    #[test]
    fn a_configuration_is_read_and_its_content_becomes_a_desired_patch() {
        let rules = TwinRules::default();
        let now = Timestamp::now();
        let configuration = parse("firmware-2", &body(), None, &rules, now).unwrap();
        assert_eq!((configuration.priority, configuration.etag_counter), (10, 1));
        let patch = configuration.device_patch(&rules).unwrap();
        assert!(patch.desired.is_some());
        assert!(configuration.is_held_by(&json!({"firmware": {"version": "2.0", "url": "x"}})));
        assert!(!configuration.is_held_by(&json!({"firmware": {"version": "1.0"}})));
        assert!(!configuration.is_held_by(&json!({})));
        let document = configuration.to_json(&ConfigurationMetrics::default());
        assert_eq!(
            document["content"]["deviceContent"]["properties.desired.firmware"]["version"],
            "2.0"
        );
        assert_eq!(document["schemaVersion"], "1.0");
        assert_eq!(document["systemMetrics"]["results"]["targetedCount"], 0);
        // An update keeps its creation time and content, and moves its etag.
        let mut changed = body();
        changed["priority"] = json!(20);
        let updated = parse("firmware-2", &changed, Some(&configuration), &rules, Timestamp::now()).unwrap();
        assert_eq!(
            (updated.created, updated.etag_counter, updated.priority),
            (configuration.created, 2, 20)
        );
        assert!(updated.outranks(&configuration));
    }

    #[test]
    fn bad_configurations_say_what_is_wrong() {
        let rules = TwinRules::default();
        let now = Timestamp::now();
        assert_eq!(parse("Upper", &body(), None, &rules, now), Err(ConfigurationError::Id));
        assert_eq!(
            parse("other", &body(), None, &rules, now),
            Err(ConfigurationError::IdMismatch("firmware-2".into()))
        );
        let mut tags = body();
        tags["content"]["deviceContent"] = json!({"tags.x": 1});
        assert_eq!(
            parse("firmware-2", &tags, None, &rules, now),
            Err(ConfigurationError::DeviceContentKey("tags.x".into()))
        );
        let mut priority = body();
        priority["priority"] = json!(-1);
        assert!(matches!(
            parse("firmware-2", &priority, None, &rules, now),
            Err(ConfigurationError::Field("priority", _))
        ));
        let first = parse("firmware-2", &body(), None, &rules, now).unwrap();
        let mut content = body();
        content["content"]["deviceContent"] = json!({"properties.desired.firmware": {"version": "3.0"}});
        assert_eq!(
            parse("firmware-2", &content, Some(&first), &rules, now),
            Err(ConfigurationError::ContentChanged)
        );
    }
}
