//! The seeded cluster simulation (src/sim): a few thousand steps per `cargo test`, across seeds,
//! cluster sizes, and with one node whose clock is hours off. `examples/bench_sim` runs 10^6.

use bender::sim::{run, SimConfig};

fn must_hold(seed: u64, nodes: usize, steps: usize, bad_clock: bool) {
    let cfg = SimConfig {
        seed,
        nodes,
        steps,
        bad_clock,
    };
    if let Err(failure) = run(&cfg) {
        panic!("{failure}");
    }
}

#[test]
fn no_invariant_breaks_over_seeded_runs_of_five_nodes() {
    for seed in 0..6 {
        must_hold(seed, 5, 2_000, false);
    }
}

#[test]
fn no_invariant_breaks_with_a_peer_whose_clock_is_hours_off() {
    for seed in 100..104 {
        must_hold(seed, 6, 2_000, true);
    }
}

#[test]
fn no_invariant_breaks_in_a_cluster_of_twenty() {
    must_hold(7, 20, 3_000, true);
}

#[test]
fn a_run_replays_from_its_seed() {
    let cfg = SimConfig {
        seed: 42,
        nodes: 4,
        steps: 1_500,
        bad_clock: false,
    };
    let a = run(&cfg).unwrap();
    let b = run(&cfg).unwrap();
    assert_eq!(
        (a.writes, a.exchanges, a.crashes),
        (b.writes, b.exchanges, b.crashes)
    );
}
