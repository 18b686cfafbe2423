//! The Numenta Anomaly Benchmark's scoring, written from its documentation and paper
//! (Lavin & Ahmad 2015, "Evaluating Real-time Anomaly Detection Algorithms"): each
//! labelled anomaly window rewards its earliest detection by a scaled sigmoid of the
//! position in the window (1 at the left edge, 0 at the right), misses it costs
//! `fn` once, every detection outside windows costs `fp` weighted by a sigmoid of
//! its distance past the preceding window; the first 15 % of each file (at most
//! 750 rows) is not scored. One threshold for the whole corpus, the one with the
//! highest total; totals normalised so that a detector that never detects scores 0
//! and a perfect one 100.

use std::{collections::BTreeMap, fs, path::Path};

use anyhow::{Context as _, Result, bail};

use super::clock::parse_time;

/// Cost matrix of one application profile (NAB's config/profiles.json).
#[derive(Clone, Copy, Debug)]
pub struct Profile {
    pub name: &'static str,
    pub tp: f64,
    pub fp: f64,
    pub fn_: f64,
}

pub const PROFILES: [Profile; 3] = [
    Profile {
        name: "standard",
        tp: 1.0,
        fp: 0.11,
        fn_: 1.0,
    },
    Profile {
        name: "reward_low_FP_rate",
        tp: 1.0,
        fp: 0.22,
        fn_: 1.0,
    },
    Profile {
        name: "reward_low_FN_rate",
        tp: 1.0,
        fp: 0.11,
        fn_: 2.0,
    },
];

/// One data file with its labelled windows.
pub struct NabFile {
    /// Relative to data/, e.g. `realKnownCause/nyc_taxi.csv`.
    pub name: String,
    /// Unix seconds.
    pub times: Vec<f64>,
    pub values: Vec<f64>,
    /// Row indices, both ends included.
    pub windows: Vec<(usize, usize)>,
}

/// Reads `dir/data/*/*.csv` and `dir/labels/combined_windows.json`.
pub fn load(dir: &Path) -> Result<Vec<NabFile>> {
    let labels_path = dir.join("labels/combined_windows.json");
    let labels: BTreeMap<String, Vec<(String, String)>> = serde_json::from_str(
        &fs::read_to_string(&labels_path)
            .with_context(|| format!("cannot read {}", labels_path.display()))?,
    )
    .with_context(|| format!("{}: not NAB's windows file", labels_path.display()))?;
    let mut files = Vec::new();
    for (name, windows) in labels {
        let path = dir.join("data").join(&name);
        let text =
            fs::read_to_string(&path).with_context(|| format!("cannot read {}", path.display()))?;
        let mut times = Vec::new();
        let mut values = Vec::new();
        for (i, line) in text.lines().enumerate().skip(1) {
            let bad = || {
                format!(
                    "{} line {}: expected `timestamp,value`",
                    path.display(),
                    i + 1
                )
            };
            let (t, v) = line.split_once(',').with_context(bad)?;
            times.push(parse_time(t).with_context(bad)?);
            values.push(v.trim().parse::<f64>().ok().with_context(bad)?);
        }
        let mut rows = Vec::new();
        for (start, end) in windows {
            let (s, e) = (parse_time(&start), parse_time(&end));
            let (Some(s), Some(e)) = (s, e) else {
                bail!("{name}: window {start} – {end} has a time that is not one");
            };
            let first = times.iter().position(|&t| t >= s);
            let last = times.iter().rposition(|&t| t <= e);
            match (first, last) {
                (Some(a), Some(b)) if a <= b => rows.push((a, b)),
                _ => bail!("{name}: window {start} – {end} holds no row"),
            }
        }
        files.push(NabFile {
            name,
            times,
            values,
            windows: rows,
        });
    }
    if files.is_empty() {
        bail!("{}: no labelled files", labels_path.display());
    }
    Ok(files)
}

/// NAB's scaled sigmoid of the relative position in (or past) a window.
fn scaled_sigmoid(position: f64) -> f64 {
    if position > 3.0 {
        -1.0
    } else {
        2.0 / (1.0 + (5.0 * position).exp()) - 1.0
    }
}

/// One scorable row: its anomaly score, what detecting it is worth, and its window
/// (numbered across the corpus).
#[derive(Clone, Copy, Debug)]
pub struct Row {
    pub score: f64,
    pub worth: f64,
    pub window: Option<u32>,
}

/// Rows of the probationary period are not scored.
pub fn probation(rows: usize) -> usize {
    ((0.15 * rows as f64).floor()).min(750.0) as usize
}

/// The scorable rows of one file; `first_window` numbers its windows.
pub fn sweep(file: &NabFile, scores: &[f64], p: &Profile, first_window: u32) -> Vec<Row> {
    let max_tp = scaled_sigmoid(-1.0);
    let skip = probation(file.times.len());
    let mut out = Vec::with_capacity(scores.len());
    let mut windows = file.windows.iter().enumerate().peekable();
    let mut current: Option<(u32, usize, f64)> = None; // id, right edge, width
    let mut previous: Option<(usize, f64)> = None; // right edge, width
    for (i, &score) in scores.iter().enumerate() {
        if let Some(&(k, &(left, right))) = windows.peek()
            && left == i
        {
            windows.next();
            current = Some((first_window + k as u32, right, (right - left + 1) as f64));
        }
        let (worth, window) = match current {
            Some((id, right, width)) => {
                let position = -((right - i + 1) as f64) / width;
                (scaled_sigmoid(position) * p.tp / max_tp, Some(id))
            }
            None => {
                let unweighted = match previous {
                    None => -1.0,
                    Some((right, width)) => {
                        scaled_sigmoid((i - right) as f64 / (width - 1.0).max(1.0))
                    }
                };
                (unweighted * p.fp, None)
            }
        };
        if i >= skip {
            out.push(Row {
                score,
                worth,
                window,
            });
        }
        if let Some((_, right, width)) = current
            && right == i
        {
            previous = Some((i, width));
            current = None;
        }
    }
    out
}

/// Every distinct threshold, highest first, with the total when rows scoring at
/// least it are detections (only a window's best detection counts).
pub fn curve(rows: &[Row], p: &Profile) -> Vec<(f64, f64)> {
    let mut sorted: Vec<&Row> = rows.iter().collect();
    sorted.sort_by(|a, b| b.score.total_cmp(&a.score));
    let mut best: BTreeMap<u32, f64> = BTreeMap::new();
    for r in rows {
        if let Some(w) = r.window {
            best.insert(w, -p.fn_);
        }
    }
    let mut total: f64 = best.values().sum();
    let mut out = Vec::new();
    let mut threshold = 1.1;
    for r in sorted {
        if r.score != threshold {
            out.push((threshold, total));
            threshold = r.score;
        }
        match r.window {
            None => total += r.worth,
            Some(w) => {
                let b = best.get_mut(&w).expect("window listed");
                if r.worth > *b {
                    total += r.worth - *b;
                    *b = r.worth;
                }
            }
        }
    }
    out.push((threshold, total));
    out
}

/// The threshold with the highest total (the highest such threshold on a tie), and
/// the total.
pub fn optimise(rows: &[Row], p: &Profile) -> (f64, f64) {
    curve(rows, p)
        .into_iter()
        .fold((1.1, f64::NEG_INFINITY), |best, (t, s)| {
            if s > best.1 { (t, s) } else { best }
        })
}

/// The total at `threshold` (rows scoring at least it are detections).
pub fn total_at(rows: &[Row], p: &Profile, threshold: f64) -> f64 {
    let mut best: BTreeMap<u32, f64> = BTreeMap::new();
    let mut fp = 0.0;
    for r in rows {
        match r.window {
            Some(w) => {
                let b = best.entry(w).or_insert(-p.fn_);
                if r.score >= threshold {
                    *b = b.max(r.worth);
                }
            }
            None if r.score >= threshold => fp += r.worth,
            None => {}
        }
    }
    fp + best.values().sum::<f64>()
}

/// 100 × (total − null) / (perfect − null): the null detector scores 0, a perfect one 100.
pub fn normalise(total: f64, windows: usize, p: &Profile) -> f64 {
    let null = -p.fn_ * windows as f64;
    let perfect = p.tp * windows as f64;
    100.0 * (total - null) / (perfect - null)
}

/// The scores one detector wrote for one file (NAB's results/<detector>/ CSVs: the
/// third column is the anomaly score).
pub fn published_scores(results: &Path, file: &NabFile) -> Result<Vec<f64>> {
    let detector = results
        .file_name()
        .and_then(|n| n.to_str())
        .context("results directory has no name")?;
    let (category, base) = file
        .name
        .split_once('/')
        .context("file name without category")?;
    let path = results.join(category).join(format!("{detector}_{base}"));
    let text =
        fs::read_to_string(&path).with_context(|| format!("cannot read {}", path.display()))?;
    let mut scores = Vec::new();
    for (i, line) in text.lines().enumerate().skip(1) {
        let s = line
            .split(',')
            .nth(2)
            .and_then(|s| s.trim().parse::<f64>().ok())
            .with_context(|| format!("{} line {}: no anomaly score", path.display(), i + 1))?;
        scores.push(s);
    }
    if scores.len() != file.values.len() {
        bail!(
            "{}: {} rows, the data has {}",
            path.display(),
            scores.len(),
            file.values.len()
        );
    }
    Ok(scores)
}

/// Scores of several files under one profile: the optimised threshold and the
/// normalised score, and the normalised score at a given threshold.
pub struct Scored {
    pub threshold: f64,
    pub score: f64,
}

pub fn score_files(
    files: &[&NabFile],
    scores: &[Vec<f64>],
    p: &Profile,
    at: Option<f64>,
) -> Scored {
    let mut rows = Vec::new();
    let mut windows = 0u32;
    for (f, s) in files.iter().zip(scores) {
        rows.extend(sweep(f, s, p, windows));
        windows += f.windows.len() as u32;
    }
    let (threshold, total) = match at {
        Some(t) => (t, total_at(&rows, p, t)),
        None => optimise(&rows, p),
    };
    Scored {
        threshold,
        score: normalise(total, windows as usize, p),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(rows: usize, windows: Vec<(usize, usize)>) -> NabFile {
        NabFile {
            name: "x/y.csv".into(),
            times: (0..rows).map(|i| i as f64).collect(),
            values: vec![0.0; rows],
            windows,
        }
    }

    #[test]
    fn null_scores_zero_and_an_early_detection_almost_100() {
        let f = file(1000, vec![(400, 499)]);
        let p = &PROFILES[0];
        let null = score_files(&[&f], &[vec![0.0; 1000]], p, None);
        assert_eq!(null.score, 0.0);
        let mut s = vec![0.0; 1000];
        s[400] = 1.0;
        let early = score_files(&[&f], &[s], p, None);
        assert!((early.score - 100.0).abs() < 1e-9, "{}", early.score);
        assert_eq!(early.threshold, 1.0);
    }

    #[test]
    fn late_detections_earn_less_and_false_positives_cost_by_distance() {
        let f = file(1000, vec![(400, 499)]);
        let p = &PROFILES[0];
        let rows = |i: usize| {
            let mut s = vec![0.0; 1000];
            s[i] = 1.0;
            total_at(&sweep(&f, &s, p, 0), p, 0.5)
        };
        // Halfway: 2·sigmoid(2.5) − 1 over 2·sigmoid(5) − 1 (the left edge's).
        let half = (2.0 / (1.0 + (-2.5f64).exp()) - 1.0) / (2.0 / (1.0 + (-5f64).exp()) - 1.0);
        assert!((rows(450) - half).abs() < 0.011, "{} vs {half}", rows(450));
        // Before any window a false positive costs the full fp weight, plus the miss.
        assert!((rows(200) - (-0.11 - 1.0)).abs() < 1e-12);
        // Right after the window it costs almost nothing; far after, the full weight.
        assert!(rows(500) > -1.0 - 0.01 && rows(900) < -1.0 - 0.10);
        // The probationary period (150 rows here) is not scored.
        assert_eq!(rows(100), -1.0);
    }

    #[test]
    fn the_threshold_is_the_best_one() {
        let f = file(1000, vec![(400, 499)]);
        let p = &PROFILES[0];
        let mut s = vec![0.1; 1000];
        s[300] = 0.9; // a false positive above the true one
        s[420] = 0.8;
        let best = score_files(&[&f], &[s], p, None);
        assert_eq!(best.threshold, 0.8);
        assert!(best.score > 80.0 && best.score < 100.0, "{}", best.score);
    }
}
