//! The stream window syncnode's yamux can grant (patches/yamux, the
//! daemon's `stream_window_kib`): with 1088 KiB a stream this side opens
//! lets the remote send a whole chunk response (up to 1 MiB + 64 KiB)
//! before any of it is read, so a response never waits a round trip for a
//! window update. The default is upstream yamux's 256 KiB; the control case
//! shows the test tells the two apart.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use futures::{AsyncReadExt, AsyncWriteExt, future::poll_fn};
use tokio::io::{AsyncRead as TokioRead, AsyncWrite as TokioWrite, DuplexStream, ReadBuf};
use yamux::{Config, Connection, DEFAULT_CREDIT, Mode, Stream};

const WINDOW: u32 = (1024 + 64) << 10;

/// tokio's in-memory pipe as a futures-io stream, which yamux speaks.
struct Pipe(DuplexStream);

impl futures::AsyncRead for Pipe {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        let mut rb = ReadBuf::new(buf);
        match Pin::new(&mut self.0).poll_read(cx, &mut rb) {
            Poll::Ready(Ok(())) => Poll::Ready(Ok(rb.filled().len())),
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => Poll::Pending,
        }
    }
}

impl futures::AsyncWrite for Pipe {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }
    fn poll_close(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }
}

/// How many bytes the server can write on a stream the client opened, while
/// the client reads none of them (within a second of simulated time).
async fn written_before_any_read(client_cfg: Config, response: usize) -> usize {
    let (a, b) = tokio::io::duplex(16 << 20);
    let mut client = Connection::new(Pipe(a), client_cfg, Mode::Client);
    let mut server = Connection::new(Pipe(b), Config::default(), Mode::Server);
    let (stream_tx, stream_rx) = tokio::sync::oneshot::channel::<Stream>();
    let (inbound_tx, inbound_rx) = tokio::sync::oneshot::channel::<Stream>();
    // Drivers: yamux moves bytes only while its connection is polled.
    tokio::spawn(async move {
        let s = poll_fn(|cx| client.poll_new_outbound(cx)).await.unwrap();
        let _ = stream_tx.send(s);
        while let Some(Ok(_)) = poll_fn(|cx| client.poll_next_inbound(cx)).await {}
    });
    tokio::spawn(async move {
        let mut tx = Some(inbound_tx);
        while let Some(Ok(s)) = poll_fn(|cx| server.poll_next_inbound(cx)).await {
            if let Some(tx) = tx.take() {
                let _ = tx.send(s);
            }
        }
    });
    let mut out = stream_rx.await.unwrap();
    out.write_all(b"request").await.unwrap();
    out.flush().await.unwrap();
    // The requester starts reading its response (a read that finds nothing
    // yet), as request-response does right after sending, then reads no more.
    let mut one = [0u8; 1];
    assert!(futures::poll!(out.read(&mut one)).is_pending());

    let mut inb = inbound_rx.await.unwrap();
    let mut req = [0u8; 7];
    inb.read_exact(&mut req).await.unwrap();
    assert_eq!(&req, b"request");
    let data = vec![7u8; response];
    let mut sent = 0;
    let _ = tokio::time::timeout(Duration::from_secs(1), async {
        while sent < data.len() {
            let n = inb.write(&data[sent..]).await.unwrap();
            sent += n;
        }
    })
    .await;
    drop(out);
    sent
}

#[tokio::test(start_paused = true)]
async fn a_whole_chunk_response_fits_the_window_of_a_stream_we_opened() {
    let response = (1 << 20) + 100; // the largest default chunk and its frame header
    let mut cfg = Config::default();
    cfg.set_outbound_stream_window(WINDOW);
    let sent = written_before_any_read(cfg, response).await;
    assert_eq!(sent, response, "the response waited for a window update");
}

#[tokio::test(start_paused = true)]
async fn by_default_the_response_stops_at_256_kib_as_upstream() {
    assert_eq!(yamux::default_outbound_stream_window(), DEFAULT_CREDIT);
    let sent = written_before_any_read(Config::default(), 1 << 20).await;
    assert_eq!(sent, DEFAULT_CREDIT as usize);

    // The process-wide default reaches configs made afterwards, as the
    // daemon sets it from `stream_window_kib` before building its transport
    // (libp2p-yamux makes its config with `default()`). Restored at once:
    // nothing else in this binary reads the default.
    yamux::set_default_outbound_stream_window(WINDOW);
    let cfg = Config::default();
    yamux::set_default_outbound_stream_window(DEFAULT_CREDIT);
    let sent = written_before_any_read(cfg, 1 << 20).await;
    assert_eq!(sent, 1 << 20);
}
