//! The upgrade test's "new version" (tests/restart.rs): `nodepulse` itself, built with
//! the `test-upgrade-layout` feature so that its eBPF object has another map layout.
//! Never shipped.

use clap::Parser;

fn main() -> std::process::ExitCode {
    nodepulse::cli::main(nodepulse::cli::Cli::parse())
}
