//! `rtgt-sim`: the deterministic simulation of rtgt (run it through `cargo xtask sim`).

mod clock;
mod clones;
mod disk;
mod failover;
mod mem_s3;
mod model;
mod net;
mod newest_versions;
mod panics;
mod recovery_image;
mod seeds;
mod snapshots;
mod takeover;
mod workload;
mod world;

use std::process::ExitCode;
use std::time::{Duration, Instant};

use rtgt::mutants::Mutant;

/// What a run simulates.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Scenario {
    /// One target, initiators, faults everywhere, crashes and restarts.
    World,
    /// Two targets on one S3 volume and a failover between them.
    Takeover,
    /// A failover pair (active and standby) under a multipath initiator, through crashes,
    /// store cut-offs and partitions.
    Failover,
}

impl Scenario {
    fn name(self) -> &'static str {
        match self {
            Scenario::World => "world",
            Scenario::Takeover => "takeover",
            Scenario::Failover => "failover",
        }
    }

    fn run(self, seed: u64, duration: Duration, mutant: Option<Mutant>, trace: bool, zombies: bool) -> world::Outcome {
        match self {
            Scenario::World => world::run(seed, duration, mutant, trace, zombies),
            Scenario::Takeover => takeover::run(seed, mutant, trace),
            Scenario::Failover => failover::run(seed, mutant, trace),
        }
    }

    /// Where a planted bug shows: a holder that does not fence needs a second holder.
    fn for_mutant(m: Mutant) -> Scenario {
        match m {
            Mutant::HolderDoesNotFence => Scenario::Takeover,
            Mutant::LapsedHolderServes | Mutant::StandbyIgnoresLease => Scenario::Failover,
            _ => Scenario::World,
        }
    }
}

/// How long the runs that hunt a planted bug last, at least: a zero record that races a logged
/// write needs a merge (or UNMAP) of a chunk found zero, a write and a SYNCHRONIZE CACHE of that
/// chunk inside its fetch, and an oracle look before the chunk is merged again; runs of 30 s
/// rarely line that up, runs of 120 s do within the 200 seeds. A merge that does not name its
/// chunk needs its PUT to land late, after a crash, with no log naming the chunk: not in seeds
/// 0..200 of 30 s, at seed 172 of 120 s.
fn hunt_duration(m: Mutant, asked: Duration) -> Duration {
    match m {
        Mutant::ZeroMergeSettlesNewerLogs | Mutant::MergeUnnamed => asked.max(Duration::from_secs(120)),
        _ => asked,
    }
}

/// The deterministic simulation of rtgt (run it through `cargo xtask sim`).
#[derive(clap::Parser)]
#[command(name = "rtgt-sim")]
struct Cli {
    /// One seed.
    #[arg(long, conflicts_with = "seeds")]
    seed: Option<u64>,
    /// Seeds A..B (B excluded); 0..50 by default, or the profile's.
    #[arg(long, value_parser = parse_seeds)]
    seeds: Option<std::ops::Range<u64>>,
    /// Simulated time of each run of the world scenario (like 60s); 30s by default, or the
    /// profile's.
    #[arg(long, value_parser = parse_duration)]
    duration: Option<Duration>,
    /// smoke: seeds 0..50 of 30 s; long: seeds 0..1000 of 120 s.
    #[arg(long)]
    profile: Option<Profile>,
    #[arg(long, value_enum, default_value = "world")]
    scenario: Scenario,
    /// Runs each seed twice, the second time on a fresh thread, and compares the traces.
    #[arg(long)]
    check_determinism: bool,
    /// Prints each run's events.
    #[arg(long)]
    trace: bool,
    /// The remote store's PUTs and DELETEs never land after their sender gave up. By default
    /// some do, up to 20 s late and even after the sender died (zombie requests, world
    /// scenario; README, "Zombie requests").
    #[arg(long)]
    no_zombie_requests: bool,
    /// Plants each bug in turn and checks that the oracles catch it.
    #[arg(long, conflicts_with = "mutant")]
    mutants: bool,
    /// Plants one bug (by name).
    #[arg(long, value_parser = parse_mutant)]
    mutant: Option<Mutant>,
    /// Seeds run at once, each on a thread of its own; one per core by default.
    #[arg(long)]
    jobs: Option<usize>,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum Profile {
    Smoke,
    Long,
}

struct Args {
    scenario: Scenario,
    seeds: std::ops::Range<u64>,
    duration: Duration,
    check_determinism: bool,
    trace: bool,
    zombie_requests: bool,
    mutants: Option<Vec<Mutant>>,
    jobs: usize,
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    let digits = s.trim_end_matches('s');
    digits.parse::<u64>().map(Duration::from_secs).map_err(|_| format!("{s:?} is not a duration like 60s"))
}

fn parse_seeds(s: &str) -> Result<std::ops::Range<u64>, String> {
    let (from, to) = s.split_once("..").ok_or("seeds are A..B")?;
    let number = |n: &str| n.parse::<u64>().map_err(|_| format!("{n:?} is not a seed"));
    Ok(number(from)?..number(to)?)
}

fn parse_mutant(name: &str) -> Result<Mutant, String> {
    let names: Vec<&str> = Mutant::ALL.iter().map(|m| m.name()).collect();
    Mutant::ALL.into_iter().find(|m| m.name() == name).ok_or(format!("no mutant {name} (one of {})", names.join(", ")))
}

impl Cli {
    /// What to run: explicit seeds and duration win over the profile's.
    fn args(self) -> Args {
        let (profile_seeds, profile_duration) = match self.profile {
            Some(Profile::Long) => (0..1000, Duration::from_secs(120)),
            Some(Profile::Smoke) | None => (0..50, Duration::from_secs(30)),
        };
        Args {
            scenario: self.scenario,
            seeds: self.seed.map(|n| n..n + 1).or(self.seeds).unwrap_or(profile_seeds),
            duration: self.duration.unwrap_or(profile_duration),
            check_determinism: self.check_determinism,
            trace: self.trace,
            zombie_requests: !self.no_zombie_requests,
            mutants: match (self.mutants, self.mutant) {
                (true, _) => Some(Mutant::ALL.to_vec()),
                (false, Some(m)) => Some(vec![m]),
                (false, None) => None,
            },
            jobs: self.jobs.unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get())),
        }
    }
}

fn replay_command(scenario: Scenario, seed: u64, duration: Duration, mutant: Option<Mutant>) -> String {
    let m = mutant.map(|m| format!(" --mutant {}", m.name())).unwrap_or_default();
    format!(
        "cargo xtask sim --scenario {} --seed {seed} --duration {}s --trace{m}",
        scenario.name(),
        duration.as_secs()
    )
}

fn main() -> ExitCode {
    let args = <Cli as clap::Parser>::parse().args();
    panics::install();
    if let Ok(filter) = std::env::var("RTGT_SIM_LOG") {
        tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
            .with_writer(std::io::stderr)
            .init();
    }
    // With --trace, one planted bug replays like any seed (the command a catch prints).
    if args.mutants.is_some() && !rtgt::mutants::ENABLED {
        eprintln!("rtgt-sim: --mutants and --mutant need the mutants feature (cargo xtask sim builds it so)");
        return ExitCode::from(2);
    }
    let planted = match &args.mutants {
        Some(m) if args.trace && m.len() == 1 => Some(m[0]),
        Some(mutants) => return mutation_check(mutants, &args),
        None => None,
    };
    #[allow(clippy::disallowed_methods)] // measures the simulator itself, not simulated time
    let started = Instant::now();
    let (mut sim_total, mut failures) = (0.0, 0);
    // A planted bug is switched on and off around each run for the whole process: one at a time.
    let jobs = if planted.is_some() { 1 } else { args.jobs };
    seeds::run(
        args.seeds.clone(),
        jobs,
        |seed| run_seed(&args, seed, planted),
        |report| {
            print!("{}", report.text);
            sim_total += report.sim_seconds;
            failures += report.failed as u64;
        },
    );
    let wall = started.elapsed().as_secs_f64();
    println!(
        "{} seeds ({jobs} at a time), {failures} failed; {sim_total:.0} s simulated in {wall:.1} s: {:.0} simulated seconds per wall second",
        args.seeds.end - args.seeds.start,
        sim_total / wall.max(1e-9)
    );
    if failures == 0 { ExitCode::SUCCESS } else { ExitCode::FAILURE }
}

/// One seed's run (twice with --check-determinism), and what it prints.
fn run_seed(args: &Args, seed: u64, planted: Option<Mutant>) -> seeds::Report {
    use std::fmt::Write;
    let out = args.scenario.run(seed, args.duration, planted, args.trace, args.zombie_requests);
    let mut sim_seconds = out.sim_seconds;
    let mut failed = out.failure.is_some();
    let mut text = format!(
        "seed {seed:>5}: {} {:>6.1} s simulated in {:>5.2} s ({:>4.0}x), {} commands, {}, {} S3 requests, {} crashes, trace {:016x}",
        if out.failure.is_none() { "ok  " } else { "FAIL" },
        out.sim_seconds,
        out.wall_seconds,
        out.sim_seconds / out.wall_seconds.max(1e-9),
        out.commands,
        out.store,
        out.s3_requests,
        out.crashes,
        out.trace_hash
    );
    if args.check_determinism {
        // The repeat runs on a fresh thread: state a run left behind in its thread (whatever
        // escaped the world) would show as a different trace.
        let again = std::thread::scope(|scope| {
            scope
                .spawn(|| args.scenario.run(seed, args.duration, planted, false, args.zombie_requests))
                .join()
                .expect("the repeat run")
        });
        sim_seconds += again.sim_seconds;
        let same = again.trace_hash == out.trace_hash && again.failure == out.failure;
        text.push_str(if same { ", deterministic" } else { ", NOT DETERMINISTIC" });
        failed |= !same;
    }
    text.push('\n');
    if args.trace {
        for e in &out.trace {
            writeln!(text, "    {e}").expect("writing to a String");
        }
    }
    if let Some(f) = &out.failure {
        writeln!(text, "  broken invariant: {f}").expect("writing to a String");
        writeln!(text, "  last events:").expect("writing to a String");
        for e in &out.last_events {
            writeln!(text, "    {e}").expect("writing to a String");
        }
        let replay = replay_command(args.scenario, seed, args.duration, planted);
        writeln!(text, "  replay: {replay}").expect("writing to a String");
    }
    seeds::Report { text, sim_seconds, failed }
}

/// Switches each mutant on in turn and runs seeds until the simulation catches it.
fn mutation_check(mutants: &[Mutant], args: &Args) -> ExitCode {
    let limit = args.seeds.end.max(200).min(args.seeds.start + 200);
    let mut all_caught = true;
    println!("| mutant | scenario, run length | caught | at seed | by |");
    println!("|---|---|---|---|---|");
    for &m in mutants {
        let scenario = Scenario::for_mutant(m);
        let duration = hunt_duration(m, args.duration);
        let mut caught = None;
        for seed in args.seeds.start..limit {
            let out = scenario.run(seed, duration, Some(m), false, false);
            if let Some(f) = out.failure {
                caught = Some((seed, f));
                break;
            }
        }
        match caught {
            Some((seed, f)) => {
                let f: String = f.chars().take(100).collect();
                println!("| {} | {}, {}s | yes | {seed} | {f} |", m.name(), scenario.name(), duration.as_secs());
            }
            None => {
                all_caught = false;
                println!(
                    "| {} | {}, {}s | NO (seeds {}..{limit}) | - | - |",
                    m.name(),
                    scenario.name(),
                    duration.as_secs(),
                    args.seeds.start
                );
            }
        }
    }
    if all_caught { ExitCode::SUCCESS } else { ExitCode::FAILURE }
}
