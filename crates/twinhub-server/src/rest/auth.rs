//! Service-side authorization: a SAS token signed with a shared access policy's key, whose policy grants
//! the permission the route needs. Ref: service-rest notes §2.

use super::error::RestError;
use axum::http::HeaderMap;
use twinhub_core::device_auth::{authorize_device, authorize_service};
use twinhub_core::policy::{Permission, SharedAccessPolicy};
use twinhub_core::sas::SasToken;
use twinhub_core::DeviceId;
use twinhub_core::Timestamp;
use twinhub_hub::Hub;

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

    /// The HTTPS device API: a token that lets the client act as `device_id` (its own keys, or a policy
    /// with DeviceConnect). Every failure is the same 401.
    pub async fn authorize_device(
        &self,
        headers: &HeaderMap,
        device_id: &DeviceId,
        hub: &Hub,
    ) -> Result<(), RestError> {
        // In a cluster, a device created through another node a moment ago is known here first.
        let record = hub.device_anywhere(device_id).await.ok();
        let check = || -> Result<(), String> {
            let token = token(headers)?;
            authorize_device(
                &token,
                &self.hostname,
                device_id.as_str(),
                record.as_ref().map(|record| &*record.identity),
                &self.policies,
                Timestamp::now().unix_seconds(),
            )
            .map_err(|error| error.to_string())
        };
        check().map_err(|reason| {
            tracing::info!(reason, %device_id, "device request refused");
            RestError::unauthorized()
        })
    }

    fn check(&self, headers: &HeaderMap, permission: Permission) -> Result<(), String> {
        let token = token(headers)?;
        authorize_service(
            &token,
            &self.hostname,
            &self.policies,
            permission,
            Timestamp::now().unix_seconds(),
        )
        .map_err(|error| error.to_string())
    }
}

fn token(headers: &HeaderMap) -> Result<SasToken, String> {
    let header = headers
        .get(axum::http::header::AUTHORIZATION)
        .ok_or("no Authorization header")?
        .to_str()
        .map_err(|_| "Authorization is not text")?;
    SasToken::parse(header).map_err(|_| "malformed token".to_owned())
}
