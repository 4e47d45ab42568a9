//! Module identities and module twins over the REST API, as kept by the hub: across a restart, with the
//! device they belong to, and refused in IoT Hub's terms when a request cannot be served.

mod rest_client;
mod support;

use reqwest::Method;
use rest_client::Service;
use serde_json::json;
use support::TestHub;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn modules_and_their_twins_are_kept_and_go_with_their_device() {
    let mut hub = TestHub::start();
    let api = Service::new(&hub.owner_connection_string(), &hub.ca_path());
    api.register_device("gateway").await;

    let reply = api
        .call(Method::PUT, "/devices/nowhere/modules/m1", Some(json!({})), None)
        .await;
    assert_eq!(
        (reply.status, reply.error_code()),
        (404, "DeviceNotFound".to_owned()),
        "{}",
        reply.body
    );
    let reply = api
        .call(Method::PUT, "/devices/gateway/modules/bad%20id", Some(json!({})), None)
        .await;
    assert_eq!(reply.status, 400, "{}", reply.body);
    let reply = api
        .call(
            Method::PUT,
            "/devices/gateway/modules/m1",
            Some(json!({"moduleId": "other"})),
            None,
        )
        .await;
    assert_eq!(reply.status, 400, "a body naming another module: {}", reply.body);

    let reply = api
        .call(
            Method::PUT,
            "/devices/gateway/modules/m1",
            Some(json!({"managedBy": "ops"})),
            None,
        )
        .await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    let key = reply.body["authentication"]["symmetricKey"]["primaryKey"].clone();
    let reply = api
        .call(
            Method::PATCH,
            "/twins/gateway/modules/m1",
            Some(json!({"tags": {"role": "camera"}})),
            Some("*"),
        )
        .await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert_eq!(reply.body["version"], 2);

    // Kept across a restart.
    hub.restart();
    let api = Service::new(&hub.owner_connection_string(), &hub.ca_path());
    let reply = api.call(Method::GET, "/devices/gateway/modules/m1", None, None).await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert_eq!(reply.body["authentication"]["symmetricKey"]["primaryKey"], key);
    assert_eq!(reply.body["managedBy"], "ops");
    let reply = api.call(Method::GET, "/twins/gateway/modules/m1", None, None).await;
    assert_eq!(reply.body["tags"]["role"], "camera", "{}", reply.body);

    // Deleting the device deletes its modules (a device of the same id starts without them).
    let reply = api.call(Method::DELETE, "/devices/gateway", None, Some("*")).await;
    assert_eq!(reply.status, 204, "{}", reply.body);
    api.register_device("gateway").await;
    let reply = api.call(Method::GET, "/devices/gateway/modules", None, None).await;
    assert_eq!(reply.body, json!([]));
    let reply = api.call(Method::GET, "/twins/gateway/modules/m1", None, None).await;
    assert_eq!(
        (reply.status, reply.error_code()),
        (404, "ModuleNotFound".to_owned()),
        "{}",
        reply.body
    );
    hub.restart();
    let api = Service::new(&hub.owner_connection_string(), &hub.ca_path());
    let reply = api.call(Method::GET, "/devices/gateway/modules", None, None).await;
    assert_eq!(reply.body, json!([]), "the cascade was stored");
}
