"""A module connects with the Python device SDK's IoTHubModuleClient (azure-iot-device), unmodified, over MQTT
and MQTT over WebSockets, against a real twinhub. Run by crates/twinhub/tests/sdk_modules.rs with
TWINHUB_CONNECTION_STRING (iothubowner) and SSL_CERT_FILE / REQUESTS_CA_BUNDLE (the hub's CA).

Checks, per transport: the module's twin, a reported patch that lands in the module twin (not the device's),
a desired patch from the back end reaching the module, and Connected/Disconnected on the module twin.
"""

import os
import sys
import time

from checks import check, check_equal, log, run
from azure.iot.device import IoTHubModuleClient
from azure.iot.hub import IoTHubRegistryManager
from azure.iot.hub.models import Twin, TwinProperties

CONNECTION_STRING = os.environ.get("TWINHUB_CONNECTION_STRING")
if not CONNECTION_STRING:
    print("TWINHUB_CONNECTION_STRING must be set", file=sys.stderr)
    sys.exit(2)


def wait_for(what, condition, seconds=15):
    deadline = time.time() + seconds
    while not condition():
        check(time.time() < deadline, "timed out waiting for " + what)
        time.sleep(0.1)


def exercise(registry, host, websockets):
    transport = "mqttws" if websockets else "mqtt"
    device_id = "py-module-host-" + transport
    registry.create_device_with_sas(device_id, None, None, "enabled")
    module = registry.create_module_with_sas(device_id, "app", None, None, None)
    key = module.authentication.symmetric_key.primary_key

    log(transport + ": the module connects and reads its twin")
    client = IoTHubModuleClient.create_from_connection_string(
        "HostName={};DeviceId={};ModuleId=app;SharedAccessKey={}".format(host, device_id, key), websockets=websockets
    )
    patches = []

    def on_patch(patch):
        patches.append(patch)

    client.on_twin_desired_properties_patch_received = on_patch
    client.connect()
    twin = client.get_twin()
    check_equal(twin["desired"]["$version"], 1, "the module's desired $version")
    wait_for("Connected", lambda: registry.get_module_twin(device_id, "app").connection_state == "Connected")

    log(transport + ": a reported patch lands in the module twin")
    client.patch_twin_reported_properties({"connectivity": {"type": "wifi"}})
    module_twin = registry.get_module_twin(device_id, "app")
    check_equal(module_twin.properties.reported["connectivity"], {"type": "wifi"}, "the module's reported")
    check("connectivity" not in registry.get_twin(device_id).properties.reported, "the device's twin is untouched")

    log(transport + ": a desired patch reaches the module")
    registry.update_module_twin(device_id, "app", Twin(properties=TwinProperties(desired={"interval": 45})), module_twin.etag)
    # The SDK may first get the whole desired document once (when its subscription is acknowledged).
    wait_for("the desired patch", lambda: any(patch.get("interval") == 45 for patch in patches))

    client.shutdown()
    wait_for("Disconnected", lambda: registry.get_module_twin(device_id, "app").connection_state == "Disconnected")


def main():
    registry = IoTHubRegistryManager.from_connection_string(CONNECTION_STRING)
    host = dict(part.split("=", 1) for part in CONNECTION_STRING.split(";"))["HostName"]
    for websockets in (False, True):
        exercise(registry, host, websockets)


if __name__ == "__main__":
    run("module_client_test.py", main)
