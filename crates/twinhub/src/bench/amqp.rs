//! The bench's AMQP device: TLS, AMQP open without SASL (as the Node SDK), a CBS put-token, then the
//! twin links, with reported patches pipelined as over MQTT so the two transports compare directly.

use super::mqtt::Endpoint;
use super::stats::{Latencies, Progress};
use anyhow::{bail, Context};
use fe2o3_amqp::connection::ConnectionHandle;
use fe2o3_amqp::link::{Receiver, Sender};
use fe2o3_amqp::session::SessionHandle;
use fe2o3_amqp::types::definitions::SenderSettleMode;
use fe2o3_amqp::types::messaging::annotations::OwnedKey;
use fe2o3_amqp::types::messaging::{Body, Message, MessageAnnotations, MessageId, Properties};
use fe2o3_amqp::types::primitives::{Binary, Symbol, Value};
use fe2o3_amqp::{Connection, Sendable, Session};
use std::collections::HashMap;
use std::time::Instant;

pub struct AmqpDevice {
    connection: ConnectionHandle<()>,
    session: SessionHandle<()>,
    requests: Sender,
    answers: Receiver,
}

fn annotation(message: &Message<Body<Value>>, key: &str) -> Option<Value> {
    message
        .message_annotations
        .as_ref()?
        .0
        .get(&OwnedKey::Symbol(Symbol::from(key)))
        .cloned()
}

impl AmqpDevice {
    pub async fn connect(
        endpoint: &Endpoint,
        index: usize,
        host: &str,
        device_id: &str,
        token: &str,
    ) -> anyhow::Result<Self> {
        let tls = endpoint.tls(index).await?;
        let mut connection = Connection::builder()
            .container_id(format!("bench-{index}"))
            .hostname(host)
            .open_with_stream(tls)
            .await
            .context("AMQP open")?;
        let mut session = Session::begin(&mut connection).await.context("AMQP session")?;
        crate::event_hubs::put_token(&mut session, &format!("{host}/devices/{device_id}"), token)
            .await
            .with_context(|| format!("{device_id}: CBS put-token"))?;
        let requests = Sender::builder()
            .name("twin-sender")
            .target(format!("/devices/{device_id}/twin"))
            .sender_settle_mode(SenderSettleMode::Settled)
            .attach(&mut session)
            .await?;
        let answers = Receiver::attach(&mut session, "twin-receiver", format!("/devices/{device_id}/twin")).await?;
        Ok(AmqpDevice {
            connection,
            session,
            requests,
            answers,
        })
    }

    /// Reported patches, `in_flight` at a time, until `until`; then the last answers. Returns the
    /// latencies and the last sequence acknowledged with 204.
    pub async fn reported(
        &mut self,
        index: usize,
        in_flight: usize,
        until: Instant,
        progress: &Progress,
    ) -> anyhow::Result<(Latencies, u64)> {
        let mut latencies = Latencies::default();
        let mut sent: HashMap<u64, Instant> = HashMap::with_capacity(in_flight);
        let mut next = 1u64;
        let mut last_ok = 0u64;
        for _ in 0..in_flight {
            self.send_patch(index, next).await?;
            sent.insert(next, Instant::now());
            next += 1;
        }
        while !sent.is_empty() {
            let answer = self.answers.recv::<Body<Value>>().await.context("twin answer")?;
            // Settling is also what gives the hub more credit on this link.
            self.answers.accept(&answer).await?;
            let message = answer.into_message();
            let Some(MessageId::String(correlation)) =
                message.properties.as_ref().and_then(|p| p.correlation_id.clone())
            else {
                continue;
            };
            let Ok(sequence) = correlation.parse::<u64>() else {
                continue;
            };
            let Some(started) = sent.remove(&sequence) else {
                continue;
            };
            if annotation(&message, "status") != Some(Value::Int(204)) {
                bail!("reported patch answered {:?}", annotation(&message, "status"));
            }
            latencies.record(started.elapsed());
            progress.add(1);
            last_ok = last_ok.max(sequence);
            if Instant::now() < until {
                self.send_patch(index, next).await?;
                sent.insert(next, Instant::now());
                next += 1;
            }
        }
        Ok((latencies, last_ok))
    }

    async fn send_patch(&mut self, index: usize, sequence: u64) -> anyhow::Result<()> {
        let message = Message::builder()
            .properties(Properties {
                correlation_id: Some(MessageId::String(sequence.to_string())),
                ..Properties::default()
            })
            .message_annotations(
                MessageAnnotations::builder()
                    .insert(
                        OwnedKey::Symbol(Symbol::from("operation")),
                        Value::String("PATCH".into()),
                    )
                    .insert(
                        OwnedKey::Symbol(Symbol::from("resource")),
                        Value::String("/properties/reported".into()),
                    )
                    .build(),
            )
            .data(Binary::from(
                format!(r#"{{"bench":{{"seq":{sequence},"device":{index}}}}}"#).into_bytes(),
            ))
            .build();
        self.requests
            .send(Sendable::builder().message(message).settled(true).build())
            .await
            .context("send a twin request")?;
        Ok(())
    }

    pub async fn close(mut self) {
        let _ = self.requests.close().await;
        let _ = self.answers.close().await;
        let _ = self.session.end().await;
        let _ = self.connection.close().await;
    }
}
