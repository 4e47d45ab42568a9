//! Device-to-cloud telemetry through the official Python SDKs, unmodified, against a real hub
//! (`sdk-tests/python/telemetry_test.py`): two `azure-iot-device` clients, over MQTT and MQTT over
//! WebSockets, send messages with properties; `azure-eventhub` reads them from the hub's Event
//! Hubs-compatible endpoint with the sync client (all partitions, then resuming from an offset and
//! from a sequence number) and with the asyncio client on a second consumer group, checks the
//! partition properties, and is refused with the `device` policy and with a wrong key.
//!
//! `TWINHUB_SKIP_SDK_TESTS=1` skips this test on a developer machine (never in CI).

mod support;

use support::{run_python, sdk_tests_enabled, TestHub};

/// The value of `name` in a `Name=value;...` connection string.
fn connection_string_part<'a>(connection_string: &'a str, name: &str) -> &'a str {
    connection_string
        .split(';')
        .find_map(|part| part.strip_prefix(name)?.strip_prefix('='))
        .unwrap_or_else(|| panic!("no {name} in {connection_string}"))
}

/// The Event Hubs connection string with another policy's name and key: the hub prints the Event Hubs
/// form for `service` only, and a consumer with any other policy must be refused.
fn event_hubs_connection_string_for(hub: &TestHub, policy: &str) -> String {
    let policy_string = hub.connection_string(policy);
    let key_name = connection_string_part(&policy_string, "SharedAccessKeyName");
    let key = connection_string_part(&policy_string, "SharedAccessKey");
    hub.event_hubs_connection_string()
        .split(';')
        .map(|part| {
            if part.starts_with("SharedAccessKeyName=") {
                format!("SharedAccessKeyName={key_name}")
            } else if part.starts_with("SharedAccessKey=") {
                format!("SharedAccessKey={key}")
            } else {
                part.to_owned()
            }
        })
        .collect::<Vec<_>>()
        .join(";")
}

#[test]
fn python_device_and_event_hubs_sdks_carry_telemetry() {
    if !sdk_tests_enabled() {
        println!("python_device_and_event_hubs_sdks_carry_telemetry: skipped (TWINHUB_SKIP_SDK_TESTS=1)");
        return;
    }
    let hub = TestHub::start_with(&["--event-hubs-emulator-port", "5672"]);
    // The script reads with a second consumer group too, created as a user creates one.
    hub.cli(&["consumer-group", "create", "cg2"]);
    let device_policy = event_hubs_connection_string_for(&hub, "device");
    // The same endpoint as plain AMQP on a port of its own, as the SDK's emulator mode reaches it.
    let emulator = hub
        .event_hubs_connection_string()
        .replace(&format!("sb://{}/", hub.host()), &format!("sb://{}:5672/", hub.host()))
        + ";UseDevelopmentEmulator=true";
    assert!(
        device_policy.contains("SharedAccessKeyName=device;"),
        "the device policy's Event Hubs connection string: {device_policy}"
    );
    let output = run_python(
        "telemetry_test.py",
        &hub,
        &[
            ("TWINHUB_DEVICE_POLICY_EVENTHUBS_CONNECTION_STRING", device_policy),
            ("TWINHUB_EVENTHUBS_EMULATOR_CONNECTION_STRING", emulator),
        ],
    );
    println!(
        "python_device_and_event_hubs_sdks_carry_telemetry: telemetry_test.py passed:\n{}",
        String::from_utf8_lossy(&output.stdout)
    );
    // The SDK sees both refusals as the same 401; the hub's log tells them apart.
    let log = hub.log();
    assert!(
        log.contains("CBS put-token for the Event Hubs endpoint refused error=policy lacks the permission"),
        "the device policy was refused for lacking ServiceConnect:\n{log}"
    );
    assert!(
        log.contains("CBS put-token for the Event Hubs endpoint refused error=bad signature"),
        "the wrong key was refused for its signature:\n{log}"
    );
}
