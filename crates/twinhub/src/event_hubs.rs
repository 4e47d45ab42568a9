//! A small Event Hubs consumer over AMQP (fe2o3-amqp), for `twinhub monitor-events` and the telemetry
//! benchmark: TLS to the hub's AMQP port, a CBS put-token signed as Event Hubs clients sign (with the key's
//! text), then one receiver per partition from a start position.

use anyhow::{bail, Context};
use fe2o3_amqp::link::{Receiver, Sender};
use fe2o3_amqp::session::SessionHandle;
use fe2o3_amqp::types::messaging::annotations::OwnedKey;
use fe2o3_amqp::types::messaging::{AmqpValue, ApplicationProperties, Body, Message, MessageId, Properties, Source};
use fe2o3_amqp::types::primitives::{SimpleValue, Symbol, Value};
use fe2o3_amqp::{Connection, Session};
use serde_amqp::described::Described;
use serde_amqp::descriptor::Descriptor;
use std::sync::Arc;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

/// An event as the consumer receives it.
pub type Event = Message<Body<Value>>;

/// Who reads, and where.
#[derive(Clone)]
pub struct ConsumerConfig {
    pub host: String,
    pub port: u16,
    pub tls: Arc<rustls::ClientConfig>,
    pub hub_name: String,
    pub policy_name: String,
    pub policy_key: String,
    pub consumer_group: String,
}

/// Where a receiver starts.
#[derive(Clone, Copy, Debug)]
pub enum Start {
    Earliest,
    Latest,
}

impl Start {
    fn expression(self) -> String {
        match self {
            Start::Earliest => "amqp.annotation.x-opt-offset > '-1'".into(),
            Start::Latest => "amqp.annotation.x-opt-offset > '@latest'".into(),
        }
    }
}

/// An open AMQP connection with a CBS token for the consumer group.
pub struct Consumer {
    connection: fe2o3_amqp::connection::ConnectionHandle<()>,
    session: SessionHandle<()>,
    config: ConsumerConfig,
}

/// An Event Hubs SAS token: the HMAC key is the policy key's text (Base64 of it decodes back to it).
fn token(resource: &str, key: &str) -> anyhow::Result<String> {
    use base64::Engine;
    let expiry = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_secs()
        + 3600;
    let key_as_base64 = base64::engine::general_purpose::STANDARD.encode(key.as_bytes());
    Ok(twinhub_core::sas::sign(resource, &key_as_base64, None, expiry)?)
}

impl Consumer {
    pub async fn connect(config: ConsumerConfig) -> anyhow::Result<Consumer> {
        let tcp = TcpStream::connect((config.host.as_str(), config.port))
            .await
            .with_context(|| format!("cannot reach {}:{}", config.host, config.port))?;
        tcp.set_nodelay(true)?;
        let server_name = match config.host.parse::<std::net::IpAddr>() {
            Ok(ip) => rustls::pki_types::ServerName::IpAddress(ip.into()),
            Err(_) => rustls::pki_types::ServerName::try_from(config.host.clone())?,
        };
        let tls = TlsConnector::from(Arc::clone(&config.tls))
            .connect(server_name, tcp)
            .await?;
        let mut connection = Connection::builder()
            .container_id("twinhub-monitor")
            .hostname(config.host.as_str())
            .open_with_stream(tls)
            .await
            .context("AMQP open")?;
        let mut session = Session::begin(&mut connection).await.context("AMQP session")?;
        let audience = format!(
            "sb://{}/{}/consumergroups/{}",
            config.host, config.hub_name, config.consumer_group
        );
        let mut token = token(&audience, &config.policy_key)?;
        token.push_str(&format!("&skn={}", config.policy_name));
        put_token(&mut session, &audience, &token).await?;
        Ok(Consumer {
            connection,
            session,
            config,
        })
    }

    /// The event hub's partition ids, from a `$management` READ.
    pub async fn partition_ids(&mut self) -> anyhow::Result<Vec<String>> {
        let mut requests = Sender::attach(&mut self.session, "management-requests", "$management").await?;
        let mut answers = Receiver::attach(&mut self.session, "management-answers", "$management").await?;
        let audience = format!("sb://{}/{}", self.config.host, self.config.hub_name);
        let mut security_token = token(&audience, &self.config.policy_key)?;
        security_token.push_str(&format!("&skn={}", self.config.policy_name));
        let request = Message::builder()
            .properties(Properties {
                message_id: Some(MessageId::String("read-eventhub".into())),
                ..Properties::default()
            })
            .application_properties(
                ApplicationProperties::builder()
                    .insert("operation", SimpleValue::String("READ".into()))
                    .insert("type", SimpleValue::String("com.microsoft:eventhub".into()))
                    .insert("name", SimpleValue::String(self.config.hub_name.clone()))
                    .insert("security_token", SimpleValue::String(security_token))
                    .build(),
            )
            .body(AmqpValue(Value::Null))
            .build();
        requests.send(request).await.context("$management READ")?;
        let reply = answers.recv::<Body<Value>>().await.context("$management answer")?;
        let message = reply.message();
        let status = message
            .application_properties
            .as_ref()
            .and_then(|properties| properties.0.get("status-code").cloned());
        if status != Some(SimpleValue::Int(200)) {
            bail!(
                "the hub refused to describe event hub '{}' ({status:?})",
                self.config.hub_name
            );
        }
        let Body::Value(AmqpValue(Value::Map(map))) = &message.body else {
            bail!("the $management answer has no map");
        };
        let ids = match map.get(&Value::String("partition_ids".into())) {
            Some(Value::List(ids)) => ids
                .iter()
                .filter_map(|id| match id {
                    Value::String(id) => Some(id.clone()),
                    _ => None,
                })
                .collect(),
            _ => bail!("the $management answer has no partition_ids"),
        };
        let _ = requests.close().await;
        let _ = answers.close().await;
        Ok(ids)
    }

    /// Receivers on every partition from `start`, their events funnelled into one channel as they come.
    pub async fn receive_all(&mut self, start: Start) -> anyhow::Result<tokio::sync::mpsc::Receiver<Event>> {
        let (events, incoming) = tokio::sync::mpsc::channel(8192);
        for partition in self.partition_ids().await? {
            let partition: u16 = partition.parse().context("a partition id that is not a number")?;
            let mut receiver = self.receiver(partition, start).await?;
            let events = events.clone();
            tokio::spawn(async move {
                while let Some(event) = next_event(&mut receiver).await {
                    if events.send(event).await.is_err() {
                        break;
                    }
                }
            });
        }
        Ok(incoming)
    }

    /// A receiver on `partition` from `start`.
    pub async fn receiver(&mut self, partition: u16, start: Start) -> anyhow::Result<Receiver> {
        let address = format!(
            "{}/ConsumerGroups/{}/Partitions/{partition}",
            self.config.hub_name, self.config.consumer_group
        );
        let mut filter = fe2o3_amqp::types::messaging::FilterSet::new();
        filter.insert(
            Symbol::from("apache.org:selector-filter:string"),
            Value::Described(Box::new(Described {
                descriptor: Descriptor::Name(Symbol::from("apache.org:selector-filter:string")),
                value: Value::String(start.expression()),
            })),
        );
        let receiver = Receiver::builder()
            .name(format!("monitor-{partition}"))
            .source(Source::builder().address(address).filter(filter).build())
            .credit_mode(fe2o3_amqp::link::receiver::CreditMode::Auto(1000))
            .attach(&mut self.session)
            .await
            .with_context(|| format!("attach a receiver on partition {partition}"))?;
        Ok(receiver)
    }

    pub async fn close(mut self) {
        let _ = self.session.end().await;
        let _ = self.connection.close().await;
    }
}

/// The next event of a receiver. Each is acknowledged: the hub sends them pre-settled, so that puts
/// nothing on the wire, but fe2o3 renews the link credit only as deliveries are settled here.
async fn next_event(receiver: &mut Receiver) -> Option<Event> {
    let delivery = receiver.recv::<Body<Value>>().await.ok()?;
    receiver.accept(&delivery).await.ok()?;
    Some(delivery.into_message())
}

/// A CBS put-token of `token` for `audience` on its own pair of links; fails unless the hub answers 200.
pub async fn put_token(session: &mut SessionHandle<()>, audience: &str, token: &str) -> anyhow::Result<()> {
    let mut requests = Sender::attach(session, "cbs-requests", "$cbs").await?;
    let mut answers = Receiver::attach(session, "cbs-answers", "$cbs").await?;
    let request = Message::builder()
        .properties(Properties {
            message_id: Some(MessageId::String("put-token".into())),
            ..Properties::default()
        })
        .application_properties(
            ApplicationProperties::builder()
                .insert("operation", SimpleValue::String("put-token".into()))
                .insert("type", SimpleValue::String("servicebus.windows.net:sastoken".into()))
                .insert("name", SimpleValue::String(audience.into()))
                .build(),
        )
        .body(AmqpValue(token.to_owned()))
        .build();
    requests.send(request).await.context("put-token")?;
    let reply = answers.recv::<Body<Value>>().await.context("put-token reply")?;
    let status = reply
        .message()
        .application_properties
        .as_ref()
        .and_then(|properties| properties.0.get("status-code").cloned());
    if status != Some(SimpleValue::Int(200)) {
        bail!("the hub refused the token for {audience} ({status:?})");
    }
    let _ = requests.close().await;
    let _ = answers.close().await;
    Ok(())
}

/// A message annotation's value.
pub fn annotation<'a>(message: &'a Message<Body<Value>>, key: &str) -> Option<&'a Value> {
    message
        .message_annotations
        .as_ref()?
        .0
        .get(&OwnedKey::Symbol(Symbol::from(key)))
}

/// The event as `az iot hub monitor-events` prints it: origin, payload (JSON when it parses), and its
/// application properties, system properties and annotations.
pub fn event_json(message: &Message<Body<Value>>) -> serde_json::Value {
    let body: Vec<u8> = match &message.body {
        Body::Data(batch) => batch.iter().flat_map(|data| data.0.to_vec()).collect(),
        _ => Vec::new(),
    };
    let payload = serde_json::from_slice(&body)
        .unwrap_or_else(|_| serde_json::Value::String(String::from_utf8_lossy(&body).into_owned()));
    let text = |value: Option<&Value>| match value {
        Some(Value::String(text)) => text.clone(),
        _ => String::new(),
    };
    let mut application = serde_json::Map::new();
    if let Some(properties) = &message.application_properties {
        for (name, value) in properties.0.iter() {
            application.insert(name.clone(), json_of_simple(value));
        }
    }
    let mut annotations = serde_json::Map::new();
    if let Some(section) = &message.message_annotations {
        for (key, value) in section.0.iter() {
            if let OwnedKey::Symbol(symbol) = key {
                annotations.insert(symbol.as_str().to_owned(), json_of(value));
            }
        }
    }
    let mut system = serde_json::Map::new();
    if let Some(properties) = &message.properties {
        let id = |id: &Option<MessageId>| {
            id.as_ref().map(|id| match id {
                MessageId::String(text) => serde_json::Value::String(text.clone()),
                other => serde_json::Value::String(format!("{other:?}")),
            })
        };
        if let Some(value) = id(&properties.message_id) {
            system.insert("message-id".into(), value);
        }
        if let Some(value) = id(&properties.correlation_id) {
            system.insert("correlation-id".into(), value);
        }
        if let Some(value) = &properties.content_type {
            system.insert("content-type".into(), value.as_str().into());
        }
        if let Some(value) = &properties.content_encoding {
            system.insert("content-encoding".into(), value.as_str().into());
        }
    }
    serde_json::json!({"event": {
        "origin": text(annotation(message, "iothub-connection-device-id")),
        "module": text(annotation(message, "iothub-connection-module-id")),
        "payload": payload,
        "properties": {"system": system, "application": application},
        "annotations": annotations,
    }})
}

fn json_of(value: &Value) -> serde_json::Value {
    match value {
        Value::String(text) => text.clone().into(),
        Value::Symbol(symbol) => symbol.as_str().into(),
        Value::Long(n) => (*n).into(),
        Value::Int(n) => (*n).into(),
        Value::Ulong(n) => (*n).into(),
        Value::Bool(b) => (*b).into(),
        Value::Timestamp(t) => t.milliseconds().into(),
        other => format!("{other:?}").into(),
    }
}

fn json_of_simple(value: &SimpleValue) -> serde_json::Value {
    match value {
        SimpleValue::String(text) => text.clone().into(),
        SimpleValue::Symbol(symbol) => symbol.as_str().into(),
        SimpleValue::Long(n) => (*n).into(),
        SimpleValue::Int(n) => (*n).into(),
        SimpleValue::Bool(b) => (*b).into(),
        other => format!("{other:?}").into(),
    }
}
