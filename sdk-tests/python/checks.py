"""What every SDK test script here shares: numbered steps, checks that fail with a message, and a main
that reports the step a failure happened in and exits non-zero."""

import sys
import traceback

from msrest.exceptions import HttpOperationError


class CheckFailed(Exception):
    pass


_step = ""


def connection_string_part(connection_string, wanted):
    """The value of `wanted` in a `Name=value;...` connection string."""
    for part in connection_string.split(";"):
        name, _, value = part.partition("=")
        if name == wanted:
            return value
    raise CheckFailed("no {} in the connection string".format(wanted))


def register_device_client(registry, host, device_id, websockets):
    """Registers `device_id` with fresh symmetric keys and returns its IoTHubDeviceClient (not connected),
    over MQTT or MQTT over WebSockets."""
    import base64
    import os

    from azure.iot.device import IoTHubDeviceClient

    primary = base64.b64encode(os.urandom(32)).decode()
    secondary = base64.b64encode(os.urandom(32)).decode()
    registry.create_device_with_sas(device_id, primary, secondary, "enabled")
    return IoTHubDeviceClient.create_from_connection_string(
        "HostName={};DeviceId={};SharedAccessKey={}".format(host, device_id, primary), websockets=websockets
    )


def transport_name(websockets):
    """How a device test names the MQTT transport it uses."""
    return "mqttws" if websockets else "mqtt"


def log(message):
    global _step
    _step = message
    print("- " + message, flush=True)


def check(condition, message):
    if not condition:
        raise CheckFailed(message)


def check_equal(actual, expected, what):
    if actual != expected:
        raise CheckFailed("{}: expected {!r}, got {!r}".format(what, expected, actual))


def run(script, main):
    """Runs `main`; any exception ends the script with the step it happened in and exit status 1."""
    try:
        main()
    except Exception as error:  # noqa: BLE001 - every failure ends the script with its step
        print('{} FAILED at step "{}":'.format(script, _step), file=sys.stderr)
        traceback.print_exc()
        response = getattr(error, "response", None)
        if response is not None:
            print("response: {} {}".format(response.status_code, response.text), file=sys.stderr)
        sys.exit(1)
    print("{}: all checks passed".format(script), flush=True)
    sys.exit(0)


def expect_http_error(operation, status, code):
    """`operation` must fail with HttpOperationError carrying `status`, IoT Hub's classic error body
    and the iothub-errorcode header."""
    try:
        result = operation()
    except HttpOperationError as error:
        response = error.response
        check_equal(response.status_code, status, "HTTP status")
        check_equal(response.headers.get("iothub-errorcode"), code, "iothub-errorcode header")
        body = response.json()
        check(
            body.get("Message", "").startswith("ErrorCode:{};".format(code)),
            "error body Message: {!r}".format(body.get("Message")),
        )
        check(
            body.get("ExceptionMessage", "").startswith("Tracking ID:"),
            "error body ExceptionMessage: {!r}".format(body.get("ExceptionMessage")),
        )
        return error
    raise CheckFailed("expected HTTP {} ({}), but the call succeeded with {!r}".format(status, code, result))
