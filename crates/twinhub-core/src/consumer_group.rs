//! Consumer groups of the Event Hubs-compatible endpoint: `$Default`, always there, and the ones a back
//! end creates. Each reads every event independently (the hub keeps no reader state: positions are the
//! clients'); what the hub decides is which names exist. Names compare without case, as in Event Hubs.

/// The consumer group every hub has and nobody may delete.
pub const DEFAULT: &str = "$Default";
/// IoT Hub's limit on a consumer group name.
pub const NAME_CHARS_MAX: usize = 50;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConsumerGroupNameError {
    #[error("a consumer group name has 1 to {NAME_CHARS_MAX} characters")]
    Length,
    #[error("a consumer group name has letters, digits, periods, hyphens and underscores only: '{0}'")]
    Character(String),
    #[error("'$Default' is the hub's own consumer group")]
    Reserved,
}

/// Checks a name a back end asks to create or delete.
pub fn check_name(name: &str) -> Result<(), ConsumerGroupNameError> {
    if name.is_empty() || name.chars().count() > NAME_CHARS_MAX {
        return Err(ConsumerGroupNameError::Length);
    }
    if name.eq_ignore_ascii_case(DEFAULT) {
        return Err(ConsumerGroupNameError::Reserved);
    }
    if !name
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_'))
    {
        return Err(ConsumerGroupNameError::Character(name.to_owned()));
    }
    Ok(())
}

/// The form names are compared and stored under.
pub fn key(name: &str) -> String {
    name.to_ascii_lowercase()
}

/// How a consumer group is stored: its name for the built-in endpoint, `<event hub>/<name>` for an event
/// hub routes fill (a name has no `/`, so the two never meet).
pub fn scoped(event_hub: Option<&str>, name: &str) -> String {
    match event_hub {
        Some(event_hub) => format!("{}/{name}", event_hub.to_ascii_lowercase()),
        None => name.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_as_iot_hub_takes_them() {
        for good in ["cg2", "analytics.v1", "stream_processor-2", &"x".repeat(50)] {
            assert_eq!(check_name(good), Ok(()), "{good}");
        }
        assert_eq!(check_name(""), Err(ConsumerGroupNameError::Length));
        assert_eq!(check_name(&"x".repeat(51)), Err(ConsumerGroupNameError::Length));
        assert_eq!(check_name("$default"), Err(ConsumerGroupNameError::Reserved));
        assert!(matches!(check_name("a/b"), Err(ConsumerGroupNameError::Character(_))));
        assert_eq!(key("CG2"), key("cg2"));
    }
}
