"""Scheduled jobs through the official Python service SDK (azure-iot-hub's IoTHubJobManager), with a
device on the Python device SDK (azure-iot-device over MQTT), against a real twinhub. Run by
crates/twinhub/tests/sdk_jobs.rs with TWINHUB_CONNECTION_STRING (iothubowner) and REQUESTS_CA_BUNDLE.

Checks: create_scheduled_job for a twin update over the 1,000 devices a tag selects (registered in
bulk; start time as the SDK's samples give it), get_scheduled_job until completed with its statistics,
the twins patched once and the others untouched; a method job over a device that answers and one that is
offline, with each outcome in devices.jobs; a job scheduled for later cancelled with
cancel_scheduled_job; query_scheduled_jobs by type and status; an unknown job is 404.
"""

import datetime
import os
import sys
import time

from azure.iot.device import MethodResponse
from azure.iot.hub import IoTHubJobManager, IoTHubRegistryManager
from azure.iot.hub.models import (
    CloudToDeviceMethod,
    ExportImportDevice,
    JobRequest,
    QuerySpecification,
    Twin,
    TwinProperties,
)
from checks import check, check_equal, connection_string_part, expect_http_error, log, register_device_client, run

CONNECTION_STRING = os.environ.get("TWINHUB_CONNECTION_STRING")
if not CONNECTION_STRING:
    print("TWINHUB_CONNECTION_STRING must be set", file=sys.stderr)
    sys.exit(2)

GROUP = 1000


def job_reaching(jobs, job_id, statuses, seconds=60):
    deadline = time.monotonic() + seconds
    while True:
        job = jobs.get_scheduled_job(job_id)
        if job.status in statuses:
            return job
        check(time.monotonic() < deadline, "job {} is still {} after {} s".format(job_id, job.status, seconds))
        time.sleep(0.2)


def main():
    registry = IoTHubRegistryManager.from_connection_string(CONNECTION_STRING)
    jobs = IoTHubJobManager.from_connection_string(CONNECTION_STRING)
    host = connection_string_part(CONNECTION_STRING, "HostName")

    log("register {} devices tagged group 'py' and one tagged 'other' (bulk, 100 at a time)".format(GROUP))
    devices = [
        ExportImportDevice(id="py-job-{}".format(n), import_mode="create", tags={"group": "py" if n < GROUP else "other"})
        for n in range(GROUP + 1)
    ]
    for start in range(0, len(devices), 100):
        result = registry.bulk_create_or_update_devices(devices[start : start + 100])
        check(result.is_successful, "bulk registration: {}".format(result.errors))

    log("a twin update job for tags.group = 'py', starting now")
    twin_job_id = "py-firmware-{}".format(int(time.time()))
    request = JobRequest(
        job_id=twin_job_id,
        type="scheduleUpdateTwin",
        start_time=datetime.datetime.utcnow().isoformat(),
        update_twin=Twin(etag="*", properties=TwinProperties(desired={"firmware": "2.1"})),
        query_condition="tags.group = 'py'",
    )
    created = jobs.create_scheduled_job(twin_job_id, request)
    check_equal(created.job_id, twin_job_id, "jobId")
    check_equal(created.status, "queued", "status of a new job")
    done = job_reaching(jobs, twin_job_id, ["completed", "failed", "cancelled"])
    check_equal(done.status, "completed", "status")
    statistics = done.device_job_statistics
    check_equal(
        (statistics.device_count, statistics.succeeded_count, statistics.failed_count, statistics.pending_count),
        (GROUP, GROUP, 0, 0),
        "deviceJobStatistics",
    )
    check(done.end_time is not None, "a completed job has its end time")
    twin = registry.get_twin("py-job-3")
    check_equal(twin.properties.desired["firmware"], "2.1", "the patched twin")
    check_equal(twin.properties.desired["$version"], 2, "the patch was applied once")
    check("firmware" not in registry.get_twin("py-job-{}".format(GROUP)).properties.desired, "the other twin")

    log("a method job: one device answers, one is offline")
    answering = register_device_client(registry, host, "py-method-on", False)
    answering.connect()

    def on_method(request):
        answering.send_method_response(MethodResponse.create_from_method_request(request, 200, {"ok": True}))

    answering.on_method_request_received = on_method
    registry.create_device_with_sas("py-method-off", None, None, "enabled")
    time.sleep(0.5)
    method_job_id = "py-reboot-{}".format(int(time.time()))
    request = JobRequest(
        job_id=method_job_id,
        type="scheduleDeviceMethod",
        cloud_to_device_method=CloudToDeviceMethod(method_name="reboot", payload={"delay": 1}, response_timeout_in_seconds=5),
        query_condition="deviceId IN ['py-method-on', 'py-method-off']",
    )
    jobs.create_scheduled_job(method_job_id, request)
    done = job_reaching(jobs, method_job_id, ["completed", "failed", "cancelled"])
    statistics = done.device_job_statistics
    check_equal(
        (statistics.device_count, statistics.succeeded_count, statistics.failed_count),
        (2, 1, 1),
        "method job statistics",
    )
    steps = registry.query_iot_hub(
        QuerySpecification(query="SELECT * FROM devices.jobs WHERE devices.jobs.jobId = '{}'".format(method_job_id))
    )
    by_device = {step.device_id: step for step in steps.items}
    check_equal(by_device["py-method-on"].status, "completed", "the answering device's step")
    check_equal(
        by_device["py-method-on"].additional_properties["outcome"]["deviceMethodResponse"],
        {"status": 200, "payload": {"ok": True}},
        "its outcome",
    )
    check_equal(by_device["py-method-off"].status, "failed", "the offline device's step")
    answering.shutdown()

    log("a job an hour ahead, cancelled")
    later_id = "py-later-{}".format(int(time.time()))
    start = datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(hours=1)
    request = JobRequest(
        job_id=later_id,
        type="scheduleUpdateTwin",
        start_time=start,
        max_execution_time_in_seconds=60,
        update_twin=Twin(etag="*", tags={"firmware": "9"}),
        query_condition="*",
    )
    check_equal(jobs.create_scheduled_job(later_id, request).status, "queued", "status of a later job")
    cancelled = jobs.cancel_scheduled_job(later_id)
    check_equal(cancelled.status, "cancelled", "status after cancel")
    check_equal(jobs.get_scheduled_job(later_id).status, "cancelled", "status read back")
    check_equal(cancelled.max_execution_time_in_seconds, 60, "maxExecutionTimeInSeconds")

    log("query_scheduled_jobs by type and status")
    twin_jobs = jobs.query_scheduled_jobs("scheduleUpdateTwin", None)
    check_equal(
        sorted((job["jobId"], job["status"]) for job in twin_jobs.items),
        sorted([(twin_job_id, "completed"), (later_id, "cancelled")]),
        "the twin jobs",
    )
    completed = jobs.query_scheduled_jobs(None, "completed")
    check_equal(sorted(job["jobId"] for job in completed.items), sorted([twin_job_id, method_job_id]), "completed jobs")

    log("an unknown job is 404 JobNotFound")
    expect_http_error(lambda: jobs.get_scheduled_job("py-no-such-job"), 404, "JobNotFound")


if __name__ == "__main__":
    run("jobs_test.py", main)
