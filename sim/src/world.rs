//! One simulated world per seed: the target host running the real engine over turmoil's
//! network, initiator hosts running workloads, an in-memory S3, a simulated disk, and a fault
//! schedule. After the run the oracles are checked.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::path::Path;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use aws_credential_types::Credentials;
use aws_sdk_s3::config::{BehaviorVersion, Region};
use aws_smithy_async::time::{SharedTimeSource, TimeSource};
use bytes::Bytes;
use rtgt::clock::{Clock, TokioClock};
use rtgt::mutants::Mutant;
use rtgt::node::NodeId;
use rtgt::pr_keepers::VolumeKeeper;
use rtgt::rng::Rng;
use rtgt::s3::aws::AwsStore;
use rtgt::s3::local::{CrashFs, LocalOptions, LocalRoot, Offload, SegmentOptions, SegmentStore};
use rtgt::s3::url::S3Url;
use rtgt::s3::volume::compression::ChunkCodec;
use rtgt::s3::volume::{
    Compression, CreateSpec, DISK_CACHE_BUCKET, DiskCacheOptions, JournalOptions, S3Volume, VolumeOptions,
};
use rtgt::s3::{ObjectStore, RetryPolicy};
use rtgt::scsi::{LogicalUnit, LuConfig, LuIdentity};
use rtgt::server::supervisor::{LunOpenError, Opener, Placeholder, supervise};
use rtgt::server::{Registry, Server, Settings, TargetEntry};
use rtgt::storage::{BlockStore, BoxFuture};

use crate::disk::{DiskFaults, Landings, Media, SimDisk};
use crate::mem_s3::{MemS3, S3Faults};
use crate::model::Model;
use crate::net::TurmoilNet;
use crate::snapshots::{Snapshotter, VolumeSlot};
use crate::workload::{self, Shared};

pub const TARGET: &str = "iqn.2026-11.dev.rtgt:sim";
pub const PORT: u16 = 3260;
pub const BLOCKS: u64 = 256;
pub const BLOCK: u64 = 512;
pub const QUEUE_DEPTH: u32 = 8;
pub const CHUNK: u64 = 16 * BLOCK;
pub const BUCKET: &str = "sim";

/// Wall time fixed at the simulation's epoch plus simulated time: deterministic timestamps.
#[derive(Debug, Clone)]
struct SimTime;

const EPOCH_SECS: u64 = 1_790_000_000;
/// The simulation's step: every host's runtime is driven once per tick, which is most of the
/// simulator's own cost. A 2 ms tick made the smoke profile a quarter faster (125 simulated
/// seconds per wall second against 96, 11% fewer commands per simulated second), but the
/// planted bugs that need two events to meet closely were caught less often:
/// `read-cache-keeps-stale` on 3 of seeds 0..100 against 10 (5 with messages taking up to 4 ms),
/// `zero-merge-settles-newer-logs` first at seed 9 against 0. So turmoil's 1 ms.
const TICK: Duration = Duration::from_millis(1);

fn sim_now() -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(EPOCH_SECS) + turmoil::sim_elapsed().unwrap_or_default()
}

impl TimeSource for SimTime {
    fn now(&self) -> SystemTime {
        sim_now()
    }
}

/// tokio's (simulated) clock with a deterministic wall time.
pub struct SimClock(pub TokioClock);

impl Clock for SimClock {
    fn now(&self) -> Duration {
        self.0.now()
    }
    fn sleep_until(&self, deadline: Duration) -> BoxFuture<'static, ()> {
        self.0.sleep_until(deadline)
    }
    fn wall(&self) -> SystemTime {
        sim_now()
    }
}

/// Where LUN 1's volume lives.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Store {
    /// An S3 service outside the target, reached through aws-sdk-s3: atomic, survives crashes,
    /// and fails as the fault schedule says.
    Remote,
    /// The embedded default's local store, in the target's process, on a filesystem that
    /// forgets at a power loss what was not synced.
    Embedded,
}

/// The embedded store's directory.
const EMBEDDED_ROOT: &str = "/data/s3";
/// The local journal's directory (`durability = "local"`).
const JOURNAL_ROOT: &str = "/data/journal";
/// The disk cache's directory (`cache_disk_size`).
const DISK_CACHE_ROOT: &str = "/data/read-cache";

/// What outlives a target crash, and the switches the fault schedule turns.
#[derive(Clone)]
struct Environment {
    store: Store,
    /// SYNCs are durable in a local journal on `fs` (remote S3 only).
    journal: bool,
    /// The S3 volume keeps a disk cache of what it reads on `fs`.
    disk_cache: bool,
    /// The S3 volume's chunks are compressed so.
    compression: Option<Compression>,
    /// Chunk objects as the checks read them.
    chunks: Arc<PlainChunks>,
    s3: MemS3,
    /// The target's disk for the embedded store.
    fs: CrashFs,
    media: Media,
    disk_faults: Arc<Mutex<(DiskFaults, Rng)>>,
    /// The writes that took effect on LUN 0's disk, for [`late_landing`].
    landings: Landings,
    /// The most a write to LUN 0's disk takes.
    disk_write_latency: Duration,
    shutdown: Arc<AtomicBool>,
    shut_down: Arc<AtomicBool>,
    /// Target processes started so far.
    incarnations: Arc<AtomicU64>,
    seed: u64,
}

/// The S3 client of the target: aws-sdk-s3 into the in-memory service, no sockets.
fn s3_store(env: &Environment) -> AwsStore {
    s3_client(env.s3.clone())
}

/// aws-sdk-s3 into (a view of) the in-memory service, no sockets.
pub fn s3_client(s3: MemS3) -> AwsStore {
    let mut b = s3s::service::S3ServiceBuilder::new(s3);
    b.set_auth(s3s::auth::SimpleAuth::from_single("sim", "sim-secret"));
    // Requests are signed with simulated time; the service checks skew against the real clock.
    let mut config = s3s::config::S3Config::default();
    config.presigned_url_max_skew_time_secs = u32::MAX;
    b.set_config(Arc::new(s3s::config::StaticConfigProvider::new(Arc::new(config))));
    let service = b.build();
    let config = aws_sdk_s3::config::Builder::new()
        .behavior_version(BehaviorVersion::latest())
        .region(Region::new("us-east-1"))
        .credentials_provider(Credentials::new("sim", "sim-secret", None, None, "sim"))
        .endpoint_url("http://s3.sim")
        .force_path_style(true)
        .time_source(SharedTimeSource::new(SimTime))
        .sleep_impl(aws_smithy_async::rt::sleep::SharedAsyncSleep::new(aws_smithy_async::rt::sleep::TokioSleep::new()))
        .http_client(rtgt_testkit::InProcessS3::from(service));
    let config = rtgt::s3::aws::with_policies(config).build();
    AwsStore::with_client(aws_sdk_s3::Client::from_conf(config), BUCKET)
}

/// The target's software: built from scratch at every (re)start, as a process would be.
async fn target(env: Environment, shared: Rc<RefCell<Shared>>) -> turmoil::Result {
    let clock: Arc<dyn Clock> = Arc::new(SimClock(TokioClock::new()));
    let registry = Arc::new(Registry::new());
    registry.set_portal_group(1, vec![format!("0.0.0.0:{PORT}").parse().expect("address")]);
    let entry = TargetEntry::new(TARGET, None, [1].into_iter().collect());

    let disk: Arc<dyn BlockStore> = Arc::new(SimDisk::new(
        env.media.clone(),
        BLOCKS * BLOCK,
        BLOCK,
        env.disk_faults.clone(),
        env.landings.clone(),
        (env.disk_write_latency, Rng::seeded(env.seed ^ env.incarnations.load(Ordering::Relaxed) << 40)),
    ));
    let lu0 = LogicalUnit::new(disk, LuConfig::new(BLOCK as u32, LuIdentity::derived("sim/0")))?;
    entry.scsi.add_lun(0, Arc::new(lu0))?;

    // Every incarnation is a new process on the same node: it takes its lease back at once.
    let incarnation = env.incarnations.fetch_add(1, Ordering::Relaxed);
    let store: Arc<dyn ObjectStore> = match env.store {
        Store::Remote => Arc::new(s3_store(&env)),
        Store::Embedded => {
            let options = LocalOptions {
                offload: Offload::Inline,
                etag_seed: incarnation << 32,
                durable: true,
                remember_clean_close: false,
            };
            let root = LocalRoot::open(Arc::new(env.fs.clone()), Path::new(EMBEDDED_ROOT), options)?;
            root.create_bucket(BUCKET)?;
            Arc::new(root.bucket(BUCKET)?)
        }
    };
    let journal = match env.journal {
        false => None,
        true => {
            // Small segments: a run reuses them and carries logs forward.
            let options =
                SegmentOptions { offload: Offload::Inline, etag_seed: incarnation << 32, segment_bytes: 16 * 1024 };
            let store: Arc<dyn ObjectStore> =
                Arc::new(SegmentStore::open(Arc::new(env.fs.clone()), Path::new(JOURNAL_ROOT), options)?);
            Some(JournalOptions { store, bytes_max: 64 * 1024 })
        }
    };
    let disk_cache = match env.disk_cache {
        false => None,
        true => {
            let options = LocalOptions {
                offload: Offload::Inline,
                etag_seed: incarnation << 32,
                durable: false,
                remember_clean_close: false,
            };
            let root = LocalRoot::open(Arc::new(env.fs.clone()), Path::new(DISK_CACHE_ROOT), options)?;
            root.create_bucket(DISK_CACHE_BUCKET)?;
            let store: Arc<dyn ObjectStore> = Arc::new(root.bucket(DISK_CACHE_BUCKET)?);
            // Half the volume: entries are evicted, and kept across crashes.
            Some(DiskCacheOptions { store, bytes_max: BLOCKS * BLOCK / 2 })
        }
    };
    let opts = VolumeOptions {
        create: Some(CreateSpec { size: BLOCKS * BLOCK, block_size: BLOCK as u32, chunk_size: CHUNK }),
        journal,
        disk_cache,
        cache_bytes: 32 * 1024,
        flush_age: Duration::from_secs(2),
        merge_age: Duration::from_secs(8),
        log_bytes_max: 64 * 1024,
        retry: sim_retry_policy(),
        holder: format!("sim-node/{incarnation}"),
        node: Some(NodeId::new("sim-node")),
        compression: env.compression,
        seed: env.seed,
        ..VolumeOptions::default()
    };
    let url = S3Url::parse(&format!("s3://{BUCKET}/lun1")).expect("url");
    // LUN 1 opens in the background as in production: NOT READY until its volume is open
    // (the object store may be failing), opened again if its lease is ever lost.
    let lu_config = LuConfig::new(BLOCK as u32, LuIdentity::derived("sim/1"));
    let slot = VolumeSlot::default();
    let mut snapshotter = Snapshotter {
        slot: slot.clone(),
        store: store.clone(),
        url: url.clone(),
        blocks: BLOCKS,
        shared,
        rng: Rng::seeded(env.seed ^ 0x5ea9_5407 ^ incarnation << 20),
        incarnation,
        taken: 0,
        clones: 0,
        clone_writes: 0,
    };
    add_s3_lun(&entry, 1, store, url, opts, lu_config, BLOCKS * BLOCK, &clock, Some(slot))?;
    registry.add_target(entry)?;

    let mut settings = Settings::default();
    settings.conn.queue_depth = QUEUE_DEPTH;
    settings.limits.max_recv_data_segment_len = 1024;
    settings.limits.max_outstanding_r2t = 2;
    settings.conn.nop_interval = Duration::from_secs(5);
    settings.conn.nop_timeout = Duration::from_secs(10);
    // Busy polling spins on yields, and simulated time does not pass while tasks only yield.
    settings.busy_poll = Duration::ZERO;
    let server = Arc::new(Server::new(TurmoilNet, clock.clone(), registry, settings));
    for portal in server.bind().await? {
        tokio::spawn(server.clone().accept_loop(portal));
    }
    // Snapshots of LUN 1 now and then, every 2 to 8 s.
    let mut next_snapshot = clock.now() + Duration::from_millis(2000 + snapshotter.rng.below(6000));
    while !env.shutdown.load(Ordering::Relaxed) {
        tokio::time::sleep(Duration::from_millis(100)).await;
        if clock.now() >= next_snapshot {
            snapshotter.round().await;
            next_snapshot = clock.now() + Duration::from_millis(2000 + snapshotter.rng.below(6000));
        }
    }
    server.shutdown(Duration::from_secs(5)).await;
    env.shut_down.store(true, Ordering::Relaxed);
    // Stay up (idle) until the simulation ends.
    loop {
        tokio::time::sleep(Duration::from_secs(3600)).await;
    }
}

/// Adds LUN `lun` on an S3 volume to a target, as production does: a NOT READY placeholder
/// until the volume opens, a supervisor that opens it (again, if its lease is ever lost).
/// A write the initiator was told is over without an acknowledgement (aborted, whose task
/// management response must wait for it; refused; cut by a crash or a reinstated session) must
/// not take effect afterwards: it could overwrite a newer acknowledged write. Checked on LUN 0's
/// disk, whose writes take effect when the store is called.
fn late_landing(landings: &Landings, shared: &Rc<RefCell<Shared>>) -> Option<String> {
    let landed = std::mem::take(&mut *landings.lock().expect("poisoned"));
    let sh = shared.borrow();
    landed.iter().find_map(|l| {
        let over = sh.model.over_unacknowledged(l.id)?;
        (l.at > over).then(|| {
            format!(
                "LUN 0 block {}: write {} took effect at {:?}, after the initiator learned at {over:?} it was over \
                 unacknowledged",
                l.block, l.id, l.at
            )
        })
    })
}

#[allow(clippy::too_many_arguments)]
pub fn add_s3_lun(
    entry: &TargetEntry,
    lun: u16,
    store: Arc<dyn ObjectStore>,
    url: S3Url,
    opts: VolumeOptions,
    lu_config: LuConfig,
    capacity: u64,
    clock: &Arc<dyn Clock>,
    slot: Option<VolumeSlot>,
) -> Result<(), String> {
    let placeholder = Placeholder::new(lu_config.clone(), Some(capacity), "opening")?;
    entry.scsi.add_lun(lun, placeholder.lu.clone())?;
    let open: Opener = {
        let clock = clock.clone();
        Arc::new(move || {
            let (store, url, opts, clock, lu_config, slot) =
                (store.clone(), url.clone(), opts.clone(), clock.clone(), lu_config.clone(), slot.clone());
            Box::pin(async move {
                let volume = S3Volume::open(store, url, opts, clock).await.map_err(LunOpenError::from)?;
                if let Some(slot) = slot {
                    *slot.lock().expect("poisoned") = Some(Arc::downgrade(&volume));
                }
                let mut lu = LogicalUnit::new(volume.clone(), lu_config)?;
                lu.keep_reservations(Arc::new(VolumeKeeper::new(volume))).await?;
                Ok(Arc::new(lu))
            })
        })
    };
    tokio::spawn(supervise(entry.scsi.clone(), lun, open, placeholder, None, None, clock.clone()));
    Ok(())
}

pub fn sim_retry_policy() -> RetryPolicy {
    RetryPolicy {
        attempt_timeout: Duration::from_secs(3),
        budget: Duration::from_secs(6),
        base_backoff: Duration::from_millis(20),
        max_backoff: Duration::from_millis(500),
        concurrency: 16,
        // Objects here are small; this keeps the longest attempt, and the takeover wait, short.
        whole_object_bytes: 1 << 20,
        ..RetryPolicy::default()
    }
}

/// How a run went.
#[derive(Debug, Clone)]
pub struct Outcome {
    pub failure: Option<String>,
    pub last_events: Vec<String>,
    pub sim_seconds: f64,
    pub wall_seconds: f64,
    pub commands: u64,
    pub crashes: u32,
    /// Where LUN 1 lived: "remote S3" or "embedded store".
    pub store: String,
    pub s3_requests: u64,
    pub trace_hash: u64,
    pub trace: Vec<String>,
}

/// Faults drawn for one seed.
#[derive(Debug, Clone)]
struct FaultPlan {
    mean_gap: Duration,
    partitions: f64,
    one_way: f64,
    holds: f64,
    crashes: f64,
    s3_faults: f64,
    disk_faults: f64,
    latency: f64,
    /// Whether the store's mutations may land late (unless `--no-zombie-requests`).
    zombies: bool,
}

impl FaultPlan {
    fn draw(rng: &mut Rng) -> FaultPlan {
        let mut p = || (rng.below(100) as f64) / 100.0;
        FaultPlan {
            mean_gap: Duration::from_millis(1500 + (p() * 4000.0) as u64),
            partitions: p(),
            one_way: p(),
            holds: p(),
            crashes: 0.2 + p() * 0.8,
            s3_faults: p(),
            disk_faults: p(),
            latency: p(),
            zombies: false,
        }
    }
}

/// A scheduled undo of a fault.
enum Repair {
    Partition(String),
    OneWay(String, String),
    Hold(String),
    Bounce,
    S3,
    Disk,
    Latency,
}

/// With `zombies`, the remote store's mutations may land after their sender gave up
/// ([`S3Faults::late_landing`]).
pub fn run(seed: u64, duration: Duration, mutant: Option<Mutant>, keep_trace: bool, zombies: bool) -> Outcome {
    rtgt::mutants::set(mutant);
    crate::panics::clear();
    crate::clock::reset();
    #[allow(clippy::disallowed_methods)] // measures the simulator itself, not simulated time
    let started = Instant::now();
    let mut rng = Rng::seeded(seed);
    let plan = FaultPlan { zombies, ..FaultPlan::draw(&mut rng) };
    let initiators = 2 + rng.below(2) as usize;
    let heal_at = duration * 3 / 4;
    let end_at = duration + Duration::from_secs(40);

    let mut sim = turmoil::Builder::new()
        .rng_seed(seed)
        .epoch(UNIX_EPOCH + Duration::from_secs(EPOCH_SECS))
        .simulation_duration(end_at + Duration::from_secs(120))
        .min_message_latency(Duration::from_micros(50))
        .max_message_latency(Duration::from_millis(2))
        .tick_duration(TICK)
        .enable_random_order()
        .build();

    let store = if rng.chance(0.4) { Store::Embedded } else { Store::Remote };
    // Drawn apart, so that the main draws stay as they were.
    let compression =
        [None, Some(Compression::Zstd), Some(Compression::Lz4)][Rng::seeded(seed ^ 0xc0_c0de).below(3) as usize];
    let env = Environment {
        store,
        // Drawn apart, so that the main draws stay as they were.
        journal: store == Store::Remote && Rng::seeded(seed ^ 0x10c4_1d15).chance(0.5),
        disk_cache: Rng::seeded(seed ^ 0xd15c_cace).chance(0.5),
        compression,
        chunks: Arc::new(PlainChunks::new(compression)),
        s3: MemS3::new(seed ^ 0x5353),
        fs: CrashFs::new(),
        media: Media::default(),
        disk_faults: Arc::new(Mutex::new((DiskFaults::default(), Rng::seeded(seed ^ 0xd15c)))),
        landings: Landings::default(),
        // Drawn apart, so that the main draws stay as they were: no latency in a quarter of the
        // seeds, up to 1-3 ms in the others.
        disk_write_latency: Duration::from_millis(Rng::seeded(seed ^ 0x1a7e_d15c).below(4)),
        shutdown: Arc::new(AtomicBool::new(false)),
        shut_down: Arc::new(AtomicBool::new(false)),
        incarnations: Arc::new(AtomicU64::new(0)),
        seed,
    };
    env.s3.create_bucket(BUCKET);
    // Object stores answer in milliseconds (tens of them, at a distance).
    env.s3.set_base_latency(Duration::from_millis(1 + rng.below(30)));
    let shared = Rc::new(RefCell::new(Shared::new(Model::new(2, BLOCKS), keep_trace)));
    let (host_env, host_shared) = (env.clone(), shared.clone());
    sim.host("target", move || target(host_env.clone(), host_shared.clone()));

    let names: Vec<String> = (0..initiators).map(|i| format!("init{i}")).collect();
    for (i, name) in names.iter().enumerate() {
        let shared = shared.clone();
        let ws = workload::Settings {
            index: i,
            seed: seed.wrapping_mul(31).wrapping_add(i as u64),
            workers: 1 + rng.below(3) as usize,
            until: duration,
            heal_at,
        };
        sim.client(name.as_str(), workload::initiator(ws, shared));
    }

    let mut failure = None;
    let mut crashes = 0u32;
    let mut target_down = false;
    let mut repairs: Vec<(Duration, Repair)> = Vec::new();
    let mut next_fault = plan.mean_gap;
    let mut next_image_check = IMAGE_CHECK_EVERY;
    let mut landed_at_check = 0;
    let mut healed = false;
    let mut shutdown_asked = false;
    loop {
        let now = match step(&mut sim) {
            Ok(now) => now,
            Err(e) => {
                failure = Some(e);
                break;
            }
        };
        let violation = shared.borrow_mut().violation.take();
        if let Some(v) = violation.or_else(|| late_landing(&env.landings, &shared)) {
            failure = Some(v);
            break;
        }
        // Undo faults whose time has come.
        let mut i = 0;
        while i < repairs.len() {
            if repairs[i].0 <= now || (now >= heal_at && !matches!(repairs[i].1, Repair::Bounce)) {
                let (_, repair) = repairs.remove(i);
                apply_repair(&mut sim, &env, &names, repair, &mut target_down, &shared, now);
            } else {
                i += 1;
            }
        }
        // The image changes only when an object does, and what must be in it when a write is
        // acknowledged: look after every mutation that landed, and at least every 100 ms.
        let landed = if env.store == Store::Remote { env.s3.landed_count() } else { 0 };
        if env.store == Store::Remote && (now >= next_image_check || landed != landed_at_check) {
            next_image_check = now + IMAGE_CHECK_EVERY;
            landed_at_check = landed;
            if let Some(v) = check_recovery_image(&shared.borrow().model, &env, now) {
                failure = Some(v);
                break;
            }
        }
        if now >= heal_at && !healed {
            healed = true;
            shared.borrow_mut().event(now, "world", "faults healed".into());
            // A target still down comes back now.
            if let Some(pos) = repairs.iter().position(|r| matches!(r.1, Repair::Bounce)) {
                let (_, r) = repairs.remove(pos);
                apply_repair(&mut sim, &env, &names, r, &mut target_down, &shared, now);
            }
        }
        if now >= next_fault && now < heal_at && !target_down {
            let gap = plan.mean_gap.as_millis() as u64;
            next_fault = now + Duration::from_millis(gap / 2 + rng.below(gap + 1));
            inject(&mut sim, &env, &plan, &mut rng, &names, &mut repairs, &mut target_down, &mut crashes, &shared, now);
        }
        if shared.borrow().clients_done == initiators && !shutdown_asked {
            shutdown_asked = true;
            env.shutdown.store(true, Ordering::Relaxed);
        }
        if shutdown_asked && env.shut_down.load(Ordering::Relaxed) {
            break;
        }
        if now > end_at + Duration::from_secs(60) {
            failure = Some("liveness: the run did not finish (clients or target shutdown hung)".into());
            break;
        }
    }
    if failure.is_none() {
        failure = final_checks(&shared.borrow(), &env, heal_at);
    }
    rtgt::mutants::set(None);
    let sh = shared.borrow();
    Outcome {
        failure,
        last_events: sh.trace.iter().rev().take(25).rev().cloned().collect(),
        sim_seconds: sim.elapsed().as_secs_f64(),
        wall_seconds: started.elapsed().as_secs_f64(),
        commands: sh.commands,
        crashes,
        store: format!(
            "{}{}",
            match (env.store, env.journal, env.disk_cache) {
                (Store::Remote, false, false) => "remote S3",
                (Store::Remote, false, true) => "remote S3 + disk cache",
                (Store::Remote, true, false) => "remote S3 + local journal",
                (Store::Remote, true, true) => "remote S3 + local journal + disk cache",
                (Store::Embedded, _, false) => "embedded store",
                (Store::Embedded, _, true) => "embedded store + disk cache",
            },
            env.compression.map(|c| format!(", {c}-compressed")).unwrap_or_default()
        ),
        s3_requests: env.s3.requests(),
        trace_hash: sh.hash.value(),
        trace: if keep_trace { sh.trace.clone() } else { Vec::new() },
    }
}

/// One step of a world: a host's error or a panic anywhere ends the run. The simulated time.
pub fn step(sim: &mut turmoil::Sim<'_>) -> Result<Duration, String> {
    sim.step().map_err(|e| format!("a host failed: {e}"))?;
    match crate::panics::first() {
        Some(p) => Err(format!("panic: {p}")),
        None => Ok(sim.elapsed()),
    }
}

#[allow(clippy::too_many_arguments)]
fn inject(
    sim: &mut turmoil::Sim<'_>,
    env: &Environment,
    plan: &FaultPlan,
    rng: &mut Rng,
    names: &[String],
    repairs: &mut Vec<(Duration, Repair)>,
    target_down: &mut bool,
    crashes: &mut u32,
    shared: &Rc<RefCell<Shared>>,
    now: Duration,
) {
    let init = names[rng.below(names.len() as u64) as usize].clone();
    let lasting = |rng: &mut Rng, max_ms: u64| now + Duration::from_millis(200 + rng.below(max_ms));
    let roll = |rng: &mut Rng, p: f64| rng.chance(p);
    let log = |what: String| shared.borrow_mut().event(now, "fault", what);
    if roll(rng, plan.crashes * 0.3) {
        *crashes += 1;
        *target_down = true;
        // The dead host's sockets send nothing (as after a power loss or a hard stop): what
        // they would send depends on the order tokio drops the host's tasks, which differs
        // between runs in one process, and the simulation must replay exactly.
        for name in names {
            sim.partition("target", name.as_str());
        }
        sim.crash("target");
        shared.borrow_mut().model.crashed(crate::clock::now_or(now));
        // The process dies; with a local disk in use, every other time the machine loses power.
        if (env.store == Store::Embedded || env.journal) && rng.chance(0.5) {
            env.fs.power_loss();
            log("target crashed (power loss)".into());
        } else {
            env.fs.process_crash();
            log("target crashed".into());
        }
        repairs.push((lasting(rng, 4000), Repair::Bounce));
    } else if roll(rng, plan.partitions * 0.5) {
        sim.partition("target", init.as_str());
        log(format!("partition target <-> {init}"));
        repairs.push((lasting(rng, 12_000), Repair::Partition(init)));
    } else if roll(rng, plan.one_way * 0.5) {
        let (from, to) =
            if rng.chance(0.5) { ("target".to_string(), init.clone()) } else { (init.clone(), "target".to_string()) };
        sim.partition_oneway(from.as_str(), to.as_str());
        log(format!("partition {from} -> {to}"));
        repairs.push((lasting(rng, 8000), Repair::OneWay(from, to)));
    } else if roll(rng, plan.holds * 0.5) {
        sim.hold("target", init.as_str());
        log(format!("hold target <-> {init}"));
        repairs.push((lasting(rng, 3000), Repair::Hold(init)));
    } else if roll(rng, plan.s3_faults * 0.15) {
        // S3 away for longer than a request's whole retry budget, sometimes longer than the
        // lease: every request fails at once (500) or hangs past its attempt timeout.
        let f = if rng.chance(0.5) {
            S3Faults { internal_error: 1.0, ..S3Faults::default() }
        } else {
            S3Faults { timeout: 1.0, ..S3Faults::default() }
        };
        env.s3.set_faults(f);
        let until = now + Duration::from_millis(8_000 + rng.below(30_000));
        log(format!("S3 outage until {until:?}: {f:?}"));
        repairs.push((until, Repair::S3));
    } else if roll(rng, plan.s3_faults * 0.6) {
        let f = S3Faults {
            internal_error: rng.below(20) as f64 / 100.0,
            slow_down: rng.below(20) as f64 / 100.0,
            timeout: rng.below(5) as f64 / 100.0,
            apply_then_fail: rng.below(15) as f64 / 100.0,
            latency_max: Duration::from_millis(rng.below(200)),
            // Drawn only when on, so that runs without them draw as before they existed.
            late_landing: if plan.zombies { rng.below(5) as f64 / 100.0 } else { 0.0 },
        };
        env.s3.set_faults(f);
        log(format!("S3 faults {f:?}"));
        repairs.push((lasting(rng, 8000), Repair::S3));
    } else if roll(rng, plan.disk_faults * 0.5) {
        let f = DiskFaults { read_error: rng.below(10) as f64 / 100.0, write_error: rng.below(10) as f64 / 100.0 };
        env.disk_faults.lock().expect("poisoned").0 = f;
        log(format!("disk faults {f:?}"));
        repairs.push((lasting(rng, 5000), Repair::Disk));
    } else if roll(rng, plan.latency) {
        let l = Duration::from_millis(5 + rng.below(300));
        sim.set_max_message_latency(l);
        log(format!("latency up to {l:?}"));
        repairs.push((lasting(rng, 5000), Repair::Latency));
    }
}

fn apply_repair(
    sim: &mut turmoil::Sim<'_>,
    env: &Environment,
    names: &[String],
    repair: Repair,
    target_down: &mut bool,
    shared: &Rc<RefCell<Shared>>,
    now: Duration,
) {
    let what = match repair {
        Repair::Partition(i) => {
            sim.repair("target", i.as_str());
            format!("repair target <-> {i}")
        }
        Repair::OneWay(from, to) => {
            sim.repair_oneway(from.as_str(), to.as_str());
            format!("repair {from} -> {to}")
        }
        Repair::Hold(i) => {
            sim.release("target", i.as_str());
            format!("release target <-> {i}")
        }
        Repair::Bounce => {
            *target_down = false;
            for name in names {
                sim.repair("target", name.as_str());
            }
            sim.bounce("target");
            "target restarted".into()
        }
        Repair::S3 => {
            env.s3.set_faults(S3Faults::default());
            "S3 faults off".into()
        }
        Repair::Disk => {
            env.disk_faults.lock().expect("poisoned").0 = DiskFaults::default();
            "disk faults off".into()
        }
        Repair::Latency => {
            sim.set_max_message_latency(Duration::from_millis(2));
            "latency back to normal".into()
        }
    };
    shared.borrow_mut().event(now, "fault", what);
}

/// How often the recovery image is checked at least (simulated time), besides after every
/// mutation that lands.
const IMAGE_CHECK_EVERY: Duration = Duration::from_millis(100);

/// Chunk objects as the checks read them: decompressed (once per version: a version's key is
/// never reused, and the stored body is compared all the same) if the volume compresses them.
struct PlainChunks {
    codec: Option<ChunkCodec>,
    /// (stored, plain) by key.
    known: Mutex<BTreeMap<String, (Bytes, Bytes)>>,
}

/// The objects of a bucket: body and metadata by key.
type Objects = BTreeMap<String, (Bytes, BTreeMap<String, String>)>;

impl PlainChunks {
    fn new(compression: Option<Compression>) -> PlainChunks {
        PlainChunks { codec: compression.map(|c| ChunkCodec::new(c, CHUNK)), known: Mutex::default() }
    }

    /// The plain bytes of object `key` stored as `body`.
    fn body(&self, key: &str, body: &Bytes) -> Result<Bytes, String> {
        let Some(codec) = self.codec.filter(|_| key.contains("/chunks/")) else { return Ok(body.clone()) };
        let mut known = self.known.lock().expect("poisoned");
        match known.get(key) {
            Some((stored, plain)) if stored == body => Ok(plain.clone()),
            _ => {
                let plain = Bytes::from(codec.decompress_whole(key, body).map_err(|e| e.to_string())?);
                known.insert(key.to_string(), (body.clone(), plain.clone()));
                Ok(plain)
            }
        }
    }

    /// `objects` with every chunk body plain; forgets the chunks no longer there.
    fn plain(&self, mut objects: Objects) -> Result<Objects, String> {
        self.known.lock().expect("poisoned").retain(|key, _| objects.contains_key(key));
        for (key, (body, _)) in objects.iter_mut() {
            *body = self.body(key, body)?;
        }
        Ok(objects)
    }
}

/// Durability at every moment, not only at crashes: what recovery would make of LUN 1's
/// objects were the target to die now holds every durable write (and nothing superseded).
fn check_recovery_image(model: &Model, env: &Environment, now: Duration) -> Option<String> {
    let objects = env.s3.objects_with_metadata(BUCKET);
    let journal = journal_logs(env);
    let objects = match env.chunks.plain(objects) {
        Ok(objects) => objects,
        Err(e) => return Some(format!("damaged: {e}")),
    };
    let image = match crate::recovery_image::recovery_image(&objects, &journal, "lun1", BLOCKS * BLOCK, CHUNK) {
        Ok(image) => image,
        Err(e) => return Some(format!("durability: the volume's logs cannot be replayed: {e}")),
    };
    let mut ids = Vec::with_capacity(BLOCKS as usize);
    for b in 0..BLOCKS {
        let block = &image[(b * BLOCK) as usize..((b + 1) * BLOCK) as usize];
        match model.check_after_crash(1, b, block, now) {
            Ok(id) => ids.push(id),
            Err(e) => return Some(format!("durability: were the target to crash at {now:?}: {e}")),
        }
    }
    if let Err(e) = model.check_atomic(1, &ids) {
        return Some(format!("atomicity: were the target to crash at {now:?}: {e}"));
    }
    None
}

/// The local journal's files, if the target keeps one.
fn journal_logs(env: &Environment) -> BTreeMap<String, Bytes> {
    match env.journal {
        // The logs, not the record of which volume the journal belongs to (`<uuid>/volume`).
        true => SegmentStore::inspect(&env.fs, Path::new(JOURNAL_ROOT))
            .into_iter()
            .filter(|(key, _)| key.contains("/log/"))
            .collect(),
        false => BTreeMap::new(),
    }
}

/// Oracles checked once the run is over.
fn final_checks(shared: &Shared, env: &Environment, heal_at: Duration) -> Option<String> {
    for (i, v) in shared.violations.iter().enumerate() {
        if v.unexpected_responses > 0 || v.responses_after_abort > 0 {
            return Some(format!("exactly one response: init{i} saw {v:?}"));
        }
        if v.stat_sn_errors > 0 || v.max_cmd_sn_decreases > 0 {
            return Some(format!("StatSN / CmdSN rules: init{i} saw {v:?}"));
        }
        if v.widest_window > QUEUE_DEPTH {
            return Some(format!(
                "CmdSN window: init{i} was offered {} slots, the queue depth is {QUEUE_DEPTH}",
                v.widest_window
            ));
        }
    }
    for (i, luns) in shared.recovered_after_heal.iter().enumerate() {
        for (lun, ok) in luns.iter().enumerate() {
            match ok {
                Some(t) if *t <= heal_at + workload::LIVENESS_BOUND => {}
                Some(t) => {
                    return Some(format!(
                        "liveness: init{i} first completed I/O on LUN {lun} {:?} after the faults healed",
                        *t - heal_at
                    ));
                }
                None => {
                    return Some(format!("liveness: init{i} never completed I/O on LUN {lun} after the faults healed"));
                }
            }
        }
    }
    // Invariant 5 once quiet: no log objects, no chunk objects of zeros (a tombstone, an empty
    // version, is how a chunk reads as zeros); and no chunk without a version newer than any
    // version of it ever written (the remote store keeps a log of what landed).
    let objects = match env.store {
        Store::Remote => env.s3.objects(BUCKET),
        Store::Embedded => LocalRoot::inspect(&env.fs, Path::new(EMBEDDED_ROOT), BUCKET),
    };
    if env.store == Store::Remote
        && let Some(f) = crate::newest_versions::lost_newest(&objects, &env.s3.landed())
    {
        return Some(f);
    }
    if let Some(key) = journal_logs(env).keys().next() {
        return Some(format!("leak: journal log {key} left after a clean shutdown"));
    }
    for (key, body) in &objects {
        if volume_deleted_before_it_landed(env, &objects, key) {
            continue; // a leak no volume can clean up: documented (README, "Zombie requests")
        }
        if key.contains("/log/")
            && !crate::recovery_image::settled_log(&objects, key)
            && !abandoned_clone(&objects, key)
        {
            return Some(format!("leak: log object {key} left after a clean shutdown"));
        }
        let plain = match env.chunks.body(key, body) {
            Ok(plain) => plain,
            Err(e) => return Some(format!("damaged: {e}")),
        };
        if key.contains("/chunks/") && !plain.is_empty() && plain.iter().all(|&b| b == 0) {
            return Some(format!("leak: chunk object {key} holds only zeros"));
        }
    }
    None
}

/// Whether `key` is in a clone still there at the end: a crash of the target cut its round
/// short (`clones.rs`), so it was never closed, and its logs are for its next open to replay.
fn abandoned_clone(objects: &BTreeMap<String, Bytes>, key: &str) -> bool {
    key.starts_with(crate::clones::CLONE_PREFIX) && !crate::recovery_image::volume_gone(objects, key)
}

/// Whether `key` landed late (a PUT held on its way) in a volume deleted before it landed.
fn volume_deleted_before_it_landed(env: &Environment, objects: &BTreeMap<String, Bytes>, key: &str) -> bool {
    env.store == Store::Remote && crate::recovery_image::volume_gone(objects, key) && env.s3.landed_late(BUCKET, key)
}
