//! Cloud-to-device messages over AMQP. Ref: amqp notes §3.2, §4.1, §4.2.
//!
//! - A back end's sender link `/messages/devicebound` (Python names it `amqps://<host>/messages/devicebound`):
//!   each message names its device in `to` (`/devices/{id}/messages/devicebound`, the id percent-encoded by
//!   Node and not by Python); it is settled `accepted` once queued durably, `rejected` with IoT Hub's
//!   condition when refused (`amqp:not-found`, `amqp:resource-limit-exceeded` for a full queue, ...).
//! - A back end's receiver link `/messages/serviceBound/feedback`: batches of feedback records, a JSON
//!   array per message (`application/vnd.microsoft.iothub.feedback.json`).
//! - A device's receiver link `/devices/{id}/messages/devicebound`: its queue's messages, sent unsettled;
//!   the device's outcome settles them: accepted completes, rejected rejects, released or modified
//!   abandons.

use super::cbs::Authorizations;
use super::AmqpService;
use fe2o3_amqp::link::{Receiver, Sender};
use fe2o3_amqp::types::messaging::annotations::OwnedKey;
use fe2o3_amqp::types::messaging::{
    ApplicationProperties, Body, Data, Message, MessageAnnotations, MessageId, Outcome, Properties,
};
use fe2o3_amqp::types::primitives::{Binary, SimpleValue, Symbol, Value};
use fe2o3_amqp::Sendable;
use futures_util::future::BoxFuture;
use futures_util::StreamExt;
use std::sync::Arc;
use tokio::sync::Mutex;
use twinhub_core::c2d::{Ack, OutgoingMessage, QueuedMessage, Settlement};
use twinhub_core::{DeviceId, Timestamp};
use twinhub_hub::{Endpoint, HubError, Interests};

/// Feedback records per message on the feedback link.
const FEEDBACK_BATCH_MAX: usize = 64;
const FEEDBACK_CONTENT_TYPE: &str = "application/vnd.microsoft.iothub.feedback.json";

/// Serves a back end's `/messages/devicebound` sender link until it ends: each message is accepted once
/// queued durably (`settle_when_done`), while the connection's service token holds.
pub(crate) async fn receive_sends(
    service: Arc<AmqpService>,
    receiver: Receiver,
    authorizations: Arc<Mutex<Authorizations>>,
) {
    super::settle_when_done::serve(receiver, authorizations, Authorizations::covers_service, |message| {
        let hub = Arc::clone(&service.hub);
        let parsed = outgoing_of(message);
        Box::pin(async move {
            let (device_id, message) = parsed?;
            hub.send_cloud_to_device(device_id, message).await
        })
    })
    .await
}

fn text_of_id(id: &MessageId) -> String {
    match id {
        MessageId::String(text) => text.clone(),
        MessageId::Ulong(number) => number.to_string(),
        MessageId::Uuid(uuid) => twinhub_core::c2d::uuid_text(uuid.as_inner()),
        MessageId::Binary(bytes) => String::from_utf8_lossy(bytes).into_owned(),
    }
}

/// The device a back end's message is for (from `to`) and the message as the queue keeps it.
fn outgoing_of(message: &Message<Body<Value>>) -> Result<(DeviceId, OutgoingMessage), HubError> {
    let invalid = |text: &str| HubError::InvalidArgument(text.to_owned());
    let properties = message.properties.as_ref();
    let to = properties
        .and_then(|p| p.to.as_deref())
        .ok_or_else(|| invalid("a cloud-to-device message needs `to`: /devices/{id}/messages/devicebound"))?;
    let device = to
        .strip_prefix("/devices/")
        .and_then(|rest| {
            let (device, tail) = rest.split_once('/')?;
            tail.trim_end_matches('/')
                .eq_ignore_ascii_case("messages/devicebound")
                .then_some(device)
        })
        .ok_or_else(|| invalid("`to` must be /devices/{id}/messages/devicebound"))?;
    let device = percent_encoding::percent_decode_str(device)
        .decode_utf8()
        .map_err(|_| invalid("the device id in `to` is not valid percent-encoded UTF-8"))?;
    let device_id = DeviceId::new(&device).map_err(|error| invalid(&error.to_string()))?;
    let mut outgoing = OutgoingMessage {
        body: super::twin::body_bytes(message),
        ..OutgoingMessage::default()
    };
    if let Some(properties) = properties {
        outgoing.message_id = properties.message_id.as_ref().map(text_of_id);
        outgoing.correlation_id = properties.correlation_id.as_ref().map(text_of_id);
        outgoing.user_id = properties
            .user_id
            .as_ref()
            .map(|bytes| String::from_utf8_lossy(bytes).into_owned());
        outgoing.content_type = properties.content_type.as_ref().map(|s| s.as_str().to_owned());
        outgoing.content_encoding = properties.content_encoding.as_ref().map(|s| s.as_str().to_owned());
        outgoing.expiry = properties
            .absolute_expiry_time
            .as_ref()
            .map(|time| Timestamp(time.milliseconds().saturating_mul(1_000_000)));
    }
    if let Some(application) = message.application_properties.as_ref() {
        for (name, value) in application.0.iter() {
            let text = match value {
                SimpleValue::String(text) => text.clone(),
                SimpleValue::Symbol(symbol) => symbol.as_str().to_owned(),
                SimpleValue::Bool(b) => b.to_string(),
                SimpleValue::Int(n) => n.to_string(),
                SimpleValue::Long(n) => n.to_string(),
                SimpleValue::Uint(n) => n.to_string(),
                SimpleValue::Ulong(n) => n.to_string(),
                SimpleValue::Double(n) => n.0.to_string(),
                other => format!("{other:?}"),
            };
            if name == "iothub-ack" {
                outgoing.ack =
                    Ack::parse(&text).ok_or_else(|| invalid("iothub-ack must be none, positive, negative or full"))?;
            } else {
                outgoing.properties.push((name.clone(), text));
            }
        }
    }
    Ok((device_id, outgoing))
}

/// A queued message as a device reads it: a data body, its properties, `iothub-ack` and the other
/// application properties, and the annotations IoT Hub adds (enqueued time, delivery count, sequence
/// number, lock token).
fn device_message(device_id: &DeviceId, queued: &QueuedMessage) -> Message<Body<Value>> {
    let message = &queued.message;
    let millis = |time: Timestamp| fe2o3_amqp::types::primitives::Timestamp::from_milliseconds(time.0 / 1_000_000);
    let properties = Properties {
        message_id: message.message_id.clone().map(MessageId::String),
        correlation_id: message.correlation_id.clone().map(MessageId::String),
        user_id: message.user_id.clone().map(|user| Binary::from(user.into_bytes())),
        to: Some(format!("/devices/{device_id}/messages/devicebound")),
        content_type: message.content_type.clone().map(Symbol::from),
        content_encoding: message.content_encoding.clone().map(Symbol::from),
        absolute_expiry_time: Some(millis(queued.expiry)),
        creation_time: Some(millis(queued.enqueued_time)),
        ..Properties::default()
    };
    let ack = match message.ack {
        Ack::None => "none",
        Ack::Positive => "positive",
        Ack::Negative => "negative",
        Ack::Full => "full",
    };
    let mut application = ApplicationProperties::builder().insert("iothub-ack", SimpleValue::String(ack.into()));
    for (name, value) in &message.properties {
        application = application.insert(name.as_str(), SimpleValue::String(value.clone()));
    }
    let mut annotations = MessageAnnotations::builder()
        .insert(
            OwnedKey::Symbol(Symbol::from("iothub-enqueuedtime")),
            Value::Timestamp(millis(queued.enqueued_time)),
        )
        .insert(
            OwnedKey::Symbol(Symbol::from("iothub-deliverycount")),
            Value::Int(i32::try_from(queued.delivery_count).unwrap_or(i32::MAX)),
        )
        .insert(
            OwnedKey::Symbol(Symbol::from("x-opt-sequence-number")),
            Value::Long(i64::try_from(queued.sequence_number).unwrap_or(i64::MAX)),
        );
    if let Some(bytes) = queued
        .lock
        .as_ref()
        .and_then(|lock| twinhub_core::c2d::uuid_bytes(&lock.token))
    {
        annotations = annotations.insert(
            OwnedKey::Symbol(Symbol::from("x-opt-lock-token")),
            Value::Uuid(bytes.into()),
        );
    }
    Message::builder()
        .properties(properties)
        .application_properties(application.build())
        .message_annotations(annotations.build())
        .body(Body::Data(vec![Data(Binary::from(message.body.clone()))].into()))
        .build()
}

/// Messages a device's link has unsettled at most: it may hold several before it settles the first, as
/// IoT Hub allows (the SDKs grant far more credit than this).
const DEVICE_IN_FLIGHT_MAX: usize = 16;

type Receiving = BoxFuture<'static, Result<Option<Box<QueuedMessage>>, HubError>>;
type Delivering = BoxFuture<'static, (String, Result<Outcome, fe2o3_amqp::link::SendError>)>;

enum DeviceStep {
    Received(Result<Option<Box<QueuedMessage>>, HubError>),
    Settled(String, Result<Outcome, fe2o3_amqp::link::SendError>),
    Ready,
    Detached,
}

/// Serves a device's `/devices/{id}/messages/devicebound` receiver link until it ends: messages in queue
/// order, sent unsettled, up to [`DEVICE_IN_FLIGHT_MAX`] at once, each settled by the device's outcome.
/// The link registers in the device router on its own, so it is told when the queue has something; when
/// it ends, the messages it holds go back to the queue.
pub(crate) async fn deliver(service: Arc<AmqpService>, mut sender: Sender, device_id: DeviceId) {
    let (_registration, mailbox) = service.hub.device_router().register(
        Endpoint::device(device_id.clone()),
        Interests {
            c2d: true,
            ..Interests::default()
        },
        1,
    );
    // One receive at a time, kept across turns: a receive dropped halfway would leave a message locked.
    let mut receiving: Option<Receiving> = None;
    let mut drained = false;
    // A signal while a receive is under way: its "nothing" may predate the message signalled.
    let mut signalled_during_receive = false;
    let mut delivering: futures_util::stream::FuturesUnordered<Delivering> = Default::default();
    let mut held: std::collections::HashSet<String> = Default::default();
    loop {
        if receiving.is_none() && !drained && delivering.len() < DEVICE_IN_FLIGHT_MAX {
            let hub = Arc::clone(&service.hub);
            let device_id = device_id.clone();
            receiving = Some(Box::pin(async move { hub.receive_cloud_to_device(device_id).await }));
        }
        let step = tokio::select! {
            received = async {
                match receiving.as_mut() {
                    Some(receive) => receive.await,
                    None => std::future::pending().await,
                }
            } => DeviceStep::Received(received),
            Some((lock_token, outcome)) = delivering.next(), if !delivering.is_empty() => {
                DeviceStep::Settled(lock_token, outcome)
            }
            () = mailbox.c2d_ready.notified() => DeviceStep::Ready,
            _ = sender.on_detach() => DeviceStep::Detached,
        };
        match step {
            DeviceStep::Received(received) => {
                receiving = None;
                let queued = match received {
                    Ok(Some(queued)) => queued,
                    Ok(None) => {
                        drained = !std::mem::take(&mut signalled_during_receive);
                        continue;
                    }
                    Err(error) => {
                        tracing::info!(%device_id, %error, "cloud-to-device delivery ended");
                        break;
                    }
                };
                let lock_token = queued.lock.as_ref().map(|lock| lock.token.clone()).unwrap_or_default();
                let sendable = Sendable::builder()
                    .message(device_message(&device_id, &queued))
                    .settled(false)
                    .build();
                match sender.send_batchable(sendable).await {
                    Ok(outcome) => {
                        held.insert(lock_token.clone());
                        delivering.push(Box::pin(async move { (lock_token, outcome.await) }));
                    }
                    Err(error) => {
                        tracing::debug!(%device_id, %error, "cloud-to-device send failed");
                        settle(&service, &device_id, lock_token, Settlement::Abandon).await;
                        break;
                    }
                }
            }
            DeviceStep::Settled(lock_token, outcome) => {
                held.remove(&lock_token);
                let settlement = match outcome {
                    Ok(Outcome::Accepted(_)) => Settlement::Complete,
                    Ok(Outcome::Rejected(_)) => Settlement::Reject,
                    // Released, modified, or no outcome because the link went: back to the queue.
                    _ => Settlement::Abandon,
                };
                settle(&service, &device_id, lock_token, settlement).await;
            }
            DeviceStep::Ready => {
                drained = false;
                signalled_during_receive = receiving.is_some();
            }
            DeviceStep::Detached => break,
        }
    }
    // What the device still held goes back to its queue at once, for its next link.
    for lock_token in held {
        settle(&service, &device_id, lock_token, Settlement::Abandon).await;
    }
    if let Some(receive) = receiving {
        // A receive under way may lock a message for this link: give it back too.
        if let Ok(Some(queued)) = receive.await {
            if let Some(lock) = queued.lock {
                settle(&service, &device_id, lock.token, Settlement::Abandon).await;
            }
        }
    }
}

async fn settle(service: &AmqpService, device_id: &DeviceId, lock_token: String, settlement: Settlement) {
    if let Err(error) = service
        .hub
        .settle_cloud_to_device(device_id.clone(), lock_token, settlement)
        .await
    {
        tracing::info!(%device_id, %error, ?settlement, "a cloud-to-device settlement was refused");
    }
}

/// Serves a back end's feedback receiver link until it ends: the records waiting, in batches, each
/// removed from the store once sent.
pub(crate) async fn serve_feedback(service: Arc<AmqpService>, mut sender: Sender) {
    loop {
        let batch = tokio::select! {
            batch = service.hub.feedback().take(FEEDBACK_BATCH_MAX) => batch,
            _ = sender.on_detach() => return,
        };
        let numbers: Vec<u64> = batch.iter().map(|(number, _)| *number).collect();
        let records: Vec<serde_json::Value> = batch.iter().map(|(_, record)| record.to_json()).collect();
        let body = serde_json::Value::Array(records).to_string().into_bytes();
        let message = Message::builder()
            .properties(Properties {
                message_id: Some(MessageId::String(twinhub_core::c2d::new_lock_token())),
                content_type: Some(Symbol::from(FEEDBACK_CONTENT_TYPE)),
                user_id: Some(Binary::from(service.hostname.clone().into_bytes())),
                ..Properties::default()
            })
            .message_annotations(
                MessageAnnotations::builder()
                    .insert(
                        OwnedKey::Symbol(Symbol::from("iothub-enqueuedtime")),
                        Value::Timestamp(fe2o3_amqp::types::primitives::Timestamp::from_milliseconds(
                            Timestamp::now().0 / 1_000_000,
                        )),
                    )
                    .build(),
            )
            .body(Body::<Value>::Data(vec![Data(Binary::from(body))].into()))
            .build();
        let sendable = Sendable::builder().message(message).settled(true).build();
        if let Err(error) = sender.send(sendable).await {
            tracing::debug!(%error, "feedback link ended; its records wait for the next receiver");
            service.hub.feedback().give_back(batch);
            return;
        }
        if let Err(error) = service.hub.feedback_received(numbers).await {
            tracing::warn!(%error, "sent feedback could not be removed from the store; it may come again");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sent(to: &str, ack: Option<&str>) -> Message<Body<Value>> {
        let mut application = ApplicationProperties::builder().insert("color", SimpleValue::String("blue".into()));
        if let Some(ack) = ack {
            application = application.insert("iothub-ack", SimpleValue::String(ack.into()));
        }
        Message::builder()
            .properties(Properties {
                to: Some(to.into()),
                message_id: Some(MessageId::Uuid([7u8; 16].into())),
                ..Properties::default()
            })
            .application_properties(application.build())
            .body(Body::Data(vec![Data(Binary::from(b"hi".to_vec()))].into()))
            .build()
    }

    #[test]
    fn a_back_ends_message_names_its_device_in_to() {
        let (device_id, message) = outgoing_of(&sent("/devices/dev%40x/messages/devicebound", Some("full"))).unwrap();
        assert_eq!(device_id.as_str(), "dev@x");
        assert_eq!(message.ack, Ack::Full);
        assert_eq!(message.body, b"hi");
        assert_eq!(message.properties, vec![("color".to_owned(), "blue".to_owned())]);
        assert_eq!(
            message.message_id.as_deref(),
            Some("07070707-0707-0707-0707-070707070707")
        );
        // Python does not encode the id.
        assert_eq!(
            outgoing_of(&sent("/devices/dev1/messages/devicebound", None))
                .unwrap()
                .0
                .as_str(),
            "dev1"
        );
        for bad in ["/devices/dev1/twin", "dev1", "/devices//messages/devicebound"] {
            assert!(outgoing_of(&sent(bad, None)).is_err(), "{bad}");
        }
        assert!(outgoing_of(&sent("/devices/d/messages/devicebound", Some("all"))).is_err());
    }
}
