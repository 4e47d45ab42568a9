//! Devices over AMQP against a real hub process, with an AMQP client (fe2o3-amqp): CBS put-token and
//! its reply's types, the twin links, and the error cases (no token, another device's token, unknown
//! addresses, expired tokens, malformed frames), each refused in AMQP's terms without affecting others.
//! The official SDK's AMQP transports are in `sdk_device.rs`.

mod mqtt_client;
mod rest_client;
mod support;

use fe2o3_amqp::connection::ConnectionHandle;
use fe2o3_amqp::link::{DetachError, Receiver, Sender};
use fe2o3_amqp::sasl_profile::SaslProfile;
use fe2o3_amqp::session::SessionHandle;
use fe2o3_amqp::types::definitions::{AmqpError, ErrorCondition, LinkError, SenderSettleMode};
use fe2o3_amqp::types::messaging::annotations::OwnedKey;
use fe2o3_amqp::types::messaging::{
    AmqpValue, ApplicationProperties, Body, Data, Message, MessageAnnotations, MessageId, Outcome, Properties,
};
use fe2o3_amqp::types::primitives::{Binary, SimpleValue, Symbol, Value};
use fe2o3_amqp::{Connection, Session};
use reqwest::Method;
use rest_client::Service;
use serde_json::json;
use std::time::Duration;
use support::{TestHub, AMQP_PORT};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

struct Client {
    connection: ConnectionHandle<()>,
    session: SessionHandle<()>,
}

async fn open(hub: &TestHub, sasl: bool) -> Client {
    let tls = mqtt_client::tls_connect(hub.address(), AMQP_PORT, &hub.ca_path()).await;
    let host = hub.host();
    let builder = Connection::builder()
        .container_id("twinhub-test")
        .hostname(host.as_str());
    let mut connection = if sasl {
        builder
            .sasl_profile(SaslProfile::Anonymous)
            .open_with_stream(tls)
            .await
            .expect("AMQP open with SASL")
    } else {
        builder.open_with_stream(tls).await.expect("AMQP open")
    };
    let session = Session::begin(&mut connection).await.expect("session");
    Client { connection, session }
}

fn device_token(host: &str, id: &str, key: &str, lifetime: i64) -> String {
    let expiry = (rest_client::now() as i64 + lifetime) as u64;
    twinhub_core::sas::sign(&format!("{host}/devices/{id}"), key, None, expiry).unwrap()
}

/// put-token as uAMQP sends it (a ulong message-id); returns the reply's status-code and correlation-id.
async fn put_token(
    client: &mut Client,
    audience: &str,
    token: &str,
    message_id: u64,
) -> (SimpleValue, Option<MessageId>) {
    let mut sender = Sender::attach(&mut client.session, format!("cbs-sender-{message_id}"), "$cbs")
        .await
        .expect("CBS sender");
    let mut receiver = Receiver::attach(&mut client.session, format!("cbs-receiver-{message_id}"), "$cbs")
        .await
        .expect("CBS receiver");
    let request = Message::builder()
        .properties(Properties {
            message_id: Some(MessageId::Ulong(message_id)),
            ..Properties::default()
        })
        .application_properties(
            ApplicationProperties::builder()
                .insert("operation", SimpleValue::String("put-token".into()))
                .insert("type", SimpleValue::String("servicebus.windows.net:sastoken".into()))
                .insert("name", SimpleValue::String(audience.into()))
                .build(),
        )
        .body(AmqpValue(token.to_owned()))
        .build();
    sender.send(request).await.expect("put-token sent");
    let reply = tokio::time::timeout(Duration::from_secs(10), receiver.recv::<Body<Value>>())
        .await
        .expect("a CBS reply within 10 s")
        .expect("CBS reply");
    receiver.accept(&reply).await.unwrap();
    let message = reply.into_message();
    let status = message
        .application_properties
        .as_ref()
        .unwrap()
        .0
        .get("status-code")
        .cloned()
        .unwrap();
    let correlation = message.properties.and_then(|p| p.correlation_id);
    let _ = sender.close().await;
    let _ = receiver.close().await;
    (status, correlation)
}

fn twin_request(operation: &str, resource: Option<&str>, correlation: &str, body: &[u8]) -> Message<Data> {
    let mut annotations = MessageAnnotations::builder().insert(
        OwnedKey::Symbol(Symbol::from("operation")),
        Value::String(operation.into()),
    );
    if let Some(resource) = resource {
        annotations = annotations.insert(
            OwnedKey::Symbol(Symbol::from("resource")),
            Value::String(resource.into()),
        );
    }
    Message::builder()
        .properties(Properties {
            correlation_id: Some(MessageId::String(correlation.into())),
            ..Properties::default()
        })
        .message_annotations(annotations.build())
        .data(Binary::from(body.to_vec()))
        .build()
}

/// The twin links of `dev1`, as the SDKs attach them (pre-settled requests).
async fn twin_links(client: &mut Client, suffix: &str) -> (Sender, Receiver) {
    let requests = Sender::builder()
        .name(format!("twin-sender{suffix}"))
        .target("/devices/dev1/twin")
        .sender_settle_mode(SenderSettleMode::Settled)
        .attach(&mut client.session)
        .await
        .unwrap();
    let answers = Receiver::attach(
        &mut client.session,
        format!("twin-receiver{suffix}"),
        "/devices/dev1/twin",
    )
    .await
    .unwrap();
    (requests, answers)
}

fn annotation(message: &Message<Body<Value>>, key: &str) -> Option<Value> {
    message
        .message_annotations
        .as_ref()?
        .0
        .get(&OwnedKey::Symbol(Symbol::from(key)))
        .cloned()
}

fn body_json(message: &Message<Body<Value>>) -> serde_json::Value {
    match &message.body {
        Body::Data(batch) => serde_json::from_slice(&batch.iter().next().unwrap().0).unwrap(),
        other => panic!("expected a data body, got {other:?}"),
    }
}

/// dev1 on a new connection, authorized by CBS, with its twin links attached.
async fn dev1_twin(hub: &TestHub, key: &str, attempt: u64) -> (Client, Sender, Receiver) {
    let host = hub.host();
    let mut client = open(hub, false).await;
    let token = device_token(&host, "dev1", key, 600);
    put_token(&mut client, &format!("{host}/devices/dev1"), &token, attempt).await;
    let (requests, answers) = twin_links(&mut client, &format!("-{attempt}")).await;
    (client, requests, answers)
}

/// Subscribes to desired changes and checks the answer (200).
async fn subscribe_desired(requests: &mut Sender, answers: &mut Receiver, correlation: &str) {
    let request = twin_request("PUT", Some("/notifications/twin/properties/desired"), correlation, b" ");
    requests.send(request).await.unwrap();
    let answer = answers.recv::<Body<Value>>().await.unwrap().into_message();
    assert_eq!(annotation(&answer, "status"), Some(Value::Int(200)));
}

/// The back end merges `desired` into dev1's desired properties.
async fn patch_desired(api: &Service, desired: serde_json::Value) {
    let reply = api
        .call(
            Method::PATCH,
            "/twins/dev1",
            Some(json!({"properties": {"desired": desired}})),
            Some("*"),
        )
        .await;
    assert_eq!(reply.status, 200, "{}", reply.body);
}

/// Waits for the hub to detach `sender`; returns the error condition it gave.
async fn detach_condition(mut sender: Sender) -> ErrorCondition {
    match tokio::time::timeout(Duration::from_secs(5), sender.on_detach()).await {
        Ok(DetachError::RemoteDetachedWithError(error)) | Ok(DetachError::RemoteClosedWithError(error)) => {
            error.condition
        }
        other => panic!("expected a detach with an error, got {other:?}"),
    }
}

#[tokio::test]
async fn cbs_authorizes_devices_and_the_twin_links_answer_with_the_types_the_sdks_check() {
    let hub = TestHub::start();
    let api = Service::new(&hub.owner_connection_string(), &hub.ca_path());
    let host = hub.host();
    let key = api.register_device("dev1").await;
    api.register_device("dev2").await;

    // uAMQP's way in: SASL first, a ulong message-id echoed as a ulong, status-code an AMQP int.
    let mut client = open(&hub, true).await;
    let audience = format!("{host}%2Fdevices%2Fdev1");
    let (status, correlation) = put_token(&mut client, &audience, &device_token(&host, "dev1", &key, 600), 7).await;
    assert_eq!(status, SimpleValue::Int(200));
    assert_eq!(correlation, Some(MessageId::Ulong(7)));

    // The twin: GET, reported PATCH, desired subscription and a notification.
    let (mut requests, mut answers) = twin_links(&mut client, "").await;
    requests.send(twin_request("GET", None, "c1", b" ")).await.unwrap();
    let answer = answers.recv::<Body<Value>>().await.unwrap().into_message();
    assert_eq!(
        answer.properties.as_ref().unwrap().correlation_id,
        Some(MessageId::String("c1".into()))
    );
    assert_eq!(annotation(&answer, "status"), Some(Value::Int(200)));
    assert_eq!(
        body_json(&answer),
        json!({"desired": {"$version": 1}, "reported": {"$version": 1}})
    );

    requests
        .send(twin_request(
            "PATCH",
            Some("/properties/reported"),
            "c2",
            br#"{"fw":"1.0"}"#,
        ))
        .await
        .unwrap();
    let answer = answers.recv::<Body<Value>>().await.unwrap().into_message();
    assert_eq!(annotation(&answer, "status"), Some(Value::Int(204)));
    assert_eq!(annotation(&answer, "version"), Some(Value::Long(2)));
    let twin = api.call(Method::GET, "/twins/dev1", None, None).await.body;
    assert_eq!(twin["properties"]["reported"]["fw"], "1.0");
    assert_eq!(twin["connectionState"], "Connected");

    requests
        .send(twin_request("PATCH", Some("/properties/reported"), "c3", b"{nope"))
        .await
        .unwrap();
    let answer = answers.recv::<Body<Value>>().await.unwrap().into_message();
    assert_eq!(annotation(&answer, "status"), Some(Value::Int(400)));
    assert_eq!(
        body_json(&answer)["errorCode"],
        400004,
        "error bodies are JSON: Node parses them"
    );

    requests
        .send(twin_request(
            "PUT",
            Some("/notifications/twin/properties/desired"),
            "c4",
            b" ",
        ))
        .await
        .unwrap();
    let answer = answers.recv::<Body<Value>>().await.unwrap().into_message();
    assert_eq!(annotation(&answer, "status"), Some(Value::Int(200)));
    let reply = api
        .call(
            Method::PATCH,
            "/twins/dev1",
            Some(json!({"properties": {"desired": {"interval": 5}}})),
            Some("*"),
        )
        .await;
    assert_eq!(reply.status, 200);
    let notification = answers.recv::<Body<Value>>().await.unwrap().into_message();
    assert_eq!(
        notification.properties.as_ref().and_then(|p| p.correlation_id.clone()),
        None
    );
    assert_eq!(annotation(&notification, "version"), Some(Value::Long(2)));
    assert_eq!(body_json(&notification), json!({"interval": 5, "$version": 2}));

    // Another device's twin on this connection: no token covers it.
    let foreign = Sender::builder()
        .name("foreign")
        .target("/devices/dev2/twin")
        .attach(&mut client.session)
        .await
        .unwrap();
    assert_eq!(
        detach_condition(foreign).await,
        ErrorCondition::AmqpError(AmqpError::UnauthorizedAccess)
    );
    let unknown = Sender::attach(&mut client.session, "unknown", "/nowhere")
        .await
        .unwrap();
    assert_eq!(
        detach_condition(unknown).await,
        ErrorCondition::AmqpError(AmqpError::NotFound)
    );
    // The twin links still work.
    requests.send(twin_request("GET", None, "c5", b" ")).await.unwrap();
    let answer = answers.recv::<Body<Value>>().await.unwrap().into_message();
    assert_eq!(annotation(&answer, "status"), Some(Value::Int(200)));

    let _ = client.session.end().await;
    let _ = client.connection.close().await;
    let mut disconnected = false;
    for _ in 0..100 {
        if api.call(Method::GET, "/twins/dev1", None, None).await.body["connectionState"] == "Disconnected" {
            disconnected = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        disconnected,
        "the device shows Disconnected after its connection closed"
    );
}

#[tokio::test]
async fn bad_tokens_links_and_frames_are_refused_without_affecting_others() {
    let hub = TestHub::start();
    let api = Service::new(&hub.owner_connection_string(), &hub.ca_path());
    let host = hub.host();
    let key = api.register_device("dev1").await;
    let audience = format!("{host}/devices/dev1");

    // Node's way in: no SASL, a string message-id.
    let mut client = open(&hub, false).await;
    // No token yet: the twin link is detached with unauthorized-access.
    let early = Sender::attach(&mut client.session, "early", "/devices/dev1/twin")
        .await
        .unwrap();
    assert_eq!(
        detach_condition(early).await,
        ErrorCondition::AmqpError(AmqpError::UnauthorizedAccess)
    );
    for (what, token) in [
        ("expired", device_token(&host, "dev1", &key, -10)),
        ("wrong key", device_token(&host, "dev1", "bm90IHRoZSBrZXk=", 600)),
        ("not a token", "hunter2".to_owned()),
    ] {
        let (status, _) = put_token(&mut client, &audience, &token, 1).await;
        assert_eq!(status, SimpleValue::Int(401), "{what}");
    }
    let (status, _) = put_token(&mut client, "hub-only", &device_token(&host, "dev1", &key, 600), 2).await;
    assert_eq!(status, SimpleValue::Int(401), "an audience that names no device");
    // A device-policy token (skn) for a registered device is accepted.
    let policy = hub.connection_string("device");
    let policy_key = policy.split("SharedAccessKey=").nth(1).unwrap();
    let policy_token = twinhub_core::sas::sign(&host, policy_key, Some("device"), rest_client::now() + 600).unwrap();
    let (status, _) = put_token(&mut client, &audience, &policy_token, 3).await;
    assert_eq!(status, SimpleValue::Int(200));

    // Malformed input closes only that connection.
    let garbage: [&[u8]; 3] = [
        b"HELLO WORLD\r\n\r\n",
        // A valid header, then a frame whose body is an unknown performative.
        b"AMQP\x00\x01\x00\x00\x00\x00\x00\x0c\x02\x00\x00\x00\x00\x53\x99\x45",
        // A valid header, then a frame header with an illegal data offset.
        b"AMQP\x00\x01\x00\x00\x00\x00\x00\x08\x01\x00\x00\x00",
    ];
    for garbage in garbage {
        let mut raw = mqtt_client::tls_connect(hub.address(), AMQP_PORT, &hub.ca_path()).await;
        raw.write_all(garbage).await.unwrap();
        raw.flush().await.unwrap();
        let mut sink = Vec::new();
        // Within the hub's open timeout (10 s), if not at once.
        let read = tokio::time::timeout(Duration::from_secs(15), raw.read_to_end(&mut sink)).await;
        assert!(read.is_ok(), "the hub closes a connection that sent {garbage:?}");
    }
    let (status, _) = put_token(&mut client, &audience, &device_token(&host, "dev1", &key, 600), 4).await;
    assert_eq!(status, SimpleValue::Int(200), "the well-behaved connection carries on");
    let _ = client.connection.close().await;
}

#[tokio::test]
async fn a_device_that_resubscribes_after_missing_desired_changes_gets_the_whole_document() {
    let hub = TestHub::start();
    let api = Service::new(&hub.owner_connection_string(), &hub.ca_path());
    let key = api.register_device("dev1").await;

    // First visit: subscribed at desired version 1.
    let (mut client, mut requests, mut answers) = dev1_twin(&hub, &key, 1).await;
    subscribe_desired(&mut requests, &mut answers, "s1").await;
    let _ = client.connection.close().await;

    // Away: desired changes twice.
    for desired in [json!({"a": 1, "b": 2}), json!({"a": null})] {
        patch_desired(&api, desired).await;
    }

    // Back: the subscription's answer, then the whole desired document at its version.
    let (mut client, mut requests, mut answers) = dev1_twin(&hub, &key, 2).await;
    subscribe_desired(&mut requests, &mut answers, "s2").await;
    let catch_up = answers.recv::<Body<Value>>().await.unwrap().into_message();
    assert_eq!(
        catch_up.properties.as_ref().and_then(|p| p.correlation_id.clone()),
        None
    );
    assert_eq!(annotation(&catch_up, "version"), Some(Value::Long(3)));
    assert_eq!(body_json(&catch_up), json!({"b": 2, "$version": 3}));
    let _ = client.connection.close().await;
}

#[tokio::test]
async fn desired_changes_before_a_subscription_and_across_a_hub_restart_are_not_lost() {
    // Scenario: a device reads its twin, the back end changes desired, then the device subscribes: right
    // after the subscription's answer comes the whole desired document. Then the hub restarts (it kept
    // what each AMQP device was given in memory only) while the device is away and desired changes: on
    // subscribing again the device gets the whole document, because the hub assumes nothing.
    let mut hub = TestHub::start();
    let api = Service::new(&hub.owner_connection_string(), &hub.ca_path());
    let key = api.register_device("dev1").await;
    patch_desired(&api, json!({"a": 1})).await;

    let (mut client, mut requests, mut answers) = dev1_twin(&hub, &key, 1).await;
    requests.send(twin_request("GET", None, "get", b" ")).await.unwrap();
    let twin = answers.recv::<Body<Value>>().await.unwrap().into_message();
    assert_eq!(body_json(&twin)["desired"], json!({"a": 1, "$version": 2}));
    patch_desired(&api, json!({"b": 2})).await;
    subscribe_desired(&mut requests, &mut answers, "s1").await;
    let catch_up = answers.recv::<Body<Value>>().await.unwrap().into_message();
    assert_eq!(annotation(&catch_up, "version"), Some(Value::Long(3)));
    assert_eq!(body_json(&catch_up), json!({"a": 1, "b": 2, "$version": 3}));
    let _ = client.connection.close().await;

    hub.restart();
    let api = Service::new(&hub.owner_connection_string(), &hub.ca_path());
    patch_desired(&api, json!({"a": null})).await;
    let (mut client, mut requests, mut answers) = dev1_twin(&hub, &key, 2).await;
    subscribe_desired(&mut requests, &mut answers, "s2").await;
    let catch_up = tokio::time::timeout(Duration::from_secs(5), answers.recv::<Body<Value>>())
        .await
        .expect("the whole desired document after the subscription's answer")
        .unwrap()
        .into_message();
    assert_eq!(annotation(&catch_up, "version"), Some(Value::Long(4)));
    assert_eq!(body_json(&catch_up), json!({"b": 2, "$version": 4}));
    let _ = client.connection.close().await;
}

#[tokio::test]
async fn telemetry_is_accepted_once_stored_and_an_oversized_message_is_rejected() {
    // Scenario: a device sends telemetry on `/devices/dev1/messages/events`: the message is accepted
    // (once durable); a 300 KB one is rejected with amqp:link:message-size-exceeded and never stored:
    // `twinhub monitor-events` reads back the first alone.
    let hub = TestHub::start();
    let api = Service::new(&hub.owner_connection_string(), &hub.ca_path());
    let key = api.register_device("dev1").await;
    let (mut client, _requests, _answers) = dev1_twin(&hub, &key, 1).await;
    let mut telemetry = Sender::attach(&mut client.session, "telemetry", "/devices/dev1/messages/events")
        .await
        .expect("telemetry link");
    let message = |body: Vec<u8>| {
        Message::builder()
            .properties(Properties {
                message_id: Some(MessageId::String("m1".into())),
                ..Properties::default()
            })
            .data(Binary::from(body))
            .build()
    };
    let outcome = telemetry.send(message(br#"{"t":1}"#.to_vec())).await.expect("sent");
    assert!(matches!(outcome, Outcome::Accepted(_)), "{outcome:?}");
    let outcome = telemetry.send(message(vec![b'x'; 300 * 1024])).await.expect("sent");
    match outcome {
        Outcome::Rejected(rejected) => assert_eq!(
            rejected.error.map(|error| error.condition),
            Some(ErrorCondition::LinkError(LinkError::MessageSizeExceeded))
        ),
        other => panic!("expected a rejection, got {other:?}"),
    }
    let _ = client.connection.close().await;
    let printed = hub.cli(&["monitor-events", "--from-start", "--timeout", "3"]);
    let events: Vec<serde_json::Value> = printed
        .lines()
        .map(|line| serde_json::from_str(line).expect("one JSON event per line"))
        .collect();
    assert_eq!(events.len(), 1, "{printed}");
    assert_eq!(events[0]["event"]["origin"], "dev1");
    assert_eq!(events[0]["event"]["payload"], json!({"t": 1}));
    assert_eq!(events[0]["event"]["properties"]["system"]["message-id"], "m1");
}

async fn next_delivery(receiver: &mut Receiver) -> fe2o3_amqp::link::delivery::Delivery<Body<Value>> {
    tokio::time::timeout(Duration::from_secs(10), receiver.recv::<Body<Value>>())
        .await
        .expect("a message within 10 s")
        .expect("a delivery")
}

#[tokio::test]
async fn a_device_receives_cloud_to_device_messages_with_16_byte_delivery_tags_and_settles_them() {
    // Scenario: a device's receiver link `/devices/dev1/messages/devicebound` gets a message the CLI sent,
    // unsettled, with a 16-byte delivery tag (the .NET and Java SDKs make it a GUID lock token), its
    // properties and IoT Hub's annotations; it releases it (abandon) and gets it again with delivery
    // count 2, then accepts it (complete) and the queue is empty.
    let hub = TestHub::start();
    let api = Service::new(&hub.owner_connection_string(), &hub.ca_path());
    let key = api.register_device("dev1").await;
    let (mut client, _requests, _answers) = dev1_twin(&hub, &key, 1).await;
    let mut receiver = Receiver::attach(&mut client.session, "c2d", "/devices/dev1/messages/devicebound")
        .await
        .expect("cloud-to-device link");
    let data_dir = hub.data_dir().to_path_buf();
    let sent = tokio::task::spawn_blocking(move || {
        std::process::Command::new(env!("CARGO_BIN_EXE_twinhub"))
            .args(["c2d", "send", "dev1", "hello", "--message-id", "m1", "--ack", "full"])
            .args(["--property", "color=blue", "--data-dir"])
            .arg(data_dir)
            .output()
            .expect("the CLI runs")
    })
    .await
    .unwrap();
    assert!(sent.status.success(), "{}", String::from_utf8_lossy(&sent.stderr));

    let first = next_delivery(&mut receiver).await;
    assert_eq!(first.delivery_tag().len(), 16, "a GUID-sized delivery tag");
    let message = first.message();
    let properties = message.properties.as_ref().expect("properties");
    assert_eq!(properties.message_id, Some(MessageId::String("m1".into())));
    assert_eq!(properties.to.as_deref(), Some("/devices/dev1/messages/devicebound"));
    let application = &message
        .application_properties
        .as_ref()
        .expect("application properties")
        .0;
    assert_eq!(application.get("color"), Some(&SimpleValue::String("blue".into())));
    assert_eq!(application.get("iothub-ack"), Some(&SimpleValue::String("full".into())));
    assert_eq!(annotation(message, "iothub-deliverycount"), Some(Value::Int(1)));
    assert!(matches!(annotation(message, "x-opt-lock-token"), Some(Value::Uuid(_))));
    receiver.release(&first).await.expect("released");

    let again = next_delivery(&mut receiver).await;
    assert_eq!(annotation(again.message(), "iothub-deliverycount"), Some(Value::Int(2)));
    receiver.accept(&again).await.expect("accepted");
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let device = api.call(Method::GET, "/devices/dev1", None, None).await;
        if device.body["cloudToDeviceMessageCount"] == json!(0) {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "still queued: {}", device.body);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let _ = client.connection.close().await;
}

/// A module's key and the links it may attach: its own twin answers with the module twin; its device's
/// twin and another module's twin are detached with `amqp:unauthorized-access`; its token names no other
/// module (401), and its device's token does not open its links.
#[tokio::test]
async fn a_module_is_confined_to_its_own_links() {
    let hub = TestHub::start();
    let api = Service::new(&hub.owner_connection_string(), &hub.ca_path());
    let host = hub.host();
    let device_key = api.register_device("dev1").await;
    let module_keys = [
        api.register_module("dev1", "app").await,
        api.register_module("dev1", "other").await,
    ];
    let app = format!("{host}/devices/dev1/modules/app");
    let app_token = |lifetime: i64| {
        twinhub_core::sas::sign(
            &app,
            &module_keys[0],
            None,
            (rest_client::now() as i64 + lifetime) as u64,
        )
        .unwrap()
    };

    let mut client = open(&hub, false).await;
    let (status, _) = put_token(
        &mut client,
        &format!("{host}/devices/dev1/modules/other"),
        &app_token(600),
        1,
    )
    .await;
    assert_eq!(
        status,
        SimpleValue::Int(401),
        "the app module's token for the other module"
    );
    let (status, _) = put_token(&mut client, &app, &device_token(&host, "dev1", &device_key, 600), 2).await;
    assert_eq!(status, SimpleValue::Int(401), "the device's token for its module");
    let (status, _) = put_token(&mut client, &app, &app_token(600), 3).await;
    assert_eq!(status, SimpleValue::Int(200));

    for (what, address) in [
        ("its device's twin", "/devices/dev1/twin"),
        ("another module's twin", "/devices/dev1/modules/other/twin"),
        ("its device's telemetry", "/devices/dev1/messages/events"),
    ] {
        let link = Sender::attach(&mut client.session, format!("sender {what}"), address)
            .await
            .unwrap();
        assert_eq!(
            detach_condition(link).await,
            ErrorCondition::AmqpError(AmqpError::UnauthorizedAccess),
            "{what}"
        );
    }

    let mut requests = Sender::builder()
        .name("module-twin-sender")
        .target("/devices/dev1/modules/app/twin")
        .sender_settle_mode(SenderSettleMode::Settled)
        .attach(&mut client.session)
        .await
        .unwrap();
    let mut answers = Receiver::attach(
        &mut client.session,
        "module-twin-receiver",
        "/devices/dev1/modules/app/twin",
    )
    .await
    .unwrap();
    requests
        .send(twin_request(
            "PATCH",
            Some("/properties/reported"),
            "r1",
            br#"{"role":"app"}"#,
        ))
        .await
        .unwrap();
    let answer = answers.recv::<Body<Value>>().await.unwrap().into_message();
    assert_eq!(annotation(&answer, "status"), Some(Value::Int(204)));
    assert_eq!(annotation(&answer, "version"), Some(Value::Long(2)));
    requests.send(twin_request("GET", None, "g1", b" ")).await.unwrap();
    let answer = answers.recv::<Body<Value>>().await.unwrap().into_message();
    assert_eq!(annotation(&answer, "status"), Some(Value::Int(200)));
    assert_eq!(body_json(&answer)["reported"]["role"], "app");

    let module_twin = api.call(Method::GET, "/twins/dev1/modules/app", None, None).await;
    assert_eq!(module_twin.body["properties"]["reported"]["role"], "app");
    assert_eq!(module_twin.body["connectionState"], "Connected");
    let device_twin = api.call(Method::GET, "/twins/dev1", None, None).await;
    assert!(
        device_twin.body["properties"]["reported"].get("role").is_none(),
        "the device's twin is untouched"
    );
    assert_eq!(device_twin.body["connectionState"], "Disconnected");

    let _ = client.connection.close().await;
    let mut disconnected = false;
    for _ in 0..50 {
        let module_twin = api.call(Method::GET, "/twins/dev1/modules/app", None, None).await;
        if module_twin.body["connectionState"] == "Disconnected" {
            disconnected = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(disconnected, "the module shows Disconnected once its connection closed");
}
