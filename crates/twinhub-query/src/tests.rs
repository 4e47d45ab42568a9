//! The query table: every operator, function, undefined/null rule, aggregate, TOP, paging and error,
//! each with the result a user would see, over a fixed fixture of twins.

use crate::{CompiledQuery, ItemType, OrderedTwins, QueryError};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use twinhub_core::json::DeviceDraft;
use twinhub_core::record::Presence;
use twinhub_core::twin::{ReportedPatch, TwinPatch};
use twinhub_core::{DeviceRecord, Timestamp, Twin, TwinRules};

struct Fixture(BTreeMap<String, DeviceRecord>);

impl OrderedTwins for Fixture {
    fn after<'a>(&'a self, after: Option<&str>) -> Box<dyn Iterator<Item = &'a DeviceRecord> + 'a> {
        match after {
            None => Box::new(self.0.values()),
            Some(id) => Box::new(
                self.0
                    .range::<str, _>((std::ops::Bound::Excluded(id), std::ops::Bound::Unbounded))
                    .map(|(_, r)| r),
            ),
        }
    }
}

fn record(identity: Value, tags: Value, desired: Value, reported: Value) -> DeviceRecord {
    let rules = TwinRules {
        arrays_allowed: true,
        ..TwinRules::default()
    };
    let now = Timestamp::now();
    let draft = DeviceDraft::from_json(&identity, "deviceId").unwrap();
    let mut twin = Twin::new(now);
    let mut patch = json!({});
    if tags != json!({}) {
        patch["tags"] = tags;
    }
    if desired != json!({}) {
        patch["properties"] = json!({"desired": desired});
    }
    if patch != json!({}) {
        twin = twin
            .patched(&TwinPatch::from_json(&patch, &rules).unwrap(), now, &rules)
            .unwrap()
            .0;
    }
    if reported != json!({}) {
        twin = twin
            .with_reported(&ReportedPatch::from_json(&reported, &rules).unwrap(), now, &rules)
            .unwrap();
    }
    DeviceRecord::new(
        draft.into_identity(None, now, |_| None).expect("no edge scopes"),
        twin,
        Presence::default(),
    )
}

fn fixture() -> Fixture {
    let records = vec![
        record(
            json!({"deviceId": "d1"}),
            json!({"location": {"region": "US", "plant": "Redmond43"}, "group": "a", "floor": 3, "select": "kw"}),
            json!({"telemetry": {"interval": 30}}),
            json!({"connectivity": {"type": "cellular"}, "temp": 21.5, "fw": "1.0.0", "online": true}),
        ),
        record(
            json!({"deviceId": "d2"}),
            json!({"location": {"region": "US", "plant": "Seattle1"}, "group": "b", "floor": 1}),
            json!({}),
            json!({"connectivity": {"type": "wifi"}, "temp": 25, "fw": "1.2.0", "online": false}),
        ),
        record(
            json!({"deviceId": "d3", "status": "disabled"}),
            json!({"location": {"region": "EU", "plant": "Berlin"}, "group": "a", "floor": 10}),
            json!({}),
            json!({"connectivity": {"type": "cellular"}, "temp": -3, "fw": "2.0.0"}),
        ),
        record(
            json!({"deviceId": "d4"}),
            json!({"location": {"region": "EU"}, "floor": "7"}),
            json!({}),
            json!({"temp": 40.25}),
        ),
        record(json!({"deviceId": "thermo-5"}), json!({}), json!({}), json!({})),
        record(
            json!({"deviceId": "d6"}),
            json!({"list": [1, 2, 3]}),
            json!({"telemetry": {"interval": 60}}),
            json!({"temp": 30, "nested": {"a": {"b": {"c": 1}}}}),
        ),
        record(
            json!({"deviceId": "d7"}),
            json!({"location": {"region": "us"}, "name": "O'Brien \"quoted\""}),
            json!({}),
            json!({"temp": 21.5}),
        ),
    ];
    Fixture(
        records
            .into_iter()
            .map(|r| (r.identity.device_id.as_str().to_owned(), r))
            .collect(),
    )
}

/// All pages of a query, page size 1000.
fn run(fixture: &Fixture, text: &str) -> (Vec<Value>, ItemType) {
    let query = CompiledQuery::parse(text).unwrap_or_else(|e| panic!("{text}: {e}"));
    let mut items = Vec::new();
    let mut token = None;
    loop {
        let page = query.page(fixture, 1000, token.as_deref()).unwrap();
        items.extend(page.values());
        match page.continuation {
            Some(next) => token = Some(next),
            None => return (items, page.item_type),
        }
    }
}

fn ids(fixture: &Fixture, text: &str) -> Vec<String> {
    let (items, item_type) = run(fixture, text);
    assert_eq!(item_type, ItemType::Twin, "{text}");
    items
        .iter()
        .map(|twin| twin["deviceId"].as_str().unwrap().to_owned())
        .collect()
}

const ALL: &[&str] = &["d1", "d2", "d3", "d4", "d6", "d7", "thermo-5"];

#[test]
fn conditions_select_the_expected_twins() {
    let cases: &[(&str, &[&str])] = &[
        ("SELECT * FROM devices", ALL),
        ("select * from DEVICES", ALL),
        ("SELECT * FROM devices WHERE tags.location.region = 'US'", &["d1", "d2"]),
        ("SELECT * FROM devices WHERE tags.location.region = \"US\"", &["d1", "d2"]),
        ("SELECT * FROM devices WHERE tags.location.region != 'US'", &["d3", "d4", "d7"]),
        ("SELECT * FROM devices WHERE tags.location.region <> 'US'", &["d3", "d4", "d7"]),
        ("SELECT * FROM devices WHERE NOT (tags.location.region = 'US')", &["d3", "d4", "d7"]),
        ("SELECT * FROM devices WHERE tags.floor > 2", &["d1", "d3"]),
        ("SELECT * FROM devices WHERE tags.floor >= 3", &["d1", "d3"]),
        ("SELECT * FROM devices WHERE tags.floor < 3", &["d2"]),
        ("SELECT * FROM devices WHERE tags.floor <= 1", &["d2"]),
        ("SELECT * FROM devices WHERE tags.floor = 3", &["d1"]),
        ("SELECT * FROM devices WHERE tags.floor = '3'", &[]),
        ("SELECT * FROM devices WHERE tags.floor = '7'", &["d4"]),
        ("SELECT * FROM devices WHERE properties.reported.temp > 21.5", &["d2", "d4", "d6"]),
        ("SELECT * FROM devices WHERE properties.reported.temp >= 21.5", &["d1", "d2", "d4", "d6", "d7"]),
        ("SELECT * FROM devices WHERE properties.reported.temp < 0", &["d3"]),
        ("SELECT * FROM devices WHERE tags.location.region IN ['US', 'EU']", &["d1", "d2", "d3", "d4"]),
        ("SELECT * FROM devices WHERE tags.location.region NIN ['US', 'EU']", &["d7"]),
        ("SELECT * FROM devices WHERE tags.location.region NOT IN ['US']", &["d3", "d4", "d7"]),
        ("SELECT * FROM devices WHERE tags.location.region IN []", &[]),
        ("SELECT * FROM devices WHERE STARTSWITH(tags.location.plant, 'Red')", &["d1"]),
        ("SELECT * FROM devices WHERE ENDSWITH(tags.location.plant, '1')", &["d2"]),
        ("SELECT * FROM devices WHERE startswith(tags.location.plant, 'Red')", &["d1"]),
        ("SELECT * FROM devices WHERE STARTS_WITH(deviceId, 'thermo')", &["thermo-5"]),
        ("SELECT * FROM devices WHERE IS_DEFINED(tags.location)", &["d1", "d2", "d3", "d4", "d7"]),
        ("SELECT * FROM devices WHERE NOT IS_DEFINED(tags.location)", &["d6", "thermo-5"]),
        ("SELECT * FROM devices WHERE IS_DEFINED(statusReason)", ALL),
        ("SELECT * FROM devices WHERE IS_NULL(statusReason)", ALL),
        ("SELECT * FROM devices WHERE statusReason = null", ALL),
        ("SELECT * FROM devices WHERE IS_DEFINED(properties.reported.connectivity.type)", &["d1", "d2", "d3"]),
        ("SELECT * FROM devices WHERE properties.reported.connectivity.type = 'cellular'", &["d1", "d3"]),
        (
            "SELECT * FROM devices WHERE tags.location.region = 'US' AND properties.reported.connectivity.type = 'cellular'",
            &["d1"],
        ),
        (
            "SELECT * FROM devices WHERE tags.location.region = 'US' OR tags.location.region = 'EU'",
            &["d1", "d2", "d3", "d4"],
        ),
        ("SELECT * FROM devices WHERE tags.floor = 3 OR properties.reported.temp < 0", &["d1", "d3"]),
        ("SELECT * FROM devices WHERE tags.group = 'a' OR tags.group = 'b' AND tags.floor = 3", &["d1", "d3"]),
        ("SELECT * FROM devices WHERE (tags.group = 'a' OR tags.group = 'b') AND tags.floor = 3", &["d1"]),
        ("SELECT * FROM devices WHERE status = 'disabled'", &["d3"]),
        ("SELECT * FROM devices WHERE status = 'enabled'", &["d1", "d2", "d4", "d6", "d7", "thermo-5"]),
        ("SELECT * FROM devices WHERE DeviceId = 'd1'", &["d1"]),
        ("SELECT * FROM devices WHERE deviceid IN ['d1', 'd2', 'nope']", &["d1", "d2"]),
        ("SELECT * FROM devices WHERE connectionState = 'Disconnected'", ALL),
        ("SELECT * FROM devices WHERE tags.group = 'a'", &["d1", "d3"]),
        ("SELECT * FROM devices WHERE tags.select = 'kw'", &["d1"]),
        ("SELECT * FROM devices WHERE properties.reported.online = true", &["d1"]),
        ("SELECT * FROM devices WHERE properties.reported.online = false", &["d2"]),
        ("SELECT * FROM devices WHERE properties.reported.online != true", &["d2"]),
        ("SELECT * FROM devices WHERE IS_BOOL(properties.reported.online)", &["d1", "d2"]),
        ("SELECT * FROM devices WHERE IS_NUMBER(tags.floor)", &["d1", "d2", "d3"]),
        ("SELECT * FROM devices WHERE IS_STRING(tags.floor)", &["d4"]),
        ("SELECT * FROM devices WHERE IS_OBJECT(tags.location)", &["d1", "d2", "d3", "d4", "d7"]),
        ("SELECT * FROM devices WHERE IS_ARRAY(tags.list)", &["d6"]),
        ("SELECT * FROM devices WHERE ARRAY_CONTAINS(tags.list, 2)", &["d6"]),
        ("SELECT * FROM devices WHERE array_contains(tags.list, 4)", &[]),
        ("SELECT * FROM devices WHERE NOT ARRAY_CONTAINS(tags.location, 'US')", &[]),
        ("SELECT * FROM devices WHERE IS_PRIMITIVE(tags.location)", &[]),
        ("SELECT * FROM devices WHERE IS_PRIMITIVE(tags.floor)", &["d1", "d2", "d3", "d4"]),
        ("SELECT * FROM devices WHERE LOWER(tags.location.region) = 'us'", &["d1", "d2", "d7"]),
        ("SELECT * FROM devices WHERE UPPER(tags.location.region) = 'EU'", &["d3", "d4"]),
        ("SELECT * FROM devices WHERE LENGTH(tags.location.plant) = 6", &["d3"]),
        ("SELECT * FROM devices WHERE CONCAT(tags.location.region, '-', tags.location.plant) = 'US-Redmond43'", &["d1"]),
        ("SELECT * FROM devices WHERE SUBSTRING(tags.location.plant, 0, 3) = 'Red'", &["d1"]),
        ("SELECT * FROM devices WHERE INDEX_OF(tags.location.plant, 'attle') = 2", &["d2"]),
        ("SELECT * FROM devices WHERE CONTAINS(tags.location.plant, 'erl')", &["d3"]),
        ("SELECT * FROM devices WHERE ABS(properties.reported.temp) = 3", &["d3"]),
        ("SELECT * FROM devices WHERE CEILING(properties.reported.temp) = 22", &["d1", "d7"]),
        ("SELECT * FROM devices WHERE FLOOR(properties.reported.temp) = 40", &["d4"]),
        ("SELECT * FROM devices WHERE properties.reported.temp * 2 = 50", &["d2"]),
        ("SELECT * FROM devices WHERE properties.reported.temp + 1 = 31", &["d6"]),
        ("SELECT * FROM devices WHERE properties.reported.temp - 1 = 24", &["d2"]),
        ("SELECT * FROM devices WHERE properties.reported.temp / 2 = 15", &["d6"]),
        ("SELECT * FROM devices WHERE tags.floor % 2 = 1", &["d1", "d2"]),
        ("SELECT * FROM devices WHERE -tags.floor = -10", &["d3"]),
        ("SELECT * FROM devices WHERE tags.floor / 0 = 1", &[]),
        ("SELECT * FROM devices WHERE tags.floor = 0x3", &["d1"]),
        ("SELECT * FROM devices WHERE properties.reported.temp = 2.15e1", &["d1", "d7"]),
        ("SELECT * FROM devices WHERE properties.reported.temp = -3", &["d3"]),
        ("SELECT * FROM devices WHERE tags.name = 'O\\'Brien \"quoted\"'", &["d7"]),
        ("SELECT * FROM devices WHERE tags.name = \"O'Brien \\\"quoted\\\"\"", &["d7"]),
        ("SELECT * FROM devices WHERE properties.desired.telemetry.interval = 60", &["d6"]),
        ("SELECT * FROM devices WHERE properties.desired.$version > 1", &["d1", "d6"]),
        ("SELECT * FROM devices WHERE properties.reported.$version = 1", &["thermo-5"]),
        ("SELECT * FROM devices WHERE properties.reported.nested.a.b.c = 1", &["d6"]),
        ("SELECT * FROM devices WHERE tags.location = 'US'", &[]),
        ("SELECT * FROM devices WHERE tags.location = tags.location", &[]),
        (
            "SELECT * FROM devices WHERE properties.desired.telemetry.interval = properties.desired.telemetry.interval",
            &["d1", "d6"],
        ),
        ("SELECT * FROM devices WHERE tags.floor = null", &[]),
        ("SELECT * FROM devices WHERE tags.missing = undefined", &[]),
        ("SELECT * FROM devices WHERE tags.missing != 'x'", &[]),
        ("SELECT * FROM devices WHERE version > 0", ALL),
        ("SELECT * FROM devices WHERE capabilities.iotEdge = false", ALL),
        ("SELECT * FROM devices WHERE true", ALL),
        ("SELECT * FROM devices WHERE 1", &[]),
        ("SELECT * FROM devices WHERE 'x'", &[]),
        ("SELECT * FROM devices WHERE deviceId > 'd5'", &["d6", "d7", "thermo-5"]),
        ("SELECT TOP 2 * FROM devices", &["d1", "d2"]),
        ("SELECT TOP 0 * FROM devices", &[]),
        ("SELECT TOP 100 * FROM devices WHERE tags.group = 'a'", &["d1", "d3"]),
        ("SELECT * FROM devices.modules", &[]),
        ("SELECT *\n FROM devices\n WHERE tags.floor\t= 10", &["d3"]),
    ];
    let fixture = fixture();
    // Device twins hold no job steps: devices.jobs over them is empty, and its rows are deviceJob.
    let (jobs, item_type) = run(&fixture, "SELECT * FROM devices.jobs");
    assert!(jobs.is_empty());
    assert_eq!(item_type, ItemType::DeviceJob);
    for (text, expected) in cases {
        assert_eq!(ids(&fixture, text), *expected, "{text}");
    }
    assert!(cases.len() >= 80, "the table holds {} cases", cases.len());
}

#[test]
fn select_star_returns_twins_as_get_returns_them() {
    let fixture = fixture();
    let (items, _) = run(&fixture, "SELECT * FROM devices WHERE deviceId = 'd1'");
    assert_eq!(items, vec![twinhub_core::json::twin_json(&fixture.0["d1"])]);
}

#[test]
fn projections_and_aggregates_produce_raw_rows() {
    let fixture = fixture();
    let cases: Vec<(&str, Value)> = vec![
        (
            "SELECT deviceId, tags.location.region FROM devices WHERE tags.group = 'a'",
            json!([{"deviceId": "d1", "region": "US"}, {"deviceId": "d3", "region": "EU"}]),
        ),
        ("SELECT DeviceId AS id FROM devices WHERE tags.floor = 1", json!([{"id": "d2"}])),
        ("SELECT deviceId, tags.floor FROM devices WHERE deviceId = 'thermo-5'", json!([{"deviceId": "thermo-5"}])),
        ("SELECT tags.location FROM devices WHERE deviceId = 'd4'", json!([{"location": {"region": "EU"}}])),
        ("SELECT properties.reported.temp * 2 AS double FROM devices WHERE deviceId = 'd3'", json!([{"double": -6}])),
        ("SELECT COUNT() AS n FROM devices", json!([{"n": 7}])),
        ("SELECT COUNT() FROM devices WHERE tags.location.region = 'US'", json!([{"$1": 2}])),
        ("SELECT COUNT() AS n FROM devices WHERE tags.nothing = 1", json!([{"n": 0}])),
        ("SELECT SUM(properties.reported.temp) AS s FROM devices", json!([{"s": 135.25}])),
        ("SELECT AVG(tags.floor) AS a FROM devices", json!([{"a": 14.0 / 3.0}])),
        (
            "SELECT MIN(properties.reported.temp) AS lo, MAX(properties.reported.temp) AS hi FROM devices",
            json!([{"lo": -3, "hi": 40.25}]),
        ),
        (
            "SELECT MIN(properties.reported.fw) AS lo, MAX(properties.reported.fw) AS hi FROM devices",
            json!([{"lo": "1.0.0", "hi": "2.0.0"}]),
        ),
        ("SELECT AVG(tags.nothing) AS a, COUNT() AS n FROM devices", json!([{"n": 7}])),
        (
            "SELECT tags.location.region AS region, COUNT() AS n FROM devices GROUP BY tags.location.region",
            json!([{"region": "US", "n": 2}, {"region": "EU", "n": 2}, {"n": 2}, {"region": "us", "n": 1}]),
        ),
        (
            "select properties.reported.connectivity.type, count() as n from devices where is_defined(properties.reported.connectivity) group by properties.reported.connectivity.type",
            json!([{"type": "cellular", "n": 2}, {"type": "wifi", "n": 1}]),
        ),
        (
            "SELECT COUNT() AS n, MAX(tags.floor) AS top FROM devices GROUP BY tags.group",
            json!([{"n": 2, "top": 10}, {"n": 1, "top": 1}, {"n": 4, "top": "7"}]),
        ),
        ("SELECT TOP 1 tags.group, COUNT() AS n FROM devices GROUP BY tags.group", json!([{"group": "a", "n": 2}])),
    ];
    for (text, expected) in cases {
        let (items, item_type) = run(&fixture, text);
        assert_eq!(item_type, ItemType::Raw, "{text}");
        assert_eq!(Value::Array(items), expected, "{text}");
    }
}

#[test]
fn invalid_queries_say_what_is_wrong_and_where() {
    let cases: &[(&str, &str)] = &[
        (
            "SELECT * FROM devices WHERE",
            "line 1, column 28: expected an expression after WHERE, found the end of the query",
        ),
        (
            "SELECT * FROM devices WHERE tags.a = ",
            "line 1, column 38: expected an expression after '='",
        ),
        (
            "SELECT * FROM things",
            "line 1, column 15: expected 'devices' after FROM, found 'things'",
        ),
        (
            "SELECT * FROM devices WHERE FOO(tags.a)",
            "line 1, column 29: unknown function 'FOO'",
        ),
        (
            "SELECT * FROM devices WHERE IS_DEFINED(a, b)",
            "IS_DEFINED takes 1 argument(s), 2 given",
        ),
        ("SELECT * FROM devices ORDER BY deviceId", "ORDER BY is not supported"),
        (
            "SELECT * FROM devices WHERE tags.a = 'x",
            "line 1, column 38: this string is not closed",
        ),
        (
            "SELECT deviceId, COUNT() FROM devices",
            "aggregates cannot be selected together with properties",
        ),
        (
            "SELECT * FROM devices GROUP BY tags.a",
            "SELECT * cannot be used with GROUP BY",
        ),
        (
            "SELECT tags.b, COUNT() FROM devices GROUP BY tags.a",
            "may hold only that property and aggregates",
        ),
        (
            "SELECT * FROM devices WHERE COUNT() > 1",
            "the aggregate COUNT is allowed only in the SELECT clause",
        ),
        (
            "SELECT * FROM devices WHERE tags.a = 1 extra",
            "line 1, column 40: unexpected 'extra' after the query",
        ),
        ("SELECT TOP x * FROM devices", "expected a whole number after TOP"),
        (
            "SELECT * FROM devices WHERE tags.a IN [tags.b]",
            "array elements must be constants",
        ),
        (
            "",
            "line 1, column 1: expected SELECT after the start, found the end of the query",
        ),
        ("SELECT * FROM devices WHERE tags.a = #", "unexpected character '#'"),
        (
            "SELECT * FROM devices WHERE tags. = 1",
            "expected a property name after '.'",
        ),
        (
            "SELECT * FROM devices\nWHERE AND",
            "line 2, column 7: expected an expression after WHERE",
        ),
        ("SELECT * FROM devices.things", "expected 'modules' or 'jobs'"),
        (
            "SELECT deviceId FROM devices.jobs",
            "devices.jobs supports only SELECT *",
        ),
        ("SELECT * FROM devices WHERE 'a\\q'", "unknown escape sequence"),
        ("SELECT * FROM devices WHERE (tags.a = 1", "expected ')'"),
        (
            "SELECT FROM devices",
            "expected a property or an aggregate after SELECT",
        ),
    ];
    for (text, expected) in cases {
        let error = CompiledQuery::parse(text).expect_err(text).to_string();
        assert!(error.contains(expected), "{text}: {error}");
    }
    let long = format!("SELECT * FROM devices WHERE deviceId = '{}'", "x".repeat(8192));
    assert!(matches!(
        CompiledQuery::parse(&long),
        Err(QueryError::TooLong { max: 8192, .. })
    ));
}

#[test]
fn pages_cover_every_match_exactly_once_and_the_last_has_no_token() {
    let fixture = fixture();
    let query = CompiledQuery::parse("SELECT * FROM devices").unwrap();
    let mut seen = Vec::new();
    let mut token: Option<String> = None;
    let mut pages = 0;
    loop {
        let page = query.page(&fixture, 2, token.as_deref()).unwrap();
        pages += 1;
        assert!(page.items.len() <= 2);
        seen.extend(page.values().iter().map(|t| t["deviceId"].as_str().unwrap().to_owned()));
        match page.continuation {
            Some(next) => token = Some(next),
            None => break,
        }
    }
    assert_eq!(pages, 4);
    assert_eq!(seen, ALL);
}

#[test]
fn writes_between_pages_never_repeat_a_twin() {
    let mut fixture = fixture();
    let query = CompiledQuery::parse("SELECT * FROM devices WHERE IS_DEFINED(deviceId)").unwrap();
    let first = query.page(&fixture, 3, None).unwrap();
    let mut seen: Vec<String> = first
        .values()
        .iter()
        .map(|t| t["deviceId"].as_str().unwrap().to_owned())
        .collect();
    // A twin already returned is rewritten (a new version), one not yet returned is deleted, and a new one appears.
    let d1 = fixture.0["d1"].clone();
    let mut rewritten = d1.clone();
    rewritten.twin.version += 5;
    fixture.0.insert("d1".into(), rewritten);
    fixture.0.remove("d6");
    let mut added = fixture.0["d2"].clone();
    std::sync::Arc::make_mut(&mut added.identity).device_id = twinhub_core::DeviceId::new("d5").unwrap();
    fixture.0.insert("d5".into(), added);
    let mut token = first.continuation;
    while let Some(current) = token {
        let page = query.page(&fixture, 3, Some(&current)).unwrap();
        seen.extend(page.values().iter().map(|t| t["deviceId"].as_str().unwrap().to_owned()));
        token = page.continuation;
    }
    assert_eq!(seen, ["d1", "d2", "d3", "d4", "d5", "d7", "thermo-5"]);
}

#[test]
fn top_limits_across_pages_and_aggregates_page_too() {
    let fixture = fixture();
    let query = CompiledQuery::parse("SELECT TOP 5 deviceId FROM devices").unwrap();
    let mut sizes = Vec::new();
    let mut token: Option<String> = None;
    loop {
        let page = query.page(&fixture, 2, token.as_deref()).unwrap();
        sizes.push(page.items.len());
        match page.continuation {
            Some(next) => token = Some(next),
            None => break,
        }
    }
    assert_eq!(sizes, [2, 2, 1]);
    let grouped = CompiledQuery::parse("SELECT tags.group, COUNT() AS n FROM devices GROUP BY tags.group").unwrap();
    let first = grouped.page(&fixture, 2, None).unwrap();
    assert_eq!(first.items.len(), 2);
    let second = grouped.page(&fixture, 2, first.continuation.as_deref()).unwrap();
    assert_eq!(second.values(), vec![json!({"n": 4})]);
    assert_eq!(second.continuation, None);
}

#[test]
fn continuation_tokens_are_checked() {
    let fixture = fixture();
    let query = CompiledQuery::parse("SELECT * FROM devices").unwrap();
    let token = query.page(&fixture, 1, None).unwrap().continuation.unwrap();
    let other = CompiledQuery::parse("SELECT deviceId FROM devices").unwrap();
    assert_eq!(
        other.page(&fixture, 1, Some(&token)).err(),
        Some(QueryError::BadContinuation)
    );
    assert_eq!(
        query.page(&fixture, 1, Some("zz")).err(),
        Some(QueryError::BadContinuation)
    );
    assert_eq!(
        query.page(&fixture, 1, Some("7b7d")).err(),
        Some(QueryError::BadContinuation)
    );
}

#[test]
fn plans_find_equality_in_range_and_prefix_constraints() {
    let query = CompiledQuery::parse(
        "SELECT * FROM devices WHERE tags.a IN ['x', 'y'] AND (tags.b = 1 OR tags.c = 2) AND 'US' = tags.r \
         AND 5 < properties.reported.t AND STARTSWITH(tags.p, 'pl') AND tags.q != 3",
    )
    .unwrap();
    let found = crate::plan::constraints(query.query.condition.as_ref());
    let paths: Vec<String> = found.iter().map(|c| c.path.dotted()).collect();
    assert_eq!(paths, ["tags.r", "tags.a", "tags.p", "properties.reported.t"]);
    let crate::plan::Requirement::Range { lower, .. } = &found[3].requirement else {
        panic!("{found:?}")
    };
    assert_eq!(
        *lower,
        std::ops::Bound::Excluded(crate::plan::IndexKey::of_constant(&crate::ast::Constant::Number(5.0)).unwrap())
    );
}

mod fuzz {
    use super::*;
    use proptest::prelude::*;

    const WORDS: &[&str] = &[
        "SELECT",
        "TOP",
        "*",
        "FROM",
        "devices",
        "WHERE",
        "AND",
        "OR",
        "NOT",
        "IN",
        "NIN",
        "GROUP",
        "BY",
        "AS",
        "COUNT()",
        "SUM(",
        "tags.location.region",
        "properties.reported.temp",
        "deviceId",
        "=",
        "!=",
        "<",
        ">=",
        "'US'",
        "\"EU\"",
        "3",
        "-2.5",
        "0x1f",
        "[",
        "]",
        "(",
        ")",
        ",",
        "+",
        "-",
        "/",
        "%",
        "IS_DEFINED(",
        "STARTSWITH(",
        "LOWER(",
        "null",
        "undefined",
        "true",
        ".",
        "tags.group",
        "'",
        "\\",
        "devices.modules",
    ];

    fn query_like() -> impl Strategy<Value = String> {
        prop::collection::vec(prop::sample::select(WORDS), 0..24).prop_map(|words| words.join(" "))
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

        /// Arbitrary text never panics the parser.
        #[test]
        fn any_text_parses_or_errors(text in ".{0,200}") {
            let _ = CompiledQuery::parse(&text);
        }

        /// Query-shaped token soup never panics the parser, and what parses runs (every page) without panic.
        #[test]
        fn query_like_input_never_panics(text in query_like()) {
            let fixture = fixture();
            if let Ok(query) = CompiledQuery::parse(&text) {
                let mut token: Option<String> = None;
                for _ in 0..20 {
                    let page = query.page(&fixture, 3, token.as_deref()).unwrap();
                    match page.continuation { Some(next) => token = Some(next), None => break }
                }
            }
        }
    }
}

/// Past `aggregate::PARALLEL_MIN` twins an aggregate runs on several threads: the rows, their order and
/// every aggregate must be what one thread computes.
#[test]
fn aggregates_over_many_twins_are_exact_and_keep_group_order() {
    let template = record(json!({"deviceId": "t"}), json!({}), json!({}), json!({}));
    let count = 60_001i64;
    let mut twins = BTreeMap::new();
    for n in 0..count {
        let mut twin = template.clone();
        std::sync::Arc::make_mut(&mut twin.identity).device_id =
            twinhub_core::DeviceId::new(&format!("t{n:06}")).unwrap();
        let tags = json!({"g": format!("g{}", n % 3), "n": n});
        twin.twin.tags = twinhub_core::Object::from_json(tags.as_object().unwrap()).into();
        twins.insert(twin.identity.device_id.as_str().to_owned(), twin);
    }
    let fixture = Fixture(twins);
    let (rows, item_type) = run(
        &fixture,
        "SELECT tags.g, COUNT() AS c, SUM(tags.n) AS s, MIN(tags.n) AS lo, MAX(tags.n) AS hi, AVG(tags.n) AS a \
         FROM devices WHERE tags.n >= 1 GROUP BY tags.g",
    );
    assert_eq!(item_type, ItemType::Raw);
    let expected: Vec<Value> = [1, 2, 0]
        .iter()
        .map(|&g| {
            let members: Vec<i64> = (1..count).filter(|n| n % 3 == g).collect();
            let sum: i64 = members.iter().sum();
            json!({
                "g": format!("g{g}"),
                "c": members.len(),
                "s": sum,
                "lo": members[0],
                "hi": members[members.len() - 1],
                "a": sum as f64 / members.len() as f64,
            })
        })
        .collect();
    assert_eq!(rows, expected);
}
