//! Scheduled jobs in the hub: jobs and their devices' steps in the snapshot, the writer's job operations,
//! and the hub's API for them. The runner that moves jobs along is `job_runner.rs`.
//!
//! Every step of a device is a write checked against the batch's own state: a twin job's step patches
//! the twin and marks the step completed in one commit, and only if the step is still pending, so a job
//! resumed after a crash (or run by two nodes of a cluster at once) applies its patch to each device
//! exactly once.

use crate::writer::{submit, Batch, WriteOp, WriteOutcome};
use crate::{Hub, HubError};
use std::sync::Arc;
use twinhub_core::etag::IfMatch;
use twinhub_core::job::{
    parse_request, DeviceJobRecord, DeviceJobStatus, JobRecord, JobStatistics, JobStatus, JobType, MethodOutcome,
    ACTIVE_JOBS_MAX,
};
use twinhub_core::{DeviceId, JobId, Timestamp};
use twinhub_query::CompiledQuery;
use twinhub_store::StoreWrite;

/// Jobs by id.
pub type Jobs = imbl::OrdMap<JobId, Arc<JobRecord>>;
/// Every device's step of every job, by job then device (a job's steps are one range).
pub type DeviceJobs = imbl::OrdMap<(JobId, DeviceId), Arc<DeviceJobRecord>>;

/// A change to a job or to a device's step of one.
#[derive(Debug)]
pub enum JobOp {
    Create(Box<JobRecord>),
    Cancel(JobId),
    /// Its start time is ahead: it waits.
    Schedule(JobId),
    /// Its start time came: the devices its condition selects now get a pending step each.
    Start(JobId),
    /// A twin job's step: the patch applied to the device's twin, if the step is still pending.
    ApplyTwin {
        job_id: JobId,
        device_id: DeviceId,
    },
    /// A method job's step begins (pending → running); refused unless it is still pending.
    ClaimMethod {
        job_id: JobId,
        device_id: DeviceId,
    },
    /// A method job's step ends with the device's answer, or with why there was none.
    MethodDone {
        job_id: JobId,
        device_id: DeviceId,
        result: Result<MethodOutcome, (String, String)>,
    },
    /// Every step is done (`Completed`), or the job ran out of time (`Failed`: its pending steps fail).
    Finish {
        job_id: JobId,
        status: JobStatus,
    },
}

/// The jobs and steps a store kept, as the snapshot holds them.
pub(crate) fn restore(entries: Vec<twinhub_store::codec::JobEntry>) -> (Jobs, DeviceJobs) {
    let (mut jobs, mut steps) = (Jobs::new(), DeviceJobs::new());
    for entry in entries {
        match entry {
            twinhub_store::codec::JobEntry::Job(job) => {
                jobs.insert(job.job_id.clone(), Arc::new(job));
            }
            twinhub_store::codec::JobEntry::DeviceJob(step) => {
                steps.insert((step.job_id.clone(), step.device_id.clone()), Arc::new(step));
            }
        }
    }
    (jobs, steps)
}

/// The query a job's condition makes: `*` selects every device.
pub fn condition_query(condition: &str) -> Result<Option<CompiledQuery>, HubError> {
    if condition.trim() == "*" {
        return Ok(None);
    }
    Ok(Some(CompiledQuery::parse(&format!(
        "SELECT * FROM devices WHERE {condition}"
    ))?))
}

/// What a job's steps come to, counted.
pub fn statistics(steps: &DeviceJobs, job_id: &JobId) -> JobStatistics {
    let mut statistics = JobStatistics::default();
    for step in steps_of(steps, job_id) {
        statistics.count(step.status);
    }
    statistics
}

/// A job's steps, in device id order.
pub fn steps_of<'s>(steps: &'s DeviceJobs, job_id: &JobId) -> impl Iterator<Item = &'s Arc<DeviceJobRecord>> + 's {
    steps_after(steps, job_id, None)
}

/// A job's steps for the devices after `after` (all when `None`), in device id order.
pub fn steps_after<'s>(
    steps: &'s DeviceJobs,
    job_id: &JobId,
    after: Option<&DeviceId>,
) -> impl Iterator<Item = &'s Arc<DeviceJobRecord>> + 's {
    use std::ops::Bound;
    let start = match after {
        Some(device_id) => Bound::Excluded((job_id.clone(), device_id.clone())),
        None => Bound::Included((job_id.clone(), min_device())),
    };
    let job_id = job_id.clone();
    steps
        .range((start, Bound::Unbounded))
        .take_while(move |((job, _), _)| *job == job_id)
        .map(|(_, step)| step)
}

/// The smallest device id: where a job's range of steps begins.
fn min_device() -> DeviceId {
    // "!" is the smallest character a device id may hold; ids compare as strings.
    DeviceId::new("!").unwrap_or_else(|_| unreachable!("'!' is a valid device id"))
}

fn not_found(job_id: &JobId) -> HubError {
    HubError::JobNotFound(job_id.clone())
}

impl Batch<'_> {
    pub(crate) fn apply_job(&mut self, op: JobOp, now: Timestamp) -> Result<WriteOutcome, HubError> {
        match op {
            JobOp::Create(job) => {
                if self.jobs.contains_key(&job.job_id) {
                    return Err(HubError::JobAlreadyExists(job.job_id.clone()));
                }
                let active = self.jobs.values().filter(|job| job.status.is_active()).count();
                if active >= ACTIVE_JOBS_MAX {
                    return Err(HubError::JobQuotaExceeded(ACTIVE_JOBS_MAX));
                }
                Ok(WriteOutcome::Job(self.store_job(*job)))
            }
            JobOp::Cancel(job_id) => {
                let job = self.job(&job_id)?;
                if !job.status.is_active() {
                    return Ok(WriteOutcome::Job(job));
                }
                self.end_pending_steps(&job_id, now, |step, now| step.moved(DeviceJobStatus::Canceled, now));
                Ok(WriteOutcome::Job(self.store_job(job.moved(JobStatus::Cancelled, now))))
            }
            JobOp::Schedule(job_id) => {
                let job = self.job(&job_id)?;
                if job.status != JobStatus::Queued {
                    return Ok(WriteOutcome::Job(job));
                }
                Ok(WriteOutcome::Job(self.store_job(job.moved(JobStatus::Scheduled, now))))
            }
            JobOp::Start(job_id) => self.start_job(&job_id, now),
            JobOp::ApplyTwin { job_id, device_id } => self.apply_twin_step(job_id, device_id, now),
            JobOp::ClaimMethod { job_id, device_id } => {
                let Some(step) = self.pending_step(&job_id, &device_id) else {
                    return Err(HubError::InvalidArgument("the step is not pending".into()));
                };
                self.store_step(step.moved(DeviceJobStatus::Running, now));
                Ok(WriteOutcome::Done)
            }
            JobOp::MethodDone {
                job_id,
                device_id,
                result,
            } => {
                let key = (job_id, device_id);
                let Some(step) = self.device_jobs.get(&key).cloned() else {
                    return Ok(WriteOutcome::Done);
                };
                if step.status != DeviceJobStatus::Running {
                    return Ok(WriteOutcome::Done);
                }
                let done = match result {
                    Ok(outcome) => DeviceJobRecord {
                        outcome: Some(outcome),
                        ..step.moved(DeviceJobStatus::Completed, now)
                    },
                    Err((code, description)) => step.failed(&code, description, now),
                };
                self.store_step(done);
                Ok(WriteOutcome::Done)
            }
            JobOp::Finish { job_id, status } => {
                let job = self.job(&job_id)?;
                if job.status != JobStatus::Running {
                    return Ok(WriteOutcome::Job(job));
                }
                let mut finished = job.moved(status, now);
                if status == JobStatus::Failed {
                    let reason = "the job ran past its maximum execution time";
                    self.end_pending_steps(&job_id, now, |step, now| step.failed("JobTimedOut", reason, now));
                    finished.failure_reason = Some(reason.into());
                }
                Ok(WriteOutcome::Job(self.store_job(finished)))
            }
        }
    }

    fn job(&self, job_id: &JobId) -> Result<Arc<JobRecord>, HubError> {
        self.jobs.get(job_id).cloned().ok_or_else(|| not_found(job_id))
    }

    fn pending_step(&self, job_id: &JobId, device_id: &DeviceId) -> Option<Arc<DeviceJobRecord>> {
        let job = self.jobs.get(job_id)?;
        let step = self.device_jobs.get(&(job_id.clone(), device_id.clone()))?;
        (job.status == JobStatus::Running && step.status == DeviceJobStatus::Pending).then(|| Arc::clone(step))
    }

    fn start_job(&mut self, job_id: &JobId, now: Timestamp) -> Result<WriteOutcome, HubError> {
        let job = self.job(job_id)?;
        if !matches!(job.status, JobStatus::Queued | JobStatus::Scheduled) {
            return Ok(WriteOutcome::Job(job));
        }
        // Checked when the job was accepted; a condition that no longer compiles selects nobody.
        let query = condition_query(&job.query_condition);
        let selected: Vec<DeviceId> = match &query {
            Ok(None) => self.registry.keys().cloned().collect(),
            Ok(Some(query)) => self
                .registry
                .values()
                .filter(|record| query.matches(&***record))
                .map(|record| record.identity.device_id.clone())
                .collect(),
            Err(_) => Vec::new(),
        };
        for device_id in selected {
            self.store_step(DeviceJobRecord::pending(&job, device_id, now));
        }
        let mut running = job.moved(JobStatus::Running, now);
        running.start = running.start.min(now);
        Ok(WriteOutcome::Job(self.store_job(running)))
    }

    fn apply_twin_step(
        &mut self,
        job_id: JobId,
        device_id: DeviceId,
        now: Timestamp,
    ) -> Result<WriteOutcome, HubError> {
        let Some(step) = self.pending_step(&job_id, &device_id) else {
            // Done already (by this node before a restart, or by another node): nothing to do again.
            return Ok(WriteOutcome::Done);
        };
        let Some(job) = self.jobs.get(&job_id).cloned() else {
            return Ok(WriteOutcome::Done);
        };
        let patch = match job.twin_patch(&self.config.rules) {
            Some(Ok(patch)) => patch,
            Some(Err(violation)) => {
                self.store_step(step.failed("ArgumentInvalid", violation.to_string(), now));
                return Ok(WriteOutcome::Done);
            }
            None => {
                self.store_step(step.failed("ArgumentInvalid", "the job has no twin patch", now));
                return Ok(WriteOutcome::Done);
            }
        };
        let done = match self.patch_device_twin(&device_id, &patch, &IfMatch::Any, now) {
            Ok(_) => step.moved(DeviceJobStatus::Completed, now),
            Err(HubError::DeviceNotFound(_)) => step.failed("DeviceNotFound", "the device no longer exists", now),
            Err(error) => step.failed("ArgumentInvalid", error.to_string(), now),
        };
        self.store_step(done);
        Ok(WriteOutcome::Done)
    }

    /// Ends every pending step of a job the way `end` says (a cancel, a timeout).
    fn end_pending_steps(
        &mut self,
        job_id: &JobId,
        now: Timestamp,
        end: impl Fn(&DeviceJobRecord, Timestamp) -> DeviceJobRecord,
    ) {
        let pending: Vec<Arc<DeviceJobRecord>> = steps_of(&self.device_jobs, job_id)
            .filter(|step| step.status == DeviceJobStatus::Pending)
            .cloned()
            .collect();
        for step in pending {
            self.store_step(end(&step, now));
        }
    }

    fn store_job(&mut self, job: JobRecord) -> Arc<JobRecord> {
        let job = Arc::new(job);
        self.jobs.insert(job.job_id.clone(), Arc::clone(&job));
        self.writes.push(StoreWrite::UpsertJob(Arc::clone(&job)));
        job
    }

    fn store_step(&mut self, step: DeviceJobRecord) {
        let step = Arc::new(step);
        self.device_jobs
            .insert((step.job_id.clone(), step.device_id.clone()), Arc::clone(&step));
        self.writes.push(StoreWrite::UpsertDeviceJob(step));
    }

    /// Another node's job write, already stored.
    pub(crate) fn job_stored(&mut self, write: StoreWrite) {
        match write {
            StoreWrite::UpsertJob(job) => {
                self.jobs.insert(job.job_id.clone(), job);
            }
            StoreWrite::UpsertDeviceJob(step) => {
                self.device_jobs
                    .insert((step.job_id.clone(), step.device_id.clone()), step);
            }
            _ => {}
        }
    }
}

impl Hub {
    /// `PUT /jobs/v2/{jobId}`: the job, queued.
    pub async fn create_job(&self, job_id: JobId, body: &serde_json::Value) -> Result<Arc<JobRecord>, HubError> {
        let job = parse_request(&job_id, body, self.rules(), Timestamp::now())
            .map_err(|error| HubError::InvalidArgument(error.to_string()))?;
        condition_query(&job.query_condition)?;
        let created = self.write_job(JobOp::Create(Box::new(job))).await?;
        self.job_runner_wake.notify_one();
        Ok(created)
    }

    pub async fn cancel_job(&self, job_id: JobId) -> Result<Arc<JobRecord>, HubError> {
        self.write_job(JobOp::Cancel(job_id)).await
    }

    /// A job with what its steps come to.
    pub async fn job(&self, job_id: &JobId) -> Result<(Arc<JobRecord>, JobStatistics), HubError> {
        self.read_barrier().await;
        let snapshot = self.snapshot();
        let job = snapshot.jobs.get(job_id).cloned().ok_or_else(|| not_found(job_id))?;
        Ok((job, statistics(&snapshot.device_jobs, job_id)))
    }

    /// Every job of `job_type` in `status` (either absent: any), in job id order, with their statistics.
    pub async fn jobs(
        &self,
        job_type: Option<JobType>,
        status: Option<JobStatus>,
    ) -> Vec<(Arc<JobRecord>, JobStatistics)> {
        self.read_barrier().await;
        let snapshot = self.snapshot();
        snapshot
            .jobs
            .values()
            .filter(|job| job_type.is_none_or(|kind| job.job_type == kind))
            .filter(|job| status.is_none_or(|status| job.status == status))
            .map(|job| (Arc::clone(job), statistics(&snapshot.device_jobs, &job.job_id)))
            .collect()
    }

    pub(crate) async fn write_job(&self, op: JobOp) -> Result<Arc<JobRecord>, HubError> {
        match submit(&self.writes, WriteOp::Job(op)).await? {
            WriteOutcome::Job(job) => Ok(job),
            _ => Err(HubError::Internal("the writer answered a job write with no job")),
        }
    }
}
