//! A failover pair on one S3 volume, as clusters run it: targets A (node a, portal group 1)
//! and B (node b, portal group 2) both serve the volume from the start with `failover = true`.
//! One holds the lease and serves; the other finds it renewed and is the standby (ALUA
//! standby, NOT READY 04/0B). A multipath initiator keeps a session to each and sends every
//! command down the path that last served, moving to the other path when this one answers
//! NOT READY or drops. Troubles hit whichever target serves: it crashes (and restarts), loses
//! the store or only its lease object (and gets it back), or is partitioned from the
//! initiator (and healed).
//!
//! Oracles: the block model (a change of the serving target counts as a crash of the one
//! before: what it acknowledged without making durable may be lost, nothing durable may);
//! the fence (no target's change lands in another's tenure, see [`fenced`]); one target serves
//! at a time (a switch leaves a gap, [`SWITCH_GAP_MIN`]; the other path is probed now and
//! then); liveness (some path serves within [`SERVE_BOUND`]); the last holder's clean close
//! leaves no log.

use std::cell::RefCell;
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, UNIX_EPOCH};

use bytes::Bytes;
use rtgt::mutants::Mutant;
use rtgt::rng::Rng;
use rtgt_testkit::initiator::{CommandResult, Session, rw16};

use crate::mem_s3::{Cut, MemS3};
use crate::model::BLOCK;
use crate::takeover::{BLOCKS, PairTarget, Shared, check, fenced, login, no_leaks, now, target};
use crate::world::{BUCKET, Outcome};

/// Some path serves within this long of the last command served: a lease waited out (10 s
/// and its margin), a standby's backoff between attempts (up to 10 s), recovery.
const SERVE_BOUND: Duration = Duration::from_secs(60);
/// Commands wait this long for the store or a renewal before NOT READY (below the
/// initiator's 8 s timeout, as a real target's deadline is below Linux's 30 s).
const COMMAND_DEADLINE: Duration = Duration::from_secs(5);
const HOSTS: [&str; 2] = ["a", "b"];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Trouble {
    /// The serving target's process dies; it restarts after a while.
    Crash,
    /// It cannot reach the store at all.
    CutOff,
    /// Its lease requests cannot get through; its data can.
    LeaseCutOff,
    /// The initiator cannot reach it (nor it the initiator).
    Partition,
}

#[derive(Debug, Clone)]
struct Step {
    at: Duration,
    trouble: Trouble,
    lasting: Duration,
}

fn plan(rng: &mut Rng) -> Vec<Step> {
    let mut at = Duration::from_millis(3000 + rng.below(4000));
    let mut steps = Vec::new();
    for _ in 0..2 + rng.below(2) {
        let trouble =
            [Trouble::Crash, Trouble::CutOff, Trouble::LeaseCutOff, Trouble::Partition][rng.below(4) as usize];
        let lasting = Duration::from_millis(match trouble {
            Trouble::Partition => 1000 + rng.below(9000),
            _ => 2000 + rng.below(28_000),
        });
        steps.push(Step { at, trouble, lasting });
        at += lasting + Duration::from_millis(5000 + rng.below(20_000));
    }
    steps
}

/// How one command went, for the choice of path.
enum Answer {
    /// The target executed it (GOOD, or an error of the command itself).
    Served,
    /// A unit attention: the same path again.
    Again,
    /// NOT READY (standby, or the lease lapsed): the other path.
    Refused,
    /// The session dropped or the command timed out.
    Dropped,
}

fn classify(r: &CommandResult, shared: &Rc<RefCell<Shared>>, host: &'static str) -> Answer {
    match (r.status, r.sense_code().map(|c| c.0)) {
        (0, _) => Answer::Served,
        (_, Some(0x6)) => Answer::Again,
        (_, Some(0x2)) => Answer::Refused,
        (_, Some(0x3)) => {
            shared.borrow_mut().fail(format!("{host} answered MEDIUM ERROR: {:?}", r.sense_code()));
            Answer::Served
        }
        _ => Answer::Refused,
    }
}

/// Two targets serving one after the other leave a gap of at least the lease's margin and a
/// request's lifetime between the last command of one and the first of the next (4 s here):
/// a shorter gap means both served at once.
const SWITCH_GAP_MIN: Duration = Duration::from_secs(1);

/// The command issued at `issued` was served by `host`: if another target served before, the
/// model learns that one is gone (as a crash just before this command), and the switch must
/// leave a gap.
fn served_by(shared: &Rc<RefCell<Shared>>, host: &'static str, issued: Duration) {
    let mut sh = shared.borrow_mut();
    if let Some(before) = sh.serving.filter(|&b| b != host) {
        let gap = issued.saturating_sub(sh.served_at);
        if gap < SWITCH_GAP_MIN {
            sh.fail(format!("split brain: {host} served a command {gap:?} after {before} served one"));
        }
        sh.model.crashed(issued.saturating_sub(Duration::from_micros(1)));
        sh.event(host, format!("serves now, not {before}"));
    }
    sh.serving = Some(host);
    sh.served_at = issued;
}

/// One command of the workload down `host`'s path.
async fn op(s: &Session, rng: &mut Rng, shared: &Rc<RefCell<Shared>>, host: &'static str) -> Answer {
    let lba = rng.below(BLOCKS - 4);
    let blocks = 1 + rng.below(4) as u32;
    let issued = now();
    match rng.below(10) {
        0..=3 => {
            let fua = rng.chance(0.25);
            let (w, id) = shared.borrow_mut().model.begin_write(0, 0, lba..lba + blocks as u64, issued);
            let data = crate::workload::data_for(id, lba, blocks);
            let result = s.command(0, &rw16(0x8a, lba, blocks, if fua { 0x08 } else { 0 }), data, 0).await;
            let answer = match &result {
                Ok(r) => classify(r, shared, host),
                Err(_) => Answer::Dropped,
            };
            let good = matches!(&result, Ok(r) if r.status == 0);
            if good {
                served_by(shared, host, issued);
            }
            let mut sh = shared.borrow_mut();
            match good {
                true => sh.model.acked(w, now(), fua),
                false => sh.model.failed(w, now()),
            }
            sh.commands += 1;
            if good {
                sh.event(host, format!("write {lba}+{blocks} id {id}{}", if fua { " fua" } else { "" }));
            }
            answer
        }
        4 => match s.command(0, &rw16(0x91, 0, 0, 0), Bytes::new(), 0).await {
            Ok(r) if r.status == 0 => {
                served_by(shared, host, issued);
                let mut sh = shared.borrow_mut();
                sh.model.synced(0, issued, now());
                sh.event(host, "sync".into());
                Answer::Served
            }
            Ok(r) => classify(&r, shared, host),
            Err(_) => Answer::Dropped,
        },
        _ => match s.command(0, &rw16(0x88, lba, blocks, 0), Bytes::new(), blocks * BLOCK as u32).await {
            Ok(r) if r.status == 0 => {
                served_by(shared, host, issued);
                check(shared, lba, &r.data, issued);
                shared.borrow_mut().commands += 1;
                Answer::Served
            }
            Ok(r) => classify(&r, shared, host),
            Err(_) => Answer::Dropped,
        },
    }
}

/// A look at the other path: a read, which a standby refuses. Whether it served.
async fn probe(s: &Session, shared: &Rc<RefCell<Shared>>, host: &'static str) -> bool {
    let issued = now();
    match s.command(0, &rw16(0x88, 0, 1, 0), Bytes::new(), BLOCK as u32).await {
        Ok(r) if r.status == 0 => {
            served_by(shared, host, issued);
            check(shared, 0, &r.data, issued);
            true
        }
        _ => false,
    }
}

/// A path to one target: its session, if logged in.
struct Path {
    host: &'static str,
    isid: u64,
    session: Option<Session>,
}

impl Path {
    async fn session(&mut self) -> Option<&Session> {
        if self.session.as_ref().is_none_or(|s| s.is_closed()) {
            self.session = login(self.host, self.isid).await;
        }
        self.session.as_ref()
    }
}

/// The multipath initiator: works until `until`, then reads everything back through whichever
/// path serves.
async fn initiator(seed: u64, until: Duration, shared: Rc<RefCell<Shared>>) -> turmoil::Result {
    let mut rng = Rng::seeded(seed);
    let mut paths = [Path { host: "a", isid: 0x1, session: None }, Path { host: "b", isid: 0x2, session: None }];
    let mut current = 0;
    let mut last_served = now();
    let mut misses = 0u32;
    while now() < until {
        if now().saturating_sub(last_served) > SERVE_BOUND {
            shared.borrow_mut().fail(format!("liveness: no path served for {SERVE_BOUND:?}"));
            break;
        }
        let host = paths[current].host;
        let answer = match paths[current].session().await {
            Some(s) => op(s, &mut rng, &shared, host).await,
            None => Answer::Dropped,
        };
        match answer {
            Answer::Served => {
                last_served = now();
                misses = 0;
                // Now and then, look at the other path: a standby must not serve.
                let other = 1 - current;
                let other_host = paths[other].host;
                if rng.chance(0.05)
                    && let Some(s) = paths[other].session().await
                    && probe(s, &shared, other_host).await
                {
                    current = other;
                }
            }
            Answer::Again => {}
            Answer::Refused | Answer::Dropped => {
                if matches!(answer, Answer::Dropped)
                    && let Some(s) = paths[current].session.take()
                {
                    s.disconnect();
                }
                current = 1 - current;
                misses += 1;
                // Both paths refused: wait a little before going round again.
                if misses.is_multiple_of(2) {
                    tokio::time::sleep(Duration::from_millis(300)).await;
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(rng.below(30))).await;
    }
    read_back(&mut paths, &shared).await;
    for p in &mut paths {
        if let Some(s) = p.session.take() {
            let _ = s.logout().await;
        }
    }
    shared.borrow_mut().done = true;
    Ok(())
}

/// Reads the whole volume through whichever path serves, and checks it.
async fn read_back(paths: &mut [Path; 2], shared: &Rc<RefCell<Shared>>) {
    let give_up = now() + SERVE_BOUND;
    let mut current = 0;
    while now() < give_up {
        let host = paths[current].host;
        if let Some(s) = paths[current].session().await {
            let issued = now();
            let len = (BLOCKS as usize * BLOCK) as u32;
            match s.command(0, &rw16(0x88, 0, BLOCKS as u32, 0), Bytes::new(), len).await {
                Ok(r) if r.status == 0 => {
                    served_by(shared, host, issued);
                    check(shared, 0, &r.data, issued);
                    return;
                }
                Ok(r) if r.sense_code().map(|c| c.0) == Some(0x6) => continue,
                Ok(_) => {}
                Err(_) => {
                    paths[current].session = None;
                }
            }
        }
        current = 1 - current;
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    shared.borrow_mut().fail("liveness: the final read found no path that serves".into());
}

pub fn run(seed: u64, mutant: Option<Mutant>, keep_trace: bool) -> Outcome {
    rtgt::mutants::set(mutant);
    crate::panics::clear();
    crate::clock::reset();
    #[allow(clippy::disallowed_methods)] // measures the simulator itself, not simulated time
    let started = Instant::now();
    let mut rng = Rng::seeded(seed ^ 0xfa11);
    let steps = plan(&mut rng);
    let until = steps.last().map_or(Duration::ZERO, |s| s.at + s.lasting) + Duration::from_secs(30);
    let mut sim = turmoil::Builder::new()
        .rng_seed(seed)
        .epoch(UNIX_EPOCH + Duration::from_secs(1_790_000_000))
        .simulation_duration(until + Duration::from_secs(200))
        .min_message_latency(Duration::from_micros(50))
        .max_message_latency(Duration::from_millis(2))
        .build();
    let s3 = MemS3::new(seed ^ 0x5353);
    s3.create_bucket(BUCKET);
    s3.set_base_latency(Duration::from_millis(1 + rng.below(30)));
    let pair: Vec<PairTarget> = ["node-a", "node-b"]
        .into_iter()
        .zip([1u16, 2])
        .map(|(node, tag)| PairTarget {
            node,
            tag,
            start_at: Duration::ZERO,
            force: false,
            failover: true,
            command_deadline: COMMAND_DEADLINE,
            shutdown: Arc::new(AtomicBool::new(false)),
        })
        .collect();
    for (host, t) in HOSTS.into_iter().zip(pair.iter().cloned()) {
        let view = s3.view(host);
        sim.host(host, move || target(view.clone(), t.clone()));
    }
    let shared = Rc::new(RefCell::new(Shared::new()));
    shared.borrow_mut().event("world", format!("{steps:?}"));
    sim.client("init", initiator(seed, until, shared.clone()));

    let mut failure = None;
    // Repairs due: (when, host, what).
    let mut repairs: Vec<(Duration, &'static str, Trouble)> = Vec::new();
    let mut next = 0;
    let mut asked = false;
    loop {
        let t = match Shared::step(&shared, &mut sim) {
            Ok(t) => t,
            Err(e) => {
                failure = Some(e);
                break;
            }
        };
        if next < steps.len() && t >= steps[next].at {
            let step = &steps[next];
            next += 1;
            let host = shared.borrow().serving.unwrap_or("a");
            trouble(&mut sim, &s3, &shared, host, step.trouble, t);
            repairs.push((t + step.lasting, host, step.trouble));
        }
        while let Some(i) = repairs.iter().position(|r| r.0 <= t) {
            let (_, host, what) = repairs.remove(i);
            repair(&mut sim, &s3, &shared, host, what, t);
        }
        if shared.borrow().done && !asked {
            asked = true;
            for p in &pair {
                p.shutdown.store(true, Ordering::Relaxed);
            }
        }
        // Each target clears its flag once shut down.
        if asked && pair.iter().all(|p| !p.shutdown.load(Ordering::Relaxed)) {
            break;
        }
        if t > until + Duration::from_secs(180) {
            failure = Some("liveness: the run did not finish".into());
            break;
        }
    }
    if failure.is_none() {
        failure = fenced(&s3).or_else(|| no_leaks(&s3));
    }
    rtgt::mutants::set(None);
    let crashes = steps.iter().filter(|s| s.trouble == Trouble::Crash).count() as u32;
    let outcome = shared.borrow().outcome(&sim, started, "remote S3, a failover pair", &s3, keep_trace);
    Outcome { failure, crashes, ..outcome }
}

fn trouble(
    sim: &mut turmoil::Sim<'_>,
    s3: &MemS3,
    shared: &Rc<RefCell<Shared>>,
    host: &'static str,
    what: Trouble,
    t: Duration,
) {
    match what {
        Trouble::Crash => {
            // A dead host's sockets send nothing (see world.rs: replays must be exact).
            sim.partition(host, "init");
            sim.crash(host);
            if shared.borrow().serving == Some(host) {
                shared.borrow_mut().model.crashed(crate::clock::now_or(t));
            }
        }
        Trouble::CutOff => s3.cut(host, Some(Cut::All)),
        Trouble::LeaseCutOff => s3.cut(host, Some(Cut::Lease)),
        Trouble::Partition => sim.partition(host, "init"),
    }
    shared.borrow_mut().event_at(t, "world", format!("{host}: {what:?}"));
}

fn repair(
    sim: &mut turmoil::Sim<'_>,
    s3: &MemS3,
    shared: &Rc<RefCell<Shared>>,
    host: &'static str,
    what: Trouble,
    t: Duration,
) {
    match what {
        Trouble::Crash => {
            sim.repair(host, "init");
            sim.bounce(host);
        }
        Trouble::CutOff | Trouble::LeaseCutOff => s3.cut(host, None),
        Trouble::Partition => sim.repair(host, "init"),
    }
    shared.borrow_mut().event_at(t, "world", format!("{host}: over ({what:?})"));
}
