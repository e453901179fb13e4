//! Medians, percentiles and a bootstrap confidence interval for paired ratios.

/// The median of `xs` (the mean of the middle two for an even count); NaN when empty.
pub fn median(xs: &[f64]) -> f64 {
    percentile(xs, 50.0)
}

/// The `p`-th percentile (0..=100) by linear interpolation between closest ranks; NaN when empty.
pub fn percentile(xs: &[f64], p: f64) -> f64 {
    if xs.is_empty() {
        return f64::NAN;
    }
    let mut v = xs.to_vec();
    v.sort_by(f64::total_cmp);
    let rank = p / 100.0 * (v.len() - 1) as f64;
    let (lo, hi) = (rank.floor() as usize, rank.ceil() as usize);
    v[lo] + (v[hi] - v[lo]) * (rank - lo as f64)
}

/// A 95 % percentile-bootstrap interval of the median of `xs` (10,000 resamples, fixed seed so
/// a report can be recomputed from its numbers). With fewer than two values it is the value.
pub fn bootstrap_ci95_median(xs: &[f64]) -> (f64, f64) {
    if xs.len() < 2 {
        let m = median(xs);
        return (m, m);
    }
    let mut state: u64 = 0x2545_f491_4f6c_dd1d;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let mut medians = Vec::with_capacity(10_000);
    let mut sample = vec![0.0; xs.len()];
    for _ in 0..10_000 {
        for s in &mut sample {
            *s = xs[(next() % xs.len() as u64) as usize];
        }
        medians.push(median(&sample));
    }
    (percentile(&medians, 2.5), percentile(&medians, 97.5))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn medians_and_percentiles() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), 2.5);
        assert_eq!(percentile(&[1.0, 2.0, 3.0, 4.0, 5.0], 100.0), 5.0);
        assert_eq!(percentile(&[1.0, 2.0, 3.0, 4.0, 5.0], 0.0), 1.0);
        assert!(median(&[]).is_nan());
    }

    #[test]
    fn the_interval_contains_the_median_and_stays_within_the_data() {
        let xs = [0.95, 0.97, 0.96, 0.99, 0.94, 0.98, 0.97, 0.96, 0.95, 0.97];
        let (lo, hi) = bootstrap_ci95_median(&xs);
        let m = median(&xs);
        assert!(lo <= m && m <= hi, "{lo} <= {m} <= {hi}");
        assert!(lo >= 0.94 && hi <= 0.99);
        assert_eq!(bootstrap_ci95_median(&[0.5]), (0.5, 0.5));
    }
}
