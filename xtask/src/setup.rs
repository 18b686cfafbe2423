//! `cargo xtask setup`: makes a fresh Debian 12 machine ready to build and test,
//! skipping whatever is already present so reruns take about a second.

use std::path::PathBuf;
use std::process::Command;
use std::time::Instant;

use anyhow::{Result, bail};

use crate::util::{self, Progress, fmt_duration};

/// Debian packages the workspace needs; the one list to edit.
pub const DEBIAN_PACKAGES: &[&str] = &[
    // LLVM 22 to build bpf-linker against (Debian's default llvm-config is LLVM 14,
    // too old for the nightly's LLVM 22 bitcode).
    "llvm-22-dev",
    "libpolly-22-dev",
    "zlib1g-dev",
    "libzstd-dev",
    // Workloads for integration tests and benchmarks.
    "fio",
    "stress-ng",
    // TCP streams for the storage network probe's tests and benchmark.
    "iperf3",
    // losetup: loop devices as real block devices to probe.
    "util-linux",
    // ip netns / ip link for network tests on loopback namespaces.
    "iproute2",
    // A long-lived periodic sleeper in the run-queue tests; the venv that holds
    // kubernetes-validate for the manifest tests.
    "python3",
    "python3-venv",
    // Deployment: the static binary for the image and the package (musl-gcc for the
    // C in ring, strip), the image (podman, and runc to run it in the tests), CA roots for
    // the image, promtool for the fleet rules, systemd-analyze for the unit.
    "musl-tools",
    "binutils",
    "podman",
    "runc",
    "ca-certificates",
    "prometheus",
    "systemd",
    // The kernel matrix (cargo xtask vmtest): QEMU to boot Debian's kernels, a static
    // busybox for the guests' userspace, kmod to index and order their modules, xz and
    // zstd to decompress them (busybox's insmod loads plain ELF only).
    "qemu-system-x86",
    "busybox-static",
    "kmod",
    "xz-utils",
    "zstd",
    // Headless Chromium renders `nodepulse view` reports in the tests (tests/view.rs).
    "chromium",
];

/// Debian packages only `cargo xtask bench --compare` needs (the peers it runs beside
/// nodepulse, and bpftool to read their programs' run-time stats); installed by the
/// benchmark when missing, not by `setup`, so CI does not pull them.
pub const COMPARE_PACKAGES: &[&str] = &["bpftrace", "bpftool"];

/// The target the image's and the package's static binary is built for.
const MUSL_TARGET: &str = crate::dist::MUSL_TARGET;

/// Python packages of the deployment tests, in a venv of their own (see [`venv_dir`]).
const PYTHON_PACKAGES: &[&str] = &["kubernetes-validate"];

/// Where bpf-linker's build finds LLVM 22.
const LLVM_PREFIX: &str = "/usr/lib/llvm-22";

const STEPS: usize = 8;

#[derive(clap::Args)]
pub struct Args {}

pub fn run(_args: Args) -> Result<()> {
    ensure()
}

/// Checks and installs everything, printing one numbered line per step and a summary.
pub fn ensure() -> Result<()> {
    let start = Instant::now();
    let mut steps = Progress::new(STEPS);
    let mut installed: Vec<String> = Vec::new();

    // Debian packages come first: without root we stop here and change nothing.
    let step = steps.step(&format!("Debian packages ({})", DEBIAN_PACKAGES.len()));
    let missing = missing_debian_packages();
    if missing.is_empty() {
        step.present();
    } else if !util::is_root() {
        step.start_line(&format!("missing: {}", missing.join(" ")));
        println!("installing them needs root; run:");
        println!(
            "    sudo apt-get update && sudo apt-get install -y --no-install-recommends {}",
            missing.join(" ")
        );
        println!("then `cargo xtask setup` again.");
        bail!("missing Debian packages: {}", missing.join(" "));
    } else {
        step.start_line(&format!("installing {}", missing.join(" ")));
        install_debian_packages(&missing)?;
        step.finish("installed");
        installed.extend(missing.iter().map(|p| p.to_string()));
    }

    let step = steps.step("Ubuntu archive keyring (kernel matrix)");
    if crate::vmtest::ubuntu_keyring_present() {
        step.present();
    } else if !util::is_root() {
        // The matrix itself needs root and is skipped without it.
        step.finish("skipped: installing it needs root, as the kernel matrix does");
    } else {
        step.start_line("installing Debian's ubuntu-keyring");
        crate::vmtest::ensure_ubuntu_keyring()?;
        step.finish("installed");
        installed.push("ubuntu-keyring".into());
    }

    let step = steps.step("Rust nightly toolchain (eBPF crate)");
    if !nightly_missing() {
        step.present();
    } else {
        step.start_line("installing");
        util::run(Command::new("rustup").args([
            "toolchain",
            "install",
            "nightly",
            "--profile",
            "minimal",
        ]))?;
        step.finish("installed");
        installed.push("nightly toolchain".into());
    }

    let step = steps.step("nightly components (rust-src, clippy)");
    let missing = missing_nightly_components();
    if missing.is_empty() {
        step.present();
    } else {
        step.start_line(&format!("installing {}", missing.join(", ")));
        util::run(
            Command::new("rustup")
                .args(["component", "add", "--toolchain", "nightly"])
                .args(&missing),
        )?;
        step.finish("installed");
        installed.extend(missing.iter().map(|c| format!("nightly {c}")));
    }

    let step = steps.step("bpf-linker");
    match find_bpf_linker() {
        Some(BpfLinker::OnPath) => step.present(),
        Some(BpfLinker::OffPath(path)) => {
            step.present();
            warn_not_on_path(&path);
        }
        None => {
            step.start_line(
                "installing (builds from source against LLVM 22, takes up to 5 minutes)",
            );
            install_bpf_linker()?;
            match find_bpf_linker() {
                Some(BpfLinker::OnPath) => {}
                Some(BpfLinker::OffPath(path)) => warn_not_on_path(&path),
                None => bail!("bpf-linker was installed but `bpf-linker --version` still fails"),
            }
            step.finish("installed");
            installed.push("bpf-linker".into());
        }
    }

    let step = steps.step("cargo-fuzz (libFuzzer targets)");
    if cargo_fuzz_present() {
        step.present();
    } else {
        step.start_line("installing (builds from source, about 2 minutes)");
        install_cargo_fuzz()?;
        step.finish("installed");
        installed.push("cargo-fuzz".into());
    }

    let step = steps.step(&format!("Rust target {MUSL_TARGET} (static binary)"));
    if musl_target_present() {
        step.present();
    } else {
        step.start_line("installing");
        util::run(Command::new("rustup").args(["target", "add", MUSL_TARGET]))?;
        step.finish("installed");
        installed.push(MUSL_TARGET.into());
    }

    let step = steps.step(&format!(
        "Python venv for the deployment tests ({})",
        PYTHON_PACKAGES.join(", ")
    ));
    let venv = venv_dir();
    if python_packages_present(&venv) {
        step.present();
    } else {
        step.start_line(&format!("creating {}", venv.display()));
        install_python_packages(&venv)?;
        step.finish("installed");
        installed.push(format!("venv {}", venv.display()));
    }

    let elapsed = fmt_duration(start.elapsed());
    if installed.is_empty() {
        println!("setup complete in {elapsed}; nothing to install");
    } else {
        println!(
            "setup complete in {elapsed}; installed: {}",
            installed.join(", ")
        );
    }
    Ok(())
}

/// Installs those of `packages` that are missing (as root), saying which.
pub fn ensure_packages(packages: &[&'static str]) -> Result<()> {
    let missing = missing_of(packages);
    if missing.is_empty() {
        return Ok(());
    }
    if !util::is_root() {
        bail!(
            "missing Debian packages: {}; install them with `sudo apt-get install {}`",
            missing.join(" "),
            missing.join(" ")
        );
    }
    println!("installing {}", missing.join(" "));
    install_debian_packages(&missing)
}

/// The packages from [`DEBIAN_PACKAGES`] that dpkg does not report as installed.
fn missing_debian_packages() -> Vec<&'static str> {
    missing_of(DEBIAN_PACKAGES)
}

fn missing_of<'a>(packages: &[&'a str]) -> Vec<&'a str> {
    packages
        .iter()
        .copied()
        .filter(|pkg| {
            let status =
                util::stdout_of(Command::new("dpkg-query").args(["-W", "-f=${Status}", pkg]));
            status.as_deref().map(str::trim) != Some("install ok installed")
        })
        .collect()
}

fn install_debian_packages(packages: &[&str]) -> Result<()> {
    util::run(
        Command::new("apt-get")
            .env("DEBIAN_FRONTEND", "noninteractive")
            .arg("update"),
    )?;
    util::run(
        Command::new("apt-get")
            .env("DEBIAN_FRONTEND", "noninteractive")
            .args(["install", "-y", "--no-install-recommends"])
            .args(packages),
    )?;
    let still = missing_of(packages);
    if !still.is_empty() {
        bail!(
            "apt-get succeeded but these are still not installed: {}",
            still.join(" ")
        );
    }
    Ok(())
}

fn nightly_missing() -> bool {
    !util::succeeds(Command::new("rustup").args(["run", "nightly", "rustc", "--version"]))
}

/// rust-src builds `core` for the BPF target; clippy lints the eBPF crate there.
const NIGHTLY_COMPONENTS: [&str; 2] = ["rust-src", "clippy"];

fn missing_nightly_components() -> Vec<&'static str> {
    let listed = util::stdout_of(Command::new("rustup").args([
        "component",
        "list",
        "--toolchain",
        "nightly",
        "--installed",
    ]))
    .unwrap_or_default();
    NIGHTLY_COMPONENTS
        .into_iter()
        .filter(|c| {
            !listed
                .lines()
                .filter_map(|l| l.split_whitespace().next())
                .any(|name| {
                    name.strip_prefix(c)
                        .is_some_and(|rest| rest.is_empty() || rest.starts_with('-'))
                })
        })
        .collect()
}

enum BpfLinker {
    OnPath,
    /// Installed in cargo's bin directory, which is not on PATH.
    OffPath(PathBuf),
}

fn find_bpf_linker() -> Option<BpfLinker> {
    if util::succeeds(Command::new("bpf-linker").arg("--version")) {
        return Some(BpfLinker::OnPath);
    }
    let path = cargo_bin_dir()?.join("bpf-linker");
    util::succeeds(Command::new(&path).arg("--version")).then_some(BpfLinker::OffPath(path))
}

/// `$CARGO_HOME/bin`, defaulting to `~/.cargo/bin` as cargo does.
fn cargo_bin_dir() -> Option<PathBuf> {
    let home = std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo")))?;
    Some(home.join("bin"))
}

fn warn_not_on_path(path: &std::path::Path) {
    let dir = path.parent().unwrap_or(path);
    println!(
        "      note: installed as {}, but the eBPF build looks bpf-linker up on PATH: \
         export PATH=\"{}:$PATH\"",
        path.display(),
        dir.display()
    );
}

/// Builds bpf-linker against Debian's LLVM 22, linked statically, with the default
/// (stable) toolchain. Cargo's output is streamed as is so the long build shows progress.
fn install_bpf_linker() -> Result<()> {
    let path = match std::env::var("PATH") {
        Ok(old) if !old.is_empty() => format!("{LLVM_PREFIX}/bin:{old}"),
        _ => format!("{LLVM_PREFIX}/bin"),
    };
    util::run(
        Command::new("cargo")
            .env("LLVM_PREFIX", LLVM_PREFIX)
            .env("PATH", path)
            .args([
                "install",
                "bpf-linker",
                "--no-default-features",
                "--features",
                "llvm-22,llvm-link-static",
            ]),
    )
}

fn cargo_fuzz_present() -> bool {
    util::succeeds(Command::new("cargo").args(["+nightly", "fuzz", "--version"]))
}

fn install_cargo_fuzz() -> Result<()> {
    util::run(Command::new("cargo").args(["install", "--locked", "cargo-fuzz"]))
}

/// Installs cargo-fuzz when missing (for `cargo xtask fuzz` run on its own).
pub fn ensure_cargo_fuzz() -> Result<()> {
    if !cargo_fuzz_present() {
        install_cargo_fuzz()?;
    }
    Ok(())
}

fn musl_target_present() -> bool {
    util::stdout_of(Command::new("rustup").args(["target", "list", "--installed"]))
        .is_some_and(|t| t.lines().any(|l| l.trim() == MUSL_TARGET))
}

/// The deployment tests' Python venv: `$XDG_CACHE_HOME/nodepulse/venv`, by default
/// `~/.cache/nodepulse/venv`, so it survives `cargo clean` and fresh clones. The tests
/// find it with the same rule (tests/common/deploy.rs).
pub fn venv_dir() -> PathBuf {
    let cache = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .unwrap_or_else(|| PathBuf::from("/tmp"));
    cache.join("nodepulse").join("venv")
}

fn python_packages_present(venv: &std::path::Path) -> bool {
    PYTHON_PACKAGES
        .iter()
        .all(|p| util::succeeds(Command::new(venv.join("bin/pip")).args(["show", "--quiet", p])))
}

fn install_python_packages(venv: &std::path::Path) -> Result<()> {
    util::run(Command::new("python3").args(["-m", "venv"]).arg(venv))?;
    util::run(
        Command::new(venv.join("bin/pip"))
            .args(["install", "--quiet", "--disable-pip-version-check"])
            .args(PYTHON_PACKAGES),
    )
}
