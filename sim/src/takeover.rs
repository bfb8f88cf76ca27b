//! Two targets on one S3 volume, as a failover pair would run it. Target A (node a) serves
//! the volume to an initiator; then A loses its way to the store (all of it, or only the lease
//! object), or dies, or nothing happens to it; target B (node b) opens the volume, waiting out
//! A's lease or taking it by force; the initiator keeps using A until B serves, then fails over
//! to B. Oracles: every write acknowledged as durable through A reads back through B (the block
//! model); nothing of A lands after B's first change to the volume (the store's log of what
//! landed, by host); B serves within a bound; B's clean close leaves no log and no zero chunk.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, UNIX_EPOCH};

use bytes::Bytes;
use rtgt::clock::{Clock, TokioClock};
use rtgt::mutants::Mutant;
use rtgt::node::NodeId;
use rtgt::rng::Rng;
use rtgt::s3::ObjectStore;
use rtgt::s3::url::S3Url;
use rtgt::s3::volume::{CreateSpec, LEASE_NAME, VolumeOptions};
use rtgt::scsi::{LuConfig, LuIdentity};
use rtgt::server::{Registry, Server, Settings, TargetEntry};
use rtgt_testkit::initiator::{InitiatorConfig, Session, rw16};

use crate::mem_s3::{Cut, MemS3};
use crate::model::{BLOCK, Model};
use crate::net::TurmoilNet;
use crate::world::{BUCKET, CHUNK, Outcome, SimClock, add_s3_lun, s3_client, sim_retry_policy};

pub(crate) const TARGET: &str = "iqn.2026-11.dev.rtgt:pair";
pub(crate) const PORT: u16 = 3260;
pub(crate) const BLOCKS: u64 = 128;
/// A short lease, so that a takeover fits a short run.
pub(crate) const LEASE: Duration = Duration::from_secs(10);
/// B must serve within this long of its start (waiting out the lease, its recovery).
const SERVE_BOUND: Duration = Duration::from_secs(30);
/// How long the initiator works through B before it reads everything back.
const ON_B: Duration = Duration::from_secs(8);

/// What happens to A before B starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Trouble {
    /// A cannot reach the store at all.
    CutOff,
    /// A's lease requests cannot get through; its data can.
    LeaseCutOff,
    /// A's process dies.
    Crash,
    /// Nothing: B takes the volume from a live A by force.
    Nothing,
}

#[derive(Debug, Clone)]
struct Plan {
    trouble: Trouble,
    trouble_at: Duration,
    b_at: Duration,
    force: bool,
    /// When A's way to the store comes back, if it does.
    heal_a_at: Option<Duration>,
}

impl Plan {
    fn draw(rng: &mut Rng) -> Plan {
        let trouble = [Trouble::CutOff, Trouble::LeaseCutOff, Trouble::Crash, Trouble::Nothing][rng.below(4) as usize];
        let trouble_at = Duration::from_millis(2000 + rng.below(3000));
        let b_at = trouble_at + Duration::from_millis(rng.below(2000));
        let force = trouble == Trouble::Nothing || rng.chance(0.5);
        let heals = matches!(trouble, Trouble::CutOff | Trouble::LeaseCutOff) && rng.chance(0.7);
        // Without force, B takes the lease only once A has been silent for a whole lease (and
        // a request's lifetime); an A back before that keeps it, and there is no takeover.
        let earliest = if force { b_at } else { b_at + LEASE + sim_retry_policy().longest_attempt() };
        let heal_a_at = heals.then(|| earliest + Duration::from_millis(1000 + rng.below(15_000)));
        Plan { trouble, trouble_at, b_at, force, heal_a_at }
    }
}

/// What the hosts share with the world (one thread).
pub(crate) struct Shared {
    pub model: Model,
    pub trace: Vec<String>,
    pub hash: rtgt::fnv::Fnv1a,
    pub violation: Option<String>,
    pub commands: u64,
    pub done: bool,
    /// The failover scenario: the target that served the last command, and that command's
    /// issue time.
    pub serving: Option<&'static str>,
    pub served_at: Duration,
}

impl Shared {
    pub fn new() -> Shared {
        Shared {
            model: Model::new(1, BLOCKS),
            trace: Vec::new(),
            hash: rtgt::fnv::Fnv1a::default(),
            violation: None,
            commands: 0,
            done: false,
            serving: None,
            served_at: Duration::ZERO,
        }
    }

    pub fn event(&mut self, who: &str, what: String) {
        self.event_at(now(), who, what);
    }

    pub fn event_at(&mut self, at: Duration, who: &str, what: String) {
        let line = format!("{:>9.3} {who:<8} {what}", at.as_secs_f64());
        self.hash.update(line.as_bytes());
        self.trace.push(line);
    }

    /// The outcome of a run, with no failure and no crash yet (the caller sets both).
    pub fn outcome(
        &self,
        sim: &turmoil::Sim<'_>,
        started: Instant,
        store: &'static str,
        s3: &MemS3,
        keep_trace: bool,
    ) -> Outcome {
        Outcome {
            failure: None,
            last_events: self.trace.iter().rev().take(25).rev().cloned().collect(),
            sim_seconds: sim.elapsed().as_secs_f64(),
            wall_seconds: started.elapsed().as_secs_f64(),
            commands: self.commands,
            crashes: 0,
            store: store.into(),
            s3_requests: s3.requests(),
            trace_hash: self.hash.value(),
            trace: if keep_trace { self.trace.clone() } else { Vec::new() },
        }
    }

    /// One step of the world: the simulated time after it, or why the run failed (a host
    /// failed, or a host reported a violation).
    pub fn step(this: &Rc<RefCell<Shared>>, sim: &mut turmoil::Sim<'_>) -> Result<Duration, String> {
        let t = crate::world::step(sim)?;
        match this.borrow_mut().violation.take() {
            Some(v) => Err(v),
            None => Ok(t),
        }
    }

    pub fn fail(&mut self, what: String) {
        self.event("init", format!("VIOLATION {what}"));
        self.violation.get_or_insert(what);
    }
}

pub(crate) fn now() -> Duration {
    crate::clock::now()
}

/// How one target of the pair runs.
#[derive(Clone)]
pub(crate) struct PairTarget {
    pub node: &'static str,
    /// Its portal group (and target port group, and relative port).
    pub tag: u16,
    pub start_at: Duration,
    pub force: bool,
    /// `failover = true`: serves nothing once its lease lapses.
    pub failover: bool,
    /// How long a command waits for the store (or a lease renewal) before NOT READY.
    pub command_deadline: Duration,
    /// Set by the world to shut it down; cleared by the target once it is.
    pub shutdown: Arc<AtomicBool>,
}

/// A target of the pair: from `start_at` on, serves the volume as LUN 0 on node `node`.
pub(crate) async fn target(s3: MemS3, t: PairTarget) -> turmoil::Result {
    let PairTarget { node, tag, start_at, force, failover, command_deadline, shutdown } = t;
    tokio::time::sleep(start_at.saturating_sub(now())).await;
    let clock: Arc<dyn Clock> = Arc::new(SimClock(TokioClock::new()));
    let registry = Arc::new(Registry::new());
    registry.set_portal_group(tag, vec![format!("0.0.0.0:{PORT}").parse().expect("address")]);
    let entry = TargetEntry::new(TARGET, None, [tag].into_iter().collect());
    let store: Arc<dyn ObjectStore> = Arc::new(s3_client(s3));
    let opts = VolumeOptions {
        create: Some(CreateSpec { size: BLOCKS * BLOCK as u64, block_size: BLOCK as u32, chunk_size: CHUNK }),
        cache_bytes: 32 * 1024,
        flush_age: Duration::from_secs(2),
        merge_age: Duration::from_secs(6),
        lease_duration: LEASE,
        retry: sim_retry_policy(),
        force,
        failover,
        command_deadline,
        holder: format!("{node}/1"),
        node: Some(NodeId::new(node)),
        seed: node.len() as u64,
        ..VolumeOptions::default()
    };
    let url = S3Url::parse(&format!("s3://{BUCKET}/pair")).expect("url");
    let lu_config = LuConfig::new(BLOCK as u32, LuIdentity::derived("pair/0"));
    add_s3_lun(&entry, 0, store, url, opts, lu_config, BLOCKS * BLOCK as u64, &clock, None)?;
    registry.add_target(entry)?;
    // Busy polling spins on yields, and simulated time does not pass while tasks only yield.
    let settings = Settings { busy_poll: Duration::ZERO, ..Settings::default() };
    let server = Arc::new(Server::new(TurmoilNet, clock, registry, settings));
    for portal in server.bind().await? {
        tokio::spawn(server.clone().accept_loop(portal));
    }
    while !shutdown.load(Ordering::Relaxed) {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    server.shutdown(Duration::from_secs(5)).await;
    shutdown.store(false, Ordering::Relaxed); // shut down
    loop {
        tokio::time::sleep(Duration::from_secs(3600)).await;
    }
}

pub(crate) async fn login(host: &str, isid: u64) -> Option<Session> {
    let connect = turmoil::net::TcpStream::connect((host, PORT));
    let stream = tokio::time::timeout(Duration::from_secs(2), connect).await.ok()?.ok()?;
    let config = InitiatorConfig {
        initiator_name: "iqn.2026-11.dev.rtgt:pair-init".into(),
        isid,
        command_timeout: Duration::from_secs(8),
        ..InitiatorConfig::default()
    };
    tokio::time::timeout(Duration::from_secs(5), Session::login(stream, &config, Some(TARGET))).await.ok()?.ok()
}

/// Whether B answers TEST UNIT READY with GOOD.
async fn serves(host: &str) -> bool {
    let Some(s) = login(host, 0x99).await else { return false };
    let mut ready = false;
    for _ in 0..3 {
        match s.command(0, &[0; 6], Bytes::new(), 0).await {
            Ok(r) if r.status == 0 => {
                ready = true;
                break;
            }
            Ok(r) if r.sense_code().map(|c| c.0) == Some(0x6) => continue,
            _ => break,
        }
    }
    let _ = s.logout().await;
    ready
}

/// One command of the workload against `s`; the model learns its outcome.
async fn op(s: &Session, rng: &mut Rng, shared: &Rc<RefCell<Shared>>, host: &str) -> bool {
    let lba = rng.below(BLOCKS - 4);
    let blocks = 1 + rng.below(4) as u32;
    let issued = now();
    match rng.below(10) {
        0..=3 => {
            let fua = rng.chance(0.25);
            let (w, id) = shared.borrow_mut().model.begin_write(0, 0, lba..lba + blocks as u64, issued);
            let data = crate::workload::data_for(id, lba, blocks);
            let result = s.command(0, &rw16(0x8a, lba, blocks, if fua { 0x08 } else { 0 }), data, 0).await;
            let mut sh = shared.borrow_mut();
            match result {
                Ok(r) if r.status == 0 => sh.model.acked(w, now(), fua),
                Ok(_) => sh.model.failed(w, now()),
                Err(_) => {
                    sh.model.failed(w, now());
                    return false;
                }
            }
            sh.commands += 1;
            sh.event(host, format!("write {lba}+{blocks} id {id}{}", if fua { " fua" } else { "" }));
        }
        4 => match s.command(0, &rw16(0x91, 0, 0, 0), Bytes::new(), 0).await {
            Ok(r) if r.status == 0 => {
                let mut sh = shared.borrow_mut();
                sh.model.synced(0, issued, now());
                sh.event(host, "sync".into());
            }
            Ok(_) => {}
            Err(_) => return false,
        },
        _ => match s.command(0, &rw16(0x88, lba, blocks, 0), Bytes::new(), blocks * BLOCK as u32).await {
            Ok(r) if r.status == 0 => check(shared, lba, &r.data, issued),
            Ok(_) => {}
            Err(_) => return false,
        },
    }
    true
}

pub(crate) fn check(shared: &Rc<RefCell<Shared>>, lba: u64, data: &[u8], issued: Duration) {
    let done = now();
    let mut sh = shared.borrow_mut();
    for (i, block) in data.chunks(BLOCK).enumerate() {
        if let Err(e) = sh.model.check_and_note_read(0, lba + i as u64, block, issued, done) {
            sh.fail(e);
            return;
        }
    }
}

/// The initiator: works through A until B serves, then fails over to B, works there, and
/// reads everything back.
async fn initiator(plan: Plan, seed: u64, shared: Rc<RefCell<Shared>>) -> turmoil::Result {
    let mut rng = Rng::seeded(seed);
    let mut session: Option<Session> = None;
    let mut next_probe = plan.b_at;
    loop {
        if now() >= next_probe {
            if serves("b").await {
                break;
            }
            next_probe = now() + Duration::from_millis(500);
            if now() > plan.b_at + SERVE_BOUND {
                shared.borrow_mut().fail(format!("liveness: B does not serve {SERVE_BOUND:?} after it started"));
                shared.borrow_mut().done = true;
                return Ok(());
            }
        }
        if session.as_ref().is_none_or(|s| s.is_closed()) {
            session = login("a", 0x1).await;
            if session.is_none() {
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            }
        }
        if !op(session.as_ref().expect("logged in"), &mut rng, &shared, "via-a").await {
            session = None;
        }
        tokio::time::sleep(Duration::from_millis(rng.below(30))).await;
    }
    // Failover: whatever A acknowledged without making it durable may be lost.
    if let Some(s) = session.take() {
        s.disconnect();
    }
    {
        let mut sh = shared.borrow_mut();
        sh.model.crashed(now());
        sh.event("init", "fails over to B".into());
    }
    let until = now() + ON_B;
    let s = loop {
        if let Some(s) = login("b", 0x2).await {
            break s;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let _ = s.clear_unit_attentions(0).await;
    while now() < until {
        if !op(&s, &mut rng, &shared, "via-b").await {
            shared.borrow_mut().fail("B dropped the session".into());
            break;
        }
    }
    let issued = now();
    match s.command(0, &rw16(0x88, 0, BLOCKS as u32, 0), Bytes::new(), (BLOCKS as usize * BLOCK) as u32).await {
        Ok(r) if r.status == 0 => check(&shared, 0, &r.data, issued),
        other => shared.borrow_mut().fail(format!("the final read through B failed: {other:?}")),
    }
    let _ = s.logout().await;
    shared.borrow_mut().done = true;
    Ok(())
}

pub fn run(seed: u64, mutant: Option<Mutant>, keep_trace: bool) -> Outcome {
    rtgt::mutants::set(mutant);
    crate::panics::clear();
    crate::clock::reset();
    #[allow(clippy::disallowed_methods)] // measures the simulator itself, not simulated time
    let started = Instant::now();
    let mut rng = Rng::seeded(seed ^ 0x7a4e);
    let plan = Plan::draw(&mut rng);
    let mut sim = turmoil::Builder::new()
        .rng_seed(seed)
        .epoch(UNIX_EPOCH + Duration::from_secs(1_790_000_000))
        .simulation_duration(Duration::from_secs(300))
        .min_message_latency(Duration::from_micros(50))
        .max_message_latency(Duration::from_millis(2))
        .build();
    let s3 = MemS3::new(seed ^ 0x5353);
    s3.create_bucket(BUCKET);
    s3.set_base_latency(Duration::from_millis(1 + rng.below(30)));
    let shutdown_b = Arc::new(AtomicBool::new(false));
    let (view_a, view_b) = (s3.view("a"), s3.view("b"));
    let a = PairTarget {
        node: "node-a",
        tag: 1,
        start_at: Duration::ZERO,
        force: false,
        failover: false,
        command_deadline: VolumeOptions::default().command_deadline,
        shutdown: Arc::new(AtomicBool::new(false)),
    };
    let b = PairTarget {
        node: "node-b",
        start_at: plan.b_at,
        force: plan.force,
        shutdown: shutdown_b.clone(),
        ..a.clone()
    };
    sim.host("a", move || target(view_a.clone(), a.clone()));
    sim.host("b", move || target(view_b.clone(), b.clone()));
    let shared = Rc::new(RefCell::new(Shared::new()));
    shared.borrow_mut().event("world", format!("{plan:?}"));
    sim.client("init", initiator(plan.clone(), seed, shared.clone()));

    let mut failure = None;
    let (mut troubled, mut healed, mut asked) = (false, false, false);
    loop {
        let t = match Shared::step(&shared, &mut sim) {
            Ok(t) => t,
            Err(e) => {
                failure = Some(e);
                break;
            }
        };
        if !troubled && t >= plan.trouble_at {
            troubled = true;
            match plan.trouble {
                Trouble::CutOff => s3.cut("a", Some(Cut::All)),
                Trouble::LeaseCutOff => s3.cut("a", Some(Cut::Lease)),
                Trouble::Crash => {
                    // A dead host's sockets send nothing (see world.rs: replays must be exact).
                    sim.partition("a", "init");
                    sim.crash("a");
                }
                Trouble::Nothing => {}
            }
            shared.borrow_mut().event_at(t, "world", format!("A: {:?}", plan.trouble));
        }
        if !healed && plan.heal_a_at.is_some_and(|h| t >= h) {
            healed = true;
            s3.cut("a", None);
            shared.borrow_mut().event_at(t, "world", "A reaches the store again".into());
        }
        if shared.borrow().done && !asked {
            asked = true;
            shutdown_b.store(true, Ordering::Relaxed);
        }
        // B flips the flag back once shut down.
        if asked && !shutdown_b.load(Ordering::Relaxed) {
            break;
        }
        if t > Duration::from_secs(280) {
            failure = Some("liveness: the run did not finish".into());
            break;
        }
    }
    if failure.is_none() {
        failure = fenced(&s3).or_else(|| no_leaks(&s3));
    }
    rtgt::mutants::set(None);
    let crashes = u32::from(plan.trouble == Trouble::Crash);
    let outcome = shared.borrow().outcome(&sim, started, "remote S3, two targets", &s3, keep_trace);
    Outcome { failure, crashes, ..outcome }
}

/// No host's change to the volume landed during another's tenure: a tenure begins with a
/// host's first change after a change of another, and only a host that took the lease since
/// (its lease write landed) may begin one. So a holder that lost the lease changes nothing
/// after its successor's first change (the lease object aside: a loser's renewals fail
/// against it), unless it took the lease back. A forced takeover's successor waits out the
/// old holder before its first change, so the old holder's last changes before then are fine.
pub(crate) fn fenced(s3: &MemS3) -> Option<String> {
    let mut tenure: Option<(&'static str, Duration)> = None;
    let mut leased: BTreeMap<&'static str, Duration> = BTreeMap::new();
    for l in s3.landed() {
        if l.key.ends_with(LEASE_NAME) {
            leased.insert(l.host, l.at);
            continue;
        }
        match tenure {
            Some((holder, _)) if holder == l.host => {}
            Some((holder, since)) if leased.get(l.host).is_none_or(|&at| at < since) => {
                return Some(format!(
                    "fence: {}'s change to {} landed at {:?}, in {holder}'s tenure (since {since:?}), without the lease",
                    l.host, l.key, l.at
                ));
            }
            _ => tenure = Some((l.host, l.at)),
        }
    }
    None
}

/// B closed the volume cleanly: no log left, no chunk of zeros (a tombstone is empty), and
/// the tombstone rule held (`newest_versions.rs`).
pub(crate) fn no_leaks(s3: &MemS3) -> Option<String> {
    let objects = s3.objects(BUCKET);
    if let Some(f) = crate::newest_versions::lost_newest(&objects, &s3.landed()) {
        return Some(f);
    }
    for (key, body) in &objects {
        if key.contains("/log/") && !crate::recovery_image::settled_log(&objects, key) {
            return Some(format!("leak: log object {key} left after a clean shutdown"));
        }
        if key.contains("/chunks/") && !body.is_empty() && body.iter().all(|&b| b == 0) {
            return Some(format!("leak: chunk object {key} holds only zeros"));
        }
    }
    None
}
