//! Turning cumulative kernel readings into per-interval series.

pub mod budget;
pub mod histogram;
pub mod identity;
pub mod saved;
pub mod series;

pub use histogram::ExpHistogram;
pub use identity::{Entity, EntityState};
pub use series::{
    Collected, Cumulative, Delta, IntervalCounter, IntervalSeries, SeriesKey, TrackedCounter,
    TrackedReading, carried_total, carry_totals, counter_delta,
};
