//! The QUIC edge: one bidirectional stream per session (ALPN `natter/1` on the node's one
//! endpoint), frames from `natter_proto::codec`.

use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use natter_proto::codec::{encode_frame, FrameDecoder};
use natter_proto::frames::{ClientFrame, ServerFrame};

use super::session::{close, HELLO_TIMEOUT};
use super::{ClientEdge, Inbound, Wire, WireClosed};
use crate::peers::transport::ClientHandler;

/// How long a closing session waits for its last frames to be acknowledged.
pub const CLOSE_LINGER: Duration = Duration::from_secs(1);
/// Bytes read from the stream at a time.
const READ_CHUNK_BYTES: usize = 64 * 1024;

/// A QUIC session: one bidirectional stream of length-prefixed postcard frames.
struct QuicWire {
    connection: quinn::Connection,
    send: quinn::SendStream,
    recv: quinn::RecvStream,
    decoder: FrameDecoder,
}

impl Wire for QuicWire {
    async fn receive(&mut self) -> Inbound {
        // `read_chunk` is cancel-safe, and everything after it is synchronous.
        let chunk = match self.recv.read_chunk(READ_CHUNK_BYTES, true).await {
            Ok(Some(chunk)) => chunk.bytes,
            Ok(None) | Err(_) => return Inbound::Gone,
        };
        let mut frames = Vec::new();
        let mut rest = &chunk[..];
        while !rest.is_empty() {
            let taken = self.decoder.push(rest);
            rest = &rest[taken..];
            loop {
                match self.decoder.next_frame::<ClientFrame>() {
                    Ok(Some(frame)) => frames.push(Ok(frame)),
                    Ok(None) => break,
                    Err(error) => frames.push(Err(error)),
                }
            }
        }
        Inbound::Frames(frames)
    }

    async fn send(&mut self, frame: &ServerFrame) -> Result<(), WireClosed> {
        let mut bytes = Vec::new();
        if let Err(error) = encode_frame(frame, &mut bytes) {
            tracing::warn!(%error, "dropping an unencodable server frame");
            return Ok(());
        }
        self.send.write_all(&bytes).await.map_err(|_| WireClosed)
    }

    async fn close(&mut self, code: u32, reason: &'static str) {
        // Let the last frames (the error saying why) reach the client before closing: a QUIC
        // close discards stream data still in flight.
        if self.send.finish().is_ok() {
            let _ = tokio::time::timeout(CLOSE_LINGER, self.send.stopped()).await;
        }
        self.connection.close(code.into(), reason.as_bytes());
    }
}

/// Hands client connections to a [`ClientEdge`].
pub struct EdgeHandler(pub Arc<ClientEdge>);

impl ClientHandler for EdgeHandler {
    fn serve(&self, connection: quinn::Connection) -> BoxFuture<'static, ()> {
        let edge = self.0.clone();
        Box::pin(async move {
            let stream = tokio::time::timeout(HELLO_TIMEOUT, connection.accept_bi()).await;
            let Ok(Ok((send, recv))) = stream else {
                connection.close(close::UNAUTHENTICATED.into(), b"no session stream");
                return;
            };
            let wire = QuicWire { connection, send, recv, decoder: FrameDecoder::new() };
            edge.serve(wire, None).await;
        })
    }
}
