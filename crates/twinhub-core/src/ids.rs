//! Identifiers validated on construction, so that nothing past the edge handles an invalid one.

use serde::{Deserialize, Serialize};
use std::fmt;
use std::sync::Arc;

/// Longest device or module id IoT Hub accepts, in characters (all ASCII).
pub const ID_CHARS_MAX: usize = 128;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InvalidId {
    #[error("the id is empty")]
    Empty,
    #[error("the id is longer than {ID_CHARS_MAX} characters")]
    TooLong,
    #[error("the id contains '{0}', which is not allowed (letters, digits and - . + % _ # * ? ! ( ) , = @ $ ' only)")]
    Character(char),
}

/// Ref: IoT Hub identity registry, "Device identity properties": case-sensitive, up to 128 characters of
/// ASCII letters, digits and `- . + % _ # * ? ! ( ) , = @ $ '`. Module ids follow the same rule.
fn validate(id: &str) -> Result<(), InvalidId> {
    if id.is_empty() {
        return Err(InvalidId::Empty);
    }
    if id.len() > ID_CHARS_MAX {
        return Err(InvalidId::TooLong);
    }
    match id
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || "-.+%_#*?!(),=@$'".contains(*c)))
    {
        Some(bad) => Err(InvalidId::Character(bad)),
        None => Ok(()),
    }
}

/// A device id. Cheap to clone (shared), ordered (the registry is kept sorted by id for paging).
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct DeviceId(Arc<str>);

impl DeviceId {
    pub fn new(id: &str) -> Result<Self, InvalidId> {
        validate(id)?;
        Ok(DeviceId(Arc::from(id)))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for DeviceId {
    type Error = InvalidId;
    fn try_from(id: String) -> Result<Self, InvalidId> {
        DeviceId::new(&id)
    }
}

impl From<DeviceId> for String {
    fn from(id: DeviceId) -> String {
        id.0.to_string()
    }
}

impl std::borrow::Borrow<str> for DeviceId {
    fn borrow(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for DeviceId {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str(&self.0)
    }
}

impl fmt::Debug for DeviceId {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(formatter, "DeviceId({:?})", &*self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_the_documented_characters() {
        assert!(DeviceId::new("dev-1.a+b%c_d#e*f?g!h(i)j,k=l@m$n'o").is_ok());
    }

    #[test]
    fn refuses_bad_ids() {
        assert_eq!(DeviceId::new(""), Err(InvalidId::Empty));
        assert_eq!(DeviceId::new("a/b"), Err(InvalidId::Character('/')));
        assert_eq!(DeviceId::new("a b"), Err(InvalidId::Character(' ')));
        assert_eq!(DeviceId::new(&"x".repeat(129)), Err(InvalidId::TooLong));
        assert!(DeviceId::new(&"x".repeat(128)).is_ok());
    }
}
