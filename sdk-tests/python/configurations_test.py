"""Automatic device configurations through the official Python service SDK (azure-iot-hub's
IoTHubConfigurationManager), against a real twinhub. Run by crates/twinhub/tests/sdk_configurations.rs
with TWINHUB_CONNECTION_STRING (iothubowner) and REQUESTS_CA_BUNDLE (the hub's CA).

Checks: create_configuration rolls a desired property out to the tagged twins (and a twin tagged later),
get_configuration with its system and custom metrics, update_configuration with the etag (unquoted, as
this SDK sends it; a stale one is 412), get_configurations, test_configuration_queries,
apply_configuration_on_edge_device, delete_configuration.
"""

import os
import sys
import time

from azure.iot.hub import IoTHubConfigurationManager, IoTHubRegistryManager
from azure.iot.hub.models import (
    Configuration,
    ConfigurationContent,
    ConfigurationMetrics,
    ConfigurationQueriesTestInput,
    Twin,
)
from checks import check, check_equal, expect_http_error, log, run

CONNECTION_STRING = os.environ.get("TWINHUB_CONNECTION_STRING")
if not CONNECTION_STRING:
    print("TWINHUB_CONNECTION_STRING must be set", file=sys.stderr)
    sys.exit(2)


def wait_for(what, condition, seconds=5.0):
    deadline = time.monotonic() + seconds
    while not condition():
        check(time.monotonic() < deadline, "timed out waiting for " + what)
        time.sleep(0.05)


def interval_of(registry, device_id):
    return registry.get_twin(device_id).properties.desired.get("telemetry", {}).get("interval")


def main():
    registry = IoTHubRegistryManager.from_connection_string(CONNECTION_STRING)
    configurations = IoTHubConfigurationManager.from_connection_string(CONNECTION_STRING)
    for device_id in ("py-cfg-1", "py-cfg-2", "py-cfg-3"):
        registry.create_device_with_sas(device_id, None, None, "enabled")
    registry.update_twin("py-cfg-1", Twin(tags={"fleet": "py"}), "*")
    registry.update_twin("py-cfg-2", Twin(tags={"fleet": "py"}), "*")

    log("create_configuration: telemetry interval 30 for tags.fleet = 'py'")
    created = configurations.create_configuration(
        Configuration(
            id="py-telemetry",
            schema_version="1.0",
            labels={"owner": "python"},
            content=ConfigurationContent(device_content={"properties.desired.telemetry": {"interval": 30}}),
            target_condition="tags.fleet = 'py'",
            priority=5,
            metrics=ConfigurationMetrics(
                queries={"fast": "SELECT deviceId FROM devices WHERE properties.desired.telemetry.interval = 30"}
            ),
        )
    )
    check_equal(created.id, "py-telemetry", "id")
    check(created.etag, "an etag")
    wait_for("interval 30 in py-cfg-1 and py-cfg-2",
             lambda: interval_of(registry, "py-cfg-1") == 30 and interval_of(registry, "py-cfg-2") == 30)
    check_equal(interval_of(registry, "py-cfg-3"), None, "an untargeted twin")

    log("a twin tagged later gets it")
    registry.update_twin("py-cfg-3", Twin(tags={"fleet": "py"}), "*")
    wait_for("interval 30 in py-cfg-3", lambda: interval_of(registry, "py-cfg-3") == 30, 2.0)

    log("get_configuration: system and custom metrics")
    read = configurations.get_configuration("py-telemetry")
    check_equal(read.system_metrics.results, {"targetedCount": 3, "appliedCount": 3}, "system metrics")
    check_equal(read.metrics.results, {"fast": 3}, "custom metrics")
    check_equal(read.labels, {"owner": "python"}, "labels")

    log("update_configuration with the etag; a stale etag is refused")
    read.priority = 7
    updated = configurations.update_configuration(read, read.etag)
    check_equal(updated.priority, 7, "priority")
    check(updated.etag != read.etag, "a new etag")
    expect_http_error(lambda: configurations.update_configuration(read, read.etag), 412, "PreconditionFailed")
    check_equal([c.id for c in configurations.get_configurations()], ["py-telemetry"], "get_configurations")
    check_equal(len(configurations.get_configurations(max_count=0)), 0, "get_configurations(max_count=0)")

    log("test_configuration_queries")
    tested = configurations.test_configuration_queries(
        ConfigurationQueriesTestInput(
            target_condition="tags.fleet = ",
            custom_metric_queries={"good": "SELECT deviceId FROM devices", "bad": "SELECT FROM"},
        )
    )
    check(tested.target_condition_error, "the bad condition is named")
    check_equal(tested.custom_metric_query_errors["good"], "", "the good query")
    check(tested.custom_metric_query_errors["bad"], "the bad query is named")

    log("apply_configuration_on_edge_device")
    registry.create_device_with_sas("py-edge", None, None, "enabled", iot_edge=True)
    configurations.apply_configuration_on_edge_device(
        "py-edge",
        ConfigurationContent(modules_content={"$edgeAgent": {"properties.desired": {"schemaVersion": "1.1"}}}),
    )
    agent = registry.get_module_twin("py-edge", "$edgeAgent")
    check_equal(agent.properties.desired["schemaVersion"], "1.1", "$edgeAgent's desired properties")

    log("delete_configuration: what was written stays")
    configurations.delete_configuration("py-telemetry", updated.etag)
    expect_http_error(lambda: configurations.get_configuration("py-telemetry"), 404, "ConfigurationNotFound")
    check_equal(interval_of(registry, "py-cfg-1"), 30, "the twin keeps the interval")


if __name__ == "__main__":
    run("configurations_test.py", main)
