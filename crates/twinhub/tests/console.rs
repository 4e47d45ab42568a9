//! The web console in a real browser: `sdk-tests/node/console.test.js` drives Debian's Chromium with
//! Playwright against a real hub and writes a screenshot of each page to
//! `target/console-screenshots`. Also: the console is served with a content security policy that keeps
//! it to the hub's own origin, and `--no-console` turns it off.
//!
//! `TWINHUB_SKIP_SDK_TESTS=1` skips the browser test on a developer machine (never in CI).

mod rest_client;
mod support;

use rest_client::Service;
use support::{run_node, sdk_tests_enabled, workspace_root, TestHub};

#[test]
fn an_operator_signs_in_watches_a_device_edits_its_twin_and_queries_in_a_browser() {
    if !sdk_tests_enabled() {
        println!("console: skipped (TWINHUB_SKIP_SDK_TESTS=1)");
        return;
    }
    let hub = TestHub::start();
    let screenshots = workspace_root().join("target/console-screenshots");
    let output = run_node(
        "console.test.js",
        &hub,
        &[
            ("TWINHUB_READ_CONNECTION_STRING", hub.connection_string("registryRead")),
            ("TWINHUB_SCREENSHOTS", screenshots.display().to_string()),
        ],
    );
    println!("{}", String::from_utf8_lossy(&output.stdout));
    for page in [
        "sign-in",
        "devices",
        "device",
        "conflict",
        "query",
        "overview",
        "devices-dark",
        "devices-200-percent",
        "read-only",
    ] {
        assert!(
            screenshots.join(format!("{page}.png")).exists(),
            "a screenshot of {page}"
        );
    }
}

#[tokio::test]
async fn the_console_is_served_with_its_own_origin_only_and_can_be_turned_off() {
    let hub = TestHub::start();
    let api = Service::new(&hub.owner_connection_string(), &hub.ca_path());
    let base = format!("https://{}", api.connection.host_name);
    let page = api.http.get(format!("{base}/console/")).send().await.unwrap();
    assert_eq!(page.status(), 200);
    let policy = page.headers()["content-security-policy"].to_str().unwrap().to_owned();
    assert!(
        policy.contains("default-src 'self'") && policy.contains("connect-src 'self'"),
        "{policy}"
    );
    assert!(page.text().await.unwrap().contains("app.js"));
    let script = api.http.get(format!("{base}/console/app.js")).send().await.unwrap();
    assert!(script.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/javascript"));
    assert_eq!(
        api.http
            .get(format!("{base}/console/nope.js"))
            .send()
            .await
            .unwrap()
            .status(),
        404
    );

    let off = TestHub::start_with(&["--no-console"]);
    let api = Service::new(&off.owner_connection_string(), &off.ca_path());
    let url = format!("https://{}/console/", api.connection.host_name);
    assert_eq!(api.http.get(url).send().await.unwrap().status(), 404);
}
