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
