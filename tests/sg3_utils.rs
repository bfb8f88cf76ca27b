//! sg3-utils, the tools administrators and cluster software (pacemaker's fence_scsi, multipath's
//! prio/alua, VMware-like copy offload) use on SCSI disks: `sg_persist`, `sg_rtpg`, `sg_xcopy`,
//! with `sg_turs`, `sg_dd`, `sg_raw`, `sg_write_same`, `sg_vpd`, `sg_requests` to set up and check
//! — their own parsing of rtgt's answers, run against an in-process target.
//!
//! Why a shim: sg3-utils speaks to a Linux sg device (open a /dev/sgN, the SG_IO ioctl), and
//! these machines have no kernel iSCSI initiator to make one. tests/sg3_utils/sg_over_iscsi.c is
//! an LD_PRELOAD library, compiled here with `cc` against libiscsi, that makes chosen paths look
//! like sg devices (stat: a character device of the sg major) and carries each SG_IO over an
//! iSCSI session (see its header for the details). Statuses, sense data and unit attentions
//! come back exactly as rtgt sent them: a CHECK CONDITION is status 0x02 with rtgt's sense
//! bytes, a RESERVATION CONFLICT is 0x18, and sg3-utils decodes them as it would for a disk.
//!
//! What this does not cover: the kernel's SCSI layer — its scan (which would consume the
//! power-on unit attention; the tests do that openly with `sg_turs`), sd's and the midlayer's
//! retries and error handling, multipath. Each tool run is its own iSCSI login (same initiator
//! name and ISID each time, so the same I_T nexus), where a kernel would keep one session.
//!
//! The tests need `cc`, libiscsi-dev and sg3-utils, and fail (not skip) when one is missing.

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::{BS, TARGET, memory_config, start};
use rtgt::config::Config;
use rtgt::scsi::alua::AluaState;
use tokio::process::Command;

const INSTALL: &str = "apt-get install -y gcc libiscsi-dev sg3-utils";
const TOOL_TIMEOUT: Duration = Duration::from_secs(30);

/// What a tool printed (stdout, then stderr) and its exit code.
#[derive(Debug)]
struct Run {
    code: i32,
    text: String,
}

/// The shim, compiled into a temporary directory, and the device paths it maps to LUNs. The
/// paths live in that directory and do not exist: only the shim makes them devices.
struct Shim {
    dir: tempfile::TempDir,
    library: PathBuf,
    /// SG_ISCSI_DEVICES: "PATH=URL,...".
    devices: String,
}

impl Shim {
    /// Compiles the shim and maps `devices` (a name, an iscsi:// URL) to paths named after them.
    async fn build(devices: &[(&str, String)]) -> Shim {
        let dir = tempfile::tempdir().unwrap();
        let library = dir.path().join("sg_over_iscsi.so");
        let source = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/sg3_utils/sg_over_iscsi.c");
        let mut cc = Command::new("cc");
        cc.args(["-shared", "-fPIC", "-Wall", "-Wextra", "-o"]).arg(&library).arg(&source).args(["-liscsi", "-ldl"]);
        let out = match cc.kill_on_drop(true).output().await {
            Ok(out) => out,
            Err(e) => panic!("cannot run cc: {e}: a C compiler is needed to build the sg3-utils shim ({INSTALL})"),
        };
        assert!(
            out.status.success(),
            "building the shim failed (is libiscsi-dev installed? {INSTALL}):\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let devices = devices
            .iter()
            .map(|(name, url)| format!("{}={url}", dir.path().join(name).display()))
            .collect::<Vec<_>>()
            .join(",");
        Shim { dir, library, devices }
    }

    /// The device path of a mapped name.
    fn dev(&self, name: &str) -> String {
        self.dir.path().join(name).display().to_string()
    }

    /// A file in the temporary directory (data for and from the tools).
    fn file(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// An initiator: the name and the ISID (0x80 RR RR RR QQ QQ) the shim logs in with.
    fn initiator(&self, name: &str, isid_random: u32, isid_qualifier: u16) -> Initiator<'_> {
        Initiator { shim: self, name: format!("iqn.2026-11.dev.rtgt:{name}"), isid_random, isid_qualifier }
    }
}

struct Initiator<'a> {
    shim: &'a Shim,
    name: String,
    isid_random: u32,
    isid_qualifier: u16,
}

impl Initiator<'_> {
    /// The iSCSI initiator port name as SPC's TransportID (and sg_persist) writes it.
    fn port_name(&self) -> String {
        format!("{},i,0x80{:06x}{:04x}", self.name, self.isid_random, self.isid_qualifier)
    }

    /// Runs an sg3-utils tool through the shim.
    async fn run(&self, tool: &str, args: &[&str]) -> Run {
        let mut cmd = Command::new(tool);
        cmd.args(args)
            .current_dir(self.shim.dir.path())
            .env("LD_PRELOAD", &self.shim.library)
            .env("SG_ISCSI_DEVICES", &self.shim.devices)
            .env("SG_ISCSI_INITIATOR", &self.name)
            .env("SG_ISCSI_ISID_RANDOM", self.isid_random.to_string())
            .env("SG_ISCSI_ISID_QUALIFIER", self.isid_qualifier.to_string())
            .kill_on_drop(true);
        let out = match tokio::time::timeout(TOOL_TIMEOUT, cmd.output()).await {
            Ok(Ok(out)) => out,
            Ok(Err(e)) => panic!("cannot run {tool}: {e} (sg3-utils is needed: {INSTALL})"),
            Err(_) => panic!("{tool} {args:?} did not finish within {TOOL_TIMEOUT:?}"),
        };
        let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        // A signal is no exit code: -1, which no assertion expects.
        Run { code: out.status.code().unwrap_or(-1), text }
    }

    /// Runs a tool that must succeed; its output.
    async fn ok(&self, tool: &str, args: &[&str]) -> String {
        let r = self.run(tool, args).await;
        assert_eq!(r.code, 0, "{} ({}): {tool} {args:?} failed:\n{}", self.name, self.isid_qualifier, r.text);
        r.text
    }

    /// Runs a tool that must fail with `code` (sg3-utils' exit codes: 2 NOT READY, 6 UNIT
    /// ATTENTION, 10 COPY ABORTED, 24 RESERVATION CONFLICT); its output.
    async fn fails(&self, code: i32, tool: &str, args: &[&str]) -> String {
        let r = self.run(tool, args).await;
        assert_eq!(r.code, code, "{}: {tool} {args:?}: expected exit code {code}:\n{}", self.name, r.text);
        r.text
    }

    /// What a kernel initiator's scan does after login: the first command through a new I_T
    /// nexus is told of the power-on (SAM-5 §5.14), the next one goes through.
    async fn consume_power_on(&self, dev: &str) {
        let first = self.fails(6, "sg_turs", &[dev]).await;
        assert!(
            first.contains("Unit Attention") && first.contains("Power on, reset, or bus device reset occurred"),
            "{first}"
        );
        self.ok("sg_turs", &[dev]).await;
    }
}

/// `needle` in `hay`, or a failure that prints both.
#[track_caller]
fn assert_has(hay: &str, needle: &str) {
    assert!(hay.contains(needle), "expected {needle:?} in:\n{hay}");
}

/// The block of `sg_persist --in -s` output about one key: from "Key=K" to the next key.
fn status_of_key<'a>(full_status: &'a str, key: &str) -> &'a str {
    let start = full_status.find(&format!("Key={key}\n")).unwrap_or_else(|| panic!("no Key={key} in:\n{full_status}"));
    let rest = &full_status[start + 1..];
    let end = rest.find("Key=").map_or(full_status.len(), |i| start + 1 + i);
    &full_status[start..end]
}

/// Deterministic bytes that differ from block to block.
fn pattern(seed: u32, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(2_654_435_761) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x as u8
        })
        .collect()
}

/// Two initiators share LUN 0 through PERSISTENT RESERVE IN/OUT as sg_persist sends and
/// decodes them: registration, a Write Exclusive reservation, the full status with each
/// registrant's TransportID (initiator name and ISID), a write refused with RESERVATION
/// CONFLICT while reads go through, a preemption with its unit attention, and a clear.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sg_persist_between_two_initiators() {
    let t = start(memory_config("")).await;
    let shim = Shim::build(&[("lun0", t.url(0))]).await;
    let lun0 = shim.dev("lun0");
    let lun0 = lun0.as_str();
    let alice = shim.initiator("alice", 0x12_3456, 0x0001);
    let bob = shim.initiator("bob", 0xab_cdef, 0x0002);
    alice.consume_power_on(lun0).await;
    bob.consume_power_on(lun0).await;

    // REPORT CAPABILITIES: every reservation type, SIP_C and ATP_C, no persistence through
    // power loss (a memory LUN keeps nothing).
    let caps = alice.ok("sg_persist", &["--in", "-c", lun0]).await;
    for line in [
        "Report capabilities response:",
        "Compatible Reservation Handling(CRH): 1",
        "Specify Initiator Ports Capable(SIP_C): 1",
        "All Target Ports Capable(ATP_C): 1",
        "Persist Through Power Loss Capable(PTPL_C): 0",
        "Type Mask Valid(TMV): 1",
        "Persist Through Power Loss Active(PTPL_A): 0",
        "Write Exclusive, all registrants: 1",
        "Exclusive Access, registrants only: 1",
        "Write Exclusive, registrants only: 1",
        "Exclusive Access: 1",
        "Write Exclusive: 1",
        "Exclusive Access, all registrants: 1",
    ] {
        assert_has(&caps, line);
    }

    // Nothing registered yet.
    let keys = alice.ok("sg_persist", &["--in", "-k", lun0]).await;
    assert_has(&keys, "PR generation=0x0, there are NO registered reservation keys");

    // REGISTER from each; READ KEYS lists both (in no particular order), generation 2.
    alice.ok("sg_persist", &["--out", "--register", "--param-sark=0xaaaa", lun0]).await;
    bob.ok("sg_persist", &["--out", "--register", "--param-sark=0xbbbb", lun0]).await;
    let keys = bob.ok("sg_persist", &["--in", "-k", lun0]).await;
    assert_has(&keys, "PR generation=0x2, 2 registered reservation keys follow:");
    assert_has(&keys, "    0xaaaa\n");
    assert_has(&keys, "    0xbbbb\n");

    // Alice reserves Write Exclusive (type 1): bob, though registered, may read but not write.
    alice.ok("sg_persist", &["--out", "--reserve", "--param-rk=0xaaaa", "--prout-type=1", lun0]).await;
    let reservation = bob.ok("sg_persist", &["--in", "-r", lun0]).await;
    assert_has(
        &reservation,
        "PR generation=0x2, Reservation follows:\n    Key=0xaaaa\n    scope: LU_SCOPE,  type: Write Exclusive\n",
    );

    // READ FULL STATUS: each registrant with its TransportID, the iSCSI initiator port name
    // "name,i,0xISID" (SPC-4 TransportID format 01b), and the holder marked.
    let full = bob.ok("sg_persist", &["--in", "-s", lun0]).await;
    assert_has(&full, "PR generation=0x2");
    let a = status_of_key(&full, "0xaaaa");
    assert_has(a, "<< Reservation holder >>");
    assert_has(a, "scope: LU_SCOPE,  type: Write Exclusive");
    assert_has(a, "Relative port address: 0x1");
    assert_has(a, &format!("iSCSI world wide unique port id: {}\n", alice.port_name()));
    let b = status_of_key(&full, "0xbbbb");
    assert_has(b, "not reservation holder");
    assert_has(b, &format!("iSCSI world wide unique port id: {}\n", bob.port_name()));
    assert_eq!(alice.port_name(), "iqn.2026-11.dev.rtgt:alice,i,0x801234560001");

    // The holder writes (WRITE SAME(10) of one block); bob's WRITE(10) of the same block is
    // refused with status RESERVATION CONFLICT, and his READ(10) shows alice's data unchanged.
    let from_alice = pattern(1, BS as usize);
    let from_bob = pattern(2, BS as usize);
    std::fs::write(shim.file("alice.bin"), &from_alice).unwrap();
    std::fs::write(shim.file("bob.bin"), &from_bob).unwrap();
    alice.ok("sg_write_same", &["--lba=8", "--num=1", "--in=alice.bin", lun0]).await;
    let write10 = ["2a", "00", "00", "00", "00", "08", "00", "00", "01", "00"];
    let read10 = ["28", "00", "00", "00", "00", "08", "00", "00", "01", "00"];
    let conflict = bob.fails(24, "sg_raw", &[&["-s", "512", "-i", "bob.bin", lun0][..], &write10].concat()).await;
    assert_has(&conflict, "SCSI Status: Reservation Conflict");
    let read = bob.ok("sg_raw", &[&["-r", "512", "-o", "read.bin", lun0][..], &read10].concat()).await;
    assert_has(&read, "SCSI Status: Good");
    assert!(std::fs::read(shim.file("read.bin")).unwrap() == from_alice, "bob read something else than alice's block");

    // Bob preempts alice's registration (and so her reservation): he now holds Write
    // Exclusive, alice is told REGISTRATIONS PREEMPTED, once.
    bob.ok("sg_persist", &["--out", "--preempt", "--param-rk=0xbbbb", "--param-sark=0xaaaa", "--prout-type=1", lun0])
        .await;
    let told = alice.fails(6, "sg_turs", &[lun0]).await;
    assert_has(&told, "Unit Attention");
    assert_has(&told, "Registrations preempted");
    alice.ok("sg_turs", &[lun0]).await;
    let keys = alice.ok("sg_persist", &["--in", "-k", lun0]).await;
    assert_has(&keys, "PR generation=0x3, 1 registered reservation key follows:\n    0xbbbb\n");
    let reservation = alice.ok("sg_persist", &["--in", "-r", lun0]).await;
    assert_has(&reservation, "Reservation follows:\n    Key=0xbbbb\n    scope: LU_SCOPE,  type: Write Exclusive\n");
    let full = alice.ok("sg_persist", &["--in", "-s", lun0]).await;
    assert!(!full.contains("Key=0xaaaa"), "alice's registration survived the preemption:\n{full}");
    assert_has(status_of_key(&full, "0xbbbb"), "<< Reservation holder >>");

    // Now alice's writes conflict (sg_write_same decodes the status too) and bob's go through.
    let conflict = alice.fails(24, "sg_write_same", &["--lba=8", "--num=1", "--in=alice.bin", lun0]).await;
    assert_has(&conflict, "Reservation conflict");
    bob.ok("sg_raw", &[&["-s", "512", "-i", "bob.bin", lun0][..], &write10].concat()).await;
    alice.ok("sg_raw", &[&["-r", "512", "-o", "read.bin", lun0][..], &read10].concat()).await;
    assert!(std::fs::read(shim.file("read.bin")).unwrap() == from_bob, "alice does not read bob's block");

    // CLEAR: no registration, no reservation; alice writes again.
    bob.ok("sg_persist", &["--out", "--clear", "--param-rk=0xbbbb", lun0]).await;
    let keys = alice.ok("sg_persist", &["--in", "-k", lun0]).await;
    assert_has(&keys, "PR generation=0x4, there are NO registered reservation keys");
    let reservation = alice.ok("sg_persist", &["--in", "-r", lun0]).await;
    assert_has(&reservation, "there is NO reservation held");
    alice.ok("sg_write_same", &["--lba=8", "--num=1", "--in=alice.bin", lun0]).await;
}

/// A target with two portal groups (two target port groups): active/optimized and standby. (Two
/// loopback addresses: one address may be listed once, even with port 0.)
fn two_port_groups() -> Config {
    let text = format!(
        r#"
        [[portal_group]]
        tag = 1
        portals = ["127.0.0.1:0"]

        [[portal_group]]
        tag = 2
        portals = ["127.0.0.2:0"]
        alua_state = "standby"

        [[target]]
        name = "{TARGET}"

        [[target.lun]]
        lun = 0
        backend = "memory"
        size = "64MiB"
        "#
    );
    Config::from_toml(&text).unwrap()
}

/// The PERSISTENT RESERVE OUT forms that name I_T nexuses other than the sender's, as
/// sg_persist sends them, through a target with two ports: ALL_TG_PT (`--param-alltgpt`),
/// SPEC_I_PT (`--register` with `--transport-id`) and REGISTER AND MOVE (`--register-move`
/// with `--relative-target-port`, `--transport-id` and `--unreg`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sg_persist_registers_and_moves_through_other_ports() {
    let t = start(two_port_groups()).await;
    // Both ports active: writes go through either.
    let states = [(1, AluaState::ActiveOptimized), (2, AluaState::ActiveOptimized)];
    t.server.registry.target(TARGET).unwrap().scsi.set_port_groups(states.into());
    let second = t.server.registry.portal_groups()[&2][0];
    let shim = Shim::build(&[("port1", t.url(0)), ("port2", format!("iscsi://{second}/{TARGET}/0"))]).await;
    let (port1, port2) = (shim.dev("port1"), shim.dev("port2"));
    let (port1, port2) = (port1.as_str(), port2.as_str());
    let alice = shim.initiator("alice", 0x12_3456, 0x0001);
    let bob = shim.initiator("bob", 0xab_cdef, 0x0002);
    let carol = shim.initiator("carol", 0x00_0c0c, 0x0003);
    for dev in [port1, port2] {
        alice.consume_power_on(dev).await;
        bob.consume_power_on(dev).await;
    }

    // ALL_TG_PT: one REGISTER through port 1 registers alice through both ports, and she may
    // reserve through port 2.
    alice.ok("sg_persist", &["--out", "--register", "--param-sark=0xaaaa", "--param-alltgpt", port1]).await;
    let full = bob.ok("sg_persist", &["--in", "-s", port1]).await;
    assert_eq!(full.matches("Key=0xaaaa\n").count(), 2, "{full}");
    assert_has(&full, "Relative port address: 0x1");
    assert_has(&full, "Relative port address: 0x2");
    alice.ok("sg_persist", &["--out", "--reserve", "--param-rk=0xaaaa", "--prout-type=1", port2]).await;

    // SPEC_I_PT: bob registers himself and carol, who has never logged in.
    let carol_id = format!("--transport-id={}", carol.port_name());
    bob.ok("sg_persist", &["--out", "--register", "--param-sark=0xbbbb", &carol_id, port1]).await;
    carol.consume_power_on(port1).await;
    let keys = carol.ok("sg_persist", &["--in", "-k", port1]).await;
    assert_eq!(keys.matches("0xbbbb").count(), 2, "bob's and carol's: {keys}");
    // A registered sender may not name others (INVALID FIELD IN CDB; sg3-utils exits 5).
    let refused = alice
        .fails(
            5,
            "sg_persist",
            &["-v", "--out", "--register", "--param-rk=0xaaaa", "--param-sark=0xaaab", &carol_id, port1],
        )
        .await;
    assert_has(&refused, "Invalid field in cdb");
    let keys = carol.ok("sg_persist", &["--in", "-k", port1]).await;
    assert!(keys.contains("0xaaaa") && !keys.contains("0xaaab"), "the refused REGISTER changed nothing: {keys}");

    // REGISTER AND MOVE: alice, holding the reservation through port 2, hands it to bob
    // through port 2 (registering him there) and leaves that I_T nexus unregistered.
    let bob_id = format!("--transport-id={}", bob.port_name());
    let moving = ["--out", "--register-move", "--param-rk=0xaaaa", "--param-sark=0xbbbc", "--prout-type=1"];
    let moving = [&moving[..], &["--relative-target-port=2", &bob_id, "--unreg", port2]].concat();
    alice.ok("sg_persist", &moving).await;
    let reservation = bob.ok("sg_persist", &["--in", "-r", port2]).await;
    assert_has(&reservation, "Key=0xbbbc");
    let full = bob.ok("sg_persist", &["--in", "-s", port2]).await;
    assert_has(status_of_key(&full, "0xbbbc"), "<< Reservation holder >>");
    assert_eq!(full.matches("Key=0xaaaa\n").count(), 1, "alice through port 1 only: {full}");
    // Bob writes through port 2; alice, registered but not the holder, may not.
    let block = shim.file("block.bin");
    std::fs::write(&block, pattern(7, BS as usize)).unwrap();
    let block = block.display().to_string();
    let write = |dev: &str| ["--lba=8", "--num=1", &format!("--in={block}"), dev].map(str::to_string);
    let bob_write = write(port2);
    let bob_write: Vec<&str> = bob_write.iter().map(String::as_str).collect();
    bob.ok("sg_write_same", &bob_write).await;
    let alice_write = write(port1);
    let alice_write: Vec<&str> = alice_write.iter().map(String::as_str).collect();
    alice.fails(24, "sg_write_same", &alice_write).await;
}

/// REPORT TARGET PORT GROUPS as multipath's alua prioritiser reads it with sg_rtpg: both
/// groups, each in its state with its one relative port, through either port; the device
/// identification page names the port and group a path goes through, and the standby port
/// refuses media access with the standby ASC.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sg_rtpg_reports_both_port_groups() {
    let config = two_port_groups();
    let states = config.portal_groups.iter().map(|pg| (pg.tag, pg.alua_state)).collect();
    let t = start(config).await;
    // What the configuration manager does when it applies a configuration (apply_alua_states
    // in src/api/manager.rs) and common::start, which only populates the registry, does not:
    // tell the target its port groups' states. Without it the target knows no groups and
    // reports only the one a command comes through, active/optimized.
    t.server.registry.target(TARGET).unwrap().scsi.set_port_groups(states);
    let standby_addr = t.server.registry.portal_groups()[&2][0];
    let shim = Shim::build(&[("active", t.url(0)), ("standby", format!("iscsi://{standby_addr}/{TARGET}/0"))]).await;
    let (active, standby) = (shim.dev("active"), shim.dev("standby"));
    let (active, standby) = (active.as_str(), standby.as_str());
    let host = shim.initiator("multipath", 0x00_0001, 0x0003);

    // The power-on unit attention of each path's I_T nexus first. Through the standby port
    // with REQUEST SENSE, which every access state admits (a TEST UNIT READY there would be
    // refused NOT READY).
    host.consume_power_on(active).await;
    let sense = host.ok("sg_requests", &[standby]).await;
    assert_has(&sense, "Power on, reset, or bus device reset occurred");

    let group = |id: u8, state: &str| {
        format!(
            "  target port group id : 0x{id} , Pref=0, Rtpg_fmt=0\n    target port group asymmetric access state : {state}\n"
        )
    };
    let port = |id: u8| format!("    target port count : 01\n    Relative target port ids:\n      0x0{id}\n");
    let supported = "T_SUP : 1, O_SUP : 0, LBD_SUP : 0, U_SUP : 1, S_SUP : 1, AN_SUP : 1, AO_SUP : 1";
    for (dev, extended) in [(active, false), (standby, false), (active, true), (standby, true)] {
        let args: &[&str] = if extended { &["-d", "-e", dev] } else { &["-d", dev] };
        let out = host.ok("sg_rtpg", args).await;
        assert_has(&out, "Report target port groups:");
        assert_has(&out, &group(1, "0x00 (active/optimized)"));
        assert_has(&out, &group(2, "0x02 (standby)"));
        assert_has(&out, &port(1));
        assert_has(&out, &port(2));
        assert_eq!(out.matches(supported).count(), 2, "{out}");
        assert_eq!(out.matches("target port group id").count(), 2, "{out}");
        assert_eq!(out.contains("Implicit transition time: 0"), extended, "{out}");
    }

    // Each path's device identification VPD page: its relative port and port group.
    for (dev, id) in [(active, 1), (standby, 2)] {
        let di = host.ok("sg_vpd", &["-p", "di", dev]).await;
        assert_has(&di, &format!("Relative target port: 0x{id}"));
        assert_has(&di, &format!("Target port group: 0x{id}"));
        assert_has(&di, &format!("{TARGET},t,0x000{id}"));
    }

    // Media access: through the active port, and through the standby port NOT READY, LOGICAL
    // UNIT NOT ACCESSIBLE, TARGET PORT IN STANDBY STATE (SPC-4 §5.15.2.4.4).
    let read10 = ["28", "00", "00", "00", "00", "00", "00", "00", "01", "00"];
    host.ok("sg_raw", &[&["-r", "512", active][..], &read10].concat()).await;
    let refused = host.fails(2, "sg_raw", &[&["-r", "512", standby][..], &read10].concat()).await;
    assert_has(&refused, "Sense key: Not Ready");
    assert_has(&refused, "Logical unit not accessible, target port in standby state");
}

/// EXTENDED COPY as sg_xcopy builds it (identification target descriptors from VPD page 0x83,
/// a block-to-block segment): a range of LUN 0 copied elsewhere in LUN 0 and into LUN 1, checked
/// byte for byte through sg_dd and through the test's own initiator. Into a write-protected
/// LUN the copy is refused (COPY ABORTED, UNREACHABLE COPY TARGET) and nothing is written.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sg_xcopy_copies_within_and_between_logical_units() {
    let t = start(memory_config("")).await;
    let shim = Shim::build(&[("lun0", t.url(0)), ("lun1", t.url(1))]).await;
    let (lun0, lun1) = (shim.dev("lun0"), shim.dev("lun1"));
    let (lun0, lun1) = (lun0.as_str(), lun1.as_str());
    let host = shim.initiator("copier", 0x00_0002, 0x0004);
    host.consume_power_on(lun0).await;
    host.consume_power_on(lun1).await;
    // The test's own initiator, to check the bytes independently of the shim.
    let own = t.ready_session(0x77).await;
    let bs = BS as usize;

    // Eight blocks of a pattern at LBA 16 of LUN 0, written with sg_dd (its own SG_IO calls).
    let data = pattern(7, 8 * bs);
    std::fs::write(shim.file("pattern.bin"), &data).unwrap();
    let dd = host.ok("sg_dd", &["if=pattern.bin", &format!("of={lun0}"), "bs=512", "seek=16", "count=8"]).await;
    assert_has(&dd, "8+0 records out");
    assert!(own.read(0, 16, 8, BS).await.unwrap() == data, "sg_dd's write did not land at LUN 0, LBA 16");

    // sg_xcopy LBA 16..24 to LBA 1000..1008 of LUN 0: one EXTENDED COPY.
    let copy = host
        .ok("sg_xcopy", &[&format!("if={lun0}"), &format!("of={lun0}"), "bs=512", "skip=16", "seek=1000", "count=8"])
        .await;
    assert_has(&copy, "sg_xcopy: 8 blocks, 1 command");
    // LBA 992..1016 read back with sg_dd: zeros, the pattern, zeros (nothing more was written).
    host.ok("sg_dd", &[&format!("if={lun0}"), "of=copy.bin", "bs=512", "skip=992", "count=24"]).await;
    let expected = [vec![0u8; 8 * bs], data.clone(), vec![0u8; 8 * bs]].concat();
    assert!(std::fs::read(shim.file("copy.bin")).unwrap() == expected, "the copy read back with sg_dd differs");
    assert!(own.read(0, 992, 24, BS).await.unwrap() == expected, "the copy read by the own initiator differs");

    // LUN 0 to LUN 1.
    let to_lun1 = ["-vvv", &format!("if={lun0}"), &format!("of={lun1}"), "bs=512", "skip=16", "seek=1000", "count=8"];
    assert_has(&host.ok("sg_xcopy", &to_lun1[1..]).await, "sg_xcopy: 8 blocks, 1 command");
    assert!(own.read(1, 1000, 8, BS).await.unwrap() == data, "the copy into LUN 1 differs");

    // LUN 1 write-protected (SWP in its control mode page, set by the own initiator): a copy
    // into it, sent to LUN 0, is COPY ABORTED, UNREACHABLE COPY TARGET (sg_xcopy prints the
    // sense at -vvv), and LUN 1 is untouched.
    let control = own.command(1, &[0x1a, 0x08, 0x0a, 0, 255, 0], bytes::Bytes::new(), 255).await.unwrap();
    let mut page = control.data[4..].to_vec();
    page[0] &= 0x7f; // PS
    page[4] |= 0x08; // SWP
    let select = [vec![0u8; 4], page].concat();
    let set = own.command(1, &[0x15, 0x10, 0, 0, select.len() as u8, 0], select.into(), 0).await.unwrap();
    assert_eq!(set.status, 0, "MODE SELECT of SWP");
    let changed = host.fails(6, "sg_turs", &[lun1]).await;
    assert_has(&changed, "Mode parameters changed");
    let elsewhere =
        ["-vvv", "--on_src", &format!("if={lun0}"), &format!("of={lun1}"), "bs=512", "skip=16", "seek=2000", "count=8"];
    let refused = host.fails(10, "sg_xcopy", &elsewhere).await;
    assert_has(&refused, "Sense key: Copy Aborted");
    assert_has(&refused, "Unreachable copy target");
    assert!(own.read(1, 2000, 8, BS).await.unwrap().iter().all(|&b| b == 0), "LUN 1 was written");
    common::TestTarget::assert_clean(&own);
}
