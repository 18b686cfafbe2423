//! Alarms: what a regression looks like to everyone downstream (console, OTLP logs and
//! spans, actions, the audit log). An alarm opens after enough regressed windows,
//! stays ongoing while they continue, and resolves after enough normal ones.

use std::{
    collections::BTreeMap,
    hash::{DefaultHasher, Hash, Hasher},
};

use serde::Serialize;

use super::{baseline::Baseline, config::DetectConfig, rules::Evaluation};
use crate::{
    aggregate::ExpHistogram,
    export::console::format_ns,
    util::{hex, time::rfc3339},
};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AlarmState {
    Open,
    Ongoing,
    Resolved,
}

impl AlarmState {
    pub fn as_str(self) -> &'static str {
        match self {
            AlarmState::Open => "open",
            AlarmState::Ongoing => "ongoing",
            AlarmState::Resolved => "resolved",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Severity {
    Minor,
    Major,
    Critical,
}

impl Severity {
    pub fn of(factor: f64, config: &DetectConfig) -> Self {
        if factor >= config.critical_factor {
            Severity::Critical
        } else if factor >= config.major_factor {
            Severity::Major
        } else {
            Severity::Minor
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Minor => "minor",
            Severity::Major => "major",
            Severity::Critical => "critical",
        }
    }
}

/// The evidence: both distributions, as the detector compared them.
#[derive(Clone, Debug, Serialize, serde::Deserialize)]
pub struct Evidence {
    /// The baseline as fractions of samples per bucket (scale 3, like the series).
    pub baseline: BaselineHistogram,
    /// The last regressed window, as counts.
    pub current: ExpHistogram,
    /// Per quantile: baseline, current, ratio, p-value.
    pub rules: Vec<super::rules::RuleResult>,
    /// For a slow drift: the quantile against the baseline of hours ago.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub drift: Option<super::drift::Drift>,
}

impl Evidence {
    /// For alarms on a number rather than a distribution (scalar series, capacity
    /// forecasts): their figures are elsewhere in the alarm.
    fn no_distribution() -> Self {
        Self {
            baseline: (&Baseline::default()).into(),
            current: ExpHistogram::default(),
            rules: Vec::new(),
            drift: None,
        }
    }
}

#[derive(Clone, Debug, Serialize, serde::Deserialize)]
pub struct BaselineHistogram {
    pub zero: f64,
    pub offset: i32,
    pub fractions: Vec<f64>,
    pub windows: u32,
}

impl From<&Baseline> for BaselineHistogram {
    fn from(b: &Baseline) -> Self {
        Self {
            zero: b.zero,
            offset: b.offset,
            fractions: b.mass.clone(),
            windows: b.windows,
        }
    }
}

#[derive(Clone, Debug, Serialize, serde::Deserialize)]
pub struct Alarm {
    /// Stable: derived from the node, the series and the start time.
    pub id: String,
    pub state: AlarmState,
    /// `family{label=value,…}`.
    pub series: String,
    pub family: String,
    pub labels: BTreeMap<String, String>,
    pub severity: Severity,
    /// `high` when the test's p-value is 100× below the significance level.
    #[serde(deserialize_with = "crate::util::intern::de_str")]
    pub confidence: crate::util::intern::Static,
    /// The quantile that moved most, its current shift factor and the largest so far.
    #[serde(deserialize_with = "crate::util::intern::de_str")]
    pub quantile: crate::util::intern::Static,
    pub factor: f64,
    pub peak_factor: f64,
    pub p_value: f64,
    #[serde(deserialize_with = "crate::util::intern::de_str_map")]
    pub baseline_ns: BTreeMap<crate::util::intern::Static, f64>,
    #[serde(deserialize_with = "crate::util::intern::de_str_map")]
    pub current_ns: BTreeMap<crate::util::intern::Static, f64>,
    /// Start of the first regressed window (RFC 3339) and, once resolved, the end.
    pub started: String,
    pub start_unix_nano: u64,
    pub ended: Option<String>,
    pub end_unix_nano: Option<u64>,
    pub regressed_windows: u32,
    pub summary: String,
    /// The alarm's span: actions run as its children.
    pub trace_id: String,
    pub span_id: String,
    pub evidence: Evidence,
    /// Every series of the incident this alarm stands for (itself included), ranked
    /// by the waiting time their shifts added; empty for a lone series' alarm.
    pub related: Vec<super::incident::RelatedSeries>,
    /// For a scalar series (a rate, a gauge): the value against what was expected.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scalar: Option<ScalarFigures>,
    /// For a capacity alarm: what is forecast ("io:sdb busy predicted to reach 0.9
    /// within 6 h, 90 % interval 4-9 h").
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub forecast: Option<String>,
}

/// The evidence of a scalar series' alarm, in the series' own unit.
#[derive(Clone, Debug, PartialEq, Serialize, serde::Deserialize)]
pub struct ScalarFigures {
    pub value: f64,
    pub expected: f64,
    /// Typical deviation from `expected`, and the deviation in those.
    pub typical_deviation: f64,
    pub z: f64,
    /// The anomaly score in [0, 1] and the highest so far.
    pub score: f64,
    pub peak_score: f64,
    pub unit: String,
}

fn hash(text: &str) -> u64 {
    let mut h = DefaultHasher::new();
    text.hash(&mut h);
    h.finish()
}

/// Words as hex, 16 digits each.
fn hex_words(words: &[u64]) -> String {
    let bytes: Vec<u8> = words.iter().flat_map(|w| w.to_be_bytes()).collect();
    hex::encode(&bytes)
}

impl Alarm {
    /// An alarm opening now for `series`, before its first figures: its ids are derived
    /// from the node, the series and the start, so a restart that restores it keeps them.
    fn fresh(
        node: &str,
        family: &str,
        labels: &BTreeMap<String, String>,
        series: &str,
        start_unix_nano: u64,
        evidence: Evidence,
    ) -> Self {
        let id = hex_words(&[hash(&format!("{node}|{series}|{start_unix_nano}"))]);
        Self {
            trace_id: hex_words(&[hash(&format!("{id}/trace")), hash(&format!("{id}/trace/2"))]),
            span_id: hex_words(&[hash(&format!("{id}/span"))]),
            id,
            state: AlarmState::Open,
            series: series.to_owned(),
            family: family.to_owned(),
            labels: labels.clone(),
            severity: Severity::Minor,
            confidence: "medium",
            quantile: "p99",
            factor: 1.0,
            peak_factor: 1.0,
            p_value: 1.0,
            baseline_ns: BTreeMap::new(),
            current_ns: BTreeMap::new(),
            started: rfc3339(start_unix_nano),
            start_unix_nano,
            ended: None,
            end_unix_nano: None,
            regressed_windows: 0,
            summary: String::new(),
            evidence,
            related: Vec::new(),
            scalar: None,
            forecast: None,
        }
    }

    /// An alarm on a forecast saturation (see `capacity`): the forecast is its evidence;
    /// the same identity, trace and actions as any other alarm.
    pub fn open_capacity(
        node: &str,
        family: &str,
        labels: &BTreeMap<String, String>,
        series: &str,
        start_unix_nano: u64,
        forecast: String,
    ) -> Self {
        let mut alarm = Self::fresh(
            node,
            family,
            labels,
            series,
            start_unix_nano,
            Evidence::no_distribution(),
        );
        alarm.quantile = "forecast";
        alarm.regressed_windows = 1;
        alarm.forecast = Some(forecast);
        alarm.summary = alarm.describe();
        alarm
    }

    /// The forecast again, still within the horizon.
    pub fn update_capacity(&mut self, forecast: String, intervals: u32) {
        self.state = AlarmState::Ongoing;
        self.regressed_windows = intervals;
        self.forecast = Some(forecast);
        self.summary = self.describe();
    }

    #[allow(clippy::too_many_arguments)]
    pub fn open(
        node: &str,
        family: &str,
        labels: &BTreeMap<String, String>,
        series: &str,
        start_unix_nano: u64,
        evaluation: &Evaluation,
        baseline: &Baseline,
        window: &ExpHistogram,
        windows: u32,
        config: &DetectConfig,
    ) -> Self {
        let evidence = Evidence {
            baseline: baseline.into(),
            current: window.clone(),
            rules: Vec::new(),
            drift: None,
        };
        let mut alarm = Self::fresh(node, family, labels, series, start_unix_nano, evidence);
        alarm.update(evaluation, window, windows, config);
        alarm.state = AlarmState::Open;
        alarm
    }

    /// Another regressed window: new figures, severity from the largest factor seen.
    pub fn update(
        &mut self,
        evaluation: &Evaluation,
        window: &ExpHistogram,
        windows: u32,
        config: &DetectConfig,
    ) {
        self.state = AlarmState::Ongoing;
        self.quantile = evaluation.quantile;
        self.factor = evaluation.factor;
        self.peak_factor = self.peak_factor.max(evaluation.factor);
        self.p_value = evaluation.p_value;
        self.severity = Severity::of(self.peak_factor, config);
        self.confidence = if evaluation.p_value < config.significance / 100.0 {
            "high"
        } else {
            "medium"
        };
        self.baseline_ns = evaluation.baseline_quantiles();
        self.current_ns = evaluation.current_quantiles();
        self.regressed_windows = windows;
        self.evidence.current = window.clone();
        self.evidence.rules = evaluation.rules.clone();
        self.evidence.drift = evaluation.drift.clone();
        self.summary = self.describe();
    }

    /// An alarm on a scalar series (see `scalar::series`): no distributions, the
    /// value against what was expected; factor is how many times off it is.
    #[allow(clippy::too_many_arguments)]
    pub fn open_scalar(
        node: &str,
        family: &str,
        labels: &BTreeMap<String, String>,
        series: &str,
        start_unix_nano: u64,
        figures: ScalarFigures,
        points: u32,
        config: &DetectConfig,
    ) -> Self {
        let mut alarm = Self::fresh(
            node,
            family,
            labels,
            series,
            start_unix_nano,
            Evidence::no_distribution(),
        );
        alarm.quantile = "value";
        alarm.update_scalar(figures, points, config);
        alarm.state = AlarmState::Open;
        alarm
    }

    /// Another anomalous point of a scalar series.
    pub fn update_scalar(
        &mut self,
        mut figures: ScalarFigures,
        points: u32,
        config: &DetectConfig,
    ) {
        self.state = AlarmState::Ongoing;
        let (v, e) = (figures.value.abs(), figures.expected.abs());
        let floor = figures.typical_deviation.max(1e-12);
        // Times off, either way: a rate that halved is as far off as one that doubled.
        self.factor = (v.max(floor) / e.max(floor)).max(e.max(floor) / v.max(floor));
        self.peak_factor = self.peak_factor.max(self.factor);
        self.severity = Severity::of(self.peak_factor, config);
        figures.peak_score = self
            .scalar
            .as_ref()
            .map_or(figures.score, |f| f.peak_score.max(figures.score));
        self.p_value = 10f64.powf(-10.0 * figures.score);
        self.confidence = if figures.score >= 0.7 {
            "high"
        } else {
            "medium"
        };
        self.baseline_ns = BTreeMap::from([("value", figures.expected)]);
        self.current_ns = BTreeMap::from([("value", figures.value)]);
        self.regressed_windows = points;
        self.scalar = Some(figures);
        self.summary = self.describe();
    }

    pub fn resolve(&mut self, end_unix_nano: u64) {
        self.state = AlarmState::Resolved;
        self.ended = Some(rfc3339(end_unix_nano));
        self.end_unix_nano = Some(end_unix_nano);
        self.summary = self.describe();
    }

    /// "write latency on sdb (block.io.latency) has regressed: p99 from 1.80ms to 6.50ms
    /// since 2026-11-27T14:02:00Z, 3.6×, major, confidence high"; once resolved, "…
    /// has recovered at <end>: …".
    fn describe(&self) -> String {
        if let Some(f) = &self.forecast {
            return match &self.ended {
                None => format!("{f} (since {})", self.started),
                Some(end) => format!(
                    "{} no longer forecast to saturate at {end}: {f}",
                    self.series
                ),
            };
        }
        if let Some(f) = &self.scalar {
            let figures = format!(
                "{} {} against {} expected (typical deviation {}) since {}, {:.1}×, {}, \
                 score {:.2}, confidence {}",
                number(f.value),
                f.unit,
                number(f.expected),
                number(f.typical_deviation),
                self.started,
                self.factor,
                self.severity.as_str(),
                f.peak_score,
                self.confidence
            );
            return match &self.ended {
                None => format!("{} is anomalous: {figures}", self.series),
                Some(end) => format!("{} is back to normal at {end}: {figures}", self.series),
            };
        }
        let from = self.baseline_ns.get(self.quantile).copied().unwrap_or(0.0);
        let to = self.current_ns.get(self.quantile).copied().unwrap_or(0.0);
        // A drift is told against its reference, and how old that is.
        let (from, reference) = match &self.evidence.drift {
            Some(d) => {
                let hours =
                    self.start_unix_nano.saturating_sub(d.reference_unix_nano) as f64 / 3.6e12;
                (d.reference_ns, format!(" ({hours:.1} h before)"))
            }
            None => (from, String::new()),
        };
        let figures = format!(
            "{} from {}{reference} to {} since {}, {:.1}×, {}, confidence {}",
            self.quantile,
            format_ns(from),
            format_ns(to),
            self.started,
            self.factor,
            self.severity.as_str(),
            self.confidence
        );
        let who = self.subject();
        let how = if self.evidence.drift.is_some() {
            "has drifted slowly"
        } else {
            "has regressed"
        };
        match &self.ended {
            None => format!("{who} {how}: {figures}"),
            Some(end) => format!("{who} has recovered at {end}: {figures}"),
        }
    }

    /// "write latency on sdb (block.io.latency)" where the labels say so, else the series.
    fn subject(&self) -> String {
        let label = |k: &str| self.labels.get(k).map(String::as_str);
        let on = label("device")
            .or(label("vm"))
            .or(label("cgroup"))
            .map(|d| format!(" on {d}"))
            .unwrap_or_default();
        match (label("op").or(label("reason")), on.is_empty()) {
            (Some(op), _) => format!("{op} latency{on} ({})", self.family),
            (None, false) => format!("latency{on} ({})", self.family),
            (None, true) => self.series.clone(),
        }
    }
}

/// A number as an operator reads it: 3 significant digits.
fn number(x: f64) -> String {
    if x != 0.0 && (x.abs() >= 1e6 || x.abs() < 1e-3) {
        format!("{x:.3e}")
    } else {
        let digits = (2 - x.abs().max(1e-300).log10().floor() as i32).clamp(0, 6) as usize;
        format!("{x:.digits$}")
    }
}

/// An open alarm on `block.io.latency{device=sdx,op=write}` for other modules' tests.
#[cfg(test)]
pub(crate) fn sample(severity: Severity) -> Alarm {
    let base = ExpHistogram::from_buckets(0, 0, [(130, 900), (131, 90), (140, 10)]);
    let mut baseline = Baseline::default();
    baseline.learn(&base, 10.0);
    let now = ExpHistogram::from_buckets(0, 0, [(134, 900), (136, 90), (150, 10)]);
    let config = DetectConfig::default();
    let evaluation = super::rules::evaluate(&baseline, &now, &config, 0.0);
    let labels = BTreeMap::from([
        ("device".to_owned(), "sdx".to_owned()),
        ("op".to_owned(), "write".to_owned()),
    ]);
    let mut alarm = Alarm::open(
        "node",
        "block.io.latency",
        &labels,
        "block.io.latency{device=sdx,op=write}",
        1_800_000_000_000_000_000,
        &evaluation,
        &baseline,
        &now,
        2,
        &config,
    );
    alarm.severity = severity;
    alarm
}
