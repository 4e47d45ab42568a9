//! The twin rules: what a key, a value and a section may be. Checked where data enters (on the patch)
//! and, for sizes, on the document the patch would produce.
//!
//! Ref: IoT Hub developer guide, "Device twins" → "Tags and properties format" and "Device twin size".

use std::fmt;

/// The limits, one place. Defaults are IoT Hub's.
#[derive(Clone, Debug)]
pub struct TwinRules {
    /// Arrays in tags and properties. The product is specified without them (older IoT Hub api-versions
    /// refused them too), so they are off unless a deployment turns them on.
    pub arrays_allowed: bool,
    pub key_bytes_max: usize,
    /// Nesting of objects below a section's root (`tags.one...ten.leaf` is the deepest allowed).
    pub depth_max: usize,
    pub string_bytes_max: usize,
    pub tags_bytes_max: usize,
    pub desired_bytes_max: usize,
    pub reported_bytes_max: usize,
}

impl Default for TwinRules {
    fn default() -> Self {
        TwinRules {
            arrays_allowed: false,
            key_bytes_max: 1024,
            depth_max: 10,
            string_bytes_max: 4096,
            tags_bytes_max: 8 * 1024,
            desired_bytes_max: 32 * 1024,
            reported_bytes_max: 32 * 1024,
        }
    }
}

/// Ref: IoT Hub twin rules: integers between -2^52 and 2^52 - 1.
pub const INT_MIN: i64 = -4_503_599_627_370_496;
pub const INT_MAX: i64 = 4_503_599_627_370_495;

/// Which part of the twin a rule was checked on; named in every error message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SectionName {
    Tags,
    Desired,
    Reported,
}

impl SectionName {
    pub fn path(self) -> &'static str {
        match self {
            SectionName::Tags => "tags",
            SectionName::Desired => "properties.desired",
            SectionName::Reported => "properties.reported",
        }
    }
}

/// A rule the input broke, with the path where it broke it.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum TwinRuleViolation {
    #[error("{0}")]
    Key(KeyProblem),
    #[error("'{path}': objects may be nested at most {max} levels deep")]
    TooDeep { path: String, max: usize },
    #[error("'{path}': integers must be between {INT_MIN} and {INT_MAX}")]
    IntegerOutOfRange { path: String },
    #[error("'{path}': strings may be at most {max} bytes")]
    StringTooLong { path: String, max: usize },
    #[error("Provided json is not a valid 'tags' or 'properties' object: arrays are not supported ('{path}')")]
    ArrayNotSupported { path: String },
    #[error("'{path}' must be a JSON object")]
    NotAnObject { path: String },
    #[error("'{section}' would be {size} bytes, more than the {max} bytes allowed")]
    SectionTooLarge {
        section: &'static str,
        size: usize,
        max: usize,
    },
    #[error("'properties.reported' is written by the device only; the back end cannot change it")]
    ReportedNotWritable,
    #[error("reported properties cannot be cleared with null; send a patch that sets each property to remove to null")]
    ReportedNotClearable,
    #[error("'{path}': {value} is not a valid value")]
    InvalidValue { path: String, value: String },
}

#[derive(Clone, Debug, PartialEq)]
pub struct KeyProblem {
    pub path: String,
    pub key: String,
    pub reason: KeyReason,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeyReason {
    Empty,
    TooLong(usize),
    Dot,
    Dollar,
    Space,
    ControlCharacter,
}

impl fmt::Display for KeyProblem {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        let what = match self.reason {
            KeyReason::Empty => "is empty".to_owned(),
            KeyReason::TooLong(max) => format!("is longer than {max} bytes"),
            KeyReason::Dot => "contains '.'".to_owned(),
            KeyReason::Dollar => "contains '$'".to_owned(),
            KeyReason::Space => "contains a space".to_owned(),
            KeyReason::ControlCharacter => "contains a control character".to_owned(),
        };
        let shown: String = self.key.chars().take(64).collect();
        write!(
            formatter,
            "'{}': the key '{}' {what}; twin keys may not contain '.', '$', spaces or control characters",
            self.path,
            shown.escape_debug()
        )
    }
}

fn is_control(c: char) -> bool {
    // C0 and C1 control characters.
    c.is_control()
}

impl TwinRules {
    pub fn check_key(&self, parent_path: &str, key: &str) -> Result<(), TwinRuleViolation> {
        let reason = if key.is_empty() {
            Some(KeyReason::Empty)
        } else if key.len() > self.key_bytes_max {
            Some(KeyReason::TooLong(self.key_bytes_max))
        } else if key.contains('.') {
            Some(KeyReason::Dot)
        } else if key.contains('$') {
            Some(KeyReason::Dollar)
        } else if key.contains(' ') {
            Some(KeyReason::Space)
        } else if key.chars().any(is_control) {
            Some(KeyReason::ControlCharacter)
        } else {
            None
        };
        match reason {
            None => Ok(()),
            Some(reason) => Err(TwinRuleViolation::Key(KeyProblem {
                path: parent_path.to_owned(),
                key: key.to_owned(),
                reason,
            })),
        }
    }

    /// Checks every key and value of an incoming object (a patch or a replacement section).
    /// `depth` is the nesting of `object` itself below the section root (0 for the root).
    pub fn check_object(
        &self,
        path: &str,
        object: &serde_json::Map<String, serde_json::Value>,
        depth: usize,
    ) -> Result<(), TwinRuleViolation> {
        for (key, value) in object {
            self.check_key(path, key)?;
            let child_path = format!("{path}.{key}");
            self.check_value(&child_path, value, depth + 1)?;
        }
        Ok(())
    }

    fn check_value(&self, path: &str, value: &serde_json::Value, depth: usize) -> Result<(), TwinRuleViolation> {
        match value {
            serde_json::Value::Null | serde_json::Value::Bool(_) => Ok(()),
            serde_json::Value::Number(number) => {
                if let Some(integer) = number.as_i64() {
                    if !(INT_MIN..=INT_MAX).contains(&integer) {
                        return Err(TwinRuleViolation::IntegerOutOfRange { path: path.to_owned() });
                    }
                } else if number.is_u64() {
                    return Err(TwinRuleViolation::IntegerOutOfRange { path: path.to_owned() });
                } else if !number.as_f64().is_some_and(f64::is_finite) {
                    return Err(TwinRuleViolation::InvalidValue {
                        path: path.to_owned(),
                        value: number.to_string(),
                    });
                }
                Ok(())
            }
            serde_json::Value::String(string) => {
                if string.len() > self.string_bytes_max {
                    return Err(TwinRuleViolation::StringTooLong {
                        path: path.to_owned(),
                        max: self.string_bytes_max,
                    });
                }
                Ok(())
            }
            serde_json::Value::Array(items) => {
                if !self.arrays_allowed {
                    return Err(TwinRuleViolation::ArrayNotSupported { path: path.to_owned() });
                }
                for (index, item) in items.iter().enumerate() {
                    // An array does not add an object level; objects inside it do.
                    self.check_value(&format!("{path}[{index}]"), item, depth)?;
                }
                Ok(())
            }
            serde_json::Value::Object(object) => {
                if depth > self.depth_max {
                    return Err(TwinRuleViolation::TooDeep {
                        path: path.to_owned(),
                        max: self.depth_max,
                    });
                }
                self.check_object(path, object, depth)
            }
        }
    }

    pub fn section_bytes_max(&self, section: SectionName) -> usize {
        match section {
            SectionName::Tags => self.tags_bytes_max,
            SectionName::Desired => self.desired_bytes_max,
            SectionName::Reported => self.reported_bytes_max,
        }
    }

    pub fn check_size(&self, section: SectionName, size: usize) -> Result<(), TwinRuleViolation> {
        let max = self.section_bytes_max(section);
        if size > max {
            return Err(TwinRuleViolation::SectionTooLarge {
                section: section.path(),
                size,
                max,
            });
        }
        Ok(())
    }
}

/// The size of a section as IoT Hub computes it: the sum over all properties of the key's length plus
/// the value's length; strings count their UTF-8 bytes except control characters, numbers 8, booleans 4,
/// objects the sum of their members. Ref: IoT Hub developer guide, "Device twin size".
pub fn key_size(key: &str) -> usize {
    key.len()
}

pub fn string_size(string: &str) -> usize {
    string.chars().filter(|c| !is_control(*c)).map(char::len_utf8).sum()
}

pub const NUMBER_SIZE: usize = 8;
pub const BOOL_SIZE: usize = 4;

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn check(value: serde_json::Value) -> Result<(), TwinRuleViolation> {
        TwinRules::default().check_object("tags", value.as_object().expect("object"), 0)
    }

    #[test]
    fn refuses_bad_keys_naming_the_path() {
        for bad in ["a.b", "a$b", "a b", "a\u{1}b", "a\u{85}b", ""] {
            let error = check(json!({"outer": {bad: 1}})).expect_err(bad);
            assert!(error.to_string().contains("'tags.outer'"), "{error}");
        }
        let long = "k".repeat(1025);
        assert!(check(json!({long: 1})).is_err());
        assert!(check(json!({"k".repeat(1024): 1})).is_ok());
    }

    #[test]
    fn depth_ten_objects_is_the_limit() {
        let mut ten = json!({"leaf": 1});
        for level in (1..=10).rev() {
            ten = json!({ format!("l{level}"): ten });
        }
        assert!(check(ten.clone()).is_ok());
        let eleven = json!({"l0": ten});
        let error = check(eleven).expect_err("eleven levels");
        assert!(matches!(error, TwinRuleViolation::TooDeep { .. }), "{error}");
    }

    #[test]
    fn integers_within_two_to_the_52() {
        assert!(check(json!({"a": INT_MAX, "b": INT_MIN, "c": 1.5e300})).is_ok());
        assert!(matches!(
            check(json!({"a": INT_MAX + 1})),
            Err(TwinRuleViolation::IntegerOutOfRange { .. })
        ));
        assert!(check(json!({"a": INT_MIN - 1})).is_err());
        assert!(check(json!({"a": u64::MAX})).is_err());
    }

    #[test]
    fn arrays_are_a_setting() {
        let error = check(json!({"a": {"b": [1, 2]}})).expect_err("arrays refused");
        assert_eq!(
            error.to_string(),
            "Provided json is not a valid 'tags' or 'properties' object: arrays are not supported ('tags.a.b')"
        );
        let rules = TwinRules {
            arrays_allowed: true,
            ..TwinRules::default()
        };
        assert!(rules
            .check_object("tags", json!({"a": [1, {"b": 2}]}).as_object().unwrap(), 0)
            .is_ok());
    }

    #[test]
    fn long_strings_are_refused() {
        assert!(check(json!({"a": "x".repeat(4096)})).is_ok());
        assert!(check(json!({"a": "x".repeat(4097)})).is_err());
    }

    #[test]
    fn string_size_skips_control_characters() {
        assert_eq!(string_size("ab\u{0}c"), 3);
        assert_eq!(string_size("é"), 2);
    }
}
