//! The service REST API over real HTTPS against a real hub process, checked on the wire: statuses,
//! IoT Hub error bodies, documents, versions, auth.

mod rest_client;
mod support;

use reqwest::Method;
use rest_client::{now, Service};
use serde_json::json;
use support::TestHub;

fn service(hub: &TestHub) -> Service {
    Service::new(&hub.owner_connection_string(), &hub.ca_path())
}

#[tokio::test]
async fn device_lifecycle_with_etags() {
    // Scenario:
    // - create with empty keys → 200, keys generated, etag, twin created with it
    // - create again → 409 DeviceAlreadyExists; update with a stale etag → 412; with the right one → 200
    // - delete → 204; get → 404 DeviceNotFound in IoT Hub's error format; the twin is gone too
    let hub = TestHub::start();
    let api = service(&hub);
    let body = json!({"deviceId": "dev1", "status": "enabled",
        "authentication": {"type": "sas", "symmetricKey": {"primaryKey": "", "secondaryKey": ""}}});
    let created = api.call(Method::PUT, "/devices/dev1", Some(body.clone()), None).await;
    assert_eq!(created.status, 200, "{}", created.body);
    assert!(created.headers["content-type"]
        .to_str()
        .unwrap()
        .starts_with("application/json"));
    let primary = created.body["authentication"]["symmetricKey"]["primaryKey"]
        .as_str()
        .unwrap();
    assert_eq!(primary.len(), 44);
    assert_eq!(created.body["connectionState"], "Disconnected");
    let etag = created.body["etag"].as_str().unwrap().to_owned();

    let again = api.call(Method::PUT, "/devices/dev1", Some(body.clone()), None).await;
    assert_eq!(
        (again.status, again.error_code().as_str()),
        (409, "DeviceAlreadyExists")
    );

    let disabled = json!({"deviceId": "dev1", "status": "disabled", "authentication": created.body["authentication"]});
    let stale = api
        .call(
            Method::PUT,
            "/devices/dev1",
            Some(disabled.clone()),
            Some("\"bm90LWl0\""),
        )
        .await;
    assert_eq!((stale.status, stale.error_code().as_str()), (412, "PreconditionFailed"));
    // Python sends the etag quoted, configurations unquoted: both match.
    let updated = api
        .call(
            Method::PUT,
            "/devices/dev1",
            Some(disabled.clone()),
            Some(&format!("\"{etag}\"")),
        )
        .await;
    assert_eq!(updated.status, 200, "{}", updated.body);
    assert_eq!(updated.body["status"], "disabled");
    assert_eq!(
        updated.body["authentication"]["symmetricKey"]["primaryKey"], primary,
        "keys kept when given"
    );
    let new_etag = updated.body["etag"].as_str().unwrap();
    assert_ne!(new_etag, etag);
    let unquoted = api
        .call(Method::PUT, "/devices/dev1", Some(disabled), Some(new_etag))
        .await;
    assert_eq!(unquoted.status, 200);

    let twin = api.call(Method::GET, "/twins/dev1", None, None).await;
    assert_eq!(twin.status, 200);
    assert_eq!(twin.body["deviceId"], "dev1");
    assert_eq!(twin.body["status"], "disabled");
    assert_eq!(twin.body["deviceEtag"], unquoted.body["etag"]);

    let deleted = api.call(Method::DELETE, "/devices/dev1", None, Some("\"*\"")).await;
    assert_eq!(deleted.status, 204);
    let missing = api.call(Method::GET, "/devices/dev1", None, None).await;
    assert_eq!((missing.status, missing.error_code().as_str()), (404, "DeviceNotFound"));
    assert!(missing.message().contains("dev1"));
    assert!(missing.body["ExceptionMessage"]
        .as_str()
        .unwrap()
        .starts_with("Tracking ID:"));
    let missing_twin = api.call(Method::GET, "/twins/dev1", None, None).await;
    assert_eq!(
        (missing_twin.status, missing_twin.error_code().as_str()),
        (404, "DeviceNotFound")
    );
}

#[tokio::test]
async fn twin_patch_replace_versions_and_metadata() {
    let hub = TestHub::start();
    let api = service(&hub);
    api.call(Method::PUT, "/devices/d", Some(json!({"deviceId": "d"})), None)
        .await;
    let fresh = api.call(Method::GET, "/twins/d", None, None).await.body;
    assert_eq!(
        (
            fresh["version"].as_u64(),
            fresh["properties"]["desired"]["$version"].as_u64()
        ),
        (Some(1), Some(1))
    );

    let tags = json!({"tags": {"location": {"region": "US", "plant": "Redmond43"}}});
    let tagged = api
        .call(
            Method::PATCH,
            "/twins/d",
            Some(tags),
            Some(&format!("\"{}\"", fresh["etag"].as_str().unwrap())),
        )
        .await;
    assert_eq!(tagged.status, 200, "{}", tagged.body);
    assert_eq!(tagged.body["tags"]["location"]["plant"], "Redmond43");
    assert_eq!(tagged.body["version"], 2);
    assert_eq!(
        tagged.body["properties"]["desired"]["$version"], 1,
        "tags do not move desired"
    );

    let stale = api
        .call(
            Method::PATCH,
            "/twins/d",
            Some(json!({"tags": {"a": 1}})),
            Some(&format!("\"{}\"", fresh["etag"].as_str().unwrap())),
        )
        .await;
    assert_eq!((stale.status, stale.error_code().as_str()), (412, "PreconditionFailed"));

    let desired = json!({"properties": {"desired": {"telemetryInterval": 30, "config": {"mode": "eco", "level": 2}}}});
    let patched = api.call(Method::PATCH, "/twins/d", Some(desired), Some("*")).await.body;
    assert_eq!(patched["properties"]["desired"]["$version"], 2);
    let metadata = &patched["properties"]["desired"]["$metadata"];
    assert_eq!(metadata["config"]["mode"]["$lastUpdatedVersion"], 2);
    assert!(metadata["config"]["$lastUpdated"].as_str().unwrap().ends_with('Z'));

    let removal = json!({"properties": {"desired": {"config": {"mode": null}}}});
    let removed = api.call(Method::PATCH, "/twins/d", Some(removal), None).await.body;
    assert_eq!(removed["properties"]["desired"]["config"], json!({"level": 2}));
    assert!(removed["properties"]["desired"]["$metadata"]["config"]
        .get("mode")
        .is_none());
    assert_eq!(
        removed["properties"]["desired"]["$metadata"]["config"]["$lastUpdatedVersion"],
        3
    );

    let replaced = api
        .call(
            Method::PUT,
            "/twins/d",
            Some(json!({"tags": {"new": true}, "properties": {"desired": {"only": 1}}})),
            Some("*"),
        )
        .await;
    assert_eq!(replaced.status, 200);
    assert_eq!(replaced.body["tags"], json!({"new": true}));
    assert_eq!(replaced.body["properties"]["desired"]["only"], 1);
    assert!(replaced.body["properties"]["desired"]
        .get("telemetryInterval")
        .is_none());
    assert_eq!(replaced.body["properties"]["desired"]["$version"], 4);
    assert_eq!(replaced.body["version"], 5);
}

#[tokio::test]
async fn twin_rules_are_refused_with_400_naming_the_rule_and_path() {
    let hub = TestHub::start();
    let api = service(&hub);
    api.call(Method::PUT, "/devices/d", Some(json!({"deviceId": "d"})), None)
        .await;
    let mut deep = json!({"leaf": 1});
    for level in 0..11 {
        deep = json!({ format!("l{level}"): deep });
    }
    let cases = [
        (json!({"tags": {"a": {"b.c": 1}}}), "contains '.'"),
        (json!({"tags": {"a": {"$b": 1}}}), "contains '$'"),
        (json!({"tags": {"with space": 1}}), "contains a space"),
        (
            json!({"properties": {"desired": {"list": [1, 2]}}}),
            "arrays are not supported ('properties.desired.list')",
        ),
        (
            json!({"properties": {"desired": {"big": 4_503_599_627_370_496_i64}}}),
            "'properties.desired.big': integers",
        ),
        (json!({"tags": deep}), "nested at most 10 levels"),
        (
            json!({"properties": {"reported": {"x": 1}}}),
            "written by the device only",
        ),
        (json!({"tags": "nope"}), "'tags' must be a JSON object"),
    ];
    for (body, needle) in cases {
        let reply = api.call(Method::PATCH, "/twins/d", Some(body.clone()), Some("*")).await;
        assert_eq!(reply.status, 400, "{body}: {}", reply.body);
        assert_eq!(reply.error_code(), "ArgumentInvalid");
        assert!(reply.message().contains(needle), "{body}: {}", reply.message());
    }
    let malformed = api
        .call_with(
            Method::PATCH,
            "/twins/d",
            Some(b"{\"tags\":".to_vec()),
            Some("*"),
            Some(api.token()),
        )
        .await;
    assert_eq!(
        (malformed.status, malformed.error_code().as_str()),
        (400, "IotHubFormatError")
    );
    // 8 KB of tags is the limit: the write that crosses it is refused and changes nothing.
    let chunk = "x".repeat(4000);
    for key in ["k1", "k2"] {
        assert_eq!(
            api.call(Method::PATCH, "/twins/d", Some(json!({"tags": {key: chunk}})), None)
                .await
                .status,
            200
        );
    }
    let over = api
        .call(Method::PATCH, "/twins/d", Some(json!({"tags": {"k3": chunk}})), None)
        .await;
    assert_eq!(over.status, 400);
    assert!(over.message().contains("'tags' would be"), "{}", over.message());
    let twin = api.call(Method::GET, "/twins/d", None, None).await.body;
    assert_eq!(twin["version"], 3, "refused writes change nothing");
    assert!(twin["tags"].get("k3").is_none());
}

#[tokio::test]
async fn sas_auth_and_permissions() {
    let hub = TestHub::start();
    let api = service(&hub);
    let host = api.connection.host_name.clone();
    let key = api.connection.key.clone();
    let path = "/devices/x";
    let get = |token: Option<String>| api.call_with(Method::GET, path, None, None, token);
    let unauthorized = |status: u16| status == 401;

    assert!(unauthorized(get(None).await.status));
    assert!(unauthorized(get(Some("Bearer abc".into())).await.status));
    let wrong_key = twinhub_core::sas::sign(
        &host,
        "d3Jvbmcta2V5LXdyb25nLWtleS13cm9uZy1rZXk=",
        Some("iothubowner"),
        now() + 60,
    )
    .unwrap();
    let reply = get(Some(wrong_key)).await;
    assert_eq!(
        (reply.status, reply.error_code().as_str()),
        (401, "IotHubUnauthorizedAccess")
    );
    let expired = twinhub_core::sas::sign(&host, &key, Some("iothubowner"), now() - 1).unwrap();
    assert!(unauthorized(get(Some(expired)).await.status));
    let other_host = twinhub_core::sas::sign("elsewhere.example", &key, Some("iothubowner"), now() + 60).unwrap();
    assert!(unauthorized(get(Some(other_host)).await.status));
    let no_policy = twinhub_core::sas::sign(&host, &key, None, now() + 60).unwrap();
    assert!(unauthorized(get(Some(no_policy)).await.status));
    // A valid owner token reaches the route: 404 for the missing device, not 401.
    assert_eq!(get(Some(api.token())).await.status, 404);

    // Per-policy permissions.
    let policy_token = |name: &str| {
        let connection_string = hub.connection_string(name);
        let parsed = twinhub_core::policy::ServiceConnectionString::parse(&connection_string).unwrap();
        twinhub_core::sas::sign(&parsed.host_name, &parsed.key, Some(name), now() + 60).unwrap()
    };
    let device_body = Some(br#"{"deviceId":"p1"}"#.to_vec());
    let read = policy_token("registryRead");
    assert_eq!(
        api.call_with(Method::GET, path, None, None, Some(read.clone()))
            .await
            .status,
        404
    );
    assert!(unauthorized(
        api.call_with(
            Method::PUT,
            "/devices/p1",
            device_body.clone(),
            None,
            Some(read.clone())
        )
        .await
        .status
    ));
    assert!(unauthorized(
        api.call_with(Method::GET, "/twins/x", None, None, Some(read))
            .await
            .status
    ));
    let read_write = policy_token("registryReadWrite");
    assert_eq!(
        api.call_with(Method::PUT, "/devices/p1", device_body, None, Some(read_write))
            .await
            .status,
        200
    );
    let service_policy = policy_token("service");
    assert_eq!(
        api.call_with(Method::GET, "/twins/p1", None, None, Some(service_policy.clone()))
            .await
            .status,
        200
    );
    assert!(unauthorized(
        api.call_with(Method::GET, "/devices/p1", None, None, Some(service_policy))
            .await
            .status
    ));
    let device_policy = policy_token("device");
    assert!(unauthorized(
        api.call_with(Method::GET, "/twins/p1", None, None, Some(device_policy.clone()))
            .await
            .status
    ));
    assert!(unauthorized(
        api.call_with(Method::GET, "/devices/p1", None, None, Some(device_policy))
            .await
            .status
    ));
}

#[tokio::test]
async fn bulk_list_statistics_and_path_encoding() {
    let hub = TestHub::start();
    let api = service(&hub);
    let created = api
        .call(
            Method::POST,
            "/devices",
            Some(json!([
                {"id": "b1", "importMode": "create"},
                {"id": "b2", "importMode": "Create", "status": "disabled"},
                {"id": "b3", "importMode": "create", "tags": {"floor": 3}},
            ])),
            None,
        )
        .await;
    assert_eq!(created.status, 200, "{}", created.body);
    assert_eq!(created.body["isSuccessful"], true);
    assert_eq!(
        api.call(Method::GET, "/twins/b3", None, None).await.body["tags"]["floor"],
        3
    );

    let mixed = api
        .call(
            Method::POST,
            "/devices",
            Some(json!([
                {"id": "b1", "importMode": "create"},
                {"id": "b4", "importMode": "create"},
                {"id": "nope", "importMode": "Delete"},
                {"id": "b2", "importMode": "DeleteIfMatchETag", "etag": "stale"},
            ])),
            None,
        )
        .await;
    assert_eq!(mixed.status, 400);
    assert_eq!(mixed.body["isSuccessful"], false);
    let codes: Vec<_> = mixed.body["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| (e["deviceId"].clone(), e["errorCode"].clone()))
        .collect();
    assert_eq!(
        codes,
        vec![
            (json!("b1"), json!("DeviceAlreadyExists")),
            (json!("nope"), json!("DeviceNotFound")),
            (json!("b2"), json!("PreconditionFailed")),
        ]
    );
    let duplicates = api
        .call(Method::POST, "/devices", Some(json!([{"id": "z"}, {"id": "z"}])), None)
        .await;
    assert_eq!(
        (duplicates.status, duplicates.error_code().as_str()),
        (400, "DeviceDefinedMultipleTimes")
    );
    let too_many: Vec<_> = (0..101).map(|n| json!({"id": format!("m{n}")})).collect();
    assert_eq!(
        api.call(Method::POST, "/devices", Some(json!(too_many)), None)
            .await
            .status,
        400
    );

    // Node lists `/devices/`, Python `/devices?top=N`.
    let listed = api.call(Method::GET, "/devices/", None, None).await.body;
    let ids: Vec<_> = listed
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["deviceId"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(ids, ["b1", "b2", "b3", "b4"]);
    assert_eq!(
        api.call(Method::GET, "/devices?top=2", None, None)
            .await
            .body
            .as_array()
            .unwrap()
            .len(),
        2
    );
    let statistics = api.call(Method::GET, "/statistics/devices", None, None).await.body;
    assert_eq!(
        statistics,
        json!({"totalDeviceCount": 4, "enabledDeviceCount": 3, "disabledDeviceCount": 1})
    );
    assert_eq!(
        api.call(Method::GET, "/statistics/service", None, None).await.body,
        json!({"connectedDeviceCount": 0})
    );

    // Ids are percent-decoded per segment: `$` is a valid id character, `/` and space are not.
    assert_eq!(
        api.call(
            Method::PUT,
            "/devices/%24edge",
            Some(json!({"deviceId": "$edge"})),
            None
        )
        .await
        .status,
        200
    );
    assert_eq!(
        api.call(Method::GET, "/twins/%24edge", None, None).await.body["deviceId"],
        "$edge"
    );
    let slash = api.call(Method::PUT, "/devices/a%2Fb", Some(json!({})), None).await;
    assert_eq!((slash.status, slash.error_code().as_str()), (400, "ArgumentInvalid"));
    let mismatch = api
        .call(Method::PUT, "/devices/one", Some(json!({"deviceId": "two"})), None)
        .await;
    assert_eq!(mismatch.status, 400);
}

#[tokio::test]
async fn data_survives_a_restart() {
    let mut hub = TestHub::start();
    let api = service(&hub);
    api.call(Method::PUT, "/devices/keep", Some(json!({"deviceId": "keep"})), None)
        .await;
    let before = api
        .call(
            Method::PATCH,
            "/twins/keep",
            Some(json!({"properties": {"desired": {"a": 1}}})),
            None,
        )
        .await
        .body;
    let connection_string = hub.owner_connection_string();
    hub.restart();
    assert_eq!(hub.owner_connection_string(), connection_string, "policies are reused");
    let api = service(&hub);
    let after = api.call(Method::GET, "/twins/keep", None, None).await.body;
    assert_eq!(after, before);
}

#[tokio::test]
async fn null_for_a_whole_section_clears_it_and_a_put_with_empty_sections_empties_them() {
    // Scenario (the SDKs' "null out all desired properties / tags", with and without If-Match *):
    // - PATCH {"properties":{"desired":null}} → 200, every desired property gone, desired $version + 1
    // - PATCH {"tags":null} → 200, every tag gone, desired $version unchanged
    // - PATCH {"properties":{"reported":null}} → 400: the back end never writes reported properties
    // - PUT with empty tags and desired → both emptied, desired $version + 1
    let hub = TestHub::start();
    let api = service(&hub);
    api.register_device("dev1").await;
    let fill = json!({"tags": {"a": 1, "b": {"c": 2}}, "properties": {"desired": {"x": 1, "y": {"z": 2}}}});
    for if_match in [None, Some("*")] {
        let filled = api
            .call(Method::PATCH, "/twins/dev1", Some(fill.clone()), Some("*"))
            .await;
        assert_eq!(filled.status, 200, "{}", filled.body);
        let version = filled.body["properties"]["desired"]["$version"].as_u64().unwrap();

        let cleared = api
            .call(
                Method::PATCH,
                "/twins/dev1",
                Some(json!({"properties": {"desired": null}})),
                if_match,
            )
            .await;
        assert_eq!(cleared.status, 200, "{}", cleared.body);
        let desired = &cleared.body["properties"]["desired"];
        assert_eq!((desired.get("x"), desired.get("y")), (None, None), "{desired}");
        assert_eq!(desired["$version"].as_u64(), Some(version + 1));
        assert_eq!(cleared.body["tags"], json!({"a": 1, "b": {"c": 2}}));

        let untagged = api
            .call(Method::PATCH, "/twins/dev1", Some(json!({"tags": null})), if_match)
            .await;
        assert_eq!(untagged.status, 200, "{}", untagged.body);
        assert_eq!(untagged.body["tags"], json!({}));
        assert_eq!(
            untagged.body["properties"]["desired"]["$version"].as_u64(),
            Some(version + 1)
        );

        let read = api.call(Method::GET, "/twins/dev1", None, None).await.body;
        assert_eq!(read["tags"], json!({}));
        assert_eq!(read["properties"]["desired"].get("x"), None);
    }

    let refused = api
        .call(
            Method::PATCH,
            "/twins/dev1",
            Some(json!({"properties": {"reported": null}})),
            Some("*"),
        )
        .await;
    assert_eq!(
        (refused.status, refused.error_code().as_str()),
        (400, "ArgumentInvalid")
    );

    let filled = api
        .call(Method::PATCH, "/twins/dev1", Some(fill.clone()), Some("*"))
        .await;
    let version = filled.body["properties"]["desired"]["$version"].as_u64().unwrap();
    let replaced = api
        .call(
            Method::PUT,
            "/twins/dev1",
            Some(json!({"tags": {}, "properties": {"desired": {}}})),
            Some("*"),
        )
        .await;
    assert_eq!(replaced.status, 200, "{}", replaced.body);
    assert_eq!(replaced.body["tags"], json!({}));
    let desired = &replaced.body["properties"]["desired"];
    assert_eq!(
        (desired.get("x"), desired["$version"].as_u64()),
        (None, Some(version + 1))
    );
}

#[tokio::test]
async fn edge_devices_get_their_scope_and_children_name_it() {
    // Scenario (IoT Edge gateways and their downstream devices):
    // - an edge device gets deviceScope ms-azure-iot-edge://<id>-<generationId>, parentScopes [], in its
    //   device and twin documents; a plain device has neither
    // - a leaf names the edge device in deviceScope and gets it in parentScopes; a nested edge device names
    //   it in parentScopes and keeps its own deviceScope; both on create, update and bulk
    // - a scope that names no device, a device that is not an edge device, itself, or a loop → 400
    //   ArgumentInvalid, nothing stored; a device whose parent was deleted can still be updated as read
    let hub = TestHub::start();
    let api = service(&hub);
    let put = async |id: &str, body: serde_json::Value, if_match: Option<&str>| {
        api.call(Method::PUT, &format!("/devices/{id}"), Some(body), if_match)
            .await
    };
    let edge = put(
        "gateway-1",
        json!({"deviceId": "gateway-1", "capabilities": {"iotEdge": true}}),
        None,
    )
    .await;
    assert_eq!(edge.status, 200, "{}", edge.body);
    let generation = edge.body["generationId"].as_str().unwrap();
    let scope = format!("ms-azure-iot-edge://gateway-1-{generation}");
    assert_eq!(edge.body["deviceScope"], json!(scope));
    assert_eq!(edge.body["parentScopes"], json!([]));
    let edge_twin = api.call(Method::GET, "/twins/gateway-1", None, None).await.body;
    assert_eq!(edge_twin["deviceScope"], json!(scope));
    let plain = put("plain", json!({"deviceId": "plain"}), None).await.body;
    assert_eq!(
        (plain["deviceScope"].clone(), plain["parentScopes"].clone()),
        (json!(null), json!([]))
    );

    let leaf = put("leaf", json!({"deviceId": "leaf", "deviceScope": scope}), None).await;
    assert_eq!(leaf.status, 200, "{}", leaf.body);
    assert_eq!(leaf.body["deviceScope"], json!(scope));
    assert_eq!(leaf.body["parentScopes"], json!([scope]));
    let leaf_twin = api.call(Method::GET, "/twins/leaf", None, None).await.body;
    assert_eq!(
        (leaf_twin["deviceScope"].clone(), leaf_twin["parentScopes"].clone()),
        (json!(scope), json!([scope]))
    );

    let child = put(
        "gateway-2",
        json!({"deviceId": "gateway-2", "capabilities": {"iotEdge": true}, "parentScopes": [scope]}),
        None,
    )
    .await;
    assert_eq!(child.status, 200, "{}", child.body);
    let child_scope = format!(
        "ms-azure-iot-edge://gateway-2-{}",
        child.body["generationId"].as_str().unwrap()
    );
    assert_eq!(child.body["deviceScope"], json!(child_scope));
    assert_eq!(child.body["parentScopes"], json!([scope]));

    let plain_scope = format!("ms-azure-iot-edge://plain-{}", plain["generationId"].as_str().unwrap());
    for (id, body, why) in [
        (
            "stray",
            json!({"deviceId": "stray", "deviceScope": "3f1c2b9e-bogus"}),
            "a scope that names no device",
        ),
        (
            "stray",
            json!({"deviceId": "stray", "deviceScope": "ms-azure-iot-edge://gateway-1-1"}),
            "another generation",
        ),
        (
            "stray",
            json!({"deviceId": "stray", "deviceScope": plain_scope}),
            "not an edge device",
        ),
        (
            "stray",
            json!({"deviceId": "stray", "capabilities": {"iotEdge": true}, "parentScopes": [scope, child_scope]}),
            "two parents",
        ),
    ] {
        let refused = put(id, body, None).await;
        assert_eq!(
            (refused.status, refused.error_code().as_str()),
            (400, "ArgumentInvalid"),
            "{why}: {}",
            refused.body
        );
    }
    assert_eq!(
        api.call(Method::GET, "/devices/stray", None, None).await.status,
        404,
        "nothing stored"
    );
    let looped = put(
        "gateway-1",
        json!({"deviceId": "gateway-1", "capabilities": {"iotEdge": true}, "parentScopes": [child_scope]}),
        Some("*"),
    )
    .await;
    assert_eq!(
        (looped.status, looped.error_code().as_str()),
        (400, "ArgumentInvalid"),
        "{}",
        looped.body
    );
    let mut moved = leaf.body.clone();
    moved["deviceScope"] = json!("ms-azure-iot-edge://nobody-1");
    let refused = put("leaf", moved, Some("*")).await;
    assert_eq!(
        refused.status, 400,
        "an update to a scope that names nothing: {}",
        refused.body
    );
    // Moved as the Azure CLI does it: deviceScope changed, the parentScopes read before sent back as they were.
    let mut reparented = leaf.body.clone();
    reparented["deviceScope"] = json!(child_scope);
    let reparented = put("leaf", reparented, Some("*")).await;
    assert_eq!(
        reparented.body["parentScopes"],
        json!([child_scope]),
        "{}",
        reparented.body
    );

    let bulk = api
        .call(
            Method::POST,
            "/devices",
            Some(json!([
                {"id": "bulk-leaf", "importMode": "create", "deviceScope": scope},
                {"id": "bulk-stray", "importMode": "create", "deviceScope": "nowhere"},
            ])),
            None,
        )
        .await;
    assert_eq!(bulk.body["errors"][0]["deviceId"], "bulk-stray", "{}", bulk.body);
    assert_eq!(bulk.body["errors"][0]["errorCode"], "ArgumentInvalid");
    let bulk_leaf = api.call(Method::GET, "/devices/bulk-leaf", None, None).await.body;
    assert_eq!(bulk_leaf["parentScopes"], json!([scope]));

    // The parent goes; its children keep the scope and can still be written back as they were read.
    assert_eq!(
        api.call(Method::DELETE, "/devices/gateway-2", None, Some("*"))
            .await
            .status,
        204
    );
    let orphan = api.call(Method::GET, "/devices/leaf", None, None).await.body;
    let mut renamed = orphan.clone();
    renamed["statusReason"] = json!("parent gone");
    let kept = put("leaf", renamed, Some("*")).await;
    assert_eq!(
        (kept.status, kept.body["deviceScope"].clone()),
        (200, json!(child_scope)),
        "{}",
        kept.body
    );
    let found = api
        .query(
            &format!("SELECT deviceId FROM devices WHERE deviceScope = '{scope}'"),
            None,
            None,
        )
        .await;
    let mut ids: Vec<_> = found
        .body
        .as_array()
        .unwrap()
        .iter()
        .map(|row| row["deviceId"].clone())
        .collect();
    ids.sort_by_key(|id| id.to_string());
    assert_eq!(ids, vec![json!("bulk-leaf"), json!("gateway-1")]);
    let children = api
        .query(
            &format!("SELECT deviceId FROM devices WHERE ARRAY_CONTAINS(parentScopes, '{scope}')"),
            None,
            None,
        )
        .await;
    assert_eq!(
        children.body,
        json!([{"deviceId": "bulk-leaf"}]),
        "the Azure CLI's query for children"
    );
}
