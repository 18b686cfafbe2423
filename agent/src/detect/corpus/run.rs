//! Tuning on one half, scoring the other, the table and the ablation.

use std::{
    fmt::Write as _,
    path::{Path, PathBuf},
    time::Instant,
};

use anyhow::{Result, bail};

use super::{
    nab::{self, NabFile, PROFILES},
    tcpd::{self, TcpdSeries},
};
use crate::detect::scalar::{
    ScalarConfig, ScalarDetector,
    changepoint::{ChangeConfig, ChangePoints},
};

pub struct Options {
    /// Try the candidate settings on the tuning half (else: `base` as given).
    pub tune: bool,
    /// Score the result CSVs of this NAB detector directory instead of running the
    /// detector (to check the scorer against NAB's published scores).
    pub nab_results: Option<PathBuf>,
    /// Also score each part of the detector switched off.
    pub ablation: bool,
    /// Tune with fixed learning periods only (the comparison with shares of a series).
    pub fixed_learning: bool,
    /// NAB: tell the detector each file's minimum and maximum, as NAB tells its
    /// detectors (not possible live; reported as such).
    pub known_range: bool,
}

/// Detector settings, and how long each series learns: `learn_points`, or (offline,
/// where a file's length is known) a share of its length, as NAB's probationary
/// period is (15 % of a file, at most 750 rows), which its scorer does not count.
#[derive(Clone)]
struct Setting {
    c: ScalarConfig,
    learn_share: Option<f64>,
    /// Refractory period as a share of the series' length (NAB's windows are 10 % of
    /// a file shared among its anomalies), instead of `c.refractory`.
    refractory_share: Option<f64>,
    /// The context part is told each file's minimum and maximum in advance, as NAB
    /// tells every detector (`inputMin`, `inputMax`).
    known_range: bool,
}

impl Setting {
    fn given(c: &ScalarConfig) -> Self {
        Self {
            c: c.clone(),
            learn_share: None,
            refractory_share: None,
            known_range: false,
        }
    }

    fn with(&self, c: ScalarConfig) -> Self {
        Self {
            c,
            learn_share: self.learn_share,
            refractory_share: self.refractory_share,
            known_range: self.known_range,
        }
    }

    /// The settings for a series of `len` points.
    fn for_len(&self, len: usize) -> std::borrow::Cow<'_, ScalarConfig> {
        if self.learn_share.is_none() && self.refractory_share.is_none() {
            return std::borrow::Cow::Borrowed(&self.c);
        }
        let mut c = self.c.clone();
        if let Some(share) = self.learn_share {
            c.learn_points = (share * len as f64).min(share * 5000.0).floor().max(1.0) as u32;
        }
        if let Some(share) = self.refractory_share {
            c.refractory = (share * len as f64).floor().max(1.0) as u32;
        }
        std::borrow::Cow::Owned(c)
    }
}

/// Scores of one series, and the nanoseconds the detector spent.
fn run_detector(values: &[f64], times: Option<&[f64]>, s: &Setting) -> (Vec<f64>, u128) {
    let c = &*s.for_len(values.len());
    let started = Instant::now();
    let mut d = if s.known_range {
        let lo = values.iter().copied().fold(f64::INFINITY, f64::min);
        let hi = values.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        ScalarDetector::with_range(lo, hi)
    } else {
        ScalarDetector::default()
    };
    let scores = values
        .iter()
        .enumerate()
        .map(|(i, &v)| d.observe(v, times.map(|t| t[i]), c).score)
        .collect();
    (scores, started.elapsed().as_nanos())
}

/// Runs the evaluation of the corpus at `dir`; returns the report.
pub fn evaluate(
    dir: &Path,
    base: &ScalarConfig,
    options: &Options,
    progress: &mut dyn FnMut(&str),
) -> Result<String> {
    if dir.join("labels/combined_windows.json").is_file() && dir.join("data").is_dir() {
        let files = nab::load(dir)?;
        match &options.nab_results {
            Some(results) => check_nab_scorer(&files, results),
            None => evaluate_nab(dir, &files, base, options, progress),
        }
    } else if dir.join("annotations.json").is_file() && dir.join("datasets").is_dir() {
        let (series, missing) = tcpd::load(dir)?;
        evaluate_tcpd(&series, &missing, base, options, progress)
    } else {
        bail!(
            "{}: neither a NAB checkout (data/ and labels/combined_windows.json) nor a TCPD \
             one (datasets/ and annotations.json); see README \"Anomalies in scalar series\" \
             for where to get them",
            dir.display()
        )
    }
}

fn halves<T>(items: &[T]) -> (Vec<&T>, Vec<&T>) {
    let tune = items.iter().step_by(2).collect();
    let held = items.iter().skip(1).step_by(2).collect();
    (tune, held)
}

/// The settings tried on NAB's tuning half (`fixed_only`: without learning for the
/// probationary period).
fn nab_candidates(base: &ScalarConfig, fixed_only: bool) -> Vec<(String, Setting)> {
    let mut out = vec![("given".to_owned(), Setting::given(base))];
    let shares: &[Option<f64>] = if fixed_only {
        &[None]
    } else {
        &[None, Some(0.15)]
    };
    // Refractory periods fixed or as shares of the file (NAB's windows are 10 % of it
    // shared among its anomalies); damped (0.3) or silenced (0) within them.
    let refractories: [(u32, Option<f64>); 5] = [
        (100, None),
        (150, None),
        (0, Some(0.03)),
        (0, Some(0.06)),
        (0, Some(0.1)),
    ];
    for &learn_share in shares {
        for (refractory, refractory_share) in refractories {
            for damping in [0.3, 0.0] {
                for fire in [0.3, 0.35, 0.45] {
                    for context_weight in [0.0, 0.1, 0.3] {
                        let learn = match learn_share {
                            None => format!("learn {}", base.learn_points),
                            Some(s) => {
                                format!("learn {:.0} % (the probationary period)", s * 100.0)
                            }
                        };
                        let refr = match refractory_share {
                            None => format!("refractory {refractory}"),
                            Some(s) => format!("refractory {:.0} % of the file", s * 100.0),
                        };
                        out.push((
                            format!(
                                "{learn}, {refr}, damping {damping}, fire {fire}, context \
                                 {context_weight}"
                            ),
                            Setting {
                                c: ScalarConfig {
                                    refractory: refractory.max(1),
                                    damping,
                                    fire,
                                    context_weight,
                                    ..base.clone()
                                },
                                learn_share,
                                refractory_share,
                                known_range: false,
                            },
                        ));
                    }
                }
            }
        }
    }
    out
}

/// The parts switched off, one at a time.
fn ablations(s: &Setting) -> Vec<(&'static str, Setting)> {
    let c = &s.c;
    let parts = vec![
        ("all parts", c.clone()),
        (
            "without level (deviation)",
            ScalarConfig {
                use_level: false,
                ..c.clone()
            },
        ),
        (
            "without context (novelty)",
            ScalarConfig {
                use_context: false,
                ..c.clone()
            },
        ),
        (
            "without likelihood",
            ScalarConfig {
                use_likelihood: false,
                ..c.clone()
            },
        ),
        (
            "without time-of-day profile",
            ScalarConfig {
                season_bins: 0,
                ..c.clone()
            },
        ),
        (
            "without shift adoption",
            ScalarConfig {
                shift_after: 0,
                ..c.clone()
            },
        ),
        (
            "without refractory damping",
            ScalarConfig {
                refractory: 0,
                ..c.clone()
            },
        ),
    ];
    let mut out: Vec<(&'static str, Setting)> =
        parts.into_iter().map(|(l, c)| (l, s.with(c))).collect();
    // The refractory period may come from the series' length: off means off.
    if let Some((_, silent)) = out.iter_mut().find(|(l, _)| l.contains("refractory")) {
        silent.refractory_share = None;
    }
    out
}

fn nab_scores(files: &[&NabFile], c: &Setting) -> (Vec<Vec<f64>>, u128, usize) {
    let mut ns = 0;
    let mut points = 0;
    let scores = files
        .iter()
        .map(|f| {
            let (s, t) = run_detector(&f.values, Some(&f.times), c);
            ns += t;
            points += s.len();
            s
        })
        .collect();
    (scores, ns, points)
}

/// NAB's published detectors, where the checkout has results/final_results.json:
/// the best per profile.
fn nab_published(dir: &Path) -> Vec<(String, f64, String)> {
    let path = dir.join("results/final_results.json");
    let parsed: Option<
        std::collections::BTreeMap<String, std::collections::BTreeMap<String, f64>>,
    > = std::fs::read_to_string(&path)
        .ok()
        .and_then(|t| serde_json::from_str(&t).ok());
    let Some(table) = parsed else {
        // NAB's README scoreboard (v1.1), when the checkout has no results/.
        return vec![
            (
                "standard".into(),
                74.85,
                "ARTime (NAB README scoreboard)".into(),
            ),
            (
                "reward_low_FP_rate".into(),
                66.98,
                "contextOSE (NAB README scoreboard)".into(),
            ),
            (
                "reward_low_FN_rate".into(),
                80.36,
                "ARTime (NAB README scoreboard)".into(),
            ),
        ];
    };
    PROFILES
        .iter()
        .map(|p| {
            let best = table
                .iter()
                .filter_map(|(d, s)| Some((d, *s.get(p.name)?)))
                .fold(("-".to_owned(), f64::NEG_INFINITY), |b, (d, s)| {
                    if s > b.1 { (d.clone(), s) } else { b }
                });
            (
                p.name.to_owned(),
                best.1,
                format!("{} (NAB results/final_results.json)", best.0),
            )
        })
        .collect()
}

fn evaluate_nab(
    dir: &Path,
    files: &[NabFile],
    base: &ScalarConfig,
    options: &Options,
    progress: &mut dyn FnMut(&str),
) -> Result<String> {
    let all: Vec<&NabFile> = files.iter().collect();
    let (tune, held) = halves(files);
    let standard = &PROFILES[0];
    let mut chosen = ("given".to_owned(), Setting::given(base));
    chosen.1.known_range = options.known_range;
    let mut out = String::new();
    if options.tune {
        let mut best = f64::NEG_INFINITY;
        for (label, mut c) in nab_candidates(base, options.fixed_learning) {
            c.known_range = options.known_range;
            let (scores, _, _) = nab_scores(&tune, &c);
            let s = nab::score_files(&tune, &scores, standard, None).score;
            progress(&format!("tuning half, standard {s:6.2}: {label}"));
            if s > best {
                best = s;
                chosen = (label, c);
            }
        }
    }
    let (scores, ns, points) = nab_scores(&all, &chosen.1);
    let tune_scores: Vec<Vec<f64>> = scores.iter().step_by(2).cloned().collect();
    let held_scores: Vec<Vec<f64>> = scores.iter().skip(1).step_by(2).cloned().collect();
    let windows: usize = files.iter().map(|f| f.windows.len()).sum();
    writeln!(
        out,
        "Numenta Anomaly Benchmark: {} files, {} rows, {windows} windows; tuned on {} files \
         (settings: {}), held out {}",
        files.len(),
        points,
        tune.len(),
        chosen.0,
        held.len()
    )?;
    writeln!(
        out,
        "{:<20} {:>12} {:>14} {:>14} {:>10}   best published (whole corpus, its source)",
        "profile", "tuning half", "held-out half", "whole corpus", "threshold"
    )?;
    let published = nab_published(dir);
    for (p, (_, best, source)) in PROFILES.iter().zip(&published) {
        let tuned = nab::score_files(&tune, &tune_scores, p, None);
        let h = nab::score_files(&held, &held_scores, p, Some(tuned.threshold)).score;
        let whole = nab::score_files(&all, &scores, p, None);
        writeln!(
            out,
            "{:<20} {:>12.2} {:>14.2} {:>14.2} {:>10.4}   {best:.2} {source}",
            p.name, tuned.score, h, whole.score, whole.threshold
        )?;
    }
    // The leaders' own result files, where present, scored on the same halves.
    let results = dir.join("results");
    if results.is_dir() {
        writeln!(
            out,
            "published detectors on the same halves (their results/ CSVs, standard profile):"
        )?;
        let mut names: Vec<String> = std::fs::read_dir(&results)?
            .flatten()
            .filter(|e| e.path().is_dir())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        for name in names {
            let dir = results.join(&name);
            let Ok(theirs) = all
                .iter()
                .map(|f| nab::published_scores(&dir, f))
                .collect::<Result<Vec<_>>>()
            else {
                continue;
            };
            let t_scores: Vec<Vec<f64>> = theirs.iter().step_by(2).cloned().collect();
            let h_scores: Vec<Vec<f64>> = theirs.iter().skip(1).step_by(2).cloned().collect();
            let t = nab::score_files(&tune, &t_scores, standard, None).threshold;
            let h = nab::score_files(&held, &h_scores, standard, Some(t)).score;
            let whole = nab::score_files(&all, &theirs, standard, None).score;
            writeln!(out, "  {name:<20} held-out {h:6.2}  whole {whole:6.2}")?;
        }
    }
    writeln!(
        out,
        "cost: {:.2} µs per point ({} points in {:.2} s, one core)",
        ns as f64 / 1e3 / points as f64,
        points,
        ns as f64 / 1e9
    )?;
    if options.ablation {
        writeln!(out, "ablation (standard profile):")?;
        for (label, c) in ablations(&chosen.1) {
            let (scores, _, _) = nab_scores(&all, &c);
            let t_scores: Vec<Vec<f64>> = scores.iter().step_by(2).cloned().collect();
            let h_scores: Vec<Vec<f64>> = scores.iter().skip(1).step_by(2).cloned().collect();
            let t = nab::score_files(&tune, &t_scores, standard, None).threshold;
            let h = nab::score_files(&held, &h_scores, standard, Some(t)).score;
            let whole = nab::score_files(&all, &scores, standard, None).score;
            progress(&format!("ablation {label}: {whole:.2}"));
            writeln!(out, "  {label:<30} held-out {h:6.2}  whole {whole:6.2}")?;
        }
    }
    Ok(out)
}

/// NAB's scorer on a published detector's result CSVs: the totals must equal NAB's.
fn check_nab_scorer(files: &[NabFile], results: &Path) -> Result<String> {
    let all: Vec<&NabFile> = files.iter().collect();
    let scores = all
        .iter()
        .map(|f| nab::published_scores(results, f))
        .collect::<Result<Vec<_>>>()?;
    let mut out = String::new();
    writeln!(out, "{} scored by this scorer:", results.display())?;
    for p in &PROFILES {
        let s = nab::score_files(&all, &scores, p, None);
        writeln!(
            out,
            "  {:<20} {:10.6}  threshold {:.10}",
            p.name, s.score, s.threshold
        )?;
    }
    Ok(out)
}

/// Change points of one series: where the score rises to `threshold`.
fn change_points(scores: &[f64], threshold: f64) -> Vec<usize> {
    (0..scores.len())
        .filter(|&i| scores[i] >= threshold && (i == 0 || scores[i - 1] < threshold))
        .collect()
}

const TCPD_THRESHOLDS: [f64; 12] = [
    0.05, 0.1, 0.15, 0.2, 0.25, 0.3, 0.35, 0.4, 0.5, 0.6, 0.7, 0.8,
];

/// TCPD's series are short (15 to ~800 points): a fixed learning period either
/// leaves a short series' early changes unseen or learns a long one from too little,
/// so shares of each series' length are tried beside fixed periods (`fixed_only`:
/// the fixed ones alone, as before shares were tried).
fn tcpd_candidates(base: &ScalarConfig, fixed_only: bool) -> Vec<(String, Setting)> {
    let mut out = vec![("given".to_owned(), Setting::given(base))];
    let mut learns: Vec<(u32, Option<f64>)> = vec![(5, None), (10, None), (20, None)];
    if !fixed_only {
        learns.extend([0.03, 0.05, 0.1, 0.15].map(|s| (0, Some(s))));
    }
    for (learn_points, learn_share) in learns {
        for level_half_life in [10.0, 30.0, 100.0] {
            for shift_after in [3, 6] {
                for refractory in [5, 15] {
                    let learn = match learn_share {
                        None => format!("learn {learn_points}"),
                        Some(s) => format!("learn {:.0} % of the series", s * 100.0),
                    };
                    out.push((
                        format!(
                            "{learn}, level half-life {level_half_life}, shift after \
                             {shift_after}, refractory {refractory}"
                        ),
                        Setting {
                            c: ScalarConfig {
                                learn_points: learn_points.max(1),
                                level_half_life,
                                shift_after,
                                refractory,
                                surprise_half_life: 100.0,
                                season_bins: 0,
                                ..base.clone()
                            },
                            learn_share,
                            refractory_share: None,
                            known_range: false,
                        },
                    ));
                }
            }
        }
    }
    out
}

/// Mean F1 and cover of `series` at `threshold`.
fn tcpd_score(series: &[&TcpdSeries], scores: &[Vec<f64>], threshold: f64) -> (f64, f64) {
    let mut f = 0.0;
    let mut c = 0.0;
    for (s, sc) in series.iter().zip(scores) {
        let cps = change_points(sc, threshold);
        f += tcpd::f1(&s.annotations, &cps, tcpd::MARGIN);
        c += tcpd::cover(&s.annotations, &cps, s.values.len());
    }
    (f / series.len() as f64, c / series.len() as f64)
}

fn tcpd_scores(series: &[&TcpdSeries], c: &Setting) -> (Vec<Vec<f64>>, u128, usize) {
    let mut ns = 0;
    let mut points = 0;
    let scores = series
        .iter()
        .map(|s| {
            let (sc, t) = run_detector(&s.values, None, c);
            ns += t;
            points += sc.len();
            sc
        })
        .collect();
    (scores, ns, points)
}

fn evaluate_tcpd(
    series: &[TcpdSeries],
    missing: &[String],
    base: &ScalarConfig,
    options: &Options,
    progress: &mut dyn FnMut(&str),
) -> Result<String> {
    let all: Vec<&TcpdSeries> = series.iter().collect();
    let (tune, held) = halves(series);
    // Settings and threshold chosen by F1 on the tuning half.
    let pick = |c: &Setting| {
        let (scores, _, _) = tcpd_scores(&tune, c);
        TCPD_THRESHOLDS
            .iter()
            .map(|&t| (t, tcpd_score(&tune, &scores, t)))
            .fold((0.5, (f64::NEG_INFINITY, 0.0)), |b, x| {
                if x.1.0 > b.1.0 { x } else { b }
            })
    };
    let mut chosen = ("given".to_owned(), Setting::given(base));
    let (mut threshold, mut best) = pick(&chosen.1);
    if options.tune {
        for (label, c) in tcpd_candidates(base, options.fixed_learning) {
            let (t, s) = pick(&c);
            progress(&format!(
                "tuning half, F1 {:.3} cover {:.3} at {t}: {label}",
                s.0, s.1
            ));
            if s.0 > best.0 {
                (threshold, best) = (t, s);
                chosen = (label, c);
            }
        }
    }
    let (held_scores, _, _) = tcpd_scores(&held, &chosen.1);
    let (all_scores, ns, points) = tcpd_scores(&all, &chosen.1);
    let h = tcpd_score(&held, &held_scores, threshold);
    let w = tcpd_score(&all, &all_scores, threshold);
    let mut out = String::new();
    writeln!(
        out,
        "Turing Change Point Dataset: {} univariate series ({} rows); tuned on {} (settings: \
         {}, threshold {threshold}), held out {}{}",
        series.len(),
        points,
        tune.len(),
        chosen.0,
        held.len(),
        if missing.is_empty() {
            String::new()
        } else {
            format!(
                "; absent (run their get_*.py first): {}",
                missing.join(", ")
            )
        }
    )?;
    writeln!(
        out,
        "{:<8} {:>14} {:>12}   best published, all univariate series (van den Burg & \
         Williams 2020, TCPDBench analysis/output/tables/aggregate_table_wide.tex)",
        "metric", "held-out half", "all series"
    )?;
    writeln!(
        out,
        "{:<8} {:>14.3} {:>12.3}   default: 0.744 (binseg); oracle-tuned per series: 0.880 (bocpd)",
        "F1", h.0, w.0
    )?;
    writeln!(
        out,
        "{:<8} {:>14.3} {:>12.3}   default: 0.706 (binseg); oracle-tuned per series: 0.789 (bocpd)",
        "cover", h.1, w.1
    )?;
    let zero_f: f64 = all
        .iter()
        .map(|s| tcpd::f1(&s.annotations, &[], tcpd::MARGIN))
        .sum::<f64>()
        / all.len() as f64;
    let zero_c: f64 = all
        .iter()
        .map(|s| tcpd::cover(&s.annotations, &[], s.values.len()))
        .sum::<f64>()
        / all.len() as f64;
    writeln!(
        out,
        "no change points at all (the paper's `zero`), all series: F1 {zero_f:.3}, cover {zero_c:.3}"
    )?;
    writeln!(
        out,
        "cost: {:.2} µs per point ({points} points)",
        ns as f64 / 1e3 / points as f64
    )?;
    tcpd_change_mode(&all, &tune, &held, &mut out, progress)?;
    if options.ablation {
        writeln!(out, "ablation (threshold re-chosen on the tuning half):")?;
        for (label, c) in ablations(&chosen.1) {
            let (t, _) = pick(&c);
            let (scores, _, _) = tcpd_scores(&held, &c);
            let (f, cv) = tcpd_score(&held, &scores, t);
            writeln!(out, "  {label:<30} held-out F1 {f:.3}  cover {cv:.3}")?;
        }
    }
    Ok(out)
}

/// Change points of one series by the change-point mode, and the nanoseconds spent.
fn change_mode_points(values: &[f64], c: &ChangeConfig) -> (Vec<usize>, u128) {
    let started = Instant::now();
    let mut d = ChangePoints::default();
    let mut points: Vec<usize> = values
        .iter()
        .filter_map(|&v| d.observe(v, c).map(|p| p as usize))
        .collect();
    points.dedup();
    (points, started.elapsed().as_nanos())
}

fn change_mode_score(series: &[&TcpdSeries], c: &ChangeConfig) -> (f64, f64, u128, usize) {
    let (mut f, mut cv, mut ns, mut n) = (0.0, 0.0, 0, 0);
    for s in series {
        let (cps, t) = change_mode_points(&s.values, c);
        ns += t;
        n += s.values.len();
        f += tcpd::f1(&s.annotations, &cps, tcpd::MARGIN);
        cv += tcpd::cover(&s.annotations, &cps, s.values.len());
    }
    let k = series.len() as f64;
    (f / k, cv / k, ns, n)
}

/// TCPD by the change-point mode (binary segmentation as the data arrive): the
/// penalty, shortest segment and model chosen by F1 on the tuning half.
fn tcpd_change_mode(
    all: &[&TcpdSeries],
    tune: &[&TcpdSeries],
    held: &[&TcpdSeries],
    out: &mut String,
    progress: &mut dyn FnMut(&str),
) -> Result<()> {
    let mut best = (f64::NEG_INFINITY, ChangeConfig::default());
    for (variance, noise, slope) in [
        (false, false, false),
        (true, false, false),
        (false, true, false),
        (false, false, true),
        (true, false, true),
    ] {
        for min_segment in [3, 5, 8, 12, 16, 24] {
            for penalty in [
                2.0, 4.0, 8.0, 12.0, 16.0, 24.0, 32.0, 48.0, 64.0, 128.0, 256.0,
            ] {
                let c = ChangeConfig {
                    penalty,
                    min_segment,
                    variance,
                    noise,
                    slope,
                    ..Default::default()
                };
                let (f, cv, _, _) = change_mode_score(tune, &c);
                progress(&format!(
                    "change mode, tuning half, F1 {f:.3} cover {cv:.3}: {c:?}"
                ));
                if f > best.0 {
                    best = (f, c);
                }
            }
        }
    }
    let c = best.1;
    let (tf, tc, _, _) = change_mode_score(tune, &c);
    let (hf, hc, _, _) = change_mode_score(held, &c);
    let (wf, wc, ns, n) = change_mode_score(all, &c);
    writeln!(
        out,
        "change-point mode (penalty {}, shortest segment {}, {}; chosen on the tuning half):",
        c.penalty,
        c.min_segment,
        if c.slope {
            "the steps' mean and spread (slope)"
        } else if c.noise {
            "mean against the neighbours' noise"
        } else if c.variance {
            "mean and spread"
        } else {
            "mean only"
        }
    )?;
    writeln!(
        out,
        "{:<8} {:>12} {:>14} {:>12}   best published (default settings)",
        "metric", "tuning half", "held-out half", "all series"
    )?;
    writeln!(
        out,
        "{:<8} {tf:>12.3} {hf:>14.3} {wf:>12.3}   0.744 (binseg)",
        "F1"
    )?;
    writeln!(
        out,
        "{:<8} {tc:>12.3} {hc:>14.3} {wc:>12.3}   0.706 (binseg)",
        "cover"
    )?;
    writeln!(
        out,
        "cost: {:.2} µs per point ({n} points)",
        ns as f64 / 1e3 / n as f64
    )?;
    Ok(())
}
