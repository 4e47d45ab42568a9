"""Direct methods through the official Python SDKs, against a real twinhub: two devices answer with
azure-iot-device (one over MQTT, one over MQTT over WebSockets) and the back end calls with
azure-iot-hub's IoTHubRegistryManager.invoke_device_method. Run by
crates/twinhub/tests/sdk_methods_python.rs with TWINHUB_CONNECTION_STRING (iothubowner), TWINHUB_CA
and SSL_CERT_FILE / REQUESTS_CA_BUNDLE (the hub's CA) set.

Checks, for each device: a connected device that has not subscribed to methods is not online (404
DeviceNotOnline); a JSON payload goes to the device as sent and the device's status (201) and payload
come back exactly; a status other than 200 comes back as the device gave it; 20 concurrent calls each get
their own answer. Once: a registered device that is not connected is not online (404 DeviceNotOnline),
an unknown device is not found (404 DeviceNotFound), a response timeout IoT Hub does not allow is a bad
request (400), a call the device never answers times out after responseTimeoutInSeconds (504
GatewayTimeoutException) and the device still answers the next call, and a call with
connectTimeoutInSeconds reaches a device that connects and subscribes while it waits. Exits non-zero at
the first failed check.
"""

import concurrent.futures
import os
import sys
import threading
import time

from checks import check, check_equal, connection_string_part, expect_http_error, log, register_device_client, run, transport_name
from azure.iot.device import MethodResponse
from azure.iot.hub import IoTHubRegistryManager
from azure.iot.hub.models import CloudToDeviceMethod

CONNECTION_STRING = os.environ.get("TWINHUB_CONNECTION_STRING")
CA = os.environ.get("TWINHUB_CA")
if not (CONNECTION_STRING and CA):
    print("TWINHUB_CONNECTION_STRING and TWINHUB_CA must be set", file=sys.stderr)
    sys.exit(2)

# Each device is one of the transports; the device id says which.
DEVICES = [("py-methods-mqtt", False), ("py-methods-mqttws", True)]
OFFLINE_ID = "py-methods-offline"  # registered, never connected
LATE_ID = "py-methods-late"  # connects while a call waits for it
MISSING_ID = "py-methods-missing"  # never registered

# How long a call that the device answers may take before the hub gives up on it.
RESPONSE_TIMEOUT_SECONDS = 15
# The shortest response timeout IoT Hub allows: the call the device never answers.
SHORT_RESPONSE_TIMEOUT_SECONDS = 5
# How much longer than its response timeout a timed-out call may take to fail.
TIMEOUT_SLACK_SECONDS = 5
CONNECT_TIMEOUT_SECONDS = 20
LATE_CONNECT_SECONDS = 2
CONCURRENT_CALLS = 20
# A device that is not online is refused at once when the call does not ask to wait.
REFUSAL_SECONDS_MAX = 3

PAYLOAD = {
    "text": "gr\u00fc\u00dfe \u2713",
    "n": 42,
    "f": 1.5,
    "flag": True,
    "none": None,
    "list": [1, "two", {"three": 3}],
    "nested": {"a": {"b": "c"}},
}


def method(name, payload=None, response_timeout=RESPONSE_TIMEOUT_SECONDS, connect_timeout=None):
    return CloudToDeviceMethod(
        method_name=name,
        payload=payload,
        response_timeout_in_seconds=response_timeout,
        connect_timeout_in_seconds=connect_timeout,
    )


class Device:
    """A device app: an IoTHubDeviceClient whose method handler answers as the method name says, and
    records what it was asked."""

    def __init__(self, registry, host, device_id, websockets):
        self.device_id = device_id
        self.transport = transport_name(websockets)
        self.client = register_device_client(registry, host, device_id, websockets)
        self.requests = []
        self.in_hand = 0
        self.in_hand_max = 0
        self.lock = threading.Lock()

    def connect(self):
        self.client.connect()

    def listen(self):
        """Subscribes to direct methods (the SDK does so when the handler is set, and returns once the hub
        granted it)."""
        self.client.on_method_request_received = self.on_method_request

    def on_method_request(self, request):
        with self.lock:
            self.requests.append((request.request_id, request.name, request.payload))
            self.in_hand += 1
            self.in_hand_max = max(self.in_hand_max, self.in_hand)
        try:
            answer = self.answer(request)
        finally:
            with self.lock:
                self.in_hand -= 1
        if answer is not None:
            status, payload = answer
            self.client.send_method_response(MethodResponse.create_from_method_request(request, status, payload))

    def answer(self, request):
        """(status, payload) for a request, or None to leave it unanswered."""
        if request.name == "echo":
            return 201, {"device": self.device_id, "method": request.name, "received": request.payload}
        if request.name == "fail":
            return request.payload["status"], {"error": "failed on purpose", "transport": self.transport}
        if request.name == "numbered":
            # Answers take different times, so they come back in another order than the calls went out.
            call = request.payload["call"]
            time.sleep(0.05 * (call % 4) + 0.1)
            return 200, {"device": self.device_id, "call": call, "requestId": request.request_id}
        if request.name == "ignore":
            return None
        return 501, {"unknown method": request.name}

    def received(self, name):
        with self.lock:
            return [(request_id, payload) for request_id, method_name, payload in self.requests if method_name == name]


def check_echo(registry, device, payload, what):
    result = registry.invoke_device_method(device.device_id, method("echo", payload))
    check_equal(result.status, 201, what + ": status")
    check_equal(
        result.payload, {"device": device.device_id, "method": "echo", "received": payload}, what + ": payload"
    )
    return result


def expect_not_online(registry, device_id, what):
    started = time.monotonic()
    error = expect_http_error(
        lambda: registry.invoke_device_method(device_id, method("echo", PAYLOAD)), 404, "DeviceNotOnline"
    )
    elapsed = time.monotonic() - started
    check("DeviceNotOnline" in error.response.text, "{}: response text: {!r}".format(what, error.response.text))
    check(elapsed < REFUSAL_SECONDS_MAX, "{}: refused after {:.1f} s, not at once".format(what, elapsed))
    print("  {}: {}".format(what, error.response.json()["Message"]), flush=True)


def check_concurrent_calls(registry, device):
    def call(number):
        return number, registry.invoke_device_method(device.device_id, method("numbered", {"call": number}))

    with concurrent.futures.ThreadPoolExecutor(max_workers=CONCURRENT_CALLS) as pool:
        results = list(pool.map(call, range(CONCURRENT_CALLS)))
    request_ids = set()
    for number, result in results:
        what = "{} call {}".format(device.device_id, number)
        check_equal(result.status, 200, what + ": status")
        check_equal(set(result.payload), {"device", "call", "requestId"}, what + ": payload keys")
        check_equal(result.payload["device"], device.device_id, what + ": the device that answered")
        check_equal(result.payload["call"], number, what + ": the call the answer is for")
        request_ids.add(result.payload["requestId"])
    check_equal(len(request_ids), CONCURRENT_CALLS, "distinct request ids of {}'s calls".format(device.device_id))
    received = device.received("numbered")
    check_equal(
        sorted(payload["call"] for _, payload in received),
        list(range(CONCURRENT_CALLS)),
        "calls {} received, each once".format(device.device_id),
    )
    check_equal({request_id for request_id, _ in received}, request_ids, "request ids {} received".format(device.device_id))
    check(
        device.in_hand_max >= 2,
        "{} never had two calls in hand at once: the calls did not overlap".format(device.device_id),
    )
    print("  {}: {} calls answered, up to {} in hand at once".format(
        device.device_id, CONCURRENT_CALLS, device.in_hand_max
    ), flush=True)


def main():
    registry = IoTHubRegistryManager.from_connection_string(CONNECTION_STRING)
    host = connection_string_part(CONNECTION_STRING, "HostName")
    devices = []
    try:
        run_checks(registry, host, devices)
    except BaseException:
        # The failure is what the script reports; the clients only must not keep it running.
        for device in devices:
            try:
                device.client.shutdown()
            except Exception:  # noqa: BLE001
                pass
        raise
    log("shut down every device client")
    for device in devices:
        device.client.shutdown()


def run_checks(registry, host, devices):
    """Every check; each device it makes is added to `devices` (for the shutdown)."""
    for device_id, websockets in DEVICES:
        log("{}: register, connect over {}".format(device_id, transport_name(websockets)))
        device = Device(registry, host, device_id, websockets)
        devices.append(device)
        device.connect()

        log("{}: connected but not subscribed to methods: 404 DeviceNotOnline".format(device_id))
        expect_not_online(registry, device_id, "connected, not subscribed")

        log("{}: subscribe to methods".format(device_id))
        device.listen()

        log("{}: a JSON payload there and back, status 201".format(device_id))
        check_echo(registry, device, PAYLOAD, device_id + " echo")
        check_equal(device.received("echo")[-1][1], PAYLOAD, device_id + ": the payload the device received")

        for status in (404, 500):
            log("{}: the device answers status {}: the result carries it".format(device_id, status))
            result = registry.invoke_device_method(device_id, method("fail", {"status": status}))
            check_equal(result.status, status, "{} fail: status".format(device_id))
            check_equal(
                result.payload,
                {"error": "failed on purpose", "transport": transport_name(websockets)},
                "{} fail: payload".format(device_id),
            )

        log("{}: {} concurrent calls, each with its own answer".format(device_id, CONCURRENT_CALLS))
        check_concurrent_calls(registry, device)

    log("a registered device that is not connected: 404 DeviceNotOnline")
    registry.create_device_with_sas(OFFLINE_ID, "", "", "enabled")
    expect_not_online(registry, OFFLINE_ID, "not connected")

    log("a device that does not exist: 404 DeviceNotFound")
    expect_http_error(lambda: registry.invoke_device_method(MISSING_ID, method("echo", PAYLOAD)), 404, "DeviceNotFound")

    log("responseTimeoutInSeconds below IoT Hub's 5: 400")
    expect_http_error(
        lambda: registry.invoke_device_method(DEVICES[0][0], method("echo", PAYLOAD, response_timeout=4)),
        400,
        "ArgumentInvalid",
    )

    device = devices[0]
    log("{}: a call the device never answers, responseTimeoutInSeconds {}: 504".format(
        device.device_id, SHORT_RESPONSE_TIMEOUT_SECONDS
    ))
    started = time.monotonic()
    expect_http_error(
        lambda: registry.invoke_device_method(
            device.device_id, method("ignore", {"n": 1}, response_timeout=SHORT_RESPONSE_TIMEOUT_SECONDS)
        ),
        504,
        "GatewayTimeoutException",
    )
    elapsed = time.monotonic() - started
    check(
        SHORT_RESPONSE_TIMEOUT_SECONDS - 0.5 <= elapsed <= SHORT_RESPONSE_TIMEOUT_SECONDS + TIMEOUT_SLACK_SECONDS,
        "the unanswered call failed after {:.1f} s, not after about {} s".format(
            elapsed, SHORT_RESPONSE_TIMEOUT_SECONDS
        ),
    )
    check_equal(len(device.received("ignore")), 1, "unanswered requests the device received")
    print("  failed after {:.1f} s".format(elapsed), flush=True)

    log("{}: the next call is answered".format(device.device_id))
    check_echo(registry, device, {"after": "timeout"}, device.device_id + " echo after the timeout")

    log("{}: connectTimeoutInSeconds {}, the device connects and subscribes {} s into the call".format(
        LATE_ID, CONNECT_TIMEOUT_SECONDS, LATE_CONNECT_SECONDS
    ))
    late = Device(registry, host, LATE_ID, False)
    devices.append(late)
    late_errors = []

    def connect_late():
        try:
            time.sleep(LATE_CONNECT_SECONDS)
            late.connect()
            late.listen()
        except Exception as error:  # noqa: BLE001 - reported by the main thread
            late_errors.append(error)

    connector = threading.Thread(target=connect_late, daemon=True)
    started = time.monotonic()
    connector.start()
    payload = {"late": True, "list": [1, 2, 3]}
    result = registry.invoke_device_method(
        LATE_ID, method("echo", payload, connect_timeout=CONNECT_TIMEOUT_SECONDS)
    )
    elapsed = time.monotonic() - started
    connector.join()
    check(not late_errors, "the late device failed to connect: {!r}".format(late_errors))
    check_equal(result.status, 201, "late call: status")
    check_equal(result.payload, {"device": LATE_ID, "method": "echo", "received": payload}, "late call: payload")
    check(
        LATE_CONNECT_SECONDS <= elapsed < CONNECT_TIMEOUT_SECONDS,
        "the late call was answered after {:.1f} s".format(elapsed),
    )
    print("  answered after {:.1f} s".format(elapsed), flush=True)


if __name__ == "__main__":
    run("methods_test.py", main)
