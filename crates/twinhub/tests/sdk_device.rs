//! Devices through the official device SDKs, unmodified, against a real hub: Node `azure-iot-device`
//! over `Mqtt` and `MqttWs` (`sdk-tests/node/device.test.js`) and Python `azure-iot-device` over MQTT
//! and WebSockets (`sdk-tests/python/device_test.py`), each with its service SDK as the back end.
//! Each script runs the seed's device and back-end apps, desired properties with their version, SAS
//! renewal (a full reconnect that subscribes to nothing again), and convergence after being away.
//!
//! `TWINHUB_SKIP_SDK_TESTS=1` skips these tests on a developer machine (never in CI).

mod support;

use support::{run_node, run_python, sdk_tests_enabled, TestHub};

/// Runs one device script against a fresh hub, then checks from the hub's log that the device came
/// back on its persistent session at least `reconnects` times (token renewals and reopening).
fn run_device_script(
    name: &str,
    run: fn(&str, &TestHub, &[(&str, String)]) -> std::process::Output,
    script: &str,
    env: &[(&str, &str)],
    reconnects: usize,
) {
    if !sdk_tests_enabled() {
        println!("{name}: skipped (TWINHUB_SKIP_SDK_TESTS=1)");
        return;
    }
    let hub = TestHub::start();
    let device_id = name.replace('_', "-");
    let mut env: Vec<(&str, String)> = env.iter().map(|(k, v)| (*k, v.to_string())).collect();
    env.push(("TWINHUB_DEVICE_ID", device_id.clone()));
    let output = run(script, &hub, &env);
    println!("{name}: {script} passed:\n{}", String::from_utf8_lossy(&output.stdout));
    let log = hub.log();
    let resumed = log
        .lines()
        .filter(|line| {
            line.contains("device connected")
                && line.contains(&format!("client_id={device_id} "))
                && line.contains("session_present=true")
        })
        .count();
    assert!(
        resumed >= reconnects,
        "{name}: expected at least {reconnects} reconnects on the persistent session, saw {resumed}:\n{log}"
    );
}

#[test]
fn node_device_sdk_over_mqtt() {
    run_device_script(
        "node_mqtt",
        run_node,
        "device.test.js",
        &[("TWINHUB_TRANSPORT", "Mqtt")],
        3,
    );
}

#[test]
fn node_device_sdk_over_mqtt_websockets() {
    run_device_script(
        "node_mqtt_ws",
        run_node,
        "device.test.js",
        &[("TWINHUB_TRANSPORT", "MqttWs")],
        3,
    );
}

#[test]
fn python_device_sdk_over_mqtt() {
    run_device_script(
        "py_mqtt",
        run_python,
        "device_test.py",
        &[("TWINHUB_WEBSOCKETS", "0")],
        3,
    );
}

#[test]
fn python_device_sdk_over_mqtt_websockets() {
    run_device_script(
        "py_mqtt_ws",
        run_python,
        "device_test.py",
        &[("TWINHUB_WEBSOCKETS", "1")],
        3,
    );
}

/// 200 Node SDK devices on one hub at once: all connected (the hub's own count, by query), each
/// reporting 5 times, every acknowledged patch in the twins. The same script measures larger fleets
/// (`node sdk-tests/node/fleet.js 5000 20`).
#[test]
fn node_device_sdk_fleet_of_200() {
    if !sdk_tests_enabled() {
        println!("node_device_sdk_fleet_of_200: skipped (TWINHUB_SKIP_SDK_TESTS=1)");
        return;
    }
    let hub = TestHub::start();
    let output = run_node(
        "fleet.js",
        &hub,
        &[
            ("TWINHUB_FLEET_DEVICES", "200".into()),
            ("TWINHUB_FLEET_PATCHES", "5".into()),
        ],
    );
    println!("{}", String::from_utf8_lossy(&output.stdout));
}

/// Over AMQP a token renewal is a CBS put-token on the same connection, not a reconnect.
#[test]
fn node_device_sdk_over_amqp() {
    run_device_script(
        "node_amqp",
        run_node,
        "device.test.js",
        &[("TWINHUB_TRANSPORT", "Amqp")],
        0,
    );
}

#[test]
fn node_device_sdk_over_amqp_websockets() {
    run_device_script(
        "node_amqp_ws",
        run_node,
        "device.test.js",
        &[("TWINHUB_TRANSPORT", "AmqpWs")],
        0,
    );
}

/// uAMQP (the Python service SDK's AMQP client): SASL MSSBCBS and a CBS put-token with a service token;
/// its cloud-to-device send is queued with the right key, refused at CBS with a wrong one.
#[test]
fn python_service_sdk_authenticates_over_amqp() {
    if !sdk_tests_enabled() {
        println!("python_service_sdk_authenticates_over_amqp: skipped (TWINHUB_SKIP_SDK_TESTS=1)");
        return;
    }
    let hub = TestHub::start_with_log("info,twinhub_server::amqp=debug");
    let output = run_python("amqp_service_test.py", &hub, &[]);
    println!("{}", String::from_utf8_lossy(&output.stdout));
    let log = hub.log();
    assert!(
        log.contains("CBS put-token accepted for a back end"),
        "the right key passed CBS:\n{log}"
    );
    assert!(
        log.contains("CBS put-token for the hub refused"),
        "the wrong key was refused by CBS:\n{log}"
    );
    assert!(
        !log.contains("message refused"),
        "the message with the right key was queued:\n{log}"
    );
    assert!(
        log.contains("mechanism=MSSBCBS"),
        "uAMQP came in through SASL MSSBCBS:\n{log}"
    );
}

/// The Node SDK maintainers' twin scenarios (`sdk-tests/node/twin_scenarios.test.js`): null for a whole
/// section, a subscription made while the back end writes in a tight loop, reported null refused.
fn node_twin_scenarios(name: &str, transport: &str) {
    if !sdk_tests_enabled() {
        println!("{name}: skipped (TWINHUB_SKIP_SDK_TESTS=1)");
        return;
    }
    let hub = TestHub::start();
    let output = run_node(
        "twin_scenarios.test.js",
        &hub,
        &[
            ("TWINHUB_TRANSPORT", transport.into()),
            ("TWINHUB_DEVICE_ID", name.replace('_', "-")),
        ],
    );
    println!("{name} passed:\n{}", String::from_utf8_lossy(&output.stdout));
}

#[test]
fn node_twin_scenarios_over_mqtt() {
    node_twin_scenarios("twin_mqtt", "Mqtt");
}

#[test]
fn node_twin_scenarios_over_mqtt_websockets() {
    node_twin_scenarios("twin_mqtt_ws", "MqttWs");
}

#[test]
fn node_twin_scenarios_over_amqp() {
    node_twin_scenarios("twin_amqp", "Amqp");
}

#[test]
fn node_twin_scenarios_over_amqp_websockets() {
    node_twin_scenarios("twin_amqp_ws", "AmqpWs");
}
