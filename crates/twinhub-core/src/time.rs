//! Timestamps as IoT Hub writes them: UTC, ISO-8601 with seven fractional digits (100 ns ticks).

use serde::{Deserialize, Serialize};
use std::fmt;

/// Nanoseconds since the Unix epoch, UTC. Kept as an integer so records encode compactly.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Timestamp(pub i64);

/// What IoT Hub writes for a time that was never set (`lastActivityTime` of a device that never connected).
pub const NEVER: &str = "0001-01-01T00:00:00Z";

impl Timestamp {
    pub fn now() -> Self {
        let nanos = time::OffsetDateTime::now_utc().unix_timestamp_nanos();
        Timestamp(i64::try_from(nanos).unwrap_or(i64::MAX))
    }

    /// `2024-01-01T00:00:00.1234567Z`: seven digits, as the real hub emits (the SDKs accept 0-7).
    pub fn to_iso8601(self) -> String {
        let datetime = time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(self.0))
            .unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
        let ticks = datetime.nanosecond() / 100;
        format!(
            "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:07}Z",
            datetime.year(),
            u8::from(datetime.month()),
            datetime.day(),
            datetime.hour(),
            datetime.minute(),
            datetime.second(),
            ticks
        )
    }

    /// An RFC 3339 time as the SDKs send one (`2030-01-02T03:04:05.123Z`); a time without an offset
    /// (Python's naive `isoformat()`) is taken as UTC. `None` when it is not such a time.
    pub fn parse_iso8601(text: &str) -> Option<Timestamp> {
        use time::format_description::well_known::Rfc3339;
        let text = text.trim();
        let parsed = time::OffsetDateTime::parse(text, &Rfc3339)
            .or_else(|_| time::OffsetDateTime::parse(&format!("{text}Z"), &Rfc3339))
            .ok()?;
        i64::try_from(parsed.unix_timestamp_nanos()).ok().map(Timestamp)
    }

    pub fn unix_seconds(self) -> i64 {
        self.0.div_euclid(1_000_000_000)
    }
}

impl fmt::Display for Timestamp {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str(&self.to_iso8601())
    }
}

/// An optional time rendered as IoT Hub does: the `0001-01-01` sentinel when unset.
pub fn iso8601_or_never(timestamp: Option<Timestamp>) -> String {
    timestamp.map_or_else(|| NEVER.to_owned(), Timestamp::to_iso8601)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_times_the_sdks_send() {
        let node = Timestamp::parse_iso8601("2024-01-01T00:00:00.123Z").unwrap();
        assert_eq!(node.to_iso8601(), "2024-01-01T00:00:00.1230000Z");
        let naive = Timestamp::parse_iso8601("2024-01-01T00:00:00.123456").unwrap();
        assert_eq!(naive.to_iso8601(), "2024-01-01T00:00:00.1234560Z");
        let offset = Timestamp::parse_iso8601("2024-01-01T02:00:00+02:00").unwrap();
        assert_eq!(offset.unix_seconds(), 1_704_067_200);
        assert_eq!(Timestamp::parse_iso8601("tomorrow"), None);
    }

    #[test]
    fn formats_seven_fractional_digits() {
        let timestamp = Timestamp(1_704_067_200_123_456_789);
        assert_eq!(timestamp.to_iso8601(), "2024-01-01T00:00:00.1234567Z");
        assert_eq!(timestamp.unix_seconds(), 1_704_067_200);
    }

    #[test]
    fn unset_is_the_sentinel() {
        assert_eq!(iso8601_or_never(None), NEVER);
    }
}
