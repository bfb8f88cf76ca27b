//! The snapshot manifest: `snapshots/<name>.json` beside a volume of the versioned layout,
//! the chunk versions that held the volume's data when the snapshot was taken. A snapshot
//! is nothing but this object: the versions it names are kept (never swept) while it exists.
//! Pure: no I/O, so every rule here is checked by unit tests.
//!
//! The body is JSON with a format number; its CRC32C travels in the object's metadata
//! ([`super::format::CRC_METADATA`]), so a damaged manifest is refused, never read as a
//! snapshot with chunks missing (which would read as zeros).

use std::collections::BTreeMap;

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use super::format::CRC_METADATA;
use crate::s3::url::S3Url;
pub use crate::storage::snapshots::SnapshotName;

/// Where the manifests live, under the volume's prefix.
pub const SNAPSHOTS_DIR: &str = "snapshots/";
/// The manifest format this rtgt writes and reads.
pub const MANIFEST_FORMAT: u32 = 1;

/// A frozen view of a volume.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    pub format: u32,
    pub name: SnapshotName,
    /// The volume's uuid: a manifest copied beside another volume is refused.
    pub volume_uuid: String,
    pub created_unix_secs: u64,
    /// The volume's size when the snapshot was taken (a later resize does not change it).
    pub size: u64,
    /// Per chunk holding data: the version of the volume's own that held it. Chunks absent
    /// from both maps read as zeros.
    pub chunks: BTreeMap<u64, u64>,
    /// A clone's snapshot: per chunk it had not written, the version of an ancestor (a
    /// clone's own snapshot) it read through to.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub inherited: BTreeMap<u64, Inherited>,
}

/// A chunk version of another volume (a clone's parent, or further up).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Inherited {
    /// That volume's key prefix ("" or "prefix/"), in the same bucket.
    pub prefix: String,
    pub version: u64,
}

impl Manifest {
    pub fn key(url: &S3Url, name: &SnapshotName) -> String {
        url.key(&format!("{SNAPSHOTS_DIR}{name}.json"))
    }

    /// The key of chunk `c`'s version in this snapshot of the volume whose key prefix is
    /// `prefix`; None if it reads as zeros.
    pub fn chunk_key(&self, prefix: &str, c: u64) -> Option<String> {
        match (self.chunks.get(&c), self.inherited.get(&c)) {
            (Some(&v), _) => Some(super::format::chunk_version_key_in(prefix, c, v)),
            (None, Some(i)) => Some(super::format::chunk_version_key_in(&i.prefix, c, i.version)),
            (None, None) => None,
        }
    }

    /// What a clone of this snapshot (of the volume whose key prefix is `prefix`) reads through
    /// to, per chunk.
    pub fn as_inherited(&self, prefix: &str) -> BTreeMap<u64, Inherited> {
        let own = self.chunks.iter().map(|(&c, &version)| (c, Inherited { prefix: prefix.to_string(), version }));
        self.inherited.clone().into_iter().chain(own).collect()
    }

    /// Chunks holding data in the snapshot, its own and inherited.
    pub fn holding(&self) -> u64 {
        (self.chunks.len() + self.inherited.keys().filter(|c| !self.chunks.contains_key(c)).count()) as u64
    }

    /// The key prefixes of the volumes this snapshot reads from besides its own.
    pub fn ancestors(&self) -> std::collections::BTreeSet<String> {
        self.inherited.values().map(|i| i.prefix.clone()).collect()
    }

    /// The name in a manifest's key below `dir` (the volume's `snapshots/` prefix).
    pub fn name_of_key(key: &str, dir: &str) -> Option<SnapshotName> {
        SnapshotName::parse(key.strip_prefix(dir)?.strip_suffix(".json")?).ok()
    }

    /// The body and metadata of the manifest object.
    pub fn encode(&self) -> (Bytes, BTreeMap<String, String>) {
        let body = serde_json::to_vec(self).expect("a manifest serializes");
        let crc = crc32c::crc32c(&body).to_string();
        (Bytes::from(body), BTreeMap::from([(CRC_METADATA.to_string(), crc)]))
    }

    /// Parses and checks a manifest object of the volume `uuid`.
    pub fn parse(body: &[u8], metadata: &BTreeMap<String, String>, uuid: &str) -> Result<Manifest, String> {
        let crc = metadata.get(CRC_METADATA).and_then(|c| c.parse::<u32>().ok());
        if crc != Some(crc32c::crc32c(body)) {
            return Err("damaged snapshot manifest (its checksum does not match)".into());
        }
        let manifest: Manifest =
            serde_json::from_slice(body).map_err(|e| format!("unreadable snapshot manifest: {e}"))?;
        if manifest.format != MANIFEST_FORMAT {
            return Err(format!(
                "snapshot manifest format {}, this rtgt reads format {MANIFEST_FORMAT}",
                manifest.format
            ));
        }
        if manifest.volume_uuid != uuid {
            return Err(format!("snapshot {} belongs to volume {}, not {uuid}", manifest.name, manifest.volume_uuid));
        }
        Ok(manifest)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn manifest() -> Manifest {
        Manifest {
            format: MANIFEST_FORMAT,
            name: SnapshotName::parse("before-upgrade_1.2").unwrap(),
            volume_uuid: "u".into(),
            created_unix_secs: 5,
            size: 1 << 30,
            chunks: BTreeMap::from([(0, 7), (9, 1 << 40)]),
            inherited: BTreeMap::from([(3, Inherited { prefix: "base/".into(), version: 2 })]),
        }
    }

    #[test]
    fn a_manifest_round_trips_and_damage_or_strangers_are_refused() {
        let m = manifest();
        let (body, meta) = m.encode();
        assert_eq!(Manifest::parse(&body, &meta, "u").unwrap(), m);
        let mut flipped = body.to_vec();
        flipped[10] ^= 1;
        assert!(Manifest::parse(&flipped, &meta, "u").unwrap_err().contains("damaged"));
        assert!(Manifest::parse(&body, &BTreeMap::new(), "u").unwrap_err().contains("damaged"));
        assert!(Manifest::parse(&body, &meta, "other").unwrap_err().contains("belongs to"));
        assert_eq!(m.chunk_key("vol/", 0).unwrap(), "vol/chunks/0000000000000000/0000000000000007");
        assert_eq!(m.chunk_key("vol/", 3).unwrap(), "base/chunks/0000000000000003/0000000000000002");
        assert_eq!(m.chunk_key("vol/", 4), None);
        assert_eq!(m.holding(), 3);
        let inherited = m.as_inherited("vol/");
        assert_eq!(inherited.len(), 3);
        assert_eq!(inherited[&9], Inherited { prefix: "vol/".into(), version: 1 << 40 });
        let later = Manifest { format: MANIFEST_FORMAT + 1, ..m };
        let (body, meta) = later.encode();
        assert!(Manifest::parse(&body, &meta, "u").unwrap_err().contains("format"));
    }

    #[test]
    fn manifests_are_named_by_their_key() {
        let url = S3Url::parse("s3://bkt/vol").unwrap();
        let name = SnapshotName::parse("s1").unwrap();
        let key = Manifest::key(&url, &name);
        assert_eq!(key, "vol/snapshots/s1.json");
        assert_eq!(Manifest::name_of_key(&key, "vol/snapshots/"), Some(name));
        assert_eq!(Manifest::name_of_key("vol/snapshots/s1.tmp", "vol/snapshots/"), None);
        assert_eq!(Manifest::name_of_key("vol/snapshots/.x.json", "vol/snapshots/"), None);
    }
}
