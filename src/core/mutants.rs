//! Bugs planted on purpose, for `cargo xtask sim --mutants`: the simulation switches one on
//! and must catch it. They exist only with the `mutants` feature, which production builds
//! never enable; without it, [`active`] is a constant `false` and the planted code vanishes.

/// The planted bugs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Mutant {
    /// SYNCHRONIZE CACHE answers GOOD without waiting for its flush.
    SyncBeforeFlush = 1,
    /// One Data-Out PDU's payload is dropped (the buffer keeps zeros).
    DropDataOut = 2,
    /// The last block of an S3 chunk is written into the next chunk.
    ChunkOffByOne = 3,
    /// UNMAP leaves the partial chunk at its start with stale data.
    UnmapPartialStale = 4,
    /// The CmdSN window is one larger than the queue depth.
    WindowOffByOne = 5,
    /// A connection that drops never releases its session nor wakes whoever waits for it to
    /// close (a lost wake-up): reinstating logins wait for it in vain.
    LostWakeup = 6,
    /// The local object store acknowledges PUTs and DELETEs without fsync.
    LocalStoreNoSync = 7,
    /// An S3 volume's holder goes on writing after its lease could have expired.
    HolderDoesNotFence = 8,
    /// A merge that found a chunk zero writes a zero record (and deletes the chunk) even though
    /// the chunk was written, and that write logged, since its snapshot.
    ZeroMergeSettlesNewerLogs = 9,
    /// A request of the S3 volume whose outcome is unknown (a timeout, a 500) is reported as a
    /// medium error instead of a transient fault.
    TransientIsMediumError = 10,
    /// An upload drops a journal log's local copy without putting it in the object store.
    JournalDroppedUnuploaded = 11,
    /// The read cache keeps data fetched while the chunk's object was being replaced.
    ReadCacheKeepsStale = 12,
    /// The disk cache serves a piece whatever version of its chunk object it was read from.
    DiskCacheIgnoresVersion = 13,
    /// The journal reuses its oldest segment while logs still live in it.
    JournalSegmentReusedLive = 14,
    /// A target of a failover pair goes on serving from its cache after its lease lapsed.
    LapsedHolderServes = 15,
    /// A standby takes the lease of a live holder at once instead of waiting it out.
    StandbyIgnoresLease = 16,
    /// A task management response goes out before the running tasks it aborted complete.
    TmfBeforeAbortedComplete = 17,
    /// An S3 volume's WRITE ATOMIC is a plain write made durable by a flush, which may cut it
    /// into several logs and merges.
    AtomicWriteWithoutItsLog = 18,
    /// The sweep deletes superseded chunk versions a snapshot still holds.
    SweepHeldVersions = 19,
    /// Taking a snapshot notes the chunk versions without merging the dirty chunks first: it
    /// misses acknowledged writes still in the cache or in logs.
    SnapshotSkipsMerge = 20,
    /// A clone opens without the chunks it inherits from its snapshot: it reads zeros there.
    CloneForgetsInherited = 21,
    /// A chunk that became zero loses every version (the newest too) instead of getting a
    /// tombstone: a late PUT of an older version would be its data again.
    ZeroDeletesNewest = 22,
    /// A merge of data no log holds sends its chunk's new version without naming the chunk in
    /// a log first: should its holder die with the PUT on its way, recovery does not write the
    /// chunk again, and the version, landing late, is the chunk's data at the open after.
    MergeUnnamed = 23,
}

impl Mutant {
    pub const ALL: [Mutant; 23] = [
        Mutant::SyncBeforeFlush,
        Mutant::DropDataOut,
        Mutant::ChunkOffByOne,
        Mutant::UnmapPartialStale,
        Mutant::WindowOffByOne,
        Mutant::LostWakeup,
        Mutant::LocalStoreNoSync,
        Mutant::HolderDoesNotFence,
        Mutant::ZeroMergeSettlesNewerLogs,
        Mutant::TransientIsMediumError,
        Mutant::JournalDroppedUnuploaded,
        Mutant::ReadCacheKeepsStale,
        Mutant::DiskCacheIgnoresVersion,
        Mutant::JournalSegmentReusedLive,
        Mutant::LapsedHolderServes,
        Mutant::StandbyIgnoresLease,
        Mutant::TmfBeforeAbortedComplete,
        Mutant::AtomicWriteWithoutItsLog,
        Mutant::SweepHeldVersions,
        Mutant::SnapshotSkipsMerge,
        Mutant::CloneForgetsInherited,
        Mutant::ZeroDeletesNewest,
        Mutant::MergeUnnamed,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Mutant::SyncBeforeFlush => "sync-before-flush",
            Mutant::DropDataOut => "drop-data-out",
            Mutant::ChunkOffByOne => "chunk-off-by-one",
            Mutant::UnmapPartialStale => "unmap-partial-stale",
            Mutant::WindowOffByOne => "window-off-by-one",
            Mutant::LostWakeup => "lost-wakeup",
            Mutant::LocalStoreNoSync => "local-store-no-sync",
            Mutant::HolderDoesNotFence => "holder-does-not-fence",
            Mutant::ZeroMergeSettlesNewerLogs => "zero-merge-settles-newer-logs",
            Mutant::TransientIsMediumError => "transient-is-medium-error",
            Mutant::JournalDroppedUnuploaded => "journal-dropped-unuploaded",
            Mutant::ReadCacheKeepsStale => "read-cache-keeps-stale",
            Mutant::DiskCacheIgnoresVersion => "disk-cache-ignores-version",
            Mutant::JournalSegmentReusedLive => "journal-segment-reused-live",
            Mutant::LapsedHolderServes => "lapsed-holder-serves",
            Mutant::StandbyIgnoresLease => "standby-ignores-lease",
            Mutant::TmfBeforeAbortedComplete => "tmf-before-aborted-complete",
            Mutant::AtomicWriteWithoutItsLog => "atomic-write-without-its-log",
            Mutant::SweepHeldVersions => "sweep-held-versions",
            Mutant::SnapshotSkipsMerge => "snapshot-skips-merge",
            Mutant::CloneForgetsInherited => "clone-forgets-inherited",
            Mutant::ZeroDeletesNewest => "zero-deletes-newest",
            Mutant::MergeUnnamed => "merge-unnamed",
        }
    }
}

/// Whether this build can plant bugs: true only with the `mutants` feature, which the build
/// users get, the tests and conformance run never carries (a test holds that).
pub const ENABLED: bool = cfg!(feature = "mutants");

#[cfg(feature = "mutants")]
static ACTIVE: std::sync::atomic::AtomicU8 = std::sync::atomic::AtomicU8::new(0);

/// Switches a mutant on (or all off with `None`).
#[cfg(feature = "mutants")]
pub fn set(m: Option<Mutant>) {
    ACTIVE.store(m.map_or(0, |m| m as u8), std::sync::atomic::Ordering::Relaxed);
}

#[cfg(feature = "mutants")]
#[inline]
pub fn active(m: Mutant) -> bool {
    ACTIVE.load(std::sync::atomic::Ordering::Relaxed) == m as u8
}

/// Without the feature there is nothing to switch on: only "all off" is accepted.
#[cfg(not(feature = "mutants"))]
pub fn set(m: Option<Mutant>) {
    assert!(m.is_none(), "planting {m:?} needs a build with the mutants feature");
}

#[cfg(not(feature = "mutants"))]
#[inline(always)]
pub const fn active(_: Mutant) -> bool {
    false
}
