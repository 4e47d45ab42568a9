//! The official Node SDKs against a cluster of three nodes behind HAProxy, exactly as against one hub:
//! - the seed's device and back-end apps (`sdk-tests/node/device.test.js`) over `Mqtt`, `MqttWs` and
//!   `Amqp`, whose SAS renewals reconnect through the balancer to any node, so the device's session
//!   and its desired properties follow it from node to node;
//! - a fleet of 300 devices over `Mqtt` and `Amqp` with back ends writing desired properties through
//!   every node and one node killed in the middle (`sdk-tests/node/cluster_fleet.js`): every device ends
//!   with the last desired version and every acknowledged reported patch is in its twin.
//!
//! Needs PostgreSQL, NATS and HAProxy as the cluster tests do (`.ci/run` provides them), and the Node SDK
//! (`TWINHUB_SKIP_SDK_TESTS=1` skips it on a developer machine, never in CI).

mod support;

use support::balancer::Balancer;
use support::database::Database;
use support::{run_node, sdk_tests_enabled, TestHub};

/// Three nodes on one database and NATS, behind HAProxy; the nodes' host name is the balancer's.
struct BalancedCluster {
    nodes: [TestHub; 3],
    database: Database,
    _balancer: Balancer,
}

impl BalancedCluster {
    async fn start() -> Option<BalancedCluster> {
        if !sdk_tests_enabled() {
            println!("skipped (TWINHUB_SKIP_SDK_TESTS=1)");
            return None;
        }
        let database = Database::create().await?;
        let store = database.store_url();
        let bus = std::env::var("TWINHUB_TEST_NATS_URL").unwrap_or_else(|_| "nats://127.0.0.1:4222".into());
        let balancer_address = support::free_loopback_address();
        let hostname = balancer_address.to_string();
        let a = TestHub::start_named(&hostname, &["--store", &store, "--bus", &bus]);
        let b = TestHub::start_node_of(&a, &["--store", &store, "--bus", &bus]);
        let c = TestHub::start_node_of(&a, &["--store", &store, "--bus", &bus]);
        let Some(balancer) = Balancer::start(balancer_address, &[a.address(), b.address(), c.address()]) else {
            assert!(std::env::var("CI").is_err(), "CI installs HAProxy");
            eprintln!("skipped: HAProxy is not installed");
            return None;
        };
        Some(BalancedCluster {
            nodes: [a, b, c],
            database,
            _balancer: balancer,
        })
    }

    /// How many device connections each node took.
    fn connections_per_node(&self) -> Vec<usize> {
        self.nodes
            .iter()
            .map(|node| node.log().matches("device connected").count())
            .collect()
    }
}

async fn seed_apps_through_the_balancer(transport: &str) {
    let Some(cluster) = BalancedCluster::start().await else {
        return;
    };
    let device_id = format!("seed-{}", transport.to_lowercase());
    let output = run_node(
        "device.test.js",
        &cluster.nodes[0],
        &[
            ("TWINHUB_TRANSPORT", transport.into()),
            ("TWINHUB_DEVICE_ID", device_id),
        ],
    );
    println!("{}", String::from_utf8_lossy(&output.stdout));
    let per_node = cluster.connections_per_node();
    println!("device connections per node: {per_node:?}");
    if transport.starts_with("Mqtt") {
        // Each renewal is a new connection, which the balancer gave to another node: the session and
        // the desired properties followed the device.
        let nodes_used = per_node.iter().filter(|&&count| count > 0).count();
        assert!(
            nodes_used >= 2,
            "the device's connections all went to one node: {per_node:?}"
        );
    }
    cluster.database.drop_now().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_seed_apps_over_mqtt_through_haproxy() {
    seed_apps_through_the_balancer("Mqtt").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_seed_apps_over_mqtt_websockets_through_haproxy() {
    seed_apps_through_the_balancer("MqttWs").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_seed_apps_over_amqp_through_haproxy() {
    seed_apps_through_the_balancer("Amqp").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_sdk_fleet_of_300_through_haproxy_goes_on_when_a_node_is_killed() {
    let Some(cluster) = BalancedCluster::start().await else {
        return;
    };
    let [a, b, c] = &cluster.nodes;
    let nodes = [a, b, c].map(|node| node.address().to_string()).join(",");
    let output = run_node(
        "cluster_fleet.js",
        a,
        &[
            ("TWINHUB_NODES", nodes),
            ("TWINHUB_KILL_PID", b.pid().to_string()),
            ("TWINHUB_KILL_NODE", b.address().to_string()),
            (
                "TWINHUB_FLEET_DEVICES",
                std::env::var("TWINHUB_FLEET_DEVICES").unwrap_or_else(|_| "300".into()),
            ),
        ],
    );
    println!("{}", String::from_utf8_lossy(&output.stdout));
    // The balancer spread the devices: the killed node held some, which went on through the others.
    let per_node = cluster.connections_per_node();
    assert!(
        per_node.iter().all(|&count| count > 0),
        "devices on every node: {per_node:?}"
    );
    cluster.database.drop_now().await;
}
