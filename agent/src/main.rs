use clap::Parser;

fn main() -> std::process::ExitCode {
    nodepulse::cli::main(nodepulse::cli::Cli::parse())
}
