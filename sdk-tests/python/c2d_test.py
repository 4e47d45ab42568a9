"""Cloud-to-device messages through the official Python SDKs, against a real twinhub: azure-iot-hub's
IoTHubRegistryManager.send_c2d_message (uAMQP, a sender link to /messages/devicebound) sends, and
azure-iot-device clients receive with on_message_received (one over MQTT, one over MQTT over
WebSockets). Run by crates/twinhub/tests/sdk_c2d_python.rs with TWINHUB_CONNECTION_STRING
(iothubowner), TWINHUB_CA and SSL_CERT_FILE / REQUESTS_CA_BUNDLE (the hub's CA) set.

Checks, for each device: a message with application properties (values with characters the topic must
encode, an empty one, a number) and every system property the SDK maps (messageId, correlationId,
contentType, contentEncoding, expiryTimeUtc) and iothub-ack reaches the device with its data, ids,
content type and encoding, expiry, ack and custom properties exactly; 10 messages arrive in order; the
messages sent while the client is disconnected arrive when it connects again. Once: messages sent to a
device that never connected arrive once it connects and sets its handler; a message to a device that
does not exist fails (the hub rejects it with amqp:not-found); a device's queue takes 50 messages and
the 51st fails (amqp:resource-limit-exceeded), after which the device receives exactly the 50, in order.
No message arrives twice. Exits non-zero at the first failed check.
"""

import datetime
import json
import logging
import os
import sys
import threading
import time

from checks import CheckFailed, check, check_equal, connection_string_part, log, register_device_client, run, transport_name
from azure.iot.hub import IoTHubRegistryManager

CONNECTION_STRING = os.environ.get("TWINHUB_CONNECTION_STRING")
CA = os.environ.get("TWINHUB_CA")
if not (CONNECTION_STRING and CA):
    print("TWINHUB_CONNECTION_STRING and TWINHUB_CA must be set", file=sys.stderr)
    sys.exit(2)

# Each device is one of the transports; the device id says which.
DEVICES = [("py-c2d-mqtt", False), ("py-c2d-mqttws", True)]
LATE_ID = "py-c2d-late"  # messages wait for it before it ever connects
FULL_ID = "py-c2d-full"  # its queue is filled to IoT Hub's limit while it is offline
MISSING_ID = "py-c2d-missing"  # never registered

ORDERED_COUNT = 10
OFFLINE_COUNT = 3
QUEUE_DEPTH_MAX = 50
# How long a message may take to reach a connected device.
ARRIVAL_SECONDS = 15
# How long to watch for a message arriving a second time.
QUIET_SECONDS = 1.5

APPLICATION_PROPERTIES = {
    "color": "blue",
    "spaced key": "a b+c",
    "symbols": "x=1&y=2/3?%#;,$",
    "unicode": "gr\u00fc\u00dfe \u2713",
    "empty": "",
}
# A number goes out as an AMQP number; a device reads every property as a string.
NUMBER_PROPERTY = ("count", 7)


class SendErrors(logging.Handler):
    """What uAMQP logs when a send fails: the AMQP error the hub settled the message with. The
    registry manager raises a bare Exception without it."""

    def __init__(self):
        super().__init__(level=logging.INFO)
        self.errors = []

    def emit(self, record):
        for arg in record.args or ():
            if hasattr(arg, "condition"):
                self.errors.append(arg)

    def take(self):
        errors, self.errors = self.errors, []
        return errors


class Device:
    """A device app: an IoTHubDeviceClient whose message handler records every message it receives."""

    def __init__(self, registry, host, device_id, websockets):
        self.device_id = device_id
        self.transport = transport_name(websockets)
        self.client = register_device_client(registry, host, device_id, websockets)
        self.messages = []
        self.arrived = threading.Condition()

    def connect(self):
        self.client.connect()

    def listen(self):
        """Subscribes to cloud-to-device messages (the SDK does so when the handler is set, and returns
        once the hub granted it)."""
        self.client.on_message_received = self.on_message

    def on_message(self, message):
        with self.arrived:
            self.messages.append(message)
            self.arrived.notify_all()

    def wait_for(self, count, what):
        """The first `count` messages received, once they are there."""
        deadline = time.monotonic() + ARRIVAL_SECONDS
        with self.arrived:
            while len(self.messages) < count:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise CheckFailed(
                        "{}: {} of {} messages arrived within {} s: {}".format(
                            what, len(self.messages), count, ARRIVAL_SECONDS, [describe(m) for m in self.messages]
                        )
                    )
                self.arrived.wait(left)
            return list(self.messages[:count])

    def count(self):
        with self.arrived:
            return len(self.messages)


def describe(message):
    return {
        "data": message.data,
        "message_id": message.message_id,
        "custom_properties": message.custom_properties,
    }


def millis_now():
    return int(time.time() * 1000)


def check_full_message(registry, device, number):
    """A message with every property the SDK maps reaches the device exactly."""
    body = json.dumps({"device": device.device_id, "text": "gr\u00fc\u00dfe \u2713", "number": number})
    expiry = millis_now() + 10 * 60 * 1000
    message_id = "py-c2d-{}-{}".format(device.transport, number)
    correlation_id = "corr:{}/{}".format(device.device_id, number)
    properties = dict(APPLICATION_PROPERTIES)
    properties[NUMBER_PROPERTY[0]] = NUMBER_PROPERTY[1]
    properties.update(
        {
            "messageId": message_id,
            "correlationId": correlation_id,
            "contentType": "application/json",
            "contentEncoding": "utf-8",
            "expiryTimeUtc": expiry,
            "iothub-ack": "positive",
        }
    )
    before = device.count()
    registry.send_c2d_message(device.device_id, body, properties=properties)
    message = device.wait_for(before + 1, device.device_id + ": the message")[before]
    what = device.device_id + " message"
    check_equal(message.data, body.encode("utf-8"), what + ": data")
    check_equal(message.message_id, message_id, what + ": message_id")
    check_equal(message.correlation_id, correlation_id, what + ": correlation_id")
    check_equal(message.content_type, "application/json", what + ": content_type")
    check_equal(message.content_encoding, "utf-8", what + ": content_encoding")
    check_equal(message.ack, "positive", what + ": ack")
    expected_custom = dict(APPLICATION_PROPERTIES)
    expected_custom[NUMBER_PROPERTY[0]] = str(NUMBER_PROPERTY[1])
    check_equal(message.custom_properties, expected_custom, what + ": custom_properties")
    check(message.expiry_time_utc is not None, what + ": no expiry_time_utc")
    try:
        received_expiry = datetime.datetime.fromisoformat(message.expiry_time_utc)
    except ValueError:
        raise CheckFailed("{}: expiry_time_utc {!r} is not ISO 8601".format(what, message.expiry_time_utc))
    check_equal(
        int(received_expiry.timestamp() * 1000), expiry, what + ": expiry_time_utc {!r}".format(message.expiry_time_utc)
    )
    print("  {}: data, ids, content type and encoding, ack, expiry {} and {} custom properties as sent".format(
        device.device_id, message.expiry_time_utc, len(expected_custom)
    ), flush=True)


def send_numbered(registry, device_id, tag, count):
    """Sends `count` messages; each says its number in its body, its message id and a property."""
    for number in range(count):
        registry.send_c2d_message(
            device_id,
            "{} {}".format(tag, number),
            properties={"messageId": "{}-{}".format(tag, number), "n": str(number), "tag": tag},
        )


def check_numbered(messages, tag, count, what):
    check_equal(
        [(m.data, m.message_id, m.custom_properties) for m in messages],
        [
            ("{} {}".format(tag, n).encode(), "{}-{}".format(tag, n), {"n": str(n), "tag": tag})
            for n in range(count)
        ],
        what + ": the messages, in order",
    )


def expect_send_failure(registry, send_errors, device_id, body, condition, what):
    """send_c2d_message must raise; uAMQP must have logged the hub's `condition` for it."""
    send_errors.take()
    try:
        registry.send_c2d_message(device_id, body, properties={"messageId": what})
    except Exception as error:  # noqa: BLE001 - the SDK raises a bare Exception
        logged = send_errors.take()
        conditions = [str(getattr(e, "condition", "")) for e in logged]
        check(
            any(condition in c for c in conditions),
            "{}: the hub's outcome was not {} but {!r}".format(what, condition, [str(e) for e in logged]),
        )
        print("  {}: {}.{}: {!r} (uAMQP: {})".format(
            what, type(error).__module__, type(error).__qualname__, str(error), "; ".join(str(e) for e in logged)
        ), flush=True)
        return error
    raise CheckFailed("{}: send_c2d_message succeeded".format(what))


def main():
    send_errors = SendErrors()
    uamqp_log = logging.getLogger("uamqp.client")
    uamqp_log.setLevel(logging.INFO)
    uamqp_log.addHandler(send_errors)

    registry = IoTHubRegistryManager.from_connection_string(CONNECTION_STRING)
    host = connection_string_part(CONNECTION_STRING, "HostName")
    devices = []
    try:
        run_checks(registry, host, devices, send_errors)
    except BaseException:
        # The failure is what the script reports; the clients only must not keep it running.
        for device in devices:
            try:
                device.client.shutdown()
            except Exception:  # noqa: BLE001
                pass
        try:
            registry.amqp_svc_client.disconnect_sync()
        except Exception:  # noqa: BLE001
            pass
        raise
    log("shut down every device client and the registry manager's AMQP client")
    for device in devices:
        device.client.shutdown()
    registry.amqp_svc_client.disconnect_sync()


def run_checks(registry, host, devices, send_errors):
    """Every check; each device it makes is added to `devices` (for the shutdown)."""
    for device_id, websockets in DEVICES:
        log("{}: register, connect over {}, set on_message_received".format(device_id, transport_name(websockets)))
        device = Device(registry, host, device_id, websockets)
        devices.append(device)
        device.connect()
        device.listen()

        log("{}: a message with application and system properties".format(device_id))
        check_full_message(registry, device, 1)

        log("{}: {} messages arrive in order".format(device_id, ORDERED_COUNT))
        before = device.count()
        send_numbered(registry, device_id, "ordered", ORDERED_COUNT)
        received = device.wait_for(before + ORDERED_COUNT, device_id + " ordered")[before:]
        check_numbered(received, "ordered", ORDERED_COUNT, device_id)

        log("{}: disconnect, {} messages sent meanwhile arrive on connect".format(device_id, OFFLINE_COUNT))
        device.client.disconnect()
        before = device.count()
        send_numbered(registry, device_id, "offline", OFFLINE_COUNT)
        time.sleep(0.5)
        check_equal(device.count(), before, device_id + ": messages received while disconnected")
        device.connect()
        received = device.wait_for(before + OFFLINE_COUNT, device_id + " after reconnecting")[before:]
        check_numbered(received, "offline", OFFLINE_COUNT, device_id + " after reconnecting")

    log("{}: {} messages before it ever connected arrive once it connects and listens".format(
        LATE_ID, OFFLINE_COUNT
    ))
    late = Device(registry, host, LATE_ID, False)
    devices.append(late)
    send_numbered(registry, LATE_ID, "early", OFFLINE_COUNT)
    late.connect()
    late.listen()
    check_numbered(late.wait_for(OFFLINE_COUNT, LATE_ID), "early", OFFLINE_COUNT, LATE_ID)

    log("a device that does not exist: send_c2d_message fails (amqp:not-found)")
    expect_send_failure(registry, send_errors, MISSING_ID, "to nobody", "NotFound", "unknown device")

    log("{}: {} messages to an offline device are queued, the {}st fails (amqp:resource-limit-exceeded)".format(
        FULL_ID, QUEUE_DEPTH_MAX, QUEUE_DEPTH_MAX + 1
    ))
    full = Device(registry, host, FULL_ID, True)
    devices.append(full)
    send_numbered(registry, FULL_ID, "fill", QUEUE_DEPTH_MAX)
    expect_send_failure(
        registry, send_errors, FULL_ID, "one too many", "ResourceLimitExceeded", "message {}".format(QUEUE_DEPTH_MAX + 1)
    )

    log("{}: connects over mqttws: exactly the {} queued messages, in order".format(FULL_ID, QUEUE_DEPTH_MAX))
    full.connect()
    full.listen()
    check_numbered(full.wait_for(QUEUE_DEPTH_MAX, FULL_ID), "fill", QUEUE_DEPTH_MAX, FULL_ID)

    log("no message arrives twice")
    time.sleep(QUIET_SECONDS)
    expected = {
        DEVICES[0][0]: 1 + ORDERED_COUNT + OFFLINE_COUNT,
        DEVICES[1][0]: 1 + ORDERED_COUNT + OFFLINE_COUNT,
        LATE_ID: OFFLINE_COUNT,
        FULL_ID: QUEUE_DEPTH_MAX,
    }
    check_equal({device.device_id: device.count() for device in devices}, expected, "messages each device received")


if __name__ == "__main__":
    run("c2d_test.py", main)
