//! Message routes as a user manages them: the routes file at start (a file a hub cannot use is refused
//! before it serves, with the route and the place in its condition named, as a query error names them),
//! and the REST API and CLI while the hub runs (routes added, tested, removed, the fallback switched; all
//! of it kept across a restart).

mod rest_client;
mod support;

use reqwest::Method;
use rest_client::Service;
use serde_json::json;
use std::process::Command;
use support::TestHub;

fn serve_with_routes(routes: &str) -> (bool, String) {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("routes.toml");
    std::fs::write(&file, routes).unwrap();
    let address = support::free_loopback_address().to_string();
    let output = Command::new(env!("CARGO_BIN_EXE_twinhub"))
        .args(["serve", "--data-dir"])
        .arg(dir.path().join("data"))
        .args(["--hostname", &address, "--bind", &address, "--routes"])
        .arg(&file)
        .output()
        .unwrap();
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[test]
fn a_routes_file_the_hub_cannot_use_is_refused_at_start() {
    let (started, error) = serve_with_routes(
        "[[routes]]\nname = \"hot\"\nsource = \"DeviceMessages\"\ncondition = \"$body.temperature >\"\nendpoint = \"events\"\n",
    );
    assert!(!started);
    assert!(error.contains("route \"hot\"") && error.contains("column"), "{error}");

    let (started, error) =
        serve_with_routes("[[routes]]\nname = \"hot\"\nsource = \"DeviceMessages\"\nendpoint = \"somewhere\"\n");
    assert!(!started);
    assert!(
        error.contains("somewhere") && error.contains("does not exist"),
        "{error}"
    );

    let (started, error) =
        serve_with_routes("[[routes]]\nname = \"hot\"\nsource = \"Nothing\"\nendpoint = \"events\"\n");
    assert!(!started);
    assert!(
        error.contains("not a valid routes file") && error.contains("Nothing"),
        "{error}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routes_change_while_the_hub_runs_and_are_kept_across_a_restart() {
    let mut hub = TestHub::start();
    let list = hub.cli(&["route", "list"]);
    assert_eq!(
        list.trim(),
        "fallback route: on",
        "a new hub: no routes, the fallback on"
    );

    hub.cli(&[
        "route",
        "add",
        "critical",
        "--source",
        "DeviceMessages",
        "--condition",
        "level = 'critical'",
    ]);
    hub.cli(&[
        "route",
        "add",
        "north",
        "--source",
        "DeviceMessages",
        "--condition",
        "$twin.tags.plant = 'north'",
    ]);
    hub.cli(&["route", "add", "twins", "--source", "TwinChangeEvents"]);
    hub.cli(&["route", "fallback", "off"]);
    hub.cli(&["device", "create", "d1"]);

    let test = |hub: &TestHub, properties: &[&str]| {
        let mut args = vec!["route", "test", "--device", "d1"];
        for property in properties {
            args.extend(["--property", property]);
        }
        hub.cli(&args)
    };
    let critical = test(&hub, &["level=critical"]);
    assert!(
        critical.contains("routes: critical") && critical.contains("(events): yes"),
        "{critical}"
    );
    let normal = test(&hub, &["level=normal"]);
    assert!(
        normal.contains("no route takes it") && normal.contains("(events): no"),
        "{normal}"
    );
    hub.cli(&[
        "route",
        "add",
        "hot",
        "--source",
        "DeviceMessages",
        "--condition",
        "$body.temperature > 30",
    ]);
    let body_test = |body: &str, content_type: &str| {
        hub.cli(&[
            "route",
            "test",
            "--device",
            "d1",
            "--body",
            body,
            "--content-type",
            content_type,
            "--content-encoding",
            "utf-8",
        ])
    };
    let hot = body_test(r#"{"temperature": 35}"#, "application/json");
    assert!(hot.contains("routes: hot"), "{hot}");
    let not_json = body_test(r#"{"temperature": 35}"#, "text/plain");
    assert!(
        not_json.contains("no route takes it"),
        "$body reads JSON only: {not_json}"
    );
    hub.cli(&["route", "remove", "hot"]);

    // A $twin condition reads the device's twin as it is now.
    let api = Service::new(&hub.owner_connection_string(), &hub.ca_path());
    let reply = api
        .call(
            Method::PATCH,
            "/twins/d1",
            Some(json!({"tags": {"plant": "north"}})),
            Some("*"),
        )
        .await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    let north = test(&hub, &["level=normal"]);
    assert!(north.contains("routes: north"), "{north}");

    // Refused changes name what is wrong and change nothing.
    let reply = api
        .call(
            Method::PUT,
            "/twinhub/routing/routes/broken",
            Some(json!({"source": "DeviceMessages", "condition": "level =", "endpoint": "events"})),
            None,
        )
        .await;
    assert_eq!(reply.status, 400, "{}", reply.body);
    assert!(
        reply.message().contains("broken") && reply.message().contains("column"),
        "{}",
        reply.body
    );
    let reply = api
        .call(
            Method::PUT,
            "/twinhub/routing/routes/elsewhere",
            Some(json!({"source": "DeviceMessages", "endpoint": "nowhere"})),
            None,
        )
        .await;
    assert_eq!(reply.status, 400, "{}", reply.body);
    let reply = api
        .call(Method::DELETE, "/twinhub/routing/routes/absent", None, None)
        .await;
    assert_eq!(reply.status, 404, "{}", reply.body);
    assert_eq!(reply.error_code(), "RouteNotFound");

    // Kept across a restart (in the store, like every durable state).
    hub.restart();
    let list = hub.cli(&["route", "list"]);
    assert!(list.starts_with("fallback route: off"), "{list}");
    for name in ["critical", "north", "twins"] {
        assert!(list.contains(name), "{name} after the restart: {list}");
    }
    assert!(!list.contains("broken"), "{list}");
    hub.cli(&["route", "remove", "critical"]);
    let list = hub.cli(&["route", "list"]);
    assert!(!list.contains("critical") && list.contains("north"), "{list}");
    let after = test(&hub, &["level=critical"]);
    assert!(
        after.contains("routes: north") && !after.contains("critical"),
        "{after}"
    );
}
