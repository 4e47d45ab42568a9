//! The device protocols over WebSockets on the HTTPS port, chosen by the subprotocol the client asks
//! for: `mqtt` (at `/$iothub/websocket`) and `AMQPWSB10` (at `/$iothub/websocket`, and at
//! `/$servicebus/websocket/` where uAMQP clients go). The WebSocket's binary frames become a byte
//! stream, and the same session layer as on the TLS ports runs over it.

use crate::amqp::AmqpService;
use crate::mqtt::MqttService;
use crate::server::PeerAddress;
use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Extension, Router};
use bytes::Bytes;
use futures_util::{future, SinkExt, Stream, StreamExt};
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_util::io::{CopyToBytes, SinkWriter, StreamReader};

#[derive(Clone)]
pub struct DeviceTransports {
    pub mqtt: Arc<MqttService>,
    pub amqp: Arc<AmqpService>,
}

pub fn router(transports: DeviceTransports) -> Router {
    Router::new()
        .route("/$iothub/websocket", get(upgrade))
        .route("/$iothub/websocket/", get(upgrade))
        .route("/$servicebus/websocket", get(upgrade))
        .route("/$servicebus/websocket/", get(upgrade))
        .with_state(transports)
}

const MQTT: &str = "mqtt";
const AMQP: &str = "AMQPWSB10";

fn requested_protocols(headers: &HeaderMap) -> impl Iterator<Item = &str> {
    headers
        .get_all(axum::http::header::SEC_WEBSOCKET_PROTOCOL)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .map(str::trim)
}

async fn upgrade(
    State(transports): State<DeviceTransports>,
    peer: Option<Extension<PeerAddress>>,
    headers: HeaderMap,
    upgrade: WebSocketUpgrade,
) -> Response {
    let peer = peer.map_or(SocketAddr::from(([0, 0, 0, 0], 0)), |Extension(PeerAddress(peer))| peer);
    let wants = |name: &str| requested_protocols(&headers).any(|protocol| protocol.eq_ignore_ascii_case(name));
    if wants(MQTT) {
        let mqtt = transports.mqtt;
        return upgrade
            .protocols([MQTT])
            .max_message_size(frame_bytes_max())
            .on_upgrade(move |socket| async move {
                let (reader, writer) = byte_stream(socket);
                mqtt.serve(reader, writer, peer, "mqtt-ws").await
            });
    }
    if wants(AMQP) {
        let amqp = transports.amqp;
        return upgrade
            .protocols([AMQP])
            .max_message_size(frame_bytes_max())
            .on_upgrade(move |socket| async move {
                let (reader, writer) = byte_stream(socket);
                amqp.serve(Joined(tokio::io::join(reader, writer)), peer, "amqp-ws")
                    .await
            });
    }
    (
        StatusCode::BAD_REQUEST,
        "this endpoint speaks the WebSocket subprotocols 'mqtt' and 'AMQPWSB10'",
    )
        .into_response()
}

/// A WebSocket message carries at most one MQTT packet (or an AMQP frame's worth) plus slack; the
/// protocols enforce their own limits on the stream.
fn frame_bytes_max() -> usize {
    crate::mqtt::MqttConfig::default().packet_bytes_max as usize + 1024
}

type Reader = StreamReader<Pin<Box<dyn Stream<Item = io::Result<Bytes>> + Send>>, Bytes>;
type Writer = SinkWriter<CopyToBytes<Pin<Box<dyn futures_util::Sink<Bytes, Error = io::Error> + Send>>>>;

/// Binary frames as a byte stream; a close frame ends it; text frames are not the protocol.
fn byte_stream(socket: WebSocket) -> (Reader, Writer) {
    let (sink, stream) = socket.split();
    let bytes = stream
        .take_while(|message| future::ready(!matches!(message, Ok(Message::Close(_)))))
        .filter_map(|message| {
            future::ready(match message {
                Ok(Message::Binary(bytes)) => Some(Ok::<Bytes, io::Error>(bytes)),
                Ok(Message::Text(_)) => Some(Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    "device protocols over WebSockets use binary frames",
                ))),
                Ok(_) => None,
                Err(error) => Some(Err(io::Error::other(error))),
            })
        });
    let stream: Pin<Box<dyn Stream<Item = io::Result<Bytes>> + Send>> = Box::pin(bytes);
    let frames = sink
        .sink_map_err(io::Error::other)
        .with(|bytes: Bytes| future::ready(Ok::<Message, io::Error>(Message::Binary(bytes))));
    let frames: Pin<Box<dyn futures_util::Sink<Bytes, Error = io::Error> + Send>> = Box::pin(frames);
    (StreamReader::new(stream), SinkWriter::new(CopyToBytes::new(frames)))
}

/// The joined halves as one stream, with the `Debug` the AMQP acceptor asks for.
struct Joined(tokio::io::Join<Reader, Writer>);

impl std::fmt::Debug for Joined {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("WebSocket")
    }
}

impl AsyncRead for Joined {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl AsyncWrite for Joined {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }
}
