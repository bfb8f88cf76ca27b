//! The `rtgt` command: `rtgt serve` runs the target; `target`, `lun`, `portal`, `tpgt`,
//! `session` and `reload` manage a running one through its HTTP API.

mod manage;

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::{Args, CommandFactory, Parser, Subcommand};
use rtgt::api::Manager;
use rtgt::config::{BuildContext, Config, Size, default_data_dir};
use rtgt::node::NodeIdentity;
use rtgt::overrides::Overrides;
use rtgt::s3::aws::{AwsStore, Endpoint};
use rtgt::s3::embedded::{self, EmbeddedS3};
use rtgt::s3::url::S3Url;
use rtgt::s3::volume::keys::{Held, KeySource};
use rtgt::s3::volume::manifest::SnapshotName;
use rtgt::s3::volume::{CreateSpec, S3Volume};
use rtgt::server::{Registry, Server, TokioClock, TokioNet};

#[derive(Parser)]
#[command(name = "rtgt", version, about = "An iSCSI target: file, block device, memory and S3 backed disks")]
struct Cli {
    /// Log lines as text (default) or as JSON objects, one a line ($RTGT_LOG_FORMAT).
    #[arg(long, global = true, value_enum, env = "RTGT_LOG_FORMAT", default_value = "text")]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Run the target. Without --config, serves an embedded default on 127.0.0.1:3260.
    Serve {
        /// Configuration file (TOML).
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// Directory for the embedded default's data (default: $RTGT_DATA_DIR or ./rtgt-data).
        #[arg(long)]
        data_dir: Option<PathBuf>,
        /// Replace the portals of every portal group with this address (e.g. 0.0.0.0:3260).
        #[arg(long)]
        listen: Option<String>,
        /// Take S3 volumes over even if another target holds their lease (it stops writing
        /// within the lease, which this target waits out first).
        #[arg(long)]
        force: bool,
        /// Address of the management API, or "off" (overrides [api] listen).
        #[arg(long, value_name = "ADDR|off")]
        api_listen: Option<String>,
        /// Address of the embedded object store's HTTP endpoint, or "off" (overrides
        /// [embedded_s3] listen; LUNs use the store in-process either way).
        #[arg(long, value_name = "ADDR|off")]
        s3_listen: Option<String>,
    },
    /// Print a shell completion script: rtgt completions bash > /etc/bash_completion.d/rtgt
    Completions { shell: clap_complete::Shell },
    /// Write man pages (rtgt.1 and one per subcommand) into a directory.
    Man {
        #[arg(long, default_value = ".")]
        dir: PathBuf,
    },
    /// Targets of the running target (through its API).
    Target {
        #[command(subcommand)]
        command: manage::TargetCommand,
        #[command(flatten)]
        api: manage::ApiArgs,
    },
    /// LUNs of the running target (through its API).
    Lun {
        #[command(subcommand)]
        command: manage::LunCommand,
        #[command(flatten)]
        api: manage::ApiArgs,
    },
    /// Portals (listening addresses) of the portal groups (through the API).
    Portal {
        #[command(subcommand)]
        command: manage::PortalCommand,
        #[command(flatten)]
        api: manage::ApiArgs,
    },
    /// Portal groups and the targets bound to them (through the API).
    Tpgt {
        #[command(subcommand)]
        command: manage::TpgtCommand,
        #[command(flatten)]
        api: manage::ApiArgs,
    },
    /// Sessions logged in to the running target (through the API).
    Session {
        #[command(subcommand)]
        command: manage::SessionCommand,
        #[command(flatten)]
        api: manage::ApiArgs,
    },
    /// One screen about the running target: targets, LUNs, sessions, S3 health and cache.
    Status {
        #[command(flatten)]
        api: manage::ApiArgs,
    },
    /// Make the running target re-read its configuration file (like SIGHUP).
    Reload {
        #[command(flatten)]
        api: manage::ApiArgs,
    },
    /// Check a configuration file and print it as rtgt understands it.
    CheckConfig { config: PathBuf },
    /// S3 volumes: create one, or show one.
    Volume {
        #[command(subcommand)]
        command: VolumeCommand,
    },
    /// Run only the embedded object store's S3 endpoint (over a directory; not while a
    /// `serve` uses the same directory).
    S3Server {
        /// Address to listen on.
        #[arg(long, default_value = "127.0.0.1:9010")]
        listen: String,
        /// Directory holding the buckets (default: <data dir>/s3).
        #[arg(long)]
        root: Option<PathBuf>,
        /// Credentials to require (needed for a non-loopback address); otherwise the store's
        /// own, generated in <root>/.rtgt-credentials.
        #[arg(long, requires = "secret_key")]
        access_key: Option<String>,
        /// Where the secret key is: `env:NAME` or `file:PATH` (never on the command line).
        #[arg(long, requires = "access_key")]
        secret_key: Option<String>,
    },
}

#[derive(Subcommand)]
enum VolumeCommand {
    /// Create a sparse volume: rtgt volume create s3://bucket/prefix --size 10GiB
    Create {
        url: String,
        #[arg(long, value_parser = parse_size)]
        size: u64,
        #[arg(long, value_parser = parse_size, default_value = "4MiB")]
        chunk_size: u64,
        #[arg(long, default_value_t = 512)]
        block_size: u32,
        /// Compress the chunks (segment by segment, so reads stay ranged): zstd stores less,
        /// lz4 costs less CPU.
        #[arg(long)]
        compression: Option<rtgt::s3::volume::Compression>,
        #[command(flatten)]
        key: KeyArgs,
        #[command(flatten)]
        s3: S3Args,
    },
    /// Show a volume's metadata, lease and chunk count.
    Info {
        url: String,
        #[command(flatten)]
        s3: S3Args,
    },
    /// Delete a volume: its chunks, logs, snapshots and metadata, under its lease (refused while
    /// a target serves it or it has snapshots, unless --force takes the volume from that target
    /// and deletes its snapshots).
    Delete {
        url: String,
        /// Take the volume from the target serving it (its writes from then on fail).
        #[arg(long)]
        force: bool,
        #[command(flatten)]
        s3: S3Args,
    },
    /// Copy a volume, or a snapshot of it (s3://bucket/volume@snapshot), into a file or block
    /// device (sparse: what the volume never wrote stays a hole). A volume is leased
    /// meanwhile, so no target serves it; a snapshot is read while the volume is in use.
    Export {
        url: String,
        file: PathBuf,
        /// Take the volume from the target serving it.
        #[arg(long)]
        force: bool,
        #[command(flatten)]
        key: KeyArgs,
        #[command(flatten)]
        s3: S3Args,
    },
    /// Copy a file or block device into a new volume of its size (all-zero pieces are not
    /// stored).
    Import {
        file: PathBuf,
        url: String,
        #[arg(long, value_parser = parse_size, default_value = "4MiB")]
        chunk_size: u64,
        #[arg(long, default_value_t = 512)]
        block_size: u32,
        /// Go on with an import that stopped (into the volume it created), from its last
        /// checkpoint (every 256 MiB).
        #[arg(long)]
        resume: bool,
        /// Create the volume with its chunks compressed (zstd or lz4).
        #[arg(long)]
        compression: Option<rtgt::s3::volume::Compression>,
        #[command(flatten)]
        key: KeyArgs,
        #[command(flatten)]
        s3: S3Args,
    },
    /// Wrap an encrypted volume's data key with a new key or passphrase (the old one then no
    /// longer opens it). Only while no target serves the volume; the data is not rewritten.
    Rekey {
        url: String,
        #[command(flatten)]
        key: KeyArgs,
        #[command(flatten)]
        new: NewKeyArgs,
        #[command(flatten)]
        s3: S3Args,
    },
    /// Make a writable clone of a snapshot at once: rtgt volume clone s3://b/v@snap s3://b/w.
    /// It reads the snapshot's data until it writes its own (nothing is copied); the snapshot
    /// cannot be deleted while the clone exists. Same bucket, same geometry and encryption.
    Clone {
        /// The snapshot: s3://bucket/volume@name.
        source: String,
        /// The new volume: s3://bucket/prefix.
        url: String,
        #[command(flatten)]
        s3: S3Args,
    },
    /// Delete what a volume keeps and nothing needs: chunk versions superseded (and not held
    /// by a snapshot), tombstones nothing is under, records of clones that do not exist. A
    /// target serving the volume does the first two in the background; this runs while none
    /// does.
    Gc {
        url: String,
        #[command(flatten)]
        key: KeyArgs,
        #[command(flatten)]
        s3: S3Args,
    },
    /// Snapshots of a volume (format 3): point in time, crash consistent, no data copied.
    Snapshot {
        #[command(subcommand)]
        command: SnapshotCommand,
    },
    /// Set aside a damaged log object that keeps a volume from opening (it is moved to
    /// `damaged/`): the writes it holds are lost. Only while no target serves the volume.
    DiscardLog {
        url: String,
        /// The log's sequence number, in hex, as the error names it.
        seq: String,
        #[command(flatten)]
        s3: S3Args,
    },
}

#[derive(Subcommand)]
enum SnapshotCommand {
    /// Take a snapshot: rtgt volume snapshot create s3://bucket/volume NAME. Only while no
    /// target serves the volume (the target serving it takes them: rtgt lun snapshot).
    Create {
        url: String,
        name: String,
        #[command(flatten)]
        key: KeyArgs,
        #[command(flatten)]
        s3: S3Args,
    },
    /// List a volume's snapshots (while a target serves it too).
    List {
        url: String,
        #[command(flatten)]
        s3: S3Args,
    },
    /// Delete a snapshot: what only it held is deleted. Only while no target serves the
    /// volume (the target serving it deletes them: rtgt lun delete-snapshot).
    Delete {
        url: String,
        name: String,
        #[command(flatten)]
        key: KeyArgs,
        #[command(flatten)]
        s3: S3Args,
    },
}

/// The key of an encrypted volume: encrypts a volume being created, opens an encrypted one.
#[derive(Args)]
#[group(multiple = false)]
struct KeyArgs {
    /// A 256-bit key in a file (32 bytes, 64 hex digits or base64).
    #[arg(long)]
    encryption_key_file: Option<PathBuf>,
    /// A 256-bit key in an environment variable (64 hex digits or base64).
    #[arg(long)]
    encryption_key_env: Option<String>,
    /// A passphrase in a file (Argon2id makes the key).
    #[arg(long)]
    encryption_passphrase_file: Option<PathBuf>,
    /// A passphrase in an environment variable.
    #[arg(long)]
    encryption_passphrase_env: Option<String>,
}

impl KeyArgs {
    fn source(&self) -> Option<KeySource> {
        let held = |file: &Option<PathBuf>, env: &Option<String>| match (file, env) {
            (Some(path), _) => Some(Held::File(path.clone())),
            (_, Some(name)) => Some(Held::Env(name.clone())),
            _ => None,
        };
        held(&self.encryption_key_file, &self.encryption_key_env).map(KeySource::Key).or_else(|| {
            held(&self.encryption_passphrase_file, &self.encryption_passphrase_env).map(KeySource::Passphrase)
        })
    }
}

/// The key or passphrase `volume rekey` wraps the data key with from now on.
#[derive(Args)]
#[group(multiple = false, required = true)]
struct NewKeyArgs {
    #[arg(long)]
    new_encryption_key_file: Option<PathBuf>,
    #[arg(long)]
    new_encryption_key_env: Option<String>,
    #[arg(long)]
    new_encryption_passphrase_file: Option<PathBuf>,
    #[arg(long)]
    new_encryption_passphrase_env: Option<String>,
}

impl NewKeyArgs {
    fn source(&self) -> Option<KeySource> {
        KeyArgs {
            encryption_key_file: self.new_encryption_key_file.clone(),
            encryption_key_env: self.new_encryption_key_env.clone(),
            encryption_passphrase_file: self.new_encryption_passphrase_file.clone(),
            encryption_passphrase_env: self.new_encryption_passphrase_env.clone(),
        }
        .source()
    }
}

/// How to reach the object store.
#[derive(Args)]
struct S3Args {
    /// Endpoint URL (MinIO, Ceph RGW...), or "embedded" for a running `rtgt s3-server` on
    /// 127.0.0.1:9010; AWS S3 when absent.
    #[arg(long)]
    endpoint: Option<String>,
    #[arg(long)]
    region: Option<String>,
    /// Path-style addressing (default with --endpoint).
    #[arg(long)]
    path_style: Option<bool>,
    /// Static credentials; the AWS default chain otherwise.
    #[arg(long)]
    access_key_id: Option<String>,
    #[arg(long)]
    secret_access_key: Option<String>,
    /// The embedded store's directory (e.g. rtgt-data/s3), opened directly: when no rtgt
    /// serves from it.
    #[arg(long, conflicts_with = "endpoint")]
    store_dir: Option<PathBuf>,
}

impl S3Args {
    /// The bucket's object store.
    async fn store(&self, bucket: &str) -> Result<Arc<dyn rtgt::s3::ObjectStore>, String> {
        match &self.store_dir {
            Some(dir) => Ok(Arc::new(embedded::open_root(dir)?.bucket(bucket)?)),
            None => Ok(Arc::new(AwsStore::connect(&self.endpoint(), bucket).await)),
        }
    }

    fn endpoint(&self) -> Endpoint {
        if self.endpoint.as_deref() == Some("embedded") {
            // The credentials the local store generated (readable by the user running rtgt).
            let root = default_data_dir().join("s3");
            let credentials = embedded::Credentials::read(&root)
                .unwrap_or(embedded::Credentials { access_key: String::new(), secret_key: String::new() });
            return embedded::endpoint_for("127.0.0.1:9010".parse().expect("address"), &credentials);
        }
        Endpoint {
            url: self.endpoint.clone(),
            region: self.region.clone(),
            path_style: self.path_style.unwrap_or(self.endpoint.is_some()),
            access_key_id: self.access_key_id.clone(),
            secret_access_key: self.secret_access_key.clone(),
        }
    }
}

/// Logs to stderr, filtered by $RUST_LOG (info by default): plain lines (journald adds its own
/// time stamps), coloured only on a terminal (journald, docker logs and files get no escape
/// codes), or JSON objects, one a line.
fn init_logs(format: LogFormat) {
    use std::io::IsTerminal;
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal());
    match format {
        LogFormat::Text => builder.init(),
        // The event's fields stay under "fields": flattened, an event's `target` (a target's
        // IQN) would collide with the line's (the module that logged it).
        LogFormat::Json => builder.json().with_current_span(false).with_span_list(false).init(),
    }
}

/// rtgt.1 and rtgt-SUBCOMMAND.1 (rtgt-volume-create.1, ...) for every subcommand.
fn write_man_pages(dir: &std::path::Path) -> Result<(), String> {
    fn write(dir: &std::path::Path, name: &str, cmd: clap::Command) -> Result<(), String> {
        let mut page = Vec::new();
        clap_mangen::Man::new(cmd.clone()).title(name.to_string()).render(&mut page).map_err(|e| e.to_string())?;
        let path = dir.join(format!("{name}.1"));
        std::fs::write(&path, page).map_err(|e| format!("{}: {e}", path.display()))?;
        for sub in cmd.get_subcommands().filter(|s| s.get_name() != "help" && !s.is_hide_set()) {
            write(dir, &format!("{name}-{}", sub.get_name()), sub.clone())?;
        }
        Ok(())
    }
    std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let mut cmd = Cli::command();
    cmd.build();
    write(dir, "rtgt", cmd)
}

fn parse_size(s: &str) -> Result<u64, String> {
    Size::parse(s).map(|s| s.0)
}

fn main() -> ExitCode {
    keep_io_buffers_on_the_heap();
    let cli = Cli::parse();
    init_logs(cli.log_format);
    let result = match cli.command {
        Command::Completions { shell } => {
            let mut script = Vec::new();
            clap_complete::generate(shell, &mut Cli::command(), "rtgt", &mut script);
            std::io::Write::write_all(&mut std::io::stdout(), &script).map_err(|e| e.to_string())
        }
        Command::Man { dir } => write_man_pages(&dir),
        Command::Target { command, api } => return manage::target(&api, command),
        Command::Lun { command, api } => return manage::lun(&api, command),
        Command::Portal { command, api } => return manage::portal(&api, command),
        Command::Tpgt { command, api } => return manage::tpgt(&api, command),
        Command::Session { command, api } => return manage::session(&api, command),
        Command::Reload { api } => return manage::reload(&api),
        Command::Status { api } => return manage::status(&api),
        Command::Serve { config, data_dir, listen, force, api_listen, s3_listen } => {
            serve(config, data_dir, ServeOverrides { listen, force, api_listen, s3_listen })
        }
        Command::CheckConfig { config } => {
            Config::load(&config).map(|c| print!("{}", c.to_toml())).map_err(|e| e.to_string())
        }
        Command::Volume { command } => block_on(volume(command)),
        Command::S3Server { listen, root, access_key, secret_key } => {
            let given = match access_key.zip(secret_key) {
                None => Ok(None),
                Some((access_key, spec)) => rtgt::config::read_secret("--secret-key", &spec)
                    .map(|secret_key| Some(embedded::Credentials { access_key, secret_key })),
            };
            given.and_then(|given| block_on(s3_server(listen, root, given)))
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("rtgt: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Command-line settings of `serve` that override the configuration.
struct ServeOverrides {
    listen: Option<String>,
    force: bool,
    api_listen: Option<String>,
    s3_listen: Option<String>,
}

fn serve(config: Option<PathBuf>, data_dir: Option<PathBuf>, overrides: ServeOverrides) -> Result<(), String> {
    // Without --config: what the API saved in the data directory, else the embedded default.
    let dir = data_dir.clone().unwrap_or_else(default_data_dir);
    let saved = dir.join(SAVED_CONFIG);
    let path = config.or_else(|| saved.exists().then(|| saved.clone()));
    let file = match &path {
        Some(path) => Config::load(path).map_err(|e| e.to_string())?,
        None => Config::embedded_default(&dir),
    };
    let overrides = Overrides {
        data_dir,
        listen: overrides.listen,
        force: overrides.force,
        api_listen: overrides.api_listen,
        s3_listen: overrides.s3_listen,
    };
    overrides.apply(&file).validate().map_err(|e| e.to_string())?;
    // Changes made through the API go to the file we read, or to the data directory.
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let workers = file.server.worker_threads(cpus);
    runtime(workers)?.block_on(run(file, overrides, path.unwrap_or(saved)))
}

/// Data buffers of up to a MaxBurstLength and more (1 MiB reads, gathered writes) come and go
/// with every command. glibc serves allocations above 128 KiB with a fresh mmap and gives them
/// back on free, so each such command would pay for page faults on all of its pages (about
/// 1.2 GB/s instead of 3.2 GB/s for 1 MiB reads from memory with iscsi-perf). Keep them on the
/// heap, and keep the freed heap: the memory in use is bounded by the commands in flight anyway.
fn keep_io_buffers_on_the_heap() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes allocator tunables; called before any thread exists.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 64 << 20);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 256 << 20);
    }
}

/// Gives the memory of a spike back to the system once it is over. I/O buffers stay on the
/// heap for speed (above), and glibc keeps freed heap below its trim threshold: after a client
/// made the target hold hundreds of MiB (within `io_memory_max`), that would stay resident.
async fn return_memory_after_spikes(memory: Arc<rtgt::iscsi::memory::IoMemory>) {
    loop {
        tokio::time::sleep(std::time::Duration::from_secs(5)).await;
        let recent = memory.take_recent_peak();
        if recent >= 64 << 20 && memory.used() < recent / 4 {
            #[cfg(all(target_os = "linux", target_env = "gnu"))]
            // SAFETY: malloc_trim only returns free memory to the system.
            unsafe {
                libc::malloc_trim(0);
            }
            tracing::debug!(recent_peak = recent, "I/O memory spike over: free memory returned to the system");
        }
    }
}

/// Where `rtgt serve` without --config keeps what the API changed.
const SAVED_CONFIG: &str = "rtgt.toml";

fn block_on<F: std::future::Future<Output = Result<(), String>>>(f: F) -> Result<(), String> {
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().map_err(|e| e.to_string())?;
    runtime.block_on(f)
}

/// The runtime of `rtgt serve`, with `workers` worker threads (`server.workers`).
fn runtime(workers: usize) -> Result<tokio::runtime::Runtime, String> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(workers)
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the runtime: {e}"))
}

async fn run(file: Config, overrides: Overrides, path: PathBuf) -> Result<(), String> {
    let mut signals = Signals::catch()?;
    let config = overrides.apply(&file);
    // One rtgt per data directory: its node identity, held locked until exit, lets the next
    // start take this node's leases back at once after a crash.
    let node = NodeIdentity::open(&config.data_dir())?;
    let mut ctx = BuildContext::new();
    ctx.node = Some(node.id.clone());
    let mut _embedded = None;
    if let (Some(e), Some(dir)) = (&config.embedded_s3, config.embedded_root()) {
        let root = embedded::open_root(&dir)?;
        for bucket in config.embedded_buckets() {
            root.create_bucket(&bucket)?;
        }
        ctx.embedded = Some(root.clone());
        // The HTTP endpoint is a convenience (rtgt volume, S3 tools): the LUNs do not need it.
        match e.address() {
            Some(Ok(addr)) => match EmbeddedS3::start_with(root, addr, e.credentials()?).await {
                Ok(server) => {
                    eprintln!("rtgt: embedded S3 at http://{} (data in {})", server.addr, dir.display());
                    _embedded = Some(server);
                }
                Err(e) => eprintln!("rtgt: warning: {e}; the LUNs use the store in-process regardless"),
            },
            Some(Err(e)) => return Err(e),
            None => eprintln!("rtgt: embedded object store in {} (no HTTP endpoint)", dir.display()),
        }
    }
    let registry = Arc::new(Registry::new());
    let server = Arc::new(Server::new(TokioNet, Arc::new(TokioClock::new()), registry.clone(), config.settings()));
    tokio::spawn(return_memory_after_spikes(server.settings.conn.memory.pool().clone()));
    // Bind the API first: a port in use is found before any volume is opened.
    let token = config.api.token.clone().or_else(|| std::env::var("RTGT_API_TOKEN").ok().filter(|t| !t.is_empty()));
    let api_listener = match config.api.address() {
        Some(addr) => Some(rtgt::api::bind(addr?, token.as_deref()).await?),
        None => None,
    };
    // Without a configured token, one is made and kept in the data directory (mode 0600),
    // where the CLI finds it: no local user or web page reaches the API without it.
    let token = match (token, &api_listener) {
        (Some(token), _) => Some(token),
        (None, Some(_)) => Some(rtgt::api::token::load_or_create(&config.data_dir())?),
        (None, None) => None,
    };
    let hosts = rtgt::api::AllowedHosts::new(&config.api.allowed_hosts);
    let tls = match (&config.api.tls_cert, &config.api.tls_key) {
        (Some(cert), Some(key)) => Some(rtgt::api::tls::server_config(cert, key)?),
        (None, None) => None,
        _ => return Err("api.tls_cert / api.tls_key: give both or neither".into()),
    };
    let scheme = if tls.is_some() { "https" } else { "http" };
    let manager = Manager::start(file, overrides, server.clone(), ctx, Some(path.clone())).await?;
    print_banner(&config, &registry);
    // Every LUN has had its first open (open, or NOT READY and retried) and the portals accept.
    rtgt::sd_notify::tell("READY=1");
    if let Some(interval) = rtgt::sd_notify::watchdog_interval() {
        tokio::spawn(watchdog(interval));
    }
    if let Some(listener) = api_listener {
        let addr = listener.local_addr().map_err(|e| e.to_string())?;
        eprintln!("rtgt: management API at {scheme}://{addr} (changes are saved to {})", path.display());
        tokio::spawn(rtgt::api::serve(listener, manager.clone(), token, hosts, tls));
    }
    wait_for_signals(&manager, &mut signals).await;
    rtgt::sd_notify::tell("STOPPING=1");
    // Stop new logins, ask initiators to log out, wait, then flush every LUN.
    manager.stop_listening().await;
    server.shutdown(Duration::from_secs(10)).await;
    eprintln!("rtgt: stopped");
    Ok(())
}

/// Tells systemd the engine is alive, twice per watchdog interval, for as long as its runtime
/// runs tasks: a task spawned now must have run within half the interval. If the workers are
/// all stuck (a blocking call, a deadlock), the pings stop and systemd restarts rtgt. (Not the
/// manager's lock: a reload may hold it for as long as an S3 volume takes to open.)
async fn watchdog(interval: Duration) {
    loop {
        tokio::time::sleep(interval / 2).await;
        if tokio::time::timeout(interval / 2, tokio::spawn(async {})).await.is_ok_and(|ran| ran.is_ok()) {
            rtgt::sd_notify::tell("WATCHDOG=1");
        }
    }
}

/// Serves SIGHUP (reload) until SIGINT or SIGTERM.
async fn wait_for_signals(manager: &Manager, signals: &mut Signals) {
    while signals.next().await == Caught::Reload {
        match manager.reload().await {
            Ok(()) => eprintln!("rtgt: configuration reloaded"),
            Err(e) => eprintln!("rtgt: reload: {e}"),
        }
    }
}

fn print_banner(config: &Config, registry: &Registry) {
    let groups = registry.portal_groups();
    for t in &config.targets {
        let entry = registry.target(&t.name).expect("populated");
        let portal = entry
            .portal_groups
            .read()
            .expect("poisoned")
            .iter()
            .flat_map(|tag| groups.get(tag).cloned().unwrap_or_default())
            .next();
        eprintln!("rtgt: serving {}", t.name);
        for (lun, lu) in entry.scsi.luns() {
            eprintln!(
                "  LUN {lun}: {}, {} blocks of {} bytes ({})",
                lu.store().describe(),
                lu.num_blocks(),
                lu.block_size(),
                rtgt::config::Size(lu.num_blocks() * lu.block_size() as u64)
            );
        }
        if let Some(addr) = portal {
            let lun = entry.scsi.luns().first().map(|(n, _)| *n).unwrap_or(0);
            eprintln!("  try: iscsi-ls -s iscsi://{addr}");
            eprintln!("       iscsi-inq iscsi://{addr}/{}/{lun}", t.name);
            eprintln!("       iscsi-readcapacity16 iscsi://{addr}/{}/{lun}", t.name);
        }
    }
}

/// The signals a server answers, caught from its first moment: a SIGTERM while the LUNs open
/// (systemd stopping a slow start) is kept and shuts the server down cleanly once it serves,
/// where without a handler it would have killed the process.
struct Signals {
    terminate: tokio::signal::unix::Signal,
    interrupt: tokio::signal::unix::Signal,
    hangup: tokio::signal::unix::Signal,
}

impl Signals {
    fn catch() -> Result<Signals, String> {
        use tokio::signal::unix::{SignalKind, signal};
        let catch = |kind: SignalKind| signal(kind).map_err(|e| format!("signal handler: {e}"));
        Ok(Signals {
            terminate: catch(SignalKind::terminate())?,
            interrupt: catch(SignalKind::interrupt())?,
            hangup: catch(SignalKind::hangup())?,
        })
    }

    /// The next signal: SIGHUP asks for a reload, SIGTERM and SIGINT for a stop.
    async fn next(&mut self) -> Caught {
        let caught = tokio::select! {
            _ = self.terminate.recv() => Caught::Stop,
            _ = self.interrupt.recv() => Caught::Stop,
            _ = self.hangup.recv() => Caught::Reload,
        };
        if caught == Caught::Stop {
            eprintln!("rtgt: shutting down");
        }
        caught
    }

    /// Waits for SIGTERM or SIGINT (a SIGHUP changes nothing).
    async fn stop(&mut self) {
        while self.next().await != Caught::Stop {}
    }
}

#[derive(Debug, PartialEq, Eq)]
enum Caught {
    Stop,
    Reload,
}

/// Per chunk, its newest version and that version's stored size (a tombstone's is 0).
fn newest_versions(
    chunks: &[rtgt::s3::Listed],
    chunk_dir: &str,
    meta: &rtgt::s3::volume::VolumeMeta,
) -> std::collections::BTreeMap<u64, (Option<u64>, u64)> {
    let mut newest = std::collections::BTreeMap::new();
    for o in chunks {
        if let Some((c, version)) = rtgt::s3::volume::format::parse_chunk_key(&o.key, chunk_dir, meta.layout()) {
            let entry = newest.entry(c).or_insert((version, o.size));
            if version > entry.0 {
                *entry = (version, o.size);
            }
        }
    }
    newest
}

/// (chunk bytes, stored bytes) of the newest versions of a compressed volume's chunks
/// (tombstones hold none).
fn compression_of(
    newest: &std::collections::BTreeMap<u64, (Option<u64>, u64)>,
    meta: &rtgt::s3::volume::VolumeMeta,
) -> (u64, u64) {
    newest.iter().filter(|(_, (_, size))| *size > 0).fold((0, 0), |(written, kept), (c, (_, size))| {
        (written + meta.chunk_size.min(meta.size - c * meta.chunk_size), kept + size)
    })
}

async fn volume(command: VolumeCommand) -> Result<(), String> {
    use rtgt::s3::ObjectStore;
    match command {
        VolumeCommand::Create { url, size, chunk_size, block_size, compression, key, s3 } => {
            let url = S3Url::parse(&url)?;
            let store = s3.store(&url.bucket).await?;
            let spec = CreateSpec { size, block_size, chunk_size };
            let source = key.source();
            let seed = rtgt::rng::os_seed();
            let meta = S3Volume::create(&*store, &url, &spec, &TokioClock::new(), seed, source.as_ref(), compression)
                .await
                .map_err(|e| e.to_string())?;
            println!(
                "created {url}: {} ({} blocks of {} bytes), chunks of {}, uuid {}{}{}",
                Size(meta.size),
                meta.size / meta.block_size as u64,
                meta.block_size,
                Size(meta.chunk_size),
                meta.uuid,
                if meta.encryption.is_some() { ", encrypted" } else { "" },
                meta.compression.map(|c| format!(", {c}-compressed")).unwrap_or_default()
            );
            Ok(())
        }
        VolumeCommand::Info { url, s3 } => {
            let url = S3Url::parse(&url)?;
            let store = s3.store(&url.bucket).await?;
            let (meta, _) = S3Volume::read_meta(&*store, &url).await?.ok_or_else(|| format!("no volume at {url}"))?;
            let chunks = rtgt::s3::list_all(&*store, &url.key("chunks/")).await.map_err(|e| e.to_string())?;
            let logs = rtgt::s3::list_all(&*store, &url.key("log/")).await.map_err(|e| e.to_string())?;
            println!("volume:     {url}");
            println!("uuid:       {}", meta.uuid);
            println!(
                "size:       {} ({} blocks of {} bytes)",
                Size(meta.size),
                meta.size / meta.block_size as u64,
                meta.block_size
            );
            println!("chunk size: {}", Size(meta.chunk_size));
            match &meta.encryption {
                Some(e) => println!(
                    "encryption: {}, the data key wrapped by a {}",
                    e.cipher,
                    if e.kdf.is_some() { "passphrase (Argon2id)" } else { "256-bit key" }
                ),
                None => println!("encryption: none"),
            }
            let stored: u64 = chunks.iter().map(|c| c.size).sum();
            let chunk_dir = url.key(rtgt::s3::volume::format::CHUNKS_DIR);
            let newest = newest_versions(&chunks, &chunk_dir, &meta);
            if let Some(codec) = meta.compression {
                let (written, kept) = compression_of(&newest, &meta);
                println!(
                    "compression: {codec}, the newest chunk versions hold {} in {} ({:.1}%)",
                    Size(written),
                    Size(kept),
                    kept as f64 * 100.0 / written.max(1) as f64
                );
            } else {
                println!("compression: none");
            }
            let with_data = newest.values().filter(|(_, size)| *size > 0).count();
            println!(
                "chunks:     {with_data} hold data ({} stored, {:.1}% of the volume)",
                Size(stored),
                stored as f64 * 100.0 / meta.size.max(1) as f64
            );
            if newest.len() > with_data {
                println!("            {} zeroed (a tombstone each)", newest.len() - with_data);
            }
            if chunks.len() > newest.len() {
                println!("            {} older versions not yet swept", chunks.len() - newest.len());
            }
            println!("format:     {}", meta.format_version);
            if meta.deleting {
                println!("deleting:   a deletion began and did not finish: `rtgt volume delete {url}` finishes it");
            }
            if meta.making {
                println!("making:     a clone whose making did not finish: `rtgt volume delete {url}` removes it");
            }
            if let Some(parent) = &meta.parent {
                println!("clone of:   s3://{}/{}@{}", url.bucket, parent.prefix.trim_end_matches('/'), parent.snapshot);
            }
            println!("logs:       {} (replayed at the next open)", logs.len());
            let present = |name: &'static str| {
                let key = url.key(name);
                let store = store.clone();
                async move { store.head(&key).await.is_ok() }
            };
            if present(rtgt::s3::volume::format::RESERVATIONS_NAME).await {
                println!("reservations: kept (APTPL), in {}", url.key(rtgt::s3::volume::format::RESERVATIONS_NAME));
            }
            if present(rtgt::s3::volume::IMPORT_PROGRESS).await {
                println!("import:     interrupted; `rtgt volume import FILE {url} --resume` goes on with it");
            }
            match store.get(&url.key(rtgt::s3::volume::LEASE_NAME), None).await {
                Ok(lease) => println!("lease:      {}", String::from_utf8_lossy(&lease.body)),
                Err(_) => println!("lease:      none"),
            }
            Ok(())
        }
        VolumeCommand::Delete { url, force, s3 } => {
            let url = S3Url::parse(&url)?;
            let store = s3.store(&url.bucket).await?;
            let holder = format!("{}/{}/volume-delete", rtgt::config::hostname(), std::process::id());
            let clock = std::sync::Arc::new(TokioClock::new());
            let deleted = rtgt::s3::volume::delete_volume(store, &url, force, clock, holder).await?;
            println!(
                "deleted {url}: {} chunk objects, {} logs, {} snapshots, {} stored",
                deleted.chunks,
                deleted.logs,
                deleted.snapshots,
                Size(deleted.bytes)
            );
            Ok(())
        }
        VolumeCommand::Rekey { url, key, new, s3 } => {
            let url = S3Url::parse(&url)?;
            let new = new.source().ok_or("give the new key (--new-encryption-key-file, ...)")?;
            let store = s3.store(&url.bucket).await?;
            let volume = open_for_transfer(store, &url, false, None, key.source()).await?;
            let rekeyed = volume.rekey(&new).await;
            volume.close().await.map_err(|e| e.to_string())?;
            rekeyed?;
            println!("{url}: its data key is now wrapped by the new key; the old one no longer opens it");
            Ok(())
        }
        VolumeCommand::Export { url, file, force, key, s3 } => {
            let (url, snapshot) = SnapshotName::split_url(&url)?;
            let url = S3Url::parse(url)?;
            let store = s3.store(&url.bucket).await?;
            let out = std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(false)
                .open(&file)
                .map_err(|e| format!("{}: {e}", file.display()))?;
            let exported = match &snapshot {
                Some(name) => {
                    let view = rtgt::s3::volume::SnapshotView::open(store, &url, name, key.source().as_ref())
                        .await
                        .map_err(|e| e.to_string())?;
                    rtgt::s3::volume::export_volume(&view, &out, &progress_line("exported")).await
                }
                None => {
                    let volume = open_for_transfer(store, &url, force, None, key.source()).await?;
                    let exported = rtgt::s3::volume::export_volume(&*volume, &out, &progress_line("exported")).await;
                    volume.close().await.map_err(|e| e.to_string())?;
                    exported
                }
            };
            let what = snapshot.map_or(url.to_string(), |name| format!("{url}@{name}"));
            println!("exported {what} to {}: {} of data", file.display(), Size(exported?));
            Ok(())
        }
        VolumeCommand::Snapshot { command } => snapshot(command).await,
        VolumeCommand::Gc { url, key, s3 } => {
            let url = S3Url::parse(&url)?;
            let store = s3.store(&url.bucket).await?;
            let volume = open_for_snapshots(store.clone(), &url, key.source()).await?;
            let (swept, left) = volume.collect_garbage().await;
            let forgotten = rtgt::s3::volume::clone::forget_missing_clones(&*store, &url, &volume.meta().uuid).await;
            volume.close().await.map_err(|e| e.to_string())?;
            println!("{url}: {swept} objects deleted, {left} left, {} records of missing clones removed", forgotten?);
            Ok(())
        }
        VolumeCommand::Clone { source, url, s3 } => {
            let (parent, name) = SnapshotName::split_url(&source)?;
            let name = name.ok_or_else(|| format!("{source}: name the snapshot to clone (s3://bucket/volume@name)"))?;
            let (parent, url) = (S3Url::parse(parent)?, S3Url::parse(&url)?);
            let store = s3.store(&parent.bucket).await?;
            let seed = rtgt::rng::os_seed();
            let meta = rtgt::s3::volume::clone::clone_volume(&*store, &parent, &name, &url, &TokioClock::new(), seed)
                .await
                .map_err(|e| e.to_string())?;
            println!("cloned {source} to {url}: {} (uuid {})", Size(meta.size), meta.uuid);
            Ok(())
        }
        VolumeCommand::Import { file, url, chunk_size, block_size, resume, compression, key, s3 } => {
            use std::io::Seek;
            let url = S3Url::parse(&url)?;
            let mut input = std::fs::File::open(&file).map_err(|e| format!("{}: {e}", file.display()))?;
            let size = input.seek(std::io::SeekFrom::End(0)).map_err(|e| format!("{}: {e}", file.display()))?;
            if size == 0 || !size.is_multiple_of(block_size as u64) {
                return Err(format!(
                    "{}: {size} bytes is not a whole number of {block_size}-byte blocks",
                    file.display()
                ));
            }
            let store = s3.store(&url.bucket).await?;
            let exists = S3Volume::read_meta(&*store, &url).await?.is_some();
            let create = match (exists, resume) {
                (false, _) => Some(CreateSpec { size, block_size, chunk_size }),
                (true, true) => None,
                (true, false) => {
                    return Err(format!("{url} exists: import creates a new volume (delete it first, or --resume)"));
                }
            };
            let opts = rtgt::s3::volume::VolumeOptions { compression, ..transfer_options(false, create, key.source()) };
            let volume = S3Volume::open(store, url.clone(), opts, Arc::new(TokioClock::new()))
                .await
                .map_err(|e| e.to_string())?;
            let from = match (resume && exists, rtgt::s3::volume::import_progress(&volume).await) {
                (false, _) => Ok(0),
                (true, Ok(Some((done, recorded)))) if recorded == size => Ok(done),
                (true, Ok(Some((_, recorded)))) => {
                    Err(format!("{url} is the import of a {recorded}-byte file, not of this {size}-byte one"))
                }
                (true, Ok(None)) => Err(format!("{url} has no import to resume")),
                (true, Err(e)) => Err(e),
            };
            let imported = match from {
                Ok(from) => {
                    if from > 0 {
                        eprintln!("rtgt: resuming at {}", Size(from));
                    }
                    rtgt::s3::volume::import_volume(&volume, &input, size, from, &progress_line("imported")).await
                }
                Err(e) => Err(e),
            };
            let closed = volume.close().await.map_err(|e| e.to_string());
            let imported = imported?;
            closed?;
            println!(
                "imported {} into {url}: {} written (the rest is zeros), of {}",
                file.display(),
                Size(imported),
                Size(size)
            );
            Ok(())
        }
        VolumeCommand::DiscardLog { url, seq, s3 } => {
            let url = S3Url::parse(&url)?;
            let seq = u64::from_str_radix(&seq, 16).map_err(|_| format!("{seq:?} is not a hex sequence number"))?;
            let store = s3.store(&url.bucket).await?;
            let key = rtgt::s3::volume::format::log_key(&url, seq);
            let aside = url.key(&format!("damaged/{seq:016x}"));
            match store.get(&key, None).await {
                Ok(log) => {
                    store
                        .put(&aside, log.body, log.meta.metadata, rtgt::s3::Condition::None)
                        .await
                        .map_err(|e| format!("cannot copy {key} to {aside}: {e}"))?;
                    println!("copied {key} to {aside}");
                }
                Err(rtgt::s3::ObjectError::NotFound) => return Err(format!("no log {key}")),
                Err(e) => eprintln!("rtgt: {key} cannot be read ({e}): deleted without a copy"),
            }
            store.delete(&key).await.map_err(|e| format!("cannot delete {key}: {e}"))?;
            println!("discarded {key}; the volume opens without the writes it held");
            Ok(())
        }
    }
}

/// Opens a volume for `volume export` / `import`, as a holder of its own.
async fn snapshot(command: SnapshotCommand) -> Result<(), String> {
    match command {
        SnapshotCommand::Create { url, name, key, s3 } => {
            let (url, name) = (S3Url::parse(&url)?, SnapshotName::parse(&name)?);
            let volume = open_for_snapshots(s3.store(&url.bucket).await?, &url, key.source()).await?;
            let taken = volume.create_snapshot(name).await.map_err(|e| e.to_string());
            volume.close().await.map_err(|e| e.to_string())?;
            let taken = taken?;
            println!("snapshot {url}@{}: {} chunks hold data", taken.name, taken.chunks);
            Ok(())
        }
        SnapshotCommand::List { url, s3 } => {
            let url = S3Url::parse(&url)?;
            let store = s3.store(&url.bucket).await?;
            let (meta, _) = S3Volume::read_meta(&*store, &url).await?.ok_or_else(|| format!("no volume at {url}"))?;
            let manifests = rtgt::s3::volume::snapshot::read_manifests(&*store, &url, &meta.uuid).await?;
            println!("{:<24} {:<29} {:>10} {:>8}", "NAME", "TAKEN", "SIZE", "CHUNKS");
            for m in manifests {
                let taken = std::time::UNIX_EPOCH + std::time::Duration::from_secs(m.created_unix_secs);
                let (taken, size) = (httpdate::fmt_http_date(taken), Size(m.size).to_string());
                println!("{:<24} {taken:<29} {size:>10} {:>8}", m.name.as_str(), m.holding());
            }
            Ok(())
        }
        SnapshotCommand::Delete { url, name, key, s3 } => {
            let (url, name) = (S3Url::parse(&url)?, SnapshotName::parse(&name)?);
            let volume = open_for_snapshots(s3.store(&url.bucket).await?, &url, key.source()).await?;
            let deleted = volume.delete_snapshot(&name).await.map_err(|e| e.to_string());
            volume.close().await.map_err(|e| e.to_string())?;
            deleted?;
            println!("deleted snapshot {url}@{name}");
            Ok(())
        }
    }
}

/// Opens a volume to take or delete a snapshot, with a hint when a target serves it.
async fn open_for_snapshots(
    store: Arc<dyn rtgt::s3::ObjectStore>,
    url: &S3Url,
    key: Option<KeySource>,
) -> Result<Arc<S3Volume>, String> {
    let opts = transfer_options(false, None, key);
    S3Volume::open(store, url.clone(), opts, Arc::new(TokioClock::new())).await.map_err(|e| match e {
        e @ rtgt::s3::volume::OpenError::HeldElsewhere { .. } => format!(
            "{e}\n(the target serving the volume takes and deletes its snapshots: \
             rtgt lun snapshot|snapshots|delete-snapshot TARGET LUN [NAME], or its API)"
        ),
        e => e.to_string(),
    })
}

async fn open_for_transfer(
    store: Arc<dyn rtgt::s3::ObjectStore>,
    url: &S3Url,
    force: bool,
    create: Option<CreateSpec>,
    encryption: Option<KeySource>,
) -> Result<Arc<S3Volume>, String> {
    let opts = transfer_options(force, create, encryption);
    S3Volume::open(store, url.clone(), opts, Arc::new(TokioClock::new())).await.map_err(|e| e.to_string())
}

/// How the CLI opens a volume for itself.
fn transfer_options(
    force: bool,
    create: Option<CreateSpec>,
    encryption: Option<KeySource>,
) -> rtgt::s3::volume::VolumeOptions {
    rtgt::s3::volume::VolumeOptions {
        create,
        force,
        encryption,
        holder: format!("{}/{}/volume-transfer", rtgt::config::hostname(), std::process::id()),
        // A volume it creates (an import) gets a uuid of its own: the default seed made every
        // imported volume the same uuid, and volumes sharing a cache_dir shared one journal.
        seed: rtgt::rng::os_seed(),
        ..Default::default()
    }
}

/// A progress bar on stderr (bytes done, rate, time left), drawn only on a terminal; the
/// first call gives the total.
fn progress_line(verb: &'static str) -> impl Fn(u64, u64) + Sync {
    let bar = std::sync::OnceLock::<indicatif::ProgressBar>::new();
    move |done, total| {
        let bar = bar.get_or_init(|| {
            let style = indicatif::ProgressStyle::with_template(
                "{msg} {bytes}/{total_bytes} [{bar:30}] {bytes_per_sec}, {eta} left",
            )
            .expect("a valid template")
            .progress_chars("=> ");
            indicatif::ProgressBar::new(total).with_style(style).with_message(verb)
        });
        bar.set_position(done);
        if done >= total {
            bar.finish();
        }
    }
}

async fn s3_server(listen: String, root: Option<PathBuf>, given: Option<embedded::Credentials>) -> Result<(), String> {
    let mut signals = Signals::catch()?;
    let dir = root.unwrap_or_else(|| default_data_dir().join("s3"));
    let addr = listen.parse().map_err(|_| format!("--listen: bad address {listen}"))?;
    let generated = given.is_none();
    let server = EmbeddedS3::start_with(embedded::open_root(&dir)?, addr, given).await?;
    let root = dir;
    eprintln!("rtgt: S3 server at http://{} serving {}", server.addr, root.display());
    if generated {
        let file = root.join(embedded::CREDENTIALS_FILE);
        eprintln!("  credentials: access key {}, secret key in {}", server.credentials().access_key, file.display());
    }
    eprintln!("  buckets are the directories of {}", root.display());
    signals.stop().await;
    Ok(())
}
