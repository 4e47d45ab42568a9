//! Commit notifications: a connection of its own that LISTENs on the store's channel, so a node learns
//! within a round trip that another node committed, backed by a poll of `hub_seq` (a notification sent
//! while this connection was down is lost; the poll finds the commit anyway).

use super::connection::PostgresError;
use super::schema::{self, quote_identifier};
use futures_util::StreamExt;
use std::time::Duration;
use tokio::sync::watch;
use tokio_postgres::{AsyncMessage, Config, NoTls};

/// How often the last commit is read when no notification came.
const POLL: Duration = Duration::from_millis(500);

/// How long to wait before connecting again after the connection failed.
const RECONNECT: Duration = Duration::from_secs(1);

/// Follows commits until every receiver of `seen` is gone.
pub(super) async fn follow(config: Config, schema: Option<String>, channel: String, seen: watch::Sender<u64>) {
    loop {
        if let Err(error) = listen(&config, schema.as_deref(), &channel, &seen).await {
            tracing::warn!(%error, "the PostgreSQL commit listener lost its connection; connecting again");
        }
        if seen.is_closed() {
            return;
        }
        tokio::time::sleep(RECONNECT).await;
    }
}

async fn listen(
    config: &Config,
    schema: Option<&str>,
    channel: &str,
    seen: &watch::Sender<u64>,
) -> Result<(), PostgresError> {
    let (client, mut connection) = config.connect(NoTls).await?;
    let (notified, mut notifications) = tokio::sync::mpsc::unbounded_channel();
    // The connection's messages (notifications among them) come only by polling it.
    let driver = tokio::spawn(async move {
        let mut messages = futures_util::stream::poll_fn(move |cx| connection.poll_message(cx));
        while let Some(message) = messages.next().await {
            match message {
                Ok(AsyncMessage::Notification(notification)) => {
                    let _ = notified.send(notification.payload().parse::<u64>().ok());
                }
                Ok(_) => {}
                Err(error) => return Err(error),
            }
        }
        Ok(())
    });
    if let Some(schema) = schema {
        client
            .batch_execute(&format!("SET search_path TO {}", quote_identifier(schema)))
            .await?;
    }
    client
        .batch_execute(&format!("LISTEN {}", quote_identifier(channel)))
        .await?;
    let mut poll = tokio::time::interval(POLL);
    poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let result = loop {
        tokio::select! {
            notification = notifications.recv() => match notification {
                Some(Some(seq)) => {
                    seen.send_if_modified(|last| raise(last, seq));
                }
                Some(None) => {}
                None => break Err(PostgresError::Unusable("the connection ended".into())),
            },
            _ = poll.tick() => {
                match client.query_one(schema::SELECT_SEQ, &[]).await {
                    Ok(row) => {
                        let seq: i64 = row.try_get(0)?;
                        seen.send_if_modified(|last| raise(last, u64::try_from(seq).unwrap_or(0)));
                    }
                    Err(error) => break Err(error.into()),
                }
            }
            _ = seen.closed() => break Ok(()),
        }
    };
    driver.abort();
    result
}

fn raise(last: &mut u64, seq: u64) -> bool {
    if seq > *last {
        *last = seq;
        true
    } else {
        false
    }
}
