//! From raw surprise to a score: how unusual the recent surprise is against the
//! series' own history of surprise (a noisy series is always a little surprising,
//! so its raw surprise alone says little). The short-term mean of the raw surprise
//! is compared with the long-run distribution of that mean; the tail probability
//! is put on a log scale (so is the raw surprise's own, less a margin: a lone spike is
//! diluted in a mean), so that 0.5 is one in 10^5 and 1 is one in 10^10.

use std::collections::VecDeque;

use serde::{Deserialize, Serialize};

use super::ScalarConfig;

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Likelihood {
    short: VecDeque<f64>,
    short_sum: f64,
    n: u64,
    mean: f64,
    var: f64,
    /// The same of the raw surprise itself: a one-point spike is diluted in a mean.
    point_mean: f64,
    point_var: f64,
}

impl Likelihood {
    pub fn observe(&mut self, raw: f64, c: &ScalarConfig) -> f64 {
        self.short.push_back(raw);
        self.short_sum += raw;
        if self.short.len() > c.short_window {
            self.short_sum -= self.short.pop_front().expect("non-empty");
        }
        let m = self.short_sum / self.short.len() as f64;
        self.n += 1;
        let std = self.var.sqrt().max(c.min_spread);
        let z = (m - self.mean) / std;
        let point_std = self.point_var.sqrt().max(c.min_spread);
        let point_z = (raw - self.point_mean) / point_std;
        let tail = normal_tail(z).min(normal_tail(point_z - c.point_margin));
        let alpha = if self.n <= c.learn_points as u64 {
            1.0 / self.n as f64
        } else {
            (2f64.ln() / c.surprise_half_life).min(1.0)
        };
        let d = m - self.mean;
        self.mean += alpha * d;
        self.var = (1.0 - alpha) * (self.var + alpha * d * d);
        let d = raw - self.point_mean;
        self.point_mean += alpha * d;
        self.point_var = (1.0 - alpha) * (self.point_var + alpha * d * d);
        (-(tail + 1e-10).log10() / 10.0).clamp(0.0, 1.0)
    }
}

/// P(Z > z) for a standard normal (Abramowitz–Stegun 7.1.26 via erfc; 1e-7 accurate).
pub fn normal_tail(z: f64) -> f64 {
    0.5 * erfc(z / std::f64::consts::SQRT_2)
}

fn erfc(x: f64) -> f64 {
    let t = 1.0 / (1.0 + 0.5 * x.abs());
    let y = t
        * (-x * x - 1.265_512_23
            + t * (1.000_023_68
                + t * (0.374_091_96
                    + t * (0.096_784_18
                        + t * (-0.186_288_06
                            + t * (0.278_868_07
                                + t * (-1.135_203_98
                                    + t * (1.488_515_87
                                        + t * (-0.822_152_23 + t * 0.170_872_77)))))))))
            .exp();
    if x >= 0.0 { y } else { 2.0 - y }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normal_tail_matches_known_values() {
        for (z, p) in [
            (0.0, 0.5),
            (1.0, 0.158_655_25),
            (3.0, 0.001_349_898),
            (-2.0, 0.977_249_87),
        ] {
            assert!((normal_tail(z) - p).abs() < 1e-6, "{z}: {}", normal_tail(z));
        }
    }
}
