//! `cargo xtask deb`: the Debian package, assembled in a staging tree and built with
//! `dpkg-deb` (on every Debian system; cargo-deb would first have to be compiled, and
//! the package is small: one static binary, two config files, the unit and three
//! maintainer scripts from deploy/).

use std::{
    fs,
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
    process::Command,
    time::Instant,
};

use anyhow::{Context, Result};

use crate::{dist, util};

#[derive(clap::Args)]
pub struct Args {}

pub fn run(_args: Args) -> Result<()> {
    build().map(|_| ())
}

/// `target/debian/nodepulse_<version>_amd64.deb`.
pub fn package_path() -> PathBuf {
    util::target_dir()
        .join("debian")
        .join(format!("nodepulse_{}_amd64.deb", dist::VERSION))
}

/// Where each file of the package comes from (workspace-relative), where it goes and
/// with which mode.
const FILES: &[(&str, &str, u32)] = &[
    (
        "deploy/systemd/nodepulse.toml",
        "etc/nodepulse/nodepulse.toml",
        0o640,
    ),
    (
        "deploy/systemd/nodepulse.service",
        "lib/systemd/system/nodepulse.service",
        0o644,
    ),
    (
        "deploy/nodepulse.toml",
        "usr/share/doc/nodepulse/nodepulse.toml.example",
        0o644,
    ),
    ("README.md", "usr/share/doc/nodepulse/README.md", 0o644),
];

const SCRIPTS: &[&str] = &["postinst", "prerm", "postrm"];

/// Builds the binary and the package; returns the package's path.
pub fn build() -> Result<PathBuf> {
    let start = Instant::now();
    println!("[1/3] static binary");
    let binary = dist::static_binary()?;

    println!("[2/3] staging tree");
    let root = util::workspace_root();
    let stage = util::target_dir().join("debian").join("stage");
    if stage.exists() {
        fs::remove_dir_all(&stage)?;
    }
    install(&binary, &stage.join("usr/bin/nodepulse"), 0o755)?;
    for (from, to, mode) in FILES {
        install(&root.join(from), &stage.join(to), *mode)?;
    }
    for script in SCRIPTS {
        install(
            &root.join("deploy/debian").join(script),
            &stage.join("DEBIAN").join(script),
            0o755,
        )?;
    }
    fs::write(
        stage.join("DEBIAN/conffiles"),
        "/etc/nodepulse/nodepulse.toml\n",
    )?;
    let size_kib = dir_size(&stage)?.div_ceil(1024);
    fs::write(stage.join("DEBIAN/control"), control(size_kib))?;

    let package = package_path();
    println!(
        "[3/3] dpkg-deb --build -> {}",
        util::relative_to_cwd(&package).display()
    );
    util::run(
        Command::new("dpkg-deb")
            .args(["--build", "--root-owner-group", "-Zxz"])
            .arg(&stage)
            .arg(&package),
    )?;
    let size = fs::metadata(&package)?.len();
    println!(
        "package {}: {:.1} MiB, built in {}",
        util::relative_to_cwd(&package).display(),
        size as f64 / (1 << 20) as f64,
        util::fmt_duration(start.elapsed())
    );
    Ok(package)
}

fn control(installed_kib: u64) -> String {
    format!(
        "Package: nodepulse\n\
         Version: {}\n\
         Architecture: amd64\n\
         Maintainer: nodepulse maintainers <nodepulse@localhost>\n\
         Installed-Size: {installed_kib}\n\
         Depends: passwd\n\
         Section: admin\n\
         Priority: optional\n\
         Description: eBPF node performance agent for KVM, Ceph and Kubernetes nodes\n \
         Measures block I/O, run-queue and KVM exit latency in the kernel with eBPF and\n \
         exports distributions per device, cgroup and VM to OpenTelemetry or Prometheus.\n \
         Runs as an unprivileged user with CAP_BPF and CAP_PERFMON only.\n",
        dist::VERSION
    )
}

/// Copies `from` to `to`, creating parents, with `mode`.
fn install(from: &Path, to: &Path, mode: u32) -> Result<()> {
    fs::create_dir_all(to.parent().expect("a file in a directory"))?;
    fs::copy(from, to).with_context(|| format!("copy {} to {}", from.display(), to.display()))?;
    fs::set_permissions(to, fs::Permissions::from_mode(mode))?;
    Ok(())
}

fn dir_size(dir: &Path) -> Result<u64> {
    let mut total = 0;
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        let meta = entry.metadata()?;
        total += if meta.is_dir() {
            dir_size(&entry.path())?
        } else {
            meta.len()
        };
    }
    Ok(total)
}
