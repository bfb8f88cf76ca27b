//! `rtgt-bench`: the load generator and the S3 volume benchmarks that `cargo xtask bench` runs
//! (kept out of the `rtgt` binary users install).

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use rtgt::s3::embedded::{self, EmbeddedS3};
use rtgt_testkit::bench;
use rtgt_testkit::netem::{LinkSpec, Netem};

#[derive(Parser)]
#[command(name = "rtgt-bench", about = "rtgt's load generator and S3 volume benchmarks (cargo xtask bench runs them)")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Drive a fixed-duration load against an iSCSI LU.
    Load(bench::LoadArgs),
    /// Benchmark the S3 volume against an embedded S3 server.
    S3 {
        #[arg(long)]
        dir: PathBuf,
        #[arg(long, default_value_t = 1)]
        scale: u64,
        #[arg(long)]
        json: Option<PathBuf>,
    },
    /// Benchmark the S3 volume over an emulated network.
    S3Network {
        #[arg(long)]
        dir: PathBuf,
        /// Round-trip time to the store, in milliseconds.
        #[arg(long, default_value_t = 20)]
        rtt_ms: u64,
        /// Bandwidth cap each way, in Mbit/s (0: none).
        #[arg(long, default_value_t = 0)]
        mbit: u64,
        /// Seconds per workload.
        #[arg(long, default_value_t = 5)]
        seconds: u64,
        /// Seconds the store is away in the outage workload (0: none).
        #[arg(long, default_value_t = 0)]
        outage: u64,
        /// Only the workloads whose name contains this.
        #[arg(long)]
        only: Option<String>,
        #[arg(long)]
        json: Option<PathBuf>,
    },
    /// Serve the embedded S3 store behind an emulated link, with the bench's credentials, until
    /// SIGTERM or Ctrl-C.
    S3Remote {
        #[arg(long)]
        dir: PathBuf,
        /// Where the link's far end listens.
        #[arg(long)]
        listen: String,
        #[arg(long, default_value_t = 20)]
        rtt_ms: u64,
        /// Bandwidth cap each way, in Mbit/s (0: none).
        #[arg(long, default_value_t = 0)]
        mbit: u64,
    },
}

fn main() -> ExitCode {
    let outcome = match Cli::parse().command {
        Command::Load(args) => bench::run_load(args),
        Command::S3 { dir, scale, json } => block_on(s3(dir, scale, json)),
        Command::S3Network { dir, rtt_ms, mbit, seconds, outage, only, json } => {
            let link = LinkSpec::new(Duration::from_millis(rtt_ms), mbit * 1_000_000);
            block_on(s3_network(dir, bench::network::NetworkArgs { link, seconds, outage, only }, json))
        }
        Command::S3Remote { dir, listen, rtt_ms, mbit } => {
            block_on(s3_remote(dir, listen, LinkSpec::new(Duration::from_millis(rtt_ms), mbit * 1_000_000)))
        }
    };
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("rtgt-bench: {e}");
            ExitCode::FAILURE
        }
    }
}

fn block_on<F: std::future::Future<Output = Result<(), String>>>(f: F) -> Result<(), String> {
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().map_err(|e| e.to_string())?;
    runtime.block_on(f)
}

async fn s3_remote(dir: PathBuf, listen: String, link: LinkSpec) -> Result<(), String> {
    std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let root = embedded::open_root(&dir)?;
    root.create_bucket("bench")?;
    let credentials = embedded::Credentials { access_key: "bench".into(), secret_key: "bench-secret-key".into() };
    let local = "127.0.0.1:0".parse().expect("address");
    let server = EmbeddedS3::start_with(root, local, Some(credentials)).await?;
    let listen = listen.parse().map_err(|_| format!("--listen: bad address {listen}"))?;
    let netem = Netem::start_on(listen, server.addr, link).await.map_err(|e| e.to_string())?;
    eprintln!("rtgt-bench: S3 store at {} over {link:?}", netem.url());
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .map_err(|e| format!("SIGTERM handler: {e}"))?;
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    Ok(())
}

async fn s3_network(dir: PathBuf, args: bench::network::NetworkArgs, json: Option<PathBuf>) -> Result<(), String> {
    let results = bench::network::run(&dir, args).await?;
    print!("{}", bench::network::table(&results));
    write_json(json, &results)
}

async fn s3(dir: PathBuf, scale: u64, json: Option<PathBuf>) -> Result<(), String> {
    let results = bench::s3(&dir, scale).await?;
    print!("{}", bench::s3_table(&results));
    write_json(json, &results)
}

fn write_json(path: Option<PathBuf>, results: &impl serde::Serialize) -> Result<(), String> {
    if let Some(path) = path {
        let text = serde_json::to_string_pretty(results).map_err(|e| e.to_string())?;
        std::fs::write(&path, text).map_err(|e| format!("{}: {e}", path.display()))?;
    }
    Ok(())
}
