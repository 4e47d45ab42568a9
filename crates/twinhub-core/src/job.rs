//! Scheduled jobs (`/jobs/v2`): a twin update or a direct method call for every device a query condition
//! selects, from a start time, within a maximum execution time. IoT Hub's rules and documents; the
//! running is the hub's.
//!
//! A job keeps its request and its status; what happened to each device it selected is a
//! [`DeviceJobRecord`] of its own (what `SELECT * FROM devices.jobs` returns), so the statistics are
//! counted from those records and a device's step is recorded in the same commit as the twin write it
//! made: a job resumed after a crash neither repeats nor skips a device.

use crate::ids::JobId;
use crate::method::{parse_call, MethodCall, MethodCallError};
use crate::twin::TwinPatch;
use crate::{DeviceId, Timestamp, TwinRuleViolation, TwinRules};
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};
use std::time::Duration;

/// How long a job may run when its request does not say (IoT Hub's default).
pub const MAX_EXECUTION_SECONDS_DEFAULT: u64 = 3600;
/// Jobs queued, scheduled or running at once (IoT Hub: 1 on S1, 5 on S2, 10 on S3).
pub const ACTIVE_JOBS_MAX: usize = 10;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum JobType {
    ScheduleUpdateTwin,
    ScheduleDeviceMethod,
}

impl JobType {
    pub fn as_str(self) -> &'static str {
        match self {
            JobType::ScheduleUpdateTwin => "scheduleUpdateTwin",
            JobType::ScheduleDeviceMethod => "scheduleDeviceMethod",
        }
    }

    pub fn parse(text: &str) -> Option<JobType> {
        [JobType::ScheduleUpdateTwin, JobType::ScheduleDeviceMethod]
            .into_iter()
            .find(|kind| kind.as_str() == text)
    }
}

/// A job's status, as IoT Hub spells it (`cancelled` with two l's).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum JobStatus {
    /// Accepted, not looked at yet.
    Queued,
    /// Waiting for its start time.
    Scheduled,
    Running,
    Completed,
    /// It ran past its maximum execution time.
    Failed,
    Cancelled,
}

impl JobStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            JobStatus::Queued => "queued",
            JobStatus::Scheduled => "scheduled",
            JobStatus::Running => "running",
            JobStatus::Completed => "completed",
            JobStatus::Failed => "failed",
            JobStatus::Cancelled => "cancelled",
        }
    }

    pub fn parse(text: &str) -> Option<JobStatus> {
        use JobStatus::*;
        [Queued, Scheduled, Running, Completed, Failed, Cancelled]
            .into_iter()
            .find(|status| status.as_str() == text)
    }

    /// Whether the job still has work ahead (it counts against the concurrent jobs limit).
    pub fn is_active(self) -> bool {
        matches!(self, JobStatus::Queued | JobStatus::Scheduled | JobStatus::Running)
    }
}

/// One device's step of a job, as IoT Hub spells it (`canceled` with one l).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum DeviceJobStatus {
    Pending,
    /// A method call is under way.
    Running,
    Completed,
    Failed,
    Canceled,
}

impl DeviceJobStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            DeviceJobStatus::Pending => "pending",
            DeviceJobStatus::Running => "running",
            DeviceJobStatus::Completed => "completed",
            DeviceJobStatus::Failed => "failed",
            DeviceJobStatus::Canceled => "canceled",
        }
    }

    pub fn is_done(self) -> bool {
        matches!(
            self,
            DeviceJobStatus::Completed | DeviceJobStatus::Failed | DeviceJobStatus::Canceled
        )
    }
}

/// The direct method a method job calls, as stored.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct JobMethod {
    pub method_name: String,
    /// The payload's JSON text.
    pub payload: String,
    pub response_timeout_seconds: u64,
    pub connect_timeout_seconds: u64,
}

impl JobMethod {
    pub fn call(&self) -> MethodCall {
        MethodCall {
            name: self.method_name.clone(),
            payload: self.payload.clone(),
            response_timeout: Duration::from_secs(self.response_timeout_seconds),
            connect_timeout: Duration::from_secs(self.connect_timeout_seconds),
        }
    }
}

/// A job as the hub keeps it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct JobRecord {
    pub job_id: JobId,
    pub job_type: JobType,
    /// The condition (a query's WHERE clause) that selects the devices.
    pub query_condition: String,
    pub created: Timestamp,
    pub start: Timestamp,
    pub end: Option<Timestamp>,
    pub max_execution_seconds: u64,
    /// A twin job's patch, as JSON text (checked when the job was accepted).
    pub update_twin: Option<String>,
    pub method: Option<JobMethod>,
    pub status: JobStatus,
    pub failure_reason: Option<String>,
    pub status_message: Option<String>,
}

/// What happened to a job's devices, counted from their records.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct JobStatistics {
    pub device_count: u64,
    pub failed: u64,
    pub succeeded: u64,
    pub running: u64,
    pub pending: u64,
}

impl JobStatistics {
    pub fn count(&mut self, status: DeviceJobStatus) {
        self.device_count += 1;
        match status {
            DeviceJobStatus::Pending => self.pending += 1,
            DeviceJobStatus::Running => self.running += 1,
            DeviceJobStatus::Completed => self.succeeded += 1,
            DeviceJobStatus::Failed | DeviceJobStatus::Canceled => self.failed += 1,
        }
    }
}

/// A device's answer to a method job.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct MethodOutcome {
    pub status: i32,
    /// The payload's JSON text.
    pub payload: String,
}

/// Why a device's step failed, in IoT Hub's terms.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DeviceJobError {
    pub code: String,
    pub description: String,
}

/// One device's step of a job (a row of `devices.jobs`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DeviceJobRecord {
    pub job_id: JobId,
    pub device_id: DeviceId,
    pub job_type: JobType,
    pub status: DeviceJobStatus,
    pub created: Timestamp,
    pub start: Option<Timestamp>,
    pub end: Option<Timestamp>,
    pub last_updated: Timestamp,
    pub outcome: Option<MethodOutcome>,
    pub error: Option<DeviceJobError>,
}

impl DeviceJobRecord {
    pub fn pending(job: &JobRecord, device_id: DeviceId, now: Timestamp) -> DeviceJobRecord {
        DeviceJobRecord {
            job_id: job.job_id.clone(),
            device_id,
            job_type: job.job_type,
            status: DeviceJobStatus::Pending,
            created: now,
            start: None,
            end: None,
            last_updated: now,
            outcome: None,
            error: None,
        }
    }

    /// This step moved to `status` at `now`.
    pub fn moved(&self, status: DeviceJobStatus, now: Timestamp) -> DeviceJobRecord {
        DeviceJobRecord {
            status,
            start: self.start.or(Some(now)),
            end: status.is_done().then_some(now),
            last_updated: now,
            ..self.clone()
        }
    }

    pub fn failed(&self, code: &str, description: impl Into<String>, now: Timestamp) -> DeviceJobRecord {
        DeviceJobRecord {
            error: Some(DeviceJobError {
                code: code.to_owned(),
                description: description.into(),
            }),
            ..self.moved(DeviceJobStatus::Failed, now)
        }
    }

    /// The `devices.jobs` document. Ref: query-and-twin-rules §A.2.
    pub fn to_json(&self) -> Value {
        let mut document = json!({
            "deviceId": self.device_id.as_str(),
            "jobId": self.job_id.as_str(),
            "jobType": self.job_type.as_str(),
            "status": self.status.as_str(),
            "startTimeUtc": crate::time::iso8601_or_never(self.start),
            "endTimeUtc": crate::time::iso8601_or_never(self.end),
            "createdDateTimeUtc": self.created.to_iso8601(),
            "lastUpdatedDateTimeUtc": self.last_updated.to_iso8601(),
            "outcome": self.outcome.as_ref().map(|outcome| json!({
                "deviceMethodResponse": {
                    "status": outcome.status,
                    "payload": serde_json::from_str::<Value>(&outcome.payload).unwrap_or(Value::Null),
                }
            })),
        });
        if let Some(error) = &self.error {
            document["error"] = json!({"code": error.code, "description": error.description});
        }
        document
    }
}

#[derive(Debug, PartialEq, thiserror::Error)]
pub enum JobRequestError {
    #[error("the job request must be a JSON object")]
    NotAnObject,
    #[error("the job id in the body ('{0}') is not the one in the path")]
    IdMismatch(String),
    #[error("type must be 'scheduleUpdateTwin' or 'scheduleDeviceMethod'")]
    Type,
    #[error("queryCondition must be a string: the condition of a query over devices (or '*' for all)")]
    QueryCondition,
    #[error("startTime must be an ISO 8601 time")]
    StartTime,
    #[error("maxExecutionTimeInSeconds must be a positive integer")]
    MaxExecutionTime,
    #[error("a scheduleUpdateTwin job needs an updateTwin object")]
    MissingUpdateTwin,
    #[error("updateTwin: {0}")]
    UpdateTwin(TwinRuleViolation),
    #[error("updateTwin may change tags and desired properties only, with etag '*' if any")]
    UpdateTwinEtag,
    #[error("a scheduleDeviceMethod job needs a cloudToDeviceMethod object")]
    MissingMethod,
    #[error("cloudToDeviceMethod: {0}")]
    Method(MethodCallError),
}

/// `PUT /jobs/v2/{jobId}`'s body, checked: the job it asks for, `queued`. Ref: service-rest notes §4.5.
/// A missing or `null` `startTime` is now; a missing `maxExecutionTimeInSeconds` is an hour.
pub fn parse_request(
    job_id: &JobId,
    body: &Value,
    rules: &TwinRules,
    now: Timestamp,
) -> Result<JobRecord, JobRequestError> {
    let object = body.as_object().ok_or(JobRequestError::NotAnObject)?;
    let present = |key: &str| object.get(key).filter(|value| !value.is_null());
    if let Some(given) = present("jobId") {
        let given = match given {
            Value::String(text) => text.clone(),
            other => other.to_string(),
        };
        if given != job_id.as_str() {
            return Err(JobRequestError::IdMismatch(given));
        }
    }
    let job_type = present("type")
        .and_then(Value::as_str)
        .and_then(JobType::parse)
        .ok_or(JobRequestError::Type)?;
    let query_condition = present("queryCondition")
        .and_then(Value::as_str)
        .map(str::trim)
        .filter(|condition| !condition.is_empty())
        .ok_or(JobRequestError::QueryCondition)?
        .to_owned();
    let start = match present("startTime") {
        None => now,
        Some(value) => value
            .as_str()
            .and_then(Timestamp::parse_iso8601)
            .ok_or(JobRequestError::StartTime)?,
    };
    let max_execution_seconds = match present("maxExecutionTimeInSeconds") {
        None => MAX_EXECUTION_SECONDS_DEFAULT,
        Some(value) => value
            .as_u64()
            .filter(|seconds| *seconds > 0)
            .ok_or(JobRequestError::MaxExecutionTime)?,
    };
    let (update_twin, method) = match job_type {
        JobType::ScheduleUpdateTwin => {
            let patch = present("updateTwin").ok_or(JobRequestError::MissingUpdateTwin)?;
            (Some(update_twin_patch(patch, rules)?.to_string()), None)
        }
        JobType::ScheduleDeviceMethod => {
            let method = present("cloudToDeviceMethod").ok_or(JobRequestError::MissingMethod)?;
            let call = parse_call(method).map_err(JobRequestError::Method)?;
            let method = JobMethod {
                method_name: call.name,
                payload: call.payload,
                response_timeout_seconds: call.response_timeout.as_secs(),
                connect_timeout_seconds: call.connect_timeout.as_secs(),
            };
            (None, Some(method))
        }
    };
    Ok(JobRecord {
        job_id: job_id.clone(),
        job_type,
        query_condition,
        created: now,
        start,
        end: None,
        max_execution_seconds,
        update_twin,
        method,
        status: JobStatus::Queued,
        failure_reason: None,
        status_message: None,
    })
}

/// A twin job's patch: tags and desired properties, as a twin PATCH takes them; `etag` may only be `*`
/// (each twin is patched whatever its etag), and the identity fields the SDKs' Twin models carry are
/// ignored. Returns the patch as it will be applied.
fn update_twin_patch(patch: &Value, rules: &TwinRules) -> Result<Value, JobRequestError> {
    let object = patch
        .as_object()
        .ok_or(JobRequestError::UpdateTwin(TwinRuleViolation::NotAnObject {
            path: "updateTwin".into(),
        }))?;
    match object.get("etag") {
        None | Some(Value::Null) => {}
        Some(Value::String(etag)) if etag.trim_matches('"') == "*" => {}
        Some(_) => return Err(JobRequestError::UpdateTwinEtag),
    }
    let mut kept = Map::new();
    for key in ["tags", "properties"] {
        if let Some(value) = object.get(key) {
            kept.insert(key.to_owned(), value.clone());
        }
    }
    let kept = Value::Object(kept);
    TwinPatch::from_json(&kept, rules).map_err(JobRequestError::UpdateTwin)?;
    Ok(kept)
}

impl JobRecord {
    /// The twin patch a twin job applies to each device.
    pub fn twin_patch(&self, rules: &TwinRules) -> Option<Result<TwinPatch, TwinRuleViolation>> {
        let text = self.update_twin.as_deref()?;
        let value: Value = serde_json::from_str(text).unwrap_or(Value::Null);
        Some(TwinPatch::from_json(&value, rules))
    }

    /// Past its maximum execution time at `now`.
    pub fn overran(&self, now: Timestamp) -> bool {
        let seconds = i64::try_from(self.max_execution_seconds).unwrap_or(i64::MAX);
        now.unix_seconds() >= self.start.unix_seconds().saturating_add(seconds)
    }

    /// The JobResponse document. Ref: service-rest notes §4.5.
    pub fn to_json(&self, statistics: JobStatistics) -> Value {
        json!({
            "jobId": self.job_id.as_str(),
            "queryCondition": self.query_condition,
            "createdTime": self.created.to_iso8601(),
            "startTime": self.start.to_iso8601(),
            "endTime": self.end.map(Timestamp::to_iso8601),
            "maxExecutionTimeInSeconds": self.max_execution_seconds,
            "type": self.job_type.as_str(),
            "cloudToDeviceMethod": self.method.as_ref().map(|method| json!({
                "methodName": method.method_name,
                "payload": serde_json::from_str::<Value>(&method.payload).unwrap_or(Value::Null),
                "responseTimeoutInSeconds": method.response_timeout_seconds,
                "connectTimeoutInSeconds": method.connect_timeout_seconds,
            })),
            "updateTwin": self.update_twin.as_deref().map(|text| {
                let mut patch: Value = serde_json::from_str(text).unwrap_or(Value::Null);
                if let Some(object) = patch.as_object_mut() {
                    object.insert("etag".into(), "*".into());
                }
                patch
            }),
            "status": self.status.as_str(),
            "failureReason": self.failure_reason,
            "statusMessage": self.status_message,
            "deviceJobStatistics": {
                "deviceCount": statistics.device_count,
                "failedCount": statistics.failed,
                "succeededCount": statistics.succeeded,
                "runningCount": statistics.running,
                "pendingCount": statistics.pending,
            },
        })
    }

    /// This job moved to `status` at `now` (ended when it will do nothing more).
    pub fn moved(&self, status: JobStatus, now: Timestamp) -> JobRecord {
        JobRecord {
            status,
            end: (!status.is_active()).then_some(now),
            ..self.clone()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id() -> JobId {
        JobId::new("job1").unwrap()
    }

    #[test]
    fn requests_of_both_sdks_are_read_with_iot_hubs_defaults() {
        let now = Timestamp::now();
        let rules = TwinRules::default();
        // Node's promise form: startTime null, no maxExecutionTimeInSeconds; the patch as users write it.
        let node = json!({"jobId": "job1", "type": "scheduleUpdateTwin", "startTime": null,
            "queryCondition": "tags.building = '43'",
            "updateTwin": {"etag": "*", "tags": {"key": "v"}, "properties": {"desired": {}, "reported": {}}}});
        let job = parse_request(&id(), &node, &rules, now).unwrap();
        assert_eq!(
            (job.start, job.max_execution_seconds, job.status),
            (now, 3600, JobStatus::Queued)
        );
        assert!(job.twin_patch(&rules).unwrap().unwrap().tags.is_some());
        // Python: only what is set, a start time with microseconds.
        let python = json!({"jobId": "job1", "type": "scheduleDeviceMethod", "queryCondition": "*",
            "startTime": "2030-01-02T03:04:05.123456Z", "maxExecutionTimeInSeconds": 60,
            "cloudToDeviceMethod": {"methodName": "reboot", "payload": {"delay": 1}, "responseTimeoutInSeconds": 5}});
        let job = parse_request(&id(), &python, &rules, now).unwrap();
        assert_eq!(job.start.to_iso8601()[..19], *"2030-01-02T03:04:05");
        assert_eq!(job.method.as_ref().unwrap().payload, r#"{"delay":1}"#);
        let document = job.to_json(JobStatistics::default());
        assert_eq!(document["status"], "queued");
        assert_eq!(document["cloudToDeviceMethod"]["methodName"], "reboot");
        assert_eq!(document["deviceJobStatistics"]["deviceCount"], 0);
    }

    #[test]
    fn bad_requests_say_what_is_wrong() {
        let now = Timestamp::now();
        let rules = TwinRules::default();
        let base = || json!({"type": "scheduleUpdateTwin", "queryCondition": "*", "updateTwin": {"tags": {"a": 1}}});
        let with = |key: &str, value: Value| {
            let mut body = base();
            body[key] = value;
            body
        };
        for (body, error) in [
            (json!([]), JobRequestError::NotAnObject),
            (
                with("jobId", json!("other")),
                JobRequestError::IdMismatch("other".into()),
            ),
            (with("type", json!("export")), JobRequestError::Type),
            (with("queryCondition", json!(" ")), JobRequestError::QueryCondition),
            (with("startTime", json!("yesterday")), JobRequestError::StartTime),
            (
                with("maxExecutionTimeInSeconds", json!(0)),
                JobRequestError::MaxExecutionTime,
            ),
            (with("updateTwin", Value::Null), JobRequestError::MissingUpdateTwin),
            (
                with("updateTwin", json!({"etag": "AAAA", "tags": {}})),
                JobRequestError::UpdateTwinEtag,
            ),
            (
                with("type", json!("scheduleDeviceMethod")),
                JobRequestError::MissingMethod,
            ),
        ] {
            assert_eq!(parse_request(&id(), &body, &rules, now), Err(error));
        }
        let reported = with("updateTwin", json!({"properties": {"reported": {"a": 1}}}));
        assert!(matches!(
            parse_request(&id(), &reported, &rules, now),
            Err(JobRequestError::UpdateTwin(_))
        ));
    }

    #[test]
    fn statistics_count_each_devices_step() {
        let mut statistics = JobStatistics::default();
        for status in [
            DeviceJobStatus::Pending,
            DeviceJobStatus::Running,
            DeviceJobStatus::Completed,
            DeviceJobStatus::Failed,
            DeviceJobStatus::Canceled,
        ] {
            statistics.count(status);
        }
        assert_eq!(
            statistics,
            JobStatistics {
                device_count: 5,
                failed: 2,
                succeeded: 1,
                running: 1,
                pending: 1
            }
        );
    }
}
