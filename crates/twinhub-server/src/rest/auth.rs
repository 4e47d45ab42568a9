//! Service-side authorization: a SAS token signed with a shared access policy's key, whose policy grants
//! the permission the route needs. Ref: service-rest notes §2.

use super::error::RestError;
use axum::http::HeaderMap;
use twinhub_core::policy::{Permission, SharedAccessPolicy};
use twinhub_core::sas::SasToken;
use twinhub_core::Timestamp;

pub struct ServiceAuth {
    pub hostname: String,
    pub policies: Vec<SharedAccessPolicy>,
}

impl ServiceAuth {
    /// Every failure is the same 401: which check failed is logged, never told.
    pub fn authorize(&self, headers: &HeaderMap, permission: Permission) -> Result<(), RestError> {
        self.check(headers, permission).map_err(|reason| {
            tracing::info!(reason, ?permission, "service request refused");
            RestError::unauthorized()
        })
    }

    fn check(&self, headers: &HeaderMap, permission: Permission) -> Result<(), &'static str> {
        let header = headers
            .get(axum::http::header::AUTHORIZATION)
            .ok_or("no Authorization header")?
            .to_str()
            .map_err(|_| "Authorization is not text")?;
        let token = SasToken::parse(header).map_err(|_| "malformed token")?;
        // Device tokens carry no key name; they never reach service routes.
        let key_name = token.key_name.as_deref().ok_or("token names no policy")?;
        let policy = self
            .policies
            .iter()
            .find(|policy| policy.name == key_name)
            .ok_or("unknown policy")?;
        let signed = token.is_signed_with(&policy.primary_key) | token.is_signed_with(&policy.secondary_key);
        if !signed {
            return Err("bad signature");
        }
        if token.is_expired(Timestamp::now().unix_seconds()) {
            return Err("expired token");
        }
        if !token.covers(&self.hostname) {
            return Err("token is for another resource");
        }
        if !policy.allows(permission) {
            return Err("policy lacks the permission");
        }
        Ok(())
    }
}
