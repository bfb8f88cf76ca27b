//! Authentication and access control, through libiscsi's tools (a real initiator's CHAP) and
//! the library initiator. These need the Debian package libiscsi-bin and fail (not skip) when
//! it is missing.

mod common;

use std::time::Duration;

use bytes::Bytes;
use common::{TestTarget, start};
use rtgt::config::Config;
use rtgt::pdu::tmf;
use rtgt_testkit::initiator::{InitiatorConfig, Session};
use tokio::process::Command;

const OPEN: &str = "iqn.2026-12.dev.rtgt:open";
const CHAP: &str = "iqn.2026-12.dev.rtgt:chap";
const NAMED: &str = "iqn.2026-12.dev.rtgt:named";
const FAR: &str = "iqn.2026-12.dev.rtgt:far";
const ALLOWED: &str = "iqn.2026-12.dev.rtgt:allowed";
const OTHER: &str = "iqn.2026-12.dev.rtgt:other";

/// Runs a libiscsi tool: (whether it succeeded, its output).
async fn run(tool: &str, args: &[&str]) -> (bool, String) {
    let mut cmd = Command::new(tool);
    cmd.args(args).kill_on_drop(true);
    let output = match tokio::time::timeout(Duration::from_secs(30), cmd.output()).await {
        Ok(Ok(o)) => o,
        Ok(Err(e)) => panic!("cannot run {tool}: {e} (install libiscsi-bin: apt-get install -y libiscsi-bin)"),
        Err(_) => panic!("{tool} {args:?} did not finish within 30 s"),
    };
    let text = format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    (output.status.success(), text)
}

/// LUN 0 of a test target: 1 MiB in memory.
const LUN0: &str = "[[target.lun]]\nlun = 0\nbackend = \"memory\"\nsize = \"1MiB\"\n";

async fn target() -> TestTarget {
    let lun = LUN0;
    let text = format!(
        r#"
        [[portal_group]]
        tag = 1
        portals = ["127.0.0.1:0"]

        [[target]]
        name = "{OPEN}"
        {lun}
        [[target.lun]]
        lun = 1
        backend = "memory"
        size = "1MiB"
        initiators = ["{ALLOWED}"]
        [[target]]
        name = "{CHAP}"
        chap = {{ user = "alice", secret = "alice-secret-123", mutual_user = "{CHAP}", mutual_secret = "target-secret-456" }}
        {lun}
        [[target]]
        name = "{NAMED}"
        allowed_initiators = ["{ALLOWED}"]
        {lun}
        [[target]]
        name = "{FAR}"
        allowed_addresses = ["10.0.0.0/8"]
        {lun}
        "#
    );
    start(Config::from_toml(&text).unwrap()).await
}

fn url(t: &TestTarget, credentials: &str, target: &str) -> String {
    format!("iscsi://{credentials}{}/{target}/0", t.addr)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chap_one_way_and_mutual_with_libiscsi() {
    let t = target().await;
    let (ok, out) = run("iscsi-inq", &[&url(&t, "alice%alice-secret-123@", CHAP)]).await;
    assert!(ok && out.contains("Vendor:RTGT"), "the right secret: {out}");
    let mutual =
        format!("{}?target_user={CHAP}&target_password=target-secret-456", url(&t, "alice%alice-secret-123@", CHAP));
    let (ok, out) = run("iscsi-inq", &[&mutual]).await;
    assert!(ok, "mutual CHAP: {out}");
    for (credentials, why) in
        [("alice%wrong-secret-000@", "a wrong secret"), ("bob%alice-secret-123@", "a wrong user"), ("", "no CHAP")]
    {
        let (ok, out) = run("iscsi-inq", &[&url(&t, credentials, CHAP)]).await;
        assert!(!ok, "{why} must be refused: {out}");
    }
    let wrong_target =
        format!("{}?target_user={CHAP}&target_password=not-the-target", url(&t, "alice%alice-secret-123@", CHAP));
    let (ok, out) = run("iscsi-inq", &[&wrong_target]).await;
    assert!(!ok, "the initiator checks the target's proof: {out}");
    assert_eq!(t.server.registry.session_count(), 0, "no refused login left a session");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acls_refuse_and_discovery_lists_only_what_may_be_reached() {
    let t = target().await;
    let (ok, out) = run("iscsi-inq", &["-i", ALLOWED, &url(&t, "", NAMED)]).await;
    assert!(ok, "an allowed initiator: {out}");
    let (ok, out) = run("iscsi-inq", &["-i", OTHER, &url(&t, "", NAMED)]).await;
    assert!(!ok, "another initiator is refused: {out}");
    let (ok, out) = run("iscsi-inq", &["-i", ALLOWED, &url(&t, "", FAR)]).await;
    assert!(!ok, "loopback is not in 10.0.0.0/8: {out}");

    let (ok, listed) = run("iscsi-ls", &["-i", OTHER, &format!("iscsi://{}", t.addr)]).await;
    assert!(ok, "{listed}");
    assert!(listed.contains(OPEN) && listed.contains(CHAP), "{listed}");
    assert!(!listed.contains(NAMED) && !listed.contains(FAR), "targets it may not reach are not listed: {listed}");
    let (_, listed) = run("iscsi-ls", &["-i", ALLOWED, &format!("iscsi://{}", t.addr)]).await;
    assert!(listed.contains(NAMED), "{listed}");
}

/// LUN masking: a LUN shown to some initiators is absent for the others, REPORT LUNS included.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_masked_lun_is_invisible_to_other_initiators() {
    let t = target().await;
    let portal = format!("iscsi://{}", t.addr);
    let (_, other) = run("iscsi-ls", &["-s", "-i", OTHER, &portal]).await;
    let open_luns: Vec<&str> =
        other.lines().skip_while(|l| !l.contains(OPEN)).skip(1).take_while(|l| l.contains("Lun:")).collect();
    assert_eq!(open_luns.len(), 1, "{other}");
    let (_, allowed) = run("iscsi-ls", &["-s", "-i", ALLOWED, &portal]).await;
    let open_luns: Vec<&str> =
        allowed.lines().skip_while(|l| !l.contains(OPEN)).skip(1).take_while(|l| l.contains("Lun:")).collect();
    assert_eq!(open_luns.len(), 2, "{allowed}");
    let masked = format!("iscsi://{}/{OPEN}/1", t.addr);
    let (ok, out) = run("iscsi-readcapacity16", &["-i", OTHER, &masked]).await;
    assert!(!ok, "a masked LUN does not answer: {out}");
    let (ok, out) = run("iscsi-readcapacity16", &["-i", ALLOWED, &masked]).await;
    assert!(ok, "{out}");
}

/// Discovery itself can require CHAP.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn discovery_chap_is_enforced() {
    let text = r#"
        discovery_chap = { user = "finder", secret = "finder-secret-1" }
        [[portal_group]]
        tag = 1
        portals = ["127.0.0.1:0"]
        [[target]]
        name = "iqn.2026-12.dev.rtgt:open"
        [[target.lun]]
        lun = 0
        backend = "memory"
        size = "1MiB"
    "#;
    let t = start(Config::from_toml(text).unwrap()).await;
    let (ok, out) = run("iscsi-ls", &[&format!("iscsi://{}", t.addr)]).await;
    assert!(!ok || !out.contains(OPEN), "discovery without CHAP is refused: {out}");
    let (ok, out) = run("iscsi-ls", &[&format!("iscsi://finder%finder-secret-1@{}", t.addr)]).await;
    assert!(ok && out.contains(OPEN), "{out}");
}

const GUARDED: &str = "iqn.2026-12.dev.rtgt:guarded";
const RESETTER: &str = "iqn.2026-12.dev.rtgt:resetter";

/// A target that admits two initiators and lets one of them reset it.
async fn guarded_target() -> TestTarget {
    let text = format!(
        r#"
        [[portal_group]]
        tag = 1
        portals = ["127.0.0.1:0"]
        [[target]]
        name = "{GUARDED}"
        allowed_initiators = ["{ALLOWED}", "{RESETTER}"]
        reset_initiators = ["{RESETTER}"]
        {LUN0}
        "#
    );
    start(Config::from_toml(&text).unwrap()).await
}

async fn login_from(
    t: &TestTarget,
    source: &str,
    initiator: &str,
    isid: u64,
) -> Result<Session, rtgt_testkit::initiator::Error> {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind(format!("{source}:0").parse().unwrap()).unwrap();
    let stream = socket.connect(t.addr).await.unwrap();
    let config = InitiatorConfig { initiator_name: initiator.into(), isid, ..InitiatorConfig::default() };
    Session::login(stream, &config, Some(GUARDED)).await
}

/// On a target with an ACL, resetting the whole target (which reaches every session's commands,
/// and with a cold reset ends the sessions) is a right of its own: an initiator that may only
/// log in gets "function authorization failed" and the other sessions go on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resetting_a_guarded_target_needs_the_right_to() {
    let t = guarded_target().await;
    let resetter = login_from(&t, "127.0.0.1", RESETTER, 1).await.unwrap();
    let plain = login_from(&t, "127.0.0.1", ALLOWED, 2).await.unwrap();
    for function in [tmf::TARGET_WARM_RESET, tmf::TARGET_COLD_RESET] {
        assert_eq!(plain.task_management(function, 0, 0, 0).await.unwrap(), tmf::AUTHORIZATION_FAILED);
    }
    resetter.nop(Bytes::from_static(b"still here")).await.unwrap();
    assert_eq!(resetter.task_management(tmf::TARGET_WARM_RESET, 0, 0, 0).await.unwrap(), tmf::FUNCTION_COMPLETE);
    plain.nop(Bytes::from_static(b"still here")).await.unwrap();
}

/// A login that would reinstate (and so end) a session is taken only from that session's own
/// address: an initiator name and an ISID are easily claimed by another host. The refusal is
/// "service unavailable", which initiators retry (a session whose host is really gone ends at
/// the NOP timeout).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_sessions_own_address_may_reinstate_it() {
    let t = guarded_target().await;
    let first = login_from(&t, "127.0.0.1", ALLOWED, 7).await.unwrap();
    let Err(refused) = login_from(&t, "127.0.0.2", ALLOWED, 7).await else {
        panic!("a login from elsewhere is refused")
    };
    assert!(matches!(refused, rtgt_testkit::initiator::Error::Login { class: 3, detail: 1 }), "{refused}");
    first.nop(Bytes::from_static(b"untouched")).await.unwrap();
    let again = login_from(&t, "127.0.0.1", ALLOWED, 7).await.unwrap();
    again.nop(Bytes::from_static(b"reinstated")).await.unwrap();
    assert!(first.nop(Bytes::from_static(b"gone")).await.is_err(), "the old session was reinstated");
}
