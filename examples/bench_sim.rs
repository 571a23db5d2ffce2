//! Runs the seeded cluster simulation (src/sim) over many seeds and cluster sizes and prints
//! steps/s and invariant violations (the target: 0 over 10^6 steps, 100 seeds, 5-20 nodes).
//!
//! Run: `cargo run --release --example bench_sim` (defaults: 100 seeds x 10,000 steps, sizes
//! 5 to 20, every fourth seed with a peer whose clock is hours off).
//! Reproduce one seed: `cargo run --release --example bench_sim -- --seed 17 --nodes 9 --steps
//! 10000 [--bad-clock]`; a failure prints its minimised trace.

use std::time::Instant;

use bender::sim::{run, SimConfig};

fn arg(args: &[String], name: &str) -> Option<u64> {
    let i = args.iter().position(|a| a == name)?;
    args.get(i + 1)?.parse().ok()
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let steps = arg(&args, "--steps").unwrap_or(10_000) as usize;
    let runs: Vec<SimConfig> = match arg(&args, "--seed") {
        Some(seed) => vec![SimConfig {
            seed,
            nodes: arg(&args, "--nodes").unwrap_or(5) as usize,
            steps,
            bad_clock: args.iter().any(|a| a == "--bad-clock"),
        }],
        None => (0..arg(&args, "--seeds").unwrap_or(100))
            .map(|seed| SimConfig {
                seed,
                nodes: 5 + (seed as usize % 16),
                steps,
                bad_clock: seed % 4 == 3,
            })
            .collect(),
    };
    let start = Instant::now();
    let (mut total_steps, mut writes, mut exchanges, mut checks, mut crashes, mut refused) =
        (0usize, 0usize, 0usize, 0usize, 0usize, 0u64);
    let mut failures = Vec::new();
    for cfg in &runs {
        match run(cfg) {
            Ok(s) => {
                total_steps += s.steps;
                writes += s.writes;
                exchanges += s.exchanges;
                checks += s.quiescent_checks;
                crashes += s.crashes;
                refused += s.refused;
            }
            Err(f) => {
                total_steps += f.step;
                println!("{f}");
                failures.push(f);
            }
        }
    }
    let secs = start.elapsed().as_secs_f64();
    println!(
        "runs: {}  nodes: 5-20  steps: {total_steps}  in {secs:.1} s  ({:.0} steps/s)",
        runs.len(),
        total_steps as f64 / secs
    );
    println!(
        "writes: {writes}  gossip exchanges: {exchanges}  quiescent checks: {checks}  crashes: {crashes}  records refused (clock off): {refused}"
    );
    println!("invariant violations: {}", failures.len());
    if !failures.is_empty() {
        std::process::exit(1);
    }
}
