//! What a client that sends no token can take from the coordinator: a bounded number of
//! connections, each of which must start speaking within a deadline, and file descriptors left
//! over for the ledger and storage I/O whatever the clients do.
//!
//! tonic serves whatever its incoming stream yields and closes nothing on its own: a TLS
//! connection that never handshakes, or a plain-text one that never sends the HTTP/2 preface,
//! would hold a descriptor for ever. 1,100 of them against a limit of 1,024 descriptors left
//! the coordinator unable to open staged files, and finished shards lost their leases.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_stream::Stream;
use tonic::transport::server::{Connected, TcpConnectInfo};

/// How long a new connection may take to send its first [`OPENING_BYTES`] (the HTTP/2 preface
/// in plain text; a TLS ClientHello is longer), and a TLS handshake to finish.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Connections served at once unless `serve --max-connections` says otherwise.
pub const DEFAULT_MAX_CONNECTIONS: usize = 4096;

/// The HTTP/2 client preface is 24 bytes: a client that has sent them is speaking HTTP/2.
const OPENING_BYTES: usize = 24;

/// Descriptors kept back from clients: the ledger, its journal, staged and published files,
/// object-store connections and the summaries' writers.
pub fn headroom(descriptors: u64) -> u64 {
    (descriptors / 4).max(64)
}

/// Raises the soft limit on open files to the hard one (a coordinator serves many clients and
/// the usual soft limit of 1,024 is a default, not a decision). Returns the limit now in force.
pub fn raise_descriptor_limit() -> io::Result<u64> {
    rlimit::increase_nofile_limit(u64::MAX)
}

/// The connections served at once: `max`, but never so many that clients could take the
/// descriptors storage I/O needs (`descriptors` is the process's limit).
pub fn connection_cap(max: usize, descriptors: u64) -> usize {
    let for_clients = descriptors.saturating_sub(headroom(descriptors)).max(1);
    max.clamp(1, usize::try_from(for_clients).unwrap_or(usize::MAX))
}

/// The listener's connections, at most `cap` open at once: one over the cap is closed at once
/// (its client sees the connection reset and retries, as workers do) rather than queued where
/// it would hang. Each must send its opening bytes within `opening` ([`HANDSHAKE_TIMEOUT`]).
/// Accept errors (out of descriptors) are logged and retried after a pause.
pub fn incoming(
    listener: TcpListener,
    cap: usize,
    opening: Duration,
) -> impl Stream<Item = io::Result<Limited>> + Send + 'static {
    let permits = Arc::new(Semaphore::new(cap));
    futures_util::stream::unfold(
        (listener, permits, 0u64),
        move |(listener, permits, mut refused)| async move {
            loop {
                let (io, peer) = match listener.accept().await {
                    Ok(accepted) => accepted,
                    Err(e) => {
                        tracing::warn!(error = %e, "accepting a connection failed; retrying in 100 ms");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                };
                match permits.clone().try_acquire_owned() {
                    Ok(permit) => {
                        let _ = io.set_nodelay(true);
                        let conn = Limited::new(io, permit, opening);
                        return Some((Ok(conn), (listener, permits, refused)));
                    }
                    Err(_) => {
                        refused += 1;
                        // Once, then every thousandth: a flood must not flood the log too.
                        if refused % 1000 == 1 {
                            tracing::warn!(%peer, cap, refused, "connection refused: the coordinator serves at most this many connections at once (serve --max-connections)");
                        }
                        drop(io);
                    }
                }
            }
        },
    )
}

/// An accepted connection: it holds one of the cap's permits while open, and fails its reads
/// if its first [`OPENING_BYTES`] do not arrive in time.
pub struct Limited {
    io: TcpStream,
    _permit: OwnedSemaphorePermit,
    /// Until the opening bytes arrived: when the connection is closed.
    deadline: Option<Pin<Box<tokio::time::Sleep>>>,
    opened: usize,
}

impl Limited {
    fn new(io: TcpStream, permit: OwnedSemaphorePermit, opening: Duration) -> Self {
        Self {
            io,
            _permit: permit,
            deadline: Some(Box::pin(tokio::time::sleep(opening))),
            opened: 0,
        }
    }
}

impl Connected for Limited {
    type ConnectInfo = TcpConnectInfo;

    fn connect_info(&self) -> TcpConnectInfo {
        self.io.connect_info()
    }
}

impl AsyncRead for Limited {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let this = &mut *self;
        match Pin::new(&mut this.io).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                this.opened += buf.filled().len() - before;
                if this.opened >= OPENING_BYTES {
                    this.deadline = None;
                }
                Poll::Ready(Ok(()))
            }
            Poll::Pending => {
                let late = this
                    .deadline
                    .as_mut()
                    .is_some_and(|d| d.as_mut().poll(cx).is_ready());
                if late {
                    Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        "the client sent no request within the handshake timeout",
                    )))
                } else {
                    Poll::Pending
                }
            }
            ready => ready,
        }
    }
}

impl AsyncWrite for Limited {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio_stream::StreamExt;

    #[test]
    fn clients_never_get_the_descriptors_storage_needs() {
        assert_eq!(connection_cap(10_000, 1_024), 768);
        assert_eq!(connection_cap(100, 1_024), 100);
        assert_eq!(connection_cap(10_000, 256), 192);
        assert_eq!(connection_cap(10_000, 40), 1);
        assert_eq!(connection_cap(0, 1_024), 1);
    }

    #[tokio::test]
    async fn a_silent_connection_is_closed_and_one_over_the_cap_at_once() {
        let opening = Duration::from_millis(300);
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, mut served) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(async move {
            let mut conns = std::pin::pin!(incoming(listener, 2, opening));
            while let Some(c) = conns.next().await {
                let _ = tx.send(c.unwrap());
            }
        });
        let mut speaker = TcpStream::connect(addr).await.unwrap();
        let mut a = served.recv().await.unwrap();
        let _silent = TcpStream::connect(addr).await.unwrap();
        let mut b = served.recv().await.unwrap();
        // The third is over the cap: closed without being served.
        let mut third = TcpStream::connect(addr).await.unwrap();
        let mut byte = [0u8; 1];
        let closed = tokio::time::timeout(Duration::from_secs(5), third.read(&mut byte)).await;
        assert_eq!(closed.expect("closed at once").unwrap_or(0), 0);

        speaker.write_all(&[7u8; OPENING_BYTES]).await.unwrap();
        let mut got = [0u8; OPENING_BYTES];
        a.read_exact(&mut got).await.unwrap();
        // The silent one fails once the deadline passes; the one that spoke does not.
        let e = b.read(&mut byte).await.unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::TimedOut);
        drop(b);
        let waiting = tokio::time::timeout(opening * 3, a.read(&mut byte)).await;
        assert!(waiting.is_err(), "a connection that spoke has no deadline");
        // Closing one frees its place.
        let _fourth = TcpStream::connect(addr).await.unwrap();
        let fourth = tokio::time::timeout(Duration::from_secs(5), served.recv()).await;
        assert!(fourth.expect("served").is_some());
    }
}
