//! Shared access signature tokens: parsing, verification and signing.
//!
//! `SharedAccessSignature sr=<resource>&sig=<signature>&se=<expiry>[&skn=<policy>]`, where
//! signature = Base64(HMAC-SHA256(Base64Decode(key), sr + "\n" + se)).
//! Ref: service-rest notes §2.2. The HMAC is computed over `sr` exactly as transmitted (Node signs the raw
//! host, Python the `quote_plus`-encoded one), fields come in any order, and `sig` may or may not have its
//! `/` percent-encoded.

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use hmac::{Hmac, Mac};
use percent_encoding::{percent_decode_str, utf8_percent_encode, NON_ALPHANUMERIC};
use sha2::Sha256;
use subtle::ConstantTimeEq;

type HmacSha256 = Hmac<Sha256>;

const SCHEME: &str = "SharedAccessSignature ";

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SasError {
    #[error("the token does not start with 'SharedAccessSignature '")]
    Scheme,
    #[error("the token has no '{0}' field")]
    MissingField(&'static str),
    #[error("the token's '{0}' field appears more than once")]
    DuplicateField(&'static str),
    #[error("the token's '{0}' field is malformed")]
    MalformedField(&'static str),
    #[error("the key is not valid base64")]
    Key,
}

/// A parsed token. `resource_raw` and `expiry_raw` are kept as transmitted because the signature is over them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SasToken {
    resource_raw: String,
    expiry_raw: String,
    /// Percent-decoded, lower-cased resource URI.
    pub resource: String,
    pub expiry_unix_seconds: u64,
    pub signature: Vec<u8>,
    pub key_name: Option<String>,
}

fn decode(text: &str, field: &'static str) -> Result<String, SasError> {
    percent_decode_str(text)
        .decode_utf8()
        .map(|decoded| decoded.into_owned())
        .map_err(|_| SasError::MalformedField(field))
}

impl SasToken {
    pub fn parse(token: &str) -> Result<SasToken, SasError> {
        let fields = token.trim().strip_prefix(SCHEME).ok_or(SasError::Scheme)?;
        let (mut sr, mut sig, mut se, mut skn) = (None, None, None, None);
        for pair in fields.split('&').filter(|pair| !pair.is_empty()) {
            let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
            let (slot, field) = match name {
                "sr" => (&mut sr, "sr"),
                "sig" => (&mut sig, "sig"),
                "se" => (&mut se, "se"),
                "skn" => (&mut skn, "skn"),
                // Unknown fields are ignored, as by IoT Hub.
                _ => continue,
            };
            if slot.replace(value).is_some() {
                return Err(SasError::DuplicateField(field));
            }
        }
        let resource_raw = sr.ok_or(SasError::MissingField("sr"))?;
        let signature_text = sig.ok_or(SasError::MissingField("sig"))?;
        let expiry_raw = se.ok_or(SasError::MissingField("se"))?;
        // Percent-decoding only: a '+' in the signature is Base64, never a space.
        let signature = STANDARD
            .decode(decode(signature_text, "sig")?)
            .map_err(|_| SasError::MalformedField("sig"))?;
        let expiry_unix_seconds = expiry_raw.parse().map_err(|_| SasError::MalformedField("se"))?;
        let key_name = skn.map(|name| decode(name, "skn")).transpose()?;
        Ok(SasToken {
            resource: decode(resource_raw, "sr")?.to_ascii_lowercase(),
            resource_raw: resource_raw.to_owned(),
            expiry_raw: expiry_raw.to_owned(),
            expiry_unix_seconds,
            signature,
            key_name,
        })
    }

    /// Whether the signature was made with this Base64 key. Constant time in the signature.
    pub fn is_signed_with(&self, key_base64: &str) -> bool {
        STANDARD
            .decode(key_base64)
            .is_ok_and(|key| self.is_signed_with_key_bytes(&key))
    }

    /// Whether the signature was made with this key's text itself (its UTF-8 bytes, not its Base64
    /// decoding): how Event Hubs clients sign. Constant time in the signature.
    pub fn is_signed_with_key_text(&self, key: &str) -> bool {
        self.is_signed_with_key_bytes(key.as_bytes())
    }

    fn is_signed_with_key_bytes(&self, key: &[u8]) -> bool {
        let expected = hmac(key, &self.resource_raw, &self.expiry_raw);
        expected.ct_eq(&self.signature).into()
    }

    pub fn is_expired(&self, now_unix_seconds: i64) -> bool {
        i64::try_from(self.expiry_unix_seconds).is_ok_and(|expiry| expiry <= now_unix_seconds)
    }

    /// Whether the token's resource covers `resource` (`host`, `host/devices/d1`, ...): equal, or a
    /// path prefix of it. The host may carry a `:port` on either side (Python signs `host:port`).
    pub fn covers(&self, resource: &str) -> bool {
        let wanted = resource.to_ascii_lowercase();
        let strip_port = |text: &str| -> String {
            match text.split_once('/') {
                Some((host, rest)) => format!("{}/{rest}", host.split(':').next().unwrap_or(host)),
                None => text.split(':').next().unwrap_or(text).to_owned(),
            }
        };
        let granted = strip_port(self.resource.trim_end_matches('/'));
        let wanted = strip_port(&wanted);
        wanted == granted || wanted.starts_with(&format!("{granted}/"))
    }
}

fn hmac(key: &[u8], resource: &str, expiry: &str) -> Vec<u8> {
    // Any key length is valid for HMAC; new_from_slice only fails for fixed-size MACs.
    let Ok(mut mac) = HmacSha256::new_from_slice(key) else {
        return Vec::new();
    };
    mac.update(resource.as_bytes());
    mac.update(b"\n");
    mac.update(expiry.as_bytes());
    mac.finalize().into_bytes().to_vec()
}

/// Makes a token, the way the Node SDK does: the resource URL-encoded, signature strictly encoded.
pub fn sign(
    resource: &str,
    key_base64: &str,
    key_name: Option<&str>,
    expiry_unix_seconds: u64,
) -> Result<String, SasError> {
    let key = STANDARD.decode(key_base64).map_err(|_| SasError::Key)?;
    let resource_encoded = utf8_percent_encode(resource, NON_ALPHANUMERIC).to_string();
    let expiry = expiry_unix_seconds.to_string();
    let signature = STANDARD.encode(hmac(&key, &resource_encoded, &expiry));
    let mut token = format!(
        "{SCHEME}sr={resource_encoded}&sig={}&se={expiry}",
        utf8_percent_encode(&signature, NON_ALPHANUMERIC)
    );
    if let Some(name) = key_name {
        token.push_str("&skn=");
        token.push_str(&utf8_percent_encode(name, NON_ALPHANUMERIC).to_string());
    }
    Ok(token)
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "c2VjcmV0LWtleS1mb3ItdGVzdHMtb25seS0wMTIzNDU2Nzg5";

    fn node_style(host: &str, key: &str, expiry: u64) -> String {
        // Node: sr raw, sig encodeURIComponent, order sr, sig, skn, se.
        let signature = STANDARD.encode(hmac(&STANDARD.decode(key).unwrap(), host, &expiry.to_string()));
        format!(
            "SharedAccessSignature sr={host}&sig={}&skn=iothubowner&se={expiry}",
            utf8_percent_encode(&signature, NON_ALPHANUMERIC)
        )
    }

    fn python_style(host: &str, key: &str, expiry: u64) -> String {
        // Python: sr quote_plus'ed and signed in that form, sig with '/' left as is, order sr, sig, se, skn.
        let resource = host.replace(':', "%3A");
        let signature = STANDARD.encode(hmac(&STANDARD.decode(key).unwrap(), &resource, &expiry.to_string()));
        let signature = signature.replace('+', "%2B").replace('=', "%3D");
        format!("SharedAccessSignature sr={resource}&sig={signature}&se={expiry}&skn=iothubowner")
    }

    #[test]
    fn verifies_node_and_python_tokens() {
        for token in [
            node_style("localhost", KEY, 2_000_000_000),
            python_style("localhost:8443", KEY, 2_000_000_000),
        ] {
            let parsed = SasToken::parse(&token).expect(&token);
            assert!(parsed.is_signed_with(KEY), "{token}");
            assert_eq!(parsed.key_name.as_deref(), Some("iothubowner"));
            assert!(parsed.covers("localhost"));
            assert!(!parsed.is_expired(1_900_000_000));
            assert!(parsed.is_expired(2_000_000_000));
        }
    }

    #[test]
    fn signed_tokens_verify_and_wrong_keys_do_not() {
        let token = sign("myhub.example/devices/dev1", KEY, None, 2_000_000_000).unwrap();
        let parsed = SasToken::parse(&token).unwrap();
        assert!(parsed.is_signed_with(KEY));
        assert!(!parsed.is_signed_with("b3RoZXIta2V5"));
        assert!(!parsed.is_signed_with("not base64!"));
        assert!(parsed.covers("myhub.example/devices/dev1"));
        assert!(parsed.covers("MYHUB.example/devices/dev1/twin"));
        assert!(!parsed.covers("myhub.example/devices/dev10"));
        assert!(!parsed.covers("myhub.example"));
    }

    #[test]
    fn tampering_with_any_signed_field_fails() {
        let token = sign("hub", KEY, Some("service"), 2_000_000_000).unwrap();
        let tampered_expiry = token.replace("se=2000000000", "se=2000000001");
        assert!(!SasToken::parse(&tampered_expiry).unwrap().is_signed_with(KEY));
        let tampered_resource = token.replace("sr=hub", "sr=hub2");
        assert!(!SasToken::parse(&tampered_resource).unwrap().is_signed_with(KEY));
    }

    #[test]
    fn malformed_tokens_are_errors_not_panics() {
        for bad in [
            "",
            "Bearer x",
            "SharedAccessSignature ",
            "SharedAccessSignature sr=a&se=1",
            "SharedAccessSignature sr=a&sig=%%%&se=1",
            "SharedAccessSignature sr=a&sig=AAAA&se=soon",
            "SharedAccessSignature sr=a&sr=b&sig=AAAA&se=1",
        ] {
            assert!(SasToken::parse(bad).is_err(), "{bad}");
        }
    }
}
