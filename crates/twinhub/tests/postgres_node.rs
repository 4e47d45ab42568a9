//! One hub node on PostgreSQL (`serve --store`), against a real hub process and a real PostgreSQL: what a
//! user does through the REST API, MQTT and the CLI is kept in PostgreSQL and survives `kill -9` of the
//! node: devices, twins (tags, desired, reported), persistent sessions, consumer groups and
//! cloud-to-device messages. The store's own contract is `twinhub-store/tests/contract.rs`.
//!
//! PostgreSQL: `TWINHUB_TEST_POSTGRES_URL` (default `host=127.0.0.1 user=postgres dbname=test`); each test
//! makes a database of its own and drops it. Skipped when PostgreSQL cannot be reached, unless
//! `TWINHUB_REQUIRE_POSTGRES=1` (CI sets it).

mod mqtt_client;
mod rest_client;
mod support;

use mqtt_client::{Credentials, MqttClient};
use reqwest::Method;
use rest_client::Service;
use rmqtt_codec::types::QoS;
use rmqtt_codec::v3::ConnectAckReason;
use serde_json::json;
use std::time::Duration;
use support::database::Database;
use support::TestHub;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_on_postgresql_keeps_everything_through_kill_9() {
    let Some(database) = Database::create().await else {
        return;
    };
    let store = database.store_url();
    let mut hub = TestHub::start_with(&["--store", &store]);
    let api = Service::new(&hub.owner_connection_string(), &hub.ca_path());

    // What a user writes: a device, its tags and desired properties, a reported patch from the device
    // over MQTT (on a persistent session subscribed to desired changes), a consumer group, and a
    // cloud-to-device message waiting for the device.
    let key = api.register_device("pg1").await;
    let patch = json!({"tags": {"site": "north"}, "properties": {"desired": {"interval": 5}}});
    let reply = api.call(Method::PATCH, "/twins/pg1", Some(patch), Some("*")).await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    let credentials = Credentials::device(&hub.host(), "pg1", &key, 3600);
    let (mut device, code, _) = MqttClient::connect(hub.address(), &hub.ca_path(), &credentials).await;
    assert_eq!(code, ConnectAckReason::ConnectionAccepted);
    device
        .subscribe(&[
            ("$iothub/twin/res/#", QoS::AtMostOnce),
            ("$iothub/twin/PATCH/properties/desired/#", QoS::AtLeastOnce),
        ])
        .await;
    let (status, _, _) = device
        .twin(
            "$iothub/twin/PATCH/properties/reported/?$rid=1",
            br#"{"firmware":"1.2"}"#,
        )
        .await;
    assert_eq!(status, 204);
    hub.cli(&["consumer-group", "create", "analytics"]);
    hub.cli(&["c2d", "send", "pg1", "reboot", "--message-id", "c1"]);
    drop(device);
    assert_eq!(
        database
            .count("SELECT count(*) FROM devices WHERE record IS NOT NULL")
            .await,
        1
    );
    assert_eq!(database.count("SELECT count(*) FROM sessions").await, 1);
    assert_eq!(database.count("SELECT count(*) FROM c2d_messages").await, 1);

    hub.kill9();
    // The data directory's store holds no device: everything comes back from PostgreSQL.
    hub.restart();
    let api = Service::new(&hub.owner_connection_string(), &hub.ca_path());
    let twin = api.call(Method::GET, "/twins/pg1", None, None).await;
    assert_eq!(twin.status, 200, "{}", twin.body);
    assert_eq!(twin.body["tags"]["site"], json!("north"));
    assert_eq!(twin.body["properties"]["desired"]["interval"], json!(5));
    assert_eq!(twin.body["properties"]["reported"]["firmware"], json!("1.2"));
    assert_eq!(twin.body["cloudToDeviceMessageCount"], json!(1));
    assert!(hub.cli(&["consumer-group", "list"]).contains("analytics"));

    // The device comes back on its persistent session, restored from PostgreSQL: without subscribing
    // again it gets its whole desired document (the hub cannot know what it was given), then, once it
    // subscribes to them, the message that waited for it.
    let (mut device, code, present) = MqttClient::connect(hub.address(), &hub.ca_path(), &credentials).await;
    assert_eq!((code, present), (ConnectAckReason::ConnectionAccepted, true));
    let (topic, body) = tokio::time::timeout(Duration::from_secs(10), device.next_publish())
        .await
        .expect("the desired document after the restart");
    assert_eq!(topic, "$iothub/twin/PATCH/properties/desired/?$version=2");
    assert_eq!(
        serde_json::from_slice::<serde_json::Value>(&body).unwrap()["interval"],
        json!(5)
    );
    device
        .subscribe(&[("devices/pg1/messages/devicebound/#", QoS::AtLeastOnce)])
        .await;
    let (topic, body) = tokio::time::timeout(Duration::from_secs(10), device.next_publish())
        .await
        .expect("the cloud-to-device message after the restart");
    assert!(
        topic.starts_with("devices/pg1/messages/devicebound/") && topic.contains("%24.mid=c1"),
        "{topic}"
    );
    assert_eq!(body.as_ref(), b"reboot");
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while database.count("SELECT count(*) FROM c2d_messages").await != 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "the completed message left PostgreSQL"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // A deleted device leaves a tombstone, not a record, and stays deleted after a restart.
    let deleted = api.call(Method::DELETE, "/devices/pg1", None, Some("*")).await;
    assert_eq!(deleted.status, 204, "{}", deleted.body);
    hub.restart();
    let api = Service::new(&hub.owner_connection_string(), &hub.ca_path());
    assert_eq!(api.call(Method::GET, "/devices/pg1", None, None).await.status, 404);
    assert_eq!(
        database
            .count("SELECT count(*) FROM devices WHERE record IS NULL")
            .await,
        1
    );
    drop(hub);
    database.drop_now().await;
}
