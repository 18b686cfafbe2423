//! Turning cumulative kernel readings into per-interval series.

pub mod budget;
pub mod histogram;
pub mod series;

pub use histogram::ExpHistogram;
pub use series::{CounterDelta, Delta, IntervalCounter, IntervalSeries, SeriesKey, counter_delta};
