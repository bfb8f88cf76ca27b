//! A volume written by an earlier rtgt opens in this one and reads what was acknowledged.
//!
//! `tests/fixtures/volumes/2026-12-04-c815f56/` is the embedded store of rtgt built from commit
//! c815f56 (the first with the crash-safe local store), made so:
//!
//! ```text
//! OLD=<c815f56's target/debug/rtgt>; D=/tmp/oldvol
//! $OLD serve --config tests/fixtures/volumes/c815f56-serve.toml &   # two S3 LUNs on the
//!                     # embedded store, s3://vols/old and s3://vols/old-logs, 256KiB in chunks
//!                     # of 64KiB ($D = /tmp/oldvol)
//! rtgt bench-load --portal 127.0.0.1:23260 --target iqn.2026-12.dev.rtgt:old --lun 1 \
//!     --pattern fill --block-size 32768 --queue-depth 1 --fua true --seconds 30
//! rtgt bench-load ... --lun 2 --pattern fill --block-size 4096 ...   # the same, 4 KiB writes
//! kill -9 $!          # no clean close: the old leases stay, and LUN 2's writes are only logs
//! cp -r $D/data/s3/. tests/fixtures/volumes/2026-12-04-c815f56/      # without the lock file
//! ```
//!
//! Every write was acknowledged with FUA, so every block holds bench-load's pattern for its
//! write size. `old` holds 4 chunk objects; `old-logs` 64 log objects of that version's format
//! and no chunk.

use std::path::Path;
use std::sync::Arc;

use rtgt::clock::TokioClock;
use rtgt::s3::local::{LocalOptions, LocalRoot, Offload, StdFs};
use rtgt::s3::url::S3Url;
use rtgt::s3::volume::{S3Volume, VolumeOptions};
use rtgt::storage::BlockStore;

const SIZE: u64 = 256 * 1024;

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let path = entry.path();
        match entry.file_type().unwrap().is_dir() {
            true => copy_dir(&path, &to.join(entry.file_name())),
            false => {
                std::fs::copy(&path, to.join(entry.file_name())).unwrap();
            }
        }
    }
}

/// Both volumes of the fixture open (logs replayed, the crashed holder's lease waited out) and
/// every block reads what the old version acknowledged.
#[tokio::test(start_paused = true)]
async fn volumes_written_by_an_earlier_version_open_with_their_data() {
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/volumes/2026-12-04-c815f56");
    assert!(fixture.is_dir(), "the fixture is missing: {}", fixture.display());
    let dir = tempfile::tempdir().unwrap();
    copy_dir(&fixture, dir.path());
    // Inline: the store's file I/O runs on this task, so paused time only moves when it waits.
    let options =
        LocalOptions { offload: Offload::Inline, etag_seed: 1 << 40, durable: true, remember_clean_close: false };
    let root = LocalRoot::open(Arc::new(StdFs), dir.path(), options).unwrap();
    let store = Arc::new(root.bucket("vols").unwrap());
    for (name, write) in [("old", 32 * 1024), ("old-logs", 4096)] {
        let opts = VolumeOptions { holder: "upgraded".into(), ..VolumeOptions::default() };
        let url = S3Url::parse(&format!("s3://vols/{name}")).unwrap();
        let volume = S3Volume::open(store.clone(), url, opts, Arc::new(TokioClock::new())).await.unwrap();
        assert_eq!(volume.capacity(), SIZE);
        let pattern: Vec<u8> = (0..write).map(|i| (i % 251) as u8 ^ 0x5a).collect();
        let data = volume.read(0, SIZE as usize).await.unwrap();
        for (n, block) in data.chunks(write).enumerate() {
            assert!(block == &pattern[..], "{name}: write {n} (at {} KiB) does not read back", n * write / 1024);
        }
        volume.close().await.unwrap();
    }
}
