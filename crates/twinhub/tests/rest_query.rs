//! `POST /devices/query` over real HTTPS: results, read-your-writes, paging headers, errors.

mod rest_client;
mod support;

use reqwest::Method;
use rest_client::Service;
use serde_json::json;
use support::TestHub;

async fn create(api: &Service, ids: &[&str]) {
    let devices: Vec<_> = ids.iter().map(|id| json!({"id": id, "importMode": "create"})).collect();
    let reply = api.call(Method::POST, "/devices", Some(json!(devices)), None).await;
    assert_eq!(reply.status, 200, "{}", reply.body);
}

#[tokio::test]
async fn a_query_sees_every_acknowledged_write() {
    // Scenario: the seed's back-end app: tag a device, then query right away; the tag is visible at once.
    let hub = TestHub::start();
    let api = Service::new(&hub.owner_connection_string(), &hub.ca_path());
    create(&api, &["myDeviceId", "other"]).await;
    let patch = json!({"tags": {"location": {"region": "US", "plant": "Redmond43"}}});
    assert_eq!(
        api.call(Method::PATCH, "/twins/myDeviceId", Some(patch), Some("*"))
            .await
            .status,
        200
    );
    let reply = api
        .query(
            "SELECT * FROM devices WHERE tags.location.plant = 'Redmond43'",
            None,
            None,
        )
        .await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert_eq!(reply.headers["x-ms-item-type"], "twin");
    assert!(reply.headers.get("x-ms-continuation").is_none());
    let twins = reply.body.as_array().unwrap();
    assert_eq!(twins.len(), 1);
    let twin = api.call(Method::GET, "/twins/myDeviceId", None, None).await.body;
    assert_eq!(twins[0], twin, "SELECT * returns the twin exactly as GET does");

    let reported = "SELECT * FROM devices WHERE tags.location.plant = 'Redmond43' AND properties.reported.connectivity.type = 'cellular'";
    assert_eq!(api.query(reported, None, None).await.body, json!([]));

    let count = api.query("SELECT COUNT() AS n FROM devices", None, None).await;
    assert_eq!(
        (count.headers["x-ms-item-type"].to_str().unwrap(), count.body.clone()),
        ("raw", json!([{"n": 2}]))
    );
}

#[tokio::test]
async fn pages_follow_the_continuation_and_the_last_has_none() {
    let hub = TestHub::start();
    let api = Service::new(&hub.owner_connection_string(), &hub.ca_path());
    let ids: Vec<String> = (0..7).map(|n| format!("page{n}")).collect();
    create(&api, &ids.iter().map(String::as_str).collect::<Vec<_>>()).await;
    let mut seen = Vec::new();
    let mut token: Option<String> = None;
    let mut pages = 0;
    loop {
        let reply = api
            .query("SELECT deviceId FROM devices", Some("3"), token.as_deref())
            .await;
        assert_eq!(reply.status, 200, "{}", reply.body);
        pages += 1;
        seen.extend(
            reply
                .body
                .as_array()
                .unwrap()
                .iter()
                .map(|row| row["deviceId"].as_str().unwrap().to_owned()),
        );
        match reply.headers.get("x-ms-continuation") {
            Some(next) => {
                assert!(
                    !next.is_empty(),
                    "an empty continuation makes the Node SDK loop forever"
                );
                token = Some(next.to_str().unwrap().to_owned());
            }
            None => break,
        }
    }
    assert_eq!((pages, seen), (3, ids));
}

#[tokio::test]
async fn bad_queries_are_400_with_the_place_of_the_error() {
    let hub = TestHub::start();
    let api = Service::new(&hub.owner_connection_string(), &hub.ca_path());
    let reply = api.query("SELECT * FROM devices WHERE", None, None).await;
    assert_eq!((reply.status, reply.error_code().as_str()), (400, "ArgumentInvalid"));
    assert!(
        reply
            .message()
            .contains("line 1, column 28: expected an expression after WHERE"),
        "{}",
        reply.message()
    );
    let reply = api.query("SELECT * FROM devices", Some("0"), None).await;
    assert_eq!(reply.status, 400);
    let reply = api.query("SELECT * FROM devices", None, Some("not-a-token")).await;
    assert_eq!(reply.status, 400);
    let reply = api
        .call(Method::POST, "/devices/query", Some(json!({"sql": "x"})), None)
        .await;
    assert_eq!(reply.status, 400);
}

#[tokio::test]
async fn the_cli_prints_query_results_as_table_and_json() {
    let hub = TestHub::start();
    let api = Service::new(&hub.owner_connection_string(), &hub.ca_path());
    create(&api, &["cli1", "cli2"]).await;
    let patch = json!({"tags": {"location": {"region": "US"}}});
    assert_eq!(
        api.call(Method::PATCH, "/twins/cli2", Some(patch), Some("*"))
            .await
            .status,
        200
    );
    let run = |args: &[&str]| {
        let output = std::process::Command::new(env!("CARGO_BIN_EXE_twinhub"))
            .arg("query")
            .args(args)
            .arg("--data-dir")
            .arg(hub.data_dir())
            .output()
            .unwrap();
        assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
        String::from_utf8(output.stdout).unwrap()
    };
    let json_out = run(&[
        "SELECT deviceId, tags.location.region AS region FROM devices",
        "--json",
        "--page-size",
        "1",
    ]);
    let rows: serde_json::Value = serde_json::from_str(&json_out).unwrap();
    assert_eq!(
        rows,
        json!([{"deviceId": "cli1"}, {"deviceId": "cli2", "region": "US"}])
    );
    let table = run(&["SELECT * FROM devices WHERE tags.location.region = 'US'"]);
    let lines: Vec<&str> = table.lines().collect();
    assert!(lines[0].starts_with("deviceId") && lines[0].contains("tags"), "{table}");
    assert!(lines.len() == 2 && lines[1].starts_with("cli2"), "{table}");
}
