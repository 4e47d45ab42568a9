//! Full-length performatives on the way out.
//!
//! fe2o3-amqp's encoder (serde_amqp) leaves out trailing null fields: our `open` goes out with 5 fields, an
//! `end` without error as `list0`. The AMQP spec allows that (Ref: AMQP 1.0 §1.4 "Composite Type
//! Representation"), but the Python Event Hubs client (azure-eventhub 5.x, its pure-Python `pyamqp`
//! transport) indexes performative fields by position and fails with `IndexError` on any shortened list, and
//! reads `list0` as a list8 whose count is the next byte. Ref: shared/protocol/eventhubs-endpoint.md, Traps 1-2.
//!
//! So every connection's writes go through [`FramePadding`], which splits the outgoing bytes into frames and
//! re-encodes each frame's performative with all the fields its descriptor defines, the missing ones written
//! as `null`, under a smallulong descriptor. Nothing else changes: protocol headers, empty frames, extended
//! frame headers and the frame body after the performative (a transfer's message) go out as they came.
//! Reads pass through untouched.
//!
//! Padding makes a frame a few bytes longer than fe2o3-amqp measured it: at most 14 nulls plus 3 bytes when
//! a list8 becomes a list32.

use std::fmt;
use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// The most bytes of the caller's buffer one `poll_write` takes: the rewritten output waiting for the inner
/// stream is at most this plus the padding of the frames that start in it.
const WRITE_CHUNK_BYTES_MAX: usize = 64 * 1024;
/// The longest performative that is rewritten (ours are far below: an attach with its source, target and
/// properties). A longer one goes out as it is rather than being held in memory whole.
const PERFORMATIVE_BYTES_MAX: usize = 1024 * 1024;
/// Ref: AMQP 1.0 §2.3.1: a frame header is 8 bytes, `size`, `doff` (in 4-byte words), `type`, `channel`.
const FRAME_HEADER_BYTES: usize = 8;
/// Ref: AMQP 1.0 §2.2: `AMQP` then protocol id and version; 8 bytes. A frame can never start with these
/// 4 bytes: read as a frame size, they are over a gigabyte.
const PROTOCOL_HEADER_PREFIX: &[u8; 4] = b"AMQP";
const PROTOCOL_HEADER_BYTES: usize = 8;

/// Ref: AMQP 1.0 §1.6 (encodings).
const DESCRIBED: u8 = 0x00;
const NULL: u8 = 0x40;
const SMALL_ULONG: u8 = 0x53;
const ULONG: u8 = 0x80;
const LIST0: u8 = 0x45;
const LIST8: u8 = 0xc0;
const LIST32: u8 = 0xd0;

/// How many fields the spec defines for a performative, by descriptor code.
fn field_count(descriptor: u64) -> Option<usize> {
    match descriptor {
        0x10 => Some(10), // open, Ref: AMQP 1.0 §2.7.1
        0x11 => Some(8),  // begin, §2.7.2
        0x12 => Some(14), // attach, §2.7.3
        0x13 => Some(11), // flow, §2.7.4
        0x14 => Some(11), // transfer, §2.7.5
        0x15 => Some(6),  // disposition, §2.7.6
        0x16 => Some(3),  // detach, §2.7.7
        0x17 => Some(1),  // end, §2.7.8
        0x18 => Some(1),  // close, §2.7.9
        0x40 => Some(1),  // sasl-mechanisms, §5.3.3.1
        0x41 => Some(3),  // sasl-init, §5.3.3.2
        0x42 => Some(1),  // sasl-challenge, §5.3.3.3
        0x43 => Some(1),  // sasl-response, §5.3.3.4
        0x44 => Some(2),  // sasl-outcome, §5.3.3.5
        _ => None,
    }
}

/// A byte stream whose outgoing AMQP frames carry full-length performatives.
pub struct FramePadding<Io> {
    inner: Io,
    rewriter: Rewriter,
    /// Rewritten bytes the inner stream has not taken yet; they go out before any more are accepted.
    output: Vec<u8>,
    output_written: usize,
}

impl<Io> FramePadding<Io> {
    pub fn new(inner: Io) -> Self {
        FramePadding {
            inner,
            rewriter: Rewriter::default(),
            output: Vec::new(),
            output_written: 0,
        }
    }
}

impl<Io: fmt::Debug> fmt::Debug for FramePadding<Io> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FramePadding")
            .field("inner", &self.inner)
            .field("rewriter", &self.rewriter)
            .field("output_waiting_bytes", &(self.output.len() - self.output_written))
            .finish()
    }
}

impl<Io: AsyncWrite + Unpin> FramePadding<Io> {
    /// Hands the rewritten bytes to the inner stream until none are left.
    fn poll_drain(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.output_written < self.output.len() {
            let written = ready!(Pin::new(&mut self.inner).poll_write(cx, &self.output[self.output_written..]))?;
            if written == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.output_written += written;
        }
        self.output.clear();
        self.output_written = 0;
        Poll::Ready(Ok(()))
    }
}

impl<Io: AsyncRead + Unpin> AsyncRead for FramePadding<Io> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<Io: AsyncWrite + Unpin> AsyncWrite for FramePadding<Io> {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        ready!(this.poll_drain(cx))?;
        if buf.is_empty() {
            return Poll::Ready(Ok(0));
        }
        let taken = buf.len().min(WRITE_CHUNK_BYTES_MAX);
        this.rewriter.feed(&buf[..taken], &mut this.output);
        // Start sending at once. Whatever the inner stream cannot take yet (or fails on) stays in `output`,
        // and the next write, flush or shutdown tries it again first.
        let _ = this.poll_drain(cx);
        Poll::Ready(Ok(taken))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_drain(cx))?;
        Pin::new(&mut this.inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_drain(cx))?;
        Pin::new(&mut this.inner).poll_shutdown(cx)
    }
}

/// The write side's parser, apart from any I/O: bytes in, rewritten bytes out, split anywhere.
#[derive(Debug, Default)]
struct Rewriter {
    state: State,
    /// The start of the protocol header or frame at the boundary, held until it can be decided on. Never
    /// longer than what the decision needs (see [`scan`]).
    pending: Vec<u8>,
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Between frames (or at the start of the stream).
    #[default]
    Boundary,
    /// Inside a frame whose remaining bytes go out as they are.
    Copy { remaining_bytes: usize },
    /// The stream stopped looking like AMQP frames, so frame boundaries are lost: everything goes out as it
    /// is. The peer will see the same broken stream it would have seen without us.
    Verbatim,
}

/// What the bytes at a boundary are, as far as the bytes so far tell.
#[derive(Debug, PartialEq, Eq)]
enum Scan {
    /// At least this many bytes (counted from the boundary) are needed to decide.
    Need(usize),
    /// A protocol header: 8 bytes, as they are.
    ProtocolHeader,
    /// A frame that is left as it is: its size in bytes.
    Unchanged { frame_bytes: usize },
    /// A frame whose performative may need rewriting; `pending` holds everything up to the end of it.
    Performative(Performative),
    /// Not a frame header: boundaries are lost.
    Malformed,
}

#[derive(Debug, PartialEq, Eq)]
struct Performative {
    frame_bytes: usize,
    /// Where the performative starts: after the frame header and any extended header.
    body_start: usize,
    descriptor: u64,
    /// Whether the descriptor was written as a smallulong already.
    small_descriptor: bool,
    /// The encoded fields, as a range of `pending`.
    fields: std::ops::Range<usize>,
    field_count: usize,
}

impl Rewriter {
    /// Takes all of `input`, appending what goes out to `output`.
    fn feed(&mut self, mut input: &[u8], output: &mut Vec<u8>) {
        while !input.is_empty() {
            match self.state {
                State::Verbatim => {
                    output.extend_from_slice(input);
                    return;
                }
                State::Copy { remaining_bytes } => {
                    let copied = remaining_bytes.min(input.len());
                    output.extend_from_slice(&input[..copied]);
                    input = &input[copied..];
                    self.state = match remaining_bytes - copied {
                        0 => State::Boundary,
                        remaining_bytes => State::Copy { remaining_bytes },
                    };
                }
                State::Boundary => match scan(&self.pending) {
                    Scan::Need(needed) if needed > self.pending.len() => {
                        let moved = (needed - self.pending.len()).min(input.len());
                        self.pending.extend_from_slice(&input[..moved]);
                        input = &input[moved..];
                    }
                    // `scan` asks for more bytes than it has, always; should it not, going on could loop.
                    Scan::Need(_) => self.emit(Scan::Malformed, output),
                    decided => self.emit(decided, output),
                },
            }
        }
        // The last bytes taken may complete a decision that needs no more input (a protocol header, an
        // empty frame): make it now rather than on the next write, so that they go out with this one.
        while self.state == State::Boundary && !self.pending.is_empty() {
            match scan(&self.pending) {
                Scan::Need(_) => break,
                decided => self.emit(decided, output),
            }
        }
    }

    /// Sends out what `pending` holds, decided on, and moves on to the bytes after it.
    fn emit(&mut self, decided: Scan, output: &mut Vec<u8>) {
        let held = self.pending.len();
        match decided {
            Scan::Need(_) => return,
            Scan::ProtocolHeader => output.extend_from_slice(&self.pending),
            Scan::Unchanged { frame_bytes } => {
                output.extend_from_slice(&self.pending);
                self.state = remaining(frame_bytes, held);
            }
            Scan::Performative(performative) => {
                if !rewrite(&self.pending, &performative, output) {
                    output.extend_from_slice(&self.pending);
                }
                self.state = remaining(performative.frame_bytes, held);
            }
            Scan::Malformed => {
                tracing::debug!("outgoing AMQP bytes are not a frame: sending the rest of the stream as it is");
                output.extend_from_slice(&self.pending);
                self.state = State::Verbatim;
            }
        }
        self.pending.clear();
    }
}

fn remaining(frame_bytes: usize, held: usize) -> State {
    match frame_bytes.saturating_sub(held) {
        0 => State::Boundary,
        remaining_bytes => State::Copy { remaining_bytes },
    }
}

/// Decides what the bytes at a boundary are, or how many are needed to. `Need` never asks for more than
/// the frame holds, nor for more than [`PERFORMATIVE_BYTES_MAX`] past the frame header.
fn scan(bytes: &[u8]) -> Scan {
    if bytes.len() < PROTOCOL_HEADER_PREFIX.len() {
        return Scan::Need(PROTOCOL_HEADER_PREFIX.len());
    }
    if &bytes[..PROTOCOL_HEADER_PREFIX.len()] == PROTOCOL_HEADER_PREFIX {
        return match bytes.len() < PROTOCOL_HEADER_BYTES {
            true => Scan::Need(PROTOCOL_HEADER_BYTES),
            false => Scan::ProtocolHeader,
        };
    }
    if bytes.len() < FRAME_HEADER_BYTES {
        return Scan::Need(FRAME_HEADER_BYTES);
    }
    // Ref: AMQP 1.0 §2.3.1: `size` counts the whole frame; `doff` is at least 2 (the 8-byte header).
    let frame_bytes = u32::from_be_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]) as usize;
    let body_start = bytes[4] as usize * 4;
    if body_start < FRAME_HEADER_BYTES || frame_bytes < body_start {
        return Scan::Malformed;
    }
    let unchanged = Scan::Unchanged { frame_bytes };
    // From here on, anything unexpected leaves the frame as it is: its size still says where the next one
    // starts.
    let performative_limit = frame_bytes.min(body_start.saturating_add(PERFORMATIVE_BYTES_MAX));
    let need = |needed: usize| match needed <= performative_limit {
        true => Scan::Need(needed),
        false => Scan::Unchanged { frame_bytes },
    };
    // An empty frame (a heartbeat): nothing to rewrite.
    if frame_bytes == body_start {
        return unchanged;
    }
    // Ref: AMQP 1.0 §1.2: a described type is 0x00, the descriptor, then the value.
    let Some(&constructor) = bytes.get(body_start) else {
        return need(body_start + 1);
    };
    if constructor != DESCRIBED {
        return unchanged;
    }
    let Some(&descriptor_code) = bytes.get(body_start + 1) else {
        return need(body_start + 2);
    };
    let (descriptor, small_descriptor, list_start) = match descriptor_code {
        SMALL_ULONG => match bytes.get(body_start + 2) {
            Some(&code) => (u64::from(code), true, body_start + 3),
            None => return need(body_start + 3),
        },
        ULONG => match bytes.get(body_start + 2..body_start + 10) {
            Some(code) => (
                u64::from_be_bytes(code.try_into().unwrap_or_default()),
                false,
                body_start + 10,
            ),
            None => return need(body_start + 10),
        },
        _ => return unchanged,
    };
    if field_count(descriptor).is_none() {
        return unchanged;
    }
    let Some(&list_code) = bytes.get(list_start) else {
        return need(list_start + 1);
    };
    // `size` counts the bytes after itself: the count, then the fields.
    let (fields, field_count) = match list_code {
        LIST0 => (list_start + 1..list_start + 1, 0),
        LIST8 => {
            let Some(&size) = bytes.get(list_start + 1) else {
                return need(list_start + 2);
            };
            let end = list_start + 2 + size as usize;
            if size == 0 {
                return unchanged;
            }
            if bytes.len() < end {
                return need(end);
            }
            (list_start + 3..end, bytes[list_start + 2] as usize)
        }
        LIST32 => {
            let Some(size) = bytes.get(list_start + 1..list_start + 5) else {
                return need(list_start + 5);
            };
            let size = u32::from_be_bytes(size.try_into().unwrap_or_default()) as usize;
            let Some(end) = (list_start + 5).checked_add(size) else {
                return unchanged;
            };
            if size < 4 {
                return unchanged;
            }
            if bytes.len() < end {
                return need(end);
            }
            let count = &bytes[list_start + 5..list_start + 9];
            (
                list_start + 9..end,
                u32::from_be_bytes(count.try_into().unwrap_or_default()) as usize,
            )
        }
        _ => return unchanged,
    };
    Scan::Performative(Performative {
        frame_bytes,
        body_start,
        descriptor,
        small_descriptor,
        fields,
        field_count,
    })
}

/// Writes the frame held in `bytes` (its header, extended header and performative) with the performative
/// at full length, then whatever of the frame body `bytes` holds past it. False when the frame is best left
/// as it is: already full, or too long once padded.
fn rewrite(bytes: &[u8], performative: &Performative, output: &mut Vec<u8>) -> bool {
    let Some(spec_count) = field_count(performative.descriptor) else {
        return false;
    };
    let missing = spec_count.saturating_sub(performative.field_count);
    if missing == 0 && performative.small_descriptor {
        return false;
    }
    let Ok(descriptor) = u8::try_from(performative.descriptor) else {
        return false;
    };
    let count = performative.field_count + missing;
    let fields_bytes = performative.fields.len() + missing;
    let mut list = Vec::with_capacity(3 + 9 + fields_bytes);
    list.extend_from_slice(&[DESCRIBED, SMALL_ULONG, descriptor]);
    match (u8::try_from(fields_bytes + 1), u8::try_from(count)) {
        (Ok(size), Ok(count)) => list.extend_from_slice(&[LIST8, size, count]),
        _ => {
            let (Ok(size), Ok(count)) = (u32::try_from(fields_bytes + 4), u32::try_from(count)) else {
                return false;
            };
            list.push(LIST32);
            list.extend_from_slice(&size.to_be_bytes());
            list.extend_from_slice(&count.to_be_bytes());
        }
    }
    list.extend_from_slice(&bytes[performative.fields.clone()]);
    list.resize(list.len() + missing, NULL);
    let performative_end = performative.fields.end;
    let old_performative_bytes = performative_end - performative.body_start;
    let Some(frame_bytes) = (performative.frame_bytes - old_performative_bytes)
        .checked_add(list.len())
        .and_then(|frame_bytes| u32::try_from(frame_bytes).ok())
    else {
        return false;
    };
    output.extend_from_slice(&frame_bytes.to_be_bytes());
    output.extend_from_slice(&bytes[4..performative.body_start]);
    output.extend_from_slice(&list);
    output.extend_from_slice(&bytes[performative_end..]);
    true
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    const AMQP_HEADER: &[u8] = b"AMQP\x00\x01\x00\x00";
    const SASL_HEADER: &[u8] = b"AMQP\x03\x01\x00\x00";
    const HEARTBEAT: &[u8] = &[0, 0, 0, 8, 2, 0, 0, 0];

    /// A frame of `frame_type` (0 AMQP, 1 SASL) on channel 0 around `body`.
    fn frame(frame_type: u8, body: &[u8]) -> Vec<u8> {
        let mut frame = ((body.len() + 8) as u32).to_be_bytes().to_vec();
        frame.extend_from_slice(&[2, frame_type, 0, 0]);
        frame.extend_from_slice(body);
        frame
    }

    /// A performative with a smallulong descriptor and a list8 of `count` fields.
    fn list8(descriptor: u8, count: u8, fields: &[u8]) -> Vec<u8> {
        let mut body = vec![DESCRIBED, SMALL_ULONG, descriptor, LIST8, fields.len() as u8 + 1, count];
        body.extend_from_slice(fields);
        body
    }

    fn nulls(count: usize) -> Vec<u8> {
        vec![NULL; count]
    }

    fn cat(parts: &[&[u8]]) -> Vec<u8> {
        parts.concat()
    }

    fn rewrite_in_chunks(stream: &[u8], chunk_bytes: usize) -> Vec<u8> {
        let mut rewriter = Rewriter::default();
        let mut output = Vec::new();
        for chunk in stream.chunks(chunk_bytes.max(1)) {
            rewriter.feed(chunk, &mut output);
        }
        output
    }

    /// The stream rewritten in one write, in writes of every size, and split at every single point, must
    /// all give `expected`.
    fn check(stream: &[u8], expected: &[u8]) {
        assert_eq!(rewrite_in_chunks(stream, stream.len()), expected, "in one write");
        for chunk_bytes in 1..stream.len() {
            assert_eq!(
                rewrite_in_chunks(stream, chunk_bytes),
                expected,
                "in writes of {chunk_bytes}"
            );
        }
        for split in 0..=stream.len() {
            let mut rewriter = Rewriter::default();
            let mut output = Vec::new();
            rewriter.feed(&stream[..split], &mut output);
            rewriter.feed(&stream[split..], &mut output);
            assert_eq!(output, expected, "split at {split}");
        }
    }

    /// Our `open` as fe2o3-amqp writes it: container-id, hostname, max-frame-size, channel-max,
    /// idle-time-out.
    fn short_open_fields() -> Vec<u8> {
        let mut fields = vec![0xa1, 7];
        fields.extend_from_slice(b"twinhub");
        fields.extend_from_slice(&[NULL, 0x70, 0, 1, 0, 0, 0x60, 0xff, 0xff, 0x70, 0, 3, 0xa9, 0x80]);
        fields
    }

    #[test]
    fn list0_becomes_a_list8_of_nulls() {
        // Scenario: `end` and `close` without an error, which serde_amqp writes as list0.
        let end = frame(0, &[DESCRIBED, SMALL_ULONG, 0x17, LIST0]);
        check(&end, &frame(0, &list8(0x17, 1, &nulls(1))));
        let close = frame(0, &[DESCRIBED, SMALL_ULONG, 0x18, LIST0]);
        check(&close, &frame(0, &list8(0x18, 1, &nulls(1))));
        let detach = frame(0, &[DESCRIBED, SMALL_ULONG, 0x16, LIST0]);
        check(&detach, &frame(0, &list8(0x16, 3, &nulls(3))));
    }

    #[test]
    fn a_short_list8_gets_its_trailing_nulls() {
        let fields = short_open_fields();
        let open = frame(0, &list8(0x10, 5, &fields));
        check(&open, &frame(0, &list8(0x10, 10, &cat(&[&fields, &nulls(5)]))));
        // `begin` without handle-max: remote-channel null, next-outgoing-id 1, windows 2048.
        let begin_fields = [NULL, 0x52, 1, 0x70, 0, 0, 8, 0, 0x70, 0, 0, 8, 0];
        let begin = frame(0, &list8(0x11, 4, &begin_fields));
        check(&begin, &frame(0, &list8(0x11, 8, &cat(&[&begin_fields, &nulls(4)]))));
    }

    #[test]
    fn full_lists_are_left_byte_for_byte() {
        let disposition = frame(0, &list8(0x15, 6, &[0x41, 0x43, NULL, 0x41, NULL, NULL]));
        check(&disposition, &disposition);
        let flow_fields = cat(&[
            &[0x43, 0x70, 0, 0, 8, 0, 0x43, 0x70, 0, 0, 8, 0, 0x43, 0x43, 0x52, 100],
            &nulls(4),
        ]);
        let flow = frame(0, &list8(0x13, 11, &flow_fields));
        check(&flow, &flow);
        // A list32 that is already full stays a list32.
        let mut close = vec![DESCRIBED, SMALL_ULONG, 0x18, LIST32, 0, 0, 0, 5, 0, 0, 0, 1, NULL];
        let close_frame = frame(0, &close);
        check(&close_frame, &close_frame);
        // But a short list32 is padded (and written as the list8 it fits in).
        close.truncate(4);
        close.extend_from_slice(&[0, 0, 0, 4, 0, 0, 0, 0]);
        check(&frame(0, &close), &frame(0, &list8(0x18, 1, &nulls(1))));
    }

    #[test]
    fn a_transfer_payload_is_copied_unchanged() {
        // handle 0, delivery-id 0, delivery-tag, message-format 0, settled true, more false.
        let fields = [0x43, 0x43, 0xa0, 2, 0xaa, 0xbb, 0x43, 0x41, 0x42];
        // A message whose sections stay truncated: properties with only a message-id, then a data section.
        let payload = [
            DESCRIBED,
            SMALL_ULONG,
            0x73,
            LIST8,
            4,
            1,
            0xa1,
            1,
            b'm',
            DESCRIBED,
            SMALL_ULONG,
            0x75,
            0xa0,
            3,
            1,
            2,
            3,
        ];
        let transfer = frame(0, &cat(&[&list8(0x14, 6, &fields), &payload]));
        let expected = frame(0, &cat(&[&list8(0x14, 11, &cat(&[&fields, &nulls(5)])), &payload]));
        check(&transfer, &expected);
        assert_eq!(expected.len(), transfer.len() + 5);
    }

    #[test]
    fn several_frames_split_anywhere_with_heartbeats_between() {
        let end = frame(0, &[DESCRIBED, SMALL_ULONG, 0x17, LIST0]);
        let open_fields = short_open_fields();
        let stream = cat(&[
            AMQP_HEADER,
            &frame(0, &list8(0x10, 5, &open_fields)),
            HEARTBEAT,
            HEARTBEAT,
            &end,
            HEARTBEAT,
        ]);
        let expected = cat(&[
            AMQP_HEADER,
            &frame(0, &list8(0x10, 10, &cat(&[&open_fields, &nulls(5)]))),
            HEARTBEAT,
            HEARTBEAT,
            &frame(0, &list8(0x17, 1, &nulls(1))),
            HEARTBEAT,
        ]);
        check(&stream, &expected);
    }

    #[test]
    fn sasl_then_amqp_two_headers_in_one_stream() {
        // Scenario: SASL header, sasl-mechanisms [ANONYMOUS], sasl-outcome ok written with one field, then
        // the AMQP header and open.
        let mut mechanisms = vec![0xa3, 9];
        mechanisms.extend_from_slice(b"ANONYMOUS");
        let open_fields = short_open_fields();
        let stream = cat(&[
            SASL_HEADER,
            &frame(1, &list8(0x40, 1, &mechanisms)),
            &frame(1, &list8(0x44, 1, &[0x50, 0])),
            AMQP_HEADER,
            &frame(0, &list8(0x10, 5, &open_fields)),
        ]);
        let expected = cat(&[
            SASL_HEADER,
            &frame(1, &list8(0x40, 1, &mechanisms)),
            &frame(1, &list8(0x44, 2, &[0x50, 0, NULL])),
            AMQP_HEADER,
            &frame(0, &list8(0x10, 10, &cat(&[&open_fields, &nulls(5)]))),
        ]);
        check(&stream, &expected);
        // sasl-init and the challenge exchange, though the hub never sends them.
        check(
            &frame(1, &list8(0x41, 1, &[0xa3, 1, b'X'])),
            &frame(1, &list8(0x41, 3, &[0xa3, 1, b'X', NULL, NULL])),
        );
        check(
            &frame(1, &[DESCRIBED, SMALL_ULONG, 0x42, LIST0]),
            &frame(1, &list8(0x42, 1, &nulls(1))),
        );
        check(
            &frame(1, &[DESCRIBED, SMALL_ULONG, 0x43, LIST0]),
            &frame(1, &list8(0x43, 1, &nulls(1))),
        );
    }

    #[test]
    fn a_list8_grows_into_a_list32_when_the_nulls_do_not_fit() {
        // An attach of 13 fields: a name of `name_bytes`, then 12 nulls; padding adds the 14th.
        let attach_fields = |name_bytes: u8| cat(&[&[0xa1, name_bytes], &vec![b'n'; name_bytes.into()], &nulls(12)]);
        // 250 bytes of fields become 251: the list8 size (count byte included) is 252, still a list8.
        let fields = attach_fields(236);
        let mut expected_body = vec![DESCRIBED, SMALL_ULONG, 0x12, LIST8, 252, 14];
        expected_body.extend_from_slice(&cat(&[&fields, &nulls(1)]));
        check(&frame(0, &list8(0x12, 13, &fields)), &frame(0, &expected_body));
        // 254 bytes become 255: the size would be 256, so a list32 of size 255 + 4.
        let fields = attach_fields(240);
        let mut expected_body = vec![DESCRIBED, SMALL_ULONG, 0x12, LIST32, 0, 0, 1, 3, 0, 0, 0, 14];
        expected_body.extend_from_slice(&cat(&[&fields, &nulls(1)]));
        check(&frame(0, &list8(0x12, 13, &fields)), &frame(0, &expected_body));
    }

    #[test]
    fn a_ulong_descriptor_becomes_a_smallulong() {
        let close = frame(0, &[DESCRIBED, ULONG, 0, 0, 0, 0, 0, 0, 0, 0x18, LIST8, 2, 1, NULL]);
        check(&close, &frame(0, &list8(0x18, 1, &nulls(1))));
    }

    #[test]
    fn an_extended_header_and_the_channel_are_kept() {
        let mut header_and_body = vec![0, 0, 0, 0, 3, 0, 0, 7, 0xde, 0xad, 0xbe, 0xef];
        header_and_body.extend_from_slice(&[DESCRIBED, SMALL_ULONG, 0x17, LIST0]);
        header_and_body[3] = header_and_body.len() as u8;
        let mut expected = header_and_body[..12].to_vec();
        expected.extend_from_slice(&list8(0x17, 1, &nulls(1)));
        expected[3] = expected.len() as u8;
        check(&header_and_body, &expected);
    }

    #[test]
    fn what_is_not_a_known_performative_goes_out_as_it_is() {
        // Not a described type; an unknown descriptor; a symbol descriptor; a list whose size overruns the
        // frame; a performative that is not a list.
        for body in [
            vec![0xa1, 1, b'x'],
            list8(0x70, 0, &[]),
            vec![DESCRIBED, 0xa3, 1, b'x', LIST0],
            vec![DESCRIBED, SMALL_ULONG, 0x17, LIST8, 9, 1, NULL],
            vec![DESCRIBED, SMALL_ULONG, 0x17, NULL],
        ] {
            let stream = cat(&[&frame(0, &body), HEARTBEAT]);
            check(&stream, &stream);
        }
    }

    #[test]
    fn after_a_malformed_frame_header_everything_goes_out_as_it_is() {
        let stream = cat(&[
            &[0, 0, 0, 4, 2, 0, 0, 0],
            &frame(0, &[DESCRIBED, SMALL_ULONG, 0x17, LIST0]),
        ]);
        check(&stream, &stream);
        let stream = cat(&[
            &[0, 0, 0, 9, 3, 0, 0, 0, 0],
            &frame(0, &[DESCRIBED, SMALL_ULONG, 0x17, LIST0]),
        ]);
        check(&stream, &stream);
    }

    #[test]
    fn arbitrary_bytes_never_panic() {
        // xorshift, so that a failure can be replayed.
        let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        let open = frame(0, &list8(0x10, 5, &short_open_fields()));
        for _ in 0..2000 {
            let mut stream = cat(&[AMQP_HEADER, &open]);
            let length = (next() % 64) as usize;
            stream.extend((0..length).map(|_| next() as u8));
            // Flip a byte of the frame sometimes, so that the parser meets broken sizes and codes.
            let flip = (next() % stream.len() as u64) as usize;
            stream[flip] ^= next() as u8;
            let chunk_bytes = (next() % 8) as usize + 1;
            rewrite_in_chunks(&stream, chunk_bytes);
        }
    }

    #[tokio::test]
    async fn through_a_stream_that_takes_a_few_bytes_at_a_time() {
        // Scenario: the inner stream's buffer (16 bytes) is smaller than a frame, so writes meet Pending and
        // the rewritten bytes wait for the reader; a flush must send them all.
        let (inner, mut peer) = tokio::io::duplex(16);
        let mut padded = FramePadding::new(inner);
        let open_fields = short_open_fields();
        let stream = cat(&[AMQP_HEADER, &frame(0, &list8(0x10, 5, &open_fields)), HEARTBEAT]);
        let expected = cat(&[
            AMQP_HEADER,
            &frame(0, &list8(0x10, 10, &cat(&[&open_fields, &nulls(5)]))),
            HEARTBEAT,
        ]);
        let expected_bytes = expected.len();
        let reader = tokio::spawn(async move {
            let mut received = vec![0u8; expected_bytes];
            peer.read_exact(&mut received).await.unwrap();
            peer.write_all(b"reply").await.unwrap();
            received
        });
        for chunk in stream.chunks(5) {
            padded.write_all(chunk).await.unwrap();
        }
        padded.flush().await.unwrap();
        assert_eq!(reader.await.unwrap(), expected);
        let mut reply = [0u8; 5];
        padded.read_exact(&mut reply).await.unwrap();
        assert_eq!(&reply, b"reply", "reads pass through");
    }
}
