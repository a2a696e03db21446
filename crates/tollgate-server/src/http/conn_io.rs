//! The socket of one HTTP connection, shared between hyper ([`ConnIo`]: every read and write)
//! and a semaphore acquire that waits ([`HangUp`]: notices when the client goes away).
//!
//! Why not hyper's own check: by default hyper reads the socket once more while every
//! request is in flight, to notice a client that hangs up. The request body still points
//! into hyper's read buffer at that moment, so that read allocates a fresh 8 KiB buffer: on
//! `POST /v1/check` about 800 of the server's 18,100 instructions per check (callgrind, `cargo
//! bench -p tollgate-server --bench vs_throttlecrab`). The server turns that read off
//! (`half_close(true)`) and only the requests that can wait, `/v1/semaphore/acquire` with
//! `wait_ms`, watch the socket themselves: a waiter whose client hung up must not be granted
//! a permit into a lease nobody releases (tests/semaphore_wait.rs).

use std::cell::RefCell;
use std::io::{self, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use tokio::io::unix::AsyncFd;

/// The bytes one read takes from the socket at most: hyper's read buffer starts at 8 KiB and
/// grows for bigger requests; reads of a larger buffer are split into reads of this size.
const READ_CHUNK: usize = 16 * 1024;

thread_local! {
    /// Where a read lands before hyper's buffer: hyper hands out uninitialized memory, which
    /// only `unsafe` code could pass to `read`. Copying the (small) requests once costs less
    /// than zeroing hyper's 8 KiB before every read.
    static READ_SCRATCH: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

/// One accepted HTTP connection, as hyper's I/O type. Clones of its socket go to
/// [`HangUp`] watchers; the socket closes when the last one is dropped.
///
/// ```
/// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
/// use tollgate_server::http::ConnIo;
/// let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
/// let client = tokio::net::TcpStream::connect(listener.local_addr().unwrap());
/// let (accepted, _client) = tokio::join!(listener.accept(), client);
/// let io = ConnIo::new(accepted.unwrap().0).unwrap();
/// let _watcher = io.hang_up();
/// # });
/// ```
#[derive(Debug)]
pub struct ConnIo {
    socket: Arc<AsyncFd<TcpStream>>,
}

impl ConnIo {
    /// Takes over an accepted stream (it moves from tokio's `TcpStream` registration to an
    /// `AsyncFd` one, which can be shared).
    #[allow(unsafe_code)]
    pub fn new(stream: tokio::net::TcpStream) -> io::Result<Self> {
        // `into_std` leaves the socket non-blocking, as `AsyncFd` needs.
        let stream = stream.into_std()?;
        // SAFETY: `AsyncFd::register` needs the descriptor to stay open and the same until
        // the `AsyncFd` is dropped. The `TcpStream` owns its descriptor, the `AsyncFd` owns
        // the `TcpStream` (this module only ever borrows it, through `get_ref`), and dropping
        // the `AsyncFd` deregisters it before the `TcpStream` closes the descriptor.
        let socket = unsafe { AsyncFd::register(stream)? };
        Ok(Self {
            socket: Arc::new(socket),
        })
    }

    /// A watcher for this connection's hang-up.
    pub fn hang_up(&self) -> HangUp {
        HangUp {
            socket: Arc::clone(&self.socket),
        }
    }
}

impl hyper::rt::Read for ConnIo {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        mut buf: hyper::rt::ReadBufCursor<'_>,
    ) -> Poll<io::Result<()>> {
        let want = buf.remaining().min(READ_CHUNK);
        loop {
            let mut guard = ready!(self.socket.poll_read_ready(cx))?;
            let read = READ_SCRATCH.with_borrow_mut(|scratch| {
                if scratch.len() < READ_CHUNK {
                    scratch.resize(READ_CHUNK, 0);
                }
                let scratch = &mut scratch[..want];
                guard
                    .try_io(|socket| socket.get_ref().read(scratch))
                    .map(|result| result.inspect(|&n| buf.put_slice(&scratch[..n])))
            });
            match read {
                Ok(Ok(n)) => {
                    if n > 0 && n < want {
                        // The socket had less than asked for, so it is drained: wait for the
                        // next readiness event instead of a read that would block (as
                        // tokio's own `TcpStream` does on epoll).
                        guard.clear_ready();
                    }
                    return Poll::Ready(Ok(()));
                }
                Ok(Err(e)) => return Poll::Ready(Err(e)),
                // Would block: `try_io` cleared the readiness; poll again.
                Err(_would_block) => continue,
            }
        }
    }
}

impl hyper::rt::Write for ConnIo {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        loop {
            let mut guard = ready!(self.socket.poll_write_ready(cx))?;
            match guard.try_io(|socket| socket.get_ref().write(buf)) {
                Ok(result) => {
                    if matches!(result, Ok(n) if n > 0 && n < buf.len()) {
                        // The send buffer is full: wait for the next event, not for a write
                        // that would block (as tokio's `TcpStream` does).
                        guard.clear_ready();
                    }
                    return Poll::Ready(result);
                }
                Err(_would_block) => continue,
            }
        }
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(self.socket.get_ref().shutdown(Shutdown::Write))
    }
}

/// Watches one connection for the client hanging up, while its request waits (hyper does
/// not read the socket while a request is in flight; see the module docs). Requests that
/// can wait find it in their extensions.
///
/// ```
/// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
/// use std::time::Duration;
/// use tollgate_server::http::ConnIo;
/// let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
/// let client = tokio::net::TcpStream::connect(listener.local_addr().unwrap());
/// let (accepted, client) = tokio::join!(listener.accept(), client);
/// let watcher = ConnIo::new(accepted.unwrap().0).unwrap().hang_up();
/// // still connected: the watch does not end
/// assert!(tokio::time::timeout(Duration::from_millis(50), watcher.closed()).await.is_err());
/// drop(client);
/// tokio::time::timeout(Duration::from_secs(5), watcher.closed()).await.expect("noticed");
/// # });
/// ```
#[derive(Clone, Debug)]
pub struct HangUp {
    socket: Arc<AsyncFd<TcpStream>>,
}

impl HangUp {
    /// Completes once the client has closed or reset the connection. While the client has
    /// sent bytes nobody has read yet (a pipelined next request) it cannot tell, and waits
    /// on, as hyper's own check did; those bytes stay for hyper.
    pub async fn closed(&self) {
        loop {
            let Ok(mut guard) = self.socket.readable().await else {
                return;
            };
            match guard.try_io(|socket| socket.get_ref().peek(&mut [0u8; 1])) {
                // End of file, or the connection was reset.
                Ok(Ok(0)) | Ok(Err(_)) => return,
                Ok(Ok(_)) => return std::future::pending().await,
                // Nothing to read (`try_io` cleared the readiness): wait for the next event.
                Err(_would_block) => continue,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hyper::rt::{Read as _, Write as _};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    async fn pair() -> (ConnIo, tokio::net::TcpStream) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = tokio::net::TcpStream::connect(listener.local_addr().unwrap());
        let (accepted, client) = tokio::join!(listener.accept(), client);
        (ConnIo::new(accepted.unwrap().0).unwrap(), client.unwrap())
    }

    /// 4 MiB each way through a peer that reads and writes in small pieces: every byte
    /// arrives in order, through short reads, full send buffers and the readiness they clear.
    #[tokio::test]
    async fn large_transfers_both_ways_arrive_whole() {
        let (mut io, mut client) = pair().await;
        let data: Vec<u8> = (0..4 << 20).map(|i: u32| (i % 251) as u8).collect();

        let expected = data.clone();
        let reader = tokio::spawn(async move {
            let mut got = Vec::new();
            let mut chunk = [0u8; 3000];
            while got.len() < expected.len() {
                let n = client.read(&mut chunk).await.unwrap();
                assert!(n > 0, "closed early");
                got.extend_from_slice(&chunk[..n]);
                if got.len() % 7 == 0 {
                    tokio::task::yield_now().await;
                }
            }
            assert!(got == expected, "the bytes differ");
            client
        });
        let mut sent = 0;
        while sent < data.len() {
            sent += std::future::poll_fn(|cx| Pin::new(&mut io).poll_write(cx, &data[sent..]))
                .await
                .unwrap();
        }
        let mut client = reader.await.unwrap();

        let writer = tokio::spawn({
            let data = data.clone();
            async move {
                for piece in data.chunks(5000) {
                    client.write_all(piece).await.unwrap();
                }
                client.shutdown().await.unwrap();
                client
            }
        });
        let mut got = Vec::new();
        let mut storage = vec![0u8; 8192];
        loop {
            let mut buf = hyper::rt::ReadBuf::new(&mut storage);
            std::future::poll_fn(|cx| Pin::new(&mut io).poll_read(cx, buf.unfilled()))
                .await
                .unwrap();
            if buf.filled().is_empty() {
                break;
            }
            got.extend_from_slice(buf.filled());
        }
        assert!(
            got == data,
            "read {} of {} bytes, or others",
            got.len(),
            data.len()
        );
        drop(writer.await.unwrap());
    }

    /// The watch ends at a reset too, and never while the client only sent more bytes.
    #[tokio::test]
    async fn the_watch_ends_at_end_of_file_not_at_pending_bytes() {
        let (io, mut client) = pair().await;
        let watcher = io.hang_up();
        client.write_all(b"GET / HTTP/1.1\r\n").await.unwrap();
        let waited =
            tokio::time::timeout(std::time::Duration::from_millis(100), watcher.closed()).await;
        assert!(waited.is_err(), "pending bytes are not a hang-up");

        let (io, client) = pair().await;
        let watcher = io.hang_up();
        client.set_zero_linger().unwrap();
        drop(client); // linger 0: a reset, not a FIN
        tokio::time::timeout(std::time::Duration::from_secs(5), watcher.closed())
            .await
            .expect("a reset ends the watch");
    }
}
