//! `GET /twinhub/stream` (ServiceConnect): the hub's live change stream as server-sent events. Beyond IoT
//! Hub (which has no such endpoint): what a console or a back end watching the fleet needs without
//! polling.
//!
//! Events: `ready` first (`{"lastEventId":n}`: the reader is subscribed from there), then `twin` (a
//! device or module twin as it is after a change: twin, connection state, identity), `deleted`, and
//! `telemetry` (a device-to-cloud message, once durable), each with its number as the SSE `id`. A reader
//! that reconnects with `Last-Event-ID` first gets what it missed; `resync` tells a reader that events
//! were lost (it fell more than `STREAM_BUFFER_EVENTS` behind, or what it missed is no longer kept) and
//! that it must read the state afresh. A comment line every 15 s keeps idle connections open.

use super::error::RestError;
use super::RestState;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::sse::{Event, KeepAlive, Sse};
use futures_util::stream::{self, Stream};
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::broadcast::error::RecvError;
use twinhub_core::policy::Permission;
use twinhub_hub::change_stream::StreamEvent;

const KEEP_ALIVE: Duration = Duration::from_secs(15);

fn event_of(event: &StreamEvent) -> Event {
    Event::default()
        .id(event.id.to_string())
        .event(event.kind)
        .data(event.data.as_str())
}

fn resync() -> Event {
    Event::default().event("resync").data("{}")
}

pub async fn stream(
    State(state): State<RestState>,
    headers: HeaderMap,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, RestError> {
    state.auth.authorize(&headers, Permission::ServiceConnect)?;
    let after = match headers.get("last-event-id").and_then(|value| value.to_str().ok()) {
        None => None,
        Some(text) => Some(
            text.trim()
                .parse::<u64>()
                .map_err(|_| RestError::bad_request(format!("Last-Event-ID must be an event number, not '{text}'")))?,
        ),
    };
    let changes = state.hub.change_stream();
    let subscription = changes.subscribe(after);
    let ready = Event::default()
        .event("ready")
        .data(serde_json::json!({ "lastEventId": changes.last_id() }).to_string());
    let mut first = vec![ready];
    if subscription.resync {
        first.push(resync());
    }
    // What it missed; live events it already got that way are skipped by number.
    let mut seen = after.unwrap_or(0);
    for event in &subscription.missed {
        first.push(event_of(event));
        seen = event.id;
    }
    let head = stream::iter(first.into_iter().map(Ok));
    let live = stream::unfold((subscription.live, seen), |(mut live, mut seen)| async move {
        loop {
            match live.recv().await {
                Ok(event) if event.id <= seen => continue,
                Ok(event) => {
                    seen = event.id;
                    let event: Arc<StreamEvent> = event;
                    return Some((Ok(event_of(&event)), (live, seen)));
                }
                Err(RecvError::Lagged(_)) => return Some((Ok(resync()), (live, seen))),
                Err(RecvError::Closed) => return None,
            }
        }
    });
    use futures_util::StreamExt;
    Ok(Sse::new(head.chain(live)).keep_alive(KeepAlive::new().interval(KEEP_ALIVE)))
}
