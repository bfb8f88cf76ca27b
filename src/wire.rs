//! PDUs over an async byte stream: a cancel-safe reader and a batching vectored writer.
//! Shared by the target's connection driver and the initiator.

use std::collections::VecDeque;
use std::io::{self, IoSlice};
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::pdu::{Digests, EncodedPdu, Limits, Pdu, PduError};

/// What reading from the stream produced.
#[derive(Debug)]
pub enum ReadEvent {
    Pdu(Pdu),
    /// A PDU that failed to decode; see [`PduError`] for whether the stream can continue.
    Bad(PduError),
    /// The peer closed the connection.
    Eof,
}

/// Buffered PDU reader. [`PduReader::next`] is cancel-safe: bytes read before a cancellation
/// stay in the buffer.
pub struct PduReader<R> {
    inner: R,
    buf: BytesMut,
}

impl<R: AsyncRead + Unpin> PduReader<R> {
    pub fn new(inner: R) -> Self {
        PduReader { inner, buf: BytesMut::with_capacity(64 * 1024) }
    }

    /// Takes the next PDU already buffered, if a whole one is.
    pub fn try_next(&mut self, digests: Digests, limits: Limits) -> Option<ReadEvent> {
        match Pdu::decode(&mut self.buf, digests, limits) {
            Ok(Some(pdu)) => Some(ReadEvent::Pdu(pdu)),
            Ok(None) => None,
            Err(e) => Some(ReadEvent::Bad(e)),
        }
    }

    pub async fn next(&mut self, digests: Digests, limits: Limits) -> io::Result<ReadEvent> {
        self.next_checked(digests, limits, |_| true).await
    }

    /// Like [`PduReader::next`], but gives up (with [`ReadEvent::Eof`]) as soon as a basic
    /// header is buffered that `accept` refuses, instead of waiting for the rest of its PDU.
    pub async fn next_checked(
        &mut self,
        digests: Digests,
        limits: Limits,
        accept: impl Fn(&[u8]) -> bool,
    ) -> io::Result<ReadEvent> {
        loop {
            if self.buf.len() >= crate::pdu::BHS_LEN && !accept(&self.buf[..crate::pdu::BHS_LEN]) {
                return Ok(ReadEvent::Eof);
            }
            if let Some(ev) = self.try_next(digests, limits) {
                return Ok(ev);
            }
            if self.buf.capacity() - self.buf.len() < 4096 {
                self.buf.reserve(64 * 1024);
            }
            if self.inner.read_buf(&mut self.buf).await? == 0 {
                return Ok(ReadEvent::Eof);
            }
        }
    }
}

/// Writes PDUs, gathering header, data and trailer of several PDUs into one `writev`.
///
/// PDUs are queued with [`PduWriter::push`] and written by [`PduWriter::flush`], which is
/// cancel-safe: what a cancelled flush wrote is accounted for, the rest stays queued. This lets
/// the target's connection driver write from the same task that reads, with no hop through a
/// writer task per response.
pub struct PduWriter<W> {
    inner: W,
    queue: VecDeque<EncodedPdu>,
    /// Bytes of `queue[0]` already written.
    written: usize,
    /// Bytes queued and not yet written.
    pending: usize,
    /// Bytes written since the writer was made.
    written_total: u64,
}

/// Most bytes gathered into one vectored write.
const BATCH_BYTES_MAX: usize = 4 << 20;
/// Most slices gathered into one vectored write (IOV_MAX is 1024 on Linux).
const BATCH_SLICES_MAX: usize = 512;

impl<W: AsyncWrite + Unpin> PduWriter<W> {
    pub fn new(inner: W) -> Self {
        PduWriter { inner, queue: VecDeque::new(), written: 0, pending: 0, written_total: 0 }
    }

    /// Queues a PDU; nothing is written until [`PduWriter::flush`].
    pub fn push(&mut self, pdu: EncodedPdu) {
        self.pending += pdu.len();
        self.queue.push_back(pdu);
    }

    /// Bytes queued and not yet written.
    pub fn pending(&self) -> usize {
        self.pending
    }

    /// Bytes written so far (progress of a slow reader shows here even while more is queued).
    pub fn written_total(&self) -> u64 {
        self.written_total
    }

    /// Queues one PDU and writes everything queued.
    pub async fn write(&mut self, pdu: EncodedPdu) -> io::Result<()> {
        self.push(pdu);
        self.flush().await
    }

    /// Writes everything queued. Cancel-safe.
    pub async fn flush(&mut self) -> io::Result<()> {
        std::future::poll_fn(|cx| self.poll_flush(cx)).await
    }

    fn poll_flush(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while !self.queue.is_empty() {
            let slices = front_slices(&self.queue, self.written);
            let n = match Pin::new(&mut self.inner).poll_write_vectored(cx, &slices) {
                Poll::Ready(Ok(0)) => {
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::WriteZero,
                        "connection closed while writing",
                    )));
                }
                Poll::Ready(Ok(n)) => n,
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => return Poll::Pending,
            };
            drop(slices);
            self.advance(n);
        }
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    /// Accounts for `n` more bytes written, dropping the PDUs written whole.
    fn advance(&mut self, mut n: usize) {
        self.pending -= n;
        self.written_total += n as u64;
        while let Some(front) = self.queue.front() {
            let left = front.len() - self.written;
            if n < left {
                self.written += n;
                return;
            }
            n -= left;
            self.written = 0;
            self.queue.pop_front();
        }
    }

    pub async fn shutdown(&mut self) -> io::Result<()> {
        self.inner.shutdown().await
    }
}

/// The unwritten bytes at the front of the queue (`written` bytes of its first PDU are out), as at most one batch of slices.
fn front_slices(queue: &VecDeque<EncodedPdu>, written: usize) -> Vec<IoSlice<'_>> {
    let mut slices = Vec::with_capacity(BATCH_SLICES_MAX.min(queue.len() * 3));
    let mut skip = written;
    let mut bytes = 0;
    'pdus: for p in queue {
        for s in [&p.header[..], &p.data[..], p.trailer()] {
            if skip >= s.len() {
                skip -= s.len();
                continue;
            }
            let s = &s[skip..];
            skip = 0;
            if slices.len() == BATCH_SLICES_MAX || (bytes > 0 && bytes + s.len() > BATCH_BYTES_MAX) {
                break 'pdus;
            }
            bytes += s.len();
            slices.push(IoSlice::new(s));
        }
    }
    slices
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pdu::{NopOut, ScsiCommand};
    use bytes::Bytes;

    #[tokio::test]
    async fn pdus_round_trip_through_a_stream_in_batches() {
        let (a, b) = tokio::io::duplex(1024); // small buffer: forces partial writes
        let digests = Digests { header: true, data: true };
        let sent: Vec<Pdu> = (0..20)
            .map(|i| {
                if i % 2 == 0 {
                    Pdu::with_data(
                        NopOut { itt: i, ..Default::default() },
                        Bytes::from(vec![i as u8; 1000 + i as usize]),
                    )
                } else {
                    Pdu::new(ScsiCommand { itt: i, ..Default::default() })
                }
            })
            .collect();
        let encoded: Vec<EncodedPdu> = sent.iter().map(|p| p.encode(digests)).collect();
        let writer = tokio::spawn(async move {
            let mut w = PduWriter::new(a);
            for p in encoded {
                w.push(p);
            }
            w.flush().await.unwrap();
            w.shutdown().await.unwrap();
        });
        let mut r = PduReader::new(b);
        let limits = Limits { data_segment_len_max: 8192 };
        for want in &sent {
            match r.next(digests, limits).await.unwrap() {
                ReadEvent::Pdu(got) => assert_eq!(&got, want),
                other => panic!("{other:?}"),
            }
        }
        assert!(matches!(r.next(digests, limits).await.unwrap(), ReadEvent::Eof));
        writer.await.unwrap();
    }

    #[tokio::test]
    async fn a_cancelled_flush_loses_nothing() {
        let (a, b) = tokio::io::duplex(700);
        let digests = Digests::default();
        let sent: Vec<Pdu> = (0..12)
            .map(|i| {
                Pdu::with_data(NopOut { itt: i, ..Default::default() }, Bytes::from(vec![i as u8; 300 + i as usize]))
            })
            .collect();
        let mut w = PduWriter::new(a);
        for p in &sent {
            w.push(p.encode(digests));
        }
        let total: usize = sent.iter().map(|p| p.encode(digests).len()).sum();
        assert_eq!(w.pending(), total);
        // Nobody reads: the flush fills the pipe, then waits, and is cancelled mid-PDU.
        let cancelled = futures::FutureExt::now_or_never(w.flush());
        assert!(cancelled.is_none(), "a 700-byte pipe cannot take {total} bytes");
        assert_eq!(w.pending(), total - 700, "what the cancelled flush wrote is accounted for");
        let reader = tokio::spawn(async move {
            let mut r = PduReader::new(b);
            let limits = Limits { data_segment_len_max: 8192 };
            let mut got = Vec::new();
            while let ReadEvent::Pdu(p) = r.next(digests, limits).await.unwrap() {
                got.push(p);
            }
            got
        });
        w.flush().await.unwrap();
        assert_eq!(w.pending(), 0);
        w.shutdown().await.unwrap();
        drop(w);
        assert_eq!(reader.await.unwrap(), sent);
    }
}
