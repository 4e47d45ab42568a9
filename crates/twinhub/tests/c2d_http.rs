//! Cloud-to-device messages over HTTPS against a real hub process: the device side (`GET
//! /devices/{id}/messages/devicebound`, settling by lock token) as the Node `azure-iot-device-http` transport
//! sends it, and the service's purge (`DELETE /devices/{id}/commands`), checked on the wire.
//!
//! Only the back end's AMQP link can queue a message, so this file covers what HTTP alone shows: an empty
//! queue, lock tokens that lock nothing, purge, and auth. The full round trip (send over AMQP, receive and
//! settle over HTTPS, feedback) is covered by the AMQP and SDK tests.

mod rest_client;
mod support;

use reqwest::Method;
use rest_client::{now, Reply, Service};
use support::TestHub;

/// A lock token as the hub makes them (a random UUID) that locks nothing.
const UNKNOWN_LOCK: &str = "3f0c2a9e-6b1d-4c57-9e8a-2d4b6f8a1c03";

fn device_token(host: &str, id: &str, key: &str) -> String {
    twinhub_core::sas::sign(&format!("{host}/devices/{id}"), key, None, now() + 600).unwrap()
}

/// A device request as the HTTPS transport sends it: the device's token in `Authorization`, the lock
/// token also in `If-Match` for settlements. `path_and_query` goes after the host as is, so tests control
/// the query (`api-version=...&reject`). Returns the reply and the body's raw bytes.
async fn device_call(
    api: &Service,
    host: &str,
    method: Method,
    path_and_query: &str,
    token: Option<&str>,
    if_match: Option<&str>,
) -> (Reply, Vec<u8>) {
    let mut request = api.http.request(method, format!("https://{host}{path_and_query}"));
    if let Some(token) = token {
        request = request.header("Authorization", token);
    }
    if let Some(lock_token) = if_match {
        request = request.header("If-Match", lock_token);
    }
    let response = request.send().await.expect("request sent");
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    let raw = response.bytes().await.unwrap().to_vec();
    let body = if raw.is_empty() {
        serde_json::Value::Null
    } else {
        serde_json::from_slice(&raw).unwrap_or_else(|_| String::from_utf8_lossy(&raw).into_owned().into())
    };
    (Reply { status, headers, body }, raw)
}

#[tokio::test]
async fn a_device_polls_an_empty_queue_and_cannot_settle_what_it_was_not_given() {
    // Scenario:
    // - GET devicebound on an empty queue → 204, no body, no lock token
    // - complete, reject (`&reject`, valueless) and abandon with a lock token that locks nothing → 412
    //   DeviceMessageLockLost, in IoT Hub's error format; quoted and percent-encoded tokens too
    // - another device's token, or none, or an unregistered device → 401 on every device route
    let hub = TestHub::start();
    let host = hub.host();
    let api = Service::new(&hub.owner_connection_string(), &hub.ca_path());
    let key = api.register_device("dev1").await;
    let other_key = api.register_device("dev2").await;
    let token = device_token(&host, "dev1", &key);
    let version = "api-version=2021-04-12";
    let receive_path = format!("/devices/dev1/messages/devicebound?{version}");

    let (empty, raw) = device_call(&api, &host, Method::GET, &receive_path, Some(&token), None).await;
    assert_eq!(empty.status, 204, "{}", empty.body);
    assert!(raw.is_empty(), "a 204 has no body");
    assert!(empty.headers.get("etag").is_none());
    // Without api-version as well: the query is not looked at.
    let (bare, _) = device_call(
        &api,
        &host,
        Method::GET,
        "/devices/dev1/messages/devicebound",
        Some(&token),
        None,
    )
    .await;
    assert_eq!(bare.status, 204, "{}", bare.body);

    let settlements = [
        (
            "complete",
            Method::DELETE,
            format!("/devices/dev1/messages/devicebound/{UNKNOWN_LOCK}?{version}"),
        ),
        (
            "reject",
            Method::DELETE,
            format!("/devices/dev1/messages/devicebound/{UNKNOWN_LOCK}?{version}&reject"),
        ),
        (
            "abandon",
            Method::POST,
            format!("/devices/dev1/messages/devicebound/{UNKNOWN_LOCK}/abandon?{version}"),
        ),
        (
            "complete, the lock token quoted and percent-encoded",
            Method::DELETE,
            format!("/devices/dev1/messages/devicebound/%22{UNKNOWN_LOCK}%22?{version}"),
        ),
        (
            "abandon, the lock token not a UUID",
            Method::POST,
            format!("/devices/dev1/messages/devicebound/not-a-lock/abandon?{version}"),
        ),
    ];
    for (what, method, path) in &settlements {
        let (reply, _) = device_call(&api, &host, method.clone(), path, Some(&token), Some(UNKNOWN_LOCK)).await;
        assert_eq!(reply.status, 412, "{what}: {}", reply.body);
        assert_eq!(reply.error_code(), "DeviceMessageLockLost", "{what}");
        assert!(
            reply.message().starts_with("ErrorCode:DeviceMessageLockLost;"),
            "{what}"
        );
    }

    // Another device's token, or no token, is refused before anything is looked at.
    let foreign = device_token(&host, "dev2", &other_key);
    let mut routes = vec![("receive", Method::GET, receive_path.clone())];
    routes.extend(settlements.iter().take(3).cloned());
    for (what, method, path) in &routes {
        for (whose, token) in [("dev2's token", Some(foreign.as_str())), ("no token", None)] {
            let (reply, _) = device_call(&api, &host, method.clone(), path, token, None).await;
            assert_eq!(reply.status, 401, "{what} with {whose}: {}", reply.body);
            assert_eq!(reply.error_code(), "IotHubUnauthorizedAccess", "{what} with {whose}");
        }
    }
    // dev1's token does not open dev2's queue either.
    let (reply, _) = device_call(
        &api,
        &host,
        Method::GET,
        &format!("/devices/dev2/messages/devicebound?{version}"),
        Some(&token),
        None,
    )
    .await;
    assert_eq!(reply.status, 401, "{}", reply.body);

    // A device that is not registered cannot authenticate, not even with a DeviceConnect policy's token
    // (device_auth, as for telemetry): 401 before the queue is looked at.
    let device_policy = Service::new(&hub.connection_string("device"), &hub.ca_path());
    let policy_token = twinhub_core::sas::sign(
        &format!("{host}/devices/ghost"),
        &device_policy.connection.key,
        Some(&device_policy.connection.key_name),
        now() + 600,
    )
    .unwrap();
    let (ghost, _) = device_call(
        &api,
        &host,
        Method::GET,
        &format!("/devices/ghost/messages/devicebound?{version}"),
        Some(&policy_token),
        None,
    )
    .await;
    assert_eq!(ghost.status, 401, "{}", ghost.body);
    assert_eq!(ghost.error_code(), "IotHubUnauthorizedAccess");
}

#[tokio::test]
async fn the_service_purges_a_device_queue() {
    // Scenario:
    // - purge of an empty queue → 200 PurgeMessageQueueResult, 0 purged (owner and `service` policies)
    // - unknown device → 404 DeviceNotFound; a policy without ServiceConnect, or no token → 401
    // - the queue still answers the device after a purge (204)
    let hub = TestHub::start();
    let host = hub.host();
    let api = Service::new(&hub.owner_connection_string(), &hub.ca_path());
    let key = api.register_device("dev1").await;

    let purged = api.call(Method::DELETE, "/devices/dev1/commands", None, None).await;
    assert_eq!(purged.status, 200, "{}", purged.body);
    assert!(purged.headers["content-type"]
        .to_str()
        .unwrap()
        .starts_with("application/json"));
    assert_eq!(
        purged.body,
        serde_json::json!({"deviceId": "dev1", "moduleId": null, "totalMessagesPurged": 0})
    );

    let service = Service::new(&hub.connection_string("service"), &hub.ca_path());
    let purged = service.call(Method::DELETE, "/devices/dev1/commands", None, None).await;
    assert_eq!(purged.status, 200, "ServiceConnect is enough: {}", purged.body);
    assert_eq!(purged.body["totalMessagesPurged"], 0);

    let unknown = api.call(Method::DELETE, "/devices/ghost/commands", None, None).await;
    assert_eq!(unknown.status, 404, "{}", unknown.body);
    assert_eq!(unknown.error_code(), "DeviceNotFound");

    let registry_read = Service::new(&hub.connection_string("registryRead"), &hub.ca_path());
    let refused = registry_read
        .call(Method::DELETE, "/devices/dev1/commands", None, None)
        .await;
    assert_eq!(refused.status, 401, "{}", refused.body);
    assert_eq!(refused.error_code(), "IotHubUnauthorizedAccess");
    let anonymous = api
        .call_with(Method::DELETE, "/devices/dev1/commands", None, None, None)
        .await;
    assert_eq!(anonymous.status, 401, "{}", anonymous.body);
    // A device's own token is not a service token.
    let device = api
        .call_with(
            Method::DELETE,
            "/devices/dev1/commands",
            None,
            None,
            Some(device_token(&host, "dev1", &key)),
        )
        .await;
    assert_eq!(device.status, 401, "{}", device.body);

    let (after, _) = device_call(
        &api,
        &host,
        Method::GET,
        "/devices/dev1/messages/devicebound?api-version=2021-04-12",
        Some(&device_token(&host, "dev1", &key)),
        None,
    )
    .await;
    assert_eq!(after.status, 204, "{}", after.body);
}

/// twinhub's own HTTPS send (`POST /twinhub/devices/{id}/messages`, what the web console uses): the
/// message joins the device's queue; bad requests, unknown devices and a full queue are refused in IoT
/// Hub's terms.
#[tokio::test]
async fn a_back_end_sends_over_https_and_is_refused_in_iot_hubs_terms() {
    let hub = TestHub::start();
    let api = Service::new(&hub.owner_connection_string(), &hub.ca_path());
    api.register_device("dev1").await;
    let send = |body: serde_json::Value, device: &'static str| {
        let api = &api;
        async move {
            api.call(
                Method::POST,
                &format!("/twinhub/devices/{device}/messages"),
                Some(body),
                None,
            )
            .await
        }
    };
    let sent = send(
        serde_json::json!({"body": "hello", "properties": {"kind": "greeting"}}),
        "dev1",
    )
    .await;
    assert_eq!(sent.status, 204, "{}", sent.body);
    let twin = api.call(Method::GET, "/twins/dev1", None, None).await;
    assert_eq!(twin.body["cloudToDeviceMessageCount"], 1);
    for (body, device, status) in [
        (serde_json::json!({"properties": {}}), "dev1", 400),
        (serde_json::json!({"body": "x", "ack": "sometimes"}), "dev1", 400),
        (serde_json::json!({"body": "x", "properties": {"n": 1}}), "dev1", 400),
        (serde_json::json!({"body": "x"}), "nobody", 404),
    ] {
        assert_eq!(send(body.clone(), device).await.status, status, "{body}");
    }
    for _ in 1..50 {
        assert_eq!(send(serde_json::json!({"body": "more"}), "dev1").await.status, 204);
    }
    let full = send(serde_json::json!({"body": "one too many"}), "dev1").await;
    assert_eq!(full.status, 403);
    assert_eq!(full.headers["iothub-errorcode"], "DeviceMaximumQueueDepthExceeded");
}
