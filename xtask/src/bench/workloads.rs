//! The benchmark's workloads, backings, file states and options.

use super::*;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(super) enum Backing {
    Memory,
    File,
}

impl Backing {
    pub(super) fn name(self) -> &'static str {
        match self {
            Backing::Memory => "memory",
            Backing::File => "file",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(super) enum Client {
    /// `rtgt-bench load`.
    Own,
    /// libiscsi's iscsi-perf (reads only).
    IscsiPerf,
    /// `libiscsi_load.c`: reads and writes, any number of sessions, through libiscsi.
    Libiscsi,
}

impl Client {
    pub(super) fn name(self) -> &'static str {
        match self {
            Client::Own => "own",
            Client::IscsiPerf => "iscsi-perf",
            Client::Libiscsi => "libiscsi",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Kind {
    Rtgt,
    Tgtd,
}

impl Kind {
    pub(super) fn name(self) -> &'static str {
        match self {
            Kind::Rtgt => "rtgt",
            Kind::Tgtd => "tgtd",
        }
    }
}

pub(super) struct Workload {
    pub(super) name: &'static str,
    /// A `rtgt-bench load --pattern`.
    pub(super) pattern: &'static str,
    pub(super) block_size: u32,
    /// Commands in flight per session.
    pub(super) queue_depth: u32,
    /// Sessions of the own client, each with its own queue (iscsi-perf: one).
    pub(super) sessions: u32,
}

impl Workload {
    pub(super) fn reads(&self) -> bool {
        self.pattern.ends_with("read")
    }
}

pub(super) const fn w(name: &'static str, pattern: &'static str, block_size: u32, queue_depth: u32) -> Workload {
    Workload { name, pattern, block_size, queue_depth, sessions: 1 }
}

pub(super) const fn many(name: &'static str, pattern: &'static str, sessions: u32, queue_depth: u32) -> Workload {
    Workload { name, pattern, block_size: 4096, queue_depth, sessions }
}

pub(super) const WORKLOADS: [Workload; 12] = [
    w("randread 4K QD1", "randread", 4096, 1),
    w("randwrite 4K QD1", "randwrite", 4096, 1),
    w("randread 4K QD32", "randread", 4096, 32),
    w("randwrite 4K QD32", "randwrite", 4096, 32),
    many("randread 4K 8 sessions x QD4", "randread", 8, 4),
    many("randwrite 4K 8 sessions x QD4", "randwrite", 8, 4),
    many("randread 4K 64 sessions x QD1", "randread", 64, 1),
    many("randwrite 4K 64 sessions x QD1", "randwrite", 64, 1),
    w("seqread 128K QD8", "seqread", 128 << 10, 8),
    w("seqwrite 128K QD8", "seqwrite", 128 << 10, 8),
    w("seqread 1M QD8", "seqread", 1 << 20, 8),
    w("seqwrite 1M QD8", "seqwrite", 1 << 20, 8),
];

/// The negotiation limits tgtd is given: rtgt's defaults (config.rs), so that both targets
/// move the same PDUs.
pub(super) const TGTD_PARAMS: [(&str, &str); 6] = [
    ("MaxRecvDataSegmentLength", "262144"),
    ("MaxXmitDataSegmentLength", "262144"),
    ("MaxBurstLength", "1048576"),
    ("FirstBurstLength", "262144"),
    ("InitialR2T", "No"),
    ("ImmediateData", "Yes"),
];

pub(super) struct Options {
    pub(super) seconds: u64,
    pub(super) runs: usize,
    pub(super) threads: usize,
    pub(super) backings: Vec<Backing>,
    pub(super) clients: Vec<Client>,
    pub(super) only: Vec<String>,
    /// rtgt's backend for the file LU: "file" (positioned I/O) or "uring".
    pub(super) rtgt_file_backend: &'static str,
    pub(super) file_state: FileState,
}

/// How the file LUs come to hold data before the runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(super) enum FileState {
    /// Sparse, then filled through each target with 1 MiB writes.
    Target,
    /// Sparse and never filled: every first write allocates blocks, reads return holes.
    Sparse,
    /// Allocated with `fallocate` and never filled: every first write converts an unwritten
    /// extent, reads return zeros without touching the disk.
    Fallocated,
    /// Random data written in 1 MiB pieces by another program (as `dd` does) before the
    /// targets start: in the page cache as large folios.
    Dd,
}

impl FileState {
    pub(super) fn name(self) -> &'static str {
        match self {
            FileState::Target => "written through the target",
            FileState::Sparse => "sparse, never filled",
            FileState::Fallocated => "fallocated, never filled",
            FileState::Dd => "written by dd before the targets started",
        }
    }
}

/// `cargo xtask bench [targets]`: rtgt and tgtd side by side.
#[derive(clap::Parser, Debug)]
#[command(name = "targets", bin_name = "cargo xtask bench targets", disable_version_flag = true)]
pub(super) struct TargetsArgs {
    /// Seconds per run (default 10; 3 with --quick).
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    pub(super) seconds: Option<u64>,
    /// Runs of each workload on each target, alternating (default 3; 1 with --quick).
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    pub(super) runs: Option<u64>,
    /// Threads of the own load generator.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..))]
    pub(super) threads: u64,
    /// Short runs, one each.
    #[arg(long)]
    pub(super) quick: bool,
    /// Only this backing (default: memory and file).
    #[arg(long, value_enum)]
    pub(super) backing: Option<Backing>,
    /// Only this client (default: own, libiscsi and iscsi-perf).
    #[arg(long, value_enum)]
    pub(super) client: Option<Client>,
    /// rtgt's backend for the file LU.
    #[arg(long, value_parser = ["file", "uring"], default_value = "file")]
    pub(super) rtgt_file_backend: String,
    /// How the file LUs come to hold data before the runs.
    #[arg(long, value_enum, default_value = "target")]
    pub(super) file_state: FileState,
    /// Workloads whose name contains it (randread, 4K, QD32...); repeatable.
    #[arg(long)]
    pub(super) only: Vec<String>,
}

pub(super) fn parse(args: &[String]) -> Result<Options, String> {
    let argv = std::iter::once("targets".to_string()).chain(args.iter().cloned());
    let a = match <TargetsArgs as clap::Parser>::try_parse_from(argv) {
        Ok(a) => a,
        Err(e) if e.use_stderr() => return Err(format!("{e}\n{USAGE}")),
        Err(help) => {
            print!("{help}");
            std::process::exit(0);
        }
    };
    Ok(Options {
        seconds: a.seconds.unwrap_or(if a.quick { 3 } else { 10 }),
        runs: a.runs.unwrap_or(if a.quick { 1 } else { 3 }) as usize,
        threads: a.threads as usize,
        backings: a.backing.map_or(vec![Backing::Memory, Backing::File], |b| vec![b]),
        clients: a.client.map_or(vec![Client::Own, Client::Libiscsi, Client::IscsiPerf], |c| vec![c]),
        only: a.only.iter().map(|o| o.to_lowercase()).collect(),
        rtgt_file_backend: if a.rtgt_file_backend == "uring" { "uring" } else { "file" },
        file_state: a.file_state,
    })
}
