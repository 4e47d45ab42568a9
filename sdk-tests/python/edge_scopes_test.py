"""IoT Edge scopes through the official Python service SDK (azure-iot-hub's IoTHubRegistryManager),
against a real twinhub: an edge device gets its scope, a leaf device (device_scope) and a nested edge
device (parent_scopes) name it as their parent on create and update, the twins carry the scopes, and a
scope that names no edge device is refused with 400. Run by crates/twinhub/tests/sdk_registry.rs with
TWINHUB_CONNECTION_STRING (iothubowner) and REQUESTS_CA_BUNDLE (the hub's CA) set.
"""

import os
import sys

from checks import check_equal, expect_http_error, log, run
from azure.iot.hub import IoTHubRegistryManager

CONNECTION_STRING = os.environ.get("TWINHUB_CONNECTION_STRING")
if not CONNECTION_STRING:
    print("TWINHUB_CONNECTION_STRING is not set", file=sys.stderr)
    sys.exit(2)


def main():
    registry = IoTHubRegistryManager.from_connection_string(CONNECTION_STRING)

    log("create an edge device: it gets its own scope")
    edge = registry.create_device_with_sas("py-gateway", "", "", "enabled", iot_edge=True)
    scope = "ms-azure-iot-edge://py-gateway-" + edge.generation_id
    check_equal(edge.device_scope, scope, "deviceScope of the edge device")
    check_equal(edge.parent_scopes, [], "parentScopes of the edge device")
    check_equal(registry.get_twin("py-gateway").device_scope, scope, "deviceScope of its twin")

    log("create a leaf device under it (device_scope): the hub fills parent_scopes")
    leaf = registry.create_device_with_sas("py-leaf", "", "", "enabled", device_scope=scope)
    check_equal((leaf.device_scope, leaf.parent_scopes), (scope, [scope]), "the leaf's scopes")
    twin = registry.get_twin("py-leaf")
    check_equal((twin.device_scope, twin.parent_scopes), (scope, [scope]), "the leaf twin's scopes")

    log("create a nested edge device (parent_scopes): it keeps its own scope")
    nested = registry.create_device_with_sas("py-gateway-2", "", "", "enabled", iot_edge=True, parent_scopes=scope)
    nested_scope = "ms-azure-iot-edge://py-gateway-2-" + nested.generation_id
    check_equal((nested.device_scope, nested.parent_scopes), (nested_scope, [scope]), "the nested edge's scopes")

    log("a scope that names no edge device is refused")
    expect_http_error(
        lambda: registry.create_device_with_sas("py-stray", "", "", "enabled", device_scope="not-a-scope"),
        400,
        "ArgumentInvalid",
    )
    leaf_scope = "ms-azure-iot-edge://py-leaf-" + leaf.generation_id
    expect_http_error(
        lambda: registry.create_device_with_sas("py-stray", "", "", "enabled", device_scope=leaf_scope),
        400,
        "ArgumentInvalid",
    )

    log("move the leaf under the nested edge device with update_device_with_sas")
    keys = leaf.authentication.symmetric_key
    moved = registry.update_device_with_sas(
        "py-leaf", leaf.etag, keys.primary_key, keys.secondary_key, "enabled", device_scope=nested_scope
    )
    check_equal((moved.device_scope, moved.parent_scopes), (nested_scope, [nested_scope]), "the moved leaf's scopes")
    expect_http_error(
        lambda: registry.update_device_with_sas(
            "py-leaf", "*", keys.primary_key, keys.secondary_key, "enabled", device_scope="nowhere"
        ),
        400,
        "ArgumentInvalid",
    )
    check_equal(registry.get_device("py-leaf").device_scope, nested_scope, "a refused update changes nothing")


if __name__ == "__main__":
    run("edge_scopes_test.py", main)
