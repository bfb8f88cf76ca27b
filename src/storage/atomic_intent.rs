//! All-or-nothing writes to a file or block device, which the kernel does not promise: a write
//! may be cut by a power loss, or by a fatal signal between two pages. The write is first
//! recorded whole in an intent file and made durable there; then written in place and made
//! durable; then the record is cleared, durably too, so that a later write to the same blocks
//! is never undone by a replay. At open, a record that checks out is written in place again:
//! either the write happened completely, or (a record cut short fails its checksum) it never
//! began in place.
//!
//! Record: magic, offset (u64 LE), length (u32 LE), CRC-32C of those and the data, the data.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

const MAGIC: &[u8; 8] = b"RTGTAIW1";
const HEADER: usize = 24;

/// The intent file of one backing file: one record at a time.
pub struct IntentLog {
    file: Mutex<File>,
    path: PathBuf,
}

impl IntentLog {
    /// Opens (creating) the intent file at `path`.
    pub fn open(path: &Path) -> io::Result<IntentLog> {
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)?;
        }
        let file = OpenOptions::new().read(true).write(true).create(true).truncate(false).open(path)?;
        Ok(IntentLog { file: Mutex::new(file), path: path.to_path_buf() })
    }

    /// Writes `data` at `offset` of `target` all or nothing; durable on return.
    pub fn write(&self, target: &File, offset: u64, data: &[u8]) -> io::Result<()> {
        let intents = self.file.lock().expect("poisoned");
        intents.write_all_at(&encode(offset, data), 0)?;
        intents.sync_data()?;
        target.write_all_at(data, offset)?;
        target.sync_data()?;
        clear(&intents)
    }

    /// Finishes the write a crash interrupted, if a complete record is there: writes it in place
    /// (within `capacity`), makes it durable and clears the record. Returns what it replayed.
    pub fn recover(&self, target: &File, capacity: u64) -> io::Result<Option<(u64, usize)>> {
        let intents = self.file.lock().expect("poisoned");
        let Some((offset, data)) = decode(&intents)? else { return Ok(None) };
        if offset.checked_add(data.len() as u64).is_none_or(|end| end > capacity) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!(
                    "{} records a write of {} bytes at {offset}, beyond the {capacity} bytes of the store",
                    self.path.display(),
                    data.len()
                ),
            ));
        }
        target.write_all_at(&data, offset)?;
        target.sync_data()?;
        clear(&intents)?;
        Ok(Some((offset, data.len())))
    }
}

fn encode(offset: u64, data: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER + data.len());
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&offset.to_le_bytes());
    out.extend_from_slice(&(data.len() as u32).to_le_bytes());
    let crc = crc32c::crc32c_append(crc32c::crc32c(&out[8..20]), data);
    out.extend_from_slice(&crc.to_le_bytes());
    out.extend_from_slice(data);
    out
}

/// The complete record in the intent file, if there is one.
fn decode(intents: &File) -> io::Result<Option<(u64, Vec<u8>)>> {
    let mut header = [0u8; HEADER];
    match intents.read_exact_at(&mut header, 0) {
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(None),
        other => other?,
    }
    if &header[..8] != MAGIC {
        return Ok(None);
    }
    let offset = u64::from_le_bytes(header[8..16].try_into().expect("8 bytes"));
    let len = u32::from_le_bytes(header[16..20].try_into().expect("4 bytes")) as usize;
    let crc = u32::from_le_bytes(header[20..24].try_into().expect("4 bytes"));
    // A length no store would accept is a damaged header: never allocate for it.
    if len as u64 > super::ATOMIC_WRITE_MAX {
        return Ok(None);
    }
    let mut data = vec![0u8; len];
    match intents.read_exact_at(&mut data, HEADER as u64) {
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(None),
        other => other?,
    }
    let complete = crc32c::crc32c_append(crc32c::crc32c(&header[8..20]), &data) == crc;
    Ok(complete.then_some((offset, data)))
}

/// Clears the record durably (its magic is one sector's worth, written whole).
fn clear(intents: &File) -> io::Result<()> {
    intents.write_all_at(&[0u8; 8], 0)?;
    intents.sync_data()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn setup(name: &str) -> (PathBuf, File, IntentLog) {
        let dir = std::env::temp_dir().join(format!("rtgt-intent-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let target =
            OpenOptions::new().read(true).write(true).create(true).truncate(true).open(dir.join("disk")).unwrap();
        target.set_len(1 << 20).unwrap();
        let log = IntentLog::open(&dir.join("intents").join("disk.intent")).unwrap();
        (dir, target, log)
    }

    fn read(target: &File, offset: u64, len: usize) -> Vec<u8> {
        let mut buf = vec![0u8; len];
        target.read_exact_at(&mut buf, offset).unwrap();
        buf
    }

    #[test]
    fn a_write_lands_whole_and_leaves_no_record() {
        let (dir, target, log) = setup("whole");
        log.write(&target, 4096, &[7u8; 8192]).unwrap();
        assert_eq!(read(&target, 4096, 8192), vec![7u8; 8192]);
        assert_eq!(log.recover(&target, 1 << 20).unwrap(), None, "a finished write leaves nothing to replay");
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn a_crash_after_the_record_replays_the_whole_write_at_open() {
        let (dir, target, log) = setup("replay");
        // The crash: the record is durable, nothing reached the target yet.
        {
            let intents = log.file.lock().unwrap();
            intents.write_all_at(&encode(65536, &[9u8; 131072]), 0).unwrap();
        }
        drop(log);
        let log = IntentLog::open(&dir.join("intents").join("disk.intent")).unwrap();
        assert_eq!(log.recover(&target, 1 << 20).unwrap(), Some((65536, 131072)));
        assert_eq!(read(&target, 65536, 131072), vec![9u8; 131072]);
        // Replayed once: a later write to the blocks is not undone by another open.
        target.write_all_at(&[1u8; 512], 65536).unwrap();
        assert_eq!(log.recover(&target, 1 << 20).unwrap(), None);
        assert_eq!(read(&target, 65536, 512), vec![1u8; 512]);
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn a_record_cut_short_or_damaged_is_not_replayed() {
        let (dir, target, log) = setup("torn");
        let record = encode(0, &[5u8; 4096]);
        let intents = log.file.lock().unwrap();
        // Cut short: the power went while the record was written; the target was not touched.
        intents.write_all_at(&record[..HEADER + 1000], 0).unwrap();
        intents.set_len((HEADER + 1000) as u64).unwrap();
        assert_eq!(decode(&intents).unwrap(), None);
        // Whole length, but a byte of the data never made it.
        let mut damaged = record.clone();
        damaged[HEADER + 4000] ^= 0xff;
        intents.write_all_at(&damaged, 0).unwrap();
        assert_eq!(decode(&intents).unwrap(), None);
        intents.write_all_at(&record, 0).unwrap();
        assert_eq!(decode(&intents).unwrap(), Some((0, vec![5u8; 4096])));
        drop(intents);
        assert!(log.recover(&target, 2048).is_err(), "a record beyond the store is refused, not applied");
        assert_eq!(read(&target, 0, 4096), vec![0u8; 4096]);
        std::fs::remove_dir_all(dir).unwrap();
    }
}
