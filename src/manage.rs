//! The management commands of the `rtgt` CLI (`target`, `lun`, `portal`, `tpgt`, `session`,
//! `reload`): each is one request to the HTTP API of a running `rtgt serve`.
//!
//! Exit codes: 0 done; 1 refused by the API (bad input, not found, conflict); 3 the API could
//! not be reached; 4 the API failed to carry the change out. clap uses 2 for usage errors.

use std::process::ExitCode;

use clap::{Args, Subcommand};
use rtgt::api::client::{Client, Reply};
use rtgt::api::types::{
    AclChange, AuthChange, Grow, LunView, NewPortal, NewSnapshot, NewTarget, PortalGroupBinding, PortalGroupView,
    Reloaded, SessionView, Stats, TargetView, Version,
};
use rtgt::config::{Backend, ChapConfig, DEFAULT_API_LISTEN, LunConfig, PortalGroupConfig, Size};
use rtgt::storage::StoreStats;
use rtgt::storage::snapshots::{SnapshotName, SnapshotSummary};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::json;

/// How to reach the API, and how to print.
#[derive(Args, Clone)]
pub struct ApiArgs {
    /// The API of the running target (default $RTGT_API or http://127.0.0.1:3261).
    #[arg(long, global = true)]
    api: Option<String>,
    /// Print the API's JSON instead of tables.
    #[arg(long, global = true)]
    json: bool,
    /// The data directory of the local `rtgt serve`, whose API token the CLI reads when
    /// $RTGT_API_TOKEN is not set (default $RTGT_DATA_DIR or rtgt-data).
    #[arg(long, global = true)]
    data_dir: Option<std::path::PathBuf>,
    /// For an https:// API: the CA certificate (PEM) to trust (default $RTGT_API_CA).
    #[arg(long, global = true)]
    api_ca: Option<std::path::PathBuf>,
}

#[derive(Subcommand)]
pub enum TargetCommand {
    /// Create a target: rtgt target create iqn.2026-11.org.example:disk1
    Create {
        name: String,
        #[arg(long)]
        alias: Option<String>,
        /// Portal groups to serve it on (all when absent).
        #[arg(long = "portal-group")]
        portal_groups: Vec<u16>,
    },
    /// Require CHAP of the target's initiators, or stop requiring it: rtgt target auth TARGET
    /// --user U --secret env:NAME [--mutual-user T --mutual-secret file:PATH] | --none
    Auth {
        name: String,
        #[arg(long, requires = "secret", conflicts_with = "none")]
        user: Option<String>,
        /// The secret: env:NAME or file:PATH (read here, never on the command line).
        #[arg(long, requires = "user")]
        secret: Option<String>,
        #[arg(long, requires = "mutual_secret")]
        mutual_user: Option<String>,
        #[arg(long, requires = "mutual_user")]
        mutual_secret: Option<String>,
        /// No authentication.
        #[arg(long)]
        none: bool,
    },
    /// Who may log in: rtgt target acl TARGET --initiators iqn.a,iqn.b --addresses 10.0.0.0/8
    /// (an option left out: anyone).
    Acl {
        name: String,
        #[arg(long, value_delimiter = ',')]
        initiators: Option<Vec<String>>,
        #[arg(long, value_delimiter = ',')]
        addresses: Option<Vec<String>>,
        /// Initiators that may reset the whole target (left out: anyone on an open target,
        /// nobody on a guarded one).
        #[arg(long, value_delimiter = ',')]
        reset_initiators: Option<Vec<String>>,
    },
    /// Delete a target (refused while initiators are logged in, unless --force).
    Delete {
        name: String,
        /// Log the initiators out first.
        #[arg(long)]
        force: bool,
    },
    List,
    Show {
        name: String,
    },
}

#[derive(Subcommand)]
pub enum LunCommand {
    /// Create a LUN: rtgt lun create TARGET 1 --backend file --path disk.img --size 10GiB --create
    Create {
        target: String,
        lun: u16,
        #[command(flatten)]
        spec: Box<LunSpec>,
    },
    /// Delete a LUN (its cache is flushed first).
    Delete { target: String, lun: u16 },
    /// List LUNs, of one target or of all.
    List { target: Option<String> },
    /// Grow a LUN; initiators are told the capacity changed.
    Grow {
        target: String,
        lun: u16,
        #[arg(long)]
        size: String,
    },
    /// Take a crash-consistent snapshot of a LUN's S3 volume while it is served.
    Snapshot { target: String, lun: u16, name: String },
    /// List the snapshots of a LUN's S3 volume.
    Snapshots { target: String, lun: u16 },
    /// Delete a snapshot of a LUN's S3 volume.
    DeleteSnapshot { target: String, lun: u16, name: String },
}

/// `--backend`: a name the target does not know is its to refuse (with every other problem of
/// the LUN), not the CLI's.
fn backend(name: &str) -> Result<Backend, String> {
    Ok(Backend::parse(name))
}

/// The backend of a new LUN (the fields of `[[target.lun]]`).
#[derive(Args)]
pub struct LunSpec {
    /// memory, file, uring, null or s3.
    #[arg(long, value_parser = backend)]
    backend: Backend,
    /// Capacity, e.g. 10GiB.
    #[arg(long)]
    size: Option<String>,
    #[arg(long)]
    block_size: Option<u32>,
    /// file/uring: the file or block device (relative paths live in the data directory).
    #[arg(long)]
    path: Option<String>,
    /// Create the file or S3 volume if it does not exist.
    #[arg(long)]
    create: bool,
    #[arg(long)]
    read_only: bool,
    /// s3: s3://bucket/prefix.
    #[arg(long)]
    url: Option<String>,
    /// s3: endpoint URL, or "embedded".
    #[arg(long)]
    endpoint: Option<String>,
    #[arg(long)]
    region: Option<String>,
    #[arg(long)]
    chunk_size: Option<String>,
    #[arg(long)]
    cache_size: Option<String>,
    /// s3: what SYNCHRONIZE CACHE waits for: s3 (default) or local (a journal in --cache-dir).
    #[arg(long)]
    durability: Option<String>,
    /// s3: the directory of the journal (with --durability local) and the disk cache.
    #[arg(long)]
    cache_dir: Option<String>,
    /// s3: bytes of a read cache on local disk in --cache-dir (e.g. 10GiB).
    #[arg(long)]
    cache_disk_size: Option<String>,
    /// LUN masking: only these initiators see the LUN (comma-separated names).
    #[arg(long, value_delimiter = ',')]
    initiators: Option<Vec<String>>,
    /// s3: the volume is encrypted with the 256-bit key in this file (on the target's host)...
    #[arg(long, group = "encryption")]
    encryption_key_file: Option<String>,
    /// ...or in this environment variable of the target's process...
    #[arg(long, group = "encryption")]
    encryption_key_env: Option<String>,
    /// ...or derived from the passphrase in this file...
    #[arg(long, group = "encryption")]
    encryption_passphrase_file: Option<String>,
    /// ...or in this environment variable.
    #[arg(long, group = "encryption")]
    encryption_passphrase_env: Option<String>,
}

#[derive(Subcommand)]
pub enum PortalCommand {
    /// List portal groups and their addresses.
    List,
    /// Add an address to a portal group (creating the group if needed): rtgt portal add 1 0.0.0.0:3260
    Add { tag: u16, portal: String },
    /// Remove an address from a portal group (deleting the group with its last address).
    Remove { tag: u16, portal: String },
}

#[derive(Subcommand)]
pub enum TpgtCommand {
    /// List portal groups (target portal group tags) and the targets bound to them.
    List,
    /// Serve a target on exactly these portal groups: rtgt tpgt bind TARGET 1 2
    Bind {
        target: String,
        #[arg(required = true)]
        tags: Vec<u16>,
    },
}

#[derive(Subcommand)]
pub enum SessionCommand {
    List,
    Show {
        tsih: u16,
    },
    /// Force a session out.
    Logout {
        tsih: u16,
    },
}

/// A failed command: its message and exit code.
struct Failure(String, u8);

type CliResult = Result<(), Failure>;

struct Ctx {
    client: Client,
    json: bool,
}

impl Ctx {
    fn new(args: &ApiArgs) -> Result<Ctx, Failure> {
        let url = args
            .api
            .clone()
            .or_else(|| std::env::var("RTGT_API").ok())
            .unwrap_or_else(|| format!("http://{DEFAULT_API_LISTEN}"));
        // $RTGT_API_TOKEN, else the token a local `rtgt serve` keeps in its data directory.
        let token = std::env::var("RTGT_API_TOKEN")
            .ok()
            .filter(|t| !t.is_empty())
            .or_else(|| rtgt::api::token::read(&args.data_dir.clone().unwrap_or_else(rtgt::config::default_data_dir)));
        let mut client = Client::new(&url, token).map_err(|e| Failure(e, 2))?;
        let ca = args.api_ca.clone().or_else(|| std::env::var_os("RTGT_API_CA").map(Into::into));
        if let Some(ca) = ca {
            client = client.trusting(&ca).map_err(|e| Failure(e, 2))?;
        }
        Ok(Ctx { client, json: args.json })
    }

    /// One request; the API's answer, refused or failed as the exit code says.
    fn request(&self, method: &str, path: &str, body: Option<serde_json::Value>) -> Result<Reply, Failure> {
        let reply = self.client.request(method, path, body.as_ref()).map_err(|e| Failure(e, 3))?;
        check(&reply)?;
        Ok(reply)
    }

    /// A request whose answer is a `T`.
    fn call<T: DeserializeOwned>(&self, method: &str, path: &str, body: Option<impl Serialize>) -> Result<T, Failure> {
        let body = body.map(|b| serde_json::to_value(b).expect("a request body serializes"));
        let reply = self.request(method, path, body)?;
        serde_json::from_str(&reply.body)
            .map_err(|e| Failure(format!("the API answered {method} {path} with what this rtgt cannot read: {e}"), 4))
    }

    fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T, Failure> {
        self.call(Method::GET, path, None::<()>)
    }

    /// A request answered with no content (`204`).
    fn act(&self, method: &str, path: &str) -> CliResult {
        self.request(method, path, None).map(drop)
    }

    /// Prints a result as JSON, or with `table` otherwise.
    fn print<T: Serialize>(&self, v: &T, table: impl FnOnce(&T) -> String) {
        if self.json {
            println!("{}", serde_json::to_string_pretty(v).unwrap_or_default());
        } else {
            print!("{}", table(v));
        }
    }

    fn done(&self, v: &impl Serialize, what: String) {
        if self.json {
            println!("{}", serde_json::to_string_pretty(v).unwrap_or_default());
        } else {
            println!("{what}");
        }
    }
}

/// HTTP methods, named.
struct Method;

impl Method {
    const GET: &str = "GET";
    const POST: &str = "POST";
    const PUT: &str = "PUT";
    const DELETE: &str = "DELETE";
}

fn check(reply: &Reply) -> CliResult {
    if reply.ok() {
        return Ok(());
    }
    let code = if reply.status >= 500 { 4 } else { 1 };
    Err(Failure(reply.error_message(), code))
}

/// Runs a management command and turns its outcome into an exit code.
fn run(args: &ApiArgs, f: impl FnOnce(&Ctx) -> CliResult) -> ExitCode {
    match Ctx::new(args).and_then(|ctx| f(&ctx)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure(message, code)) => {
            eprintln!("rtgt: {message}");
            ExitCode::from(code)
        }
    }
}

/// A name as one segment of a URL path.
fn enc(s: &str) -> String {
    percent_encoding::utf8_percent_encode(s, PATH_SEGMENT).to_string()
}

/// Everything but RFC 3986's unreserved characters is escaped.
const PATH_SEGMENT: &percent_encoding::AsciiSet =
    &percent_encoding::NON_ALPHANUMERIC.remove(b'-').remove(b'.').remove(b'_').remove(b'~');

fn size(s: &Option<String>) -> Result<Option<Size>, Failure> {
    s.as_deref().map(|s| Size::parse(s).map_err(|e| Failure(format!("--size: {e}"), 2))).transpose()
}

pub fn target(args: &ApiArgs, command: TargetCommand) -> ExitCode {
    run(args, |ctx| match command {
        TargetCommand::Create { name, alias, portal_groups } => {
            let portal_groups = (!portal_groups.is_empty()).then_some(portal_groups);
            let new = NewTarget { name: name.clone(), alias, portal_groups };
            let v: TargetView = ctx.call(Method::POST, "/v1/targets", Some(new))?;
            ctx.done(&v, format!("created target {name}"));
            Ok(())
        }
        TargetCommand::Delete { name, force } => {
            ctx.act(Method::DELETE, &format!("/v1/targets/{}?force={force}", enc(&name)))?;
            ctx.done(&json!({"deleted": name}), format!("deleted target {name}"));
            Ok(())
        }
        TargetCommand::Auth { name, user, secret, mutual_user, mutual_secret, none } => {
            let read = |what: &str, spec: Option<String>| {
                spec.map(|s| rtgt::config::read_secret(what, &s).map_err(|e| Failure(e, 2))).transpose()
            };
            let chap = match (none, user) {
                (true, _) => None,
                (false, None) => return Err(Failure("give --user and --secret, or --none".into(), 2)),
                (false, Some(user)) => Some(ChapConfig {
                    user,
                    secret: read("--secret", secret)?.unwrap_or_default(),
                    mutual_user,
                    mutual_secret: read("--mutual-secret", mutual_secret)?,
                }),
            };
            let path = format!("/v1/targets/{}/auth", enc(&name));
            let v: TargetView = ctx.call(Method::PUT, &path, Some(AuthChange { chap }))?;
            let what = if none { "no longer requires CHAP" } else { "requires CHAP" };
            ctx.done(&v, format!("target {name} {what}"));
            Ok(())
        }
        TargetCommand::Acl { name, initiators, addresses, reset_initiators } => {
            let acl = AclChange { allowed_initiators: initiators, allowed_addresses: addresses, reset_initiators };
            let v: TargetView = ctx.call(Method::PUT, &format!("/v1/targets/{}/acl", enc(&name)), Some(acl))?;
            ctx.done(&v, format!("access rules of {name} set"));
            Ok(())
        }
        TargetCommand::List => {
            let v: Vec<TargetView> = ctx.get("/v1/targets")?;
            ctx.print(&v, |v| targets_table(v));
            Ok(())
        }
        TargetCommand::Show { name } => {
            let v: TargetView = ctx.get(&format!("/v1/targets/{}", enc(&name)))?;
            ctx.print(&v, |t| {
                let mut out = format!(
                    "target:        {}\nalias:         {}\nportal groups: {}\nsessions:      {}\n",
                    t.name,
                    t.alias.as_deref().unwrap_or("-"),
                    list(&t.portal_groups),
                    t.sessions
                );
                out.push_str(&luns_table(std::slice::from_ref(t)));
                out
            });
            Ok(())
        }
    })
}

/// The `[[target.lun]]` of `lun create`'s options.
fn lun_config(lun: u16, spec: LunSpec) -> Result<LunConfig, Failure> {
    let durability = match spec.durability.as_deref() {
        None => None,
        Some(d) => {
            Some(serde_json::from_value(json!(d)).map_err(|_| Failure(format!("--durability {d:?}: s3 or local"), 2))?)
        }
    };
    Ok(LunConfig {
        size: size(&spec.size)?,
        block_size: spec.block_size,
        path: spec.path.map(Into::into),
        create: spec.create.then_some(true),
        read_only: spec.read_only,
        url: spec.url,
        endpoint: spec.endpoint,
        region: spec.region,
        chunk_size: size(&spec.chunk_size)?,
        cache_size: size(&spec.cache_size)?,
        durability,
        cache_dir: spec.cache_dir.map(Into::into),
        cache_disk_size: size(&spec.cache_disk_size)?,
        initiators: spec.initiators,
        encryption_key_file: spec.encryption_key_file.map(Into::into),
        encryption_key_env: spec.encryption_key_env,
        encryption_passphrase_file: spec.encryption_passphrase_file.map(Into::into),
        encryption_passphrase_env: spec.encryption_passphrase_env,
        ..LunConfig::new(lun, spec.backend)
    })
}

pub fn lun(args: &ApiArgs, command: LunCommand) -> ExitCode {
    run(args, |ctx| match command {
        LunCommand::Create { target, lun, spec } => {
            let config = lun_config(lun, *spec)?;
            let v: LunView = ctx.call(Method::POST, &format!("/v1/targets/{}/luns", enc(&target)), Some(config))?;
            let what = format!("created LUN {lun} of {target}: {}", v.store.as_deref().unwrap_or(""));
            ctx.done(&v, what);
            Ok(())
        }
        LunCommand::Delete { target, lun } => {
            ctx.act(Method::DELETE, &format!("/v1/targets/{}/luns/{lun}", enc(&target)))?;
            ctx.done(&json!({"deleted": lun}), format!("deleted LUN {lun} of {target}"));
            Ok(())
        }
        LunCommand::List { target } => {
            let targets: Vec<TargetView> = match target {
                Some(t) => vec![ctx.get(&format!("/v1/targets/{}", enc(&t)))?],
                None => ctx.get("/v1/targets")?,
            };
            ctx.print(&targets, |t| luns_table(t));
            Ok(())
        }
        LunCommand::Grow { target, lun, size: s } => {
            let size = Size::parse(&s).map_err(|e| Failure(format!("--size: {e}"), 2))?;
            let path = format!("/v1/targets/{}/luns/{lun}/grow", enc(&target));
            let v: LunView = ctx.call(Method::POST, &path, Some(Grow { size }))?;
            ctx.done(&v, format!("LUN {lun} of {target} is now {}", Size(v.size.unwrap_or(0))));
            Ok(())
        }
        LunCommand::Snapshot { target, lun, name } => {
            let name = SnapshotName::parse(&name).map_err(|e| Failure(e, 2))?;
            let path = format!("/v1/targets/{}/luns/{lun}/snapshots", enc(&target));
            let v: SnapshotSummary = ctx.call(Method::POST, &path, Some(NewSnapshot { name: name.clone() }))?;
            ctx.done(&v, format!("snapshot {name} of LUN {lun} of {target}: {} chunks hold data", v.chunks));
            Ok(())
        }
        LunCommand::Snapshots { target, lun } => {
            let v: Vec<SnapshotSummary> = ctx.get(&format!("/v1/targets/{}/luns/{lun}/snapshots", enc(&target)))?;
            ctx.print(&v, |v| snapshots_table(v));
            Ok(())
        }
        LunCommand::DeleteSnapshot { target, lun, name } => {
            let path = format!("/v1/targets/{}/luns/{lun}/snapshots/{}", enc(&target), enc(&name));
            ctx.act(Method::DELETE, &path)?;
            ctx.done(&json!({"deleted": name}), format!("deleted snapshot {name} of LUN {lun} of {target}"));
            Ok(())
        }
    })
}

/// The snapshots of a LUN, a line each.
fn snapshots_table(v: &[SnapshotSummary]) -> String {
    let mut out = format!("{:<24} {:>20} {:>10} {:>8}\n", "NAME", "TAKEN (UNIX TIME)", "SIZE", "CHUNKS");
    for s in v {
        let size = Size(s.size).to_string();
        out.push_str(&format!("{:<24} {:>20} {size:>10} {:>8}\n", s.name.as_str(), s.created_unix_secs, s.chunks));
    }
    out
}

pub fn portal(args: &ApiArgs, command: PortalCommand) -> ExitCode {
    run(args, |ctx| match command {
        PortalCommand::List => {
            let v: Vec<PortalGroupView> = ctx.get("/v1/portal-groups")?;
            ctx.print(&v, |v| portal_groups_table(v));
            Ok(())
        }
        PortalCommand::Add { tag, portal } => {
            let exists = ctx
                .client
                .request(Method::GET, &format!("/v1/portal-groups/{tag}"), None)
                .map_err(|e| Failure(e, 3))?;
            let v: PortalGroupView = if exists.status == 404 {
                let group = PortalGroupConfig { tag, portals: vec![portal], alua_state: Default::default() };
                ctx.call(Method::POST, "/v1/portal-groups", Some(group))?
            } else {
                ctx.call(Method::POST, &format!("/v1/portal-groups/{tag}/portals"), Some(NewPortal { portal }))?
            };
            ctx.done(&v, format!("portal group {tag} listens on {}", list(&v.listening)));
            Ok(())
        }
        PortalCommand::Remove { tag, portal } => {
            let group: PortalGroupView = ctx.get(&format!("/v1/portal-groups/{tag}"))?;
            if group.portals == [portal.clone()] {
                ctx.act(Method::DELETE, &format!("/v1/portal-groups/{tag}"))?;
            } else {
                ctx.act(Method::DELETE, &format!("/v1/portal-groups/{tag}/portals/{}", enc(&portal)))?;
            }
            ctx.done(&json!({"removed": portal}), format!("removed {portal} from portal group {tag}"));
            Ok(())
        }
    })
}

pub fn tpgt(args: &ApiArgs, command: TpgtCommand) -> ExitCode {
    run(args, |ctx| match command {
        TpgtCommand::List => {
            let groups: Vec<PortalGroupView> = ctx.get("/v1/portal-groups")?;
            let targets: Vec<TargetView> = ctx.get("/v1/targets")?;
            let mut rows = vec![vec!["TPGT".to_string(), "PORTALS".into(), "TARGETS".into()]];
            for g in &groups {
                let bound: Vec<&str> =
                    targets.iter().filter(|t| t.portal_groups.contains(&g.tag)).map(|t| t.name.as_str()).collect();
                rows.push(vec![g.tag.to_string(), list(&g.listening), bound.join(", ")]);
            }
            ctx.print(&json!({"portal_groups": groups, "targets": targets}), |_| table(&rows));
            Ok(())
        }
        TpgtCommand::Bind { target, tags } => {
            let path = format!("/v1/targets/{}/portal-groups", enc(&target));
            let v: TargetView = ctx.call(Method::PUT, &path, Some(PortalGroupBinding { portal_groups: tags }))?;
            ctx.done(&v, format!("{target} is served on portal groups {}", list(&v.portal_groups)));
            Ok(())
        }
    })
}

pub fn session(args: &ApiArgs, command: SessionCommand) -> ExitCode {
    run(args, |ctx| match command {
        SessionCommand::List => {
            let v: Vec<SessionView> = ctx.get("/v1/sessions")?;
            ctx.print(&v, |v| sessions_table(v));
            Ok(())
        }
        SessionCommand::Show { tsih } => {
            let v: SessionView = ctx.get(&format!("/v1/sessions/{tsih}"))?;
            ctx.print(&v, |s| serde_json::to_string_pretty(s).unwrap_or_default() + "\n");
            Ok(())
        }
        SessionCommand::Logout { tsih } => {
            ctx.act(Method::DELETE, &format!("/v1/sessions/{tsih}"))?;
            ctx.done(&json!({"logged_out": tsih}), format!("session {tsih} logged out"));
            Ok(())
        }
    })
}

/// What `rtgt status` shows, and prints with `--json`.
#[derive(Serialize)]
struct Status {
    version: Version,
    targets: Vec<TargetView>,
    stats: Stats,
}

/// One screen about a running target: version, targets, LUNs with their state and traffic,
/// sessions, and for S3 LUNs the cache and whether the store answers.
pub fn status(args: &ApiArgs) -> ExitCode {
    run(args, |ctx| {
        let status =
            Status { version: ctx.get("/v1/version")?, targets: ctx.get("/v1/targets")?, stats: ctx.get("/v1/stats")? };
        ctx.print(&status, status_screen);
        Ok(())
    })
}

fn bytes(n: u64) -> String {
    rtgt::config::Size(n).to_string()
}

fn status_screen(v: &Status) -> String {
    let luns = &v.stats.luns;
    let mut out = format!(
        "rtgt {}: {} targets, {} LUNs, {} sessions\n\n",
        v.version.version,
        v.targets.len(),
        luns.len(),
        v.stats.sessions,
    );
    let mut rows = vec![["TARGET", "LUN", "STATE", "READ", "WRITTEN", "IN FLIGHT", "STORE"].map(String::from).to_vec()];
    let mut s3 =
        vec![["TARGET", "LUN", "CACHE", "DIRTY", "LOGS", "S3 AWAY", "FLUSH ERRORS"].map(String::from).to_vec()];
    for l in luns {
        let state = match &l.backend {
            StoreStats::NotReady { reason } => format!("not ready: {reason}"),
            _ => "ready".into(),
        };
        rows.push(vec![
            l.target.clone(),
            l.lun.to_string(),
            state,
            bytes(l.scsi.bytes_read),
            bytes(l.scsi.bytes_written),
            l.scsi.in_flight.to_string(),
            l.store.clone(),
        ]);
        if let Some(volume) = l.backend.volume() {
            let away = volume.s3_unreachable_ms;
            s3.push(vec![
                l.target.clone(),
                l.lun.to_string(),
                format!("{} of {}", bytes(volume.cache_bytes), bytes(volume.cache_limit)),
                bytes(volume.dirty_bytes),
                volume.logs.to_string(),
                if away == 0 { "-".into() } else { format!("{:.1} s", away as f64 / 1000.0) },
                volume.flush_errors.to_string(),
            ]);
        }
    }
    out.push_str(&table(&rows));
    if s3.len() > 1 {
        out.push('\n');
        out.push_str(&table(&s3));
    }
    out
}

pub fn reload(args: &ApiArgs) -> ExitCode {
    run(args, |ctx| {
        let v: Reloaded = ctx.call(Method::POST, "/v1/reload", None::<()>)?;
        ctx.done(&v, "configuration reloaded".into());
        Ok(())
    })
}

fn list<T: std::fmt::Display>(items: &[T]) -> String {
    if items.is_empty() { "-".into() } else { items.iter().map(T::to_string).collect::<Vec<_>>().join(", ") }
}

fn table(rows: &[Vec<String>]) -> String {
    let cols = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> =
        (0..cols).map(|c| rows.iter().map(|r| r.get(c).map_or(0, |s| s.len())).max().unwrap_or(0)).collect();
    let mut out = String::new();
    for r in rows {
        let line: Vec<String> = r.iter().enumerate().map(|(i, s)| format!("{s:<w$}", w = widths[i])).collect();
        out.push_str(line.join("  ").trim_end());
        out.push('\n');
    }
    out
}

fn targets_table(v: &[TargetView]) -> String {
    let mut rows = vec![vec!["TARGET".to_string(), "LUNS".into(), "SESSIONS".into(), "PORTAL GROUPS".into()]];
    for t in v {
        rows.push(vec![t.name.clone(), t.luns.len().to_string(), t.sessions.to_string(), list(&t.portal_groups)]);
    }
    table(&rows)
}

fn luns_table(targets: &[TargetView]) -> String {
    let mut rows = vec![vec!["TARGET".to_string(), "LUN".into(), "BACKEND".into(), "SIZE".into(), "STORE".into()]];
    for t in targets {
        for l in &t.luns {
            rows.push(vec![
                t.name.clone(),
                l.lun.to_string(),
                l.backend.to_string(),
                l.size.map_or("-".into(), |s| Size(s).to_string()),
                l.store.clone().unwrap_or_else(|| "-".into()),
            ]);
        }
    }
    table(&rows)
}

fn portal_groups_table(v: &[PortalGroupView]) -> String {
    let mut rows = vec![vec!["TPGT".to_string(), "CONFIGURED".into(), "LISTENING".into()]];
    for g in v {
        rows.push(vec![g.tag.to_string(), list(&g.portals), list(&g.listening)]);
    }
    table(&rows)
}

fn sessions_table(v: &[SessionView]) -> String {
    let mut rows = vec![vec![
        "TSIH".to_string(),
        "INITIATOR".into(),
        "ISID".into(),
        "TARGET".into(),
        "PEER".into(),
        "COMMANDS".into(),
    ]];
    for s in v {
        rows.push(vec![
            s.tsih.to_string(),
            s.initiator.clone(),
            s.isid.clone(),
            s.target.clone().unwrap_or_else(|| "(discovery)".into()),
            s.connections.first().map_or_else(String::new, |c| c.peer.clone()),
            s.counters.commands.to_string(),
        ]);
    }
    table(&rows)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_escaped_as_one_path_segment() {
        assert_eq!(enc("iqn.2026-11.org.example:disk1"), "iqn.2026-11.org.example%3Adisk1");
        assert_eq!(enc("a/b c~_"), "a%2Fb%20c~_");
    }
}
