//! The bus between the nodes of a cluster: "ask whichever node serves this topic" (the node that holds
//! a device's connection answers its direct method calls), and "tell every node" (a device connected
//! here: any older connection of it elsewhere closes). [`Bus`] is what the hub needs; [`NatsBus`]
//! is it on NATS, whose request/reply with "no responders" is exactly that, with no RPC of our own.
//!
//! Topics are the hub's own names (an endpoint such as a device id may hold any character IoT Hub
//! allows, `.` and `*` among them); on NATS each is a subject under the cluster's prefix with the name
//! hex-encoded, so no name can reach another's subject or a wildcard.

use std::time::Duration;
use tokio::sync::mpsc;

#[derive(Debug, thiserror::Error)]
pub enum BusError {
    #[error("the bus at {url} could not be reached: {reason}")]
    Connect { url: String, reason: String },
    /// No node serves the topic now.
    #[error("no node serves this now")]
    NoResponders,
    #[error("no answer within {0:?}")]
    TimedOut(Duration),
    #[error("the bus failed: {0}")]
    Failed(String),
}

/// A request a node received, and where its answer goes.
pub struct Incoming {
    pub payload: Vec<u8>,
    pub reply_to: Option<String>,
}

/// While held, this node serves its topic; dropping it stops.
pub struct Serving {
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Serving {
    fn drop(&mut self) {
        self.task.abort();
    }
}

#[async_trait::async_trait]
pub trait Bus: Send + Sync {
    /// Asks the node that serves `topic`; `NoResponders` at once when none does.
    async fn request(&self, topic: &str, payload: Vec<u8>, timeout: Duration) -> Result<Vec<u8>, BusError>;

    /// Serves `topic`: its requests arrive on `requests` until the returned handle is dropped.
    async fn serve(&self, topic: &str, requests: mpsc::Sender<Incoming>) -> Result<Serving, BusError>;

    /// Answers a request.
    async fn reply(&self, reply_to: String, payload: Vec<u8>) -> Result<(), BusError>;

    /// Tells every node that serves `topic` (each gets it, none answers).
    async fn announce(&self, topic: &str, payload: Vec<u8>) -> Result<(), BusError>;
}

/// The bus on NATS (core request/reply; JetStream is not needed for this).
pub struct NatsBus {
    client: async_nats::Client,
    /// `twinhub.<cluster>.`: clusters sharing a NATS server do not hear each other.
    prefix: String,
}

impl NatsBus {
    /// Connects to `url` (`nats://host:4222`) for the cluster named `cluster` (any text: it is encoded).
    pub async fn connect(url: &str, cluster: &str) -> Result<NatsBus, BusError> {
        let client = async_nats::ConnectOptions::new()
            .connection_timeout(Duration::from_secs(5))
            // Requests carry their own timeouts.
            .request_timeout(None)
            .connect(url)
            .await
            .map_err(|error| BusError::Connect {
                url: url.to_owned(),
                reason: error.to_string(),
            })?;
        Ok(NatsBus {
            client,
            prefix: format!("twinhub.{}.", hex(cluster)),
        })
    }

    fn subject(&self, topic: &str) -> String {
        format!("{}{}", self.prefix, hex(topic))
    }
}

/// Lower-case hex of the text's bytes: only `[0-9a-f]`, never a NATS separator or wildcard.
fn hex(text: &str) -> String {
    text.bytes().map(|byte| format!("{byte:02x}")).collect()
}

#[async_trait::async_trait]
impl Bus for NatsBus {
    async fn request(&self, topic: &str, payload: Vec<u8>, timeout: Duration) -> Result<Vec<u8>, BusError> {
        let request = self.client.request(self.subject(topic), payload.into());
        match tokio::time::timeout(timeout, request).await {
            Ok(Ok(message)) => Ok(message.payload.to_vec()),
            Ok(Err(error)) if error.kind() == async_nats::RequestErrorKind::NoResponders => Err(BusError::NoResponders),
            Ok(Err(error)) => Err(BusError::Failed(error.to_string())),
            Err(_) => Err(BusError::TimedOut(timeout)),
        }
    }

    async fn serve(&self, topic: &str, requests: mpsc::Sender<Incoming>) -> Result<Serving, BusError> {
        use futures_util::StreamExt;
        let mut subscriber = self
            .client
            .subscribe(self.subject(topic))
            .await
            .map_err(|error| BusError::Failed(error.to_string()))?;
        // The subscription reaches the server before anyone is told this node serves the topic.
        self.client
            .flush()
            .await
            .map_err(|error| BusError::Failed(error.to_string()))?;
        let task = tokio::spawn(async move {
            while let Some(message) = subscriber.next().await {
                let incoming = Incoming {
                    payload: message.payload.to_vec(),
                    reply_to: message.reply.map(|subject| subject.to_string()),
                };
                if requests.send(incoming).await.is_err() {
                    return;
                }
            }
        });
        Ok(Serving { task })
    }

    async fn reply(&self, reply_to: String, payload: Vec<u8>) -> Result<(), BusError> {
        self.client
            .publish(reply_to, payload.into())
            .await
            .map_err(|error| BusError::Failed(error.to_string()))
    }

    async fn announce(&self, topic: &str, payload: Vec<u8>) -> Result<(), BusError> {
        self.client
            .publish(self.subject(topic), payload.into())
            .await
            .map_err(|error| BusError::Failed(error.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::hex;

    #[test]
    fn topics_become_plain_subject_tokens() {
        assert_eq!(hex("d.1*>"), "642e312a3e");
        assert!(hex("any thing/ä").bytes().all(|b| b.is_ascii_hexdigit()));
    }
}
