//! A device identity in the registry.

use crate::ids::DeviceId;
use crate::time::Timestamp;
use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use rand::RngCore;
use serde::{Deserialize, Serialize};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum DeviceStatus {
    Enabled,
    Disabled,
}

impl DeviceStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            DeviceStatus::Enabled => "enabled",
            DeviceStatus::Disabled => "disabled",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ConnectionState {
    Disconnected,
    Connected,
}

impl ConnectionState {
    pub fn as_str(self) -> &'static str {
        match self {
            ConnectionState::Disconnected => "Disconnected",
            ConnectionState::Connected => "Connected",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum AuthenticationType {
    Sas,
    SelfSigned,
    CertificateAuthority,
    None,
}

impl AuthenticationType {
    pub fn as_str(self) -> &'static str {
        match self {
            AuthenticationType::Sas => "sas",
            AuthenticationType::SelfSigned => "selfSigned",
            AuthenticationType::CertificateAuthority => "certificateAuthority",
            AuthenticationType::None => "none",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        match text.to_ascii_lowercase().as_str() {
            "sas" => Some(AuthenticationType::Sas),
            "selfsigned" => Some(AuthenticationType::SelfSigned),
            "certificateauthority" => Some(AuthenticationType::CertificateAuthority),
            "none" => Some(AuthenticationType::None),
            _ => None,
        }
    }
}

/// Base64 symmetric keys, as the registry stores and returns them.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SymmetricKeys {
    pub primary: String,
    pub secondary: String,
}

/// Length of generated keys in bytes (IoT Hub generates 32-byte keys).
pub const GENERATED_KEY_BYTES: usize = 32;

pub fn generate_key() -> String {
    let mut bytes = [0u8; GENERATED_KEY_BYTES];
    rand::rng().fill_bytes(&mut bytes);
    STANDARD.encode(bytes)
}

impl SymmetricKeys {
    pub fn generate() -> Self {
        SymmetricKeys {
            primary: generate_key(),
            secondary: generate_key(),
        }
    }
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct X509Thumbprints {
    pub primary: Option<String>,
    pub secondary: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DeviceIdentity {
    pub device_id: DeviceId,
    /// Tells apart devices that were deleted and created again under the same id.
    pub generation_id: String,
    /// Rendered as the device `etag` (and the twin's `deviceEtag`); rises on every registry update.
    pub etag_counter: u64,
    pub status: DeviceStatus,
    pub status_reason: Option<String>,
    pub status_updated: Option<Timestamp>,
    pub authentication_type: AuthenticationType,
    pub symmetric_keys: Option<SymmetricKeys>,
    pub x509_thumbprints: X509Thumbprints,
    pub iot_edge: bool,
    pub device_scope: Option<String>,
    pub parent_scopes: Vec<String>,
    pub cloud_to_device_message_count: u32,
}

impl DeviceIdentity {
    pub fn etag(&self) -> String {
        crate::etag::device_etag(self.etag_counter)
    }

    pub fn new_generation_id() -> String {
        // IoT Hub's are 18-digit decimal numbers; random ones keep recreated devices apart.
        let mut bytes = [0u8; 8];
        rand::rng().fill_bytes(&mut bytes);
        format!("{:018}", u64::from_le_bytes(bytes) % 1_000_000_000_000_000_000)
    }
}
