//! The scalar detector on public labelled corpora, each scored by its own published
//! method: the Numenta Anomaly Benchmark (`nab`) and the Turing Change Point Dataset
//! (`tcpd`). `cargo xtask eval-detect --corpus DIR` runs it on a copy the user
//! provides (nothing of them is in this repository): the layout says which corpus it
//! is. Files are split in two alternately by name; the settings (and the threshold)
//! are chosen on the first half and reported on the second, beside the best
//! published results.

pub mod clock;
pub mod nab;
mod run;
pub mod tcpd;

pub use run::{Options, evaluate};
