//! OTLP transport (being written).
