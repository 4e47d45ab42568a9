//! Scheduled jobs (ServiceConnect): `PUT /jobs/v2/{jobId}` (a twin update or a direct method for the
//! devices a condition selects), `GET /jobs/v2/{jobId}`, `POST /jobs/v2/{jobId}/cancel`, and
//! `GET /jobs/v2/query?jobType=&jobStatus=` (a JSON array, paged with `x-ms-max-item-count` and
//! `x-ms-continuation`), as the Node `JobClient` and the Python `IoTHubJobManager` call them.
//! Ref: service-rest notes §4.5.

use super::body::{self, ok, JsonResponse};
use super::error::RestError;
use super::RestState;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue};
use axum::response::{IntoResponse, Response};
use serde_json::{json, Value};
use std::collections::HashMap;
use twinhub_core::job::{JobStatus, JobType};
use twinhub_core::policy::Permission;
use twinhub_core::JobId;

/// What the Python `azure-iot-hub` SDK's generated REST client puts in its User-Agent.
const PYTHON_GENERATED_CLIENT: &str = "iothubgatewayserviceapis/";

/// Jobs a query page holds when the caller does not say.
const PAGE_SIZE_DEFAULT: usize = 100;

fn job_id(raw: &str) -> Result<JobId, RestError> {
    JobId::new(raw).map_err(|error| RestError::bad_request(format!("invalid job id '{raw}': {error}")))
}

pub async fn put(
    State(state): State<RestState>,
    headers: HeaderMap,
    Path(id): Path<String>,
    body: Bytes,
) -> Result<JsonResponse, RestError> {
    state.auth.authorize(&headers, Permission::ServiceConnect)?;
    let job = state.hub.create_job(job_id(&id)?, &body::parse(&body)?).await?;
    let (job, statistics) = state.hub.job(&job.job_id).await?;
    Ok(ok(job.to_json(statistics)))
}

pub async fn get(
    State(state): State<RestState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<JsonResponse, RestError> {
    state.auth.authorize(&headers, Permission::ServiceConnect)?;
    let (job, statistics) = state.hub.job(&job_id(&id)?).await?;
    Ok(ok(job.to_json(statistics)))
}

pub async fn cancel(
    State(state): State<RestState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<JsonResponse, RestError> {
    state.auth.authorize(&headers, Permission::ServiceConnect)?;
    let job = state.hub.cancel_job(job_id(&id)?).await?;
    let (job, statistics) = state.hub.job(&job.job_id).await?;
    Ok(ok(job.to_json(statistics)))
}

pub async fn query(
    State(state): State<RestState>,
    headers: HeaderMap,
    Query(parameters): Query<HashMap<String, String>>,
) -> Result<Response, RestError> {
    state.auth.authorize(&headers, Permission::ServiceConnect)?;
    let parameter = |name: &str| {
        parameters
            .get(name)
            .map(String::as_str)
            .filter(|value| !value.is_empty())
    };
    let job_type = parameter("jobType")
        .map(|text| {
            JobType::parse(text).ok_or_else(|| {
                RestError::bad_request(format!(
                    "jobType must be scheduleUpdateTwin or scheduleDeviceMethod, not '{text}'"
                ))
            })
        })
        .transpose()?;
    let status = parameter("jobStatus")
        .map(|text| {
            JobStatus::parse(text).ok_or_else(|| RestError::bad_request(format!("'{text}' is not a job status")))
        })
        .transpose()?;
    let header = |name: &str| headers.get(name).and_then(|value| value.to_str().ok());
    let page_size = match header("x-ms-max-item-count").or(parameter("pageSize")) {
        None => PAGE_SIZE_DEFAULT,
        Some(text) => text
            .trim()
            .parse::<usize>()
            .ok()
            .filter(|size| *size > 0)
            .ok_or_else(|| RestError::bad_request(format!("the page size must be a positive integer, not '{text}'")))?,
    };
    // The continuation is the id of the last job of the page before (jobs are listed in id order).
    let after = header("x-ms-continuation")
        .or(parameter("continuationToken"))
        .filter(|token| !token.is_empty());
    let jobs = state.hub.jobs(job_type, status).await;
    let mut rest = jobs
        .iter()
        .filter(|(job, _)| after.is_none_or(|after| job.job_id.as_str() > after));
    let page: Vec<_> = rest.by_ref().take(page_size).collect();
    let more = rest.next().is_some();
    let items: Vec<Value> = page.iter().map(|(job, statistics)| job.to_json(*statistics)).collect();
    let continuation = more.then(|| page.last().map(|(job, _)| job.job_id.as_str())).flatten();
    // The Python SDK's generated client reads this answer as an object, where IoT Hub (and the Node,
    // Java and C# SDKs) have an array: it gets the object, so its query_scheduled_jobs works as users
    // expect it to (shared/protocol/service-rest.md §4.5).
    if header("user-agent").is_some_and(|agent| agent.contains(PYTHON_GENERATED_CLIENT)) {
        let result = json!({"type": "jobResponse", "items": items, "continuationToken": continuation});
        return Ok(body::json_bytes(&result).into_response());
    }
    let mut response = body::json_bytes(&Value::Array(items)).into_response();
    response
        .headers_mut()
        .insert("x-ms-item-type", HeaderValue::from_static("jobResponse"));
    if let Some(value) = continuation.and_then(|token| HeaderValue::from_str(token).ok()) {
        response.headers_mut().insert("x-ms-continuation", value);
    }
    Ok(response)
}
