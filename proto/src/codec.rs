//! The QUIC frame codec (DESIGN §5): each frame is a `u32` big-endian payload length followed
//! by the postcard encoding of one [`ClientFrame`](crate::ClientFrame) or
//! [`ServerFrame`](crate::ServerFrame); a payload is at most [`FRAME_BYTES_MAX`] bytes.
//!
//! The length prefix is natter's one framing: [`encode_length_prefix`],
//! [`decode_length_prefix`] and [`encode_frame_within`] take the largest payload as a
//! parameter, so the node's peer RPCs (`natter_node::rpc`, 16 MiB) frame their streams with
//! the same code as client sessions (1 MiB).
//!
//! [`FrameDecoder`] reads such a stream in chunks of any size. A bad payload costs the peer
//! one `bad_frame` error and the stream goes on with the next frame; an oversized length costs
//! one `too_large` error, the announced bytes are skipped as they arrive, and the stream goes
//! on after them. The decoder never holds more than [`DECODER_BUFFER_BYTES_MAX`] bytes.

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::frame_error::FrameError;
use crate::limits::FRAME_BYTES_MAX;

/// Size of the big-endian length that precedes every payload, in bytes.
pub const LENGTH_PREFIX_BYTES: usize = 4;

/// Most bytes a [`FrameDecoder`] buffers: one length prefix and one largest payload. A full
/// buffer therefore always holds a complete frame or an oversized length, so
/// [`FrameDecoder::next_frame`] can always make progress when [`FrameDecoder::push`] cannot.
pub const DECODER_BUFFER_BYTES_MAX: usize = LENGTH_PREFIX_BYTES + FRAME_BYTES_MAX;

/// Capacity an empty decoder may keep for reuse; above it the buffer is released, so an idle
/// session that once received a large frame does not hold on to its memory.
const DECODER_RETAINED_BYTES_MAX: usize = 4 * 1024;

/// Largest payload a length prefix can announce, in bytes: a framing's maximum must not exceed it.
pub const LENGTH_PREFIX_PAYLOAD_BYTES_MAX: usize = u32::MAX as usize;

/// The length prefix of a payload of `length` bytes: `length` as a `u32`, big-endian.
///
/// Fails with [`FrameError::FrameTooLarge`] when `length` is over `max` (the framing's largest
/// payload, at most [`LENGTH_PREFIX_PAYLOAD_BYTES_MAX`]).
pub fn encode_length_prefix(length: usize, max: usize) -> Result<[u8; LENGTH_PREFIX_BYTES], FrameError> {
    assert!(max <= LENGTH_PREFIX_PAYLOAD_BYTES_MAX, "a framing's maximum of {max} bytes does not fit a u32 prefix");
    if length > max {
        return Err(FrameError::FrameTooLarge { length: length as u64, max });
    }
    let prefix = u32::try_from(length).expect("length is within max, which fits in a u32");
    Ok(prefix.to_be_bytes())
}

/// The payload length a prefix announces. Fails with [`FrameError::FrameTooLarge`], carrying
/// the announced length, when it is over `max` (the framing's largest payload).
pub fn decode_length_prefix(prefix: [u8; LENGTH_PREFIX_BYTES], max: usize) -> Result<usize, FrameError> {
    let length = u32::from_be_bytes(prefix);
    match usize::try_from(length) {
        Ok(length) if length <= max => Ok(length),
        _ => Err(FrameError::FrameTooLarge { length: u64::from(length), max }),
    }
}

/// Appends `frame` to `out` as a length prefix and postcard payload.
///
/// Fails with [`FrameError::FrameTooLarge`] when the payload would be over
/// [`FRAME_BYTES_MAX`]; `out` is then left as it was.
pub fn encode_frame<T: Serialize + ?Sized>(frame: &T, out: &mut Vec<u8>) -> Result<(), FrameError> {
    encode_frame_within(frame, FRAME_BYTES_MAX, out)
}

/// Appends `frame` to `out` as a length prefix and postcard payload of at most `max` bytes
/// (the framing's largest payload, at most [`LENGTH_PREFIX_PAYLOAD_BYTES_MAX`]).
///
/// Fails with [`FrameError::FrameTooLarge`] when the payload would be over `max`, and with
/// [`FrameError::Encode`] when postcard cannot encode it; `out` is then left as it was.
pub fn encode_frame_within<T: Serialize + ?Sized>(frame: &T, max: usize, out: &mut Vec<u8>) -> Result<(), FrameError> {
    let start = out.len();
    out.extend_from_slice(&[0; LENGTH_PREFIX_BYTES]);
    if let Err(error) = postcard::to_io(frame, &mut *out) {
        out.truncate(start);
        return Err(FrameError::Encode { reason: postcard_reason(&error) });
    }
    let prefix = match encode_length_prefix(out.len() - start - LENGTH_PREFIX_BYTES, max) {
        Ok(prefix) => prefix,
        Err(error) => {
            out.truncate(start);
            return Err(error);
        }
    };
    out[start..start + LENGTH_PREFIX_BYTES].copy_from_slice(&prefix);
    Ok(())
}

/// Decodes one postcard payload (without its length prefix). Every byte must belong to the
/// frame: trailing bytes are a [`FrameError::BadFrame`], as is anything postcard cannot read.
pub fn decode_payload<T: DeserializeOwned>(payload: &[u8]) -> Result<T, FrameError> {
    if payload.len() > FRAME_BYTES_MAX {
        return Err(FrameError::FrameTooLarge { length: payload.len() as u64, max: FRAME_BYTES_MAX });
    }
    let (frame, rest) =
        postcard::take_from_bytes::<T>(payload).map_err(|error| FrameError::bad_frame(postcard_reason(&error)))?;
    if !rest.is_empty() {
        return Err(FrameError::bad_frame(format!(
            "payload has {} trailing bytes after the frame, expected none",
            rest.len()
        )));
    }
    Ok(frame)
}

/// Postcard's own messages are capitalised and its custom errors drop their detail, so this
/// says in our words what was expected.
fn postcard_reason(error: &postcard::Error) -> String {
    use postcard::Error;
    let reason = match error {
        Error::DeserializeUnexpectedEnd => "payload ended early, expected more bytes",
        Error::DeserializeBadVarint => "varint does not end within its size, expected a valid varint",
        Error::DeserializeBadBool => "bool is not 0 or 1",
        Error::DeserializeBadChar => "char is not a unicode scalar value",
        Error::DeserializeBadUtf8 => "string is not valid utf-8",
        Error::DeserializeBadOption => "option tag is not 0 or 1",
        Error::DeserializeBadEnum => "enum tag is over u32::MAX",
        Error::DeserializeBadEncoding => "payload is not well encoded",
        Error::SerdeDeCustom => "a value was refused, expected a known frame type, known enum values and valid ids",
        Error::SerdeSerCustom | Error::CollectStrError => "a value could not be serialised",
        other => return format!("postcard error: {}", other.to_string().to_lowercase()),
    };
    reason.to_owned()
}

/// Splits a byte stream into frames, whatever the chunk boundaries.
///
/// Feed it with [`push`](Self::push) and drain it with [`next_frame`](Self::next_frame) until
/// that returns `Ok(None)`. Errors are per frame: after any `Err` the decoder has already
/// moved past the offending frame, and the next call goes on with the stream.
///
/// ```
/// use natter_proto::{encode_frame, ClientFrame, FrameDecoder};
///
/// let mut stream = Vec::new();
/// encode_frame(&ClientFrame::Ping { nonce: 7 }, &mut stream).unwrap();
/// let mut decoder = FrameDecoder::new();
/// let (first, second) = stream.split_at(3);
/// assert_eq!(decoder.push(first), first.len());
/// assert_eq!(decoder.next_frame::<ClientFrame>(), Ok(None));
/// assert_eq!(decoder.push(second), second.len());
/// assert_eq!(decoder.next_frame::<ClientFrame>(), Ok(Some(ClientFrame::Ping { nonce: 7 })));
/// assert_eq!(decoder.next_frame::<ClientFrame>(), Ok(None));
/// ```
#[derive(Debug, Default)]
pub struct FrameDecoder {
    /// Received bytes; those before `start` are already consumed.
    buffer: Vec<u8>,
    /// Offset of the first unconsumed byte in `buffer`.
    start: usize,
    /// Bytes of an oversized frame still to be skipped as they arrive. While this is
    /// non-zero the buffer is empty.
    discard_bytes: u64,
}

impl FrameDecoder {
    /// An empty decoder. It allocates nothing until bytes arrive.
    pub fn new() -> Self {
        Self::default()
    }

    /// Bytes received and not yet returned as frames or errors.
    pub fn buffered_bytes(&self) -> usize {
        self.buffer.len() - self.start
    }

    /// How many more bytes [`push`](Self::push) would store right now (bytes of an oversized
    /// frame being skipped are accepted beyond this).
    pub fn free_bytes(&self) -> usize {
        DECODER_BUFFER_BYTES_MAX - self.buffered_bytes()
    }

    /// Bytes of an oversized frame that are still to be skipped.
    pub fn discard_bytes(&self) -> u64 {
        self.discard_bytes
    }

    /// Takes as many of `bytes` as fit and returns how many it took. It takes fewer than all
    /// only when the buffer is full; then [`next_frame`](Self::next_frame) is guaranteed to
    /// return a frame or an error, and the rest can be pushed after that.
    #[must_use = "bytes beyond the returned count were not taken and must be pushed again"]
    pub fn push(&mut self, bytes: &[u8]) -> usize {
        let mut taken = 0;
        if self.discard_bytes > 0 {
            debug_assert_eq!(self.buffered_bytes(), 0, "nothing is buffered while skipping");
            let skip = usize::try_from(self.discard_bytes).unwrap_or(usize::MAX).min(bytes.len());
            self.discard_bytes -= skip as u64;
            taken = skip;
        }
        let rest = &bytes[taken..];
        if rest.is_empty() {
            return taken;
        }
        if self.start > 0 {
            // Only the tail of a partial frame is moved, and it moves at most once: the next
            // move needs a frame in front of it to be consumed first.
            self.buffer.drain(..self.start);
            self.start = 0;
        }
        let stored = rest.len().min(self.free_bytes());
        let needed = self.buffer.len() + stored;
        if needed > self.buffer.capacity() {
            // Grow geometrically, but never past the bound, so capacity stays within it.
            let target = needed.max(self.buffer.capacity() * 2).min(DECODER_BUFFER_BYTES_MAX);
            self.buffer.reserve_exact(target - self.buffer.len());
        }
        self.buffer.extend_from_slice(&rest[..stored]);
        debug_assert!(self.buffer.len() <= DECODER_BUFFER_BYTES_MAX);
        taken + stored
    }

    /// The next frame of the stream, `Ok(None)` if more bytes are needed first, or the error
    /// for one bad frame. After an error the decoder is past that frame and can be called
    /// again: a payload that does not decode as `T` is consumed ([`FrameError::BadFrame`]); a
    /// length over [`FRAME_BYTES_MAX`] is reported once ([`FrameError::FrameTooLarge`]) and
    /// exactly that many following bytes are skipped as they arrive.
    pub fn next_frame<T: DeserializeOwned>(&mut self) -> Result<Option<T>, FrameError> {
        if self.discard_bytes > 0 {
            self.skip_buffered();
            if self.discard_bytes > 0 {
                return Ok(None);
            }
        }
        let available = &self.buffer[self.start..];
        let Some(prefix) = available.first_chunk::<LENGTH_PREFIX_BYTES>() else {
            self.release_if_empty();
            return Ok(None);
        };
        let length = match decode_length_prefix(*prefix, FRAME_BYTES_MAX) {
            Ok(length) => length,
            Err(error) => {
                // The announced bytes are skipped as they arrive, whatever their number.
                self.start += LENGTH_PREFIX_BYTES;
                self.discard_bytes = u64::from(u32::from_be_bytes(*prefix));
                self.skip_buffered();
                self.release_if_empty();
                return Err(error);
            }
        };
        let end = LENGTH_PREFIX_BYTES + length;
        let Some(payload) = available.get(LENGTH_PREFIX_BYTES..end) else {
            return Ok(None);
        };
        let frame = decode_payload(payload);
        self.start += end;
        self.release_if_empty();
        frame.map(Some)
    }

    /// Drops buffered bytes that belong to an oversized frame.
    fn skip_buffered(&mut self) {
        let skip = usize::try_from(self.discard_bytes).unwrap_or(usize::MAX).min(self.buffered_bytes());
        self.start += skip;
        self.discard_bytes -= skip as u64;
    }

    /// Resets an empty buffer, releasing a large allocation.
    fn release_if_empty(&mut self) {
        if self.start == self.buffer.len() {
            self.buffer.clear();
            self.start = 0;
            if self.buffer.capacity() > DECODER_RETAINED_BYTES_MAX {
                self.buffer = Vec::new();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::ErrorCode;
    use crate::frames::{ClientFrame, ServerFrame};
    use crate::ids::ConversationId;

    fn ping(nonce: u64) -> ClientFrame {
        ClientFrame::Ping { nonce }
    }

    fn encoded(frame: &ClientFrame) -> Vec<u8> {
        let mut out = Vec::new();
        encode_frame(frame, &mut out).unwrap();
        out
    }

    /// A send whose postcard payload is exactly `payload_bytes` long.
    fn send_with_payload(payload_bytes: usize) -> ClientFrame {
        // Tag (1) + conversation (16) + client_seq 1 (1) + body length varint (3) + body.
        let body = "x".repeat(payload_bytes - 21);
        let frame = ClientFrame::Send { conversation: ConversationId::from_bytes([1; 16]), client_seq: 1, body };
        assert_eq!(postcard::to_stdvec(&frame).unwrap().len(), payload_bytes);
        frame
    }

    #[test]
    fn prefix_is_big_endian_payload_length() {
        let bytes = encoded(&ping(7));
        assert_eq!(bytes, [0, 0, 0, 2, 8, 7]);
    }

    #[test]
    fn length_prefix_round_trips_up_to_its_max_and_refuses_beyond() {
        for (length, max) in [(0, 0), (5, 5), (FRAME_BYTES_MAX, FRAME_BYTES_MAX), (16 << 20, 16 << 20)] {
            let prefix = encode_length_prefix(length, max).unwrap();
            assert_eq!(prefix, u32::try_from(length).unwrap().to_be_bytes());
            assert_eq!(decode_length_prefix(prefix, max), Ok(length));
        }
        assert_eq!(encode_length_prefix(6, 5), Err(FrameError::FrameTooLarge { length: 6, max: 5 }));
        assert_eq!(decode_length_prefix([0, 0, 0, 6], 5), Err(FrameError::FrameTooLarge { length: 6, max: 5 }));
        let largest = u64::from(u32::MAX);
        assert_eq!(
            decode_length_prefix([0xff; 4], FRAME_BYTES_MAX),
            Err(FrameError::FrameTooLarge { length: largest, max: FRAME_BYTES_MAX })
        );
        assert_eq!(decode_length_prefix([0xff; 4], LENGTH_PREFIX_PAYLOAD_BYTES_MAX), Ok(u32::MAX as usize));
    }

    proptest::proptest! {
        /// Writer and reader agree on every length and every maximum: what one refuses, the
        /// other refuses with the same error, and what it takes round-trips.
        #[test]
        fn length_prefix_writer_and_reader_agree(length: u32, max in 0..=LENGTH_PREFIX_PAYLOAD_BYTES_MAX) {
            let announced = length as usize;
            match encode_length_prefix(announced, max) {
                Ok(prefix) => {
                    proptest::prop_assert!(announced <= max);
                    proptest::prop_assert_eq!(decode_length_prefix(prefix, max), Ok(announced));
                }
                Err(error) => {
                    proptest::prop_assert!(announced > max);
                    proptest::prop_assert_eq!(decode_length_prefix(length.to_be_bytes(), max), Err(error));
                }
            }
        }
    }

    #[test]
    #[should_panic(expected = "does not fit a u32 prefix")]
    fn a_maximum_over_what_a_prefix_holds_is_a_bug() {
        let _ = encode_length_prefix(0, LENGTH_PREFIX_PAYLOAD_BYTES_MAX + 1);
    }

    #[test]
    fn a_framing_with_its_own_max_frames_as_the_client_codec_does() {
        let frame = send_with_payload(100_000);
        let mut within = Vec::new();
        encode_frame_within(&frame, 100_000, &mut within).unwrap();
        assert_eq!(within, encoded(&frame), "the same bytes as encode_frame");
        let mut out = vec![7];
        let error = encode_frame_within(&frame, 99_999, &mut out).unwrap_err();
        assert_eq!(error, FrameError::FrameTooLarge { length: 100_000, max: 99_999 });
        assert_eq!(out, [7], "a refused frame leaves out as it was");
        // A framing may allow more than a client frame.
        let large = send_with_payload(FRAME_BYTES_MAX + 1);
        let mut bytes = Vec::new();
        encode_frame_within(&large, 16 << 20, &mut bytes).unwrap();
        let prefix = *bytes.first_chunk::<LENGTH_PREFIX_BYTES>().unwrap();
        assert_eq!(decode_length_prefix(prefix, 16 << 20), Ok(FRAME_BYTES_MAX + 1));
        assert_eq!(decode_payload_unbounded(&bytes[LENGTH_PREFIX_BYTES..]), large);
    }

    /// The payload's frame, whatever its size (decode_payload stops at [`FRAME_BYTES_MAX`]).
    fn decode_payload_unbounded(payload: &[u8]) -> ClientFrame {
        postcard::from_bytes(payload).unwrap()
    }

    #[test]
    fn encode_appends_and_keeps_existing_bytes() {
        let mut out = vec![0xaa];
        encode_frame(&ping(1), &mut out).unwrap();
        encode_frame(&ping(2), &mut out).unwrap();
        assert_eq!(out, [0xaa, 0, 0, 0, 2, 8, 1, 0, 0, 0, 2, 8, 2]);
    }

    #[test]
    fn payload_of_exactly_the_max_round_trips() {
        let frame = send_with_payload(FRAME_BYTES_MAX);
        let bytes = encoded(&frame);
        assert_eq!(bytes.len(), LENGTH_PREFIX_BYTES + FRAME_BYTES_MAX);
        let mut decoder = FrameDecoder::new();
        assert_eq!(decoder.push(&bytes), bytes.len());
        assert_eq!(decoder.free_bytes(), 0);
        assert_eq!(decoder.next_frame(), Ok(Some(frame)));
        assert_eq!(decoder.buffered_bytes(), 0);
    }

    #[test]
    fn encode_refuses_one_byte_over_and_leaves_out_alone() {
        let frame = send_with_payload(FRAME_BYTES_MAX + 1);
        let mut out = vec![1, 2, 3];
        let error = encode_frame(&frame, &mut out).unwrap_err();
        assert_eq!(error, FrameError::FrameTooLarge { length: FRAME_BYTES_MAX as u64 + 1, max: FRAME_BYTES_MAX });
        assert_eq!(error.code(), ErrorCode::TooLarge);
        assert_eq!(out, [1, 2, 3]);
    }

    #[test]
    fn trailing_bytes_inside_a_payload_are_a_bad_frame() {
        let error = decode_payload::<ClientFrame>(&[8, 7, 0]).unwrap_err();
        assert_eq!(error.code(), ErrorCode::BadFrame);
        assert_eq!(error.to_string(), "bad frame: payload has 1 trailing bytes after the frame, expected none");
        assert_eq!(decode_payload::<ClientFrame>(&[8, 7]), Ok(ping(7)));
    }

    #[test]
    fn empty_and_unknown_payloads_are_bad_frames() {
        let empty = decode_payload::<ClientFrame>(&[]).unwrap_err();
        assert_eq!(empty.to_string(), "bad frame: payload ended early, expected more bytes");
        // ClientFrame has 9 variants, so tag 9 names none of them.
        let unknown = decode_payload::<ClientFrame>(&[9, 0]).unwrap_err();
        assert_eq!(unknown.code(), ErrorCode::BadFrame);
        // A client frame is not a server frame: ping's tag 8 is `error` there, which needs
        // more fields than one byte.
        assert_eq!(decode_payload::<ServerFrame>(&[8, 7]).unwrap_err().code(), ErrorCode::BadFrame);
    }

    #[test]
    fn bad_frame_is_consumed_and_the_next_frame_follows() {
        let mut stream = vec![0, 0, 0, 3, 9, 9, 9];
        stream.extend(encoded(&ping(5)));
        let mut decoder = FrameDecoder::new();
        assert_eq!(decoder.push(&stream), stream.len());
        assert_eq!(decoder.next_frame::<ClientFrame>().unwrap_err().code(), ErrorCode::BadFrame);
        assert_eq!(decoder.next_frame(), Ok(Some(ping(5))));
        assert_eq!(decoder.next_frame::<ClientFrame>(), Ok(None));
    }

    #[test]
    fn oversized_length_is_reported_once_and_its_bytes_are_skipped() {
        let oversized = FRAME_BYTES_MAX as u32 + 10;
        let mut decoder = FrameDecoder::new();
        let mut head = oversized.to_be_bytes().to_vec();
        head.extend([0xff; 6]);
        assert_eq!(decoder.push(&head), head.len());
        assert_eq!(
            decoder.next_frame::<ClientFrame>(),
            Err(FrameError::FrameTooLarge { length: u64::from(oversized), max: FRAME_BYTES_MAX })
        );
        assert_eq!(decoder.discard_bytes(), u64::from(oversized) - 6);
        assert_eq!(decoder.buffered_bytes(), 0);
        assert_eq!(decoder.next_frame::<ClientFrame>(), Ok(None));
        // The rest of the oversized frame arrives in pieces, the last one with a real frame.
        let filler = vec![0xff; oversized as usize - 6 - 1];
        for chunk in filler.chunks(100_000) {
            assert_eq!(decoder.push(chunk), chunk.len());
            assert_eq!(decoder.next_frame::<ClientFrame>(), Ok(None));
            assert_eq!(decoder.buffered_bytes(), 0);
        }
        let mut tail = vec![0xff];
        tail.extend(encoded(&ping(3)));
        assert_eq!(decoder.push(&tail), tail.len());
        assert_eq!(decoder.discard_bytes(), 0);
        assert_eq!(decoder.next_frame(), Ok(Some(ping(3))));
        assert_eq!(decoder.next_frame::<ClientFrame>(), Ok(None));
    }

    #[test]
    fn largest_length_prefix_only_skips() {
        let mut decoder = FrameDecoder::new();
        assert_eq!(decoder.push(&u32::MAX.to_be_bytes()), 4);
        let error = decoder.next_frame::<ClientFrame>().unwrap_err();
        assert_eq!(error.to_string(), format!("frame is {} bytes, expected at most {FRAME_BYTES_MAX}", u32::MAX));
        assert_eq!(decoder.push(&encoded(&ping(1))), 6);
        assert_eq!(decoder.next_frame::<ClientFrame>(), Ok(None));
        assert_eq!(decoder.discard_bytes(), u64::from(u32::MAX) - 6);
    }

    #[test]
    fn push_stops_at_the_bound_and_next_frame_makes_room() {
        let frames: Vec<ClientFrame> = (0..3).map(|n| send_with_payload(FRAME_BYTES_MAX / 2 + n)).collect();
        let mut stream = Vec::new();
        for frame in &frames {
            encode_frame(frame, &mut stream).unwrap();
        }
        let mut decoder = FrameDecoder::new();
        let mut rest = &stream[..];
        let mut decoded = Vec::new();
        while !rest.is_empty() {
            let taken = decoder.push(rest);
            assert!(decoder.buffered_bytes() <= DECODER_BUFFER_BYTES_MAX);
            rest = &rest[taken..];
            if taken == 0 {
                assert_eq!(decoder.free_bytes(), 0, "push takes nothing only when full");
            }
            while let Some(frame) = decoder.next_frame::<ClientFrame>().unwrap() {
                decoded.push(frame);
            }
        }
        assert_eq!(decoded, frames);
    }

    #[test]
    fn empty_decoder_releases_a_large_buffer() {
        let frame = send_with_payload(100_000);
        let mut decoder = FrameDecoder::new();
        let bytes = {
            let mut out = Vec::new();
            encode_frame(&frame, &mut out).unwrap();
            out
        };
        assert_eq!(decoder.push(&bytes), bytes.len());
        assert!(decoder.buffer.capacity() >= bytes.len());
        assert_eq!(decoder.next_frame(), Ok(Some(frame)));
        assert!(decoder.buffer.capacity() <= DECODER_RETAINED_BYTES_MAX);
    }
}
