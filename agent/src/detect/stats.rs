//! Binomial tail probabilities: how surprising it is that `k` of `n` samples fall above
//! a bucket boundary that the baseline puts a fraction `p` of its mass above. Counting
//! against a bucket boundary makes ties (many samples in one bucket) harmless: a tie
//! is either above the boundary or not.

/// P(K >= k) for K ~ Binomial(n, p), summed exactly (the normal approximation is
/// anti-conservative in the skewed tails that matter here: p near 1 %).
pub fn upper_tail(k: u64, n: u64, p: f64) -> f64 {
    if k == 0 || p >= 1.0 {
        return 1.0;
    }
    if k > n || p <= 0.0 {
        return 0.0;
    }
    if (k as f64) <= n as f64 * p {
        return (1.0 - lower_tail(k - 1, n, p)).clamp(0.0, 1.0);
    }
    sum_pmf(k, n, p, true)
}

/// P(K <= k) for K ~ Binomial(n, p).
pub fn lower_tail(k: u64, n: u64, p: f64) -> f64 {
    if k >= n || p <= 0.0 {
        return 1.0;
    }
    if p >= 1.0 {
        return 0.0;
    }
    if (k as f64) >= n as f64 * p {
        return (1.0 - upper_tail(k + 1, n, p)).clamp(0.0, 1.0);
    }
    sum_pmf(k, n, p, false)
}

/// ln Γ(x) for x >= 1 (Stirling's series after shifting x above 20: error < 1e-12).
fn ln_gamma(mut x: f64) -> f64 {
    let mut shift = 0.0;
    while x < 20.0 {
        shift -= x.ln();
        x += 1.0;
    }
    let x2 = x * x;
    shift + (x - 0.5) * x.ln() - x + 0.5 * std::f64::consts::TAU.ln() + 1.0 / (12.0 * x)
        - 1.0 / (360.0 * x * x2)
        + 1.0 / (1260.0 * x * x2 * x2)
}

/// ln P(K = k), in O(1).
fn ln_pmf(k: u64, n: u64, p: f64) -> f64 {
    let ln_choose =
        ln_gamma(n as f64 + 1.0) - ln_gamma(k as f64 + 1.0) - ln_gamma((n - k) as f64 + 1.0);
    ln_choose + k as f64 * p.ln() + (n - k) as f64 * (1.0 - p).ln()
}

/// Sums the pmf from `k` away from the mean until the terms stop mattering: they fall
/// off faster than geometrically, so this takes a few standard deviations of terms.
fn sum_pmf(k: u64, n: u64, p: f64, up: bool) -> f64 {
    let odds = p / (1.0 - p);
    let mut term = ln_pmf(k, n, p).exp();
    let mut total = term;
    let mut j = k;
    while term > total * 1e-16 && term > 0.0 {
        if up {
            if j == n {
                break;
            }
            term *= (n - j) as f64 / (j + 1) as f64 * odds;
            j += 1;
        } else {
            if j == 0 {
                break;
            }
            term *= j as f64 / (n - j + 1) as f64 / odds;
            j -= 1;
        }
        total += term;
    }
    total.min(1.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exact_tails_match_hand_computed_values() {
        // P(K >= 1 | 10, 0.1) = 1 - 0.9^10
        let expected = 1.0 - 0.9f64.powi(10);
        assert!((upper_tail(1, 10, 0.1) - expected).abs() < 1e-10);
        // P(K <= 0 | 10, 0.1) = 0.9^10
        assert!((lower_tail(0, 10, 0.1) - 0.9f64.powi(10)).abs() < 1e-10);
        // P(K >= 3 | 5, 0.5) = (10 + 5 + 1) / 32
        assert!((upper_tail(3, 5, 0.5) - 0.5).abs() < 1e-10);
        assert_eq!(upper_tail(0, 5, 0.5), 1.0);
        assert_eq!(upper_tail(6, 5, 0.5), 0.0);
    }

    #[test]
    fn large_and_skewed_tails_are_exact() {
        // Poisson limit: P(K >= 45 | 2800, 0.01) ≈ P(Poisson(28) >= 45) ≈ 0.00178.
        let p = upper_tail(45, 2800, 0.01);
        assert!((p - 1.78e-3).abs() < 0.05e-3, "{p:e}");
        // Complements add up around the mean.
        let (n, q) = (1_000_000, 0.01);
        let total = upper_tail(10_050, n, q) + lower_tail(10_049, n, q);
        assert!((total - 1.0).abs() < 1e-9, "{total}");
        // Symmetric case: P(K >= 5050 | 10000, 0.5) equals P(K <= 4950).
        let a = upper_tail(5_050, 10_000, 0.5);
        let b = lower_tail(4_950, 10_000, 0.5);
        assert!((a - b).abs() < 1e-12 && a > 0.1 && a < 0.2, "{a} {b}");
    }

    #[test]
    fn ln_gamma_matches_factorials() {
        assert!((ln_gamma(1.0)).abs() < 1e-10);
        assert!((ln_gamma(6.0) - 120f64.ln()).abs() < 1e-10);
        assert!((ln_gamma(21.0) - 2_432_902_008_176_640_000f64.ln()).abs() < 1e-9);
    }
}
