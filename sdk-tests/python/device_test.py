"""A device through the official Python device SDK (azure-iot-device's IoTHubDeviceClient, over MQTT or,
with TWINHUB_WEBSOCKETS=1, MQTT over WebSockets) and its back end through azure-iot-hub, against a real
twinhub. Run by crates/twinhub/tests/sdk_device.rs with TWINHUB_CONNECTION_STRING (iothubowner),
TWINHUB_DEVICE_ID and SSL_CERT_FILE / REQUESTS_CA_BUNDLE (the hub's CA) set.

The seed's device app (connect, get the twin, report connectivity) and back-end app (tag patch, the two
queries), then: a desired property set by the back end arrives with its $version; the device keeps
receiving them across SAS renewals (a token that lives 126 s is renewed 120 s before it expires, so
every 6 s: a full MQTT reconnect that subscribes to nothing again); and a device that was disconnected
while desired changed converges once it connects again. Exits non-zero at the first failed check.
"""

import base64
import os
import sys
import threading
import time

from checks import CheckFailed, check, check_equal, log, run
from azure.iot.device import IoTHubDeviceClient
from azure.iot.hub import IoTHubRegistryManager
from azure.iot.hub.models import QuerySpecification, Twin, TwinProperties

CONNECTION_STRING = os.environ.get("TWINHUB_CONNECTION_STRING")
DEVICE_ID = os.environ.get("TWINHUB_DEVICE_ID")
WEBSOCKETS = os.environ.get("TWINHUB_WEBSOCKETS") == "1"
if not CONNECTION_STRING or not DEVICE_ID:
    print("TWINHUB_CONNECTION_STRING and TWINHUB_DEVICE_ID must be set", file=sys.stderr)
    sys.exit(2)

TOKEN_SECONDS = 126
RENEWAL_EVERY_SECONDS = TOKEN_SECONDS - 120


def wait_for(what, condition, seconds=15):
    deadline = time.time() + seconds
    while not condition():
        if time.time() > deadline:
            raise CheckFailed("timed out waiting for " + what)
        time.sleep(0.05)


def host_name(connection_string):
    for part in connection_string.split(";"):
        name, _, value = part.partition("=")
        if name == "HostName":
            return value
    raise CheckFailed("no HostName in the connection string")


def query_ids(registry, sql):
    result = registry.query_iot_hub(QuerySpecification(query=sql), None, 100)
    return [twin.device_id for twin in result.items]


def set_desired(registry, desired):
    twin = registry.get_twin(DEVICE_ID)
    updated = registry.update_twin(DEVICE_ID, Twin(properties=TwinProperties(desired=desired)), twin.etag)
    return updated.properties.desired["$version"]


def main():
    registry = IoTHubRegistryManager.from_connection_string(CONNECTION_STRING)
    log("register " + DEVICE_ID)
    primary = base64.b64encode(os.urandom(32)).decode()
    secondary = base64.b64encode(os.urandom(32)).decode()
    registry.create_device_with_sas(DEVICE_ID, primary, secondary, "enabled")
    device_connection_string = "HostName={};DeviceId={};SharedAccessKey={}".format(
        host_name(CONNECTION_STRING), DEVICE_ID, primary
    )

    log("device app: connect ({}), token lifetime {} s".format("websockets" if WEBSOCKETS else "mqtt", TOKEN_SECONDS))
    client = IoTHubDeviceClient.create_from_connection_string(
        device_connection_string, websockets=WEBSOCKETS, sastoken_ttl=TOKEN_SECONDS
    )
    client.connect()

    log("device app: get the twin")
    twin = client.get_twin()
    check_equal(twin["desired"]["$version"], 1, "desired $version of a new twin")
    check_equal(twin["reported"]["$version"], 1, "reported $version of a new twin")
    check("tags" not in twin, "the device view has no tags: {!r}".format(twin))

    log("device app: report {connectivity: {type: 'cellular'}}")
    client.patch_twin_reported_properties({"connectivity": {"type": "cellular"}})

    log("back end: the device is connected and its reported properties are there")
    check_equal(registry.get_device(DEVICE_ID).connection_state, "Connected", "connectionState")
    service_twin = registry.get_twin(DEVICE_ID)
    check_equal(service_twin.properties.reported.get("connectivity"), {"type": "cellular"}, "reported connectivity")

    log("back end: tag the device {location: {region: 'US', plant: 'Redmond43'}}")
    registry.update_twin(
        DEVICE_ID, Twin(tags={"location": {"region": "US", "plant": "Redmond43"}}), service_twin.etag
    )

    log("back end: the seed's two queries find the device")
    check_equal(
        query_ids(registry, "SELECT * FROM devices WHERE tags.location.plant = 'Redmond43'"),
        [DEVICE_ID],
        "devices in Redmond43",
    )
    check_equal(
        query_ids(
            registry,
            "SELECT * FROM devices WHERE tags.location.plant = 'Redmond43' "
            "AND properties.reported.connectivity.type = 'cellular'",
        ),
        [DEVICE_ID],
        "cellular devices in Redmond43",
    )

    log("device app: listen for desired properties")
    received = []
    lock = threading.Lock()

    def on_desired(patch):
        with lock:
            received.append(patch)

    def got(predicate):
        with lock:
            return any(predicate(patch) for patch in received)

    client.on_twin_desired_properties_patch_received = on_desired

    log("back end: set desired {telemetryInterval: 5}")
    v2 = set_desired(registry, {"telemetryInterval": 5})
    check_equal(v2, 2, "desired $version after the first change")
    wait_for(
        "desired $version 2 at the device",
        lambda: got(lambda p: p.get("$version") == 2 and p.get("telemetryInterval") == 5),
    )

    log("wait {} s: the token is renewed (a full reconnect) at least twice".format(2 * RENEWAL_EVERY_SECONDS + 3))
    time.sleep(2 * RENEWAL_EVERY_SECONDS + 3)
    v3 = set_desired(registry, {"telemetryInterval": 7})
    wait_for(
        "desired $version {} after token renewals".format(v3),
        lambda: got(lambda p: p.get("$version") == v3 and p.get("telemetryInterval") == 7),
    )
    log("device app: reporting still works after renewals")
    client.patch_twin_reported_properties({"firmware": "1.0.1"})

    log("device app: disconnect; back end changes desired twice meanwhile")
    client.disconnect()
    set_desired(registry, {"mode": "eco"})
    latest = set_desired(registry, {"telemetryInterval": 9})
    wait_for(
        "connectionState Disconnected",
        lambda: registry.get_device(DEVICE_ID).connection_state == "Disconnected",
    )

    log("device app: connect again; it converges on the latest desired properties")
    client.connect()
    wait_for(
        "desired $version {} after reconnecting".format(latest),
        lambda: got(
            lambda p: p.get("$version") == latest and p.get("mode") == "eco" and p.get("telemetryInterval") == 9
        ),
    )
    client.shutdown()
    check_equal(registry.get_twin(DEVICE_ID).properties.reported.get("firmware"), "1.0.1", "reported firmware")
    print("all checks passed", flush=True)


if __name__ == "__main__":
    run("device_test.py", main)
