//! The official Node SDKs against a cluster of three nodes behind HAProxy, as a fleet would use it: 300
//! devices over `Mqtt` and `Amqp` through the balancer, back ends writing desired properties through
//! every node, and one node killed in the middle (`sdk-tests/node/cluster_fleet.js`): every device ends
//! with the last desired version and every acknowledged reported patch is in its twin.
//!
//! Needs PostgreSQL, NATS and HAProxy as the cluster tests do (`.ci/run` provides them), and the Node SDK
//! (`TWINHUB_SKIP_SDK_TESTS=1` skips it on a developer machine, never in CI).

mod support;

use support::balancer::Balancer;
use support::database::Database;
use support::{run_node, sdk_tests_enabled, TestHub};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_sdk_fleet_of_300_through_haproxy_goes_on_when_a_node_is_killed() {
    if !sdk_tests_enabled() {
        println!("skipped (TWINHUB_SKIP_SDK_TESTS=1)");
        return;
    }
    let Some(database) = Database::create().await else {
        return;
    };
    let store = database.store_url();
    let bus = std::env::var("TWINHUB_TEST_NATS_URL").unwrap_or_else(|_| "nats://127.0.0.1:4222".into());
    let balancer_address = support::free_loopback_address();
    let hostname = balancer_address.to_string();
    let a = TestHub::start_named(&hostname, &["--store", &store, "--bus", &bus]);
    let b = TestHub::start_node_of(&a, &["--store", &store, "--bus", &bus]);
    let c = TestHub::start_node_of(&a, &["--store", &store, "--bus", &bus]);
    let Some(_balancer) = Balancer::start(balancer_address, &[a.address(), b.address(), c.address()]) else {
        assert!(std::env::var("CI").is_err(), "CI installs HAProxy");
        eprintln!("skipped: HAProxy is not installed");
        return;
    };
    let nodes = [&a, &b, &c].map(|node| node.address().to_string()).join(",");
    let output = run_node(
        "cluster_fleet.js",
        &a,
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
    let connected_to = |node: &TestHub| node.log().matches("device connected").count();
    assert!(connected_to(&b) > 0, "no device was on the killed node");
    assert!(connected_to(&a) > 0 && connected_to(&c) > 0, "devices on every node");
    database.drop_now().await;
}
