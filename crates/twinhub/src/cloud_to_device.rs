//! A small back-end sender of cloud-to-device messages over AMQP (fe2o3-amqp), for `twinhub c2d send` and
//! the `c2d` benchmark: TLS to the hub's AMQP port, a CBS put-token of an IoT Hub service token (audience:
//! the host name, signed with a policy's key, `skn=<policy>`, as the Node azure-iothub client signs it),
//! then one sender link on `/messages/devicebound`. Each message names its device in `to`
//! (`/devices/{id}/messages/devicebound`, the id percent-encoded); the hub settles it `accepted` once the
//! device's queue holds it durably, `rejected` with IoT Hub's condition otherwise.

use anyhow::Context;
use fe2o3_amqp::connection::ConnectionHandle;
use fe2o3_amqp::link::delivery::DeliveryFut;
use fe2o3_amqp::link::{SendError, Sender};
use fe2o3_amqp::session::SessionHandle;
use fe2o3_amqp::types::definitions::{Error as AmqpErrorBody, ErrorCondition};
use fe2o3_amqp::types::messaging::{ApplicationProperties, Body, Data, Message, MessageId, Outcome, Properties};
use fe2o3_amqp::types::primitives::{Binary, SimpleValue, Symbol, Value};
use fe2o3_amqp::{Connection, Session};
use std::sync::Arc;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

/// Lifetime of the service token put on the connection.
const TOKEN_SECONDS: u64 = 24 * 3600;
/// The back end's link: IoT Hub takes every cloud-to-device message here.
const DEVICEBOUND: &str = "/messages/devicebound";

/// The feedback a back end asks for (`iothub-ack`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Ack {
    None,
    Positive,
    Negative,
    Full,
}

impl Ack {
    fn as_str(self) -> &'static str {
        match self {
            Ack::None => "none",
            Ack::Positive => "positive",
            Ack::Negative => "negative",
            Ack::Full => "full",
        }
    }
}

/// One cloud-to-device message.
#[derive(Clone, Debug, Default)]
pub struct Outgoing {
    pub device_id: String,
    pub body: Vec<u8>,
    pub message_id: Option<String>,
    pub correlation_id: Option<String>,
    /// `None` leaves `iothub-ack` out (the hub's default: none).
    pub ack: Option<Ack>,
    /// Application properties, in order.
    pub properties: Vec<(String, String)>,
}

impl Outgoing {
    /// The message as IoT Hub's service clients send it.
    fn message(&self) -> Message<Body<Value>> {
        let properties = Properties {
            to: Some(format!(
                "/devices/{}/messages/devicebound",
                percent_encode(&self.device_id)
            )),
            message_id: self.message_id.clone().map(MessageId::String),
            correlation_id: self.correlation_id.clone().map(MessageId::String),
            ..Properties::default()
        };
        let mut application = ApplicationProperties::builder();
        if let Some(ack) = self.ack {
            application = application.insert("iothub-ack", SimpleValue::String(ack.as_str().into()));
        }
        for (name, value) in &self.properties {
            application = application.insert(name.as_str(), SimpleValue::String(value.clone()));
        }
        Message::builder()
            .properties(properties)
            .application_properties(application.build())
            .body(Body::Data(vec![Data(Binary::from(self.body.clone()))].into()))
            .build()
    }
}

/// The hub refused a message: its AMQP condition (`amqp:not-found`, `amqp:resource-limit-exceeded`, ...)
/// and description.
#[derive(Debug, Clone)]
pub struct Refused {
    pub condition: String,
    pub description: Option<String>,
}

impl Refused {
    /// The device's queue is full (IoT Hub keeps at most 50 messages a device).
    pub fn is_queue_full(&self) -> bool {
        self.condition == "amqp:resource-limit-exceeded"
    }

    fn of(error: Option<AmqpErrorBody>) -> Refused {
        match error {
            Some(error) => Refused {
                condition: condition_text(&error.condition),
                description: error.description,
            },
            None => Refused {
                condition: "rejected".into(),
                description: None,
            },
        }
    }
}

impl std::fmt::Display for Refused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "the hub refused the message: {}", self.condition)?;
        if let Some(description) = &self.description {
            write!(f, ": {description}")?;
        }
        Ok(())
    }
}

impl std::error::Error for Refused {}

fn condition_text(condition: &ErrorCondition) -> String {
    match condition {
        ErrorCondition::AmqpError(error) => Symbol::from(error).as_str().to_owned(),
        ErrorCondition::ConnectionError(error) => Symbol::from(error).as_str().to_owned(),
        ErrorCondition::SessionError(error) => Symbol::from(error).as_str().to_owned(),
        ErrorCondition::LinkError(error) => Symbol::from(error).as_str().to_owned(),
        ErrorCondition::Custom(symbol) => symbol.as_str().to_owned(),
        #[allow(unreachable_patterns)]
        other => format!("{other:?}"),
    }
}

/// What the hub made of one send: `Ok` once accepted (queued durably); [`Refused`] when rejected.
fn outcome_of(result: Result<Outcome, SendError>) -> anyhow::Result<()> {
    match result {
        Ok(Outcome::Accepted(_)) => Ok(()),
        Ok(Outcome::Rejected(rejected)) => Err(Refused::of(rejected.error).into()),
        Ok(other) => Err(anyhow::anyhow!("the hub did not take the message: {other:?}")),
        Err(error) => Err(anyhow::Error::new(error).context("the message was not settled")),
    }
}

/// A send handed to the link whose outcome has not come yet.
pub struct InFlight(DeliveryFut<Result<Outcome, SendError>>);

impl InFlight {
    /// Waits for the hub's outcome.
    pub async fn outcome(self) -> anyhow::Result<()> {
        outcome_of(self.0.await)
    }
}

/// An AMQP connection authorized as a back end, with its sender link on `/messages/devicebound`.
pub struct CloudToDeviceSender {
    connection: ConnectionHandle<()>,
    session: SessionHandle<()>,
    sender: Sender,
}

impl CloudToDeviceSender {
    /// Opens TLS and AMQP to `host:port`, puts a service token signed with `policy_name`'s `key`
    /// (Base64, as in a connection string) for the hub, and attaches the sender link.
    pub async fn connect(
        host: &str,
        port: u16,
        tls: Arc<rustls::ClientConfig>,
        policy_name: &str,
        key: &str,
    ) -> anyhow::Result<CloudToDeviceSender> {
        let tcp = TcpStream::connect((host, port))
            .await
            .with_context(|| format!("cannot reach {host}:{port}"))?;
        tcp.set_nodelay(true)?;
        let server_name = match host.parse::<std::net::IpAddr>() {
            Ok(ip) => rustls::pki_types::ServerName::IpAddress(ip.into()),
            Err(_) => rustls::pki_types::ServerName::try_from(host.to_owned())?,
        };
        let tls = TlsConnector::from(tls)
            .connect(server_name, tcp)
            .await
            .context("TLS handshake")?;
        let mut connection = Connection::builder()
            .container_id(format!("twinhub-c2d-{}", std::process::id()))
            .hostname(host)
            .open_with_stream(tls)
            .await
            .context("AMQP open")?;
        let mut session = Session::begin(&mut connection).await.context("AMQP session")?;
        let expiry = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)?
            .as_secs()
            + TOKEN_SECONDS;
        let token = twinhub_core::sas::sign(host, key, Some(policy_name), expiry)
            .context("the policy key is not valid Base64")?;
        crate::event_hubs::put_token(&mut session, host, &token).await?;
        let sender = Sender::attach(&mut session, "twinhub-c2d-sender", DEVICEBOUND)
            .await
            .context("attach the sender link on /messages/devicebound")?;
        Ok(CloudToDeviceSender {
            connection,
            session,
            sender,
        })
    }

    /// Sends one message and waits for the hub's outcome: `Ok` once queued, otherwise an error naming the
    /// hub's condition and description (a [`Refused`] inside).
    pub async fn send(&mut self, message: &Outgoing) -> anyhow::Result<()> {
        let result = self.sender.send(message.message()).await;
        outcome_of(result)
    }

    /// Hands a message to the link (waiting for link credit only) and returns at once; the returned
    /// [`InFlight`] gives the outcome. Many can be in flight on the one link.
    pub async fn send_pipelined(&mut self, message: &Outgoing) -> anyhow::Result<InFlight> {
        let delivery = self
            .sender
            .send_batchable(message.message())
            .await
            .context("send on /messages/devicebound")?;
        Ok(InFlight(delivery))
    }

    pub async fn close(mut self) {
        let _ = self.sender.close().await;
        let _ = self.session.end().await;
        let _ = self.connection.close().await;
    }
}

/// Percent-encodes all but what `encodeURIComponent` leaves alone, as the Node service client encodes the
/// device id in `to`.
fn percent_encode(text: &str) -> String {
    text.bytes()
        .map(|byte| match byte {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'!' | b'~' | b'*' | b'\'' | b'(' | b')' => {
                (byte as char).to_string()
            }
            _ => format!("%{byte:02X}"),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_message_names_its_device_in_to_and_carries_ack_and_properties() {
        let message = Outgoing {
            device_id: "dev 1@x".into(),
            body: b"hello".to_vec(),
            message_id: Some("m1".into()),
            correlation_id: Some("c1".into()),
            ack: Some(Ack::Full),
            properties: vec![("color".into(), "blue".into())],
        }
        .message();
        let properties = message.properties.as_ref().unwrap();
        assert_eq!(
            properties.to.as_deref(),
            Some("/devices/dev%201%40x/messages/devicebound")
        );
        assert_eq!(properties.message_id, Some(MessageId::String("m1".into())));
        assert_eq!(properties.correlation_id, Some(MessageId::String("c1".into())));
        let application = &message.application_properties.as_ref().unwrap().0;
        assert_eq!(application.get("iothub-ack"), Some(&SimpleValue::String("full".into())));
        assert_eq!(application.get("color"), Some(&SimpleValue::String("blue".into())));
        let Body::Data(batch) = &message.body else {
            panic!("a data body")
        };
        assert_eq!(batch.iter().next().unwrap().0.as_ref(), b"hello");
    }

    #[test]
    fn a_rejection_reads_as_its_condition_and_description() {
        let refused = Refused::of(Some(AmqpErrorBody::new(
            ErrorCondition::AmqpError(fe2o3_amqp::types::definitions::AmqpError::ResourceLimitExceeded),
            Some("the queue is full".into()),
            None,
        )));
        assert!(refused.is_queue_full());
        assert_eq!(
            refused.to_string(),
            "the hub refused the message: amqp:resource-limit-exceeded: the queue is full"
        );
    }
}
