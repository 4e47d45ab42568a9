//! Custom routing endpoints against real peers: a NATS JetStream subject (the NATS server the development
//! and CI machines run, `TWINHUB_TEST_NATS_URL`, default `nats://127.0.0.1:4222`), read back with a NATS
//! client; and a webhook (a small HTTP server in the test) that fails for a while and then recovers, and
//! must then receive every message. Each message arrives with its properties and the enrichments of its
//! endpoint. A hub killed with `kill -9` while a device streams through a route delivers, after its
//! restart, every message it acknowledged (at least once).

mod event_hubs_client;
mod mqtt_client;
mod rest_client;
mod support;

use mqtt_client::{Credentials, MqttClient};
use reqwest::Method;
use rest_client::Service;
use rmqtt_codec::types::QoS;
use rmqtt_codec::v3::{ConnectAckReason, Packet};
use serde_json::json;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use support::webhook::{Received, Webhook};
use support::TestHub;

fn nats_url() -> String {
    std::env::var("TWINHUB_TEST_NATS_URL").unwrap_or_else(|_| "nats://127.0.0.1:4222".into())
}

fn routes_file(dir: &std::path::Path, text: &str) -> String {
    let path = dir.join("routes.toml");
    std::fs::write(&path, text).unwrap();
    path.display().to_string()
}

/// Publishes at QoS 1 and waits for the PUBACK: the hub took the message.
async fn send(device: &mut MqttClient, id: &str, bag: &str, body: &[u8]) {
    let topic = format!("devices/{id}/messages/events/{bag}");
    let packet_id = device.publish(&topic, body, QoS::AtLeastOnce).await.unwrap();
    match device.receive().await {
        Some(Packet::PublishAck { packet_id: acked }) => assert_eq!(acked, packet_id),
        other => panic!("expected PUBACK, got {other:?}"),
    }
}

async fn device(hub: &TestHub, api: &Service, id: &str) -> MqttClient {
    let key = api.register_device(id).await;
    let credentials = Credentials::device(&hub.host(), id, &key, 3600);
    let (client, code, _) = MqttClient::connect(hub.address(), &hub.ca_path(), &credentials).await;
    assert_eq!(code, ConnectAckReason::ConnectionAccepted);
    client
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_webhook_that_fails_for_a_while_then_receives_every_message_once_with_its_enrichments() {
    let webhook = Webhook::start(6).await;
    let dir = tempfile::tempdir().unwrap();
    let routes = routes_file(
        dir.path(),
        &format!(
            r#"
fallback = true
[[endpoints]]
name = "hook"
kind = "webhook"
url = "{url}"

[[routes]]
name = "critical"
source = "DeviceMessages"
condition = "level = 'critical'"
endpoint = "hook"

[[routes]]
name = "twins"
source = "TwinChangeEvents"
endpoint = "hook"

[[enrichments]]
key = "plant"
value = "$twin.tags.plant"
endpoints = ["hook"]

[[enrichments]]
key = "hub"
value = "$iothubname"
endpoints = ["hook"]
"#,
            url = webhook.url
        ),
    );
    let metrics_at = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .expect("a free port")
        .to_string();
    let hub = TestHub::start_with(&["--routes", &routes, "--metrics-bind", &metrics_at]);
    let api = Service::new(&hub.owner_connection_string(), &hub.ca_path());
    let mut sensor = device(&hub, &api, "sensor").await;
    let reply = api
        .call(
            Method::PATCH,
            "/twins/sensor",
            Some(json!({"tags": {"plant": "north"}})),
            Some("*"),
        )
        .await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    for index in 0..5 {
        let level = if index % 2 == 0 { "critical" } else { "normal" };
        send(
            &mut sensor,
            "sensor",
            &format!("level={level}&n={index}"),
            format!("{{\"n\":{index}}}").as_bytes(),
        )
        .await;
    }
    // The twin change and the three critical messages; the first six attempts failed.
    let taken = webhook.wait_for(4, Duration::from_secs(30)).await;
    assert!(webhook.requests.load(Ordering::SeqCst) >= 10, "the hub retried");
    let mut seen = std::collections::BTreeSet::new();
    let firsts: Vec<&Received> = taken
        .iter()
        .filter(|received| seen.insert(received.delivery_id.clone()))
        .collect();
    assert_eq!(firsts.len(), 4, "{taken:?}");
    assert_eq!(
        firsts[0].headers.get("iothub-message-source").map(String::as_str),
        Some("twinChangeEvents")
    );
    assert_eq!(
        firsts[0].headers.get("iothub-app-optype").map(String::as_str),
        Some("updateTwin")
    );
    let telemetry: Vec<&&Received> = firsts[1..].iter().collect();
    let numbers: Vec<String> = telemetry
        .iter()
        .map(|received| received.headers.get("iothub-app-n").cloned().unwrap_or_default())
        .collect();
    assert_eq!(numbers, ["0", "2", "4"], "the critical messages, in order");
    for received in &telemetry {
        assert_eq!(received.device, "sensor");
        assert_eq!(
            received.headers.get("iothub-message-source").map(String::as_str),
            Some("Telemetry")
        );
        assert_eq!(
            received.headers.get("iothub-app-level").map(String::as_str),
            Some("critical")
        );
        assert_eq!(
            received.headers.get("iothub-app-plant").map(String::as_str),
            Some("north"),
            "enriched from the twin"
        );
        assert_eq!(
            received.headers.get("iothub-app-hub").map(String::as_str),
            Some(hub.host().split('.').next().unwrap())
        );
    }
    assert_eq!(telemetry[0].body.as_ref(), b"{\"n\":0}");
    // Counted where operators look: four messages delivered, none dropped.
    let metrics = reqwest::get(format!("http://{metrics_at}/metrics"))
        .await
        .expect("a scrape")
        .text()
        .await
        .expect("the metrics");
    assert!(
        metrics.contains(r#"twinhub_endpoint_delivered_messages_total{endpoint="hook"} 4"#)
            && metrics.contains(r#"twinhub_endpoint_dropped_messages_total{endpoint="hook"} 0"#),
        "{metrics}"
    );
    drop(sensor);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_while_routing_loses_no_message_acknowledged_to_a_device() {
    // A device publishes without pause, one message at a time, through a route to a webhook that takes
    // them as they come; the hub is killed with SIGKILL mid-stream, restarted, and the webhook must then
    // have every message the device got a PUBACK for (at least once).
    let webhook = Webhook::start(0).await;
    let dir = tempfile::tempdir().unwrap();
    let routes = routes_file(
        dir.path(),
        &format!(
            "[[endpoints]]\nname = \"hook\"\nkind = \"webhook\"\nurl = \"{}\"\n\n[[routes]]\nname = \"all\"\nsource = \"DeviceMessages\"\nendpoint = \"hook\"\n",
            webhook.url
        ),
    );
    let mut hub = TestHub::start_with(&["--routes", &routes]);
    let api = Service::new(&hub.owner_connection_string(), &hub.ca_path());
    let mut sensor = device(&hub, &api, "sensor").await;
    let acknowledged = Arc::new(Mutex::new(Vec::new()));
    let sender = {
        let acknowledged = Arc::clone(&acknowledged);
        tokio::spawn(async move {
            for n in 0u64.. {
                if sensor
                    .try_publish(&format!("devices/sensor/messages/events/n={n}"), b"{}")
                    .await
                    .is_none()
                {
                    return;
                }
                match sensor.receive().await {
                    Some(Packet::PublishAck { .. }) => acknowledged.lock().unwrap().push(n),
                    _ => return,
                }
            }
        })
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while acknowledged.lock().unwrap().len() < 200 {
        assert!(std::time::Instant::now() < deadline, "200 PUBACKs within 30 s");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    hub.kill9();
    sender.await.unwrap();
    let acknowledged = acknowledged.lock().unwrap().clone();
    hub.restart();
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let received: std::collections::BTreeSet<u64> = webhook
            .taken()
            .iter()
            .filter_map(|received| received.headers.get("iothub-app-n")?.parse().ok())
            .collect();
        let missing: Vec<u64> = acknowledged.iter().copied().filter(|n| !received.contains(n)).collect();
        if missing.is_empty() {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{} of {} acknowledged messages never reached the webhook, first {:?}",
            missing.len(),
            acknowledged.len(),
            &missing[..missing.len().min(5)]
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_route_to_a_nats_jetstream_subject_is_read_back_with_a_nats_client() {
    let unique = format!("{}{}", std::process::id(), rest_client::now());
    let subject = format!("twinhub.test.{unique}");
    let stream = format!("TWINHUB_TEST_{unique}");
    let dir = tempfile::tempdir().unwrap();
    let routes = routes_file(
        dir.path(),
        &format!(
            r#"
[[endpoints]]
name = "bus"
kind = "nats"
url = "{url}"
subject = "{subject}"
stream = "{stream}"

[[routes]]
name = "hot"
source = "DeviceMessages"
condition = "$body.temperature > 30"
endpoint = "bus"

[[routes]]
name = "lifecycle"
source = "DeviceLifecycleEvents"
endpoint = "bus"
"#,
            url = nats_url()
        ),
    );
    let hub = TestHub::start_with(&["--routes", &routes]);
    let api = Service::new(&hub.owner_connection_string(), &hub.ca_path());
    let mut sensor = device(&hub, &api, "sensor").await;
    let json_bag = "%24.ct=application%2Fjson&%24.ce=utf-8";
    for temperature in [20, 35, 25, 40] {
        send(
            &mut sensor,
            "sensor",
            json_bag,
            format!("{{\"temperature\":{temperature}}}").as_bytes(),
        )
        .await;
    }

    let client = async_nats::connect(nats_url()).await.expect("NATS");
    let jetstream = async_nats::jetstream::new(client);
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let stream = loop {
        match jetstream.get_stream(&stream).await {
            Ok(stream) => break stream,
            Err(error) => {
                assert!(
                    std::time::Instant::now() < deadline,
                    "the hub never made stream {stream}: {error}"
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    };
    let mut messages = Vec::new();
    while messages.len() < 3 {
        assert!(
            std::time::Instant::now() < deadline,
            "got {} of 3 messages",
            messages.len()
        );
        let sequence = messages.len() as u64 + 1;
        match stream.get_raw_message(sequence).await {
            Ok(message) => messages.push(message),
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
    let header = |message: &async_nats::jetstream::message::StreamMessage, name: &str| {
        message.headers.get(name).map(|value| value.as_str().to_owned())
    };
    assert_eq!(
        header(&messages[0], "iothub-message-source").as_deref(),
        Some("deviceLifecycleEvents")
    );
    assert_eq!(header(&messages[0], "opType").as_deref(), Some("createDeviceIdentity"));
    for (message, temperature) in messages[1..].iter().zip([35, 40]) {
        assert_eq!(
            message.payload.as_ref(),
            format!("{{\"temperature\":{temperature}}}").as_bytes()
        );
        assert_eq!(
            header(message, "iothub-connection-device-id").as_deref(),
            Some("sensor")
        );
        assert_eq!(header(message, "content-type").as_deref(), Some("application/json"));
        assert!(header(message, "Nats-Msg-Id").is_some());
    }
    assert!(stream.get_raw_message(4).await.is_err(), "only what the routes take");
    jetstream
        .delete_stream(stream.cached_info().config.name.clone())
        .await
        .ok();
    drop(sensor);
}

/// The partition a device's events go to (the hub's stable hash of its id).
fn twinhub_core_partition(device_id: &str, partitions: u16) -> u16 {
    twinhub_core::event::partition_of(&twinhub_core::DeviceId::new(device_id).unwrap(), partitions)
}

/// The `n` application property of an event read from an event hub.
fn property_n(
    message: &fe2o3_amqp::types::messaging::Message<
        fe2o3_amqp::types::messaging::Body<fe2o3_amqp::types::primitives::Value>,
    >,
) -> String {
    message
        .application_properties
        .as_ref()
        .and_then(|properties| properties.0.get("n"))
        .map(|value| format!("{value:?}"))
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_route_to_an_event_hub_inside_twinhub_is_read_like_the_built_in_endpoint() {
    let dir = tempfile::tempdir().unwrap();
    let routes = routes_file(
        dir.path(),
        r#"
fallback = true
[[endpoints]]
name = "alerts"
kind = "eventHub"
partitions = 4

[[routes]]
name = "critical"
source = "DeviceMessages"
condition = "level = 'critical'"
endpoint = "alerts"
"#,
    );
    let hub = TestHub::start_with(&["--routes", &routes]);
    let api = Service::new(&hub.owner_connection_string(), &hub.ca_path());
    let mut sensor = device(&hub, &api, "sensor").await;
    for index in 0..4 {
        let level = if index % 2 == 0 { "critical" } else { "normal" };
        send(&mut sensor, "sensor", &format!("level={level}&n={index}"), b"{}").await;
    }

    // The event hub `alerts`, with a token for it signed as Event Hubs clients sign.
    let connection = event_hubs_client::event_hubs_connection(&hub);
    let mut alerts = event_hubs_client::Consumer::open(&hub, "alerts").await;
    let token = event_hubs_client::event_hubs_token(&hub.host(), "alerts", &connection.key_name, &connection.key);
    assert_eq!(
        alerts.put_token(&token).await,
        fe2o3_amqp::types::primitives::SimpleValue::Int(200)
    );
    let (status, properties) = alerts.read("com.microsoft:eventhub", None).await;
    assert_eq!(status, 200, "{properties:?}");
    assert_eq!(
        properties["name"],
        fe2o3_amqp::types::primitives::Value::String("alerts".into())
    );
    assert_eq!(
        properties["partition_count"],
        fe2o3_amqp::types::primitives::Value::Int(4)
    );
    let taken: Vec<String> = alerts
        .read_everything()
        .await
        .into_values()
        .flatten()
        .map(|event| property_n(&event))
        .collect();
    assert_eq!(taken, ["String(\"0\")", "String(\"2\")"], "the critical messages only");

    // The built-in endpoint has what no route took (the fallback route), not the critical ones.
    let mut built_in = event_hubs_client::Consumer::service(&hub).await;
    let rest: Vec<String> = built_in
        .read_everything()
        .await
        .into_values()
        .flatten()
        .map(|event| property_n(&event))
        .collect();
    assert_eq!(rest, ["String(\"1\")", "String(\"3\")"]);

    // Its consumer groups are its own: one created for `alerts` reads it, and does not exist in the
    // built-in endpoint.
    hub.cli(&["consumer-group", "create", "dashboard", "--event-hub", "alerts"]);
    let listed = hub.cli(&["consumer-group", "list", "--event-hub", "alerts"]);
    assert_eq!(listed.lines().collect::<Vec<_>>(), ["$Default", "dashboard"]);
    assert_eq!(hub.cli(&["consumer-group", "list"]).trim(), "$Default");
    let partition = twinhub_core_partition("sensor", 4).to_string();
    let from_the_start = "amqp.annotation.x-opt-offset > '-1'";
    let mut dashboard = alerts.receiver_in("dashboard", &partition, from_the_start, None).await;
    let first = event_hubs_client::next_event(&mut dashboard).await;
    assert_eq!(property_n(&first), "String(\"0\")");
    let elsewhere = built_in
        .receiver_in("dashboard", &partition, from_the_start, None)
        .await;
    assert_eq!(
        event_hubs_client::detach_condition(elsewhere).await,
        fe2o3_amqp::types::definitions::ErrorCondition::AmqpError(fe2o3_amqp::types::definitions::AmqpError::NotFound)
    );

    // A token for an event hub that does not exist is refused.
    let mut nothing = event_hubs_client::Consumer::open(&hub, "nothing").await;
    let token = event_hubs_client::event_hubs_token(&hub.host(), "nothing", &connection.key_name, &connection.key);
    assert_eq!(
        nothing.put_token(&token).await,
        fe2o3_amqp::types::primitives::SimpleValue::Int(401)
    );
    drop(sensor);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn module_lifecycle_and_module_twin_changes_are_routed_in_their_module_form() {
    let webhook = Webhook::start(0).await;
    let dir = tempfile::tempdir().unwrap();
    let routes = routes_file(
        dir.path(),
        &format!(
            r#"
[[endpoints]]
name = "hook"
kind = "webhook"
url = "{url}"

[[routes]]
name = "twins"
source = "TwinChangeEvents"
endpoint = "hook"

[[routes]]
name = "lifecycle"
source = "DeviceLifecycleEvents"
condition = "IS_DEFINED(moduleId)"
endpoint = "hook"
"#,
            url = webhook.url
        ),
    );
    let hub = TestHub::start_with(&["--routes", &routes]);
    let api = Service::new(&hub.owner_connection_string(), &hub.ca_path());
    api.register_device("gateway").await;
    let reply = api
        .call(Method::PUT, "/devices/gateway/modules/camera", Some(json!({})), None)
        .await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    let reply = api
        .call(
            Method::PATCH,
            "/twins/gateway/modules/camera",
            Some(json!({"tags": {"zone": "a"}})),
            Some("*"),
        )
        .await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    let reply = api
        .call(Method::DELETE, "/devices/gateway/modules/camera", None, Some("*"))
        .await;
    assert_eq!(reply.status, 204, "{}", reply.body);

    let taken = webhook.wait_for(3, Duration::from_secs(20)).await;
    let header = |received: &Received, name: &str| received.headers.get(name).cloned().unwrap_or_default();
    let summary: Vec<(String, String, String)> = taken
        .iter()
        .map(|received| {
            (
                header(received, "iothub-app-optype"),
                header(received, "iothub-connection-module-id"),
                header(received, "iothub-app-moduleid"),
            )
        })
        .collect();
    let camera = || "camera".to_owned();
    assert_eq!(
        summary,
        [
            ("createDeviceIdentity".to_owned(), camera(), camera()),
            ("updateTwin".to_owned(), camera(), camera()),
            ("deleteDeviceIdentity".to_owned(), camera(), camera()),
        ],
        "only the module's events (the condition), each in the module form"
    );
    let created: serde_json::Value = serde_json::from_slice(&taken[0].body).unwrap();
    assert_eq!(
        (created["deviceId"].as_str(), created["moduleId"].as_str()),
        (Some("gateway"), Some("camera"))
    );
    let updated: serde_json::Value = serde_json::from_slice(&taken[1].body).unwrap();
    assert_eq!(updated["tags"], json!({"zone": "a"}));
}
