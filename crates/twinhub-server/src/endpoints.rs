//! Custom routing endpoints at the edge: each one's outbox is an embedded store of its own in the data
//! directory (`endpoints/<name>`: the events, and how far delivery got), and its sink speaks the endpoint's
//! protocol: a NATS JetStream publish acknowledged by the stream, or an HTTP POST answered 2xx.
//!
//! What a sink sends: the message body as it is, and its properties as headers (NATS headers, HTTP
//! headers): `content-type`, `content-encoding`, `message-id`, `correlation-id` when the message has them;
//! `iothub-connection-device-id` (and `-module-id`), `iothub-enqueuedtime`, `iothub-message-source`; each
//! application property under its own name (HTTP: `iothub-app-<name>`, as IoT Hub's HTTPS API writes them);
//! and a delivery id unique to the message in this endpoint (`Nats-Msg-Id`, which JetStream uses to drop a
//! redelivered duplicate within its window; HTTP `iothub-delivery-id`), for receivers to drop repeats.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::OnceCell;
use twinhub_core::event::{EventValue, StoredEvent};
use twinhub_core::routing::{EndpointKind, EndpointSpec};
use twinhub_hub::endpoints::{EndpointFactory, EndpointSink, OpenedEndpoint};
use twinhub_store::{EmbeddedStore, StoreOptions, EVENT_PARTITIONS_MIN};

/// How long one delivery may take before it counts as failed (and is retried).
const DELIVERY_TIMEOUT: Duration = Duration::from_secs(10);

/// Opens endpoints' outboxes under `data_dir/endpoints`. In a cluster each node keeps its own outbox of
/// what it routed and delivers it (a node that is gone for good leaves its undelivered messages behind
/// until its data directory is served again); an event hub endpoint is one log every node appends to and
/// reads, in JetStream like the cluster's telemetry.
pub struct EndpointOutboxes {
    pub data_dir: PathBuf,
    /// On a cluster's node: where its event hub endpoints live; `None` on a node alone.
    pub event_hubs_in_jetstream: Option<EventHubsInJetStream>,
    /// On a cluster's node without a bus, event hub endpoints cannot be shared and are refused.
    pub clustered: bool,
}

/// Where a cluster keeps its event hub endpoints: the NATS server of its telemetry, named after the
/// cluster's identity and the endpoint.
#[derive(Clone, Debug)]
pub struct EventHubsInJetStream {
    pub url: String,
    pub cluster: String,
    pub replicas: usize,
}

#[async_trait::async_trait]
impl EndpointFactory for EndpointOutboxes {
    async fn open(&self, spec: &EndpointSpec) -> Result<OpenedEndpoint, String> {
        if let EndpointKind::EventHub { partitions } = spec.kind {
            if let Some(jetstream) = &self.event_hubs_in_jetstream {
                let name = format!("{}/endpoints/{}", jetstream.cluster, spec.name.to_ascii_lowercase());
                let options = twinhub_store::JetStreamOptions {
                    partitions,
                    replicas: jetstream.replicas,
                };
                let log = twinhub_store::JetStreamEvents::connect(&jetstream.url, &name, options)
                    .await
                    .map_err(|error| error.to_string())?;
                return Ok(OpenedEndpoint::EventHub(Arc::new(log)));
            }
            if self.clustered {
                return Err("event hub endpoints on a cluster's nodes need its bus (serve --bus)".into());
            }
        }
        let dir = self.data_dir.join("endpoints").join(spec.name.to_ascii_lowercase());
        let options = StoreOptions {
            event_partitions: match spec.kind {
                EndpointKind::EventHub { partitions } => partitions,
                _ => EVENT_PARTITIONS_MIN,
            },
        };
        let store = tokio::task::spawn_blocking(move || EmbeddedStore::open_with(&dir, options))
            .await
            .map_err(|error| error.to_string())?
            .map_err(|error| error.to_string())?;
        let store = Arc::new(store);
        let sink: Arc<dyn EndpointSink> = match &spec.kind {
            EndpointKind::EventHub { .. } => {
                return Ok(OpenedEndpoint::EventHub(store as Arc<dyn twinhub_store::EventStore>))
            }
            EndpointKind::Nats { url, subject, stream } => Arc::new(NatsSink {
                endpoint: spec.name.clone(),
                url: url.clone(),
                subject: subject.clone(),
                stream: stream.clone(),
                jetstream: OnceCell::new(),
            }),
            EndpointKind::Webhook { url } => Arc::new(WebhookSink {
                endpoint: spec.name.clone(),
                url: url.clone(),
                http: reqwest::Client::builder()
                    .timeout(DELIVERY_TIMEOUT)
                    .build()
                    .map_err(|error| error.to_string())?,
            }),
        };
        Ok(OpenedEndpoint::Delivered {
            outbox: Arc::clone(&store) as Arc<dyn twinhub_store::EventStore>,
            positions: store,
            sink,
        })
    }
}

/// A message's headers, as name and text, in the order a receiver reads them.
fn headers(endpoint: &str, message: &StoredEvent, application_prefix: &str) -> Vec<(String, String)> {
    let event = &message.event;
    let mut headers = Vec::new();
    let properties = &event.properties;
    if let Some(content_type) = &properties.content_type {
        headers.push(("content-type".to_owned(), content_type.clone()));
    }
    if let Some(content_encoding) = &properties.content_encoding {
        headers.push(("content-encoding".to_owned(), content_encoding.clone()));
    }
    if let Some(message_id) = properties.message_id.as_ref().and_then(text) {
        headers.push(("message-id".to_owned(), message_id));
    }
    if let Some(correlation_id) = properties.correlation_id.as_ref().and_then(text) {
        headers.push(("correlation-id".to_owned(), correlation_id));
    }
    headers.push((
        "iothub-connection-device-id".to_owned(),
        message.origin.device_id.to_string(),
    ));
    if let Some(module_id) = &message.origin.module_id {
        headers.push(("iothub-connection-module-id".to_owned(), module_id.clone()));
    }
    headers.push(("iothub-enqueuedtime".to_owned(), message.enqueued_time.to_iso8601()));
    let source = event
        .annotations
        .iter()
        .find(|(name, _)| name == "iothub-message-source")
        .and_then(|(_, value)| text(value))
        .unwrap_or_else(|| "Telemetry".to_owned());
    headers.push(("iothub-message-source".to_owned(), source));
    for (name, value) in &event.application_properties {
        // A name or value no header can carry is left out, rather than failing every delivery.
        if let Some(value) = text(value).filter(|value| is_token(name) && !value.chars().any(char::is_control)) {
            headers.push((format!("{application_prefix}{name}"), value));
        }
    }
    headers.push((
        "delivery-id".to_owned(),
        // Unique within the endpoint's outbox: the partition is the device's, numbers are per partition.
        format!(
            "{endpoint}/{}-{}",
            twinhub_core::event::partition_of(&message.origin.device_id, EVENT_PARTITIONS_MIN),
            message.sequence_number
        ),
    ));
    headers
}

/// HTTP's token characters (header names), which NATS header names accept too.
fn is_token(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|byte| byte.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&byte))
}

/// A property value as header text (binary values have none).
fn text(value: &EventValue) -> Option<String> {
    Some(match value {
        EventValue::Null => String::new(),
        EventValue::Bool(flag) => flag.to_string(),
        EventValue::Long(number) => number.to_string(),
        EventValue::ULong(number) => number.to_string(),
        EventValue::Double(number) => number.to_string(),
        EventValue::String(text) | EventValue::Symbol(text) => text.clone(),
        EventValue::Uuid(bytes) => bytes.iter().map(|byte| format!("{byte:02x}")).collect(),
        EventValue::Timestamp(millis) => twinhub_core::Timestamp(millis.saturating_mul(1_000_000)).to_iso8601(),
        EventValue::Binary(_) => return None,
    })
}

struct NatsSink {
    endpoint: String,
    url: String,
    subject: String,
    stream: Option<String>,
    jetstream: OnceCell<async_nats::jetstream::Context>,
}

impl NatsSink {
    async fn jetstream(&self) -> Result<&async_nats::jetstream::Context, String> {
        self.jetstream
            .get_or_try_init(|| async {
                let client = async_nats::connect(&self.url)
                    .await
                    .map_err(|error| format!("cannot reach NATS at {}: {error}", self.url))?;
                let jetstream = async_nats::jetstream::new(client);
                if let Some(stream) = &self.stream {
                    jetstream
                        .get_or_create_stream(async_nats::jetstream::stream::Config {
                            name: stream.clone(),
                            subjects: vec![self.subject.clone()],
                            ..Default::default()
                        })
                        .await
                        .map_err(|error| format!("cannot create stream {stream}: {error}"))?;
                }
                Ok(jetstream)
            })
            .await
    }
}

#[async_trait::async_trait]
impl EndpointSink for NatsSink {
    async fn deliver(&self, message: &StoredEvent) -> Result<(), String> {
        let jetstream = self.jetstream().await?;
        let mut nats_headers = async_nats::HeaderMap::new();
        for (name, value) in headers(&self.endpoint, message, "") {
            if name == "delivery-id" {
                nats_headers.insert("Nats-Msg-Id", value.as_str());
            } else {
                nats_headers.append(name.as_str(), value.as_str());
            }
        }
        let publish = async {
            jetstream
                .publish_with_headers(self.subject.clone(), nats_headers, message.event.body.clone().into())
                .await
                .map_err(|error| format!("publish: {error}"))?
                .await
                .map_err(|error| format!("JetStream did not take it: {error}"))
        };
        tokio::time::timeout(DELIVERY_TIMEOUT, publish)
            .await
            .map_err(|_| "JetStream did not answer in time".to_owned())??;
        Ok(())
    }
}

struct WebhookSink {
    endpoint: String,
    url: String,
    http: reqwest::Client,
}

#[async_trait::async_trait]
impl EndpointSink for WebhookSink {
    async fn deliver(&self, message: &StoredEvent) -> Result<(), String> {
        let mut request = self.http.post(&self.url).body(message.event.body.clone());
        for (name, value) in headers(&self.endpoint, message, "iothub-app-") {
            let name = if name == "delivery-id" {
                "iothub-delivery-id".to_owned()
            } else {
                name
            };
            request = request.header(name, value);
        }
        if message.event.properties.content_type.is_none() {
            request = request.header("content-type", "application/octet-stream");
        }
        let response = request.send().await.map_err(|error| error.to_string())?;
        let status = response.status();
        if status.is_success() {
            Ok(())
        } else {
            Err(format!("{} answered {status}", self.url))
        }
    }
}
