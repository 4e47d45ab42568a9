//! `/$iothub/websocket` on the HTTPS port: the device protocols over WebSockets, chosen by the
//! subprotocol the client asks for (`mqtt`; AMQP's `AMQPWSB10` comes with AMQP). The WebSocket's binary
//! frames become a byte stream, and the same session layer as on the TLS port runs over it.

use crate::mqtt::MqttService;
use crate::server::PeerAddress;
use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Extension, Router};
use bytes::Bytes;
use futures_util::{future, SinkExt, StreamExt};
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use tokio_util::io::{CopyToBytes, SinkWriter, StreamReader};

pub fn router(mqtt: Arc<MqttService>) -> Router {
    Router::new().route("/$iothub/websocket", get(upgrade)).with_state(mqtt)
}

fn requested_protocols(headers: &HeaderMap) -> impl Iterator<Item = &str> {
    headers
        .get_all(axum::http::header::SEC_WEBSOCKET_PROTOCOL)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .map(str::trim)
}

async fn upgrade(
    State(mqtt): State<Arc<MqttService>>,
    peer: Option<Extension<PeerAddress>>,
    headers: HeaderMap,
    upgrade: WebSocketUpgrade,
) -> Response {
    let peer = peer.map_or(SocketAddr::from(([0, 0, 0, 0], 0)), |Extension(PeerAddress(peer))| peer);
    if !requested_protocols(&headers).any(|protocol| protocol.eq_ignore_ascii_case("mqtt")) {
        return (
            StatusCode::BAD_REQUEST,
            "this endpoint speaks the WebSocket subprotocol 'mqtt'",
        )
            .into_response();
    }
    upgrade
        .protocols(["mqtt"])
        .max_message_size(mqtt_frame_bytes_max())
        .on_upgrade(move |socket| serve_mqtt(mqtt, socket, peer))
}

/// A WebSocket message carries at most one MQTT packet's worth of bytes plus slack; MQTT itself enforces
/// its packet limit on the stream.
fn mqtt_frame_bytes_max() -> usize {
    crate::mqtt::MqttConfig::default().packet_bytes_max as usize + 1024
}

async fn serve_mqtt(mqtt: Arc<MqttService>, socket: WebSocket, peer: SocketAddr) {
    let (sink, stream) = socket.split();
    // Binary frames are the byte stream; a close frame ends it; text frames are not MQTT.
    let bytes = stream
        .take_while(|message| future::ready(!matches!(message, Ok(Message::Close(_)))))
        .filter_map(|message| {
            future::ready(match message {
                Ok(Message::Binary(bytes)) => Some(Ok::<Bytes, io::Error>(bytes)),
                Ok(Message::Text(_)) => Some(Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    "MQTT over WebSockets uses binary frames",
                ))),
                Ok(_) => None,
                Err(error) => Some(Err(io::Error::other(error))),
            })
        });
    let reader = StreamReader::new(Box::pin(bytes));
    let frames = sink
        .sink_map_err(io::Error::other)
        .with(|bytes: Bytes| future::ready(Ok::<Message, io::Error>(Message::Binary(bytes))));
    let writer = SinkWriter::new(CopyToBytes::new(Box::pin(frames)));
    mqtt.serve(reader, writer, peer, "mqtt-ws").await;
}
