//! Cloud-to-device messages over HTTPS: the device polls `GET /devices/{id}/messages/devicebound` and
//! settles what it got by its lock token (device SAS auth, as for telemetry); the back end empties a
//! device's queue with `DELETE /devices/{id}/commands` (ServiceConnect).
//! Ref: device-mqtt-http notes §6 (C2D receive, settlement), service-rest notes §4.9 (purge).
//!
//! What the Node `azure-iot-device-http` transport reads of a received message (`azure-iot-http-base`
//! `Http.toMessage`): the body; `ETag` as the lock token, cutting its first and last character (so the
//! quotes are required); `iothub-messageid`, `iothub-to`, `iothub-expiry`, `iothub-correlationid`; and every
//! `iothub-app-*` header as a property, keeping the prefix in the key. The other `iothub-*` headers
//! (sequence number, enqueued time, delivery count, user id, ack) are sent as IoT Hub does and ignored there.
//! It settles with `DELETE …/devicebound/<lockToken>` (complete), the same with a valueless `&reject`
//! (reject), and `POST …/devicebound/<lockToken>/abandon` (abandon), the lock token put in the path raw.

use super::body::{ok, JsonResponse};
use super::error::RestError;
use super::registry::device_id;
use super::RestState;
use axum::body::Body;
use axum::extract::{Path, RawQuery, State};
use axum::http::{header, HeaderMap, HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::json;
use twinhub_core::c2d::{Ack, QueuedMessage, Settlement};
use twinhub_core::policy::Permission;

const APP_PROPERTY_PREFIX: &str = "iothub-app-";

/// `GET /devices/{id}/messages/devicebound`: the device's next message, locked for it (200, the lock token
/// in `ETag`), or 204 with no body when it has none now. The `api-version` query is not looked at.
pub async fn receive(
    State(state): State<RestState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Response, RestError> {
    let device_id = device_id(&id)?;
    state.auth.authorize_device(&headers, &device_id, &state.hub).await?;
    let received = state.hub.receive_cloud_to_device(device_id.clone()).await?;
    Ok(match received {
        None => StatusCode::NO_CONTENT.into_response(),
        Some(queued) => message_response(device_id.as_str(), *queued),
    })
}

/// `DELETE /devices/{id}/messages/devicebound/{lockToken}`: complete, or reject with a `reject` query
/// parameter (valueless as the SDK sends it). 204; 412 `DeviceMessageLockLost` for a lock token that
/// locks nothing of this device (unknown, settled already, timed out).
pub async fn complete_or_reject(
    State(state): State<RestState>,
    headers: HeaderMap,
    Path((id, lock_token)): Path<(String, String)>,
    RawQuery(query): RawQuery,
) -> Result<StatusCode, RestError> {
    let settlement = if asks_reject(query.as_deref()) {
        Settlement::Reject
    } else {
        Settlement::Complete
    };
    settle(&state, &headers, &id, &lock_token, settlement).await
}

/// `POST /devices/{id}/messages/devicebound/{lockToken}/abandon`: the message goes back to the queue for
/// another delivery. 204, or 412 as for complete.
pub async fn abandon(
    State(state): State<RestState>,
    headers: HeaderMap,
    Path((id, lock_token)): Path<(String, String)>,
) -> Result<StatusCode, RestError> {
    settle(&state, &headers, &id, &lock_token, Settlement::Abandon).await
}

/// `DELETE /devices/{id}/commands`: empties the device's queue; 200 with how many messages it held, as
/// `PurgeMessageQueueResult` (`azure-iothub`'s `pl` mappers; Python's
/// `purge_cloud_to_device_message_queue`). 404 `DeviceNotFound` for an unknown device.
pub async fn purge(
    State(state): State<RestState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<JsonResponse, RestError> {
    state.auth.authorize(&headers, Permission::ServiceConnect)?;
    let device_id = device_id(&id)?;
    let purged = state.hub.purge_cloud_to_device(device_id.clone()).await?;
    Ok(ok(json!({
        "deviceId": device_id.as_str(),
        "moduleId": null,
        "totalMessagesPurged": purged,
    })))
}

async fn settle(
    state: &RestState,
    headers: &HeaderMap,
    id: &str,
    lock_token: &str,
    settlement: Settlement,
) -> Result<StatusCode, RestError> {
    let device_id = device_id(id)?;
    state.auth.authorize_device(headers, &device_id, &state.hub).await?;
    state
        .hub
        .settle_cloud_to_device(device_id, unquote(lock_token).to_owned(), settlement)
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

/// The lock token as the path gave it (already percent-decoded), without the quotes of an `ETag` a client
/// may have copied whole.
fn unquote(lock_token: &str) -> &str {
    let trimmed = lock_token.trim();
    trimmed
        .strip_prefix('"')
        .and_then(|rest| rest.strip_suffix('"'))
        .unwrap_or(trimmed)
}

/// Whether the query has a `reject` parameter: present (valueless, as Node appends `&reject`, or any value
/// but `false`) means reject.
fn asks_reject(query: Option<&str>) -> bool {
    query.unwrap_or_default().split('&').any(|pair| {
        let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
        name.eq_ignore_ascii_case("reject") && !value.eq_ignore_ascii_case("false")
    })
}

fn ack_text(ack: Ack) -> &'static str {
    match ack {
        Ack::None => "none",
        Ack::Positive => "positive",
        Ack::Negative => "negative",
        Ack::Full => "full",
    }
}

/// A received message as IoT Hub's HTTPS device API answers it: 200, the body as sent, the lock token
/// quoted in `ETag`, the system properties in `iothub-*` headers and each application property in an
/// `iothub-app-<name>` header.
fn message_response(device_id: &str, queued: QueuedMessage) -> Response {
    let headers = message_headers(device_id, &queued);
    let mut response = Response::new(Body::from(queued.message.body));
    *response.status_mut() = StatusCode::OK;
    *response.headers_mut() = headers;
    response
}

fn message_headers(device_id: &str, queued: &QueuedMessage) -> HeaderMap {
    let message = &queued.message;
    let mut headers = HeaderMap::new();
    let mut put = |name: HeaderName, value: &str| match HeaderValue::from_bytes(value.as_bytes()) {
        Ok(value) => {
            headers.append(name, value);
        }
        // Control characters cannot travel in a header; the message goes without that one.
        Err(_) => tracing::warn!(header = %name, "a cloud-to-device property is not a valid header value: left out"),
    };
    let lock_token = queued.lock.as_ref().map_or("", |lock| lock.token.as_str());
    put(header::ETAG, &format!("\"{lock_token}\""));
    let system = [
        ("iothub-messageid", message.message_id.as_deref()),
        ("iothub-correlationid", message.correlation_id.as_deref()),
        ("iothub-userid", message.user_id.as_deref()),
    ];
    for (name, value) in system {
        if let Some(value) = value {
            put(HeaderName::from_static(name), value);
        }
    }
    put(
        HeaderName::from_static("iothub-to"),
        &format!("/devices/{device_id}/messages/devicebound"),
    );
    put(
        HeaderName::from_static("iothub-sequencenumber"),
        &queued.sequence_number.to_string(),
    );
    put(
        HeaderName::from_static("iothub-enqueuedtime"),
        &queued.enqueued_time.to_iso8601(),
    );
    put(HeaderName::from_static("iothub-expiry"), &queued.expiry.to_iso8601());
    put(
        HeaderName::from_static("iothub-deliverycount"),
        &queued.delivery_count.to_string(),
    );
    put(HeaderName::from_static("iothub-ack"), ack_text(message.ack));
    // The content type also as HTTP names it; the encoding only under the device API's name: an HTTP
    // `Content-Encoding` of `utf-8` would tell clients to decode a compression that is not there.
    if let Some(content_type) = &message.content_type {
        put(header::CONTENT_TYPE, content_type);
        put(HeaderName::from_static("iothub-contenttype"), content_type);
    }
    if let Some(content_encoding) = &message.content_encoding {
        put(HeaderName::from_static("iothub-contentencoding"), content_encoding);
    }
    for (name, value) in &message.properties {
        match HeaderName::from_bytes(format!("{APP_PROPERTY_PREFIX}{name}").as_bytes()) {
            Ok(header_name) => put(header_name, value),
            Err(_) => {
                tracing::warn!(property = %name, "a cloud-to-device property name is not a valid header name: left out")
            }
        }
    }
    headers
}

#[cfg(test)]
mod tests {
    use super::*;
    use twinhub_core::c2d::{Lock, OutgoingMessage};
    use twinhub_core::Timestamp;

    fn queued(message: OutgoingMessage) -> QueuedMessage {
        QueuedMessage {
            sequence_number: 7,
            enqueued_time: Timestamp(1_700_000_000_000_000_000),
            expiry: Timestamp(1_700_003_600_000_000_000),
            delivery_count: 2,
            lock: Some(Lock {
                token: "0b9c1f4e-5d5a-4c8e-9a43-8f2f0c6d7e11".into(),
                until: Timestamp(1_700_000_060_000_000_000),
            }),
            message,
        }
    }

    fn text<'h>(headers: &'h HeaderMap, name: &str) -> Option<&'h str> {
        headers.get(name).map(|value| value.to_str().unwrap())
    }

    #[test]
    fn a_message_travels_in_headers_as_the_node_sdk_reads_it() {
        let message = OutgoingMessage {
            message_id: Some("m1".into()),
            correlation_id: Some("c1".into()),
            user_id: Some("backend".into()),
            content_type: Some("application/json".into()),
            content_encoding: Some("utf-8".into()),
            ack: Ack::Full,
            properties: vec![("Color".into(), "blue".into()), ("size".into(), "1".into())],
            body: b"{}".to_vec(),
            ..OutgoingMessage::default()
        };
        let headers = message_headers("dev1", &queued(message));
        // Node cuts the first and last character of the ETag: the quotes.
        assert_eq!(text(&headers, "etag"), Some("\"0b9c1f4e-5d5a-4c8e-9a43-8f2f0c6d7e11\""));
        for (name, value) in [
            ("iothub-messageid", "m1"),
            ("iothub-correlationid", "c1"),
            ("iothub-userid", "backend"),
            ("iothub-to", "/devices/dev1/messages/devicebound"),
            ("iothub-sequencenumber", "7"),
            ("iothub-enqueuedtime", "2023-11-14T22:13:20.0000000Z"),
            ("iothub-expiry", "2023-11-14T23:13:20.0000000Z"),
            ("iothub-deliverycount", "2"),
            ("iothub-ack", "full"),
            ("content-type", "application/json"),
            ("iothub-contentencoding", "utf-8"),
            ("iothub-contenttype", "application/json"),
            ("iothub-app-color", "blue"),
            ("iothub-app-size", "1"),
        ] {
            assert_eq!(text(&headers, name), Some(value), "{name}");
        }
    }

    #[test]
    fn unset_properties_send_no_header_and_bad_ones_are_left_out() {
        let message = OutgoingMessage {
            properties: vec![("bad name".into(), "v".into()), ("k".into(), "line\nbreak".into())],
            ..OutgoingMessage::default()
        };
        let headers = message_headers("dev1", &queued(message));
        for name in [
            "iothub-messageid",
            "iothub-correlationid",
            "iothub-userid",
            "content-type",
            "content-encoding",
            "iothub-app-k",
        ] {
            assert!(headers.get(name).is_none(), "{name}");
        }
        assert_eq!(text(&headers, "iothub-ack"), Some("none"));
        assert!(!headers
            .keys()
            .any(|name| name.as_str().starts_with(APP_PROPERTY_PREFIX)));
    }

    #[test]
    fn lock_tokens_lose_their_quotes_and_reject_is_a_valueless_parameter() {
        assert_eq!(unquote("\"abc\""), "abc");
        assert_eq!(unquote("abc"), "abc");
        assert_eq!(unquote("\"abc"), "\"abc");
        assert!(asks_reject(Some("api-version=2021-04-12&reject")));
        assert!(asks_reject(Some("reject&api-version=2021-04-12")));
        assert!(asks_reject(Some("api-version=2021-04-12&reject=true")));
        assert!(!asks_reject(Some("api-version=2021-04-12&reject=false")));
        assert!(!asks_reject(Some("api-version=2021-04-12")));
        assert!(!asks_reject(Some("rejected")));
        assert!(!asks_reject(None));
    }

    /// A hub on a store in a fresh directory, removed when dropped.
    struct Scratch(std::path::PathBuf);

    impl Drop for Scratch {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    async fn call(router: &mut axum::Router, method: &str, uri: &str, token: &str) -> (StatusCode, HeaderMap, Vec<u8>) {
        use tower::Service;
        let request = axum::http::Request::builder()
            .method(method)
            .uri(uri)
            .header("authorization", token)
            .body(Body::empty())
            .unwrap();
        std::future::poll_fn(|cx| <axum::Router as Service<axum::http::Request<Body>>>::poll_ready(router, cx))
            .await
            .unwrap();
        let response = router.call(request).await.unwrap();
        let (parts, body) = response.into_parts();
        let body = axum::body::to_bytes(body, usize::MAX).await.unwrap().to_vec();
        (parts.status, parts.headers, body)
    }

    /// The round trip the integration tests cannot make before a transport sends C2D: the hub queues two
    /// messages, the device receives them over this API, completes one, rejects the other, and a lock
    /// token used twice is lost; a purge counts what it empties.
    #[tokio::test]
    async fn a_device_receives_and_settles_over_https_and_the_service_purges() {
        use twinhub_core::policy::SharedAccessPolicy;
        let dir = std::env::temp_dir().join(format!(
            "twinhub-c2d-http-{}-{}",
            std::process::id(),
            Timestamp::now().0
        ));
        let _scratch = Scratch(dir.clone());
        let store = std::sync::Arc::new(twinhub_store::EmbeddedStore::open(&dir).unwrap());
        let hub = twinhub_hub::Hub::start(store, twinhub_hub::HubConfig::default())
            .await
            .unwrap();
        let draft = twinhub_core::json::DeviceDraft::from_json(&json!({"deviceId": "dev1"}), "deviceId").unwrap();
        let record = hub
            .put_device(draft, twinhub_core::etag::IfMatch::Absent)
            .await
            .unwrap();
        let key = record.identity.symmetric_keys.as_ref().unwrap().primary.clone();
        let host = "hub.example";
        let service_key = "c2VydmljZS1rZXktZm9yLXRlc3RzLW9ubHktMDEyMzQ1Njc=";
        let policies = vec![SharedAccessPolicy {
            name: "service".into(),
            primary_key: service_key.into(),
            secondary_key: service_key.into(),
            permissions: vec![Permission::ServiceConnect],
        }];
        let mut router = super::super::router(super::super::RestState::new(
            std::sync::Arc::clone(&hub),
            host.into(),
            policies,
        ));
        let expiry = Timestamp::now().unix_seconds() as u64 + 600;
        let device = twinhub_core::sas::sign(&format!("{host}/devices/dev1"), &key, None, expiry).unwrap();
        let service = twinhub_core::sas::sign(host, service_key, Some("service"), expiry).unwrap();
        let device_id = twinhub_core::DeviceId::new("dev1").unwrap();
        for (id, body) in [("m1", "first"), ("m2", "second")] {
            let message = OutgoingMessage {
                message_id: Some(id.into()),
                ack: Ack::Positive,
                properties: vec![("k".into(), "v".into())],
                body: body.as_bytes().to_vec(),
                ..OutgoingMessage::default()
            };
            hub.send_cloud_to_device(device_id.clone(), message).await.unwrap();
        }
        let receive = "/devices/dev1/messages/devicebound?api-version=2021-04-12";

        let (status, headers, body) = call(&mut router, "GET", receive, &device).await;
        assert_eq!((status, body.as_slice()), (StatusCode::OK, &b"first"[..]));
        let etag = text(&headers, "etag").unwrap().to_owned();
        let first_lock = etag.trim_matches('"').to_owned();
        assert_eq!((first_lock.len(), etag.len()), (36, 38), "{etag}");
        assert_eq!(text(&headers, "iothub-messageid"), Some("m1"));
        assert_eq!(text(&headers, "iothub-app-k"), Some("v"));
        assert_eq!(text(&headers, "iothub-ack"), Some("positive"));
        assert_eq!(text(&headers, "iothub-deliverycount"), Some("1"));
        let (status, headers, body) = call(&mut router, "GET", receive, &device).await;
        assert_eq!(
            (status, body.as_slice()),
            (StatusCode::OK, &b"second"[..]),
            "the first is locked"
        );
        let second_lock = text(&headers, "etag").unwrap().trim_matches('"').to_owned();
        let (status, _, body) = call(&mut router, "GET", receive, &device).await;
        assert_eq!((status, body.len()), (StatusCode::NO_CONTENT, 0), "both are locked");

        // Abandon gives the first back (delivered again), then it is completed, the lock token quoted.
        let abandon = format!("/devices/dev1/messages/devicebound/{first_lock}/abandon?api-version=2021-04-12");
        assert_eq!(
            call(&mut router, "POST", &abandon, &device).await.0,
            StatusCode::NO_CONTENT
        );
        let (status, headers, _) = call(&mut router, "GET", receive, &device).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(text(&headers, "iothub-deliverycount"), Some("2"));
        let again = text(&headers, "etag").unwrap().trim_matches('"').to_owned();
        assert_ne!(again, first_lock, "a new delivery, a new lock");
        let complete = format!("/devices/dev1/messages/devicebound/%22{again}%22?api-version=2021-04-12");
        assert_eq!(
            call(&mut router, "DELETE", &complete, &device).await.0,
            StatusCode::NO_CONTENT
        );
        let (status, headers, _) = call(&mut router, "DELETE", &complete, &device).await;
        assert_eq!(status, StatusCode::PRECONDITION_FAILED, "settled already");
        assert_eq!(text(&headers, "iothub-errorcode"), Some("DeviceMessageLockLost"));
        let (status, _, _) = call(&mut router, "POST", &abandon, &device).await;
        assert_eq!(
            status,
            StatusCode::PRECONDITION_FAILED,
            "the old lock of a redelivered message"
        );

        let reject = format!("/devices/dev1/messages/devicebound/{second_lock}?api-version=2021-04-12&reject");
        assert_eq!(
            call(&mut router, "DELETE", &reject, &device).await.0,
            StatusCode::NO_CONTENT
        );
        assert_eq!(
            call(&mut router, "GET", receive, &device).await.0,
            StatusCode::NO_CONTENT
        );
        // Completion asked positive feedback; rejection gives none to a `positive` ack.
        assert_eq!(hub.feedback().len(), 1);

        for n in 0..3 {
            let message = OutgoingMessage {
                body: vec![n],
                ..OutgoingMessage::default()
            };
            hub.send_cloud_to_device(device_id.clone(), message).await.unwrap();
        }
        call(&mut router, "GET", receive, &device).await;
        let (status, headers, body) = call(
            &mut router,
            "DELETE",
            "/devices/dev1/commands?api-version=2021-04-12",
            &service,
        )
        .await;
        assert_eq!(status, StatusCode::OK);
        assert!(text(&headers, "content-type").unwrap().starts_with("application/json"));
        let body: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(
            body,
            json!({"deviceId": "dev1", "moduleId": null, "totalMessagesPurged": 3}),
            "a locked one too"
        );
        assert_eq!(
            call(&mut router, "GET", receive, &device).await.0,
            StatusCode::NO_CONTENT
        );
        // The device's token is not the service's.
        let (status, _, _) = call(&mut router, "DELETE", "/devices/dev1/commands", &device).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
    }
}
