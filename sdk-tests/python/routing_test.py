"""Message routing and the hub's own events through the official Python SDKs, against a real twinhub
started with sdk-tests/routes-fallback.toml (the fallback route on). Run by crates/twinhub/tests/sdk_routing.rs with
TWINHUB_CONNECTION_STRING (iothubowner), TWINHUB_EVENTHUBS_CONNECTION_STRING, TWINHUB_HUB_NAME,
TWINHUB_CA and SSL_CERT_FILE (the hub's CA).

One device over MQTT (azure-iot-device), one back end (azure-iot-hub): the device is created, connects,
the back end patches its tags, then desired properties, then replaces the twin (replace_twin), the device
reports once, sends four telemetry messages (one a route takes, three only the fallback route takes),
disconnects, and is deleted.
azure-eventhub reads the device's events from the built-in endpoint and checks each: one twin change
notification per twin version in version order, lifecycle and connection state events, with IoT Hub's
application properties, annotations and bodies; every telemetry message exactly once.
"""

import json
import os
import re
import sys
import threading
import time

from checks import check, check_equal, log, register_device_client, run
from azure.eventhub import EventHubConsumerClient
from azure.iot.device import Message
from azure.iot.hub import IoTHubRegistryManager
from azure.iot.hub.models import Twin, TwinProperties

CONNECTION_STRING = os.environ.get("TWINHUB_CONNECTION_STRING")
EVENTHUBS_CONNECTION_STRING = os.environ.get("TWINHUB_EVENTHUBS_CONNECTION_STRING")
HUB_NAME = os.environ.get("TWINHUB_HUB_NAME")
CA = os.environ.get("TWINHUB_CA")
if not (CONNECTION_STRING and EVENTHUBS_CONNECTION_STRING and HUB_NAME and CA):
    print(
        "TWINHUB_CONNECTION_STRING, TWINHUB_EVENTHUBS_CONNECTION_STRING, TWINHUB_HUB_NAME and TWINHUB_CA must be set",
        file=sys.stderr,
    )
    sys.exit(2)

DEVICE_ID = "py-routing-mqtt"
ISO_8601 = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z$")
RECEIVE_SECONDS_MAX = 30
# After the last expected event, how long to go on reading, so that an event that should not be there shows.
SETTLE_SECONDS = 2

# (kind, level, temperature): the route "critical" takes the first, the fallback route the others.
TELEMETRY = [
    ("app", "critical", 10),
    ("app", "normal", 10),
    ("body", "normal", 35),
    ("twin", "normal", 0),
]


def text(value):
    return value.decode() if isinstance(value, bytes) else value


def read_device_events(expected):
    """Every event of DEVICE_ID from the start of every partition, once `expected` are in and a little
    more time passed."""
    client = EventHubConsumerClient.from_connection_string(
        EVENTHUBS_CONNECTION_STRING, consumer_group="$Default", connection_verify=CA, retry_total=0
    )
    records = []
    lock = threading.Lock()
    complete = threading.Event()

    def on_event_batch(partition_context, events):
        with lock:
            for event in events:
                system = {text(key): text(value) for key, value in (event.system_properties or {}).items()}
                if system.get("iothub-connection-device-id") != DEVICE_ID:
                    continue
                records.append(
                    {
                        "sequence_number": event.sequence_number,
                        "partition": partition_context.partition_id,
                        "body": json.loads(event.body_as_str(encoding="UTF-8")),
                        "properties": {text(key): text(value) for key, value in (event.properties or {}).items()},
                        "system": system,
                        "content_type": event.content_type,
                        "correlation_id": event.correlation_id,
                    }
                )
            if len(records) >= expected:
                complete.set()

    def close_when_done():
        if complete.wait(RECEIVE_SECONDS_MAX):
            time.sleep(SETTLE_SECONDS)
        client.close()

    closer = threading.Thread(target=close_when_done, daemon=True)
    closer.start()
    client.receive_batch(on_event_batch=on_event_batch, max_batch_size=100, max_wait_time=1, starting_position="-1")
    closer.join()
    with lock:
        check(complete.is_set(), "got {} of {} events of {}".format(len(records), expected, DEVICE_ID))
        return sorted(records, key=lambda record: record["sequence_number"])


def check_hub_event(record, source, schema, op_type):
    what = "{} event".format(op_type)
    check_equal(record["system"].get("iothub-message-source"), source, what + ": iothub-message-source")
    check_equal(record["content_type"], "application/json", what + ": content type")
    check(record["correlation_id"], what + ": a correlation id")
    properties = record["properties"]
    check_equal(properties.get("hubName"), HUB_NAME, what + ": hubName")
    check_equal(properties.get("deviceId"), DEVICE_ID, what + ": deviceId")
    check_equal(properties.get("iothub-message-schema"), schema, what + ": iothub-message-schema")
    check_equal(properties.get("opType"), op_type, what + ": opType")
    check(ISO_8601.match(properties.get("operationTimestamp", "")), what + ": operationTimestamp")


def main():
    registry = IoTHubRegistryManager.from_connection_string(CONNECTION_STRING)
    host = dict(part.split("=", 1) for part in CONNECTION_STRING.split(";"))["HostName"]

    log("create the device and connect it over MQTT")
    client = register_device_client(registry, host, DEVICE_ID, websockets=False)
    client.connect()

    log("the back end patches tags, then desired properties, then replaces the twin")
    twin = registry.get_twin(DEVICE_ID)
    twin = registry.update_twin(DEVICE_ID, Twin(tags={"plant": "somewhere"}), twin.etag)
    twin = registry.update_twin(
        DEVICE_ID, Twin(properties=TwinProperties(desired={"fan": {"speed": 3}})), twin.etag
    )
    registry.replace_twin(
        DEVICE_ID, Twin(tags={"plant": "north"}, properties=TwinProperties(desired={"mode": "replaced"}))
    )

    log("the device reports")
    client.patch_twin_reported_properties({"firmware": "2.0", "battery": 70})

    log("four telemetry messages")
    for kind, level, temperature in TELEMETRY:
        message = Message(
            json.dumps({"temperature": temperature, "kind": kind}),
            content_encoding="utf-8",
            content_type="application/json",
        )
        message.custom_properties = {"kind": kind, "level": level}
        client.send_message(message)

    log("disconnect, then delete the device")
    client.shutdown()
    deadline = time.time() + 15
    while registry.get_device(DEVICE_ID).connection_state != "Disconnected":
        check(time.time() < deadline, "the device never showed Disconnected")
        time.sleep(0.1)
    registry.delete_device(DEVICE_ID)

    routed = TELEMETRY
    expected = 2 + 4 + len(routed) + 2
    log("read the device's {} events".format(expected))
    records = read_device_events(expected)
    check_equal(len({record["partition"] for record in records}), 1, "partitions the device's events are in")
    summary = [record["properties"].get("opType") or "telemetry:" + record["properties"]["kind"] for record in records]
    check_equal(
        summary,
        ["createDeviceIdentity", "deviceConnected", "updateTwin", "updateTwin", "replaceTwin", "updateTwin"]
        + ["telemetry:" + entry[0] for entry in routed]
        + ["deviceDisconnected", "deleteDeviceIdentity"],
        "the device's events, in order",
    )
    created, connected, tags, desired, replaced, reported = records[:6]
    disconnected, deleted = records[-2:]

    log("lifecycle and connection state events")
    check_hub_event(created, "deviceLifecycleEvents", "deviceLifecycleNotification", "createDeviceIdentity")
    check_hub_event(deleted, "deviceLifecycleEvents", "deviceLifecycleNotification", "deleteDeviceIdentity")
    check_equal(created["body"]["deviceId"], DEVICE_ID, "the created twin's deviceId")
    check_equal(deleted["body"]["tags"], {"plant": "north"}, "the deleted twin's tags")
    check_hub_event(connected, "deviceConnectionStateEvents", "deviceConnectionStateNotification", "deviceConnected")
    check_hub_event(
        disconnected, "deviceConnectionStateEvents", "deviceConnectionStateNotification", "deviceDisconnected"
    )
    check(
        connected["body"]["sequenceNumber"] < disconnected["body"]["sequenceNumber"],
        "connection state sequence numbers grow",
    )

    log("twin change notifications, one per version")
    for record in (tags, desired, reported):
        check_hub_event(record, "twinChangeEvents", "twinChangeNotification", "updateTwin")
    check_hub_event(replaced, "twinChangeEvents", "twinChangeNotification", "replaceTwin")
    check_equal(
        [record["body"]["version"] for record in (tags, desired, replaced, reported)], [2, 3, 4, 5], "twin versions"
    )
    check_equal(tags["body"], {"version": 2, "tags": {"plant": "somewhere"}}, "the tags patch's body")
    desired_body = desired["body"]["properties"]["desired"]
    check_equal(desired_body["fan"], {"speed": 3}, "the desired patch")
    check_equal(desired_body["$version"], 2, "desired $version")
    check_equal(desired_body["$metadata"]["fan"]["speed"]["$lastUpdatedVersion"], 2, "desired metadata")
    check_equal(replaced["body"]["tags"], {"plant": "north"}, "the replaced twin's tags")
    check_equal(replaced["body"]["properties"]["desired"].get("fan"), None, "what the replacement dropped")
    reported_body = reported["body"]["properties"]["reported"]
    check_equal((reported_body["firmware"], reported_body["battery"]), ("2.0", 70), "the reported patch")
    check_equal(reported_body["$version"], 2, "reported $version")

    log("every telemetry message once: through its route or the fallback route")
    for record, (kind, level, temperature) in zip(records[6:-2], routed):
        check_equal(record["system"].get("iothub-message-source"), "Telemetry", "telemetry source")
        check_equal(record["body"], {"temperature": temperature, "kind": kind}, "telemetry body")
        check_equal(record["properties"].get("level"), level, "telemetry level")


if __name__ == "__main__":
    run("routing_test.py", main)
