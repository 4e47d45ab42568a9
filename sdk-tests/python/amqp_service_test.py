"""The Python service SDK's AMQP client (azure-iot-hub's send_c2d_message, on uAMQP) against a real
twinhub: it opens AMQP with SASL MSSBCBS and authenticates with a CBS put-token (a ulong message-id,
a service token for the hub's audience). Run by crates/twinhub/tests/sdk_device.rs with
TWINHUB_CONNECTION_STRING (iothubowner) and SSL_CERT_FILE (the hub's CA).

With the right key the message is queued for the device (its cloudToDeviceMessageCount becomes 1);
with a wrong key the client is refused by CBS and nothing is queued. The Rust side checks the hub's
log for how each came in. (Cloud-to-device messages themselves are tested in c2d_test.py.)
"""

import os
import sys

from checks import check, log, run
from azure.iot.hub import IoTHubRegistryManager

CONNECTION_STRING = os.environ.get("TWINHUB_CONNECTION_STRING")
DEVICE_ID = os.environ.get("TWINHUB_DEVICE_ID", "py-amqp-c2d")
if not CONNECTION_STRING:
    print("TWINHUB_CONNECTION_STRING is not set", file=sys.stderr)
    sys.exit(2)


def with_key(connection_string, key):
    return ";".join(
        "SharedAccessKey=" + key if part.startswith("SharedAccessKey=") else part
        for part in connection_string.split(";")
    )


def send_error(registry):
    try:
        registry.send_c2d_message(DEVICE_ID, "hello")
    except Exception as error:  # noqa: BLE001 - the type is what is being observed
        return error
    return None


def main():
    registry = IoTHubRegistryManager.from_connection_string(CONNECTION_STRING)
    log("register " + DEVICE_ID)
    registry.create_device_with_sas(DEVICE_ID, None, None, "enabled")

    log("send_c2d_message: SASL MSSBCBS and CBS succeed, the message is queued")
    failed = send_error(registry)
    check(failed is None, "the send must succeed: {!r}".format(failed))
    queued = registry.get_device(DEVICE_ID).cloud_to_device_message_count
    check(queued == 1, "one message queued for the device, not {}".format(queued))

    log("send_c2d_message with a wrong key: CBS refuses the client")
    wrong = IoTHubRegistryManager.from_connection_string(
        with_key(CONNECTION_STRING, "bm90IHRoZSBrZXkgYXQgYWxsIGJ1dCBsb25nIGVub3VnaA==")
    )
    unauthorized = send_error(wrong)
    check(unauthorized is not None, "a wrong key must fail")
    print("  with a wrong key: {}: {}".format(type(unauthorized).__name__, unauthorized), flush=True)
    check(
        type(unauthorized).__name__ == "TokenAuthFailure",
        "a wrong key fails at CBS authentication (uAMQP's TokenAuthFailure): {!r}".format(unauthorized),
    )
    queued = registry.get_device(DEVICE_ID).cloud_to_device_message_count
    check(queued == 1, "the refused client queued nothing: {} messages".format(queued))


if __name__ == "__main__":
    run("amqp_service_test.py", main)
