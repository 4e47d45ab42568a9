//! Etags as the real hub encodes them (clients treat them as opaque), and the `If-Match` rules.

use base64::engine::general_purpose::STANDARD;
use base64::Engine;

/// Twin etag: Base64 of the 8-byte big-endian counter (`AAAAAAAAAAc=` is 7), as real hubs emit.
pub fn twin_etag(counter: u64) -> String {
    STANDARD.encode(counter.to_be_bytes())
}

/// Device etag: Base64 of the counter written as ASCII decimal (`MTIzNDU2Nzg5` is "123456789").
pub fn device_etag(counter: u64) -> String {
    STANDARD.encode(counter.to_string())
}

/// A parsed `If-Match` header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IfMatch {
    /// No header: create-only for PUT, unconditional otherwise.
    Absent,
    /// `*` (quoted or not): unconditional.
    Any,
    /// A specific etag, quotes and a weak `W/` prefix removed.
    Etag(String),
}

impl IfMatch {
    /// Ref: service-rest notes §5: Node always quotes, Python quotes for devices and twins but not for
    /// configurations; both forms are accepted.
    pub fn parse(header: Option<&str>) -> IfMatch {
        let Some(raw) = header else {
            return IfMatch::Absent;
        };
        let raw = raw.trim();
        let raw = raw.strip_prefix("W/").unwrap_or(raw);
        let raw = raw
            .strip_prefix('"')
            .and_then(|inner| inner.strip_suffix('"'))
            .unwrap_or(raw);
        if raw == "*" {
            IfMatch::Any
        } else {
            IfMatch::Etag(raw.to_owned())
        }
    }

    /// Whether a write conditioned on this header may proceed against `current`.
    pub fn allows(&self, current: &str) -> bool {
        match self {
            IfMatch::Absent | IfMatch::Any => true,
            IfMatch::Etag(expected) => expected == current,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_like_the_real_hub() {
        assert_eq!(twin_etag(7), "AAAAAAAAAAc=");
        assert_eq!(device_etag(123_456_789), "MTIzNDU2Nzg5");
    }

    #[test]
    fn parses_every_form_the_sdks_send() {
        assert_eq!(IfMatch::parse(None), IfMatch::Absent);
        assert_eq!(IfMatch::parse(Some("*")), IfMatch::Any);
        assert_eq!(IfMatch::parse(Some("\"*\"")), IfMatch::Any);
        assert_eq!(IfMatch::parse(Some("\"MQ==\"")), IfMatch::Etag("MQ==".into()));
        assert_eq!(IfMatch::parse(Some("MQ==")), IfMatch::Etag("MQ==".into()));
        assert_eq!(IfMatch::parse(Some("W/\"MQ==\"")), IfMatch::Etag("MQ==".into()));
        assert!(IfMatch::Etag("a".into()).allows("a"));
        assert!(!IfMatch::Etag("a".into()).allows("b"));
    }
}
