//! A write deadline for a device connection that an attacker cannot stretch: once a write
//! stalls (the client reads slowly or not at all), the whole answer must be out within the
//! deadline. Partial progress (a client reading a byte now and then) does not reset it; only
//! a completed flush, which hyper does after each answer, does.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use cue_common::metrics::Counter;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{sleep, Sleep};

/// `inner` with a write deadline of `timeout` from the first stalled write of each answer.
pub struct WriteDeadline<T> {
    inner: T,
    timeout: Duration,
    /// Running since the first write of this answer that could not go out at once.
    stalled: Option<Pin<Box<Sleep>>>,
    /// Counts connections closed by the deadline.
    expired: Arc<Counter>,
}

impl<T> WriteDeadline<T> {
    /// Wraps `inner`; `expired` counts the connections the deadline ends.
    pub fn new(inner: T, timeout: Duration, expired: Arc<Counter>) -> Self {
        Self {
            inner,
            timeout,
            stalled: None,
            expired,
        }
    }

    /// On a pending write or flush: starts the clock if it is not running; a `TimedOut`
    /// error once it ran out, else pending.
    fn stalled<R>(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<R>> {
        let timeout = self.timeout;
        let s = self.stalled.get_or_insert_with(|| Box::pin(sleep(timeout)));
        if s.as_mut().poll(cx).is_pending() {
            return Poll::Pending;
        }
        self.expired.inc();
        Poll::Ready(Err(io::Error::new(
            io::ErrorKind::TimedOut,
            format!("answer not read within {timeout:?}"),
        )))
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for WriteDeadline<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for WriteDeadline<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match Pin::new(&mut self.inner).poll_write(cx, buf) {
            Poll::Pending => self.stalled(cx),
            done => done,
        }
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match Pin::new(&mut self.inner).poll_write_vectored(cx, bufs) {
            Poll::Pending => self.stalled(cx),
            done => done,
        }
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match Pin::new(&mut self.inner).poll_flush(cx) {
            Poll::Pending => self.stalled(cx),
            Poll::Ready(Ok(())) => {
                // The answer is out: the next one gets a fresh deadline.
                self.stalled = None;
                Poll::Ready(Ok(()))
            }
            err => err,
        }
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test(start_paused = true)]
    async fn a_reader_that_trickles_does_not_stretch_the_deadline() {
        // A pipe with a 1 KiB buffer; the reader takes 100 bytes every 3 s.
        let (a, mut b) = tokio::io::duplex(1024);
        let expired = Arc::new(Counter::default());
        let mut w = WriteDeadline::new(a, Duration::from_secs(10), expired.clone());
        let reader = tokio::spawn(async move {
            let mut buf = [0u8; 100];
            let mut got = 0;
            loop {
                tokio::time::sleep(Duration::from_secs(3)).await;
                match b.read(&mut buf).await {
                    Ok(0) | Err(_) => return got,
                    Ok(n) => got += n,
                }
            }
        });
        let t = tokio::time::Instant::now();
        let answer = vec![7u8; 64 * 1024];
        let r = async {
            w.write_all(&answer).await?;
            w.flush().await
        }
        .await;
        let e = r.expect_err("the deadline ends it");
        assert_eq!(e.kind(), io::ErrorKind::TimedOut);
        let took = t.elapsed();
        assert!(
            took >= Duration::from_secs(10) && took < Duration::from_secs(11),
            "{took:?}"
        );
        assert_eq!(expired.get(), 1);
        drop(w);
        assert!(reader.await.unwrap() < answer.len());
    }

    #[tokio::test(start_paused = true)]
    async fn answers_read_in_time_each_get_a_fresh_deadline() {
        let (a, mut b) = tokio::io::duplex(4096);
        let expired = Arc::new(Counter::default());
        let mut w = WriteDeadline::new(a, Duration::from_secs(10), expired.clone());
        let reader = tokio::spawn(async move {
            let mut buf = vec![0u8; 4096];
            let mut got = 0;
            loop {
                // 4 KiB every 2 s: each 8 KiB answer takes ~4 s, well inside the deadline,
                // and together they take far longer than one deadline.
                tokio::time::sleep(Duration::from_secs(2)).await;
                match b.read(&mut buf).await {
                    Ok(0) | Err(_) => return got,
                    Ok(n) => got += n,
                }
            }
        });
        for _ in 0..5 {
            w.write_all(&[1u8; 8 * 1024]).await.unwrap();
            w.flush().await.unwrap();
        }
        w.shutdown().await.unwrap();
        drop(w);
        assert_eq!(expired.get(), 0);
        assert_eq!(reader.await.unwrap(), 5 * 8 * 1024);
    }
}
