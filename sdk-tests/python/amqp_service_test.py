"""The Python service SDK's AMQP client (azure-iot-hub's send_c2d_message, on uAMQP) against a real
twinhub: it opens AMQP with SASL MSSBCBS and authenticates with a CBS put-token (a ulong message-id,
a service token for the hub's audience). Run by crates/twinhub/tests/sdk_device.rs with
TWINHUB_CONNECTION_STRING (iothubowner) and SSL_CERT_FILE (the hub's CA).

Cloud-to-device messages come with a later issue, so the hub rejects the message itself
(amqp:not-implemented) after authenticating the client; with a wrong key the client is refused by
CBS instead. The script checks the two fail differently, and the Rust side checks the hub's log.
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

    log("send_c2d_message: SASL MSSBCBS and CBS succeed, the hub refuses the message itself")
    refused = send_error(registry)
    check(refused is not None, "C2D is not supported yet, so the send must fail")
    print("  with the right key: {}: {}".format(type(refused).__name__, refused), flush=True)
    check("C2D message send failure" in str(refused), "the message was refused, not the client: {!r}".format(refused))

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


if __name__ == "__main__":
    run("amqp_service_test.py", main)
