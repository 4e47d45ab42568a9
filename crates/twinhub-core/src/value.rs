//! A compact JSON value for what twins store: tags, and the leaves and arrays of properties.
//!
//! Our own type rather than `serde_json::Value` because records are encoded with postcard (which needs a
//! schema, not `deserialize_any`) and because objects keep insertion order in a small vector: twin objects
//! are small, and a vector is both smaller and faster than a map at that size.

use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Value {
    Null,
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(Box<str>),
    Array(Vec<Value>),
    Object(Object),
}

/// A JSON object in insertion order, keys unique.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Object(pub Vec<(Box<str>, Value)>);

impl Object {
    pub fn get(&self, key: &str) -> Option<&Value> {
        self.0.iter().find(|(k, _)| &**k == key).map(|(_, v)| v)
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn iter(&self) -> impl Iterator<Item = (&str, &Value)> {
        self.0.iter().map(|(k, v)| (&**k, v))
    }

    /// JSON merge: new keys added, objects merged recursively, `null` removes a key.
    /// Ref: IoT Hub "update tags": the same merge-patch rules as desired properties.
    pub fn merge(&mut self, patch: &Object) {
        for (key, patch_value) in &patch.0 {
            let position = self.0.iter().position(|(k, _)| k == key);
            match (patch_value, position) {
                (Value::Null, Some(index)) => {
                    self.0.remove(index);
                }
                (Value::Null, None) => {}
                (Value::Object(patch_object), Some(index)) => {
                    if let Value::Object(existing) = &mut self.0[index].1 {
                        existing.merge(patch_object);
                    } else {
                        self.0[index].1 = Value::Object(patch_object.without_nulls());
                    }
                }
                (Value::Object(patch_object), None) => {
                    self.0.push((key.clone(), Value::Object(patch_object.without_nulls())));
                }
                (value, Some(index)) => self.0[index].1 = value.clone(),
                (value, None) => self.0.push((key.clone(), value.clone())),
            }
        }
    }

    /// The object as a merge into nothing: `null` members dropped at every level.
    pub fn without_nulls(&self) -> Object {
        let mut result = Object::default();
        result.merge(self);
        result
    }
}

impl Value {
    pub fn from_json(json: &serde_json::Value) -> Value {
        match json {
            serde_json::Value::Null => Value::Null,
            serde_json::Value::Bool(b) => Value::Bool(*b),
            serde_json::Value::Number(n) => match n.as_i64() {
                Some(i) => Value::Int(i),
                // u64 beyond i64 and floats: the rules refuse integers beyond ±2^52 before this matters.
                None => Value::Float(n.as_f64().unwrap_or(f64::NAN)),
            },
            serde_json::Value::String(s) => Value::Str(s.as_str().into()),
            serde_json::Value::Array(items) => Value::Array(items.iter().map(Value::from_json).collect()),
            serde_json::Value::Object(map) => Value::Object(Object::from_json(map)),
        }
    }

    pub fn to_json(&self) -> serde_json::Value {
        match self {
            Value::Null => serde_json::Value::Null,
            Value::Bool(b) => serde_json::Value::Bool(*b),
            Value::Int(i) => serde_json::Value::from(*i),
            Value::Float(f) => {
                serde_json::Number::from_f64(*f).map_or(serde_json::Value::Null, serde_json::Value::Number)
            }
            Value::Str(s) => serde_json::Value::String(s.to_string()),
            Value::Array(items) => serde_json::Value::Array(items.iter().map(Value::to_json).collect()),
            Value::Object(object) => serde_json::Value::Object(object.to_json()),
        }
    }
}

impl Object {
    pub fn from_json(map: &serde_json::Map<String, serde_json::Value>) -> Object {
        Object(
            map.iter()
                .map(|(k, v)| (k.as_str().into(), Value::from_json(v)))
                .collect(),
        )
    }

    pub fn to_json(&self) -> serde_json::Map<String, serde_json::Value> {
        self.0.iter().map(|(k, v)| (k.to_string(), v.to_json())).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn object(json: serde_json::Value) -> Object {
        match Value::from_json(&json) {
            Value::Object(o) => o,
            _ => panic!("not an object"),
        }
    }

    #[test]
    fn merge_adds_overwrites_merges_and_deletes() {
        let mut tags = object(json!({"a": 1, "b": {"c": 2, "d": 3}, "e": "x"}));
        tags.merge(&object(
            json!({"a": 5, "b": {"c": null, "f": 4}, "e": null, "g": {"h": null, "i": 1}}),
        ));
        assert_eq!(
            Value::Object(tags).to_json(),
            json!({"a": 5, "b": {"d": 3, "f": 4}, "g": {"i": 1}})
        );
    }

    #[test]
    fn json_round_trip_keeps_order_and_kinds() {
        let original = json!({"z": 1, "a": [1, "x", null], "m": {"k": 1.5, "t": true}});
        assert_eq!(Value::from_json(&original).to_json(), original);
    }
}
