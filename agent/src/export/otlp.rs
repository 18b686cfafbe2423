//! OTLP encoding and exporter (being written).
