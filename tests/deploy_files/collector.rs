//! The OpenTelemetry Collector configuration.

use std::collections::BTreeSet;

use crate::common::deploy::yaml_file;

#[test]
fn every_collector_pipeline_uses_defined_components() {
    one_subject_at_a_time!();
    let c = yaml_file("deploy/otel-collector/collector.yaml");
    let defined = |section: &str| -> BTreeSet<String> {
        c[section]
            .as_object()
            .unwrap_or_else(|| panic!("no {section}"))
            .keys()
            .cloned()
            .collect()
    };
    let pipelines = c["service"]["pipelines"].as_object().unwrap();
    for signal in ["metrics", "traces", "logs"] {
        assert!(pipelines.contains_key(signal), "no {signal} pipeline");
    }
    let mut used: BTreeSet<(String, String)> = BTreeSet::new();
    for (name, p) in pipelines {
        for section in ["receivers", "processors", "exporters"] {
            let list: Vec<String> = p[section]
                .as_array()
                .unwrap_or_else(|| panic!("{name} has no {section}"))
                .iter()
                .map(|v| v.as_str().unwrap().to_owned())
                .collect();
            assert!(!list.is_empty() || section == "processors");
            for component in &list {
                assert!(
                    defined(section).contains(component),
                    "pipeline {name}: {component} is not defined under {section}"
                );
                used.insert((section.to_owned(), component.clone()));
            }
            if section == "processors" {
                assert_eq!(
                    list.first().map(String::as_str),
                    Some("memory_limiter"),
                    "{name}"
                );
                assert_eq!(list.last().map(String::as_str), Some("batch"), "{name}");
            }
        }
    }
    for section in ["receivers", "processors", "exporters"] {
        for component in defined(section) {
            assert!(
                used.contains(&(section.to_owned(), component.clone())),
                "{section}.{component} is defined but in no pipeline"
            );
        }
    }
    for e in c["service"]["extensions"].as_array().unwrap() {
        assert!(defined("extensions").contains(e.as_str().unwrap()));
    }
    // nodepulse's default OTLP port, and the exporters the issue names.
    assert_eq!(
        c["receivers"]["otlp"]["protocols"]["grpc"]["endpoint"],
        "0.0.0.0:4317"
    );
    let exporters = |signal: &str| pipelines[signal]["exporters"].to_string();
    assert!(exporters("metrics").contains("prometheusremotewrite"));
    assert!(exporters("traces").contains("otlp"));
    assert!(exporters("logs").contains("otlphttp"));
}
