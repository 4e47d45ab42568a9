//! Where a receiver starts: the `apache.org:selector-filter:string` source filter, a described string
//! (Node describes it with the code 0x0000468C00000004, Python with the symbol) holding an expression on
//! an annotation: `amqp.annotation.x-opt-offset > '<offset>'` (or `>=`), `x-opt-sequence-number`,
//! `x-opt-enqueued-time` (ms since the epoch). `'-1'` is the start of the partition and `'@latest'` the
//! events enqueued after the attach. Offsets are sequence numbers as decimal strings here.

use fe2o3_amqp_types::messaging::FilterSet;
use fe2o3_amqp_types::primitives::Value;

pub const SELECTOR_FILTER: &str = "apache.org:selector-filter:string";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StartPosition {
    Earliest,
    Latest,
    /// At (inclusive) or after this sequence number (offsets are sequence numbers).
    Sequence {
        number: u64,
        inclusive: bool,
    },
    /// At (inclusive) or after this time, ms since the epoch.
    EnqueuedTime {
        millis: i64,
        inclusive: bool,
    },
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("the receiver's filter is not one Event Hubs understands: {0}")]
pub struct FilterError(pub String);

/// The start position a source filter asks for; no filter: the start of the partition.
pub fn start_position(filter: Option<&FilterSet>) -> Result<StartPosition, FilterError> {
    let Some(value) = filter.and_then(|filters| {
        filters
            .iter()
            .find(|(key, _)| key.as_str() == SELECTOR_FILTER)
            .map(|(_, value)| value)
    }) else {
        return Ok(StartPosition::Earliest);
    };
    let expression = match value {
        Value::Described(described) => match &described.value {
            Value::String(text) => text.as_str(),
            other => return Err(FilterError(format!("a selector that is not a string: {other:?}"))),
        },
        Value::String(text) => text.as_str(),
        other => return Err(FilterError(format!("a selector that is not a string: {other:?}"))),
    };
    parse_expression(expression)
}

pub fn parse_expression(expression: &str) -> Result<StartPosition, FilterError> {
    let invalid = || FilterError(expression.to_owned());
    let rest = expression.trim().strip_prefix("amqp.annotation.").ok_or_else(invalid)?;
    let (name, rest) = rest.split_once(char::is_whitespace).ok_or_else(invalid)?;
    let rest = rest.trim_start();
    let (inclusive, rest) = if let Some(rest) = rest.strip_prefix(">=") {
        (true, rest)
    } else if let Some(rest) = rest.strip_prefix('>') {
        (false, rest)
    } else {
        return Err(invalid());
    };
    let value = rest
        .trim()
        .strip_prefix('\'')
        .and_then(|value| value.strip_suffix('\''))
        .ok_or_else(invalid)?;
    match (name, value) {
        (_, "-1") => Ok(StartPosition::Earliest),
        (_, "@latest") => Ok(StartPosition::Latest),
        ("x-opt-offset" | "x-opt-sequence-number", number) => Ok(StartPosition::Sequence {
            number: number.parse().map_err(|_| invalid())?,
            inclusive,
        }),
        ("x-opt-enqueued-time", millis) => Ok(StartPosition::EnqueuedTime {
            millis: millis.parse().map_err(|_| invalid())?,
            inclusive,
        }),
        _ => Err(invalid()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_expressions_both_sdks_send() {
        let cases = [
            ("amqp.annotation.x-opt-offset > '-1'", StartPosition::Earliest),
            ("amqp.annotation.x-opt-offset > '@latest'", StartPosition::Latest),
            (
                "amqp.annotation.x-opt-offset >= '42'",
                StartPosition::Sequence {
                    number: 42,
                    inclusive: true,
                },
            ),
            (
                "amqp.annotation.x-opt-sequence-number > '7'",
                StartPosition::Sequence {
                    number: 7,
                    inclusive: false,
                },
            ),
            (
                "amqp.annotation.x-opt-enqueued-time > '1700000000000'",
                StartPosition::EnqueuedTime {
                    millis: 1_700_000_000_000,
                    inclusive: false,
                },
            ),
        ];
        for (expression, expected) in cases {
            assert_eq!(parse_expression(expression), Ok(expected), "{expression}");
        }
        for bad in [
            "",
            "amqp.annotation.x-opt-offset = '1'",
            "amqp.annotation.x-opt-offset > 1",
            "amqp.annotation.x-opt-offset > 'abc'",
            "amqp.annotation.x-opt-other > '1'",
            "sql > '1'",
        ] {
            assert!(parse_expression(bad).is_err(), "{bad}");
        }
        assert_eq!(start_position(None), Ok(StartPosition::Earliest));
    }
}
