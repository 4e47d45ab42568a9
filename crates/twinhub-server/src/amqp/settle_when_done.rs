//! A link whose every message asks the hub for something durable (a device's telemetry, a back end's
//! cloud-to-device send): many messages wait for the hub at once, and each is settled in order, `accepted`
//! once the hub is done, `rejected` with IoT Hub's condition for the hub's refusal ([`rejection`]: one
//! mapping for every such link). Past
//! [`IN_FLIGHT_MAX`] waiting the link is not read (back-pressure). Before each message the link's
//! authorization is checked again, and a link whose token expired is detached.

use super::cbs::Authorizations;
use fe2o3_amqp::link::delivery::Delivery;
use fe2o3_amqp::link::Receiver;
use fe2o3_amqp::types::definitions::{AmqpError, Error as AmqpErrorBody, ErrorCondition, LinkError};
use fe2o3_amqp::types::messaging::{Body, Message};
use fe2o3_amqp::types::primitives::Value;
use futures_util::future::BoxFuture;
use futures_util::stream::FuturesOrdered;
use futures_util::StreamExt;
use std::sync::Arc;
use tokio::sync::Mutex;
use twinhub_core::c2d::QueueError;
use twinhub_hub::HubError;

/// The rejected outcome's error for a hub refusal, in IoT Hub's terms: too large
/// (`amqp:link:message-size-exceeded`), no such device (`amqp:not-found`), a full queue or a hub shutting
/// down (`amqp:resource-limit-exceeded`), a malformed message (`amqp:invalid-field`).
fn rejection(error: &HubError) -> AmqpErrorBody {
    let condition = match error {
        HubError::MessageTooLarge(_) | HubError::CloudToDevice(QueueError::TooLarge(_)) => {
            ErrorCondition::LinkError(LinkError::MessageSizeExceeded)
        }
        HubError::DeviceNotFound(_) => ErrorCondition::AmqpError(AmqpError::NotFound),
        HubError::CloudToDevice(QueueError::QueueFull) | HubError::ShuttingDown => {
            ErrorCondition::AmqpError(AmqpError::ResourceLimitExceeded)
        }
        HubError::CloudToDevice(_) | HubError::InvalidArgument(_) => ErrorCondition::AmqpError(AmqpError::InvalidField),
        _ => ErrorCondition::AmqpError(AmqpError::InternalError),
    };
    AmqpErrorBody::new(condition, Some(error.to_string()), None)
}

/// Messages of one link waiting for the hub at most.
pub const IN_FLIGHT_MAX: usize = 256;

type Pending = BoxFuture<'static, (Delivery<Body<Value>>, Result<(), HubError>)>;

enum Step {
    Received(Delivery<Body<Value>>),
    Done(Delivery<Body<Value>>, Result<(), HubError>),
    Ended,
}

/// Serves `receiver` until the client detaches it or the connection ends. `authorized` says whether the
/// connection's tokens still cover the link; `handle` starts the hub's work for one message.
pub(crate) async fn serve<A, H>(
    mut receiver: Receiver,
    authorizations: Arc<Mutex<Authorizations>>,
    authorized: A,
    mut handle: H,
) where
    A: Fn(&Authorizations) -> bool,
    H: FnMut(&Message<Body<Value>>) -> BoxFuture<'static, Result<(), HubError>>,
{
    let mut pending: FuturesOrdered<Pending> = FuturesOrdered::new();
    loop {
        let step = tokio::select! {
            received = receiver.recv::<Body<Value>>(), if pending.len() < IN_FLIGHT_MAX => match received {
                Ok(delivery) => Step::Received(delivery),
                Err(_) => Step::Ended,
            },
            Some((delivery, result)) = pending.next(), if !pending.is_empty() => Step::Done(delivery, result),
        };
        match step {
            Step::Ended => break,
            Step::Received(delivery) => {
                if !authorized(&*authorizations.lock().await) {
                    tracing::info!("a message after the link's token expired: detaching");
                    let error = AmqpErrorBody::new(
                        ErrorCondition::AmqpError(AmqpError::UnauthorizedAccess),
                        Some("the token expired".into()),
                        None,
                    );
                    let _ = receiver.close_with_error(error).await;
                    return;
                }
                let work = handle(delivery.message());
                pending.push_back(Box::pin(async move { (delivery, work.await) }));
            }
            Step::Done(delivery, Ok(())) => {
                if receiver.accept(&delivery).await.is_err() {
                    break;
                }
            }
            Step::Done(delivery, Err(error)) => {
                tracing::info!(%error, "message refused");
                if receiver.reject(&delivery, rejection(&error)).await.is_err() {
                    break;
                }
            }
        }
    }
    // Messages still waiting were never settled: the client sends them again.
}
