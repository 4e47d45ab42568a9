//! Values during evaluation: JSON's, plus `undefined` (a path that does not exist), borrowing from the
//! twin where it can so that filtering a million twins copies nothing.

use std::borrow::Cow;
use std::cmp::Ordering;
use twinhub_core::twin::{Members, Node, NodeContent, Section};
use twinhub_core::value::{Object, Value};

#[derive(Clone, Debug)]
pub enum QValue<'a> {
    Undefined,
    Null,
    Bool(bool),
    Number(f64),
    Str(Cow<'a, str>),
    Array(Vec<QValue<'a>>),
    Object(ObjectRef<'a>),
}

/// An object inside a twin, rendered to JSON only when a result needs it.
#[derive(Clone, Debug)]
pub enum ObjectRef<'a> {
    Tags(&'a Object),
    Members(&'a Members),
    /// `properties.desired` (true) or `properties.reported` (false), with `$metadata` and `$version`.
    Section(&'a Section, bool),
    Json(serde_json::Value),
}

impl<'a> QValue<'a> {
    pub fn from_value(value: &'a Value) -> QValue<'a> {
        match value {
            Value::Null => QValue::Null,
            Value::Bool(b) => QValue::Bool(*b),
            Value::Int(n) => QValue::Number(*n as f64),
            Value::Float(f) => QValue::Number(*f),
            Value::Str(s) => QValue::Str(Cow::Borrowed(s)),
            Value::Array(items) => QValue::Array(items.iter().map(QValue::from_value).collect()),
            Value::Object(object) => QValue::Object(ObjectRef::Tags(object)),
        }
    }

    pub fn from_node(node: &'a Node) -> QValue<'a> {
        match &node.content {
            NodeContent::Leaf(value) => QValue::from_value(value),
            NodeContent::Members(members) => QValue::Object(ObjectRef::Members(members)),
        }
    }

    pub fn from_json(json: serde_json::Value) -> QValue<'static> {
        match json {
            serde_json::Value::Null => QValue::Null,
            serde_json::Value::Bool(b) => QValue::Bool(b),
            serde_json::Value::Number(n) => QValue::Number(n.as_f64().unwrap_or(f64::NAN)),
            serde_json::Value::String(s) => QValue::Str(Cow::Owned(s)),
            serde_json::Value::Array(items) => QValue::Array(items.into_iter().map(QValue::from_json).collect()),
            object @ serde_json::Value::Object(_) => QValue::Object(ObjectRef::Json(object)),
        }
    }

    pub fn is_defined(&self) -> bool {
        !matches!(self, QValue::Undefined)
    }

    pub fn is_primitive(&self) -> bool {
        matches!(
            self,
            QValue::Null | QValue::Bool(_) | QValue::Number(_) | QValue::Str(_)
        )
    }

    pub fn as_str(&self) -> Option<&str> {
        match self {
            QValue::Str(s) => Some(s),
            _ => None,
        }
    }

    pub fn as_number(&self) -> Option<f64> {
        match self {
            QValue::Number(n) => Some(*n),
            _ => None,
        }
    }

    /// `=` between primitives: same type and same value. `None` (undefined) when either side is not a
    /// primitive. Ref: IoT Hub query language, "comparisons are only supported between primitive types".
    pub fn equals(&self, other: &QValue) -> Option<bool> {
        if !self.is_primitive() || !other.is_primitive() {
            return None;
        }
        Some(match (self, other) {
            (QValue::Null, QValue::Null) => true,
            (QValue::Bool(a), QValue::Bool(b)) => a == b,
            (QValue::Number(a), QValue::Number(b)) => a == b,
            (QValue::Str(a), QValue::Str(b)) => a == b,
            _ => false,
        })
    }

    /// Ordering for `< <= > >=`, MIN and MAX: numbers with numbers, strings with strings (ordinal),
    /// booleans with booleans; anything else is not ordered.
    pub fn order(&self, other: &QValue) -> Option<Ordering> {
        match (self, other) {
            (QValue::Number(a), QValue::Number(b)) => a.partial_cmp(b),
            (QValue::Str(a), QValue::Str(b)) => Some(a.cmp(b)),
            (QValue::Bool(a), QValue::Bool(b)) => Some(a.cmp(b)),
            _ => None,
        }
    }

    /// The JSON a result shows; `None` for undefined (the member is left out).
    pub fn to_json(&self) -> Option<serde_json::Value> {
        Some(match self {
            QValue::Undefined => return None,
            QValue::Null => serde_json::Value::Null,
            QValue::Bool(b) => (*b).into(),
            QValue::Number(n) => number_json(*n),
            QValue::Str(s) => s.as_ref().into(),
            QValue::Array(items) => items
                .iter()
                .map(|v| v.to_json().unwrap_or(serde_json::Value::Null))
                .collect(),
            QValue::Object(object) => object.to_json(),
        })
    }

    pub fn into_owned(self) -> QValue<'static> {
        match self {
            QValue::Undefined => QValue::Undefined,
            QValue::Null => QValue::Null,
            QValue::Bool(b) => QValue::Bool(b),
            QValue::Number(n) => QValue::Number(n),
            QValue::Str(s) => QValue::Str(Cow::Owned(s.into_owned())),
            QValue::Array(items) => QValue::Array(items.into_iter().map(QValue::into_owned).collect()),
            QValue::Object(object) => QValue::Object(ObjectRef::Json(object.to_json())),
        }
    }
}

impl ObjectRef<'_> {
    pub fn to_json(&self) -> serde_json::Value {
        match self {
            ObjectRef::Tags(object) => serde_json::Value::Object(object.to_json()),
            ObjectRef::Members(members) => serde_json::Value::Object(members.to_json()),
            ObjectRef::Section(section, desired) => section.to_json(*desired),
            ObjectRef::Json(json) => json.clone(),
        }
    }
}

/// Integral numbers print as integers (twin values are integers within ±2^52 or decimals).
pub fn number_json(n: f64) -> serde_json::Value {
    if n.fract() == 0.0 && n.abs() < 9_007_199_254_740_992.0 {
        (n as i64).into()
    } else {
        serde_json::Number::from_f64(n)
            .map(serde_json::Value::Number)
            .unwrap_or(serde_json::Value::Null)
    }
}
