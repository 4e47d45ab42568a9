//! `twinhub bench` against a real hub, every scenario at a small size: the load generator keeps working
//! and its checks hold (every acknowledged reported patch readable, every desired change delivered).
//! Figures come from `bench/compare.sh`, never from here.

mod support;

use std::process::Command;
use support::TestHub;

fn bench(hub: &TestHub, args: &[&str]) -> serde_json::Value {
    let json = hub.data_dir().join(format!("bench-{}.json", args[0]));
    let output = Command::new(env!("CARGO_BIN_EXE_twinhub"))
        .arg("bench")
        .args(args)
        .arg("--data-dir")
        .arg(hub.data_dir())
        .arg("--json")
        .arg(&json)
        .output()
        .expect("run twinhub bench");
    assert!(
        output.status.success(),
        "twinhub bench {args:?} failed:\n{}\n{}\n--- hub log\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr),
        hub.log()
    );
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(stdout.contains("per second"), "the table is printed: {stdout}");
    serde_json::from_slice(&std::fs::read(&json).expect("the JSON report")).expect("JSON")
}

#[test]
fn every_scenario_runs_and_checks_what_it_measured() {
    // A handful of devices at full speed exceed the default per-connection twin request rate.
    let hub = TestHub::start_with(&[
        "--device-twin-requests-per-second",
        "1000000",
        "--device-twin-request-burst",
        "1000000",
    ]);
    let connect = bench(&hub, &["connect", "--devices", "20"]);
    assert_eq!(connect["operations"], 20);

    let reported = bench(
        &hub,
        &["reported", "--devices", "5", "--in-flight", "4", "--seconds", "1"],
    );
    assert!(reported["operations"].as_u64().unwrap() > 0, "{reported}");
    assert_eq!(reported["verified_devices"], 5, "{reported}");
    let amqp = bench(
        &hub,
        &[
            "reported",
            "--transport",
            "amqp",
            "--devices",
            "5",
            "--in-flight",
            "4",
            "--seconds",
            "1",
        ],
    );
    assert!(amqp["operations"].as_u64().unwrap() > 0, "{amqp}");
    assert_eq!(amqp["transport"], "amqp");
    assert_eq!(amqp["verified_devices"], 5, "{amqp}");
    let paced = bench(&hub, &["reported", "--devices", "5", "--seconds", "1", "--rate", "100"]);
    let rate = paced["per_second"].as_f64().unwrap();
    assert!((50.0..150.0).contains(&rate), "paced at 100/s: {paced}");

    for scenario in ["twin-get", "telemetry"] {
        let report = bench(&hub, &[scenario, "--devices", "5", "--seconds", "1"]);
        assert!(report["operations"].as_u64().unwrap() > 0, "{scenario}: {report}");
        assert!(
            report["latency"]["p99_ms"].as_f64().unwrap() > 0.0,
            "{scenario}: {report}"
        );
    }
    // Every acknowledged desired PATCH must reach its device, or the bench fails.
    // Telemetry read back through the Event Hubs endpoint: every acknowledged event is received.
    let end_to_end = bench(
        &hub,
        &[
            "telemetry-end-to-end",
            "--devices",
            "5",
            "--rate",
            "200",
            "--seconds",
            "1",
        ],
    );
    assert!(end_to_end["operations"].as_u64().unwrap() >= 150, "{end_to_end}");
    let consume = bench(
        &hub,
        &[
            "consume",
            "--devices",
            "5",
            "--backlog",
            "500",
            "--payload-bytes",
            "256",
        ],
    );
    assert!(consume["operations"].as_u64().unwrap() >= 500, "{consume}");
    assert!(consume["megabytes_per_second"].as_f64().unwrap() > 0.0, "{consume}");
    let desired = bench(&hub, &["desired", "--devices", "5", "--rate", "50", "--seconds", "1"]);
    assert!(desired["operations"].as_u64().unwrap() >= 40, "{desired}");
    let rest = bench(&hub, &["rest", "--devices", "5", "--clients", "2", "--seconds", "1"]);
    assert!(rest["operations"].as_u64().unwrap() > 0 && rest["patch_per_second"].as_f64().unwrap() > 0.0);
    // As modules: each module its own connection and twin, the last acknowledged patches checked in the
    // module twins.
    let modules = bench(
        &hub,
        &[
            "reported",
            "--devices",
            "3",
            "--modules-per-device",
            "2",
            "--in-flight",
            "2",
            "--seconds",
            "1",
        ],
    );
    assert_eq!(modules["devices"], 6, "{modules}");
    assert!(modules["operations"].as_u64().unwrap() > 0, "{modules}");
    assert!(modules["verified_devices"].as_u64().unwrap() > 0, "{modules}");
    // The query scenario checks that a query finds the one twin it asks for before it measures.
    let query = bench(&hub, &["query", "--devices", "20", "--clients", "2", "--seconds", "1"]);
    assert!(query["operations"].as_u64().unwrap() > 0, "{query}");
    assert_eq!(query["devices"], 20, "{query}");
    // The job scenario updates every bench device's twin through a job and counts them by a query.
    let job = bench(&hub, &["job", "--devices", "30"]);
    assert!(job["operations"].as_u64().unwrap() >= 30, "{job}");
    assert_eq!(job["operations"], job["verified_devices"], "{job}");
}
