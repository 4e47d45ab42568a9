//! A small client of the service REST API for the CLI: SAS-signed HTTPS requests and IoT Hub's errors.

use crate::HubAccess;
use anyhow::{anyhow, bail, Context};
use twinhub_core::policy::ServiceConnectionString;

pub struct ServiceClient {
    http: reqwest::Client,
    connection: ServiceConnectionString,
}

/// Lifetime of the tokens the CLI signs.
const TOKEN_SECONDS: u64 = 3600;
const API_VERSION: &str = "2021-04-12";

impl ServiceClient {
    pub fn new(access: &HubAccess) -> anyhow::Result<Self> {
        let (connection_string, ca) = connection_and_ca(access)?;
        let connection = ServiceConnectionString::parse(&connection_string).context("invalid connection string")?;
        let mut builder = reqwest::Client::builder().use_rustls_tls();
        if let Some(ca) = ca {
            let pem = std::fs::read(&ca).with_context(|| format!("cannot read the CA certificate {}", ca.display()))?;
            builder = builder.add_root_certificate(reqwest::Certificate::from_pem(&pem)?);
        }
        Ok(ServiceClient {
            http: builder.build()?,
            connection,
        })
    }

    pub fn host_name(&self) -> &str {
        &self.connection.host_name
    }

    fn token(&self) -> anyhow::Result<String> {
        let expiry = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)?
            .as_secs()
            + TOKEN_SECONDS;
        Ok(twinhub_core::sas::sign(
            &self.connection.host_name,
            &self.connection.key,
            Some(&self.connection.key_name),
            expiry,
        )?)
    }

    /// One page of `POST /devices/query`: the items and the continuation token, if more pages exist.
    pub async fn query_page(
        &self,
        sql: &str,
        page_size: Option<usize>,
        continuation: Option<&str>,
    ) -> anyhow::Result<(Vec<serde_json::Value>, Option<String>)> {
        let url = format!(
            "https://{}/devices/query?api-version={API_VERSION}",
            self.connection.host_name
        );
        let mut request = self
            .http
            .post(&url)
            .header("Authorization", self.token()?)
            .json(&serde_json::json!({ "query": sql }));
        if let Some(size) = page_size {
            request = request.header("x-ms-max-item-count", size.to_string());
        }
        if let Some(token) = continuation {
            request = request.header("x-ms-continuation", token);
        }
        let response = request
            .send()
            .await
            .with_context(|| format!("cannot reach the hub at {url}"))?;
        let status = response.status();
        let next = response
            .headers()
            .get("x-ms-continuation")
            .and_then(|value| value.to_str().ok())
            .map(str::to_owned);
        let text = response.text().await?;
        if !status.is_success() {
            return Err(anyhow!("{} {}", status.as_u16(), error_message(&text)));
        }
        let items: Vec<serde_json::Value> =
            serde_json::from_str(&text).context("the hub answered the query with something other than a JSON array")?;
        Ok((items, next))
    }

    /// Sends a request; returns the JSON body of a success, or IoT Hub's error message.
    pub async fn send(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<&serde_json::Value>,
        if_match: Option<&str>,
    ) -> anyhow::Result<serde_json::Value> {
        let url = format!("https://{}{path}?api-version={API_VERSION}", self.connection.host_name);
        let mut request = self.http.request(method, &url).header("Authorization", self.token()?);
        if let Some(etag) = if_match {
            request = request.header("If-Match", format!("\"{etag}\""));
        }
        if let Some(body) = body {
            request = request.json(body);
        }
        let response = request
            .send()
            .await
            .with_context(|| format!("cannot reach the hub at {url}"))?;
        let status = response.status();
        let text = response.text().await?;
        if status.is_success() {
            if text.is_empty() {
                return Ok(serde_json::Value::Null);
            }
            return serde_json::from_str(&text).context("the hub answered with something other than JSON");
        }
        Err(anyhow!("{} {}", status.as_u16(), error_message(&text)))
    }
}

/// The service connection string and the CA to trust: given, or the owner policy and CA of a data directory.
pub fn connection_and_ca(access: &HubAccess) -> anyhow::Result<(String, Option<std::path::PathBuf>)> {
    let (connection_string, data_dir_ca) = match (&access.connection_string, &access.data_dir) {
        (Some(text), _) => (
            text.clone(),
            access
                .data_dir
                .as_ref()
                .map(|dir| dir.join(twinhub_server::material::CA_CERT_FILE)),
        ),
        (None, Some(dir)) => {
            let policies = twinhub_server::HubMaterial::policies_in(dir, false)?;
            let owner = twinhub_server::HubMaterial::policy(&policies, "iothubowner")?;
            let hostname = twinhub_server::material::read_hostname(dir)?;
            (
                twinhub_core::policy::service_connection_string(&hostname, owner),
                Some(dir.join(twinhub_server::material::CA_CERT_FILE)),
            )
        }
        (None, None) => bail!("say which hub: --connection-string (or TWINHUB_CONNECTION_STRING) or --data-dir"),
    };
    Ok((connection_string, access.ca_cert.clone().or(data_dir_ca)))
}

/// IoT Hub's `ErrorCode:<Name>;<text>` as "<Name>: <text>".
fn error_message(text: &str) -> String {
    serde_json::from_str::<serde_json::Value>(text)
        .ok()
        .and_then(|body| body["Message"].as_str().map(str::to_owned))
        .map(
            |message| match message.strip_prefix("ErrorCode:").and_then(|rest| rest.split_once(';')) {
                Some((code, text)) => format!("{code}: {text}"),
                None => message,
            },
        )
        .unwrap_or_else(|| text.to_owned())
}
