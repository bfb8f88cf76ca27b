//! PDUs over an async byte stream: a cancel-safe reader and a batching vectored writer.
//! Shared by the target's connection driver and the initiator.

use std::io::{self, IoSlice};

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;

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
pub struct PduWriter<W> {
    inner: W,
}

/// Most bytes gathered into one vectored write.
const BATCH_BYTES_MAX: usize = 4 << 20;
/// Most slices gathered into one vectored write (IOV_MAX is 1024 on Linux).
const BATCH_SLICES_MAX: usize = 512;

impl<W: AsyncWrite + Unpin> PduWriter<W> {
    pub fn new(inner: W) -> Self {
        PduWriter { inner }
    }

    pub async fn write(&mut self, pdu: &EncodedPdu) -> io::Result<()> {
        self.write_batch(std::slice::from_ref(pdu)).await
    }

    /// Writes every PDU of the batch, in order, with as few syscalls as the socket allows.
    pub async fn write_batch(&mut self, pdus: &[EncodedPdu]) -> io::Result<()> {
        let mut slices: Vec<&[u8]> = Vec::with_capacity(pdus.len() * 3);
        for p in pdus {
            for s in [&p.header[..], &p.data[..], p.trailer()] {
                if !s.is_empty() {
                    slices.push(s);
                }
            }
        }
        write_all_vectored(&mut self.inner, &slices).await?;
        self.inner.flush().await
    }

    pub async fn shutdown(&mut self) -> io::Result<()> {
        self.inner.shutdown().await
    }

    /// Runs the writer as a task fed by a channel until the channel closes or a write fails.
    /// Batches whatever is queued into one vectored write.
    pub async fn run(mut self, mut rx: mpsc::Receiver<EncodedPdu>) -> io::Result<()> {
        let mut batch: Vec<EncodedPdu> = Vec::new();
        while let Some(first) = rx.recv().await {
            batch.clear();
            let mut bytes = first.len();
            batch.push(first);
            while bytes < BATCH_BYTES_MAX && batch.len() * 3 < BATCH_SLICES_MAX {
                match rx.try_recv() {
                    Ok(p) => {
                        bytes += p.len();
                        batch.push(p);
                    }
                    Err(_) => break,
                }
            }
            self.write_batch(&batch).await?;
        }
        let _ = self.inner.shutdown().await;
        Ok(())
    }
}

async fn write_all_vectored<W: AsyncWrite + Unpin>(w: &mut W, slices: &[&[u8]]) -> io::Result<()> {
    let mut index = 0;
    let mut offset = 0;
    while index < slices.len() {
        let io: Vec<IoSlice<'_>> = std::iter::once(&slices[index][offset..])
            .chain(slices[index + 1..].iter().copied())
            .take(BATCH_SLICES_MAX)
            .map(IoSlice::new)
            .collect();
        let mut n = w.write_vectored(&io).await?;
        if n == 0 {
            return Err(io::Error::new(io::ErrorKind::WriteZero, "connection closed while writing"));
        }
        while n > 0 {
            let left = slices[index].len() - offset;
            if n >= left {
                n -= left;
                index += 1;
                offset = 0;
            } else {
                offset += n;
                n = 0;
            }
        }
    }
    Ok(())
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
            w.write_batch(&encoded).await.unwrap();
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
}
