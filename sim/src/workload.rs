//! An initiator host: a few workers sharing one session, issuing a seeded mix of commands and
//! checking every read against the model.

use std::cell::RefCell;
use std::rc::Rc;
use std::time::Duration;

use bytes::Bytes;
use rtgt::pdu::tmf;
use rtgt::rng::Rng;
use rtgt_testkit::initiator::{CommandResult, Error, InitiatorConfig, Session, Violations, rw16};

use crate::model::{BLOCK, Model, WriteId, encode_block};
use crate::world::{BLOCKS, PORT, TARGET};

/// Every initiator must complete I/O within this long after the faults heal.
pub const LIVENESS_BOUND: Duration = Duration::from_secs(40);
/// Logins that begin this long after the faults heal must succeed (what was in flight at the
/// heal has settled by then).
pub const LOGIN_SETTLE: Duration = Duration::from_secs(3);

/// State shared by the initiators and the world (one thread: `Rc<RefCell<…>>`).
pub struct Shared {
    pub model: Model,
    pub trace: Vec<String>,
    keep_trace: bool,
    pub hash: rtgt::fnv::Fnv1a,
    pub violation: Option<String>,
    /// Per initiator: protocol violations seen over all its sessions.
    pub violations: Vec<Violations>,
    /// Per initiator: when it first completed a command after the faults healed.
    /// Per initiator and LUN: when it first completed a command on that LUN after the faults
    /// healed (every LUN must serve again, not just one).
    pub recovered_after_heal: Vec<[Option<Duration>; LUNS]>,
    pub clients_done: usize,
    pub commands: u64,
    /// The snapshots of LUN 1's volume the target took (`snapshots.rs`).
    pub snapshots: Vec<crate::snapshots::Taken>,
}

impl Shared {
    pub fn new(model: Model, keep_trace: bool) -> Shared {
        Shared {
            model,
            trace: Vec::new(),
            keep_trace,
            hash: rtgt::fnv::Fnv1a::default(),
            violation: None,
            violations: Vec::new(),
            recovered_after_heal: Vec::new(),
            clients_done: 0,
            commands: 0,
            snapshots: Vec::new(),
        }
    }

    /// Records an event in the trace (and its hash).
    pub fn event(&mut self, now: Duration, who: &str, what: String) {
        let line = format!("{:>9.3} {who:<8} {what}", now.as_secs_f64());
        self.hash.update(line.as_bytes());
        self.trace.push(line);
        if !self.keep_trace && self.trace.len() > 400 {
            self.trace.drain(..200);
        }
    }

    fn fail(&mut self, what: String) {
        self.violation.get_or_insert(what);
    }
}

pub struct Settings {
    pub index: usize,
    pub seed: u64,
    pub workers: usize,
    pub until: Duration,
    pub heal_at: Duration,
}

fn now() -> Duration {
    crate::clock::now()
}

/// One initiator: its session (replaced when it breaks) and its workers.
struct Initiator {
    index: usize,
    name: String,
    session: RefCell<Option<Session>>,
    login: tokio::sync::Mutex<()>,
    shared: Rc<RefCell<Shared>>,
    heal_at: Duration,
}

impl Initiator {
    fn record(&self, what: String) {
        self.shared.borrow_mut().event(now(), &self.name, what);
    }

    fn violation(&self, what: String) {
        self.record(format!("VIOLATION {what}"));
        self.shared.borrow_mut().fail(format!("{}: {what}", self.name));
    }

    fn keep_violations(&self, s: &Session) {
        let v = s.violations();
        let mut sh = self.shared.borrow_mut();
        let acc = &mut sh.violations[self.index];
        acc.unexpected_responses += v.unexpected_responses;
        acc.responses_after_abort += v.responses_after_abort;
        acc.stat_sn_errors += v.stat_sn_errors;
        acc.max_cmd_sn_decreases += v.max_cmd_sn_decreases;
        acc.widest_window = acc.widest_window.max(v.widest_window);
    }

    /// Drops the current session (it will be replaced by a reinstating login).
    fn drop_session(&self, why: &str) {
        if let Some(s) = self.session.borrow_mut().take() {
            self.keep_violations(&s);
            s.disconnect();
            self.record(format!("connection dropped: {why}"));
        }
    }

    /// The current session, logging in (again, with the same ISID) when there is none.
    async fn session(&self) -> Option<Session> {
        if let Some(s) = self.session.borrow().as_ref().filter(|s| !s.is_closed()) {
            return Some(s.clone());
        }
        let _one_login = self.login.lock().await;
        if let Some(s) = self.session.borrow().as_ref().filter(|s| !s.is_closed()) {
            return Some(s.clone());
        }
        self.drop_session("closed");
        let began = now();
        let stream = match tokio::time::timeout(
            Duration::from_secs(5),
            turmoil::net::TcpStream::connect(("target", PORT)),
        )
        .await
        {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => {
                self.record(format!("connect failed: {e}"));
                return None;
            }
            Err(_) => {
                self.record("connect timed out".into());
                return None;
            }
        };
        let cfg = InitiatorConfig {
            initiator_name: format!("iqn.2026-11.dev.rtgt:sim-{}", self.name),
            isid: 0x80_0000_0000 + self.index as u64,
            command_timeout: Duration::from_secs(8),
            // Small and varied PDU sizes: reads and writes of a few blocks span several
            // Data-In / Data-Out PDUs, bursts and R2Ts.
            max_recv_data_segment_len: [512, 1024, 8192][self.index % 3],
            first_burst_len: 1024,
            max_burst_len: 2048,
            immediate_data: self.index.is_multiple_of(2),
            initial_r2t: self.index.is_multiple_of(3),
            header_digest: self.index == 1,
            data_digest: self.index == 2,
            ..InitiatorConfig::default()
        };
        match Session::login(stream, &cfg, Some(TARGET)).await {
            Ok(s) => {
                // Reinstatement closed our old session: its commands are over.
                self.shared.borrow_mut().model.settle(self.index, now());
                self.record("logged in".into());
                *self.session.borrow_mut() = Some(s.clone());
                Some(s)
            }
            Err(e) => {
                self.record(format!("login failed: {e}"));
                if began >= self.heal_at + LOGIN_SETTLE {
                    self.violation(format!(
                        "liveness: a login {:?} after the faults healed failed: {e}",
                        began - self.heal_at
                    ));
                }
                None
            }
        }
    }

    fn succeeded(&self, lun: Option<u16>) {
        let t = now();
        let mut sh = self.shared.borrow_mut();
        sh.commands += 1;
        if let Some(lun) = lun
            && t >= self.heal_at
        {
            sh.recovered_after_heal[self.index][lun as usize].get_or_insert(t);
        }
    }

    /// Handles a transport-level failure: the session is suspect and replaced.
    fn transport_error(&self, e: &Error) {
        match e {
            Error::Aborted | Error::Check { .. } => {}
            other => self.drop_session(&other.to_string()),
        }
    }
}

/// The operations of the workload.
#[derive(Debug, Clone, Copy)]
enum Op {
    Read {
        lun: u16,
        lba: u64,
        blocks: u32,
    },
    Write {
        lun: u16,
        lba: u64,
        blocks: u32,
        fua: bool,
    },
    /// WRITE ATOMIC(16), on the S3 LUN, across a chunk boundary.
    WriteAtomic {
        lba: u64,
        blocks: u32,
    },
    WriteSame {
        lun: u16,
        lba: u64,
        blocks: u32,
        zero: bool,
        unmap: bool,
    },
    Unmap {
        lun: u16,
        lba: u64,
        blocks: u32,
    },
    Sync {
        lun: u16,
    },
    CompareAndWrite {
        lun: u16,
        lba: u64,
    },
    AbortTask {
        lun: u16,
        lba: u64,
    },
    LunReset {
        lun: u16,
    },
    Nop,
    Logout,
    Disconnect,
}

/// The LUN on the S3 volume.
const S3_LUN: u16 = 1;
/// LUNs of the target: 0 on the simulated disk, 1 on the S3 volume.
pub const LUNS: usize = 2;

impl Op {
    /// The LUN whose medium the operation reads or writes (task management does not count:
    /// it is answered while the LUN is not ready).
    fn medium_lun(&self) -> Option<u16> {
        match *self {
            Op::AbortTask { .. } | Op::LunReset { .. } => None,
            _ => self.lun(),
        }
    }

    fn lun(&self) -> Option<u16> {
        match *self {
            Op::Read { lun, .. }
            | Op::Write { lun, .. }
            | Op::WriteSame { lun, .. }
            | Op::Unmap { lun, .. }
            | Op::Sync { lun }
            | Op::CompareAndWrite { lun, .. }
            | Op::AbortTask { lun, .. }
            | Op::LunReset { lun } => Some(lun),
            Op::WriteAtomic { .. } => Some(S3_LUN),
            Op::Nop | Op::Logout | Op::Disconnect => None,
        }
    }
}

fn pick(rng: &mut Rng) -> Op {
    let lun = rng.below(2) as u16;
    // A hot region so that initiators overlap, crossing S3 chunk boundaries.
    let lba = rng.below(BLOCKS - 8);
    let blocks = 1 + rng.below(8) as u32;
    match rng.below(100) {
        0..=27 => Op::Read { lun, lba, blocks },
        // Half of its blocks in each of two chunks (16 blocks): a flush would merge both.
        28..=55 if lun == S3_LUN && rng.chance(0.2) => {
            let blocks = 8 + rng.below(9) as u32;
            Op::WriteAtomic { lba: (lba / 16 * 16 + 16 - blocks as u64 / 2).min(BLOCKS - blocks as u64), blocks }
        }
        28..=55 => Op::Write { lun, lba, blocks, fua: rng.chance(0.15) },
        // A third of them zero an S3 chunk (16 blocks) but for its first or last block, without
        // unmapping: its merge fetches that block and may find the chunk all zeros, and that
        // merge must not erase a write logged while it fetched.
        56..=61 if rng.chance(0.33) => {
            Op::WriteSame { lun, lba: lba / 16 * 16 + rng.below(2), blocks: 15, zero: true, unmap: false }
        }
        56..=61 => Op::WriteSame { lun, lba, blocks, zero: rng.chance(0.5), unmap: rng.chance(0.5) },
        // Half of the UNMAPs span whole chunks (16 blocks), which are deleted, not zeroed.
        62..=67 => {
            let blocks = if rng.chance(0.5) { blocks } else { (16 + rng.below(33) as u32).min((BLOCKS - lba) as u32) };
            Op::Unmap { lun, lba, blocks }
        }
        68..=79 => Op::Sync { lun },
        80..=85 => Op::CompareAndWrite { lun, lba },
        86..=89 => Op::AbortTask { lun, lba },
        90 => Op::LunReset { lun },
        91..=95 => Op::Nop,
        96..=97 => Op::Logout,
        _ => Op::Disconnect,
    }
}

/// The data of write `id` of `blocks` blocks at `lba`, each block naming both.
pub(crate) fn data_for(id: u32, lba: u64, blocks: u32) -> Bytes {
    let mut data = vec![0u8; blocks as usize * BLOCK];
    for b in 0..blocks as usize {
        encode_block(id, lba + b as u64, &mut data[b * BLOCK..(b + 1) * BLOCK]);
    }
    Bytes::from(data)
}

/// Checks a read's data against the model.
fn check(init: &Initiator, lun: u16, lba: u64, data: &[u8], issued: Duration) {
    let done = now();
    let mut sh = init.shared.borrow_mut();
    for (i, block) in data.chunks(BLOCK).enumerate() {
        if let Err(e) = sh.model.check_and_note_read(lun as usize, lba + i as u64, block, issued, done) {
            drop(sh);
            init.violation(e);
            return;
        }
    }
}

/// Records the outcome of a write in the model.
fn settle_write(init: &Initiator, w: WriteId, result: &Result<CommandResult, Error>, fua: bool) -> Result<(), Error> {
    let t = now();
    let mut sh = init.shared.borrow_mut();
    match result {
        Ok(r) if r.status == 0 => {
            sh.model.acked(w, t, fua);
            Ok(())
        }
        // A CHECK CONDITION or an abort: ended now, effect unknown.
        Ok(r) => {
            sh.model.failed(w, t);
            r.clone().ok().map(|_| ())
        }
        Err(e @ Error::Aborted) => {
            sh.model.failed(w, t);
            Err(e.clone())
        }
        // Cut off: its fate is known once the session is reinstated.
        Err(e) => Err(e.clone()),
    }
}

async fn run_op(init: &Initiator, s: &Session, op: Op) -> Result<String, Error> {
    let issued = now();
    match op {
        Op::Read { lun, lba, blocks } => {
            let r = s.command(lun, &rw16(0x88, lba, blocks, 0), Bytes::new(), blocks * BLOCK as u32).await?.ok()?;
            check(init, lun, lba, &r.data, issued);
            Ok(format!("read lun{lun} {lba}+{blocks}"))
        }
        Op::Write { lun, lba, blocks, fua } => {
            let (w, id) =
                init.shared.borrow_mut().model.begin_write(lun as usize, init.index, lba..lba + blocks as u64, issued);
            let cdb = rw16(0x8a, lba, blocks, if fua { 0x08 } else { 0 });
            let result = s.command(lun, &cdb, data_for(id, lba, blocks), 0).await;
            settle_write(init, w, &result, fua)?;
            Ok(format!("write lun{lun} {lba}+{blocks} id {id}{}", if fua { " fua" } else { "" }))
        }
        Op::WriteAtomic { lba, blocks } => {
            let range = lba..lba + blocks as u64;
            let (w, id) = {
                let model = &mut init.shared.borrow_mut().model;
                let (w, id) = model.begin_write(S3_LUN as usize, init.index, range.clone(), issued);
                model.atomic(w, range);
                (w, id)
            };
            // WRITE ATOMIC(16): TRANSFER LENGTH is bytes 12-13, inside WRITE(16)'s field.
            let cdb = rw16(0x9c, lba, blocks, 0);
            let result = s.command(S3_LUN, &cdb, data_for(id, lba, blocks), 0).await;
            // Durable once acknowledged, FUA or not.
            settle_write(init, w, &result, true)?;
            Ok(format!("atomic write lun{S3_LUN} {lba}+{blocks} id {id}"))
        }
        Op::WriteSame { lun, lba, blocks, zero, unmap } => {
            let range = lba..lba + blocks as u64;
            // With UNMAP the blocks are unmapped (they read zeros) whatever block is sent.
            let (w, data) = if zero || unmap {
                let w = init.shared.borrow_mut().model.begin_zero(lun as usize, init.index, range, issued);
                let mut d = vec![0u8; BLOCK];
                if !zero {
                    encode_block(u32::MAX, u64::MAX, &mut d);
                }
                (w, d)
            } else {
                let (w, id) = init.shared.borrow_mut().model.begin_write(lun as usize, init.index, range, issued);
                let mut d = vec![0u8; BLOCK];
                encode_block(id, u64::MAX, &mut d);
                (w, d)
            };
            let cdb = rw16(0x93, lba, blocks, if unmap { 0x08 } else { 0 });
            let result = s.command(lun, &cdb, Bytes::from(data), 0).await;
            settle_write(init, w, &result, false)?;
            Ok(format!("write same lun{lun} {lba}+{blocks} zero {zero} unmap {unmap}"))
        }
        Op::Unmap { lun, lba, blocks } => {
            let w =
                init.shared.borrow_mut().model.begin_zero(lun as usize, init.index, lba..lba + blocks as u64, issued);
            let result = unmap(s, lun, lba, blocks).await;
            settle_write(init, w, &result, false)?;
            Ok(format!("unmap lun{lun} {lba}+{blocks}"))
        }
        Op::Sync { lun } => {
            s.command(lun, &rw16(0x91, 0, 0, 0), Bytes::new(), 0).await?.ok()?;
            init.shared.borrow_mut().model.synced(lun as usize, issued, now());
            Ok(format!("sync lun{lun}"))
        }
        Op::CompareAndWrite { lun, lba } => {
            let old = s.command(lun, &rw16(0x88, lba, 1, 0), Bytes::new(), BLOCK as u32).await?.ok()?;
            check(init, lun, lba, &old.data, issued);
            let issued = now();
            let (w, id) = init.shared.borrow_mut().model.begin_write(lun as usize, init.index, lba..lba + 1, issued);
            let mut data = old.data.to_vec();
            data.extend_from_slice(&data_for(id, lba, 1));
            let mut cdb = [0u8; 16];
            cdb[0] = 0x89;
            cdb[2..10].copy_from_slice(&lba.to_be_bytes());
            cdb[13] = 1;
            let result = s.command(lun, &cdb, Bytes::from(data), 0).await;
            let miscompare = matches!(&result, Ok(r) if r.sense_code().map(|c| c.0) == Some(0xe));
            match settle_write(init, w, &result, false) {
                Ok(()) => Ok(format!("compare and write lun{lun} {lba} id {id}")),
                Err(_) if miscompare => Ok(format!("compare and write lun{lun} {lba}: miscompare")),
                Err(e) => Err(e),
            }
        }
        Op::AbortTask { lun, lba } => {
            let (w, id) = init.shared.borrow_mut().model.begin_write(lun as usize, init.index, lba..lba + 1, issued);
            let (itt, cmd_sn, done) = s.start_command(lun, &rw16(0x8a, lba, 1, 0), data_for(id, lba, 1), 0).await?;
            let response = s.abort_task(lun, itt, cmd_sn).await;
            let result = done.await;
            settle_write(init, w, &result, false).ok();
            let response = response?;
            if response != tmf::FUNCTION_COMPLETE && response != tmf::TASK_DOES_NOT_EXIST {
                init.violation(format!("ABORT TASK answered {response}"));
            }
            Ok(format!("abort task of write id {id}: response {response}"))
        }
        Op::LunReset { lun } => {
            let response = s.lun_reset(lun).await?;
            Ok(format!("LUN reset lun{lun}: response {response}"))
        }
        Op::Nop => {
            let echo = s.nop(Bytes::from_static(b"sim")).await?;
            if &echo[..] != b"sim" {
                init.violation("NOP-In did not echo the ping data".into());
            }
            Ok("nop".into())
        }
        Op::Logout => {
            let taken = init.session.borrow_mut().take();
            if let Some(s) = taken {
                init.keep_violations(&s);
                s.logout().await?;
            }
            Ok("logout".into())
        }
        Op::Disconnect => {
            init.drop_session("by the workload");
            Ok("disconnect".into())
        }
    }
}

async fn unmap(s: &Session, lun: u16, lba: u64, blocks: u32) -> Result<CommandResult, Error> {
    let mut param = vec![0u8, 22, 0, 16, 0, 0, 0, 0];
    param.extend_from_slice(&lba.to_be_bytes());
    param.extend_from_slice(&blocks.to_be_bytes());
    param.extend_from_slice(&[0; 4]);
    s.command(lun, &[0x42, 0, 0, 0, 0, 0, 0, 0, 24, 0], Bytes::from(param), 0).await
}

/// Whether a worker goes on: until the end of the run, and past it until the initiator has
/// completed I/O since the faults healed (or the liveness bound has passed), so that a late
/// recovery is observed rather than cut short.
fn keep_going(init: &Initiator, until: Duration) -> bool {
    let t = now();
    let recovered = init.shared.borrow().recovered_after_heal[init.index].iter().all(Option::is_some);
    t < until || (!recovered && t < init.heal_at + LIVENESS_BOUND)
}

async fn worker(init: Rc<Initiator>, seed: u64, until: Duration) {
    let mut rng = Rng::seeded(seed);
    while keep_going(&init, until) {
        let Some(s) = init.session().await else {
            tokio::time::sleep(Duration::from_millis(300 + rng.below(700))).await;
            continue;
        };
        let op = pick(&mut rng);
        match run_op(&init, &s, op).await {
            Ok(what) => {
                init.succeeded(op.medium_lun());
                init.record(what);
            }
            Err(Error::Check { key: 0x6, .. }) => init.record(format!("{op:?}: unit attention")),
            // The S3 volume's data is never corrupt here: a MEDIUM ERROR means a transient
            // fault (or a lost object) was passed off as a bad medium.
            Err(ref e @ Error::Check { key: 0x3, .. }) if op.lun() == Some(S3_LUN) => {
                init.violation(format!("MEDIUM ERROR from the S3 volume: {op:?}: {e}"));
            }
            Err(e) => {
                init.record(format!("{op:?}: {e}"));
                init.transport_error(&e);
            }
        }
        tokio::time::sleep(Duration::from_millis(rng.below(40))).await;
    }
}

/// The software of an initiator host.
pub async fn initiator(settings: Settings, shared: Rc<RefCell<Shared>>) -> turmoil::Result {
    {
        let mut sh = shared.borrow_mut();
        while sh.violations.len() <= settings.index {
            sh.violations.push(Violations::default());
            sh.recovered_after_heal.push([None; LUNS]);
        }
    }
    let init = Rc::new(Initiator {
        index: settings.index,
        name: format!("init{}", settings.index),
        session: RefCell::new(None),
        login: tokio::sync::Mutex::new(()),
        shared: shared.clone(),
        heal_at: settings.heal_at,
    });
    let workers: Vec<_> = (0..settings.workers)
        .map(|w| {
            tokio::task::spawn_local(worker(init.clone(), settings.seed.wrapping_add(w as u64 * 7919), settings.until))
        })
        .collect();
    for w in workers {
        w.await?;
    }
    // Finish cleanly so that the target can shut down.
    let last = init.session.borrow_mut().take();
    if let Some(s) = last {
        init.keep_violations(&s);
        let _ = s.logout().await;
    }
    shared.borrow_mut().clients_done += 1;
    Ok(())
}
