//! The twin document: tags, desired and reported properties, their versions and metadata, and the
//! operations that change them. Every change goes through here, so the rules and the version arithmetic
//! are the same for every transport.
//!
//! Versions (Ref: query-and-twin-rules notes B.5, matching real twins):
//! - `desired.$version` rises by one on each write of desired properties, `reported.$version` likewise;
//! - the twin `etag` counter rises on each write of tags or desired (what `If-Match` protects);
//! - the twin `version` rises on every write of any section.

use crate::rules::{self, SectionName, TwinRuleViolation, TwinRules};
use crate::time::Timestamp;
use crate::value::{Object, Value};
use serde::{Deserialize, Serialize};
use serde_json::Map;
use std::sync::Arc;

pub type JsonMap = Map<String, serde_json::Value>;

/// When a node of a section was last written, and (desired only) by which desired version.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Meta {
    pub last_updated: Timestamp,
    pub last_updated_version: u64,
}

/// A member of a properties section: a leaf value or an object, each with its own metadata, so the
/// `$metadata` tree IoT Hub returns always has the same shape as the properties.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Node {
    pub meta: Meta,
    pub content: NodeContent,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum NodeContent {
    /// Never `Value::Object` (objects are `Members`) and never `Value::Null` (null deletes).
    Leaf(Value),
    Members(Members),
}

/// Members of an object node in insertion order.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Members(pub Vec<(Box<str>, Node)>);

/// `properties.desired` or `properties.reported`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Section {
    pub members: Members,
    pub meta: Meta,
    pub version: u64,
}

/// The sections are shared (`Arc`) between the versions of a twin: a reported patch copies the reported
/// section only, not the tags and desired properties beside it (the writer builds a new twin per write).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Twin {
    pub tags: Arc<Object>,
    pub desired: Arc<Section>,
    pub reported: Arc<Section>,
    /// Rises on any change of the twin.
    pub version: u64,
    /// Rises on each change of tags or desired; rendered as the twin `etag`.
    pub etag_counter: u64,
}

impl Members {
    pub fn get(&self, key: &str) -> Option<&Node> {
        self.0.iter().find(|(k, _)| &**k == key).map(|(_, node)| node)
    }

    pub fn iter(&self) -> impl Iterator<Item = (&str, &Node)> {
        self.0.iter().map(|(k, node)| (&**k, node))
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Merge-patch semantics with metadata: every node the patch touches, and every ancestor of one, takes
    /// `meta`. Ref: IoT Hub "Device twins" → metadata: parents move forward when a child changes or is removed.
    fn merge(&mut self, patch: &JsonMap, meta: Meta) {
        for (key, patch_value) in patch {
            let position = self.0.iter().position(|(k, _)| **k == **key);
            match (patch_value, position) {
                (serde_json::Value::Null, Some(index)) => {
                    self.0.remove(index);
                }
                (serde_json::Value::Null, None) => {}
                (serde_json::Value::Object(patch_object), Some(index)) => {
                    let node = &mut self.0[index].1;
                    node.meta = meta;
                    match &mut node.content {
                        NodeContent::Members(members) => members.merge(patch_object, meta),
                        NodeContent::Leaf(_) => {
                            node.content = NodeContent::Members(Members::from_json(patch_object, meta))
                        }
                    }
                }
                (value, Some(index)) => self.0[index].1 = Node::from_json(value, meta),
                (value, None) => self.0.push((key.as_str().into(), Node::from_json(value, meta))),
            }
        }
    }

    /// The merge patch that turns these members into `new`: `new` itself, plus `null` for every member
    /// `new` no longer has, at every depth where both are objects.
    fn patch_to(&self, new: &JsonMap) -> JsonMap {
        let mut patch: JsonMap = self
            .iter()
            .filter(|(key, _)| !new.contains_key(*key))
            .map(|(key, _)| (key.to_owned(), serde_json::Value::Null))
            .collect();
        for (key, value) in new {
            let entry = match (value, self.get(key).map(|node| &node.content)) {
                (serde_json::Value::Object(inner), Some(NodeContent::Members(old))) => {
                    serde_json::Value::Object(old.patch_to(inner))
                }
                (value, _) => value.clone(),
            };
            patch.insert(key.clone(), entry);
        }
        patch
    }

    /// A new object from JSON, `null` members dropped at every level.
    fn from_json(object: &JsonMap, meta: Meta) -> Members {
        let mut members = Members::default();
        members.merge(object, meta);
        members
    }

    fn size(&self) -> usize {
        self.iter()
            .map(|(key, node)| {
                rules::key_size(key)
                    + match &node.content {
                        NodeContent::Members(members) => members.size(),
                        NodeContent::Leaf(value) => value_size(value),
                    }
            })
            .sum()
    }

    pub fn to_json(&self) -> JsonMap {
        self.iter()
            .map(|(key, node)| (key.to_owned(), node.to_json()))
            .collect()
    }

    fn metadata_json(&self, meta: Meta, with_version: bool) -> serde_json::Value {
        let mut object = meta_json(meta, with_version);
        for (key, node) in self.iter() {
            let child = match &node.content {
                NodeContent::Members(members) => members.metadata_json(node.meta, with_version),
                NodeContent::Leaf(_) => serde_json::Value::Object(meta_json(node.meta, with_version)),
            };
            object.insert(key.to_owned(), child);
        }
        serde_json::Value::Object(object)
    }
}

fn value_size(value: &Value) -> usize {
    match value {
        Value::Null => 0,
        Value::Bool(_) => rules::BOOL_SIZE,
        Value::Int(_) | Value::Float(_) => rules::NUMBER_SIZE,
        Value::Str(string) => rules::string_size(string),
        Value::Array(items) => items.iter().map(value_size).sum(),
        Value::Object(object) => object
            .iter()
            .map(|(key, value)| rules::key_size(key) + value_size(value))
            .sum(),
    }
}

fn meta_json(meta: Meta, with_version: bool) -> JsonMap {
    let mut object = JsonMap::new();
    object.insert("$lastUpdated".into(), meta.last_updated.to_iso8601().into());
    if with_version {
        object.insert("$lastUpdatedVersion".into(), meta.last_updated_version.into());
    }
    object
}

impl Node {
    fn from_json(value: &serde_json::Value, meta: Meta) -> Node {
        let content = match value {
            serde_json::Value::Object(object) => NodeContent::Members(Members::from_json(object, meta)),
            other => NodeContent::Leaf(Value::from_json(other)),
        };
        Node { meta, content }
    }

    pub fn to_json(&self) -> serde_json::Value {
        match &self.content {
            NodeContent::Leaf(value) => value.to_json(),
            NodeContent::Members(members) => serde_json::Value::Object(members.to_json()),
        }
    }
}

impl Section {
    fn new(now: Timestamp) -> Section {
        Section {
            members: Members::default(),
            meta: Meta {
                last_updated: now,
                last_updated_version: 1,
            },
            version: 1,
        }
    }

    fn size(&self) -> usize {
        self.members.size()
    }

    /// The section as IoT Hub returns it: the properties, `$metadata` and `$version`.
    /// `$lastUpdatedVersion` appears in desired metadata only.
    pub fn to_json(&self, with_last_updated_version: bool) -> serde_json::Value {
        let mut object = self.members.to_json();
        object.insert(
            "$metadata".into(),
            self.members.metadata_json(self.meta, with_last_updated_version),
        );
        object.insert("$version".into(), self.version.into());
        serde_json::Value::Object(object)
    }

    /// The properties and `$version` without metadata: what a device receives over MQTT and AMQP.
    pub fn to_json_without_metadata(&self) -> serde_json::Value {
        let mut object = self.members.to_json();
        object.insert("$version".into(), self.version.into());
        serde_json::Value::Object(object)
    }
}

/// What a back-end patch does to one section (tags or desired properties).
#[derive(Clone, Debug, PartialEq)]
pub enum SectionWrite {
    /// Merge-patch: a member set to `null` is removed, others are set or merged.
    Merge(JsonMap),
    /// The whole section given as `null` (`{"tags":null}`, `{"properties":{"desired":null}}`): every member
    /// is removed, as IoT Hub does (the SDKs' own end-to-end scenarios rely on it).
    Clear,
}

/// A back-end partial update (`PATCH /twins/{id}`): merge into tags and desired, or clear them.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct TwinPatch {
    pub tags: Option<SectionWrite>,
    pub desired: Option<SectionWrite>,
}

/// A back-end replacement (`PUT /twins/{id}`): tags and desired become exactly these.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct TwinReplacement {
    pub tags: JsonMap,
    pub desired: JsonMap,
}

/// A device's reported-properties patch (the MQTT/AMQP body, or the reported part of a device update).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ReportedPatch(pub JsonMap);

/// What a write did to desired properties, for the notifications devices receive.
#[derive(Clone, Debug, PartialEq)]
pub struct DesiredChange {
    /// The desired `$version` the write produced.
    pub version: u64,
    /// What a device merges to get the new desired properties: the patch as applied (nulls included, they
    /// tell the device to delete), or after a replacement or a clear, the new document with `null` for
    /// every member it no longer has.
    pub patch: JsonMap,
}

/// Keys IoT Hub itself puts at a section's root. A back end that sends back a twin it fetched carries
/// them along; they are read-only, so they are ignored rather than refused.
const READ_ONLY_SECTION_KEYS: [&str; 2] = ["$metadata", "$version"];

fn without_read_only_keys(object: &JsonMap) -> JsonMap {
    object
        .iter()
        .filter(|(key, _)| !READ_ONLY_SECTION_KEYS.contains(&key.as_str()))
        .map(|(key, value)| (key.clone(), value.clone()))
        .collect()
}

fn object_or_absent<'a>(parent: &'a JsonMap, key: &str, path: &str) -> Result<Option<&'a JsonMap>, TwinRuleViolation> {
    match parent.get(key) {
        None | Some(serde_json::Value::Null) => Ok(None),
        Some(serde_json::Value::Object(object)) => Ok(Some(object)),
        Some(_) => Err(TwinRuleViolation::NotAnObject { path: path.to_owned() }),
    }
}

/// A section of a back-end body: absent, `null` (clear it), or an object (merge it).
fn section_write(parent: &JsonMap, key: &str, path: &str) -> Result<Option<SectionWrite>, TwinRuleViolation> {
    match parent.get(key) {
        None => Ok(None),
        Some(serde_json::Value::Null) => Ok(Some(SectionWrite::Clear)),
        Some(serde_json::Value::Object(object)) => Ok(Some(SectionWrite::Merge(without_read_only_keys(object)))),
        Some(_) => Err(TwinRuleViolation::NotAnObject { path: path.to_owned() }),
    }
}

/// The `tags` and `properties.desired` of a back-end twin body, checked against the rules. Other
/// top-level members (deviceId, etag, status, ...) are read-only and ignored, as the SDKs may send a twin
/// they fetched. Reported properties with content, or `null` for them, are refused.
fn back_end_sections(
    body: &serde_json::Value,
    rules: &TwinRules,
) -> Result<(Option<SectionWrite>, Option<SectionWrite>), TwinRuleViolation> {
    let body = body
        .as_object()
        .ok_or_else(|| TwinRuleViolation::NotAnObject { path: "twin".into() })?;
    let tags = section_write(body, "tags", "tags")?;
    let mut desired = None;
    if let Some(properties) = object_or_absent(body, "properties", "properties")? {
        match section_write(properties, "reported", "properties.reported")? {
            Some(SectionWrite::Merge(reported)) if reported.is_empty() => {}
            None => {}
            Some(_) => return Err(TwinRuleViolation::ReportedNotWritable),
        }
        desired = section_write(properties, "desired", "properties.desired")?;
    }
    if let Some(SectionWrite::Merge(tags)) = &tags {
        rules.check_object(SectionName::Tags.path(), tags, 0)?;
    }
    if let Some(SectionWrite::Merge(desired)) = &desired {
        rules.check_object(SectionName::Desired.path(), desired, 0)?;
    }
    Ok((tags, desired))
}

impl TwinPatch {
    pub fn from_json(body: &serde_json::Value, rules: &TwinRules) -> Result<TwinPatch, TwinRuleViolation> {
        let (tags, desired) = back_end_sections(body, rules)?;
        Ok(TwinPatch { tags, desired })
    }
}

impl TwinReplacement {
    pub fn from_json(body: &serde_json::Value, rules: &TwinRules) -> Result<TwinReplacement, TwinRuleViolation> {
        // A replacement sets each section to exactly what it is given: absent or `null` is empty.
        let content = |section: Option<SectionWrite>| match section {
            Some(SectionWrite::Merge(members)) => members,
            Some(SectionWrite::Clear) | None => JsonMap::new(),
        };
        let (tags, desired) = back_end_sections(body, rules)?;
        Ok(TwinReplacement {
            tags: content(tags),
            desired: content(desired),
        })
    }
}

impl ReportedPatch {
    pub fn from_json(body: &serde_json::Value, rules: &TwinRules) -> Result<ReportedPatch, TwinRuleViolation> {
        if body.is_null() {
            // IoT Hub lets no device wipe its reported section at once.
            return Err(TwinRuleViolation::ReportedNotClearable);
        }
        let object = body.as_object().ok_or_else(|| TwinRuleViolation::NotAnObject {
            path: SectionName::Reported.path().into(),
        })?;
        rules.check_object(SectionName::Reported.path(), object, 0)?;
        Ok(ReportedPatch(object.clone()))
    }
}

impl Twin {
    /// The twin a new device starts with: empty sections at version 1.
    pub fn new(now: Timestamp) -> Twin {
        Twin {
            tags: Arc::new(Object::default()),
            desired: Arc::new(Section::new(now)),
            reported: Arc::new(Section::new(now)),
            version: 1,
            etag_counter: 1,
        }
    }

    pub fn etag(&self) -> String {
        crate::etag::twin_etag(self.etag_counter)
    }

    /// Applies a back-end patch, returning the new twin; `self` is untouched if a rule refuses it.
    pub fn patched(
        &self,
        patch: &TwinPatch,
        now: Timestamp,
        rules: &TwinRules,
    ) -> Result<(Twin, Option<DesiredChange>), TwinRuleViolation> {
        if patch.tags.is_none() && patch.desired.is_none() {
            return Ok((self.clone(), None));
        }
        let mut twin = self.clone();
        match &patch.tags {
            Some(SectionWrite::Merge(tags)) => {
                Arc::make_mut(&mut twin.tags).merge(&Object::from_json(tags));
                rules.check_size(SectionName::Tags, value_size(&Value::Object((*twin.tags).clone())))?;
            }
            Some(SectionWrite::Clear) => twin.tags = Arc::new(Object::default()),
            None => {}
        }
        let mut change = None;
        if let Some(desired) = &patch.desired {
            let version = twin.desired.version + 1;
            let meta = Meta {
                last_updated: now,
                last_updated_version: version,
            };
            let section = Arc::make_mut(&mut twin.desired);
            let applied = match desired {
                SectionWrite::Merge(desired) => {
                    section.members.merge(desired, meta);
                    desired.clone()
                }
                SectionWrite::Clear => std::mem::take(&mut section.members).patch_to(&JsonMap::new()),
            };
            section.meta = meta;
            section.version = version;
            rules.check_size(SectionName::Desired, section.size())?;
            change = Some(DesiredChange {
                version,
                patch: applied,
            });
        }
        twin.etag_counter += 1;
        twin.version += 1;
        Ok((twin, change))
    }

    /// Replaces tags and desired; the desired notification carries the whole new desired document, with
    /// `null` for what it no longer has, so a device that merges it ends with exactly that document.
    pub fn replaced(
        &self,
        replacement: &TwinReplacement,
        now: Timestamp,
        rules: &TwinRules,
    ) -> Result<(Twin, DesiredChange), TwinRuleViolation> {
        let mut twin = self.clone();
        twin.tags = Arc::new(Object::from_json(&replacement.tags).without_nulls());
        rules.check_size(SectionName::Tags, value_size(&Value::Object((*twin.tags).clone())))?;
        let version = twin.desired.version + 1;
        let meta = Meta {
            last_updated: now,
            last_updated_version: version,
        };
        let section = Arc::make_mut(&mut twin.desired);
        let patch = section.members.patch_to(&replacement.desired);
        section.members = Members::from_json(&replacement.desired, meta);
        section.meta = meta;
        section.version = version;
        rules.check_size(SectionName::Desired, section.size())?;
        twin.etag_counter += 1;
        twin.version += 1;
        Ok((twin, DesiredChange { version, patch }))
    }

    /// Applies a device's reported patch.
    pub fn with_reported(
        &self,
        patch: &ReportedPatch,
        now: Timestamp,
        rules: &TwinRules,
    ) -> Result<Twin, TwinRuleViolation> {
        let mut twin = self.clone();
        let version = twin.reported.version + 1;
        let meta = Meta {
            last_updated: now,
            last_updated_version: version,
        };
        let section = Arc::make_mut(&mut twin.reported);
        section.members.merge(&patch.0, meta);
        section.meta = meta;
        section.version = version;
        rules.check_size(SectionName::Reported, section.size())?;
        twin.version += 1;
        Ok(twin)
    }

    /// `{"desired": {...}, "reported": {...}}` as JSON with metadata: the `properties` of the twin document.
    pub fn properties_json(&self) -> serde_json::Value {
        serde_json::json!({
            "desired": self.desired.to_json(true),
            "reported": self.reported.to_json(false),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const T0: Timestamp = Timestamp(1_700_000_000_000_000_000);
    const T1: Timestamp = Timestamp(1_700_000_001_000_000_000);

    fn rules() -> TwinRules {
        TwinRules::default()
    }

    fn patch(body: serde_json::Value) -> TwinPatch {
        TwinPatch::from_json(&body, &rules()).expect("valid patch")
    }

    #[test]
    fn a_new_twin_starts_at_version_one_with_root_metadata() {
        let twin = Twin::new(T0);
        assert_eq!(twin.etag(), "AAAAAAAAAAE=");
        assert_eq!(
            twin.properties_json(),
            json!({
                "desired": {"$metadata": {"$lastUpdated": T0.to_iso8601(), "$lastUpdatedVersion": 1}, "$version": 1},
                "reported": {"$metadata": {"$lastUpdated": T0.to_iso8601()}, "$version": 1},
            })
        );
    }

    #[test]
    fn tag_patch_moves_etag_and_version_but_not_desired_version() {
        let twin = Twin::new(T0);
        let (twin, change) = twin
            .patched(
                &patch(json!({"tags": {"location": {"region": "US", "plant": "Redmond43"}}})),
                T1,
                &rules(),
            )
            .unwrap();
        assert!(change.is_none());
        assert_eq!(twin.version, 2);
        assert_eq!(twin.etag_counter, 2);
        assert_eq!(twin.desired.version, 1);
        assert_eq!(
            Value::Object((*twin.tags).clone()).to_json(),
            json!({"location": {"region": "US", "plant": "Redmond43"}})
        );
    }

    #[test]
    fn desired_merge_tracks_metadata_per_node_and_ancestors() {
        let twin = Twin::new(T0);
        let (twin, _) = twin
            .patched(
                &patch(json!({"properties": {"desired": {"a": {"b": 1, "c": 2}, "d": "x"}}})),
                T0,
                &rules(),
            )
            .unwrap();
        let (twin, change) = twin
            .patched(
                &patch(json!({"properties": {"desired": {"a": {"b": null, "e": true}}}})),
                T1,
                &rules(),
            )
            .unwrap();
        let change = change.expect("desired changed");
        assert_eq!(change.version, 3);
        assert_eq!(change.patch, *json!({"a": {"b": null, "e": true}}).as_object().unwrap());
        let desired = twin.desired.to_json(true);
        let t0 = T0.to_iso8601();
        let t1 = T1.to_iso8601();
        assert_eq!(
            desired,
            json!({
                "a": {"c": 2, "e": true},
                "d": "x",
                "$metadata": {
                    "$lastUpdated": t1, "$lastUpdatedVersion": 3,
                    "a": {
                        "$lastUpdated": t1, "$lastUpdatedVersion": 3,
                        "c": {"$lastUpdated": t0, "$lastUpdatedVersion": 2},
                        "e": {"$lastUpdated": t1, "$lastUpdatedVersion": 3},
                    },
                    "d": {"$lastUpdated": t0, "$lastUpdatedVersion": 2},
                },
                "$version": 3,
            })
        );
        assert_eq!(twin.version, 3);
        assert_eq!(twin.etag_counter, 3);
    }

    #[test]
    fn leaf_becomes_object_and_back() {
        let twin = Twin::new(T0);
        let (twin, _) = twin
            .patched(&patch(json!({"properties": {"desired": {"a": 1}}})), T0, &rules())
            .unwrap();
        let (twin, _) = twin
            .patched(
                &patch(json!({"properties": {"desired": {"a": {"b": {"c": null, "d": 1}}}}})),
                T1,
                &rules(),
            )
            .unwrap();
        assert_eq!(
            twin.desired.to_json_without_metadata(),
            json!({"a": {"b": {"d": 1}}, "$version": 3})
        );
        let (twin, _) = twin
            .patched(&patch(json!({"properties": {"desired": {"a": 5}}})), T1, &rules())
            .unwrap();
        assert_eq!(twin.desired.to_json_without_metadata(), json!({"a": 5, "$version": 4}));
    }

    #[test]
    fn replace_overwrites_tags_and_desired_and_notifies_the_whole_document() {
        let twin = Twin::new(T0);
        let (twin, _) = twin
            .patched(
                &patch(json!({"tags": {"a": 1, "b": 2}, "properties": {"desired": {"x": 1, "y": 2}}})),
                T0,
                &rules(),
            )
            .unwrap();
        let replacement = TwinReplacement::from_json(
            &json!({"tags": {"c": 3}, "properties": {"desired": {"z": 9}}}),
            &rules(),
        )
        .unwrap();
        let (twin, change) = twin.replaced(&replacement, T1, &rules()).unwrap();
        assert_eq!(Value::Object((*twin.tags).clone()).to_json(), json!({"c": 3}));
        assert_eq!(twin.desired.to_json_without_metadata(), json!({"z": 9, "$version": 3}));
        assert_eq!(
            change,
            DesiredChange {
                version: 3,
                patch: json!({"x": null, "y": null, "z": 9}).as_object().unwrap().clone()
            }
        );
        let emptied = TwinReplacement::from_json(&json!({}), &rules()).unwrap();
        let (twin, _) = twin.replaced(&emptied, T1, &rules()).unwrap();
        assert!(twin.tags.is_empty() && twin.desired.members.is_empty());
    }

    #[test]
    fn null_for_a_whole_section_removes_every_member_and_notifies_each_removal() {
        let twin = Twin::new(T0);
        let (twin, _) = twin
            .patched(
                &patch(json!({"tags": {"a": 1, "b": {"c": 2}}, "properties": {"desired": {"x": 1, "y": {"z": 2}}}})),
                T0,
                &rules(),
            )
            .unwrap();
        let (cleared, change) = twin
            .patched(&patch(json!({"properties": {"desired": null}})), T1, &rules())
            .unwrap();
        let change = change.expect("clearing desired is a desired write");
        assert_eq!(change.version, 3);
        assert_eq!(change.patch, *json!({"x": null, "y": null}).as_object().unwrap());
        assert_eq!(cleared.desired.to_json_without_metadata(), json!({"$version": 3}));
        assert_eq!(
            cleared.desired.to_json(true)["$metadata"],
            json!({"$lastUpdated": T1.to_iso8601(), "$lastUpdatedVersion": 3})
        );
        assert_eq!(
            Value::Object((*cleared.tags).clone()).to_json(),
            json!({"a": 1, "b": {"c": 2}})
        );
        assert_eq!((cleared.etag_counter, cleared.version), (3, 3));

        let (untagged, change) = cleared.patched(&patch(json!({"tags": null})), T1, &rules()).unwrap();
        assert!(change.is_none(), "tags are not the device's business");
        assert!(untagged.tags.is_empty());
        assert_eq!((untagged.etag_counter, untagged.desired.version), (4, 3));

        // An empty section cleared again is still a write: the version moves, the patch is empty.
        let (_, change) = untagged
            .patched(&patch(json!({"properties": {"desired": null}})), T1, &rules())
            .unwrap();
        assert_eq!(change.map(|c| (c.version, c.patch.len())), Some((4, 0)));
    }

    #[test]
    fn a_replacement_notifies_nulls_for_what_the_new_document_no_longer_has() {
        let twin = Twin::new(T0);
        let (twin, _) = twin
            .patched(
                &patch(json!({"properties": {"desired": {"gone": 1, "kept": {"a": 1, "b": 2}, "leaf": {"c": 1}}}})),
                T0,
                &rules(),
            )
            .unwrap();
        let replacement = TwinReplacement::from_json(
            &json!({"properties": {"desired": {"kept": {"a": 5}, "leaf": 3, "new": true}}}),
            &rules(),
        )
        .unwrap();
        let (replaced, change) = twin.replaced(&replacement, T1, &rules()).unwrap();
        assert_eq!(
            serde_json::Value::Object(change.patch),
            json!({"gone": null, "kept": {"b": null, "a": 5}, "leaf": 3, "new": true})
        );
        assert_eq!(
            replaced.desired.to_json_without_metadata(),
            json!({"kept": {"a": 5}, "leaf": 3, "new": true, "$version": 3})
        );
        for emptied in [json!({}), json!({"tags": null, "properties": {"desired": null}})] {
            let replacement = TwinReplacement::from_json(&emptied, &rules()).unwrap();
            let (empty, change) = replaced.replaced(&replacement, T1, &rules()).unwrap();
            assert!(empty.desired.members.is_empty() && empty.tags.is_empty());
            assert_eq!(
                serde_json::Value::Object(change.patch),
                json!({"kept": null, "leaf": null, "new": null})
            );
        }
    }

    #[test]
    fn a_device_cannot_clear_its_reported_properties_with_null() {
        let error = ReportedPatch::from_json(&json!(null), &rules()).unwrap_err();
        assert_eq!(error, TwinRuleViolation::ReportedNotClearable);
        assert!(error.to_string().contains("cannot be cleared with null"), "{error}");
    }

    #[test]
    fn reported_patch_moves_reported_and_twin_versions_only() {
        let twin = Twin::new(T0);
        let reported = ReportedPatch::from_json(&json!({"connectivity": {"type": "cellular"}}), &rules()).unwrap();
        let twin = twin.with_reported(&reported, T1, &rules()).unwrap();
        assert_eq!(twin.reported.version, 2);
        assert_eq!(twin.version, 2);
        assert_eq!(twin.etag_counter, 1);
        assert_eq!(
            twin.reported.to_json(false)["$metadata"]["connectivity"]["type"],
            json!({"$lastUpdated": T1.to_iso8601()})
        );
    }

    #[test]
    fn back_end_cannot_write_reported() {
        let error = TwinPatch::from_json(&json!({"properties": {"reported": {"a": 1}}}), &rules()).unwrap_err();
        assert_eq!(error, TwinRuleViolation::ReportedNotWritable);
        // A fetched twin sent back carries read-only metadata, which is ignored.
        let fetched = json!({"deviceId": "d", "etag": "x", "properties": {
            "desired": {"a": 1, "$metadata": {}, "$version": 4},
            "reported": {"$metadata": {}, "$version": 2}}});
        let patch = TwinPatch::from_json(&fetched, &rules()).unwrap();
        assert_eq!(
            patch.desired,
            Some(SectionWrite::Merge(json!({"a": 1}).as_object().unwrap().clone()))
        );
        for body in [
            json!({"properties": {"reported": null}}),
            json!({"properties": {"reported": {"a": null}}}),
        ] {
            assert_eq!(
                TwinPatch::from_json(&body, &rules()).unwrap_err(),
                TwinRuleViolation::ReportedNotWritable,
                "{body}"
            );
        }
    }

    #[test]
    fn refused_patches_leave_the_twin_alone_and_name_the_problem() {
        for (body, needle) in [
            (json!({"tags": {"a.b": 1}}), "'tags'"),
            (
                json!({"properties": {"desired": {"a": {"b": [1]}}}}),
                "properties.desired.a.b",
            ),
            (json!({"tags": 5}), "'tags' must be a JSON object"),
            (json!([1]), "'twin' must be a JSON object"),
        ] {
            let error = TwinPatch::from_json(&body, &rules()).unwrap_err();
            assert!(error.to_string().contains(needle), "{error}");
        }
    }

    #[test]
    fn section_size_limits_apply_to_the_result() {
        let twin = Twin::new(T0);
        let big = "x".repeat(4000);
        let mut t = twin;
        // 8 KB of tags: the third 4000-byte tag passes the limit.
        for (index, expect_ok) in [(0, true), (1, true), (2, false)] {
            let result = t.patched(&patch(json!({"tags": {format!("k{index}"): big}})), T1, &rules());
            assert_eq!(result.is_ok(), expect_ok, "tag {index}");
            if let Ok((next, _)) = result {
                t = next;
            } else {
                assert!(matches!(
                    result,
                    Err(TwinRuleViolation::SectionTooLarge { section: "tags", .. })
                ));
            }
        }
        assert_eq!(t.version, 3, "the refused patch changed nothing");
    }
}
