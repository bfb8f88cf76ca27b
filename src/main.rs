//! The `rtgt` command: `rtgt serve` runs the target.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::{Parser, Subcommand};
use rtgt::config::{Config, default_data_dir};
use rtgt::server::{Registry, Server, TokioClock, TokioNet};

#[derive(Parser)]
#[command(name = "rtgt", version, about = "An iSCSI target: file, block device, memory and S3 backed disks")]
struct Cli {
    #[command(subcommand)]
    command: Command,
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
    },
    /// Check a configuration file and print it as rtgt understands it.
    CheckConfig { config: PathBuf },
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()))
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Serve { config, data_dir, listen } => serve(config, data_dir, listen),
        Command::CheckConfig { config } => {
            Config::load(&config).map(|c| print!("{}", c.to_toml())).map_err(|e| e.to_string())
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

fn serve(config: Option<PathBuf>, data_dir: Option<PathBuf>, listen: Option<String>) -> Result<(), String> {
    let mut config = match &config {
        Some(path) => Config::load(path).map_err(|e| e.to_string())?,
        None => Config::embedded_default(&data_dir.clone().unwrap_or_else(default_data_dir)),
    };
    if let Some(dir) = data_dir {
        config.server.data_dir = Some(dir);
    }
    if let Some(addr) = listen {
        for pg in &mut config.portal_groups {
            pg.portals = vec![addr.clone()];
        }
        config.validate().map_err(|e| e.to_string())?;
    }
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().map_err(|e| e.to_string())?;
    runtime.block_on(run(config))
}

async fn run(config: Config) -> Result<(), String> {
    let registry = Arc::new(Registry::new());
    config.populate(&registry).map_err(|e| e.to_string())?;
    let server = Arc::new(Server::new(TokioNet, Arc::new(TokioClock::new()), registry.clone(), config.settings()));
    let portals = server.bind().await.map_err(|e| e.to_string())?;
    print_banner(&config, &registry);
    let accepting: Vec<_> = portals.into_iter().map(|p| tokio::spawn(server.clone().accept_loop(p))).collect();
    wait_for_signal().await;
    for a in &accepting {
        a.abort();
    }
    server.shutdown(Duration::from_secs(10)).await;
    eprintln!("rtgt: stopped");
    Ok(())
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

async fn wait_for_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    eprintln!("rtgt: shutting down");
}
