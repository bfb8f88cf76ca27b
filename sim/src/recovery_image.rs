//! What a crash right now would leave of a volume: the chunk objects, and the logs replayed
//! over them the way the volume recovers (oldest first, each record only where its log is newer
//! than its chunk's stamp). The simulation checks it against the model at any moment, as if the
//! target had died then: a durable write missing from it is lost, crash or not.

use std::collections::BTreeMap;

use bytes::Bytes;
use rtgt::s3::volume::format::{self, CHUNKS_DIR, CRC_METADATA, ChunkLayout, LOG_DIR, Record};

/// The volume's bytes as recovery would rebuild them, or why the logs cannot be replayed.
/// `journal`: the local journal's objects (`UUID/log/SEQ`), replayed with the store's logs as
/// one sequence. Chunk bodies are plain (decompressed if the volume compresses them).
pub fn recovery_image(
    objects: &BTreeMap<String, (Bytes, BTreeMap<String, String>)>,
    journal: &BTreeMap<String, Bytes>,
    prefix: &str,
    size: u64,
    chunk: u64,
) -> Result<Vec<u8>, String> {
    let mut image = vec![0u8; size as usize];
    let mut stamps: BTreeMap<u64, u64> = BTreeMap::new();
    let chunks = format!("{prefix}/{CHUNKS_DIR}");
    let logs = format!("{prefix}/{LOG_DIR}");
    let mut replay = Vec::new();
    // Keys in order: of the versions of a chunk (format 3), the newest comes last and wins.
    let chunk_of = |key: &str| {
        format::parse_chunk_key(key, &chunks, ChunkLayout::Versioned)
            .or_else(|| format::parse_chunk_key(key, &chunks, ChunkLayout::Flat))
            .map(|(c, _)| c)
    };
    // Logs below the floor the metadata records were settled: recovery deletes them unread,
    // wherever they are (one can come back: a PUT that landed after its writer gave up).
    let floor = settled_below(objects.get(&meta_key(prefix)).map(|(body, _)| body));
    for (key, (body, meta)) in objects {
        if let Some(c) = chunk_of(key) {
            let at = (c * chunk) as usize;
            // A tombstone (an empty version) reads as zeros.
            let chunk_end = (at + chunk as usize).min(image.len());
            image[at..chunk_end].fill(0);
            let end = (at + body.len()).min(image.len());
            image[at..end].copy_from_slice(&body[..end - at]);
            stamps.insert(c, format::chunk_stamp(meta));
        } else if let Some(seq) = format::key_number(key, &logs).filter(|&seq| seq >= floor) {
            let parsed = format::parse_log(body, meta.get(CRC_METADATA)).map_err(|e| format!("{key}: {e}"))?;
            replay.push((seq, parsed.records));
        }
    }
    for (key, body) in journal {
        let seq = key
            .rsplit_once('/')
            .filter(|(dir, _)| dir.ends_with(LOG_DIR.trim_end_matches('/')) && !dir.contains("stale-"))
            .and_then(|(dir, _)| format::key_number(key, &format!("{dir}/")));
        if let Some(seq) = seq.filter(|&seq| seq >= floor) {
            let parsed = format::parse_log(body, None).map_err(|e| format!("journal {key}: {e}"))?;
            replay.push((seq, parsed.records));
        }
    }
    // A log uploaded and not yet dropped from the journal is there twice: the same records.
    replay.sort_by_key(|(seq, _)| *seq);
    replay.dedup_by_key(|(seq, _)| *seq);
    for (seq, records) in replay {
        for record in records {
            let (offset, len) = record.extent();
            let end = (offset + len).min(size);
            let mut at = offset;
            // Piece by piece within each chunk: a record applies where its log is newer.
            while at < end {
                let piece_end = ((at / chunk + 1) * chunk).min(end);
                if seq > stamps.get(&(at / chunk)).copied().unwrap_or(0) {
                    let dst = &mut image[at as usize..piece_end as usize];
                    match &record {
                        Record::Data { data, .. } => {
                            dst.copy_from_slice(&data[(at - offset) as usize..(piece_end - offset) as usize])
                        }
                        Record::Zero { .. } => dst.fill(0),
                    }
                }
                at = piece_end;
            }
        }
    }
    Ok(image)
}

/// Whether `key` is a log below the floor its volume's metadata (in `objects`) records: one
/// settled before that landed late (a PUT held on its way), which the next open deletes unread.
pub fn settled_log(objects: &BTreeMap<String, Bytes>, key: &str) -> bool {
    let Some((volume, _)) = key.split_once(&format!("/{LOG_DIR}")) else { return false };
    let Some(seq) = format::key_number(key, &format!("{volume}/{LOG_DIR}")) else { return false };
    seq < settled_below(objects.get(&meta_key(volume)))
}

/// Whether `key` is in a volume whose metadata is gone (deleted): an object that lands there
/// after the volume's deletion (a PUT held on its way) has no volume to clean it up.
pub fn volume_gone(objects: &BTreeMap<String, Bytes>, key: &str) -> bool {
    ["/log/", "/chunks/"]
        .iter()
        .any(|dir| key.split_once(dir).is_some_and(|(volume, _)| !objects.contains_key(&meta_key(volume))))
}

/// The key of the metadata object of the volume at `prefix`.
pub fn meta_key(prefix: &str) -> String {
    format!("{prefix}/{}", rtgt::s3::volume::META_NAME)
}

/// The log floor a metadata object records (0 if there is none).
fn settled_below(meta: Option<&Bytes>) -> u64 {
    meta.and_then(|body| format::VolumeMeta::parse(body).ok()).map_or(0, |m| m.logs_settled_below)
}
