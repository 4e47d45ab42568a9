//! The MQTT 3.1.1 packet codec, behind one small module: the rest of `mqtt/` names packets through here,
//! so the codec crate (rmqtt-codec) can be swapped without touching the session layer.

use bytes::{Bytes, BytesMut};
use bytestring::ByteString;
use std::num::NonZeroU16;
use std::time::Duration;
use tokio::io::{AsyncWrite, AsyncWriteExt};
use tokio_util::codec::Encoder;

pub use rmqtt_codec::error::DecodeError;
pub use rmqtt_codec::types::Publish;
pub use rmqtt_codec::v3::{Codec, Connect, ConnectAck, ConnectAckReason, Packet, QoS, SubscribeReturnCode};

pub fn connect_ack(return_code: ConnectAckReason, session_present: bool) -> Packet {
    Packet::ConnectAck(ConnectAck {
        return_code,
        session_present,
    })
}

pub fn publish(topic: String, payload: Bytes, qos: QoS, packet_id: Option<NonZeroU16>) -> Packet {
    Packet::Publish(Box::new(Publish {
        dup: false,
        retain: false,
        qos,
        topic: ByteString::from(topic),
        packet_id,
        payload,
        properties: None,
    }))
}

/// The hub never sends or grants QoS 2.
pub fn granted(requested: QoS) -> QoS {
    match requested {
        QoS::AtMostOnce => QoS::AtMostOnce,
        _ => QoS::AtLeastOnce,
    }
}

/// How long one write to a client may take before the client is considered gone (it stopped reading).
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(30);

/// Outgoing packets, encoded into one buffer and written together: the replies to a burst of requests
/// leave in one TLS record and one system call instead of one each.
pub struct PacketWriter<W> {
    io: W,
    buffer: BytesMut,
    codec: Codec,
}

impl<W: AsyncWrite + Unpin> PacketWriter<W> {
    pub fn new(io: W) -> Self {
        PacketWriter {
            io,
            buffer: BytesMut::new(),
            codec: Codec::default(),
        }
    }

    pub fn push(&mut self, packet: Packet) -> std::io::Result<()> {
        self.codec
            .encode(packet, &mut self.buffer)
            .map_err(|error| std::io::Error::other(error.to_string()))
    }

    pub async fn flush(&mut self) -> std::io::Result<()> {
        if self.buffer.is_empty() {
            return Ok(());
        }
        let write = async {
            self.io.write_all(&self.buffer).await?;
            self.io.flush().await
        };
        tokio::time::timeout(WRITE_TIMEOUT, write)
            .await
            .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "the client stopped reading"))??;
        self.buffer.clear();
        // A burst can grow the buffer; do not keep a large one for an idle connection.
        if self.buffer.capacity() > 64 * 1024 {
            self.buffer = BytesMut::new();
        }
        Ok(())
    }

    /// Sends what is buffered and closes the write side (TLS close_notify), within the write timeout.
    pub async fn close(mut self) {
        let _ = self.flush().await;
        let _ = tokio::time::timeout(WRITE_TIMEOUT, self.io.shutdown()).await;
    }
}
