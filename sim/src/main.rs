//! `rtgt-sim`: the deterministic simulation of rtgt (run it through `cargo xtask sim`).

mod disk;
mod failover;
mod mem_s3;
mod model;
mod net;
mod panics;
mod recovery_image;
mod takeover;
mod workload;
mod world;

use std::process::ExitCode;
use std::time::{Duration, Instant};

use rtgt::mutants::Mutant;

const USAGE: &str = "usage: rtgt-sim [--seed N | --seeds A..B] [--duration 60s] [--profile smoke|long]
                [--scenario world|takeover|failover] [--check-determinism] [--trace] [--mutants | --mutant NAME]";

/// What a run simulates.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
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

    fn run(self, seed: u64, duration: Duration, mutant: Option<Mutant>, trace: bool) -> world::Outcome {
        match self {
            Scenario::World => world::run(seed, duration, mutant, trace),
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
/// rarely line that up, runs of 120 s do within the 200 seeds.
fn hunt_duration(m: Mutant, asked: Duration) -> Duration {
    match m {
        Mutant::ZeroMergeSettlesNewerLogs => asked.max(Duration::from_secs(120)),
        _ => asked,
    }
}

struct Args {
    scenario: Scenario,
    seeds: std::ops::Range<u64>,
    duration: Duration,
    check_determinism: bool,
    trace: bool,
    mutants: Option<Vec<Mutant>>,
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    let digits = s.trim_end_matches('s');
    digits.parse::<u64>().map(Duration::from_secs).map_err(|_| format!("{s:?} is not a duration like 60s"))
}

fn parse(args: &[String]) -> Result<Args, String> {
    let mut a = Args {
        scenario: Scenario::World,
        seeds: 0..50,
        duration: Duration::from_secs(30),
        check_determinism: false,
        trace: false,
        mutants: None,
    };
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        let mut value = || it.next().cloned().ok_or_else(|| format!("{arg} needs a value"));
        match arg.as_str() {
            "--seed" => {
                let n: u64 = value()?.parse().map_err(|_| "--seed needs a number")?;
                a.seeds = n..n + 1;
            }
            "--seeds" => {
                let v = value()?;
                let (from, to) = v.split_once("..").ok_or("--seeds takes A..B")?;
                a.seeds = from.parse().map_err(|_| "bad --seeds")?..to.parse().map_err(|_| "bad --seeds")?;
            }
            "--duration" => a.duration = parse_duration(&value()?)?,
            "--profile" => match value()?.as_str() {
                "smoke" => {
                    a.seeds = 0..50;
                    a.duration = Duration::from_secs(30);
                }
                "long" => {
                    a.seeds = 0..1000;
                    a.duration = Duration::from_secs(120);
                }
                other => return Err(format!("unknown profile {other}")),
            },
            "--scenario" => {
                a.scenario = match value()?.as_str() {
                    "world" => Scenario::World,
                    "takeover" => Scenario::Takeover,
                    "failover" => Scenario::Failover,
                    other => return Err(format!("unknown scenario {other} (world, takeover, failover)")),
                }
            }
            "--check-determinism" => a.check_determinism = true,
            "--trace" => a.trace = true,
            "--mutants" => a.mutants = Some(Mutant::ALL.to_vec()),
            "--mutant" => {
                let name = value()?;
                let m = Mutant::ALL.into_iter().find(|m| m.name() == name).ok_or(format!("no mutant {name}"))?;
                a.mutants = Some(vec![m]);
            }
            other => return Err(format!("unknown argument {other}\n{USAGE}")),
        }
    }
    Ok(a)
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
    let args: Vec<String> = std::env::args().skip(1).collect();
    let args = match parse(&args) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("rtgt-sim: {e}");
            return ExitCode::from(2);
        }
    };
    panics::install();
    if let Ok(filter) = std::env::var("RTGT_SIM_LOG") {
        tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
            .with_writer(std::io::stderr)
            .init();
    }
    // With --trace, one planted bug replays like any seed (the command a catch prints).
    let planted = match &args.mutants {
        Some(m) if args.trace && m.len() == 1 => Some(m[0]),
        Some(mutants) => return mutation_check(mutants, &args),
        None => None,
    };
    #[allow(clippy::disallowed_methods)] // measures the simulator itself, not simulated time
    let started = Instant::now();
    let (mut sim_total, mut failures) = (0.0, 0);
    for seed in args.seeds.clone() {
        let out = args.scenario.run(seed, args.duration, planted, args.trace);
        sim_total += out.sim_seconds;
        let mut line = format!(
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
            let again = args.scenario.run(seed, args.duration, planted, false);
            sim_total += again.sim_seconds;
            let same = again.trace_hash == out.trace_hash && again.failure == out.failure;
            line.push_str(if same { ", deterministic" } else { ", NOT DETERMINISTIC" });
            if !same {
                failures += 1;
            }
        }
        println!("{line}");
        if args.trace {
            for e in &out.trace {
                println!("    {e}");
            }
        }
        if let Some(f) = &out.failure {
            failures += 1;
            println!("  broken invariant: {f}");
            println!("  last events:");
            for e in &out.last_events {
                println!("    {e}");
            }
            println!("  replay: {}", replay_command(args.scenario, seed, args.duration, planted));
        }
    }
    let wall = started.elapsed().as_secs_f64();
    println!(
        "{} seeds, {failures} failed; {sim_total:.0} s simulated in {wall:.1} s: {:.0} simulated seconds per wall second",
        args.seeds.end - args.seeds.start,
        sim_total / wall.max(1e-9)
    );
    if failures == 0 { ExitCode::SUCCESS } else { ExitCode::FAILURE }
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
            let out = scenario.run(seed, duration, Some(m), false);
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
