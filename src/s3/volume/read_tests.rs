//! The read cache: fetched data answers later reads without a request, a stream is read
//! ahead, and data fetched while its chunk's object was replaced is never kept.

use std::sync::Mutex as StdMutex;

use super::*;

const CHUNK_64K: u64 = 64 * 1024;

fn gets(v: &S3Volume) -> u64 {
    v.s3_stats().get.load(Ordering::Relaxed)
}

/// Drops every clean cache entry (what memory pressure would).
fn evict_all_clean(v: &S3Volume) {
    v.evict_clean(&mut v.cache(), u64::MAX);
}

/// Waits until no readahead is in flight.
async fn readahead_settled(v: &S3Volume) {
    loop {
        let released = v.released.notified();
        if v.cache().reading_ahead.is_empty() {
            return;
        }
        released.await;
    }
}

/// A volume of `chunks` chunks of 64 KiB, chunk `c` filled with `c + 1`, merged and reopened
/// (nothing cached).
async fn filled(h: &Harness, chunks: u64) -> Arc<S3Volume> {
    let v = h.open(CHUNK_64K, chunks, "a").await.unwrap();
    for c in 0..chunks {
        v.write(c * CHUNK_64K, Bytes::from(vec![c as u8 + 1; CHUNK_64K as usize]), false).await.unwrap();
    }
    v.close().await.unwrap();
    drop(v);
    h.open(CHUNK_64K, chunks, "a").await.unwrap()
}

#[tokio::test(start_paused = true)]
async fn fetched_segments_answer_later_reads_without_a_request() {
    let h = Harness::new();
    let v = filled(&h, 4).await;
    let before = gets(&v);
    assert_eq!(v.read(CHUNK_64K + 4096, 4096).await.unwrap(), vec![2u8; 4096]);
    assert_eq!(gets(&v), before + 1);
    // The same blocks, and others of the segment the first read fetched whole.
    assert_eq!(v.read(CHUNK_64K + 4096, 4096).await.unwrap(), vec![2u8; 4096]);
    assert_eq!(v.read(CHUNK_64K, 8192).await.unwrap(), vec![2u8; 8192]);
    assert_eq!(gets(&v), before + 1, "answered from the cache");
    // A write over cached blocks is what the next read sees.
    v.write(CHUNK_64K, Bytes::from(vec![9u8; 4096]), false).await.unwrap();
    let got = v.read(CHUNK_64K, 8192).await.unwrap();
    assert_eq!((&got[..4096], &got[4096..]), (&[9u8; 4096][..], &[2u8; 4096][..]));
    assert_eq!(gets(&v), before + 1);
}

#[tokio::test(start_paused = true)]
async fn a_sequential_stream_reads_the_next_chunks_ahead() {
    let h = Harness::new();
    let v = filled(&h, 8).await;
    let before = gets(&v);
    v.read(0, 32 * 1024).await.unwrap();
    // Each read finds its chunk fetched ahead, or being fetched (and waits for it).
    for at in (32 * 1024..8 * CHUNK_64K).step_by(32 * 1024) {
        let c = at / CHUNK_64K;
        let got = v.read(at, 32 * 1024).await.unwrap();
        assert!(got.iter().all(|&b| b == c as u8 + 1), "chunk {c} read {}", got[0]);
    }
    assert_eq!(gets(&v), before + 8, "one GET per chunk");
    let fetched = v.stats.read_bytes_fetched.load(Ordering::Relaxed);
    assert_eq!(fetched, 32 * 1024, "only the first read waited for a GET");
    // Random reads start no readahead.
    evict_all_clean(&v);
    let before = gets(&v);
    for c in [5, 1, 3] {
        v.read(c * CHUNK_64K + 512, 512).await.unwrap();
    }
    readahead_settled(&v).await;
    assert_eq!(gets(&v), before + 3);
}

/// The hazard of a read cache: a GET reads a chunk object, a write and a merge replace the
/// object and the cache drops its (now clean) entry, then the GET answers. Its data is right
/// for the read that sent it, which overlapped the write, but keeping it would serve the old
/// data from then on.
#[tokio::test(start_paused = true)]
async fn data_fetched_while_its_chunk_was_replaced_is_not_kept() {
    let h = Harness::new();
    let v = filled(&h, 2).await;
    h.mem.hold_answers(&format::chunk_key(&url(), 0));
    let reader = tokio::spawn({
        let v = v.clone();
        async move { v.read(0, 4096).await }
    });
    while h.mem.answers_waiting() == 0 {
        tokio::task::yield_now().await;
    }
    v.write(0, Bytes::from(vec![7u8; CHUNK_64K as usize]), false).await.unwrap();
    v.merge_chunk(0).await.unwrap();
    evict_all_clean(&v);
    assert!(!v.cache().entries.contains_key(&0));
    h.mem.release_all();
    let raced = reader.await.unwrap().unwrap();
    assert!(raced.iter().all(|&b| b == 1) || raced.iter().all(|&b| b == 7), "the racing read is one or the other");
    let after = v.read(0, 4096).await.unwrap();
    assert!(after.iter().all(|&b| b == 7), "the replaced data was kept: read {}", after[0]);
}

// ---------------------------------------------------------------- concurrent model

const M_CHUNK: u64 = 4 * BS;
const M_CHUNKS: u64 = 8;
const M_BLOCKS: u64 = M_CHUNK * M_CHUNKS / BS;

#[derive(Debug, Clone)]
enum WriterOp {
    Write {
        lba: u64,
        blocks: u64,
    },
    Unmap {
        lba: u64,
        blocks: u64,
    },
    Flush,
    /// Merge every dirty chunk now.
    Merge,
    /// Drop every clean entry (memory pressure).
    Evict,
    Tick {
        millis: u64,
    },
}

fn m_range() -> impl Strategy<Value = (u64, u64)> {
    (0..M_BLOCKS).prop_flat_map(|lba| (Just(lba), 1..=(M_BLOCKS - lba).min(8)))
}

fn reader_op() -> impl Strategy<Value = ReaderOp> {
    (m_range(), proptest::bool::weighted(0.5), 0u64..20)
        .prop_map(|((lba, blocks), evict, pause)| (lba, blocks, evict, pause))
}

fn writer_op() -> impl Strategy<Value = WriterOp> {
    prop_oneof![
        6 => m_range().prop_map(|(lba, blocks)| WriterOp::Write { lba, blocks }),
        1 => m_range().prop_map(|(lba, blocks)| WriterOp::Unmap { lba, blocks }),
        1 => Just(WriterOp::Flush),
        4 => Just(WriterOp::Merge),
        3 => Just(WriterOp::Evict),
        2 => (1u64..40).prop_map(|millis| WriterOp::Tick { millis }),
    ]
}

/// Per block, every value written in order: (value, event when issued, event when acked).
/// A read of the block that started at event `s` and ended at `e` may see the last value
/// acknowledged before `s`, or any later one issued before `e`; anything older is stale.
struct History {
    events: u64,
    blocks: Vec<Vec<(u8, u64, u64)>>,
}

impl History {
    fn event(&mut self) -> u64 {
        self.events += 1;
        self.events
    }

    fn allowed(&self, block: u64, s: u64, e: u64) -> Vec<u8> {
        let h = &self.blocks[block as usize];
        let first = h.iter().rposition(|&(_, _, acked)| acked < s).unwrap_or(0);
        h[first..].iter().filter(|&&(_, issued, _)| issued < e).map(|&(v, _, _)| v).collect()
    }
}

/// A reader's read: blocks, whether to drop the clean cache first (so that it fetches), and
/// how long to pause before it (so that reads spread over the writer's run).
type ReaderOp = (u64, u64, bool, u64);

async fn run_concurrent(writes: Vec<WriterOp>, reads: Vec<Vec<ReaderOp>>) -> Result<(), TestCaseError> {
    let h = Harness::new();
    h.mem.set_faults(Faults {
        latency: Duration::from_millis(1),
        response_delay: Duration::from_millis(30),
        ..Faults::default()
    });
    let v = h.open(M_CHUNK, M_CHUNKS, "concurrent").await.map_err(|e| TestCaseError::fail(e.to_string()))?;
    let history = Arc::new(StdMutex::new(History { events: 0, blocks: vec![vec![(0, 0, 0)]; M_BLOCKS as usize] }));
    let writer = {
        let (v, history) = (v.clone(), history.clone());
        async move {
            let mut next = 0u8;
            for op in writes {
                let (lba, blocks, value) = match op {
                    WriterOp::Write { lba, blocks } => {
                        next = next % 255 + 1;
                        (lba, blocks, next)
                    }
                    WriterOp::Unmap { lba, blocks } => (lba, blocks, 0),
                    WriterOp::Flush => {
                        v.flush().await.map_err(|e| format!("flush: {e}"))?;
                        continue;
                    }
                    WriterOp::Merge => {
                        let dirty = v.dirty_chunks();
                        v.merge_chunks(&dirty).await.map_err(|e| format!("merge: {e}"))?;
                        continue;
                    }
                    WriterOp::Evict => {
                        evict_all_clean(&v);
                        continue;
                    }
                    WriterOp::Tick { millis } => {
                        tokio::time::sleep(Duration::from_millis(millis)).await;
                        continue;
                    }
                };
                // In the history from when it is issued (a read may see it from then on),
                // acknowledged later.
                let issued = {
                    let mut hist = history.lock().unwrap();
                    let issued = hist.event();
                    for b in lba..lba + blocks {
                        hist.blocks[b as usize].push((value, issued, u64::MAX));
                    }
                    issued
                };
                let result = match value {
                    0 => v.unmap(lba * BS, blocks * BS).await,
                    _ => v.write(lba * BS, Bytes::from(vec![value; (blocks * BS) as usize]), false).await,
                };
                result.map_err(|e| format!("write: {e}"))?;
                let mut hist = history.lock().unwrap();
                let acked = hist.event();
                for b in lba..lba + blocks {
                    let last = hist.blocks[b as usize].last_mut().expect("pushed at issue");
                    debug_assert_eq!(last.1, issued);
                    last.2 = acked;
                }
            }
            Ok::<(), String>(())
        }
    };
    let readers = reads.into_iter().map(|list| {
        let (v, history) = (v.clone(), history.clone());
        async move {
            for (lba, blocks, evict, pause) in list {
                tokio::time::sleep(Duration::from_millis(pause)).await;
                if evict {
                    evict_all_clean(&v);
                }
                let s = history.lock().unwrap().event();
                let data = v.read(lba * BS, (blocks * BS) as usize).await.map_err(|e| format!("read: {e}"))?;
                let hist = history.lock().unwrap();
                let e = hist.events + 1;
                for b in 0..blocks {
                    let got = data[(b * BS) as usize];
                    let allowed = hist.allowed(lba + b, s, e);
                    if !allowed.contains(&got) {
                        return Err(format!("block {} read {got}, allowed {allowed:?}", lba + b));
                    }
                }
            }
            Ok::<(), String>(())
        }
    });
    let (written, read) = futures::future::join(writer, futures::future::join_all(readers)).await;
    written.map_err(TestCaseError::fail)?;
    for r in read {
        r.map_err(TestCaseError::fail)?;
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 300, ..ProptestConfig::default() })]

    /// Readers running beside a writer that merges, unmaps and evicts, against a store whose
    /// answers arrive late: no read returns data older than the last write acknowledged
    /// before it started.
    #[test]
    fn concurrent_reads_never_see_replaced_data(
        writes in proptest::collection::vec(writer_op(), 1..60),
        reads in proptest::collection::vec(proptest::collection::vec(reader_op(), 1..40), 1..4),
    ) {
        let rt = tokio::runtime::Builder::new_current_thread().enable_time().start_paused(true).build().unwrap();
        rt.block_on(run_concurrent(writes, reads))?;
    }
}
