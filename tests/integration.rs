//! nodepulse's integration tests against the real kernel, workloads and receivers: one
//! test executable with a module per subject, so the helpers in `common` and the
//! dependencies are compiled and linked once, not once per subject.
//!
//! `cargo test -p agent --test integration -- block_probe::` runs one subject. Tests
//! that touch the host (root-only: probes, loop devices, cgroups, namespaces,
//! workloads) never overlap with another subject's tests (`common::subject`). The KVM
//! guest that `kvm_probe` watches runs in an executable of its own
//! (`kvm_guest_process.rs`).

#[macro_use]
mod common;

mod action_restart;
mod alarm_otlp;
mod batch_read;
mod block_exact;
mod block_probe;
mod block_unseen;
mod cli;
mod deploy_artifacts;
mod deploy_files;
mod health;
mod identity_churn;
mod kvm_probe;
mod lifecycle;
mod otlp_export;
mod otlp_receiver;
mod prometheus;
mod prometheus_rules;
mod prometheus_server;
mod regression_live;
mod replay;
mod restart;
mod sched_probe;
mod storage_probe;
mod tcp_probe;
mod view;
