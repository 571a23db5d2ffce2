//! Cumulative histograms of how long renders and validations take: plain numbers kept by the
//! render stage and encoded by the metrics stage, so neither depends on the other.

/// Upper bounds of the buckets, in seconds: a render of 100 servers takes about 0.5 ms, a
/// `haproxy -c` of 10,000 about 0.1–1 s.
const BOUNDS: [f64; 14] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// Every duration observed since start.
#[derive(Debug, Clone, PartialEq)]
pub struct Durations {
    pub sum_seconds: f64,
    pub count: u64,
    /// Observations per bucket (not cumulative), by upper bound in seconds; the last bound is
    /// `f64::INFINITY`.
    pub buckets: Vec<(f64, u64)>,
}

impl Default for Durations {
    fn default() -> Self {
        Durations {
            sum_seconds: 0.0,
            count: 0,
            buckets: BOUNDS
                .iter()
                .copied()
                .chain([f64::INFINITY])
                .map(|b| (b, 0))
                .collect(),
        }
    }
}

impl Durations {
    pub fn observe(&mut self, seconds: f64) {
        let i = self
            .buckets
            .iter()
            .position(|(bound, _)| seconds <= *bound)
            .unwrap_or(self.buckets.len() - 1);
        self.buckets[i].1 += 1;
        self.sum_seconds += seconds;
        self.count += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_observation_lands_in_the_first_bucket_that_holds_it() {
        let mut d = Durations::default();
        d.observe(0.0004);
        d.observe(0.001);
        d.observe(0.03);
        d.observe(60.0);
        assert_eq!(d.count, 4);
        assert!((d.sum_seconds - 60.0314).abs() < 1e-9);
        let counts: Vec<u64> = d.buckets.iter().map(|(_, n)| *n).collect();
        assert_eq!(counts, [1, 1, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 1]);
        assert_eq!(d.buckets.last().unwrap().0, f64::INFINITY);
    }
}
