//! One connection per device across a cluster's nodes, as IoT Hub keeps it: a device that connects
//! through one node closes its older connection on any other (a half-open connection to a node it left,
//! a second process with the same identity). The node that took the connection announces it on the bus;
//! every other node hears it and lets its older connection of that client go. The announcement carries
//! the time the connection was taken, so a node closes only connections older than that: a device that
//! comes back at once keeps its newest connection, wherever it is.
//!
//! The commit log brings a second, slower signal: another node wrote the client's persistent session
//! (`follow.rs`). It carries no time, so it only drops a copy no connection holds.

use serde_json::{json, Value};
use std::sync::Arc;
use tokio::sync::{broadcast, mpsc};
use twinhub_bus::Bus;
use twinhub_core::Timestamp;

/// The bus topic every node serves.
const TOPIC: &str = "connections";

/// Another node holds a client now.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TakenElsewhere {
    /// The MQTT client id (`deviceId` or `deviceId/moduleId`).
    pub client_id: String,
    /// When the other node took the client's connection (its clock); `None`: a write of the client's
    /// session seen in the commit log, which closes no connection.
    pub at: Option<Timestamp>,
}

pub(crate) async fn announce(bus: &dyn Bus, node: u64, client_id: &str, at: Timestamp) {
    let payload = json!({"node": node, "client": client_id, "at": at.0})
        .to_string()
        .into_bytes();
    if let Err(error) = bus.announce(TOPIC, payload).await {
        tracing::warn!(%error, client_id, "could not tell the other nodes of a device's connection");
    }
}

fn decode(bytes: &[u8]) -> Option<(u64, TakenElsewhere)> {
    let value: Value = serde_json::from_slice(bytes).ok()?;
    Some((
        value["node"].as_u64()?,
        TakenElsewhere {
            client_id: value["client"].as_str()?.to_owned(),
            at: Some(Timestamp(value["at"].as_i64()?)),
        },
    ))
}

/// Hears the other nodes' announcements and passes them on to this node's transports.
pub(crate) async fn listen(bus: Arc<dyn Bus>, node: u64, taken: broadcast::Sender<TakenElsewhere>) {
    let (requests, mut incoming) = mpsc::channel(1024);
    let _serving = match bus.serve(TOPIC, requests).await {
        Ok(serving) => serving,
        Err(error) => {
            tracing::error!(%error, "cannot hear of devices connecting to other nodes: older connections there stay open");
            return;
        }
    };
    while let Some(message) = incoming.recv().await {
        match decode(&message.payload) {
            Some((from, announced)) if from != node => {
                let _ = taken.send(announced);
            }
            Some(_) => {}
            None => tracing::warn!("an unreadable connection announcement on the bus"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_announcement_reads_back_and_garbage_is_none() {
        let payload = json!({"node": 7, "client": "d.1/m", "at": 42}).to_string();
        assert_eq!(
            decode(payload.as_bytes()),
            Some((
                7,
                TakenElsewhere {
                    client_id: "d.1/m".into(),
                    at: Some(Timestamp(42))
                }
            ))
        );
        assert_eq!(decode(b"{}"), None);
        assert_eq!(decode(b"not json"), None);
    }
}
