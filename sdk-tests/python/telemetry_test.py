"""Device-to-cloud telemetry through the official Python SDKs, against a real twinhub: two devices
send with azure-iot-device (one over MQTT, one over MQTT over WebSockets), and azure-eventhub reads
the hub's Event Hubs-compatible endpoint (AMQP on port 5671). Run by
crates/twinhub/tests/sdk_telemetry_python.rs with TWINHUB_CONNECTION_STRING (iothubowner),
TWINHUB_EVENTHUBS_CONNECTION_STRING (the `service` policy), TWINHUB_DEVICE_POLICY_EVENTHUBS_CONNECTION_STRING
(the same endpoint with the `device` policy's name and key), TWINHUB_CA and SSL_CERT_FILE (the hub's CA).

Checks, against one fresh hub: every message arrives exactly once, in order per device, with its body,
application properties, message and correlation ids, content type and encoding, the device id the hub
stamps on it and an enqueued time no earlier than the send; reading resumes from an offset (exclusive)
and from a sequence number (inclusive) with no gap and no duplicate; a second consumer group, read with
the asyncio client, sees the same events; partition properties agree with what was read; a policy
without ServiceConnect and a wrong key are refused with AuthenticationError. Exits non-zero at the
first failed check.
"""

import asyncio
import base64
import datetime
import json
import os
import sys
import threading

from checks import CheckFailed, check, check_equal, connection_string_part, log, register_device_client, run, transport_name
from azure.eventhub import EventHubConsumerClient
from azure.eventhub.aio import EventHubConsumerClient as AsyncEventHubConsumerClient
from azure.eventhub.exceptions import AuthenticationError
from azure.iot.device import Message
from azure.iot.hub import IoTHubRegistryManager

CONNECTION_STRING = os.environ.get("TWINHUB_CONNECTION_STRING")
EVENTHUBS_CONNECTION_STRING = os.environ.get("TWINHUB_EVENTHUBS_CONNECTION_STRING")
DEVICE_POLICY_EVENTHUBS_CONNECTION_STRING = os.environ.get("TWINHUB_DEVICE_POLICY_EVENTHUBS_CONNECTION_STRING")
# The SDK's development-emulator mode (UseDevelopmentEmulator=true: plain AMQP), when the hub serves it.
EMULATOR_CONNECTION_STRING = os.environ.get("TWINHUB_EVENTHUBS_EMULATOR_CONNECTION_STRING")
CA = os.environ.get("TWINHUB_CA")
if not (CONNECTION_STRING and EVENTHUBS_CONNECTION_STRING and DEVICE_POLICY_EVENTHUBS_CONNECTION_STRING and CA):
    print(
        "TWINHUB_CONNECTION_STRING, TWINHUB_EVENTHUBS_CONNECTION_STRING, "
        "TWINHUB_DEVICE_POLICY_EVENTHUBS_CONNECTION_STRING and TWINHUB_CA must be set",
        file=sys.stderr,
    )
    sys.exit(2)

MESSAGES_PER_DEVICE = 10
# Each device is one of the transports; the device id says which.
DEVICES = [("py-telemetry-mqtt", False), ("py-telemetry-mqttws", True)]
# How far the hub's clock may be behind ours when it stamps the enqueued time.
CLOCK_SKEW = datetime.timedelta(seconds=5)
# How long any one read may take before the script gives up.
RECEIVE_SECONDS_MAX = 30
# With nothing new for this long a partition reports idle (on_event(None)); the reads wait for it after
# the last expected event, so a duplicate or stray event arriving right after still gets counted.
IDLE_SECONDS = 2
BATCH_SIZE_MAX = 100
RESUME_FROM_INDEX = 3  # the 4th event of the device

WRONG_KEY = base64.b64encode(b"not the key at all, but long enough").decode()


def with_key(connection_string, key):
    return ";".join(
        "SharedAccessKey=" + key if part.startswith("SharedAccessKey=") else part
        for part in connection_string.split(";")
    )


def message_id(device_id, seq):
    return "{}-{}".format(device_id, seq)


def body_of(device_id, seq):
    return json.dumps({"device": device_id, "seq": seq})


def send_messages(registry, host, device_id, websockets):
    client = register_device_client(registry, host, device_id, websockets)
    client.connect()
    for seq in range(MESSAGES_PER_DEVICE):
        message = Message(
            body_of(device_id, seq),
            message_id=message_id(device_id, seq),
            content_encoding="utf-8",
            content_type="application/json",
        )
        message.correlation_id = "corr-{}".format(message_id(device_id, seq))
        message.custom_properties = {"seq": str(seq), "transport": transport_name(websockets)}
        client.send_message(message)
    client.shutdown()


def consumer(connection_string, consumer_group="$Default"):
    return EventHubConsumerClient.from_connection_string(
        connection_string, consumer_group=consumer_group, connection_verify=CA, retry_total=0
    )


class Reader:
    """Collects what `receive` or `receive_batch` delivers and says when to stop: once `expected` events are in and every
    partition being read has been idle since (a duplicate would have arrived by then), or at the deadline."""

    def __init__(self, expected, partition_ids):
        self.expected = expected
        self.partition_ids = set(partition_ids)
        self.records = []
        self.errors = []
        self.idle_after_complete = set()
        self.done = threading.Event()
        self.lock = threading.Lock()

    def on_event(self, partition_context, event):
        with self.lock:
            if event is None:
                if len(self.records) >= self.expected:
                    self.idle_after_complete.add(partition_context.partition_id)
                    if self.idle_after_complete >= self.partition_ids:
                        self.done.set()
                return
            self.records.append(record_of(partition_context.partition_id, event))
            self.idle_after_complete.clear()

    def on_event_batch(self, partition_context, events):
        """`receive_batch` hands over an empty batch when a partition had nothing for `max_wait_time`."""
        if not events:
            self.on_event(partition_context, None)
        for event in events:
            self.on_event(partition_context, event)

    def on_error(self, partition_context, error):
        with self.lock:
            partition = partition_context.partition_id if partition_context else None
            self.errors.append("partition {}: {}: {}".format(partition, type(error).__name__, error))

    def result(self, what):
        with self.lock:
            check(
                self.done.is_set(),
                "{}: got {} of {} events within {} s; errors: {}; got: {}".format(
                    what,
                    len(self.records),
                    self.expected,
                    RECEIVE_SECONDS_MAX,
                    self.errors or "none",
                    [(r["partition"], r["sequence_number"], r["message_id"]) for r in self.records],
                ),
            )
            return list(self.records)


def record_of(partition_id, event):
    """What the checks need from an EventData, read while the event is at hand."""
    return {
        "partition": partition_id,
        "offset": event.offset,
        "sequence_number": event.sequence_number,
        "enqueued_time": event.enqueued_time,
        "body": event.body_as_str(encoding="UTF-8"),
        "properties": dict(event.properties or {}),
        "message_id": event.message_id,
        "correlation_id": event.correlation_id,
        "content_type": event.content_type,
        "system_properties": dict(event.system_properties or {}),
    }


def receive_sync(connection_string, expected, partition_ids, what, **receive_args):
    """A sync EventHubConsumerClient's blocking `receive_batch`, closed from a second thread once the reader
    is done or the deadline passes. (Reading several partitions, the sync `receive` hands events over one
    every 200 ms though the hub sent each partition's at once, as a frame trace shows; batches are quicker.)"""
    client = consumer(connection_string)
    reader = Reader(expected, partition_ids)

    def close_when_done():
        reader.done.wait(RECEIVE_SECONDS_MAX)
        client.close()

    closer = threading.Thread(target=close_when_done, daemon=True)
    closer.start()
    client.receive_batch(
        on_event_batch=reader.on_event_batch,
        on_error=reader.on_error,
        max_batch_size=BATCH_SIZE_MAX,
        max_wait_time=IDLE_SECONDS,
        **receive_args
    )
    closer.join()
    return reader.result(what)


async def receive_async(connection_string, consumer_group, expected, partition_ids, what):
    """The asyncio client's `receive`, a task ended by `close` once the reader is done. The task notices
    the close only at its next load-balancing round, hence the short interval (the default is 30 s)."""
    client = AsyncEventHubConsumerClient.from_connection_string(
        connection_string,
        consumer_group=consumer_group,
        connection_verify=CA,
        retry_total=0,
        load_balancing_interval=IDLE_SECONDS,
    )
    reader = Reader(expected, partition_ids)

    async def on_event(partition_context, event):
        reader.on_event(partition_context, event)

    async def on_error(partition_context, error):
        reader.on_error(partition_context, error)

    receiving = asyncio.ensure_future(
        client.receive(on_event=on_event, on_error=on_error, starting_position="-1", max_wait_time=IDLE_SECONDS)
    )
    loop = asyncio.get_running_loop()
    await loop.run_in_executor(None, reader.done.wait, RECEIVE_SECONDS_MAX)
    await client.close()
    await receiving
    return reader.result(what)


def check_all_events(records, sent_at):
    """Every message exactly once, in order per device, with what the device put on it."""
    received_at = datetime.datetime.now(datetime.timezone.utc)
    by_message_id = {}
    for record in records:
        check(
            record["message_id"] not in by_message_id,
            "message {} arrived twice: {} and {}".format(
                record["message_id"], by_message_id.get(record["message_id"]), record
            ),
        )
        by_message_id[record["message_id"]] = record
    expected_ids = {message_id(device_id, seq) for device_id, _ in DEVICES for seq in range(MESSAGES_PER_DEVICE)}
    check_equal(set(by_message_id), expected_ids, "message ids read")

    for device_id, websockets in DEVICES:
        own = [by_message_id[message_id(device_id, seq)] for seq in range(MESSAGES_PER_DEVICE)]
        check_equal(len({r["partition"] for r in own}), 1, "number of partitions {}'s events are in".format(device_id))
        check_equal(
            [r["sequence_number"] for r in own],
            sorted(r["sequence_number"] for r in own),
            "{}'s sequence numbers in the order it sent".format(device_id),
        )
        for seq, record in enumerate(own):
            what = message_id(device_id, seq)
            check_equal(record["body"], body_of(device_id, seq), what + " body")
            check_equal(
                record["properties"],
                {b"seq": str(seq).encode(), b"transport": transport_name(websockets).encode()},
                what + " application properties",
            )
            check_equal(record["correlation_id"], "corr-" + what, what + " correlation_id")
            check_equal(record["content_type"], "application/json", what + " content_type")
            system = record["system_properties"]
            check_equal(system.get(b"content-encoding"), b"utf-8", what + " content-encoding")
            check_equal(system.get(b"iothub-connection-device-id"), device_id.encode(), what + " device id")
            check_equal(record["offset"], str(record["sequence_number"]), what + " offset (its sequence number)")
            enqueued = record["enqueued_time"]
            check(
                enqueued is not None and sent_at - CLOCK_SKEW <= enqueued <= received_at + CLOCK_SKEW,
                "{} enqueued at {}, not between the send ({}) and the read ({})".format(
                    what, enqueued, sent_at, received_at
                ),
            )


def by_partition(records):
    partitions = {}
    for record in records:
        partitions.setdefault(record["partition"], []).append(record)
    for events in partitions.values():
        events.sort(key=lambda r: r["sequence_number"])
    return partitions


def positions(records):
    return [(r["partition"], r["sequence_number"], r["offset"], r["message_id"]) for r in records]


def expect_authentication_error(connection_string, what):
    client = consumer(connection_string)
    try:
        result = client.get_partition_ids()
    except AuthenticationError as error:
        print("  {}: {}: {}".format(what, type(error).__name__, str(error).splitlines()[0]), flush=True)
        return
    except Exception as error:  # noqa: BLE001 - any other type is the failure being reported
        raise CheckFailed("{}: expected AuthenticationError, got {}: {}".format(what, type(error).__name__, error))
    finally:
        client.close()
    raise CheckFailed("{}: expected AuthenticationError, but get_partition_ids returned {!r}".format(what, result))


def main():
    registry = IoTHubRegistryManager.from_connection_string(CONNECTION_STRING)
    host = connection_string_part(CONNECTION_STRING, "HostName")
    hub_name = connection_string_part(EVENTHUBS_CONNECTION_STRING, "EntityPath")

    sent_at = datetime.datetime.now(datetime.timezone.utc)
    for device_id, websockets in DEVICES:
        log("{} over {}: register, connect, send {} messages".format(
            device_id, transport_name(websockets), MESSAGES_PER_DEVICE
        ))
        send_messages(registry, host, device_id, websockets)

    log("Event Hubs endpoint: the hub's partitions")
    client = consumer(EVENTHUBS_CONNECTION_STRING)
    partition_ids = client.get_partition_ids()
    client.close()
    check(len(partition_ids) > 0, "partition ids: {!r}".format(partition_ids))
    print("  {} partitions: {}".format(hub_name, partition_ids), flush=True)

    total = MESSAGES_PER_DEVICE * len(DEVICES)
    log("consumer group $Default, all partitions from the start: {} events exactly once".format(total))
    records = receive_sync(
        EVENTHUBS_CONNECTION_STRING, total, partition_ids, "$Default from -1", starting_position="-1"
    )
    check_all_events(records, sent_at)
    partitions = by_partition(records)
    for partition, events in sorted(partitions.items()):
        print("  partition {}: sequence numbers {}".format(
            partition, [r["sequence_number"] for r in events]
        ), flush=True)

    device_id = DEVICES[0][0]
    own = sorted(
        (r for r in records if r["message_id"].startswith(device_id + "-")), key=lambda r: r["sequence_number"]
    )
    partition = own[0]["partition"]
    checkpoint = own[RESUME_FROM_INDEX]
    in_partition = partitions[partition]
    after_checkpoint = [r for r in in_partition if r["sequence_number"] > checkpoint["sequence_number"]]
    from_checkpoint = [r for r in in_partition if r["sequence_number"] >= checkpoint["sequence_number"]]

    log("resume partition {} after the checkpointed offset {} (exclusive): {} events".format(
        partition, checkpoint["offset"], len(after_checkpoint)
    ))
    resumed = receive_sync(
        EVENTHUBS_CONNECTION_STRING,
        len(after_checkpoint),
        [partition],
        "partition {} after offset {}".format(partition, checkpoint["offset"]),
        partition_id=partition,
        starting_position=checkpoint["offset"],
        starting_position_inclusive=False,
    )
    check_equal(positions(resumed), positions(after_checkpoint), "events after offset " + checkpoint["offset"])

    log("resume partition {} at sequence number {} (inclusive): {} events".format(
        partition, checkpoint["sequence_number"], len(from_checkpoint)
    ))
    resumed = receive_sync(
        EVENTHUBS_CONNECTION_STRING,
        len(from_checkpoint),
        [partition],
        "partition {} from sequence number {}".format(partition, checkpoint["sequence_number"]),
        partition_id=partition,
        starting_position=checkpoint["sequence_number"],
        starting_position_inclusive=True,
    )
    check_equal(
        positions(resumed),
        positions(from_checkpoint),
        "events from sequence number {}".format(checkpoint["sequence_number"]),
    )

    log("consumer group cg2 with the asyncio client: the same {} events, independently".format(total))
    second = asyncio.run(receive_async(EVENTHUBS_CONNECTION_STRING, "cg2", total, partition_ids, "cg2 from -1"))
    check_equal(
        sorted(positions(second)),
        sorted(positions(records)),
        "events read by cg2 (partition, sequence number, offset, message id)",
    )

    if EMULATOR_CONNECTION_STRING:
        log("development-emulator mode (UseDevelopmentEmulator=true, plain AMQP): the same {} events".format(total))
        plain = receive_sync(
            EMULATOR_CONNECTION_STRING, total, partition_ids, "emulator mode from -1", starting_position="-1"
        )
        check_equal(
            sorted(positions(plain)),
            sorted(positions(records)),
            "events read in emulator mode (partition, sequence number, offset, message id)",
        )

    log("partition {} properties agree with what was read".format(partition))
    client = consumer(EVENTHUBS_CONNECTION_STRING)
    properties = client.get_partition_properties(partition)
    client.close()
    print("  {}".format(properties), flush=True)
    last = in_partition[-1]
    check_equal(properties["id"], partition, "partition id")
    check_equal(properties["eventhub_name"], hub_name, "eventhub_name")
    check_equal(properties["beginning_sequence_number"], 0, "beginning_sequence_number")
    check_equal(
        properties["last_enqueued_sequence_number"], last["sequence_number"], "last_enqueued_sequence_number"
    )
    check_equal(properties["last_enqueued_offset"], last["offset"], "last_enqueued_offset")
    check_equal(properties["is_empty"], False, "is_empty")

    log("the device policy (no ServiceConnect) is refused with AuthenticationError")
    expect_authentication_error(DEVICE_POLICY_EVENTHUBS_CONNECTION_STRING, "device policy")

    log("a wrong key is refused with AuthenticationError")
    expect_authentication_error(with_key(EVENTHUBS_CONNECTION_STRING, WRONG_KEY), "wrong key")


if __name__ == "__main__":
    run("telemetry_test.py", main)
