//! The page's capacity section: the recording replayed through the agent's capacity
//! learning (`capacity::replay`, as `nodepulse capacity --from`), so the page and the
//! command agree. Per resource, worst first: its figures now, headroom to the knee with
//! the knee's evidence (the learned p99 per bin of load), and the forecast with its
//! interval, drawn over the 10-minute means the forecaster fitted and each refit's
//! forecast. Its size follows the resources and the recording's 10-minute buckets,
//! not its reports.

use std::{collections::BTreeMap, io::BufRead};

use serde::Serialize;

use crate::capacity::{
    CapacityConfig,
    replay::{CapacityReplayError, replay},
    standing::{self, Forecast, Headroom, Standing},
};

#[derive(Debug, Serialize)]
pub struct CapacityView {
    /// Hours covered; stretched hours when `stretch` > 1.
    pub hours: f64,
    pub stretch: f64,
    pub saturation: f64,
    pub knee_multiple: f64,
    pub interval_percent: f64,
    /// Worst first, as `nodepulse capacity` orders them.
    pub resources: Vec<ResourceView>,
}

#[derive(Debug, Serialize)]
pub struct ResourceView {
    pub resource: String,
    pub kind: &'static str,
    pub saturation_now: Option<f64>,
    /// `nodepulse capacity`'s lines for it.
    pub now_text: String,
    pub headroom_text: Option<String>,
    pub forecast_text: String,
    pub headroom: Option<Headroom>,
    pub forecast: Forecast,
    /// The signal drawn: the forecast's, or the fullest forecast signal now.
    pub trend_signal: Option<&'static str>,
    /// That signal's 10-minute means: [hours since the start, mean].
    pub trend: Vec<[f64; 2]>,
    /// Each refit of that signal's forecast: [hours since the start, point, earliest,
    /// latest] (hours ahead; `None`: not within the horizon, or possibly never).
    pub refits: Refits,
}

/// [hours since the start, point, earliest, latest] per refit.
pub type Refits = Vec<(f64, Option<f64>, Option<f64>, Option<f64>)>;

/// The capacity section of `reader`'s recording; `None` when it has no capacity
/// signals (recorded with capacity off, or trimmed).
pub fn read(
    path: &str,
    reader: impl BufRead,
    config: &CapacityConfig,
    stretch: f64,
) -> Result<Option<CapacityView>, CapacityReplayError> {
    // Forecasts change only at a refit (a bucket closing): kept when they change.
    let mut refits: BTreeMap<(String, &'static str), Refits> = BTreeMap::new();
    let replayed = match replay(path, reader, config, stretch, |hours, c| {
        for f in &c.forecasts {
            let at = (
                hours,
                f.forecast.hours,
                f.forecast.lower_h,
                f.forecast.upper_h,
            );
            let kept = refits.entry((f.resource.clone(), f.signal)).or_default();
            if kept
                .last()
                .is_none_or(|k| (k.1, k.2, k.3) != (at.1, at.2, at.3))
            {
                kept.push(at);
            }
        }
    }) {
        Ok(r) => r,
        Err(CapacityReplayError::NoCapacity { .. }) => return Ok(None),
        Err(e) => return Err(e),
    };
    let s = Standing::of(&replayed);
    let resources = s
        .resources
        .into_iter()
        .map(|r| {
            let trend_signal = match &r.forecast {
                Forecast::Saturating { signal, .. } => Some(*signal),
                _ => r
                    .now
                    .iter()
                    .filter(|x| crate::capacity::forecast_input(x))
                    .max_by(|a, b| a.value.total_cmp(&b.value))
                    .map(|x| x.name),
            };
            let trend = trend_signal
                .map(|signal| {
                    replayed
                        .capacity
                        .history(&r.resource, signal)
                        .into_iter()
                        .map(|(t, v)| [(t as f64 - replayed.start_s) / 3600.0, v])
                        .collect()
                })
                .unwrap_or_default();
            let refits = trend_signal
                .and_then(|signal| refits.remove(&(r.resource.clone(), signal)))
                .unwrap_or_default();
            ResourceView {
                now_text: standing::now(&r),
                headroom_text: r
                    .headroom
                    .as_ref()
                    .map(|h| standing::show_headroom(h, s.knee_multiple)),
                forecast_text: standing::show_forecast(
                    &r.forecast,
                    s.saturation,
                    s.interval_percent,
                ),
                resource: r.resource,
                kind: r.kind,
                saturation_now: r.saturation_now,
                headroom: r.headroom,
                forecast: r.forecast,
                trend_signal,
                trend,
                refits,
            }
        })
        .collect();
    Ok(Some(CapacityView {
        hours: s.hours,
        stretch: s.stretch,
        saturation: s.saturation,
        knee_multiple: s.knee_multiple,
        interval_percent: s.interval_percent,
        resources,
    }))
}
