//! The Turing Change Point Dataset and its metrics (van den Burg & Williams 2020, "An
//! Evaluation of Change Point Detection Algorithms"), written from the paper: change
//! points are 0-based indices where a new segment starts; the start (0) counts as a
//! change point of every annotator and of the prediction. F1: precision over the
//! union of the annotators' points, recall averaged over annotators, a prediction
//! matching an annotation within `margin` rows (each used once). Cover: how well the
//! predicted segments cover each annotator's (Arbeláez et al. 2011), averaged.

use std::{
    collections::{BTreeMap, BTreeSet},
    fs,
    path::Path,
};

use anyhow::{Context as _, Result, bail};
use serde::Deserialize;

/// The published margin.
pub const MARGIN: usize = 5;

pub struct TcpdSeries {
    pub name: String,
    pub values: Vec<f64>,
    /// Per annotator, the change points.
    pub annotations: Vec<Vec<usize>>,
}

#[derive(Deserialize)]
struct DatasetFile {
    n_obs: usize,
    n_dim: usize,
    series: Vec<SeriesFile>,
}

#[derive(Deserialize)]
struct SeriesFile {
    raw: Vec<Option<f64>>,
}

/// Reads `dir/annotations.json` and every univariate `dir/datasets/NAME/NAME.json`
/// present (some need the dataset's own download script run first; those absent
/// are listed in the return's second part).
pub fn load(dir: &Path) -> Result<(Vec<TcpdSeries>, Vec<String>)> {
    let path = dir.join("annotations.json");
    let annotations: BTreeMap<String, BTreeMap<String, Vec<usize>>> = serde_json::from_str(
        &fs::read_to_string(&path).with_context(|| format!("cannot read {}", path.display()))?,
    )
    .with_context(|| format!("{}: not TCPD's annotations", path.display()))?;
    let mut out = Vec::new();
    let mut missing = Vec::new();
    for (name, by_annotator) in annotations {
        let file = dir
            .join("datasets")
            .join(&name)
            .join(format!("{name}.json"));
        let Ok(text) = fs::read_to_string(&file) else {
            missing.push(name);
            continue;
        };
        let data: DatasetFile = serde_json::from_str(&text)
            .with_context(|| format!("{}: not a TCPD dataset", file.display()))?;
        if data.n_dim != 1 {
            continue;
        }
        let raw = &data.series[0].raw;
        if raw.len() != data.n_obs {
            bail!(
                "{}: {} values, n_obs says {}",
                file.display(),
                raw.len(),
                data.n_obs
            );
        }
        // A missing value repeats the last one (the detector sees no change).
        let mut last = raw.iter().flatten().next().copied().unwrap_or(0.0);
        let values = raw
            .iter()
            .map(|v| {
                last = v.unwrap_or(last);
                last
            })
            .collect();
        out.push(TcpdSeries {
            name,
            values,
            annotations: by_annotator.into_values().collect(),
        });
    }
    if out.is_empty() {
        bail!(
            "{}: no univariate dataset found under datasets/",
            dir.display()
        );
    }
    Ok((out, missing))
}

/// Annotations within `margin` of a prediction, each prediction used at most once
/// (closest first, annotations in increasing order).
fn true_positives(truth: &BTreeSet<usize>, predicted: &BTreeSet<usize>, margin: usize) -> usize {
    let mut left = predicted.clone();
    let mut n = 0;
    for &tau in truth {
        let best = left
            .iter()
            .filter(|&&x| x.abs_diff(tau) <= margin)
            .min_by_key(|&&x| (x.abs_diff(tau), x))
            .copied();
        if let Some(x) = best {
            left.remove(&x);
            n += 1;
        }
    }
    n
}

pub fn f1(annotations: &[Vec<usize>], predicted: &[usize], margin: usize) -> f64 {
    let with_start = |v: &[usize]| -> BTreeSet<usize> { v.iter().copied().chain([0]).collect() };
    let x = with_start(predicted);
    let per: Vec<BTreeSet<usize>> = annotations.iter().map(|a| with_start(a)).collect();
    let union: BTreeSet<usize> = per.iter().flatten().copied().collect();
    let precision = true_positives(&union, &x, margin) as f64 / x.len() as f64;
    let recall = per
        .iter()
        .map(|t| true_positives(t, &x, margin) as f64 / t.len() as f64)
        .sum::<f64>()
        / per.len() as f64;
    if precision + recall == 0.0 {
        0.0
    } else {
        2.0 * precision * recall / (precision + recall)
    }
}

/// Segments (start, end exclusive) of `0..n` cut at `points`.
fn segments(points: &[usize], n: usize) -> Vec<(usize, usize)> {
    let cuts: BTreeSet<usize> = points.iter().copied().filter(|&p| p > 0 && p < n).collect();
    let mut out = Vec::new();
    let mut start = 0;
    for c in cuts {
        out.push((start, c));
        start = c;
    }
    out.push((start, n));
    out
}

fn jaccard(a: (usize, usize), b: (usize, usize)) -> f64 {
    let inter = a.1.min(b.1).saturating_sub(a.0.max(b.0));
    let union = (a.1 - a.0) + (b.1 - b.0) - inter;
    inter as f64 / union as f64
}

pub fn cover(annotations: &[Vec<usize>], predicted: &[usize], n: usize) -> f64 {
    let p = segments(predicted, n);
    annotations
        .iter()
        .map(|a| {
            segments(a, n)
                .into_iter()
                .map(|s| (s.1 - s.0) as f64 * p.iter().map(|&q| jaccard(s, q)).fold(0.0, f64::max))
                .sum::<f64>()
                / n as f64
        })
        .sum::<f64>()
        / annotations.len() as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    // The examples of the paper's reference implementation's documentation.
    #[test]
    fn f1_matches_the_published_examples() {
        let a = [vec![10, 20], vec![11, 20], vec![10], vec![0, 5]];
        assert!((f1(&a, &[10, 20], 5) - 1.0).abs() < 1e-12);
        let b = [vec![], vec![10], vec![50]];
        assert!((f1(&b, &[10], 5) - 0.909_090_909_090_909_1).abs() < 1e-12);
        assert!((f1(&b, &[], 5) - 0.8).abs() < 1e-12);
    }

    #[test]
    fn cover_matches_the_published_examples() {
        let a = [vec![10, 20], vec![10], vec![0, 5]];
        assert!((cover(&a, &[10, 20], 45) - 0.796_296_296_296_296_3).abs() < 1e-12);
        let b = [vec![], vec![10], vec![40]];
        assert!((cover(&b, &[10], 45) - 0.795_414_462_081_128_6).abs() < 1e-12);
        assert!((cover(&b, &[], 45) - 0.818_930_041_152_263_4).abs() < 1e-12);
    }
}
