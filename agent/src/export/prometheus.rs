//! Prometheus scrape endpoint (being written).
