"""The device registry and twins through the official Python service SDK (azure-iot-hub's
IoTHubRegistryManager), against a real twinhub. Run by crates/twinhub/tests/sdk_registry.rs with
TWINHUB_CONNECTION_STRING (iothubowner) and REQUESTS_CA_BUNDLE (the hub's CA) set.
Exits non-zero with a message on the first failed check.
"""

import base64
import os
import sys
import time

from checks import check, check_equal, expect_http_error, log, run
from azure.iot.hub import IoTHubRegistryManager
from azure.iot.hub.models import QuerySpecification, Twin, TwinProperties

CONNECTION_STRING = os.environ.get("TWINHUB_CONNECTION_STRING")
if not CONNECTION_STRING:
    print("TWINHUB_CONNECTION_STRING is not set", file=sys.stderr)
    sys.exit(2)

RUN = format(int(time.time() * 1000), "x")
GENERATED_ID = "py-gen-" + RUN
SUPPLIED_ID = "py-sup-" + RUN
MISSING_ID = "py-missing-" + RUN
SUPPLIED_PRIMARY = base64.b64encode(bytes([3] * 32)).decode()
SUPPLIED_SECONDARY = base64.b64encode(bytes([4] * 32)).decode()


def with_key(connection_string, key):
    parts = []
    for part in connection_string.split(";"):
        name, _, _ = part.partition("=")
        parts.append("SharedAccessKey=" + key if name == "SharedAccessKey" else part)
    return ";".join(parts)


def is_32_bytes_of_base64(text):
    try:
        return isinstance(text, str) and len(base64.b64decode(text, validate=True)) == 32
    except ValueError:
        return False


def main():
    registry = IoTHubRegistryManager.from_connection_string(CONNECTION_STRING)

    log("create a device with empty keys: the hub generates both")
    created = registry.create_device_with_sas(GENERATED_ID, "", "", "enabled")
    check_equal(created.device_id, GENERATED_ID, "deviceId")
    check_equal(created.status, "enabled", "status")
    check_equal(created.authentication.type, "sas", "authentication.type")
    generated = created.authentication.symmetric_key
    check(is_32_bytes_of_base64(generated.primary_key), "primaryKey generated: {!r}".format(generated.primary_key))
    check(
        is_32_bytes_of_base64(generated.secondary_key),
        "secondaryKey generated: {!r}".format(generated.secondary_key),
    )
    check(generated.primary_key != generated.secondary_key, "the two generated keys differ")
    check(created.etag, "device etag")
    check(created.generation_id, "generationId")
    check_equal(created.connection_state, "Disconnected", "connectionState")

    log("create a device with supplied keys: the hub keeps them")
    supplied = registry.create_device_with_sas(SUPPLIED_ID, SUPPLIED_PRIMARY, SUPPLIED_SECONDARY, "disabled")
    check_equal(supplied.device_id, SUPPLIED_ID, "deviceId")
    check_equal(supplied.status, "disabled", "status")
    check_equal(supplied.authentication.symmetric_key.primary_key, SUPPLIED_PRIMARY, "primaryKey")
    check_equal(supplied.authentication.symmetric_key.secondary_key, SUPPLIED_SECONDARY, "secondaryKey")

    log("get the device")
    fetched = registry.get_device(GENERATED_ID)
    check_equal(fetched.device_id, GENERATED_ID, "deviceId")
    check_equal(fetched.etag, created.etag, "etag")
    check_equal(fetched.authentication.symmetric_key.primary_key, generated.primary_key, "primaryKey")

    log("get its twin")
    twin = registry.get_twin(GENERATED_ID)
    check_equal(twin.device_id, GENERATED_ID, "twin deviceId")
    check(twin.etag, "twin etag")
    check_equal(twin.properties.desired.get("$version"), 1, "desired $version")
    check(not twin.tags, "a new twin has no tags, got {!r}".format(twin.tags))
    first_etag = twin.etag

    log("update_twin (tags patch) with the current etag")
    patch = Twin(tags={"location": {"region": "US", "plant": "Redmond43"}})
    patched = registry.update_twin(GENERATED_ID, patch, first_etag)
    check_equal(patched.device_id, GENERATED_ID, "patched twin deviceId")
    check_equal(patched.tags, {"location": {"region": "US", "plant": "Redmond43"}}, "tags after the patch")
    check(patched.etag != first_etag, "twin etag moved")
    check_equal(patched.version, twin.version + 1, "twin version")

    log("update_twin (desired patch) with the new etag")
    desired = Twin(properties=TwinProperties(desired={"telemetryInterval": 30}))
    patched = registry.update_twin(GENERATED_ID, desired, patched.etag)
    check_equal(patched.properties.desired.get("telemetryInterval"), 30, "desired.telemetryInterval")
    check_equal(patched.properties.desired.get("$version"), 2, "desired $version")
    check_equal(patched.tags, {"location": {"region": "US", "plant": "Redmond43"}}, "tags kept")

    log("update_twin with the stale etag -> 412")
    stale = Twin(tags={"location": {"region": "EU"}})
    expect_http_error(lambda: registry.update_twin(GENERATED_ID, stale, first_etag), 412, "PreconditionFailed")
    unchanged = registry.get_twin(GENERATED_ID)
    check_equal(unchanged.tags, patched.tags, "a refused patch changes nothing (tags)")
    check_equal(unchanged.etag, patched.etag, "a refused patch changes nothing (etag)")

    log("create a duplicate device -> 409")
    expect_http_error(
        lambda: registry.create_device_with_sas(GENERATED_ID, "", "", "enabled"), 409, "DeviceAlreadyExists"
    )

    log("get a missing device -> 404")
    expect_http_error(lambda: registry.get_device(MISSING_ID), 404, "DeviceNotFound")
    expect_http_error(lambda: registry.get_twin(MISSING_ID), 404, "DeviceNotFound")

    log("a connection string with the wrong key -> 401")
    wrong_key = base64.b64encode(bytes([9] * 32)).decode()
    impostor = IoTHubRegistryManager.from_connection_string(with_key(CONNECTION_STRING, wrong_key))
    expect_http_error(lambda: impostor.get_device(GENERATED_ID), 401, "IotHubUnauthorizedAccess")
    expect_http_error(lambda: impostor.get_devices(), 401, "IotHubUnauthorizedAccess")

    log("get_devices lists both devices")
    listed = {device.device_id: device for device in registry.get_devices()}
    check(GENERATED_ID in listed and SUPPLIED_ID in listed, "listed devices: {}".format(sorted(listed)))
    check_equal(listed[SUPPLIED_ID].status, "disabled", "listed status")
    check_equal(len(registry.get_devices(1)), 1, "get_devices(1) returns one device")

    log("query_iot_hub over a tag")
    query = QuerySpecification(query="SELECT * FROM devices WHERE tags.location.region = 'US'")
    result = registry.query_iot_hub(query)
    check_equal([item.device_id for item in result.items], [GENERATED_ID], "query result deviceIds")
    check_equal(result.type, "twin", "x-ms-item-type")
    check(result.continuation_token is None, "no continuation token on the last page")
    check_equal(result.items[0].tags, patched.tags, "queried twin tags")
    check_equal(result.items[0].etag, patched.etag, "queried twin etag")
    empty = registry.query_iot_hub(QuerySpecification(query="SELECT * FROM devices WHERE tags.location.region = 'EU'"))
    check_equal(empty.items, [], "a query matching nothing")

    log("query_iot_hub in pages of one")
    seen = []
    token = None
    for _ in range(10):
        page = registry.query_iot_hub(QuerySpecification(query="SELECT * FROM devices"), token, 1)
        check(len(page.items) <= 1, "page size 1 gave {} items".format(len(page.items)))
        seen.extend(item.device_id for item in page.items)
        token = page.continuation_token
        if token is None:
            break
    check_equal(sorted(seen), sorted([GENERATED_ID, SUPPLIED_ID]), "all devices over the pages")

    log("delete_device")
    registry.delete_device(SUPPLIED_ID)
    expect_http_error(lambda: registry.get_device(SUPPLIED_ID), 404, "DeviceNotFound")
    registry.delete_device(GENERATED_ID, fetched.etag)
    expect_http_error(lambda: registry.delete_device(GENERATED_ID), 404, "DeviceNotFound")
    check_equal(registry.get_devices(), [], "no devices left")


if __name__ == "__main__":
    run("registry_test.py", main)
