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

/// An id type: validated on construction, cheap to clone (shared), ordered, and stored and sent as its
/// text.
macro_rules! id_type {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
        #[serde(try_from = "String", into = "String")]
        pub struct $name(Arc<str>);

        impl $name {
            pub fn new(id: &str) -> Result<Self, InvalidId> {
                validate(id)?;
                Ok($name(Arc::from(id)))
            }

            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl TryFrom<String> for $name {
            type Error = InvalidId;
            fn try_from(id: String) -> Result<Self, InvalidId> {
                $name::new(&id)
            }
        }

        impl From<$name> for String {
            fn from(id: $name) -> String {
                id.0.to_string()
            }
        }

        impl std::borrow::Borrow<str> for $name {
            fn borrow(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
                formatter.write_str(&self.0)
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(formatter, "{}({:?})", stringify!($name), &*self.0)
            }
        }
    };
}

id_type!(
    /// A device id (the registry is kept sorted by id for paging).
    DeviceId
);
id_type!(
    /// A module id: the same rule as device ids, unique within its device.
    ModuleId
);
id_type!(
    /// A scheduled job's id: the same rule as device ids.
    JobId
);

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
