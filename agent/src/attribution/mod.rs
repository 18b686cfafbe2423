//! Giving kernel identifiers the names operators know.

pub mod devices;
