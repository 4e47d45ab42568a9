//! The AMQP protocol header decides how a connection goes on: `AMQP 0 1 0 0` straight to Open (the Node
//! SDKs), `AMQP 3 1 0 0` through SASL first (uAMQP, Java). fe2o3-amqp's acceptors expect one kind each,
//! so the header is read here and handed back to the acceptor in front of the rest of the stream.

use std::pin::Pin;
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};

pub const HEADER_BYTES: usize = 8;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Protocol {
    Amqp,
    Sasl,
}

/// `AMQP` then the protocol id (0: AMQP, 3: SASL) and version 1.0.0.
pub fn protocol(header: &[u8; HEADER_BYTES]) -> Option<Protocol> {
    match header {
        [b'A', b'M', b'Q', b'P', 0, 1, 0, 0] => Some(Protocol::Amqp),
        [b'A', b'M', b'Q', b'P', 3, 1, 0, 0] => Some(Protocol::Sasl),
        _ => None,
    }
}

/// A stream whose first bytes were already read: they are read again before the rest.
#[derive(Debug)]
pub struct Replayed<Io> {
    prefix: [u8; HEADER_BYTES],
    replayed: usize,
    inner: Io,
}

/// Reads the header off `io`.
pub async fn read_header<Io: AsyncRead + Unpin>(mut io: Io) -> std::io::Result<([u8; HEADER_BYTES], Replayed<Io>)> {
    let mut prefix = [0u8; HEADER_BYTES];
    io.read_exact(&mut prefix).await?;
    Ok((
        prefix,
        Replayed {
            prefix,
            replayed: 0,
            inner: io,
        },
    ))
}

impl<Io: AsyncRead + Unpin> AsyncRead for Replayed<Io> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        if self.replayed < HEADER_BYTES {
            let left = &self.prefix[self.replayed..];
            let n = left.len().min(buf.remaining());
            buf.put_slice(&left[..n]);
            self.replayed += n;
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<Io: AsyncWrite + Unpin> AsyncWrite for Replayed<Io> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_of_both_kinds_and_nothing_else() {
        assert_eq!(protocol(b"AMQP\x00\x01\x00\x00"), Some(Protocol::Amqp));
        assert_eq!(protocol(b"AMQP\x03\x01\x00\x00"), Some(Protocol::Sasl));
        assert_eq!(protocol(b"AMQP\x02\x01\x00\x00"), None, "the TLS header: TLS is ours");
        assert_eq!(protocol(b"GET / HT"), None);
    }

    #[tokio::test]
    async fn the_header_is_read_again_before_the_rest() {
        let (mut client, server) = tokio::io::duplex(64);
        tokio::io::AsyncWriteExt::write_all(&mut client, b"AMQP\x00\x01\x00\x00rest")
            .await
            .unwrap();
        drop(client);
        let (header, mut replayed) = read_header(server).await.unwrap();
        assert_eq!(&header, b"AMQP\x00\x01\x00\x00");
        let mut all = Vec::new();
        replayed.read_to_end(&mut all).await.unwrap();
        assert_eq!(all, b"AMQP\x00\x01\x00\x00rest");
    }
}
