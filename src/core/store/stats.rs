//! What a store reports of itself: counters for the management API (`/v1/stats`), `rtgt
//! status` and the logs. One type per kind of store, tagged by `kind` in JSON, so that a
//! reader matches on a variant instead of probing a JSON object for keys.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum StoreStats {
    /// A store that counts nothing of its own (memory, null, a snapshot served read-only).
    Plain,
    /// Not open yet (its S3 volume is unreachable or leased elsewhere): why.
    NotReady { reason: String },
    /// A file or block device through positioned I/O.
    File(FileStats),
    /// A file or block device through io_uring.
    Uring(UringStats),
    /// An S3 volume.
    S3Volume(Box<VolumeStats>),
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct FileStats {
    /// Reads served on the calling task from the page cache (RWF_NOWAIT).
    pub cached_reads: u64,
    /// Reads handed to the store's threads.
    pub pool_reads: u64,
    /// Plain writes made on the calling task into the page cache, and of them those that took
    /// long enough to send the next writes to the store's writer thread.
    pub inline_writes: u64,
    pub slow_inline_writes: u64,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct UringStats {
    /// Whether the file is opened with O_DIRECT.
    pub direct: bool,
}

/// The counters of an S3 volume: its shape, its cache, its logs and merges, its journal and
/// the requests it made.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct VolumeStats {
    /// `s3://bucket/prefix`.
    pub volume: String,
    pub block_size: u64,
    pub chunk_size: u64,
    pub chunks: u64,
    /// Written and not yet merged into chunk objects.
    pub dirty_bytes: u64,
    /// Written and not yet in a log object (or the local journal).
    pub unlogged_bytes: u64,
    pub cache_bytes: u64,
    pub cache_limit: u64,
    pub cache_peak_bytes: u64,
    pub memory_peak_bytes: u64,
    pub read_bytes_cached: u64,
    pub read_bytes_fetched: u64,
    pub read_bytes_disk: u64,
    pub disk_cache_bytes: u64,
    pub readahead_bytes: u64,
    /// Log objects not yet merged.
    pub logs: u64,
    pub logs_written: u64,
    pub log_bytes_written: u64,
    pub merges: u64,
    pub flush_errors: u64,
    pub flush_latency_avg_us: u64,
    pub flush_latency_max_us: u64,
    pub chunks_deleted: u64,
    pub versions_swept: u64,
    /// Whether SYNCHRONIZE CACHE waits for a local journal rather than for S3.
    pub journal: bool,
    pub journal_logs: u64,
    pub journal_bytes: u64,
    pub journal_writes: u64,
    pub journal_uploads: u64,
    /// How long S3 has failed to answer (0: it answers).
    pub s3_unreachable_ms: u64,
    pub s3: ObjectStoreStats,
}

/// Requests an object store client made, and what they moved.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ObjectStoreStats {
    pub requests: RequestCounts,
    pub bytes_up: u64,
    pub bytes_down: u64,
    pub errors: u64,
    pub retries: u64,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct RequestCounts {
    pub get: u64,
    pub put: u64,
    pub delete: u64,
    /// DeleteObjects requests (each deletes many keys).
    pub delete_many: u64,
    pub list: u64,
    pub head: u64,
}

impl StoreStats {
    /// The S3 volume's counters, if this is one.
    pub fn volume(&self) -> Option<&VolumeStats> {
        match self {
            StoreStats::S3Volume(v) => Some(v),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The JSON names readers rely on: `kind` and the fields beside it.
    #[test]
    fn stats_are_tagged_by_kind_in_json() {
        let file = FileStats { cached_reads: 2, pool_reads: 3, inline_writes: 4, slow_inline_writes: 1 };
        let file = serde_json::to_value(StoreStats::File(file)).unwrap();
        let expected = serde_json::json!({
            "kind": "file", "cached_reads": 2, "pool_reads": 3, "inline_writes": 4, "slow_inline_writes": 1
        });
        assert_eq!(file, expected);
        let pending = StoreStats::NotReady { reason: "leased".into() };
        assert_eq!(
            serde_json::to_value(&pending).unwrap(),
            serde_json::json!({"kind": "not_ready", "reason": "leased"})
        );
        let volume = StoreStats::S3Volume(Box::new(VolumeStats { dirty_bytes: 7, ..VolumeStats::default() }));
        let json = serde_json::to_value(&volume).unwrap();
        assert_eq!((json["kind"].as_str(), json["dirty_bytes"].as_u64()), (Some("s3_volume"), Some(7)));
        assert_eq!(serde_json::from_value::<StoreStats>(json).unwrap(), volume, "it reads back");
    }
}
