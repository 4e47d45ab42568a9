"""Module identities and module twins through the official Python service SDK (azure-iot-hub), against a
real twinhub. Run by crates/twinhub/tests/sdk_modules.rs with TWINHUB_CONNECTION_STRING (iothubowner) and
REQUESTS_CA_BUNDLE (the hub's CA).

Checks: create_module_with_sas with given keys, get_module and get_modules, update with the etag
(a stale one is refused), get_module_twin, update_module_twin (a patch) and replace_module_twin with
versions and metadata as for devices, delete_module, and that deleting the device deletes its modules.
"""

import base64
import os
import sys

from checks import check, check_equal, expect_http_error, log, run
from azure.iot.hub import IoTHubRegistryManager
from azure.iot.hub.models import QuerySpecification, Twin, TwinProperties

CONNECTION_STRING = os.environ.get("TWINHUB_CONNECTION_STRING")
if not CONNECTION_STRING:
    print("TWINHUB_CONNECTION_STRING must be set", file=sys.stderr)
    sys.exit(2)

DEVICE_ID = "py-modules-device"


def key():
    return base64.b64encode(os.urandom(32)).decode()


def main():
    registry = IoTHubRegistryManager.from_connection_string(CONNECTION_STRING)
    registry.create_device_with_sas(DEVICE_ID, key(), key(), "enabled")

    log("create a module with its keys")
    primary, secondary = key(), key()
    created = registry.create_module_with_sas(DEVICE_ID, "sensor", "ops", primary, secondary)
    check_equal(created.module_id, "sensor", "moduleId")
    check_equal(created.device_id, DEVICE_ID, "deviceId")
    check_equal(created.managed_by, "ops", "managedBy")
    check_equal(created.authentication.symmetric_key.primary_key, primary, "the primary key given")
    expect_http_error(
        lambda: registry.create_module_with_sas(DEVICE_ID, "sensor", "ops", key(), key()),
        409,
        "ModuleAlreadyExistsOnDevice",
    )
    registry.create_module_with_sas(DEVICE_ID, "filter", None, key(), key())

    log("get_module and get_modules")
    check_equal(registry.get_module(DEVICE_ID, "sensor").etag, created.etag, "the etag read back")
    check_equal(sorted(module.module_id for module in registry.get_modules(DEVICE_ID)), ["filter", "sensor"], "modules")

    log("update with the etag; a stale etag is refused")
    updated = registry.update_module_with_sas(DEVICE_ID, "sensor", "edge", created.etag, primary, secondary)
    check_equal(updated.managed_by, "edge", "managedBy after the update")
    check(updated.etag != created.etag, "the etag moved")
    expect_http_error(
        lambda: registry.update_module_with_sas(DEVICE_ID, "sensor", "x", created.etag, primary, secondary),
        412,
        "PreconditionFailed",
    )

    log("module twin: get, patch, replace")
    twin = registry.get_module_twin(DEVICE_ID, "sensor")
    check_equal((twin.device_id, twin.module_id), (DEVICE_ID, "sensor"), "the twin's ids")
    patched = registry.update_module_twin(
        DEVICE_ID, "sensor", Twin(tags={"role": "temperature"}, properties=TwinProperties(desired={"interval": 30})), twin.etag
    )
    check_equal(patched.tags, {"role": "temperature"}, "tags after the patch")
    check_equal(patched.properties.desired["interval"], 30, "desired after the patch")
    check_equal(patched.properties.desired["$version"], 2, "desired $version after the patch")
    replaced = registry.replace_module_twin(
        DEVICE_ID, "sensor", Twin(tags={"role": "humidity"}, properties=TwinProperties(desired={"mode": "eco"}))
    )
    check_equal(replaced.tags, {"role": "humidity"}, "tags after the replacement")
    check("interval" not in replaced.properties.desired, "the replacement dropped what it did not name")
    check_equal(replaced.properties.desired["$version"], 3, "desired $version after the replacement")

    log("a query over devices.modules")
    result = registry.query_iot_hub(
        QuerySpecification(query="SELECT * FROM devices.modules WHERE tags.role = 'humidity'"), None, 100
    )
    check_equal([(twin.device_id, twin.module_id) for twin in result.items], [(DEVICE_ID, "sensor")], "modules found")

    log("delete_module, then deleting the device deletes the rest")
    registry.delete_module(DEVICE_ID, "filter")
    expect_http_error(lambda: registry.get_module(DEVICE_ID, "filter"), 404, "ModuleNotFound")
    registry.delete_device(DEVICE_ID)
    registry.create_device_with_sas(DEVICE_ID, key(), key(), "enabled")
    check_equal(registry.get_modules(DEVICE_ID), [], "modules of the device created again")
    registry.delete_device(DEVICE_ID)


if __name__ == "__main__":
    run("modules_test.py", main)
