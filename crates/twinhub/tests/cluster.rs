//! Several hub nodes on one PostgreSQL database act as one hub: real `twinhub serve` processes, each on
//! its own loopback address, sharing the host name, CA and policies, with raw clients pinned to one node
//! or another. What a device or back end does through one node is seen, at once and exactly, through
//! every other (docs/cluster.md).
//!
//! PostgreSQL: see `support/database.rs`; skipped when it cannot be reached, unless
//! `TWINHUB_REQUIRE_POSTGRES=1` (CI sets it). NATS: `TWINHUB_TEST_NATS_URL` (default
//! `nats://127.0.0.1:4222`), which `.ci/run` starts.

mod event_hubs_client;
mod mqtt_client;
mod rest_client;
mod support;

use mqtt_client::{Credentials, MqttClient};
use reqwest::Method;
use rest_client::Service;
use rmqtt_codec::types::QoS;
use rmqtt_codec::v3::ConnectAckReason;
use serde_json::{json, Value};
use std::time::Duration;
use support::database::Database;
use support::TestHub;

const DESIRED: &str = "$iothub/twin/PATCH/properties/desired/#";
const RESPONSES: &str = "$iothub/twin/res/#";

/// Two nodes on one database, and a back end on each.
struct Cluster {
    a: TestHub,
    b: TestHub,
    api_a: Service,
    api_b: Service,
    database: Database,
}

impl Cluster {
    async fn start() -> Option<Cluster> {
        Cluster::start_on(&nats_url()).await
    }

    /// Two nodes whose bus is the NATS server at `bus`.
    async fn start_on(bus: &str) -> Option<Cluster> {
        let database = Database::create().await?;
        let store = database.store_url();
        let a = TestHub::start_with(&["--store", &store, "--bus", bus]);
        let b = TestHub::start_node_of(&a, &["--store", &store, "--bus", bus]);
        let owner = a.owner_connection_string();
        let api_a = Service::new(&owner, &a.ca_path()).through(a.address());
        let api_b = Service::new(&owner, &a.ca_path()).through(b.address());
        Some(Cluster {
            a,
            b,
            api_a,
            api_b,
            database,
        })
    }

    async fn connect(&self, node: &TestHub, device_id: &str, key: &str) -> (MqttClient, ConnectAckReason) {
        let credentials = Credentials::device(&node.host(), device_id, key, 3600);
        let (client, code, _) = MqttClient::connect(node.address(), &node.ca_path(), &credentials).await;
        (client, code)
    }
}

fn nats_url() -> String {
    std::env::var("TWINHUB_TEST_NATS_URL").unwrap_or_else(|_| "nats://127.0.0.1:4222".into())
}

fn json_of(bytes: &[u8]) -> Value {
    serde_json::from_slice(bytes).expect("JSON")
}

async fn twin(api: &Service, id: &str) -> Value {
    let reply = api.call(Method::GET, &format!("/twins/{id}"), None, None).await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    reply.body
}

/// Waits until `id`'s twin read through `api` shows `state`; panics after `within`.
async fn await_connection_state(api: &Service, id: &str, state: &str, within: Duration) {
    let deadline = std::time::Instant::now() + within;
    loop {
        let shown = twin(api, id).await["connectionState"].clone();
        if shown == state {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{id} is still {shown} after {within:?}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_goes_through_one_node_is_seen_at_once_through_the_other() {
    let Some(cluster) = Cluster::start().await else {
        return;
    };
    // Created through A, the device authenticates on B at once.
    let key = cluster.api_a.register_device("roamer").await;
    let (mut device, code) = cluster.connect(&cluster.b, "roamer", &key).await;
    assert_eq!(code, ConnectAckReason::ConnectionAccepted);
    device
        .subscribe(&[(RESPONSES, QoS::AtMostOnce), (DESIRED, QoS::AtLeastOnce)])
        .await;

    // Desired patched through A: the device on B is notified, in version order, with the exact patches.
    for patch in [json!({"interval": 30}), json!({"interval": null, "mode": "eco"})] {
        let body = json!({"properties": {"desired": patch}});
        let reply = cluster
            .api_a
            .call(Method::PATCH, "/twins/roamer", Some(body), Some("*"))
            .await;
        assert_eq!(reply.status, 200, "{}", reply.body);
    }
    let (topic, body) = tokio::time::timeout(Duration::from_secs(5), device.next_publish())
        .await
        .expect("notified within 5 s");
    assert_eq!(topic, "$iothub/twin/PATCH/properties/desired/?$version=2");
    assert_eq!(json_of(&body), json!({"interval": 30, "$version": 2}));
    let (topic, body) = device.next_publish().await;
    assert_eq!(topic, "$iothub/twin/PATCH/properties/desired/?$version=3");
    assert_eq!(json_of(&body), json!({"interval": null, "mode": "eco", "$version": 3}));

    // Reported through B: read through A and found by a query on A as soon as it is acknowledged.
    let (status, _, _) = device
        .twin(
            "$iothub/twin/PATCH/properties/reported/?$rid=1",
            br#"{"firmware":"2.0"}"#,
        )
        .await;
    assert_eq!(status, 204);
    let on_a = twin(&cluster.api_a, "roamer").await;
    assert_eq!(on_a["properties"]["reported"]["firmware"], "2.0");
    assert_eq!(on_a["connectionState"], "Connected", "connected through B");
    let reply = cluster
        .api_a
        .query(
            "SELECT deviceId FROM devices WHERE properties.reported.firmware = '2.0'",
            None,
            None,
        )
        .await;
    assert_eq!(reply.body, json!([{"deviceId": "roamer"}]));

    // Tags written through B, read back by the device's own twin GET on B and by A.
    let reply = cluster
        .api_b
        .call(
            Method::PATCH,
            "/twins/roamer",
            Some(json!({"tags": {"site": "north"}})),
            Some("*"),
        )
        .await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert_eq!(twin(&cluster.api_a, "roamer").await["tags"]["site"], "north");
    let (status, _, body) = device.twin("$iothub/twin/GET/?$rid=2", b"").await;
    assert_eq!(status, 200);
    assert_eq!(json_of(&body)["desired"]["$version"], 3);

    // Deleted through A: gone on B, and the device can no longer connect there.
    drop(device);
    let reply = cluster
        .api_a
        .call(Method::DELETE, "/devices/roamer", None, Some("*"))
        .await;
    assert_eq!(reply.status, 204, "{}", reply.body);
    let reply = cluster.api_b.call(Method::GET, "/twins/roamer", None, None).await;
    assert_eq!(reply.status, 404, "{}", reply.body);
    let (_, code) = cluster.connect(&cluster.b, "roamer", &key).await;
    assert_ne!(code, ConnectAckReason::ConnectionAccepted);
    cluster.database.drop_now().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn versions_and_etags_stay_exact_with_writers_on_both_nodes() {
    let Some(cluster) = Cluster::start().await else {
        return;
    };
    cluster.api_a.register_device("shared").await;
    let version_before = twin(&cluster.api_b, "shared").await["version"]
        .as_u64()
        .expect("version");

    // Back ends on both nodes patch the same twin at once, each a key of its own.
    const EACH: usize = 25;
    async fn write_from(api: &Service, node: &str) -> Vec<u64> {
        let mut versions = Vec::new();
        for n in 0..EACH {
            let body = json!({"tags": {format!("{node}{n}"): n}});
            let reply = api.call(Method::PATCH, "/twins/shared", Some(body), Some("*")).await;
            assert_eq!(reply.status, 200, "{}", reply.body);
            versions.push(reply.body["version"].as_u64().expect("version"));
        }
        versions
    }
    let (mut versions, from_b) = tokio::join!(write_from(&cluster.api_a, "a"), write_from(&cluster.api_b, "b"));
    versions.extend(from_b);
    versions.sort_unstable();
    let expected: Vec<u64> = (version_before + 1..=version_before + 2 * EACH as u64).collect();
    assert_eq!(versions, expected, "every write got its own version, none lost");
    for api in [&cluster.api_a, &cluster.api_b] {
        let tags = &twin(api, "shared").await["tags"];
        assert_eq!(tags.as_object().map(|tags| tags.len()), Some(2 * EACH), "{tags}");
    }

    // If-Match across nodes: an etag read on A is current on B; once B wrote, it is stale on A.
    let etag = twin(&cluster.api_a, "shared").await["etag"]
        .as_str()
        .expect("etag")
        .to_owned();
    let quoted = format!("\"{etag}\"");
    let body = json!({"tags": {"owner": "b"}});
    let reply = cluster
        .api_b
        .call(Method::PATCH, "/twins/shared", Some(body), Some(&quoted))
        .await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    let body = json!({"tags": {"owner": "a"}});
    let reply = cluster
        .api_a
        .call(Method::PATCH, "/twins/shared", Some(body), Some(&quoted))
        .await;
    assert_eq!(reply.status, 412, "{}", reply.body);
    assert_eq!(reply.error_code(), "PreconditionFailed");
    assert_eq!(twin(&cluster.api_a, "shared").await["tags"]["owner"], "b");
    cluster.database.drop_now().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_that_connects_through_another_node_closes_its_older_connection_and_stays_connected() {
    let Some(cluster) = Cluster::start().await else {
        return;
    };
    let key = cluster.api_a.register_device("mover").await;
    let (mut first, code) = cluster.connect(&cluster.a, "mover", &key).await;
    assert_eq!(code, ConnectAckReason::ConnectionAccepted);
    let (_second, code) = cluster.connect(&cluster.b, "mover", &key).await;
    assert_eq!(code, ConnectAckReason::ConnectionAccepted);
    // One connection per device across nodes: A closes the older one.
    let closed = tokio::time::timeout(Duration::from_secs(5), first.receive()).await;
    assert!(matches!(closed, Ok(None)), "the connection on A closed: {closed:?}");
    // The old connection on A went after the new one on B came: B's truth stands.
    tokio::time::sleep(Duration::from_millis(300)).await;
    for api in [&cluster.api_a, &cluster.api_b] {
        assert_eq!(twin(api, "mover").await["connectionState"], "Connected");
    }
    // And the other way, with clean sessions: back to A closes the one on B.
    let clean = |node: &TestHub| {
        let mut credentials = Credentials::device(&node.host(), "mover", &key, 3600);
        credentials.clean_session = true;
        credentials
    };
    let (mut on_b, code, _) = MqttClient::connect(cluster.b.address(), &cluster.b.ca_path(), &clean(&cluster.b)).await;
    assert_eq!(code, ConnectAckReason::ConnectionAccepted);
    let (_on_a, code, _) = MqttClient::connect(cluster.a.address(), &cluster.a.ca_path(), &clean(&cluster.a)).await;
    assert_eq!(code, ConnectAckReason::ConnectionAccepted);
    let closed = tokio::time::timeout(Duration::from_secs(5), on_b.receive()).await;
    assert!(matches!(closed, Ok(None)), "the connection on B closed: {closed:?}");
    cluster.database.drop_now().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_nodes_devices_are_shown_disconnected_once_its_lease_lapses_unless_they_moved_on() {
    let Some(mut cluster) = Cluster::start().await else {
        return;
    };
    let orphan_key = cluster.api_a.register_device("orphan").await;
    let mover_key = cluster.api_a.register_device("mover").await;
    let (_orphan, code) = cluster.connect(&cluster.b, "orphan", &orphan_key).await;
    assert_eq!(code, ConnectAckReason::ConnectionAccepted);
    let (_mover_on_b, code) = cluster.connect(&cluster.b, "mover", &mover_key).await;
    assert_eq!(code, ConnectAckReason::ConnectionAccepted);
    // The mover goes on through A (its connection to B is not closed yet when B dies).
    let (_mover_on_a, code) = cluster.connect(&cluster.a, "mover", &mover_key).await;
    assert_eq!(code, ConnectAckReason::ConnectionAccepted);
    assert_eq!(twin(&cluster.api_a, "orphan").await["connectionState"], "Connected");
    // A module of the orphan connects through B too: its presence is held under B's lease as well.
    let module_key = cluster.api_a.register_module("orphan", "app").await;
    let credentials = Credentials::module(&cluster.b.host(), "orphan", "app", &module_key, 3600);
    let (_module_on_b, code, _) = MqttClient::connect(cluster.b.address(), &cluster.b.ca_path(), &credentials).await;
    assert_eq!(code, ConnectAckReason::ConnectionAccepted);
    assert_eq!(
        twin(&cluster.api_a, "orphan/modules/app").await["connectionState"],
        "Connected"
    );

    cluster.b.kill9();
    let killed = std::time::Instant::now();
    await_connection_state(&cluster.api_a, "orphan", "Disconnected", Duration::from_secs(40)).await;
    let took = killed.elapsed();
    let orphan = twin(&cluster.api_a, "orphan").await;
    // The lease lapses 10 s after its last renewal (every 2 s); lapsed leases are looked for every 4 s.
    assert!(
        took >= Duration::from_secs(7),
        "disconnected after {took:?}: before the lease could lapse"
    );
    let device = cluster.api_a.call(Method::GET, "/devices/orphan", None, None).await;
    assert_eq!(device.body["connectionState"], "Disconnected");
    assert_ne!(orphan["lastActivityTime"], Value::Null);
    assert_eq!(
        twin(&cluster.api_a, "mover").await["connectionState"],
        "Connected",
        "it moved on to A"
    );
    await_connection_state(
        &cluster.api_a,
        "orphan/modules/app",
        "Disconnected",
        Duration::from_secs(5),
    )
    .await;
    // The node is forgotten: its lease and holds are gone.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while cluster.database.count("SELECT count(*) FROM node_leases").await != 1 {
        assert!(std::time::Instant::now() < deadline, "the lapsed lease is still there");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(
        cluster
            .database
            .count("SELECT count(*) FROM held_devices WHERE device_id = 'orphan'")
            .await,
        0
    );
    cluster.database.drop_now().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgresql_out_of_reach_refuses_writes_with_server_busy_serves_reads_and_recovers() {
    let Some(database) = Database::create().await else {
        return;
    };
    let proxy = support::cut_proxy::CutProxy::start(database.server_address()).await;
    let metrics_at = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .expect("a free port")
        .to_string();
    let hub = TestHub::start_with(&[
        "--store",
        &database.store_url_via(proxy.address),
        "--metrics-bind",
        &metrics_at,
    ]);
    let scrape = || {
        let url = format!("http://{metrics_at}/metrics");
        async move {
            reqwest::get(url)
                .await
                .expect("a scrape")
                .text()
                .await
                .expect("the metrics")
        }
    };
    let metric = |text: &str, name: &str| -> u64 {
        text.lines()
            .find_map(|line| line.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
            .unwrap_or_else(|| panic!("{name} in\n{text}"))
    };
    let api = Service::new(&hub.owner_connection_string(), &hub.ca_path());
    // A second node, which PostgreSQL stays in reach of.
    let other = TestHub::start_node_of(&hub, &["--store", &database.store_url()]);
    let api_other = Service::new(&hub.owner_connection_string(), &hub.ca_path()).through(other.address());
    let key = api.register_device("steady").await;
    let body = json!({"properties": {"desired": {"mode": "on"}}});
    let reply = api.call(Method::PATCH, "/twins/steady", Some(body), Some("*")).await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    let (mut device, code) = {
        let credentials = Credentials::device(&hub.host(), "steady", &key, 3600);
        let (client, code, _) = MqttClient::connect(hub.address(), &hub.ca_path(), &credentials).await;
        (client, code)
    };
    assert_eq!(code, ConnectAckReason::ConnectionAccepted);
    device.subscribe(&[(RESPONSES, QoS::AtMostOnce)]).await;

    let before = scrape().await;
    assert_eq!(metric(&before, "twinhub_cluster_reads_from_unchecked_view_total"), 0);
    assert_eq!(metric(&before, "twinhub_cluster_commits_behind"), 0);
    assert_eq!(metric(&before, "twinhub_devices"), 1);

    proxy.cut();
    // Writes are refused, promptly, in each protocol's "try again" terms; nothing half-written.
    let started = std::time::Instant::now();
    let body = json!({"properties": {"desired": {"mode": "off"}}});
    let reply = api
        .call(Method::PATCH, "/twins/steady", Some(body.clone()), Some("*"))
        .await;
    assert_eq!(reply.status, 503, "{}", reply.body);
    assert_eq!(reply.error_code(), "ServerBusy");
    assert!(
        started.elapsed() < Duration::from_secs(8),
        "refused after {:?}",
        started.elapsed()
    );
    let (status, _, _) = device
        .twin("$iothub/twin/PATCH/properties/reported/?$rid=1", br#"{"firmware":"3"}"#)
        .await;
    assert_eq!(status, 503);
    // Reads and queries go on from memory.
    assert_eq!(twin(&api, "steady").await["properties"]["desired"]["mode"], "on");
    let reply = api.query("SELECT deviceId FROM devices", None, None).await;
    assert_eq!(reply.body, json!([{"deviceId": "steady"}]));
    // ... and the node says so: in its log, and in its metrics.
    assert!(metric(&scrape().await, "twinhub_cluster_reads_from_unchecked_view_total") >= 2);
    assert!(hub.log().contains("may be behind the cluster"));
    // Cut off long enough, the node's lease lapses: the other node, which cannot tell a cut from a
    // death, shows its device Disconnected.
    await_connection_state(&api_other, "steady", "Disconnected", Duration::from_secs(30)).await;

    proxy.restore();
    // Everything recovers by itself: the next writes go through.
    let mut status = 0;
    for _ in 0..50 {
        let reply = api
            .call(Method::PATCH, "/twins/steady", Some(body.clone()), Some("*"))
            .await;
        status = reply.status;
        if status == 200 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(status, 200);
    let (status, _, _) = device
        .twin("$iothub/twin/PATCH/properties/reported/?$rid=2", br#"{"firmware":"3"}"#)
        .await;
    assert_eq!(status, 204);
    let twin_now = twin(&api, "steady").await;
    assert_eq!(twin_now["properties"]["desired"]["mode"], "off");
    assert_eq!(twin_now["properties"]["reported"]["firmware"], "3");
    // Back in reach, the node finds its lease lapsed and stamps the device it still holds Connected anew.
    await_connection_state(&api_other, "steady", "Connected", Duration::from_secs(15)).await;
    database.drop_now().await;
}

/// What one writer of the load saw: per device, the values acknowledged and the values refused.
#[derive(Default)]
struct Outcomes {
    acknowledged: std::collections::HashMap<String, Vec<i64>>,
    refused: std::collections::HashMap<String, Vec<i64>>,
    other_statuses: Vec<String>,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgresql_crashed_and_restarted_under_load_loses_no_acknowledged_write() {
    let Some(mut postgres) = support::private_postgres::PrivatePostgres::start() else {
        return;
    };
    let store = postgres.url();
    let a = TestHub::start_with(&["--store", &store, "--bus", &nats_url()]);
    let b = TestHub::start_node_of(&a, &["--store", &store, "--bus", &nats_url()]);
    let owner = a.owner_connection_string();
    let apis = [
        Service::new(&owner, &a.ca_path()).through(a.address()),
        Service::new(&owner, &a.ca_path()).through(b.address()),
    ];
    const DEVICES: usize = 12;
    let ids: Vec<String> = (0..DEVICES).map(|n| format!("steadfast-{n}")).collect();
    for id in &ids {
        apis[0].register_device(id).await;
    }

    // Load: three writers, each with its own devices, each write through A or B in turn, one value
    // after the other per device.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writers: Vec<_> = (0..3)
        .map(|writer| {
            let mine: Vec<String> = ids.iter().skip(writer).step_by(3).cloned().collect();
            let apis = [
                Service::new(&owner, &a.ca_path()).through(a.address()),
                Service::new(&owner, &a.ca_path()).through(b.address()),
            ];
            let stop = std::sync::Arc::clone(&stop);
            tokio::spawn(async move {
                let mut outcomes = Outcomes::default();
                let mut value = 0i64;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    value += 1;
                    for (n, id) in mine.iter().enumerate() {
                        let api = &apis[(n + value as usize) % 2];
                        let body = json!({"tags": {"counter": value}});
                        let reply = api
                            .call(Method::PATCH, &format!("/twins/{id}"), Some(body), Some("*"))
                            .await;
                        match reply.status {
                            200 => outcomes.acknowledged.entry(id.clone()).or_default().push(value),
                            503 if reply.error_code() == "ServerBusy" => {
                                outcomes.refused.entry(id.clone()).or_default().push(value)
                            }
                            status => outcomes.other_statuses.push(format!("{status} {}", reply.body)),
                        }
                    }
                }
                outcomes
            })
        })
        .collect();

    tokio::time::sleep(Duration::from_secs(2)).await;
    postgres.crash();
    tokio::time::sleep(Duration::from_secs(3)).await;
    postgres.resume();
    let resumed = std::time::Instant::now();
    // Both nodes write again by themselves.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    for api in &apis {
        loop {
            let body = json!({"tags": {"probe": true}});
            let reply = api
                .call(Method::PATCH, "/twins/steadfast-0", Some(body), Some("*"))
                .await;
            if reply.status == 200 {
                break;
            }
            assert_eq!(reply.status, 503, "{}", reply.body);
            assert!(
                std::time::Instant::now() < deadline,
                "writes did not recover: {}",
                reply.body
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    let recovered_after = resumed.elapsed();
    tokio::time::sleep(Duration::from_secs(1)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut outcomes = Outcomes::default();
    for writer in writers {
        let part = writer.await.expect("a writer");
        outcomes.acknowledged.extend(part.acknowledged);
        outcomes.refused.extend(part.refused);
        outcomes.other_statuses.extend(part.other_statuses);
    }
    assert!(
        outcomes.other_statuses.is_empty(),
        "answers other than 200 and 503 ServerBusy: {:?}",
        outcomes.other_statuses
    );
    assert!(!outcomes.refused.is_empty(), "the crash refused some writes");

    // Nothing acknowledged is lost: each twin holds its last acknowledged value, or a later one whose
    // answer the crash cut (COMMIT may have reached the WAL before the connection broke); both nodes agree.
    for id in &ids {
        let last_acknowledged = outcomes.acknowledged.get(id).and_then(|values| values.last().copied());
        let last_attempted = outcomes
            .refused
            .get(id)
            .and_then(|values| values.last().copied())
            .max(last_acknowledged);
        for api in &apis {
            let counter = twin(api, id).await["tags"]["counter"].as_i64();
            assert!(
                counter >= last_acknowledged && counter <= last_attempted,
                "{id}: {counter:?}, last acknowledged {last_acknowledged:?}, last attempted {last_attempted:?}"
            );
        }
        assert_eq!(
            twin(&apis[0], id).await["tags"],
            twin(&apis[1], id).await["tags"],
            "{id}: both nodes show the same twin"
        );
    }
    let acknowledged: usize = outcomes.acknowledged.values().map(Vec::len).sum();
    let refused: usize = outcomes.refused.values().map(Vec::len).sum();
    println!(
        "{acknowledged} writes acknowledged, {refused} refused with ServerBusy during the crash; both nodes wrote again {recovered_after:?} after PostgreSQL was back"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_direct_method_called_through_one_node_reaches_the_device_on_the_other() {
    let Some(cluster) = Cluster::start().await else {
        return;
    };
    let key = cluster.api_a.register_device("far").await;
    let (mut device, code) = cluster.connect(&cluster.b, "far", &key).await;
    assert_eq!(code, ConnectAckReason::ConnectionAccepted);
    device.subscribe(&[("$iothub/methods/POST/#", QoS::AtMostOnce)]).await;

    let api = Service::new(&cluster.a.owner_connection_string(), &cluster.a.ca_path()).through(cluster.a.address());
    let call = tokio::spawn(async move {
        let body = json!({"methodName": "reboot", "payload": {"delay": 3}, "responseTimeoutInSeconds": 10});
        api.call(Method::POST, "/twins/far/methods", Some(body), None).await
    });
    let (topic, payload) = tokio::time::timeout(Duration::from_secs(10), device.next_publish())
        .await
        .expect("the request within 10 s");
    let rid = topic
        .strip_prefix("$iothub/methods/POST/reboot/?$rid=")
        .unwrap_or_else(|| panic!("not the method request: {topic}"))
        .to_owned();
    assert_eq!(json_of(&payload), json!({"delay": 3}));
    device
        .publish(
            &format!("$iothub/methods/res/201/?$rid={rid}"),
            br#"{"rebooting":true}"#,
            QoS::AtMostOnce,
        )
        .await;
    let reply = call.await.expect("the call");
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert_eq!(reply.body, json!({"status": 201, "payload": {"rebooting": true}}));

    // Connected nowhere: DeviceNotOnline from either node once the connect timeout passed.
    drop(device);
    cluster.api_b.register_device("nowhere").await;
    let body = json!({"methodName": "ping", "responseTimeoutInSeconds": 5, "connectTimeoutInSeconds": 1});
    let reply = cluster
        .api_a
        .call(Method::POST, "/twins/nowhere/methods", Some(body), None)
        .await;
    assert_eq!(reply.status, 404, "{}", reply.body);
    assert_eq!(reply.error_code(), "DeviceNotOnline");
    cluster.database.drop_now().await;
}

/// Sends `count` events at QoS 1 from `device`, each acknowledged before the next (`<device>:<n>`).
async fn send_events(device: &mut MqttClient, id: &str, count: usize) {
    for n in 0..count {
        let topic = format!("devices/{id}/messages/events/n={n}");
        let packet_id = device
            .publish(&topic, format!("{id}:{n}").as_bytes(), QoS::AtLeastOnce)
            .await
            .expect("a packet id");
        match device.receive().await {
            Some(rmqtt_codec::v3::Packet::PublishAck { packet_id: acked }) => assert_eq!(acked, packet_id),
            other => panic!("expected the PUBACK of event {n} of {id}, got {other:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn telemetry_sent_through_any_node_is_read_through_every_node_with_the_same_numbers() {
    use event_hubs_client::{body, next_event, partition, sequence_number, Consumer};
    let Some(cluster) = Cluster::start().await else {
        return;
    };
    let store = cluster.database.store_url();
    let c = TestHub::start_node_of(&cluster.a, &["--store", &store, "--bus", &nats_url()]);
    // Two devices that share a partition, so that their events interleave in it.
    let first = "sensor-0".to_owned();
    let second = (1..)
        .map(|n| format!("sensor-{n}"))
        .find(|id| partition(id) == partition(&first))
        .expect("another device in the partition");
    let shared = partition(&first);
    let key_first = cluster.api_a.register_device(&first).await;
    let key_second = cluster.api_b.register_device(&second).await;

    // A receiver on C, attached before anything is sent, hears of events appended through A and B.
    let mut live = Consumer::service(&c).await;
    let mut receiver = live
        .receiver(&shared.to_string(), "amqp.annotation.x-opt-offset > '-1'", None)
        .await;

    let (mut on_a, code) = cluster.connect(&cluster.a, &first, &key_first).await;
    assert_eq!(code, ConnectAckReason::ConnectionAccepted);
    let (mut on_b, code) = cluster.connect(&cluster.b, &second, &key_second).await;
    assert_eq!(code, ConnectAckReason::ConnectionAccepted);
    const EVENTS: usize = 15;
    tokio::join!(
        send_events(&mut on_a, &first, EVENTS),
        send_events(&mut on_b, &second, EVENTS)
    );

    let mut heard = Vec::new();
    for _ in 0..2 * EVENTS {
        let event = next_event(&mut receiver).await;
        heard.push((sequence_number(&event), String::from_utf8(body(&event)).expect("UTF-8")));
    }
    assert_eq!(
        heard.iter().map(|(number, _)| *number).collect::<Vec<_>>(),
        (0..2 * EVENTS as i64).collect::<Vec<_>>(),
        "one numbering for the partition, whichever node took the event"
    );
    for id in [&first, &second] {
        let own: Vec<&str> = heard
            .iter()
            .map(|(_, text)| text.as_str())
            .filter(|text| text.starts_with(&format!("{id}:")))
            .collect();
        let expected: Vec<String> = (0..EVENTS).map(|n| format!("{id}:{n}")).collect();
        assert_eq!(own, expected, "{id}'s events in the order it sent them");
    }

    // Every node reads the same partitions: the same events under the same sequence numbers.
    for node in [&cluster.a, &cluster.b, &c] {
        let mut consumer = Consumer::service(node).await;
        let (last, empty) = consumer.partition_state(shared).await;
        assert_eq!(
            (last, empty),
            (2 * EVENTS as i64 - 1, false),
            "partition {shared} on {}",
            node.address()
        );
        let everything = consumer.read_everything().await;
        let read: Vec<(i64, String)> = everything[&shared]
            .iter()
            .map(|event| (sequence_number(event), String::from_utf8(body(event)).expect("UTF-8")))
            .collect();
        assert_eq!(read, heard, "partition {shared} through {}", node.address());
        assert_eq!(
            everything.values().map(Vec::len).sum::<usize>(),
            2 * EVENTS,
            "nothing else anywhere"
        );
        consumer.close().await;
    }
    live.close().await;
    cluster.database.drop_now().await;
}

/// `POST /devices/{id}/messages/events` through `node`, as the HTTPS device transport sends it.
async fn post_event(api: &Service, node: &TestHub, id: &str, key: &str, body: &str) -> rest_client::Reply {
    post_event_to(api, node.address(), &node.host(), id, key, body).await
}

/// The same, to the node at `address` of the hub named `host`.
async fn post_event_to(
    api: &Service,
    address: std::net::Ipv4Addr,
    host: &str,
    id: &str,
    key: &str,
    body: &str,
) -> rest_client::Reply {
    let token =
        twinhub_core::sas::sign(&format!("{host}/devices/{id}"), key, None, rest_client::now() + 600).expect("a token");
    let url = format!("https://{address}/devices/{id}/messages/events?api-version=2021-04-12");
    let response = api
        .http
        .post(url)
        .header("Authorization", token)
        .header("Content-Type", "application/json")
        .body(body.to_owned())
        .timeout(Duration::from_secs(30))
        .send()
        .await
        .expect("an answer");
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    let text = response.text().await.expect("a body");
    let body = serde_json::from_str(&text).unwrap_or(Value::String(text));
    rest_client::Reply { status, headers, body }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_out_of_reach_refuses_telemetry_with_server_busy_keeps_twins_going_and_recovers() {
    use event_hubs_client::{body, partition, Consumer};
    let Some(mut nats) = support::nats::PrivateNats::start() else {
        return;
    };
    let Some(cluster) = Cluster::start_on(&nats.url()).await else {
        return;
    };
    let key = cluster.api_a.register_device("talker").await;
    let sent = post_event(&cluster.api_b, &cluster.b, "talker", &key, r#"{"n":"before"}"#).await;
    assert_eq!(sent.status, 204, "{}", sent.body);
    // Load: another device sends through A all along; what is acknowledged must be there at the end.
    let loader_key = cluster.api_a.register_device("loader").await;
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let load = {
        let (stop, a_address) = (std::sync::Arc::clone(&stop), cluster.a.address());
        let api = Service::new(&cluster.a.owner_connection_string(), &cluster.a.ca_path()).through(a_address);
        let host = cluster.a.host();
        tokio::spawn(async move {
            let (mut acknowledged, mut refused) = (Vec::new(), 0usize);
            let mut n = 0u64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let body = format!(r#"{{"load":{n}}}"#);
                let reply = post_event_to(&api, a_address, &host, "loader", &loader_key, &body).await;
                match reply.status {
                    204 => acknowledged.push(body),
                    503 if reply.error_code() == "ServerBusy" => refused += 1,
                    other => panic!("load: {other} {}", reply.body),
                }
                n += 1;
            }
            (acknowledged, refused)
        })
    };
    tokio::time::sleep(Duration::from_millis(500)).await;

    nats.kill();
    let started = std::time::Instant::now();
    let refused = post_event(&cluster.api_b, &cluster.b, "talker", &key, r#"{"n":"during"}"#).await;
    assert_eq!(refused.status, 503, "{}", refused.body);
    assert_eq!(refused.error_code(), "ServerBusy");
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "refused after {:?}",
        started.elapsed()
    );
    // Twins are in PostgreSQL: written through one node and read through the other while NATS is down.
    let reply = cluster
        .api_a
        .call(
            Method::PATCH,
            "/twins/talker",
            Some(json!({"tags": {"bus": "down"}})),
            Some("*"),
        )
        .await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert_eq!(twin(&cluster.api_b, "talker").await["tags"]["bus"], "down");
    // Devices still connect: telling the other nodes of a connection does not wait for the bus.
    let started = std::time::Instant::now();
    let (_device, code) = cluster.connect(&cluster.a, "talker", &key).await;
    assert_eq!(code, ConnectAckReason::ConnectionAccepted);
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "connected after {:?}",
        started.elapsed()
    );

    // NATS back: the nodes reconnect by themselves and telemetry goes on.
    nats.resume();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let sent = post_event(&cluster.api_b, &cluster.b, "talker", &key, r#"{"n":"after"}"#).await;
        if sent.status == 204 {
            break;
        }
        assert_eq!(sent.status, 503, "{}", sent.body);
        assert!(
            std::time::Instant::now() < deadline,
            "telemetry did not recover: {}",
            sent.body
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (load_acknowledged, load_refused) = load.await.expect("the load");
    assert!(load_refused > 0, "the load met the outage");
    // Read through the other node: what was acknowledged is there, in order, numbered without a gap
    // (refused events may be there too: their devices were told to send them again, at least once).
    // B hears of every append through A again (its follower of the partition, made anew after NATS
    // came back), within a second or two.
    {
        let mut on_a = Consumer::service(&cluster.a).await;
        let (last_on_a, _) = on_a.partition_state(partition("loader")).await;
        on_a.close().await;
        let mut on_b = Consumer::service(&cluster.b).await;
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        loop {
            let (last_on_b, _) = on_b.partition_state(partition("loader")).await;
            if last_on_b >= last_on_a {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "B still sees the partition end at {last_on_b}, A at {last_on_a}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        on_b.close().await;
    }
    let mut consumer = Consumer::service(&cluster.b).await;
    let loaded: Vec<String> = consumer.read_everything().await[&partition("loader")]
        .iter()
        .map(|event| String::from_utf8(body(event)).expect("UTF-8"))
        .collect();
    let mut found = loaded.iter();
    for acknowledged in &load_acknowledged {
        assert!(
            found.any(|text| text == acknowledged),
            "{acknowledged} acknowledged and not read back in order ({} acknowledged, {} read)",
            load_acknowledged.len(),
            loaded.len()
        );
    }
    println!(
        "load through the outage: {} events acknowledged, {load_refused} refused with ServerBusy, {} read back",
        load_acknowledged.len(),
        loaded.len()
    );
    consumer.close().await;
    let mut consumer = Consumer::service(&cluster.a).await;
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let bodies = loop {
        let everything = consumer.read_everything().await;
        let events = everything.get(&partition("talker")).cloned().unwrap_or_default();
        let bodies: Vec<String> = events
            .iter()
            .map(|event| String::from_utf8(body(event)).expect("UTF-8"))
            .collect();
        if bodies.last().map(String::as_str) == Some(r#"{"n":"after"}"#) || std::time::Instant::now() > deadline {
            break bodies;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let acknowledged: Vec<&str> = bodies
        .iter()
        .map(String::as_str)
        .filter(|text| !text.contains("during"))
        .collect();
    assert_eq!(acknowledged, [r#"{"n":"before"}"#, r#"{"n":"after"}"#], "{bodies:?}");
    consumer.close().await;
    cluster.database.drop_now().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_init_gives_every_node_the_same_policies_and_ca() {
    let Some(database) = Database::create().await else {
        return;
    };
    let store = database.store_url();
    let init_dir = tempfile::tempdir().expect("temporary directory");
    let bus = nats_url();
    let init = |hostname: &str| {
        let output = std::process::Command::new(env!("CARGO_BIN_EXE_twinhub"))
            .args([
                "cluster",
                "init",
                "--store",
                &store,
                "--bus",
                &bus,
                "--event-partitions",
                "8",
                "--hostname",
                hostname,
                "--data-dir",
            ])
            .arg(init_dir.path())
            .output()
            .expect("run twinhub cluster init");
        assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
        String::from_utf8_lossy(&output.stdout).into_owned()
    };
    let printed = init("hub.example");
    assert!(printed.contains("now has this hub's policies and CA"), "{printed}");
    assert!(printed.contains("telemetry: 8 partitions"), "{printed}");
    let connection_string = printed.lines().last().expect("the connection string").to_owned();
    assert!(connection_string.starts_with("HostName=hub.example;SharedAccessKeyName=iothubowner;"));
    // Again: the cluster keeps what it has.
    assert!(init("hub.example").contains("had its policies and CA already"));

    // A node started on the store serves with them: the key init printed works, the CA it made is trusted;
    // and with the cluster's 8 telemetry partitions, whatever it asks for.
    let node = TestHub::start_with(&[
        "--store",
        &store,
        "--bus",
        &bus,
        "--event-partitions",
        "2",
        "--node-name",
        "east-1",
    ]);
    let on_node = connection_string.replace("HostName=hub.example", &format!("HostName={}", node.host()));
    let api = Service::new(&on_node, &init_dir.path().join("ca.pem"));
    let reply = api.call(Method::GET, "/devices", None, None).await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    let mut consumer = event_hubs_client::Consumer::service(&node).await;
    let (status, event_hub) = consumer.read("com.microsoft:eventhub", None).await;
    assert_eq!(status, 200);
    assert_eq!(
        event_hub["partition_count"],
        fe2o3_amqp::types::primitives::Value::Int(8)
    );
    consumer.close().await;
    // The node's name is on its commits and its presence lease.
    api.register_device("named").await;
    assert_eq!(
        database
            .count("SELECT count(*) FROM commits WHERE node = 'east-1'")
            .await,
        1
    );
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while database
        .count("SELECT count(*) FROM node_leases WHERE node LIKE 'east-1/%'")
        .await
        != 1
    {
        assert!(std::time::Instant::now() < deadline, "no lease under the node's name");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    drop(node);
    database.drop_now().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn behind_haproxy_the_nodes_are_one_hub_and_devices_of_a_killed_node_go_on_through_the_others() {
    let Some(database) = Database::create().await else {
        return;
    };
    let (store, bus) = (database.store_url(), nats_url());
    let balancer_address = support::free_loopback_address();
    let hostname = balancer_address.to_string();
    let a = TestHub::start_named(&hostname, &["--store", &store, "--bus", &bus]);
    let mut b = TestHub::start_node_of(&a, &["--store", &store, "--bus", &bus]);
    let Some(balancer) = support::balancer::Balancer::start(balancer_address, &[a.address(), b.address()]) else {
        assert!(std::env::var("CI").is_err(), "CI installs HAProxy");
        eprintln!("skipped: HAProxy is not installed");
        return;
    };
    // Exactly as to one hub: the host name is the balancer's.
    let api = Service::new(&a.owner_connection_string(), &a.ca_path());
    assert_eq!(api.connection.host_name, hostname);
    let mut devices = Vec::new();
    for n in 0..4 {
        let id = format!("lb{n}");
        let key = api.register_device(&id).await;
        let credentials = Credentials::device(&hostname, &id, &key, 3600);
        let (mut device, code, _) = MqttClient::connect(balancer.address, &a.ca_path(), &credentials).await;
        assert_eq!(code, ConnectAckReason::ConnectionAccepted);
        device
            .subscribe(&[(RESPONSES, QoS::AtMostOnce), (DESIRED, QoS::AtLeastOnce)])
            .await;
        devices.push((id, credentials, device));
    }
    // The balancer spread them over both nodes.
    for node in [&a, &b] {
        assert!(
            node.log().contains("device connected"),
            "no device on a node:\n{}",
            node.log()
        );
    }
    let patch_all = |version: u64| {
        let api = &api;
        let ids: Vec<String> = devices.iter().map(|(id, _, _)| id.clone()).collect();
        async move {
            for id in ids {
                let body = json!({"properties": {"desired": {"step": version}}});
                let reply = api
                    .call(Method::PATCH, &format!("/twins/{id}"), Some(body), Some("*"))
                    .await;
                assert_eq!(reply.status, 200, "{}", reply.body);
            }
        }
    };
    patch_all(1).await;
    for (id, _, device) in &mut devices {
        let (topic, body) = tokio::time::timeout(Duration::from_secs(5), device.next_publish())
            .await
            .unwrap_or_else(|_| panic!("{id} notified within 5 s"));
        assert_eq!(topic, "$iothub/twin/PATCH/properties/desired/?$version=2");
        assert_eq!(json_of(&body)["step"], 1);
    }

    // Node B dies. Its devices reconnect through the balancer (to A, once HAProxy saw B go) and go on
    // on their persistent sessions, which moved with them: no new SUBSCRIBE, and the whole desired
    // document at once (what they may have missed); nothing acknowledged is lost.
    b.kill9();
    let mut reconnected = Vec::new();
    for (id, credentials, mut device) in devices {
        // A device on B finds its connection closed; one on A hears nothing.
        if tokio::time::timeout(Duration::from_secs(1), device.receive())
            .await
            .is_err()
        {
            reconnected.push((id, device));
            continue;
        }
        let deadline = std::time::Instant::now() + Duration::from_secs(15);
        let mut device = loop {
            let attempt = tokio::time::timeout(
                Duration::from_secs(3),
                MqttClient::connect(balancer.address, &a.ca_path(), &credentials),
            )
            .await;
            if let Ok((device, ConnectAckReason::ConnectionAccepted, session_present)) = attempt {
                assert!(session_present, "{id}'s session went with it");
                break device;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "{id} did not get back in within 15 s"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        };
        let (topic, body) = tokio::time::timeout(Duration::from_secs(5), device.next_publish())
            .await
            .unwrap_or_else(|_| panic!("{id} given its desired document within 5 s"));
        assert_eq!(topic, "$iothub/twin/PATCH/properties/desired/?$version=2");
        assert_eq!(json_of(&body)["step"], 1);
        reconnected.push((id, device));
    }
    // A new back-end client: the old one's pooled connections to B died with it.
    let api = Service::new(&a.owner_connection_string(), &a.ca_path());
    let ids: Vec<String> = reconnected.iter().map(|(id, _)| id.clone()).collect();
    for id in &ids {
        let body = json!({"properties": {"desired": {"step": 2}}});
        let reply = api
            .call(Method::PATCH, &format!("/twins/{id}"), Some(body), Some("*"))
            .await;
        assert_eq!(reply.status, 200, "{}", reply.body);
    }
    for (id, device) in &mut reconnected {
        let (topic, _) = tokio::time::timeout(Duration::from_secs(5), device.next_publish())
            .await
            .unwrap_or_else(|_| panic!("{id} notified within 5 s after the failover"));
        assert_eq!(topic, "$iothub/twin/PATCH/properties/desired/?$version=3");
        let twin = twin(&api, id).await;
        assert_eq!(twin["properties"]["desired"]["step"], 2);
        assert_eq!(twin["connectionState"], "Connected");
    }
    drop(balancer);
    database.drop_now().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routes_changed_through_one_node_are_in_force_on_the_other() {
    let Some(cluster) = Cluster::start().await else {
        return;
    };
    cluster.api_a.register_device("routed").await;
    let route = json!({"source": "DeviceMessages", "condition": "level = 'critical'", "endpoint": "events"});
    let reply = cluster
        .api_a
        .call(Method::PUT, "/twinhub/routing/routes/critical", Some(route), None)
        .await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    let test = json!({"deviceId": "routed", "properties": {"level": "critical"}});
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        let reply = cluster
            .api_b
            .call(Method::POST, "/twinhub/routing/test", Some(test.clone()), None)
            .await;
        assert_eq!(reply.status, 200, "{}", reply.body);
        if reply.body["routes"] == json!(["critical"]) {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "B never took A's route: {}",
            reply.body
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // A node that starts later loads the stored routes.
    let c = TestHub::start_node_of(
        &cluster.a,
        &["--store", &cluster.database.store_url(), "--bus", &nats_url()],
    );
    let api_c = Service::new(&cluster.a.owner_connection_string(), &cluster.a.ca_path()).through(c.address());
    let reply = api_c.call(Method::GET, "/twinhub/routing", None, None).await;
    assert_eq!(reply.body["routes"][0]["name"], "critical", "{}", reply.body);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_webhook_route_set_through_one_node_delivers_what_every_node_routes() {
    let Some(cluster) = Cluster::start().await else {
        return;
    };
    let webhook = support::webhook::Webhook::start(0).await;
    // Set through A (the routes replaced whole, as `twinhub route apply` does); B opens the endpoint when
    // it applies A's commit.
    let spec = json!({
        "fallback": true,
        "endpoints": [{"name": "hook", "kind": "webhook", "url": webhook.url}],
        "routes": [{"name": "all", "source": "DeviceMessages", "endpoint": "hook"}],
    });
    let reply = cluster
        .api_a
        .call(Method::PUT, "/twinhub/routing", Some(spec), None)
        .await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    let key = cluster.api_a.register_device("hooked").await;
    let (mut on_b, code) = cluster.connect(&cluster.b, "hooked", &key).await;
    assert_eq!(code, ConnectAckReason::ConnectionAccepted);
    // B may apply A's change a moment after A answered: its first messages may still go by the old
    // routes (the fallback); from then on, every message reaches the webhook.
    tokio::time::sleep(Duration::from_millis(500)).await;
    send_events(&mut on_b, "hooked", 5).await;
    let taken = webhook.wait_for(5, Duration::from_secs(20)).await;
    assert!(taken.iter().all(|received| received.device == "hooked"), "{taken:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_hub_endpoint_is_one_log_every_node_appends_to_and_reads() {
    let Some(cluster) = Cluster::start().await else {
        return;
    };
    let spec = json!({
        "fallback": true,
        "endpoints": [{"name": "alerts", "kind": "eventHub", "partitions": 4}],
        "routes": [{"name": "critical", "source": "DeviceMessages", "condition": "level = 'critical'", "endpoint": "alerts"}],
    });
    let reply = cluster
        .api_a
        .call(Method::PUT, "/twinhub/routing", Some(spec), None)
        .await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    let key = cluster.api_a.register_device("alerting").await;
    let (mut on_b, code) = cluster.connect(&cluster.b, "alerting", &key).await;
    assert_eq!(code, ConnectAckReason::ConnectionAccepted);
    tokio::time::sleep(Duration::from_millis(500)).await;
    for n in 0..3 {
        let topic = format!("devices/alerting/messages/events/level=critical&n={n}");
        on_b.publish(&topic, b"{}", QoS::AtLeastOnce)
            .await
            .expect("a packet id");
        match on_b.receive().await {
            Some(rmqtt_codec::v3::Packet::PublishAck { .. }) => {}
            other => panic!("expected a PUBACK, got {other:?}"),
        }
    }
    // Sent through B, read through A.
    let connection = event_hubs_client::event_hubs_connection(&cluster.a);
    let mut alerts = event_hubs_client::Consumer::open(&cluster.a, "alerts").await;
    let token = event_hubs_client::event_hubs_token(&cluster.a.host(), "alerts", &connection.key_name, &connection.key);
    assert_eq!(
        alerts.put_token(&token).await,
        fe2o3_amqp::types::primitives::SimpleValue::Int(200)
    );
    // A hears of B's appends through JetStream a moment later.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let events: usize = alerts.read_everything().await.values().map(Vec::len).sum();
        if events == 3 {
            break;
        }
        assert!(
            events < 3 && std::time::Instant::now() < deadline,
            "{events} events of 3"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_module_created_through_one_node_is_read_through_the_other() {
    let Some(cluster) = Cluster::start().await else {
        return;
    };
    cluster.api_a.register_device("host").await;
    let reply = cluster
        .api_a
        .call(
            Method::PUT,
            "/devices/host/modules/m1",
            Some(json!({"managedBy": "ops"})),
            None,
        )
        .await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    let reply = cluster
        .api_a
        .call(
            Method::PATCH,
            "/twins/host/modules/m1",
            Some(json!({"tags": {"role": "x"}})),
            Some("*"),
        )
        .await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    // Read-your-writes across nodes: B's reads wait for every acknowledged write.
    let reply = cluster
        .api_b
        .call(Method::GET, "/twins/host/modules/m1", None, None)
        .await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert_eq!(reply.body["tags"]["role"], "x");
    let reply = cluster
        .api_b
        .call(Method::DELETE, "/devices/host", None, Some("*"))
        .await;
    assert_eq!(reply.status, 204, "{}", reply.body);
    let reply = cluster
        .api_a
        .call(Method::GET, "/devices/host/modules/m1", None, None)
        .await;
    assert_eq!(
        reply.status, 404,
        "deleted with its device, through the other node: {}",
        reply.body
    );
}
