//! Management over real HTTP: the `rtgt` binary serving, the `rtgt` CLI changing it, libiscsi's
//! iscsi-ls and the library's initiator checking what initiators see, and restarts checking
//! what was persisted. Needs libiscsi-bin (fails, not skips, without it).
// These tests drive a real process: deadlines are wall-clock time.
#![allow(clippy::disallowed_methods)]

use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use bytes::Bytes;
use rtgt::api::client::Client;
use rtgt_testkit::initiator::{InitiatorConfig, Session};
use serde_json::Value;

const TARGET: &str = "iqn.2026-11.dev.rtgt:api-test";
const BIN: &str = env!("CARGO_BIN_EXE_rtgt");

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr").port()
}

/// A running `rtgt serve`, killed when dropped.
struct Serve {
    child: Child,
    api: String,
    /// The token `rtgt serve` generated in its data directory.
    token: String,
}

/// `rtgt serve --config CONFIG`, logging warnings to the test's stderr.
fn spawn_serve(config: &Path) -> Child {
    Command::new(BIN)
        .args(["serve", "--config"])
        .arg(config)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start rtgt serve")
}

impl Serve {
    fn start(config: &Path, api_port: u16) -> Serve {
        Serve::attach(spawn_serve(config), config, api_port)
    }

    /// Waits for the API of `child`, a `rtgt serve` of `config`.
    fn attach(child: Child, config: &Path, api_port: u16) -> Serve {
        let api = format!("http://127.0.0.1:{api_port}");
        let client = Client::new(&api, None).expect("client");
        let deadline = Instant::now() + Duration::from_secs(30);
        // The health check needs no token.
        while client.request("GET", "/v1/health", None).map(|r| r.status) != Ok(200) {
            assert!(Instant::now() < deadline, "rtgt serve did not bring its API up");
            std::thread::sleep(Duration::from_millis(50));
        }
        let data_dir = config.parent().expect("the config is in the data directory");
        let token = rtgt::api::token::read(data_dir).expect("a generated API token");
        Serve { child, api, token }
    }

    fn get(&self, path: &str) -> Value {
        let client = Client::new(&self.api, Some(self.token.clone())).expect("client");
        let r = client.request("GET", path, None).expect("request");
        assert_eq!(r.status, 200, "GET {path}: {}", r.body);
        serde_json::from_str(&r.body).expect("JSON")
    }

    /// Runs the CLI against this server.
    fn cli(&self, args: &[&str]) -> Output {
        Command::new(BIN)
            .args(args)
            .args(["--api", &self.api])
            .env("RTGT_API_TOKEN", &self.token)
            .output()
            .expect("run the rtgt CLI")
    }

    /// SIGTERM, and the exit status.
    fn stop(mut self) -> std::process::ExitStatus {
        // SAFETY: kill(2) on our own child's pid.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = self.child.try_wait().expect("wait") {
                return status;
            }
            assert!(Instant::now() < deadline, "rtgt did not stop after SIGTERM");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn ok(out: &Output) -> String {
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "the CLI failed: {text}");
    text
}

/// A refused change: exit code 1, a message naming the problem, nothing changed.
fn refused(out: &Output, mentions: &str) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "expected a refusal, got {:?}: {stderr}", out.status);
    assert!(stderr.contains(mentions), "the error should mention {mentions:?}: {stderr}");
}

fn iscsi_ls(portal: SocketAddr) -> String {
    let out = Command::new("iscsi-ls")
        .args(["-s", &format!("iscsi://{portal}")])
        .output()
        .expect("iscsi-ls (install libiscsi-bin: apt-get install -y libiscsi-bin)");
    assert!(out.status.success(), "iscsi-ls failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

async fn login(portal: SocketAddr, isid: u64) -> Session {
    let stream = tokio::net::TcpStream::connect(portal).await.expect("connect");
    let config = InitiatorConfig { isid, ..InitiatorConfig::default() };
    Session::login(stream, &config, Some(TARGET)).await.expect("login")
}

/// A data directory (one per test: they run in parallel) and a configuration with one portal
/// group and the API on free ports.
fn setup(test: &str) -> (PathBuf, PathBuf, SocketAddr, u16) {
    let dir = std::env::temp_dir().join(format!("rtgt-api-{test}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("dir");
    let portal: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().expect("addr");
    let api_port = free_port();
    let config = dir.join("rtgt.toml");
    let text = format!(
        "# The operator's note: it stays through API changes.\n[server]\ndata_dir = {:?}  # per test\n\n[api]\nlisten = \"127.0.0.1:{api_port}\"\n\n[[portal_group]]\ntag = 1\nportals = [\"{portal}\"]\n",
        dir.display().to_string()
    );
    std::fs::write(&config, text).expect("write config");
    (dir, config, portal, api_port)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_changes_are_served_persisted_and_validated() {
    let (dir, config, portal, api_port) = setup("cli");
    let serve = Serve::start(&config, api_port);

    ok(&serve.cli(&["target", "create", TARGET, "--alias", "api test"]));
    let out = ok(&serve.cli(&[
        "lun",
        "create",
        TARGET,
        "1",
        "--backend",
        "file",
        "--path",
        "disk.img",
        "--size",
        "8MiB",
        "--create",
    ]));
    assert!(out.contains("created LUN 1"), "{out}");
    // Saved into the file's own text: its comments stay, and no default is spelled out.
    let saved = std::fs::read_to_string(&config).expect("config");
    assert!(saved.starts_with("# The operator's note: it stays through API changes.\n"), "{saved}");
    assert!(saved.contains("  # per test\n") && saved.contains("alias = \"api test\""), "{saved}");
    assert!(!saved.contains("queue_depth"), "defaults written out: {saved}");
    let listing = iscsi_ls(portal);
    assert!(listing.contains(TARGET), "iscsi-ls does not see the new target: {listing}");
    assert!(listing.contains("Lun:1"), "iscsi-ls does not see LUN 1: {listing}");

    // I/O through the new LUN.
    let s = login(portal, 0x80_0000_0101).await;
    s.clear_unit_attentions(1).await.expect("unit attentions");
    let data = Bytes::from((0..8192u32).map(|i| (i % 251) as u8).collect::<Vec<u8>>());
    s.write(1, 100, data.clone(), 512, true).await.expect("write");
    assert_eq!(s.read(1, 100, 16, 512).await.expect("read"), data);

    // Sessions and statistics are visible.
    let sessions = serve.get("/v1/sessions");
    assert!(sessions.as_array().expect("list").iter().any(|x| x["target"] == TARGET), "{sessions}");
    let table = ok(&serve.cli(&["session", "list"]));
    assert!(table.contains("iqn.2026-11.dev.rtgt:initiator"), "{table}");
    // `rtgt status`: one screen with the session and the LUN's traffic.
    let status = ok(&serve.cli(&["status"]));
    assert!(status.contains("1 sessions") && status.contains("ready") && status.contains("8KiB"), "{status}");
    let metrics =
        Client::new(&serve.api, Some(serve.token.clone())).unwrap().request("GET", "/metrics", None).unwrap().body;
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("rtgt_lun_commands_total{") && l.contains("class=\"write\"") && !l.ends_with(" 0")),
        "{metrics}"
    );

    // Bad input gets a clear error and changes nothing.
    let before = std::fs::read_to_string(&config).expect("config");
    refused(&serve.cli(&["target", "create", "iqn.bad name"]), "name");
    // Encryption settings reach the server, which keeps them for S3 volumes.
    let encrypted_file =
        ["lun", "create", TARGET, "9", "--backend", "file", "--path", "e.img", "--size", "8MiB", "--create"];
    let key = dir.join("k").display().to_string();
    refused(&serve.cli(&[&encrypted_file[..], &["--encryption-key-file", &key]].concat()), "only for backend \"s3\"");
    // Every path a LUN would open stays there too: a journal, a key file.
    let s3 = ["lun", "create", TARGET, "9", "--backend", "s3", "--url", "s3://rtgt/x", "--size", "8MiB", "--create"];
    refused(&serve.cli(&[&s3[..], &["--durability", "local", "--cache-dir", "/tmp"]].concat()), "cache_dir: /tmp");
    refused(&serve.cli(&[&s3[..], &["--encryption-key-file", "/etc/passwd"]].concat()), "encryption_key_file:");
    // LUN files stay under the data directory (or server.allowed_paths); nothing is created.
    for path in ["/etc/passwd", "../escape.img", "/dev/null"] {
        let args = ["lun", "create", TARGET, "2", "--backend", "file", "--path", path, "--size", "1MiB", "--create"];
        refused(&serve.cli(&args), "path");
    }
    assert!(!dir.parent().unwrap().join("escape.img").exists());
    refused(&serve.cli(&["lun", "create", TARGET, "1", "--backend", "memory", "--size", "1MiB"]), "already has LUN 1");
    refused(&serve.cli(&["lun", "create", TARGET, "2", "--backend", "tape", "--size", "1MiB"]), "unknown backend");
    refused(
        &serve.cli(&["lun", "create", TARGET, "2", "--backend", "memory", "--size", "1000"]),
        "not a multiple of the block size",
    );
    refused(&serve.cli(&["lun", "grow", TARGET, "1", "--size", "4MiB"]), "only grow");
    refused(&serve.cli(&["target", "delete", TARGET]), "session");
    refused(&serve.cli(&["lun", "delete", TARGET, "7"]), "no LUN 7");
    assert_eq!(std::fs::read_to_string(&config).expect("config"), before, "a refused change altered the file");
    assert_eq!(serve.get(&format!("/v1/targets/{TARGET}"))["luns"].as_array().map(Vec::len), Some(1));

    // Growing tells the initiator.
    ok(&serve.cli(&["lun", "grow", TARGET, "1", "--size", "16MiB"]));
    let ua = s.capacity(1).await;
    assert!(ua.is_err(), "the first command after a grow reports CAPACITY DATA HAS CHANGED");
    assert_eq!(s.capacity(1).await.expect("capacity").0, 16 * 2048);
    s.logout().await.expect("logout");

    // A restart brings back what the API created, and the data.
    assert!(serve.stop().success(), "SIGTERM must exit 0");
    let serve = Serve::start(&config, api_port);
    let t = serve.get(&format!("/v1/targets/{TARGET}"));
    assert_eq!(t["alias"], "api test");
    assert_eq!(t["luns"][0]["size"], 16 << 20);
    let s = login(portal, 0x80_0000_0102).await;
    s.clear_unit_attentions(1).await.expect("unit attentions");
    assert_eq!(s.read(1, 100, 16, 512).await.expect("read"), data, "data did not survive the restart");

    // Forced delete asks the initiator to log out (Async Message event 1), then closes the
    // session it did not end; a restart keeps it deleted.
    ok(&serve.cli(&["target", "delete", TARGET, "--force"]));
    assert!(s.async_events().iter().any(|m| m.event == 1), "no logout request: {:?}", s.async_events());
    assert!(s.nop(Bytes::new()).await.is_err(), "the session should have been closed");
    assert!(!iscsi_ls(portal).contains(TARGET));
    assert!(serve.stop().success());
    let serve = Serve::start(&config, api_port);
    assert_eq!(serve.get("/v1/targets"), Value::Array(vec![]));
    drop(serve);
    std::fs::remove_dir_all(&dir).ok();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_applies_the_edited_file_and_portals_follow_the_api() {
    let (dir, config, portal, api_port) = setup("reload");
    let serve = Serve::start(&config, api_port);
    let mut text = std::fs::read_to_string(&config).expect("config");
    text.push_str(&format!(
        "\n[[target]]\nname = \"{TARGET}\"\n\n[[target.lun]]\nlun = 3\nbackend = \"memory\"\nsize = \"4MiB\"\n"
    ));
    std::fs::write(&config, &text).expect("edit");
    ok(&serve.cli(&["reload"]));
    let luns = ok(&serve.cli(&["lun", "list"]));
    assert!(luns.contains(TARGET) && luns.contains("memory"), "{luns}");
    assert!(iscsi_ls(portal).contains("Lun:3"));

    // SIGHUP does the same.
    std::fs::write(&config, text.replace("lun = 3", "lun = 4")).expect("edit");
    // SAFETY: kill(2) on our own child's pid.
    unsafe { libc::kill(serve.child.id() as i32, libc::SIGHUP) };
    let deadline = Instant::now() + Duration::from_secs(10);
    while serve.get(&format!("/v1/targets/{TARGET}"))["luns"][0]["lun"] != 4 {
        assert!(Instant::now() < deadline, "SIGHUP did not reload the configuration");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(iscsi_ls(portal).contains("Lun:4"));

    // A second portal in the group: discovery through it works at once.
    let second: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().expect("addr");
    ok(&serve.cli(&["portal", "add", "1", &second.to_string()]));
    assert!(iscsi_ls(second).contains(TARGET));
    let groups = ok(&serve.cli(&["tpgt", "list"]));
    assert!(groups.contains(&second.to_string()) && groups.contains(TARGET), "{groups}");
    ok(&serve.cli(&["portal", "remove", "1", &second.to_string()]));
    assert!(std::net::TcpStream::connect(second).is_err(), "the removed portal still listens");

    // JSON output for scripts; an unreachable API is exit code 3.
    let out = ok(&serve.cli(&["target", "list", "--json"]));
    let v: Value = serde_json::from_str(&out).expect("--json prints JSON");
    assert_eq!(v[0]["luns"][0]["lun"], 4);
    let gone = Command::new(BIN).args(["target", "list", "--api", "http://127.0.0.1:1"]).output().expect("cli");
    assert_eq!(gone.status.code(), Some(3));
    drop(serve);
    std::fs::remove_dir_all(&dir).ok();
}

/// A change applies whole or not at all: a reload whose file adds a LUN that opens and one
/// that does not adds neither (it added the first and kept the file's edit out of what the
/// next API change saved), and the API then refuses changes that would write over the
/// refused edit until a reload succeeds. A portal group whose second portal cannot bind is
/// not created (its first portal listened, and was saved).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_that_fails_in_part_is_not_applied_at_all() {
    let (dir, config, _portal, api_port) = setup("whole");
    let lun = |n: u16, backend: &str| format!("\n[[target.lun]]\nlun = {n}\n{backend}\nsize = \"4MiB\"\n");
    let mut text = std::fs::read_to_string(&config).expect("config");
    text.push_str(&format!("\n[[target]]\nname = \"{TARGET}\"\n{}", lun(1, "backend = \"memory\"")));
    std::fs::write(&config, &text).expect("write");
    let serve = Serve::start(&config, api_port);
    let served = || serve.get(&format!("/v1/targets/{TARGET}"))["luns"].as_array().unwrap().len();

    let missing = dir.join("missing.img");
    let refused_edit = format!(
        "{text}{}{}",
        lun(2, "backend = \"memory\""),
        lun(5, &format!("backend = \"file\"\npath = {:?}", missing.display().to_string()))
    );
    std::fs::write(&config, &refused_edit).expect("edit");
    let out = serve.cli(&["reload"]);
    assert_eq!(out.status.code(), Some(4), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stderr).contains("nothing of the change was applied"));
    assert_eq!(served(), 1, "LUN 2 is not served either");
    refused(&serve.cli(&["lun", "create", TARGET, "6", "--backend", "memory", "--size", "4MiB"]), "reload");
    assert_eq!(std::fs::read_to_string(&config).unwrap(), refused_edit, "the operator's edit is kept");

    std::fs::write(&config, format!("{text}{}", lun(2, "backend = \"memory\""))).expect("fix");
    ok(&serve.cli(&["reload"]));
    assert_eq!(served(), 2);
    ok(&serve.cli(&["lun", "create", TARGET, "6", "--backend", "memory", "--size", "4MiB"]));
    assert_eq!(served(), 3);

    let saved = std::fs::read_to_string(&config).unwrap();
    let (free, taken) = (free_port(), api_port);
    let group = serde_json::json!({"tag": 2, "portals": [format!("127.0.0.1:{free}"), format!("127.0.0.1:{taken}")]});
    let client = Client::new(&serve.api, Some(serve.token.clone())).expect("client");
    let reply = client.request("POST", "/v1/portal-groups", Some(&group)).expect("request");
    assert_eq!(reply.status, 500, "{}", reply.body);
    assert!(std::net::TcpStream::connect(("127.0.0.1", free)).is_err(), "the first portal does not listen");
    assert!(!serve.get("/v1/portal-groups").to_string().contains(&free.to_string()));
    assert_eq!(std::fs::read_to_string(&config).unwrap(), saved, "nothing saved");
    drop(serve);
    std::fs::remove_dir_all(&dir).ok();
}

/// Clients of the API (no token is needed to connect) cannot hold it: connections beyond 128
/// are closed as they come (seen: 20,000 half-sent requests took every file descriptor, and
/// the iSCSI portals' accepts failed), and a header not sent whole within 10 s is cut off.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_connections_are_bounded_in_number_and_in_time() {
    use std::io::{Read, Write};
    let (dir, config, _portal, api_port) = setup("slow");
    let serve = Serve::start(&config, api_port);
    let api = format!("127.0.0.1:{api_port}");
    let mut held = Vec::new();
    for _ in 0..128 {
        let mut slow = std::net::TcpStream::connect(&api).expect("connect");
        slow.write_all(b"GET /v1/health HTTP/1.1\r\n").expect("a part of a header");
        held.push(slow);
    }
    let mut extra = std::net::TcpStream::connect(&api).expect("connect");
    extra.set_read_timeout(Some(Duration::from_secs(5))).expect("timeout");
    let sent = extra.write_all(b"GET /v1/health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n");
    let mut answer = Vec::new();
    let read = extra.read_to_end(&mut answer);
    assert!(answer.is_empty(), "answered beyond the bound ({sent:?}, {read:?}): {}", String::from_utf8_lossy(&answer));
    // The slow headers are cut off (the server closes them: a read ends), not answered.
    let mut first = held.remove(0);
    first.set_read_timeout(Some(Duration::from_secs(30))).expect("timeout");
    let mut answer = Vec::new();
    let read = first.read_to_end(&mut answer);
    assert!(!String::from_utf8_lossy(&answer).contains("200 OK"), "{read:?}");
    let kind = read.as_ref().err().map(std::io::Error::kind);
    let waited_out = matches!(kind, Some(std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut));
    assert!(!waited_out, "closed by the server, not given up on by us: {read:?}");
    drop(held);
    let client = Client::new(&serve.api, None).expect("client");
    assert_eq!(client.request("GET", "/v1/health", None).expect("health").status, 200);
    drop(serve);
    std::fs::remove_dir_all(&dir).ok();
}

/// `rtgt serve --listen/--force` last for the run: a change through the API saves the file
/// without them, and a reload keeps serving with them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_overrides_are_served_but_never_saved() {
    let (dir, config, portal, api_port) = setup("overrides");
    let mut text = std::fs::read_to_string(&config).expect("config");
    text.push_str(&format!(
        "\n[[target]]\nname = \"{TARGET}\"\n\n[[target.lun]]\nlun = 1\nbackend = \"memory\"\nsize = \"4MiB\"\n"
    ));
    std::fs::write(&config, &text).expect("edit");
    let elsewhere: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().expect("addr");
    let child = Command::new(BIN)
        .args(["serve", "--config"])
        .arg(&config)
        .args(["--listen", &elsewhere.to_string(), "--force"])
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start rtgt serve");
    let serve = Serve::attach(child, &config, api_port);
    assert!(iscsi_ls(elsewhere).contains(TARGET), "served on the --listen address");

    ok(&serve.cli(&["lun", "create", TARGET, "2", "--backend", "memory", "--size", "4MiB"]));
    let saved = std::fs::read_to_string(&config).expect("config");
    assert!(saved.contains(&portal.to_string()), "the file keeps its portal: {saved}");
    assert!(!saved.contains(&elsewhere.to_string()), "--listen is not saved: {saved}");
    assert!(!saved.contains("force"), "--force is not saved: {saved}");
    assert!(saved.contains("lun = 2"), "the API's change is saved: {saved}");
    // Portals come from --listen in this run: a portal added would be saved but not served.
    let another = format!("127.0.0.1:{}", free_port());
    refused(&serve.cli(&["portal", "add", "1", &another]), "--listen");
    refused(&serve.cli(&["portal", "add", "7", &another]), "--listen");
    assert!(!std::fs::read_to_string(&config).expect("config").contains(&another), "a refused portal was saved");

    ok(&serve.cli(&["reload"]));
    let listing = iscsi_ls(elsewhere);
    assert!(listing.contains("Lun:1") && listing.contains("Lun:2"), "still served after a reload: {listing}");
    drop(serve);
    std::fs::remove_dir_all(&dir).ok();
}

/// Without a configured token, one is generated (mode 0600) and required; a foreign Host
/// header (DNS rebinding from a browser) is refused even with it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_requires_its_generated_token_and_a_local_host_name() {
    use std::os::unix::fs::PermissionsExt;
    let (dir, config, _portal, api_port) = setup("guard");
    let serve = Serve::start(&config, api_port);
    let mode = std::fs::metadata(rtgt::api::token::path(&dir)).expect("token file").permissions().mode();
    assert_eq!(mode & 0o777, 0o600);
    let anonymous = Client::new(&serve.api, None).expect("client");
    assert_eq!(anonymous.request("GET", "/v1/targets", None).expect("request").status, 401);
    let wrong = Client::new(&serve.api, Some("0".repeat(64))).expect("client");
    assert_eq!(wrong.request("GET", "/v1/targets", None).expect("request").status, 401);
    assert_eq!(serve.get("/v1/targets"), serde_json::json!([]));
    // A browser tricked into rtgt.attacker.example resolving to 127.0.0.1 sends that Host.
    let mut raw = std::net::TcpStream::connect(("127.0.0.1", api_port)).expect("connect");
    use std::io::{Read, Write};
    write!(
        raw,
        "GET /v1/targets HTTP/1.1\r\nHost: rtgt.attacker.example:{api_port}\r\nAuthorization: Bearer {}\r\nConnection: close\r\n\r\n",
        serve.token
    )
    .expect("send");
    let mut answer = String::new();
    raw.read_to_string(&mut answer).expect("read");
    assert!(answer.starts_with("HTTP/1.1 403"), "{answer}");
    // The CLI finds the token in the data directory by itself.
    let out = Command::new(BIN)
        .args(["target", "list", "--api", &serve.api, "--data-dir"])
        .arg(&dir)
        .env_remove("RTGT_API_TOKEN")
        .output()
        .expect("cli");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    drop(serve);
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn a_public_api_address_needs_a_token() {
    let (dir, config, _portal, _api_port) = setup("token");
    let text =
        std::fs::read_to_string(&config).expect("config").replace("listen = \"127.0.0.1:", "listen = \"0.0.0.0:");
    std::fs::write(&config, text).expect("edit");
    let out =
        Command::new(BIN).args(["serve", "--config"]).arg(&config).env_remove("RTGT_API_TOKEN").output().expect("run");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("token"), "{}", String::from_utf8_lossy(&out.stderr));
    std::fs::remove_dir_all(&dir).ok();
}

/// A LUN whose backing store cannot be opened does not stop the target: its other LUNs serve,
/// logins to it succeed (the target is never "not found"), the LUN answers NOT READY (becoming
/// ready) and opens once its store appears.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lun_that_cannot_open_leaves_the_target_serving() {
    let (dir, config, portal, api_port) = setup("not-ready");
    let missing = dir.join("later.img");
    let mut text = std::fs::read_to_string(&config).expect("read config");
    text.push_str(&format!(
        "\n[[target]]\nname = \"{TARGET}\"\n\n[[target.lun]]\nlun = 0\nbackend = \"memory\"\nsize = \"1MiB\"\n\n\
         [[target.lun]]\nlun = 1\nbackend = \"file\"\npath = {:?}\n",
        missing.display().to_string()
    ));
    std::fs::write(&config, text).expect("write config");
    let serve = Serve::start(&config, api_port);

    let s = login(portal, 0x51).await;
    s.clear_unit_attentions(0).await.expect("LUN 0 serves");
    let tur = [0u8; 6];
    let r = s.command(1, &tur, Bytes::new(), 0).await.expect("TEST UNIT READY");
    assert_eq!(r.sense_code().map(|c| c.0), Some(0x6), "first the power-on unit attention");
    let r = s.command(1, &tur, Bytes::new(), 0).await.expect("TEST UNIT READY");
    assert_eq!(r.sense_code(), Some((0x2, 0x04, 0x01)), "NOT READY, becoming ready");
    let inquiry = [0x12u8, 0, 0, 0, 96, 0];
    assert_eq!(s.command(1, &inquiry, Bytes::new(), 96).await.expect("INQUIRY").status, 0, "INQUIRY answers");

    std::fs::write(&missing, vec![0u8; 1 << 20]).expect("create the file");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let r = s.command(1, &tur, Bytes::new(), 0).await.expect("TEST UNIT READY");
        match r.sense_code() {
            None => break,
            Some((0x6, ..)) => {} // power on: the LUN's store opened
            Some(code) => assert_eq!(code, (0x2, 0x04, 0x01), "still becoming ready"),
        }
        assert!(Instant::now() < deadline, "the LUN never opened");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(s.read(1, 0, 1, 512).await.expect("read"), vec![0u8; 512]);
    s.logout().await.expect("logout");
    assert!(serve.stop().success());
}

/// CHAP and ACLs set through the CLI take effect at once, and the secrets never come back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auth_and_acl_are_managed_through_the_cli() {
    let (dir, config, portal, api_port) = setup("auth");
    let serve = Serve::start(&config, api_port);
    ok(&serve.cli(&["target", "create", TARGET]));
    ok(&serve.cli(&["lun", "create", TARGET, "0", "--backend", "memory", "--size", "1MiB"]));
    let login_status = |isid: u64| async move {
        let stream = tokio::net::TcpStream::connect(portal).await.expect("connect");
        let config = InitiatorConfig { isid, ..InitiatorConfig::default() };
        Session::login(stream, &config, Some(TARGET)).await.err()
    };
    assert_eq!(login_status(1).await, None, "open at first");

    // A literal secret on the command line is refused; env: is read by the CLI.
    let literal = serve.cli(&["target", "auth", TARGET, "--user", "alice", "--secret", "alice-secret-123"]);
    assert_eq!(literal.status.code(), Some(2), "a usage error");
    assert!(String::from_utf8_lossy(&literal.stderr).contains("env:NAME"));
    let out = Command::new(BIN)
        .args(["target", "auth", TARGET, "--user", "alice", "--secret", "env:RTGT_TEST_CHAP", "--api", &serve.api])
        .env("RTGT_API_TOKEN", &serve.token)
        .env("RTGT_TEST_CHAP", "alice-secret-123")
        .output()
        .expect("cli");
    ok(&out);
    assert_eq!(
        login_status(2).await,
        Some(rtgt_testkit::initiator::Error::Login { class: 2, detail: 1 }),
        "CHAP is required now"
    );
    let shown =
        format!("{}{}", serve.get(&format!("/v1/targets/{TARGET}")), ok(&serve.cli(&["target", "show", TARGET])));
    assert!(!shown.contains("alice-secret-123"), "{shown}");
    let saved = std::fs::read_to_string(&config).expect("saved config");
    assert!(saved.contains("alice-secret-123"), "kept in the configuration");
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(std::fs::metadata(&config).expect("config").permissions().mode() & 0o777, 0o600);
    ok(&serve.cli(&["target", "auth", TARGET, "--none"]));
    // Through the API, the secret itself: a file: or env: spec would be read on the target's
    // host, and the refusal would tell the caller about it.
    let client = Client::new(&serve.api, Some(serve.token.clone())).expect("client");
    let probe = serde_json::json!({"chap": {"user": "bob", "secret": "file:/etc/passwd"}});
    let reply = client.request("PUT", &format!("/v1/targets/{TARGET}/auth"), Some(&probe)).expect("request");
    assert!(reply.status == 400 && reply.body.contains("give the secret itself"), "{}: {}", reply.status, reply.body);

    // A session logged in before its initiator is taken off the list loses its access at once.
    let before_the_acl = login(portal, 5).await;
    ok(&serve.cli(&["target", "acl", TARGET, "--initiators", "iqn.2026-12.dev.rtgt:someone-else"]));
    tokio::time::timeout(Duration::from_secs(10), before_the_acl.closed())
        .await
        .expect("the session of an initiator no longer admitted was not closed");
    assert!(before_the_acl.flush(0).await.is_err(), "a command went through after the ACL change");
    assert_eq!(
        login_status(3).await,
        Some(rtgt_testkit::initiator::Error::Login { class: 2, detail: 2 }),
        "not allowed"
    );
    ok(&serve.cli(&["target", "acl", TARGET]));
    assert_eq!(login_status(4).await, None, "open again");
    drop(serve);
    std::fs::remove_dir_all(&dir).ok();
}

/// PERSISTENT RESERVE OUT REGISTER with APTPL: the registration survives a restart.
async fn register_persistently(session: &Session, key: u64) {
    session.clear_unit_attentions(0).await.expect("unit attentions");
    let mut params = vec![0u8; 24];
    params[8..16].copy_from_slice(&key.to_be_bytes());
    params[20] = 0x01; // APTPL
    let cdb = [0x5f, 0x00, 0, 0, 0, 0, 0, 0, 24, 0];
    session.command(0, &cdb, params.into(), 0).await.expect("PR OUT").ok().expect("REGISTER");
}

/// PERSISTENT RESERVE IN READ KEYS: the registered keys.
async fn registered_keys(session: &Session) -> Vec<u64> {
    session.clear_unit_attentions(0).await.expect("unit attentions");
    let cdb = [0x5e, 0x00, 0, 0, 0, 0, 0, 0x10, 0, 0];
    let data = session.command(0, &cdb, Bytes::new(), 4096).await.expect("PR IN").ok().expect("READ KEYS").data;
    let len = u32::from_be_bytes(data[4..8].try_into().expect("4 bytes")) as usize;
    data[8..8 + len].chunks(8).map(|k| u64::from_be_bytes(k.try_into().expect("8 bytes"))).collect()
}

/// A LUN deleted takes its persistent reservations with it: a LUN made again under the same
/// target and number (the same derived identity) is a new disk and has none. Kept while the LUN
/// is: across a restart they are there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_lun_takes_its_reservations_with_it() {
    let (dir, config, portal, api_port) = setup("reservations");
    let create = ["lun", "create", TARGET, "0", "--backend", "file", "--path", "r.img", "--size", "1MiB", "--create"];
    let serve = Serve::start(&config, api_port);
    ok(&serve.cli(&["target", "create", TARGET]));
    ok(&serve.cli(&create));
    let session = login(portal, 1).await;
    register_persistently(&session, 0x1234).await;
    assert_eq!(registered_keys(&session).await, vec![0x1234]);
    session.logout().await.expect("logout");
    assert!(serve.stop().success());
    let serve = Serve::start(&config, api_port);
    let session = login(portal, 2).await;
    assert_eq!(registered_keys(&session).await, vec![0x1234], "kept across a restart (APTPL)");
    drop(session);
    ok(&serve.cli(&["lun", "delete", TARGET, "0"]));
    ok(&serve.cli(&create));
    let session = login(portal, 3).await;
    assert_eq!(registered_keys(&session).await, Vec::<u64>::new(), "the new LUN inherited the old one's reservations");
    drop(session);
    drop(serve);
    std::fs::remove_dir_all(&dir).ok();
}

/// HTTPS: with `api.tls_cert`/`tls_key` the API speaks TLS only; the CLI trusts the CA it is
/// given. Needs the `openssl` tool to make the certificate, and fails loudly without it.
#[test]
fn the_api_can_serve_https() {
    let (dir, config, _portal, api_port) = setup("tls");
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    let made = Command::new("openssl")
        .args(["req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-days", "2"])
        .args(["-subj", "/CN=localhost", "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost"])
        .args(["-addext", "basicConstraints=critical,CA:FALSE", "-keyout"])
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output()
        .expect("openssl (apt-get install -y openssl) makes the test certificate");
    assert!(made.status.success(), "{}", String::from_utf8_lossy(&made.stderr));
    let text = std::fs::read_to_string(&config).expect("config").replace(
        "[api]\n",
        &format!("[api]\ntls_cert = {:?}\ntls_key = {:?}\n", cert.display().to_string(), key.display().to_string()),
    );
    std::fs::write(&config, text).expect("config");
    let mut child = spawn_serve(&config);
    let https = format!("https://127.0.0.1:{api_port}");
    let client = Client::new(&https, None).expect("client").trusting(&cert).expect("CA");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let answer = client.request("GET", "/v1/health", None).map(|r| r.status);
        if answer == Ok(200) {
            break;
        }
        assert!(Instant::now() < deadline, "rtgt serve did not bring its HTTPS API up: {answer:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
    let plain = Client::new(&format!("http://127.0.0.1:{api_port}"), None).expect("client");
    assert!(plain.request("GET", "/v1/health", None).map(|r| r.status) != Ok(200), "no plain HTTP");
    let out = Command::new(BIN)
        .args(["target", "list", "--api", &https, "--api-ca"])
        .arg(&cert)
        .args(["--data-dir"])
        .arg(&dir)
        .env_remove("RTGT_API_TOKEN")
        .output()
        .expect("cli");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let _ = child.kill();
    let _ = child.wait();
    std::fs::remove_dir_all(&dir).ok();
}

/// Snapshots of a served S3 volume through the API and the CLI: taken while the target serves
/// it, listed, refused twice under one name, exported through the CLI (which reads the snapshot
/// without the volume's lease), and deleted; a LUN that takes none says so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshots_of_a_served_volume_are_taken_through_the_api() {
    let (dir, config, portal, api_port) = setup("snapshots");
    let mut text = std::fs::read_to_string(&config).expect("config");
    text.push_str(&format!(
        "\n[embedded_s3]\nlisten = \"off\"\n\n[[target]]\nname = \"{TARGET}\"\n\n\
         [[target.lun]]\nlun = 0\nbackend = \"s3\"\nurl = \"s3://rtgt/snap\"\nendpoint = \"embedded\"\nsize = \"4MiB\"\ncreate = true\n\n\
         [[target.lun]]\nlun = 1\nbackend = \"memory\"\nsize = \"1MiB\"\n"
    ));
    std::fs::write(&config, text).expect("config");
    let serve = Serve::start(&config, api_port);
    let session = login(portal, 0x1).await;
    // The LUN opens in the background: NOT READY until it has.
    let deadline = Instant::now() + Duration::from_secs(30);
    while session.write(0, 0, bytes::Bytes::from(vec![0x11; 4096]), 512, false).await.is_err() {
        assert!(Instant::now() < deadline, "LUN 0 never opened");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let client = Client::new(&serve.api, Some(serve.token.clone())).expect("client");
    let path = format!("/v1/targets/{TARGET}/luns/0/snapshots");
    let taken = client.request("POST", &path, Some(&serde_json::json!({"name": "first"}))).expect("request");
    assert_eq!(taken.status, 201, "{}", taken.body);
    let again = client.request("POST", &path, Some(&serde_json::json!({"name": "first"}))).expect("request");
    assert_eq!(again.status, 409, "{}", again.body);
    let bad = client.request("POST", &path, Some(&serde_json::json!({"name": "a/b"}))).expect("request");
    assert_eq!(bad.status, 400, "{}", bad.body);
    // Written after the snapshot: not in it.
    session.write(0, 0, bytes::Bytes::from(vec![0x22; 4096]), 512, false).await.expect("write");
    let listed = serve.get(&path);
    assert_eq!(listed[0]["name"], "first", "{listed}");
    assert_eq!(listed[0]["size"], 4 << 20, "{listed}");
    let memory = client.request("GET", &format!("/v1/targets/{TARGET}/luns/1/snapshots"), None).expect("request");
    assert_eq!(memory.status, 409, "{}", memory.body);
    // The snapshot served as a LUN of its own, read-only, another device than its volume.
    let lun = serde_json::json!({"lun": 2, "backend": "s3", "url": "s3://rtgt/snap", "endpoint": "embedded", "snapshot": "first"});
    let added = client.request("POST", &format!("/v1/targets/{TARGET}/luns"), Some(&lun)).expect("request");
    assert_eq!(added.status, 201, "{}", added.body);
    let deadline = Instant::now() + Duration::from_secs(30);
    let first = loop {
        match session.read(2, 0, 8, 512).await {
            Ok(data) => break data,
            Err(e) => assert!(Instant::now() < deadline, "LUN 2 never opened: {e}"),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(first.iter().all(|&b| b == 0x11), "the snapshot LUN does not read the snapshot");
    let refused = session.write(2, 0, bytes::Bytes::from(vec![0x33; 512]), 512, false).await;
    assert!(refused.is_err(), "a write to a snapshot was accepted");
    let luns = serve.get(&format!("/v1/targets/{TARGET}/luns"));
    assert!(luns.to_string().contains("s3:s3://rtgt/snap@first (snapshot, read-only)"), "{luns}");

    // The same through the CLI.
    let taken = ok(&serve.cli(&["lun", "snapshot", TARGET, "0", "second"]));
    assert!(taken.contains("snapshot second of LUN 0"), "{taken}");
    let listed = ok(&serve.cli(&["lun", "snapshots", TARGET, "0"]));
    assert!(listed.contains("first") && listed.contains("second") && listed.contains("4MiB"), "{listed}");
    ok(&serve.cli(&["lun", "delete-snapshot", TARGET, "0", "second"]));
    let names: Vec<Value> = serve.get(&path).as_array().expect("a list").iter().map(|s| s["name"].clone()).collect();
    assert_eq!(names, [serde_json::json!("first")]);
    let missing = client.request("DELETE", &format!("{path}/second"), None).expect("request");
    assert_eq!(missing.status, 404, "{}", missing.body);
    // A snapshot served as a LUN stays while that LUN does (deleted, every read of it failed).
    let served = client.request("DELETE", &format!("{path}/first"), None).expect("request");
    assert!(served.status == 409 && served.body.contains("LUN 2"), "{}: {}", served.status, served.body);
    session.logout().await.expect("logout");
    assert!(serve.stop().success());

    // The embedded store is free once the target stopped: the snapshot holds what was
    // written before it.
    let out_file = dir.join("first.img");
    let out = Command::new(BIN)
        .args(["volume", "export", "s3://rtgt/snap@first"])
        .arg(&out_file)
        .arg("--store-dir")
        .arg(dir.join("s3"))
        .output()
        .expect("export");
    let exported = ok(&out);
    assert!(exported.contains("exported s3://rtgt/snap@first"), "{exported}");
    let image = std::fs::read(&out_file).expect("the export");
    assert!(image[..4096].iter().all(|&b| b == 0x11), "the snapshot does not hold the write before it");
    std::fs::remove_dir_all(&dir).ok();
}
