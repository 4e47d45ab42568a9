//! Moves jobs along: starts each at its start time, takes on its devices' steps at a bounded rate
//! (`HubConfig::job_devices_per_second`, all jobs together, so the devices' own traffic keeps its share
//! of the writer), and finishes it once every step is done or its time is up.
//!
//! It runs on every node of a cluster, and again after a restart: each step is a write the writer checks
//! against the step's state, so a step two runners take happens once, and a step done before a crash is
//! not done again.

use crate::device_router::Endpoint;
use crate::jobs::{steps_after, steps_of, JobOp};
use crate::writer::{submit, WriteOp};
use crate::{Hub, HubError};
use futures_util::future::join_all;
use std::collections::HashMap;
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};
use tokio::sync::{Notify, Semaphore};
use twinhub_core::job::{DeviceJobStatus, JobRecord, JobStatus, JobType, MethodOutcome};
use twinhub_core::{DeviceId, JobId, Timestamp};

/// How often the runner looks at the jobs (and how finely it spends its rate).
const TICK: Duration = Duration::from_millis(100);
/// Method calls of all jobs waiting for devices' answers at once.
const METHOD_CALLS_IN_FLIGHT_MAX: usize = 256;
/// A method step still running this long past its call's timeouts lost its caller (a crash): it fails.
const ORPHANED_CALL_GRACE: Duration = Duration::from_secs(30);

pub(crate) async fn run(hub: Weak<Hub>, wake: Arc<Notify>) {
    let mut ticker = tokio::time::interval(TICK);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let calls = Arc::new(Semaphore::new(METHOD_CALLS_IN_FLIGHT_MAX));
    let mut runner = Runner::default();
    let mut last = Instant::now();
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            () = wake.notified() => {}
        }
        let Some(hub) = hub.upgrade() else { return };
        let rate = f64::from(hub.config.job_devices_per_second.max(1));
        let elapsed = last.elapsed().as_secs_f64();
        last = Instant::now();
        // At most a second's worth saved up: an idle runner does not burst later.
        runner.budget = (runner.budget + rate * elapsed).min(rate);
        if let Err(error) = runner.step(&hub, &calls).await {
            if matches!(error, HubError::ShuttingDown) {
                return;
            }
            tracing::warn!(%error, "a job step failed; trying again");
        }
    }
}

#[derive(Default)]
struct Runner {
    /// Steps the runner may take on now.
    budget: f64,
    /// Per running job, the last device whose step was taken on: steps after it are still to take.
    cursors: HashMap<JobId, DeviceId>,
}

impl Runner {
    async fn step(&mut self, hub: &Arc<Hub>, calls: &Arc<Semaphore>) -> Result<(), HubError> {
        let now = Timestamp::now();
        let snapshot = hub.snapshot();
        let active: Vec<Arc<JobRecord>> = snapshot
            .jobs
            .values()
            .filter(|job| job.status.is_active())
            .cloned()
            .collect();
        self.cursors
            .retain(|job_id, _| active.iter().any(|job| &job.job_id == job_id));
        for job in active {
            let job_id = job.job_id.clone();
            match job.status {
                JobStatus::Queued if job.start > now => job_write(hub, JobOp::Schedule(job_id)).await?,
                JobStatus::Queued | JobStatus::Scheduled if job.start <= now => {
                    job_write(hub, JobOp::Start(job_id)).await?
                }
                JobStatus::Running if job.overran(now) => {
                    job_write(
                        hub,
                        JobOp::Finish {
                            job_id,
                            status: JobStatus::Failed,
                        },
                    )
                    .await?
                }
                JobStatus::Running => self.take_steps(hub, &snapshot, &job, now, calls).await?,
                _ => {}
            }
        }
        Ok(())
    }

    /// Takes on as many pending steps of a running job as the budget allows; finishes the job when none
    /// is pending or running any more.
    async fn take_steps(
        &mut self,
        hub: &Arc<Hub>,
        snapshot: &crate::Snapshot,
        job: &JobRecord,
        now: Timestamp,
        calls: &Arc<Semaphore>,
    ) -> Result<(), HubError> {
        let allowance = self.budget.floor() as usize;
        if allowance == 0 {
            return Ok(());
        }
        // Only the steps after the cursor are read for pending ones: a tick costs what it takes on, not
        // the size of the job.
        let cursor = self.cursors.get(&job.job_id).cloned();
        let taken: Vec<DeviceId> = steps_after(&snapshot.device_jobs, &job.job_id, cursor.as_ref())
            .filter(|step| step.status == DeviceJobStatus::Pending)
            .take(allowance)
            .map(|step| step.device_id.clone())
            .collect();
        let Some(last) = taken.last() else {
            // Past the last step: one look over them all finishes the job, fails the method calls a
            // crash orphaned, or (steps still pending: a write that failed) starts again from the top.
            self.cursors.remove(&job.job_id);
            return end_of_pass(hub, snapshot, job, now).await;
        };
        self.cursors.insert(job.job_id.clone(), last.clone());
        self.budget -= taken.len() as f64;
        match job.job_type {
            JobType::ScheduleUpdateTwin => {
                let writes = taken.into_iter().map(|device_id| {
                    step_write(
                        hub,
                        JobOp::ApplyTwin {
                            job_id: job.job_id.clone(),
                            device_id,
                        },
                    )
                });
                join_all(writes)
                    .await
                    .into_iter()
                    .collect::<Result<Vec<()>, HubError>>()?;
            }
            JobType::ScheduleDeviceMethod => {
                for device_id in taken {
                    call_method(hub, job, device_id, calls).await?;
                }
            }
        }
        Ok(())
    }
}

/// A look over every step of a job once none is left to take on after the cursor.
async fn end_of_pass(
    hub: &Arc<Hub>,
    snapshot: &crate::Snapshot,
    job: &JobRecord,
    now: Timestamp,
) -> Result<(), HubError> {
    let mut unfinished = false;
    let mut orphaned: Vec<DeviceId> = Vec::new();
    for step in steps_of(&snapshot.device_jobs, &job.job_id) {
        match step.status {
            DeviceJobStatus::Pending => unfinished = true,
            DeviceJobStatus::Running => {
                unfinished = true;
                if call_orphaned(job, step.last_updated, now) {
                    orphaned.push(step.device_id.clone());
                }
            }
            _ => {}
        }
    }
    if !unfinished {
        let finish = JobOp::Finish {
            job_id: job.job_id.clone(),
            status: JobStatus::Completed,
        };
        return job_write(hub, finish).await;
    }
    for device_id in orphaned {
        let result = Err((
            "GatewayTimeout".to_owned(),
            "no answer was recorded: the hub stopped while it waited for the device".to_owned(),
        ));
        step_write(
            hub,
            JobOp::MethodDone {
                job_id: job.job_id.clone(),
                device_id,
                result,
            },
        )
        .await?;
    }
    Ok(())
}

/// Whether a method step that began at `began` is past any answer its call could still bring.
fn call_orphaned(job: &JobRecord, began: Timestamp, now: Timestamp) -> bool {
    let Some(method) = &job.method else { return false };
    let waits = method.response_timeout_seconds + method.connect_timeout_seconds + ORPHANED_CALL_GRACE.as_secs();
    now.unix_seconds().saturating_sub(began.unix_seconds()) > i64::try_from(waits).unwrap_or(i64::MAX)
}

/// Claims a method step and calls the device in a task of its own; its answer, or why there was none, is
/// recorded when it comes.
async fn call_method(
    hub: &Arc<Hub>,
    job: &JobRecord,
    device_id: DeviceId,
    calls: &Arc<Semaphore>,
) -> Result<(), HubError> {
    let Some(method) = job.method.clone() else {
        return Ok(());
    };
    let Ok(permit) = Arc::clone(calls).acquire_owned().await else {
        return Ok(());
    };
    let claim = JobOp::ClaimMethod {
        job_id: job.job_id.clone(),
        device_id: device_id.clone(),
    };
    match step_write(hub, claim).await {
        Ok(()) => {}
        // Taken by another runner, or no longer pending (cancelled): not this runner's to call.
        Err(HubError::InvalidArgument(_)) => return Ok(()),
        Err(error) => return Err(error),
    }
    let hub = Arc::clone(hub);
    let job_id = job.job_id.clone();
    tokio::spawn(async move {
        let _permit = permit;
        let answer = hub
            .invoke_method(&Endpoint::device(device_id.clone()), method.call())
            .await;
        let result = match answer {
            Ok(answer) => Ok(MethodOutcome {
                status: answer.status,
                payload: answer.payload,
            }),
            Err(error) => Err((failure_code(&error).to_owned(), error.to_string())),
        };
        let done = JobOp::MethodDone {
            job_id,
            device_id,
            result,
        };
        if let Err(error) = step_write(&hub, done).await {
            // The step stays running until it is found orphaned and failed.
            tracing::warn!(%error, "a method job's outcome could not be recorded");
        }
    });
    Ok(())
}

/// IoT Hub's error code for a call that brought no answer.
fn failure_code(error: &HubError) -> &'static str {
    match error {
        HubError::DeviceNotFound(_) => "DeviceNotFound",
        HubError::DeviceNotOnline(_) => "DeviceNotOnline",
        HubError::MethodTimeout(_) => "GatewayTimeout",
        _ => "ServerError",
    }
}

async fn job_write(hub: &Hub, op: JobOp) -> Result<(), HubError> {
    hub.write_job(op).await.map(|_| ())
}

async fn step_write(hub: &Hub, op: JobOp) -> Result<(), HubError> {
    submit(&hub.writes, WriteOp::Job(op)).await.map(|_| ())
}
