//! Concurrency and durability over real HTTPS against a real hub process.

mod rest_client;
mod support;

use reqwest::Method;
use rest_client::Service;
use serde_json::json;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};
use support::TestHub;

const CLIENTS: usize = 16;
const DEVICES: usize = 8;

async fn create_devices(api: &Service) {
    let devices: Vec<_> = (0..DEVICES)
        .map(|n| json!({"id": format!("load{n}"), "importMode": "create"}))
        .collect();
    assert_eq!(
        api.call(Method::POST, "/devices", Some(json!(devices)), None)
            .await
            .status,
        200
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sixteen_concurrent_clients_lose_and_duplicate_no_version() {
    // Scenario: 16 clients, each on its own connection, alternate PATCH (own key, rising counter) and GET
    // on 8 shared twins. Afterwards every twin's desired versions handed out are exactly 2..=final with no
    // gap or repeat, and each client's last value is what the twin holds.
    let hub = TestHub::start();
    let api = Arc::new(Service::new(&hub.owner_connection_string(), &hub.ca_path()));
    create_devices(&api).await;
    const PATCHES_PER_CLIENT: usize = 150;
    let started = Instant::now();
    let mut clients = Vec::new();
    for client in 0..CLIENTS {
        let api = Service::new(&hub.owner_connection_string(), &hub.ca_path());
        clients.push(tokio::spawn(async move {
            let mut versions: Vec<(usize, u64)> = Vec::new();
            let mut gets = 0;
            for n in 0..PATCHES_PER_CLIENT {
                let device = (client + n) % DEVICES;
                let patch = json!({"properties": {"desired": {format!("client{client}"): n}}});
                let reply = api
                    .call(Method::PATCH, &format!("/twins/load{device}"), Some(patch), Some("*"))
                    .await;
                assert_eq!(reply.status, 200, "{}", reply.body);
                versions.push((
                    device,
                    reply.body["properties"]["desired"]["$version"].as_u64().unwrap(),
                ));
                let read = api
                    .call(
                        Method::GET,
                        &format!("/twins/load{}", (device + 3) % DEVICES),
                        None,
                        None,
                    )
                    .await;
                assert_eq!(read.status, 200);
                gets += 1;
            }
            (versions, gets)
        }));
    }
    let mut by_device: BTreeMap<usize, Vec<u64>> = BTreeMap::new();
    let mut total_gets = 0;
    for client in clients {
        let (versions, gets) = client.await.unwrap();
        total_gets += gets;
        for (device, version) in versions {
            by_device.entry(device).or_default().push(version);
        }
    }
    let elapsed = started.elapsed().as_secs_f64();
    let total_patches = CLIENTS * PATCHES_PER_CLIENT;
    println!(
        "load: {total_patches} PATCH and {total_gets} GET in {elapsed:.2}s with {CLIENTS} clients: \
         {:.0} PATCH/s, {:.0} GET/s (debug or release as built)",
        total_patches as f64 / elapsed,
        total_gets as f64 / elapsed
    );
    for (device, mut versions) in by_device {
        versions.sort_unstable();
        let expected: Vec<u64> = (2..2 + versions.len() as u64).collect();
        assert_eq!(versions, expected, "load{device}: lost or duplicated desired versions");
        let twin = api
            .call(Method::GET, &format!("/twins/load{device}"), None, None)
            .await
            .body;
        assert_eq!(
            twin["properties"]["desired"]["$version"].as_u64(),
            expected.last().copied()
        );
        for client in 0..CLIENTS {
            // The last patch this client sent to this device is the value the twin holds.
            let last = (0..PATCHES_PER_CLIENT)
                .rev()
                .find(|n| (client + n) % DEVICES == device)
                .unwrap();
            assert_eq!(
                twin["properties"]["desired"][format!("client{client}")],
                json!(last),
                "load{device} client{client}"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kill_9_during_load_loses_no_acknowledged_patch() {
    // Scenario: 16 clients patch continuously; the hub is killed with SIGKILL mid-load. After a restart,
    // every patch that was acknowledged (200) is there: each client's value is at least its last
    // acknowledged one, and each twin's desired version counts at least every acknowledged patch.
    let mut hub = TestHub::start();
    let api = Service::new(&hub.owner_connection_string(), &hub.ca_path());
    create_devices(&api).await;
    let acknowledged = Arc::new(std::sync::Mutex::new(BTreeMap::<(usize, usize), u64>::new()));
    let counts = Arc::new(std::sync::Mutex::new(vec![0u64; DEVICES]));
    let mut clients = Vec::new();
    for client in 0..CLIENTS {
        let api = Service::new(&hub.owner_connection_string(), &hub.ca_path());
        let acknowledged = Arc::clone(&acknowledged);
        let counts = Arc::clone(&counts);
        clients.push(tokio::spawn(async move {
            for n in 0u64.. {
                let device = (client + n as usize) % DEVICES;
                let patch = json!({"properties": {"desired": {format!("client{client}"): n}}});
                let url = format!("/twins/load{device}");
                let sent =
                    tokio::time::timeout(Duration::from_secs(5), api.call_checked(Method::PATCH, &url, patch)).await;
                match sent {
                    Ok(Some(200)) => {
                        acknowledged.lock().unwrap().insert((client, device), n);
                        counts.lock().unwrap()[device] += 1;
                    }
                    // The hub is gone: connection refused or reset.
                    _ => return,
                }
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    hub.kill9();
    for client in clients {
        client.await.unwrap();
    }
    let acknowledged = acknowledged.lock().unwrap().clone();
    let counts = counts.lock().unwrap().clone();
    assert!(counts.iter().sum::<u64>() > 100, "the load ran: {counts:?}");
    hub.restart();
    let api = Service::new(&hub.owner_connection_string(), &hub.ca_path());
    for (device, acknowledged_on_device) in counts.iter().enumerate() {
        let twin = api
            .call(Method::GET, &format!("/twins/load{device}"), None, None)
            .await
            .body;
        let desired = &twin["properties"]["desired"];
        assert!(
            desired["$version"].as_u64().unwrap() > *acknowledged_on_device,
            "load{device}: {acknowledged_on_device} acknowledged, {desired}"
        );
        for ((client, on_device), n) in &acknowledged {
            if *on_device == device {
                let held = desired[format!("client{client}")].as_u64().unwrap();
                assert!(
                    held >= *n,
                    "load{device} client{client}: acknowledged {n}, after restart {held}"
                );
            }
        }
    }
    println!(
        "kill -9: {} acknowledged patches all present after restart",
        counts.iter().sum::<u64>()
    );
}
