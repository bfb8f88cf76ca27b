//! An in-process target on a free loopback port, for integration tests.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::sync::Arc;

use rtgt::config::Config;
use rtgt::server::{Registry, Server, TokioClock, TokioNet};
use rtgt_testkit::initiator::{InitiatorConfig, Session};
use tokio::net::TcpStream;

pub const TARGET: &str = "iqn.2026-11.dev.rtgt:test";
pub const BS: u32 = 512;

pub struct TestTarget {
    pub addr: SocketAddr,
    pub server: Arc<Server<TokioNet>>,
    accepting: Vec<tokio::task::JoinHandle<()>>,
}

impl Drop for TestTarget {
    fn drop(&mut self) {
        for a in &self.accepting {
            a.abort();
        }
    }
}

/// A configuration with one target and memory LUNs 0 and 1 (64 MiB each).
pub fn memory_config(extra_server: &str) -> Config {
    let text = format!(
        r#"
        [server]
        {extra_server}

        [[portal_group]]
        tag = 1
        portals = ["127.0.0.1:0"]

        [[target]]
        name = "{TARGET}"

        [[target.lun]]
        lun = 0
        backend = "memory"
        size = "64MiB"

        [[target.lun]]
        lun = 1
        backend = "memory"
        size = "64MiB"
        "#
    );
    Config::from_toml(&text).unwrap()
}

pub async fn start(config: Config) -> TestTarget {
    let registry = Arc::new(Registry::new());
    config.populate(&registry, &rtgt::config::BuildContext::new()).await.unwrap();
    let server = Arc::new(Server::new(TokioNet, Arc::new(TokioClock::new()), registry, config.settings()));
    let portals = server.bind().await.unwrap();
    let addr = portals[0].addr;
    let accepting = portals.into_iter().map(|p| tokio::spawn(server.clone().accept_loop(p))).collect();
    TestTarget { addr, server, accepting }
}

impl TestTarget {
    pub async fn login(&self, config: &InitiatorConfig) -> Session {
        let stream = TcpStream::connect(self.addr).await.unwrap();
        stream.set_nodelay(true).unwrap();
        Session::login(stream, config, Some(TARGET)).await.unwrap()
    }

    /// Logs in with a fresh ISID and clears the power-on unit attentions of LUNs 0 and 1.
    pub async fn ready_session(&self, isid: u64) -> Session {
        let s = self.login(&InitiatorConfig { isid, ..InitiatorConfig::default() }).await;
        s.clear_unit_attentions(0).await.unwrap();
        s.clear_unit_attentions(1).await.unwrap();
        s
    }

    /// The initiator saw nothing out of protocol from the target: no response to a task it
    /// did not issue or that was aborted, StatSN in sequence, MaxCmdSN never shrinking.
    pub fn assert_clean(s: &Session) {
        let v = s.violations();
        assert_eq!(
            (v.unexpected_responses, v.responses_after_abort, v.stat_sn_errors, v.max_cmd_sn_decreases),
            (0, 0, 0, 0),
            "protocol violations seen by the initiator: {v:?}"
        );
    }

    pub fn url(&self, lun: u16) -> String {
        format!("iscsi://{}/{TARGET}/{lun}", self.addr)
    }
}

/// Waits until `condition` holds, checking every 20 ms; panics naming `what` after 30 s.
/// (For conditions that only the passage of real time brings about: a target's pings.)
#[allow(dead_code)]
pub async fn eventually(what: &str, condition: impl Fn() -> bool) {
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(30);
    while !condition() {
        assert!(tokio::time::Instant::now() < deadline, "not within 30 s: {what}");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}
