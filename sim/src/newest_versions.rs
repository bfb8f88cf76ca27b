//! The oracle of the versioned layout's tombstone rule: a chunk's newest version is never
//! deleted while it is the newest, so every version that was ever PUT (or DELETEd, which
//! only follows a PUT) is older than some version still there. Were it not so, a late PUT of
//! that version (a zombie request) would become the chunk's data again over zeros or newer
//! data. Checked against every mutation that landed, once the store is quiet.

use std::collections::BTreeMap;

use bytes::Bytes;

use rtgt::s3::volume::format;

use crate::mem_s3::Landed;

/// Between a volume's prefix and a chunk's index in a chunk key.
const CHUNKS: &str = "/chunks/";

/// The chunk (its key prefix `<volume>/chunks/<index>/`) and version a key names, if it
/// names a chunk version.
fn chunk_version(key: &str) -> Option<(&str, u64)> {
    let chunks_dir = key.find(CHUNKS)? + CHUNKS.len();
    let (_, version) = format::parse_chunk_key(key, &key[..chunks_dir], format::ChunkLayout::Versioned)?;
    Some((&key[..key.rfind('/')? + 1], version?))
}

/// Whether the metadata of the volume that `chunk` is in says a deletion of it began.
fn deletion_began(objects: &BTreeMap<String, Bytes>, chunk: &str) -> bool {
    let volume = chunk.split(CHUNKS).next().unwrap_or_default();
    let meta = objects.get(&crate::recovery_image::meta_key(volume));
    meta.and_then(|body| format::VolumeMeta::parse(body).ok()).is_some_and(|m| m.deleting)
}

/// The first chunk (of a volume still there and not being deleted) whose newest version now
/// is older than a version of it that a mutation touched.
pub fn lost_newest(objects: &BTreeMap<String, Bytes>, landed: &[Landed]) -> Option<String> {
    let mut newest_now: BTreeMap<&str, u64> = BTreeMap::new();
    for key in objects.keys() {
        if let Some((chunk, v)) = chunk_version(key) {
            let n = newest_now.entry(chunk).or_default();
            *n = (*n).max(v);
        }
    }
    let mut newest_touched: BTreeMap<&str, (u64, &str)> = BTreeMap::new();
    for l in landed {
        if let Some((chunk, v)) = chunk_version(&l.key)
            && newest_touched.get(chunk).is_none_or(|&(n, _)| v > n)
        {
            newest_touched.insert(chunk, (v, &l.key));
        }
    }
    for (chunk, (v, key)) in newest_touched {
        if crate::recovery_image::volume_gone(objects, key) || deletion_began(objects, chunk) {
            continue; // the volume was deleted, or is being deleted: its objects go with it
        }
        match newest_now.get(chunk) {
            Some(&n) if n >= v => {}
            now => {
                return Some(format!(
                    "tombstone rule: {key} was written, and the newest version of its chunk now is {}: \
                     a late PUT of it would be the chunk's data again",
                    now.map_or("none".to_string(), |n| format!("{n:016x}"))
                ));
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn landed(key: &str) -> Landed {
        Landed { at: Duration::ZERO, host: "target", key: key.to_string() }
    }

    #[test]
    fn a_chunk_that_lost_every_version_breaks_the_rule_and_a_tombstone_keeps_it() {
        let v1 = "v/chunks/0000000000000000/0000000000000001";
        let t2 = "v/chunks/0000000000000000/0000000000000002";
        let mut objects: BTreeMap<String, Bytes> = BTreeMap::new();
        objects.insert(format!("v/{}", rtgt::s3::volume::META_NAME), Bytes::new());
        assert!(lost_newest(&objects, &[landed(v1), landed(v1)]).is_some(), "deleted, nothing newer");
        objects.insert(t2.to_string(), Bytes::new());
        assert_eq!(lost_newest(&objects, &[landed(v1), landed(t2), landed(v1)]), None);
    }

    #[test]
    fn a_volume_whose_deletion_began_is_not_checked() {
        let plain = br#"{"format_version": 3, "size": 1048576, "block_size": 512, "chunk_size": 65536, "uuid": "u", "created_unix_secs": 0}"#;
        let mut meta = format::VolumeMeta::parse(plain).unwrap();
        let mut objects: BTreeMap<String, Bytes> = BTreeMap::new();
        let v1 = landed("v/chunks/0000000000000000/0000000000000001");
        objects.insert(format!("v/{}", rtgt::s3::volume::META_NAME), meta.encode());
        assert!(lost_newest(&objects, std::slice::from_ref(&v1)).is_some());
        meta.deleting = true;
        objects.insert(format!("v/{}", rtgt::s3::volume::META_NAME), meta.encode());
        assert_eq!(lost_newest(&objects, &[v1]), None);
    }

    #[test]
    fn a_deleted_volume_and_keys_that_name_no_chunk_version_are_not_checked() {
        let objects = BTreeMap::new();
        assert_eq!(lost_newest(&objects, &[landed("v/chunks/0000000000000000/0000000000000001")]), None);
        assert_eq!(chunk_version("v/chunks/0000000000000000"), None);
        assert_eq!(chunk_version("v/log/0000000000000001"), None);
    }
}
