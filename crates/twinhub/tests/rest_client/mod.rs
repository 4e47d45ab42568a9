//! A raw client of the service REST API for integration tests: signs tokens like the SDKs, and returns
//! status, headers and JSON so tests assert exactly what a user would see on the wire.
#![allow(dead_code)]

use reqwest::header::HeaderMap;
use reqwest::Method;
use serde_json::Value;
use std::time::{SystemTime, UNIX_EPOCH};
use twinhub_core::policy::ServiceConnectionString;

pub struct Service {
    pub http: reqwest::Client,
    pub connection: ServiceConnectionString,
    /// Where requests go when not to the connection string's host name (one node of a cluster).
    pub address: Option<String>,
}

pub struct Reply {
    pub status: u16,
    pub headers: HeaderMap,
    pub body: Value,
}

impl Reply {
    /// IoT Hub's `ErrorCode:<Name>` from the body, which must agree with the `iothub-errorcode` header.
    pub fn error_code(&self) -> String {
        let message = self.body["Message"].as_str().unwrap_or_default();
        let code = message
            .strip_prefix("ErrorCode:")
            .and_then(|rest| rest.split(';').next())
            .unwrap_or_default()
            .to_owned();
        let header = self
            .headers
            .get("iothub-errorcode")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default();
        assert_eq!(code, header, "body and header disagree: {}", self.body);
        code
    }

    pub fn message(&self) -> String {
        self.body["Message"].as_str().unwrap_or_default().to_owned()
    }
}

pub fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs()
}

impl Service {
    pub fn new(connection_string: &str, ca_pem_path: &std::path::Path) -> Service {
        let pem = std::fs::read(ca_pem_path).expect("CA certificate");
        let http = reqwest::Client::builder()
            .use_rustls_tls()
            .add_root_certificate(reqwest::Certificate::from_pem(&pem).unwrap())
            .pool_max_idle_per_host(64)
            .build()
            .unwrap();
        Service {
            http,
            connection: ServiceConnectionString::parse(connection_string).unwrap(),
            address: None,
        }
    }

    /// The same back end, sending its requests to `address` (one node of a cluster); tokens still name
    /// the host name.
    pub fn through(mut self, address: std::net::Ipv4Addr) -> Service {
        self.address = Some(address.to_string());
        self
    }

    pub fn token(&self) -> String {
        twinhub_core::sas::sign(
            &self.connection.host_name,
            &self.connection.key,
            Some(&self.connection.key_name),
            now() + 600,
        )
        .unwrap()
    }

    pub async fn call(&self, method: Method, path: &str, body: Option<Value>, if_match: Option<&str>) -> Reply {
        self.call_with(
            method,
            path,
            body.map(|b| b.to_string().into_bytes()),
            if_match,
            Some(self.token()),
        )
        .await
    }

    pub async fn call_with(
        &self,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
        if_match: Option<&str>,
        authorization: Option<String>,
    ) -> Reply {
        let separator = if path.contains('?') { '&' } else { '?' };
        let url = format!(
            "https://{}{path}{separator}api-version=2021-04-12",
            self.address.as_deref().unwrap_or(&self.connection.host_name)
        );
        let mut request = self.http.request(method, url);
        if let Some(token) = authorization {
            request = request.header("Authorization", token);
        }
        if let Some(etag) = if_match {
            request = request.header("If-Match", etag);
        }
        if let Some(body) = body {
            request = request
                .header("Content-Type", "application/json; charset=utf-8")
                .body(body);
        }
        let response = request.send().await.expect("request sent");
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        let text = response.text().await.unwrap();
        let body = if text.is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).unwrap_or(Value::String(text))
        };
        Reply { status, headers, body }
    }
}

impl Service {
    /// `POST /devices/query` with optional paging headers, as the SDKs send it.
    /// Registers a device with generated keys; returns its primary key.
    /// Registers module `module_id` of `device_id`; returns its primary key.
    pub async fn register_module(&self, device_id: &str, module_id: &str) -> String {
        let body = serde_json::json!({"deviceId": device_id, "moduleId": module_id});
        self.register(&format!("/devices/{device_id}/modules/{module_id}"), body)
            .await
    }

    /// Registers device `id`; returns its primary key.
    pub async fn register_device(&self, id: &str) -> String {
        self.register(&format!("/devices/{id}"), serde_json::json!({"deviceId": id}))
            .await
    }

    /// Creates the identity at `path`; returns its primary key.
    async fn register(&self, path: &str, body: serde_json::Value) -> String {
        let created = self.call(Method::PUT, path, Some(body), None).await;
        assert_eq!(created.status, 200, "{}", created.body);
        created.body["authentication"]["symmetricKey"]["primaryKey"]
            .as_str()
            .unwrap()
            .to_owned()
    }

    pub async fn query(&self, sql: &str, page_size: Option<&str>, continuation: Option<&str>) -> Reply {
        let url = format!(
            "https://{}/devices/query?api-version=2021-04-12",
            self.connection.host_name
        );
        let mut request = self
            .http
            .post(url)
            .header("Authorization", self.token())
            .header("Content-Type", "application/json; charset=utf-8")
            .body(serde_json::json!({ "query": sql }).to_string());
        if let Some(size) = page_size {
            request = request.header("x-ms-max-item-count", size);
        }
        if let Some(token) = continuation {
            request = request.header("x-ms-continuation", token);
        }
        let response = request.send().await.expect("request sent");
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        let text = response.text().await.unwrap();
        let body = serde_json::from_str(&text).unwrap_or(Value::String(text));
        Reply { status, headers, body }
    }

    /// A request whose transport failure is an answer (`None`), for tests that kill the hub.
    pub async fn call_checked(&self, method: Method, path: &str, body: Value) -> Option<u16> {
        let url = format!("https://{}{path}?api-version=2021-04-12", self.connection.host_name);
        let response = self
            .http
            .request(method, url)
            .header("Authorization", self.token())
            .header("If-Match", "*")
            .header("Content-Type", "application/json")
            .body(body.to_string())
            .send()
            .await
            .ok()?;
        let status = response.status().as_u16();
        // The acknowledgement is the whole response, as a client sees it.
        response.bytes().await.ok()?;
        Some(status)
    }
}
