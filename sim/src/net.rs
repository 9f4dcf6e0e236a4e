//! quinn over turmoil: an `AsyncUdpSocket` whose datagrams travel through the simulated
//! network, so QUIC connections between simulated hosts see its latency, loss and partitions.

use std::fmt;
use std::io::{self, IoSliceMut};
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use futures::future::BoxFuture;
use quinn::udp::{RecvMeta, Transmit};
use quinn::{AsyncUdpSocket, UdpPoller};

/// A turmoil UDP socket as quinn's socket.
pub struct TurmoilUdp {
    socket: Arc<turmoil::net::UdpSocket>,
    /// The pending readiness wait, kept across polls (it holds turmoil's receive lock while
    /// pending, so receiving is only tried once it completed).
    readable: Mutex<Option<BoxFuture<'static, io::Result<()>>>>,
}

impl fmt::Debug for TurmoilUdp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TurmoilUdp").field("local_addr", &self.socket.local_addr().ok()).finish()
    }
}

impl TurmoilUdp {
    /// Binds `addr` on the current simulated host.
    pub async fn bind(addr: SocketAddr) -> io::Result<Arc<Self>> {
        let socket = turmoil::net::UdpSocket::bind(addr).await?;
        Ok(Arc::new(Self { socket: Arc::new(socket), readable: Mutex::new(None) }))
    }
}

/// turmoil never blocks a send (it queues or drops), so the socket is always writable.
#[derive(Debug)]
struct AlwaysWritable;

impl UdpPoller for AlwaysWritable {
    fn poll_writable(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

impl AsyncUdpSocket for TurmoilUdp {
    fn create_io_poller(self: Arc<Self>) -> Pin<Box<dyn UdpPoller>> {
        Box::pin(AlwaysWritable)
    }

    fn try_send(&self, transmit: &Transmit<'_>) -> io::Result<()> {
        // One datagram per transmit: `max_transmit_segments` is 1.
        self.socket.try_send_to(transmit.contents, transmit.destination).map(|_| ())
    }

    fn poll_recv(
        &self,
        cx: &mut Context<'_>,
        bufs: &mut [IoSliceMut<'_>],
        meta: &mut [RecvMeta],
    ) -> Poll<io::Result<usize>> {
        let mut readable = self.readable.lock().expect("readable lock");
        loop {
            if let Some(wait) = readable.as_mut() {
                match wait.as_mut().poll(cx) {
                    Poll::Pending => return Poll::Pending,
                    Poll::Ready(result) => {
                        *readable = None;
                        result?;
                    }
                }
            }
            match self.socket.try_recv_from(&mut bufs[0]) {
                Ok((length, from)) => {
                    meta[0] = RecvMeta { addr: from, len: length, stride: length, ecn: None, dst_ip: None };
                    return Poll::Ready(Ok(1));
                }
                Err(error) if error.kind() == io::ErrorKind::WouldBlock => {
                    let socket = self.socket.clone();
                    *readable = Some(Box::pin(async move { socket.readable().await }));
                }
                Err(error) => return Poll::Ready(Err(error)),
            }
        }
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.socket.local_addr()
    }

    fn may_fragment(&self) -> bool {
        false
    }
}
