//! nodepulse: an eBPF node performance agent. Kernel probes measure latency where it
//! happens; this library loads them, aggregates what they record each interval, and
//! exports reports. See DESIGN.md for the architecture.

pub mod actions;
pub mod aggregate;
pub mod attribution;
pub mod capacity;
pub mod catalog;
pub mod check;
pub mod cli;
pub mod config;
pub mod detect;
pub mod export;
pub mod health;
pub mod kernel;
pub mod pipeline;
pub mod probes;
pub mod report;
pub mod selfmon;
pub mod settings;
pub mod state;
pub mod util;
pub mod view;

#[cfg(any(test, feature = "fuzzing"))]
pub mod fuzz;
#[cfg(test)]
mod fuzz_inputs;
