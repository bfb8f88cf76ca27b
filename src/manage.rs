//! The management commands of the `rtgt` CLI (`target`, `lun`, `portal`, `tpgt`, `session`,
//! `reload`): each is one request to the HTTP API of a running `rtgt serve`.
//!
//! Exit codes: 0 done; 1 refused by the API (bad input, not found, conflict); 3 the API could
//! not be reached; 4 the API failed to carry the change out. clap uses 2 for usage errors.

use std::process::ExitCode;

use clap::{Args, Subcommand};
use rtgt::api::client::{Client, Reply};
use rtgt::config::{Backend, DEFAULT_API_LISTEN, Size};
use serde_json::{Value, json};

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

    fn call(&self, method: &str, path: &str, body: Option<Value>) -> Result<Value, Failure> {
        let reply = self.client.request(method, path, body.as_ref()).map_err(|e| Failure(e, 3))?;
        check(&reply)?;
        Ok(serde_json::from_str(&reply.body).unwrap_or(Value::Null))
    }

    /// Prints a result as JSON, or with `table` otherwise.
    fn print(&self, v: &Value, table: impl FnOnce(&Value) -> String) {
        if self.json {
            println!("{}", serde_json::to_string_pretty(v).unwrap_or_default());
        } else {
            print!("{}", table(v));
        }
    }

    fn done(&self, v: &Value, what: String) {
        if self.json {
            println!("{}", serde_json::to_string_pretty(v).unwrap_or_default());
        } else {
            println!("{what}");
        }
    }
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

fn enc(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

fn size(s: &Option<String>) -> Result<Option<Size>, Failure> {
    s.as_deref().map(|s| Size::parse(s).map_err(|e| Failure(format!("--size: {e}"), 2))).transpose()
}

pub fn target(args: &ApiArgs, command: TargetCommand) -> ExitCode {
    run(args, |ctx| match command {
        TargetCommand::Create { name, alias, portal_groups } => {
            let groups = (!portal_groups.is_empty()).then_some(portal_groups);
            let v =
                ctx.call("POST", "/v1/targets", Some(json!({"name": name, "alias": alias, "portal_groups": groups})))?;
            ctx.done(&v, format!("created target {name}"));
            Ok(())
        }
        TargetCommand::Delete { name, force } => {
            ctx.call("DELETE", &format!("/v1/targets/{}?force={force}", enc(&name)), None)?;
            ctx.done(&json!({"deleted": name}), format!("deleted target {name}"));
            Ok(())
        }
        TargetCommand::Auth { name, user, secret, mutual_user, mutual_secret, none } => {
            let read = |what: &str, spec: Option<String>| {
                spec.map(|s| rtgt::config::read_secret(what, &s).map_err(|e| Failure(e, 2))).transpose()
            };
            let chap = match (none, user) {
                (true, _) => Value::Null,
                (false, None) => return Err(Failure("give --user and --secret, or --none".into(), 2)),
                (false, Some(user)) => json!({
                    "user": user,
                    "secret": read("--secret", secret)?,
                    "mutual_user": mutual_user,
                    "mutual_secret": read("--mutual-secret", mutual_secret)?,
                }),
            };
            let v = ctx.call("PUT", &format!("/v1/targets/{}/auth", enc(&name)), Some(json!({ "chap": chap })))?;
            let what = if none { "no longer requires CHAP" } else { "requires CHAP" };
            ctx.done(&v, format!("target {name} {what}"));
            Ok(())
        }
        TargetCommand::Acl { name, initiators, addresses, reset_initiators } => {
            let body = json!({
                "allowed_initiators": initiators,
                "allowed_addresses": addresses,
                "reset_initiators": reset_initiators,
            });
            let v = ctx.call("PUT", &format!("/v1/targets/{}/acl", enc(&name)), Some(body))?;
            ctx.done(&v, format!("access rules of {name} set"));
            Ok(())
        }
        TargetCommand::List => {
            let v = ctx.call("GET", "/v1/targets", None)?;
            ctx.print(&v, targets_table);
            Ok(())
        }
        TargetCommand::Show { name } => {
            let v = ctx.call("GET", &format!("/v1/targets/{}", enc(&name)), None)?;
            ctx.print(&v, |t| {
                let mut out = format!(
                    "target:        {}\nalias:         {}\nportal groups: {}\nsessions:      {}\n",
                    t["name"].as_str().unwrap_or(""),
                    t["alias"].as_str().unwrap_or("-"),
                    list(&t["portal_groups"]),
                    t["sessions"]
                );
                out.push_str(&luns_table(&Value::Array(vec![t.clone()])));
                out
            });
            Ok(())
        }
    })
}

pub fn lun(args: &ApiArgs, command: LunCommand) -> ExitCode {
    run(args, |ctx| match command {
        LunCommand::Create { target, lun, spec } => {
            let mut body = json!({"lun": lun, "backend": spec.backend});
            let fields = [
                ("size", size(&spec.size)?.map(|s| json!(s.0))),
                ("block_size", spec.block_size.map(|b| json!(b))),
                ("path", spec.path.map(|p| json!(p))),
                ("create", spec.create.then_some(json!(true))),
                ("read_only", spec.read_only.then_some(json!(true))),
                ("url", spec.url.map(|u| json!(u))),
                ("endpoint", spec.endpoint.map(|e| json!(e))),
                ("region", spec.region.map(|r| json!(r))),
                ("chunk_size", size(&spec.chunk_size)?.map(|s| json!(s.0))),
                ("cache_size", size(&spec.cache_size)?.map(|s| json!(s.0))),
                ("durability", spec.durability.map(|d| json!(d))),
                ("cache_dir", spec.cache_dir.map(|d| json!(d))),
                ("cache_disk_size", size(&spec.cache_disk_size)?.map(|s| json!(s.0))),
                ("initiators", spec.initiators.map(|i| json!(i))),
                ("encryption_key_file", spec.encryption_key_file.map(|k| json!(k))),
                ("encryption_key_env", spec.encryption_key_env.map(|k| json!(k))),
                ("encryption_passphrase_file", spec.encryption_passphrase_file.map(|k| json!(k))),
                ("encryption_passphrase_env", spec.encryption_passphrase_env.map(|k| json!(k))),
            ];
            for (k, v) in fields {
                if let Some(v) = v {
                    body[k] = v;
                }
            }
            let v = ctx.call("POST", &format!("/v1/targets/{}/luns", enc(&target)), Some(body))?;
            let what = format!("created LUN {lun} of {target}: {}", v["store"].as_str().unwrap_or(""));
            ctx.done(&v, what);
            Ok(())
        }
        LunCommand::Delete { target, lun } => {
            ctx.call("DELETE", &format!("/v1/targets/{}/luns/{lun}", enc(&target)), None)?;
            ctx.done(&json!({"deleted": lun}), format!("deleted LUN {lun} of {target}"));
            Ok(())
        }
        LunCommand::List { target } => {
            let targets = match target {
                Some(t) => Value::Array(vec![ctx.call("GET", &format!("/v1/targets/{}", enc(&t)), None)?]),
                None => ctx.call("GET", "/v1/targets", None)?,
            };
            ctx.print(&targets, luns_table);
            Ok(())
        }
        LunCommand::Grow { target, lun, size: s } => {
            let s = Size::parse(&s).map_err(|e| Failure(format!("--size: {e}"), 2))?;
            let v =
                ctx.call("POST", &format!("/v1/targets/{}/luns/{lun}/grow", enc(&target)), Some(json!({"size": s.0})))?;
            ctx.done(&v, format!("LUN {lun} of {target} is now {}", Size(v["size"].as_u64().unwrap_or(0))));
            Ok(())
        }
        LunCommand::Snapshot { target, lun, name } => {
            let path = format!("/v1/targets/{}/luns/{lun}/snapshots", enc(&target));
            let v = ctx.call("POST", &path, Some(json!({"name": name})))?;
            ctx.done(&v, format!("snapshot {name} of LUN {lun} of {target}: {} chunks hold data", v["chunks"]));
            Ok(())
        }
        LunCommand::Snapshots { target, lun } => {
            let v = ctx.call("GET", &format!("/v1/targets/{}/luns/{lun}/snapshots", enc(&target)), None)?;
            ctx.print(&v, snapshots_table);
            Ok(())
        }
        LunCommand::DeleteSnapshot { target, lun, name } => {
            let path = format!("/v1/targets/{}/luns/{lun}/snapshots/{}", enc(&target), enc(&name));
            let v = ctx.call("DELETE", &path, None)?;
            ctx.done(&v, format!("deleted snapshot {name} of LUN {lun} of {target}"));
            Ok(())
        }
    })
}

/// The snapshots of a LUN, a line each.
fn snapshots_table(v: &Value) -> String {
    let mut out = format!("{:<24} {:>20} {:>10} {:>8}\n", "NAME", "TAKEN (UNIX TIME)", "SIZE", "CHUNKS");
    for s in v.as_array().into_iter().flatten() {
        let size = Size(s["size"].as_u64().unwrap_or(0)).to_string();
        let name = s["name"].as_str().unwrap_or("?");
        out.push_str(&format!("{name:<24} {:>20} {size:>10} {:>8}\n", s["created_unix_secs"], s["chunks"]));
    }
    out
}

pub fn portal(args: &ApiArgs, command: PortalCommand) -> ExitCode {
    run(args, |ctx| match command {
        PortalCommand::List => {
            let v = ctx.call("GET", "/v1/portal-groups", None)?;
            ctx.print(&v, portal_groups_table);
            Ok(())
        }
        PortalCommand::Add { tag, portal } => {
            let exists =
                ctx.client.request("GET", &format!("/v1/portal-groups/{tag}"), None).map_err(|e| Failure(e, 3))?;
            let v = if exists.status == 404 {
                ctx.call("POST", "/v1/portal-groups", Some(json!({"tag": tag, "portals": [portal]})))?
            } else {
                ctx.call("POST", &format!("/v1/portal-groups/{tag}/portals"), Some(json!({"portal": portal})))?
            };
            ctx.done(&v, format!("portal group {tag} listens on {}", list(&v["listening"])));
            Ok(())
        }
        PortalCommand::Remove { tag, portal } => {
            let group = ctx.call("GET", &format!("/v1/portal-groups/{tag}"), None)?;
            let last = group["portals"].as_array().is_some_and(|p| p.len() == 1 && p[0] == json!(portal));
            if last {
                ctx.call("DELETE", &format!("/v1/portal-groups/{tag}"), None)?;
            } else {
                ctx.call("DELETE", &format!("/v1/portal-groups/{tag}/portals/{}", enc(&portal)), None)?;
            }
            ctx.done(&json!({"removed": portal}), format!("removed {portal} from portal group {tag}"));
            Ok(())
        }
    })
}

pub fn tpgt(args: &ApiArgs, command: TpgtCommand) -> ExitCode {
    run(args, |ctx| match command {
        TpgtCommand::List => {
            let groups = ctx.call("GET", "/v1/portal-groups", None)?;
            let targets = ctx.call("GET", "/v1/targets", None)?;
            let mut rows = vec![vec!["TPGT".to_string(), "PORTALS".into(), "TARGETS".into()]];
            for g in groups.as_array().into_iter().flatten() {
                let bound: Vec<&str> = targets
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter(|t| t["portal_groups"].as_array().is_some_and(|a| a.contains(&g["tag"])))
                    .filter_map(|t| t["name"].as_str())
                    .collect();
                rows.push(vec![g["tag"].to_string(), list(&g["listening"]), bound.join(", ")]);
            }
            ctx.print(&json!({"portal_groups": groups, "targets": targets}), |_| table(&rows));
            Ok(())
        }
        TpgtCommand::Bind { target, tags } => {
            let v = ctx.call(
                "PUT",
                &format!("/v1/targets/{}/portal-groups", enc(&target)),
                Some(json!({"portal_groups": tags})),
            )?;
            ctx.done(&v, format!("{target} is served on portal groups {}", list(&v["portal_groups"])));
            Ok(())
        }
    })
}

pub fn session(args: &ApiArgs, command: SessionCommand) -> ExitCode {
    run(args, |ctx| match command {
        SessionCommand::List => {
            let v = ctx.call("GET", "/v1/sessions", None)?;
            ctx.print(&v, sessions_table);
            Ok(())
        }
        SessionCommand::Show { tsih } => {
            let v = ctx.call("GET", &format!("/v1/sessions/{tsih}"), None)?;
            ctx.print(&v, |s| serde_json::to_string_pretty(s).unwrap_or_default() + "\n");
            Ok(())
        }
        SessionCommand::Logout { tsih } => {
            ctx.call("DELETE", &format!("/v1/sessions/{tsih}"), None)?;
            ctx.done(&json!({"logged_out": tsih}), format!("session {tsih} logged out"));
            Ok(())
        }
    })
}

/// One screen about a running target: version, targets, LUNs with their state and traffic,
/// sessions, and for S3 LUNs the cache and whether the store answers.
pub fn status(args: &ApiArgs) -> ExitCode {
    run(args, |ctx| {
        let version = ctx.call("GET", "/v1/version", None)?;
        let targets = ctx.call("GET", "/v1/targets", None)?;
        let stats = ctx.call("GET", "/v1/stats", None)?;
        let v = json!({ "version": version, "targets": targets, "stats": stats });
        ctx.print(&v, status_screen);
        Ok(())
    })
}

fn bytes(n: u64) -> String {
    rtgt::config::Size(n).to_string()
}

fn status_screen(v: &Value) -> String {
    let stats = &v["stats"];
    let luns = stats["luns"].as_array().cloned().unwrap_or_default();
    let mut out = format!(
        "rtgt {}: {} targets, {} LUNs, {} sessions\n\n",
        v["version"]["version"].as_str().unwrap_or("?"),
        v["targets"].as_array().map_or(0, Vec::len),
        luns.len(),
        stats["sessions"],
    );
    let mut rows = vec![["TARGET", "LUN", "STATE", "READ", "WRITTEN", "IN FLIGHT", "STORE"].map(String::from).to_vec()];
    let mut s3 =
        vec![["TARGET", "LUN", "CACHE", "DIRTY", "LOGS", "S3 AWAY", "FLUSH ERRORS"].map(String::from).to_vec()];
    for l in &luns {
        let backend = &l["backend"];
        let state = match backend["ready"].as_bool() {
            Some(false) => format!("not ready: {}", backend["reason"].as_str().unwrap_or("?")),
            _ => "ready".into(),
        };
        let (target, lun) = (l["target"].as_str().unwrap_or("").to_string(), l["lun"].to_string());
        rows.push(vec![
            target.clone(),
            lun.clone(),
            state,
            bytes(l["scsi"]["bytes_read"].as_u64().unwrap_or(0)),
            bytes(l["scsi"]["bytes_written"].as_u64().unwrap_or(0)),
            l["scsi"]["in_flight"].to_string(),
            l["store"].as_str().unwrap_or("").into(),
        ]);
        if backend.get("dirty_bytes").is_some() {
            let away = backend["s3_unreachable_ms"].as_u64().unwrap_or(0);
            s3.push(vec![
                target,
                lun,
                format!(
                    "{} of {}",
                    bytes(backend["cache_bytes"].as_u64().unwrap_or(0)),
                    bytes(backend["cache_limit"].as_u64().unwrap_or(0))
                ),
                bytes(backend["dirty_bytes"].as_u64().unwrap_or(0)),
                backend["logs"].to_string(),
                if away == 0 { "-".into() } else { format!("{:.1} s", away as f64 / 1000.0) },
                backend["flush_errors"].to_string(),
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
        let v = ctx.call("POST", "/v1/reload", None)?;
        ctx.done(&v, "configuration reloaded".into());
        Ok(())
    })
}

fn list(v: &Value) -> String {
    let items: Vec<String> =
        v.as_array().into_iter().flatten().map(|x| x.as_str().map_or_else(|| x.to_string(), str::to_string)).collect();
    if items.is_empty() { "-".into() } else { items.join(", ") }
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

fn targets_table(v: &Value) -> String {
    let mut rows = vec![vec!["TARGET".to_string(), "LUNS".into(), "SESSIONS".into(), "PORTAL GROUPS".into()]];
    for t in v.as_array().into_iter().flatten() {
        rows.push(vec![
            t["name"].as_str().unwrap_or("").into(),
            t["luns"].as_array().map_or(0, Vec::len).to_string(),
            t["sessions"].to_string(),
            list(&t["portal_groups"]),
        ]);
    }
    table(&rows)
}

fn luns_table(targets: &Value) -> String {
    let mut rows = vec![vec!["TARGET".to_string(), "LUN".into(), "BACKEND".into(), "SIZE".into(), "STORE".into()]];
    for t in targets.as_array().into_iter().flatten() {
        for l in t["luns"].as_array().into_iter().flatten() {
            rows.push(vec![
                t["name"].as_str().unwrap_or("").into(),
                l["lun"].to_string(),
                l["backend"].as_str().unwrap_or("").into(),
                l["size"].as_u64().map_or("-".into(), |s| Size(s).to_string()),
                l["store"].as_str().unwrap_or("-").into(),
            ]);
        }
    }
    table(&rows)
}

fn portal_groups_table(v: &Value) -> String {
    let mut rows = vec![vec!["TPGT".to_string(), "CONFIGURED".into(), "LISTENING".into()]];
    for g in v.as_array().into_iter().flatten() {
        rows.push(vec![g["tag"].to_string(), list(&g["portals"]), list(&g["listening"])]);
    }
    table(&rows)
}

fn sessions_table(v: &Value) -> String {
    let mut rows = vec![vec![
        "TSIH".to_string(),
        "INITIATOR".into(),
        "ISID".into(),
        "TARGET".into(),
        "PEER".into(),
        "COMMANDS".into(),
    ]];
    for s in v.as_array().into_iter().flatten() {
        rows.push(vec![
            s["tsih"].to_string(),
            s["initiator"].as_str().unwrap_or("").into(),
            s["isid"].as_str().unwrap_or("").into(),
            s["target"].as_str().unwrap_or("(discovery)").into(),
            s["connections"][0]["peer"].as_str().unwrap_or("").into(),
            s["counters"]["commands"].to_string(),
        ]);
    }
    table(&rows)
}
