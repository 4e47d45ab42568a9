//! Direct methods across a cluster's nodes. A node whose device connection listens to methods serves
//! that endpoint's topic on the bus; a back end's call on any other node goes there by request/reply,
//! and the serving node calls the device through its own router. On one node (no bus) nothing here runs.
//!
//! The call and answer cross the bus as small JSON documents; the serving node gives the device the
//! caller's response timeout and no connect timeout of its own: the caller keeps asking, until its
//! connect timeout, while no node serves the endpoint.

use crate::device_router::{DeviceRouter, Endpoint};
use crate::HubError;
use serde_json::{json, Value};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio::time::Instant;
use twinhub_bus::{Bus, BusError, Incoming, Serving};
use twinhub_core::method::{MethodAnswer, MethodCall, MethodCallError};
use twinhub_core::DeviceId;

/// How often a caller asks again while no node serves the endpoint (within its connect timeout).
const ASK_AGAIN: Duration = Duration::from_millis(100);

/// How much longer than the device's response timeout a caller waits for the serving node.
const BUS_MARGIN: Duration = Duration::from_secs(1);

fn topic(endpoint: &Endpoint) -> String {
    format!("methods/{endpoint}")
}

fn encode_call(endpoint: &Endpoint, call: &MethodCall) -> Vec<u8> {
    json!({
        "deviceId": endpoint.device_id.as_str(),
        "moduleId": endpoint.module_id,
        "name": call.name,
        "payload": call.payload,
        "responseTimeoutMs": call.response_timeout.as_millis() as u64,
    })
    .to_string()
    .into_bytes()
}

fn decode_call(bytes: &[u8]) -> Option<(Endpoint, MethodCall)> {
    let value: Value = serde_json::from_slice(bytes).ok()?;
    let endpoint = Endpoint {
        device_id: DeviceId::new(value["deviceId"].as_str()?).ok()?,
        module_id: value["moduleId"].as_str().map(str::to_owned),
    };
    let call = MethodCall {
        name: value["name"].as_str()?.to_owned(),
        payload: value["payload"].as_str()?.to_owned(),
        response_timeout: Duration::from_millis(value["responseTimeoutMs"].as_u64()?),
        connect_timeout: Duration::ZERO,
    };
    Some((endpoint, call))
}

fn encode_answer(answer: &Result<MethodAnswer, HubError>) -> Vec<u8> {
    match answer {
        Ok(answer) => json!({"status": answer.status, "payload": answer.payload}),
        Err(HubError::DeviceNotOnline(_)) => json!({"error": "notOnline"}),
        Err(HubError::MethodTimeout(_)) => json!({"error": "timeout"}),
        Err(HubError::MethodCall(MethodCallError::AnswerTooLarge(size))) => {
            json!({"error": "answerTooLarge", "size": size})
        }
        Err(error) => json!({"error": "answerNotJson", "message": error.to_string()}),
    }
    .to_string()
    .into_bytes()
}

/// The serving node's answer; `None` when the device left it meanwhile (ask again).
fn decode_answer(bytes: &[u8], call: &MethodCall) -> Option<Result<MethodAnswer, HubError>> {
    let timeout = || HubError::MethodTimeout(call.response_timeout.as_secs());
    let Ok(value) = serde_json::from_slice::<Value>(bytes) else {
        return Some(Err(HubError::Bus(
            "a node answered a method call with something else".into(),
        )));
    };
    Some(match value["error"].as_str() {
        None => match (value["status"].as_i64(), value["payload"].as_str()) {
            (Some(status), Some(payload)) => Ok(MethodAnswer {
                status: i32::try_from(status).unwrap_or(i32::MAX),
                payload: payload.to_owned(),
            }),
            _ => Err(HubError::Bus(
                "a node's method answer lacks its status or payload".into(),
            )),
        },
        Some("notOnline") => return None,
        Some("timeout") => Err(timeout()),
        Some("answerTooLarge") => Err(HubError::MethodCall(MethodCallError::AnswerTooLarge(
            value["size"].as_u64().unwrap_or(0) as usize,
        ))),
        Some(_) => Err(HubError::MethodCall(MethodCallError::AnswerNotJson(
            value["message"].as_str().unwrap_or_default().to_owned(),
        ))),
    })
}

/// A back end's call, wherever the device is connected: here (through this node's router), or on the
/// node that serves it on the bus. `DeviceNotOnline` once the connect timeout passed with neither.
pub(crate) async fn call(
    bus: &dyn Bus,
    router: &DeviceRouter,
    endpoint: &Endpoint,
    call: MethodCall,
) -> Result<MethodAnswer, HubError> {
    let connect_deadline = Instant::now() + call.connect_timeout;
    let request = encode_call(endpoint, &call);
    loop {
        if router.listens_to_methods(endpoint) {
            return router.call(endpoint, call).await;
        }
        match bus
            .request(&topic(endpoint), request.clone(), call.response_timeout + BUS_MARGIN)
            .await
        {
            Ok(bytes) => {
                if let Some(answer) = decode_answer(&bytes, &call) {
                    return answer;
                }
            }
            Err(BusError::NoResponders) => {}
            Err(BusError::TimedOut(_)) => return Err(HubError::MethodTimeout(call.response_timeout.as_secs())),
            Err(error) => return Err(HubError::Bus(error.to_string())),
        }
        let now = Instant::now();
        if now >= connect_deadline {
            return Err(HubError::DeviceNotOnline(endpoint.to_string()));
        }
        tokio::time::sleep(ASK_AGAIN.min(connect_deadline - now)).await;
    }
}

/// Serves on the bus every endpoint this node's router has a method-listening connection for, and
/// answers the calls other nodes send, until the hub is gone.
pub(crate) async fn serve(
    bus: Arc<dyn Bus>,
    router: Arc<DeviceRouter>,
    mut listening: mpsc::UnboundedReceiver<(Endpoint, bool)>,
) {
    let (requests, mut incoming) = mpsc::channel::<Incoming>(1024);
    let mut serving: HashMap<Endpoint, Serving> = HashMap::new();
    loop {
        tokio::select! {
            change = listening.recv() => {
                let Some((endpoint, listens)) = change else { return };
                if !listens {
                    serving.remove(&endpoint);
                } else if let std::collections::hash_map::Entry::Vacant(slot) = serving.entry(endpoint) {
                    match bus.serve(&topic(slot.key()), requests.clone()).await {
                        Ok(handle) => {
                            slot.insert(handle);
                        }
                        Err(error) => {
                            let endpoint = slot.key();
                            tracing::warn!(%error, %endpoint, "cannot serve the device's methods to other nodes");
                        }
                    }
                }
            }
            Some(request) = incoming.recv() => {
                let (bus, router) = (Arc::clone(&bus), Arc::clone(&router));
                tokio::spawn(async move { answer(&*bus, &router, request).await });
            }
        }
    }
}

async fn answer(bus: &dyn Bus, router: &DeviceRouter, request: Incoming) {
    let Some(reply_to) = request.reply_to else { return };
    let answer = match decode_call(&request.payload) {
        Some((endpoint, call)) => router.call(&endpoint, call).await,
        None => Err(HubError::Bus("a method call from another node does not decode".into())),
    };
    if let Err(error) = bus.reply(reply_to, encode_answer(&answer)).await {
        tracing::warn!(%error, "a method answer could not be sent back to the calling node");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn calls_and_answers_cross_the_bus_unchanged() {
        let endpoint = Endpoint {
            device_id: DeviceId::new("d.1*").expect("valid id"),
            module_id: Some("m".into()),
        };
        let call = MethodCall {
            name: "reboot".into(),
            payload: r#"{"delay":1}"#.into(),
            response_timeout: Duration::from_secs(30),
            connect_timeout: Duration::from_secs(10),
        };
        let (back, decoded) = decode_call(&encode_call(&endpoint, &call)).expect("decodes");
        assert_eq!(back, endpoint);
        assert_eq!(
            (decoded.name.as_str(), decoded.payload.as_str()),
            ("reboot", r#"{"delay":1}"#)
        );
        assert_eq!(decoded.response_timeout, call.response_timeout);
        assert_eq!(decoded.connect_timeout, Duration::ZERO);

        let answer = MethodAnswer {
            status: 201,
            payload: "[1]".into(),
        };
        let back = decode_answer(&encode_answer(&Ok(answer.clone())), &call);
        assert!(matches!(back, Some(Ok(ref a)) if *a == answer));
        let gone = encode_answer(&Err(HubError::DeviceNotOnline("d".into())));
        assert!(decode_answer(&gone, &call).is_none(), "the device left: ask again");
        let late = encode_answer(&Err(HubError::MethodTimeout(30)));
        assert!(matches!(
            decode_answer(&late, &call),
            Some(Err(HubError::MethodTimeout(30)))
        ));
        assert!(matches!(decode_answer(b"garbage", &call), Some(Err(HubError::Bus(_)))));
    }
}
