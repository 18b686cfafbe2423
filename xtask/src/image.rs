//! `cargo xtask image`: the container image, `FROM scratch` with the static binary
//! (deploy/container/Containerfile), built with podman from a small context directory.

use std::{path::PathBuf, process::Command, time::Instant};

use anyhow::{Context, Result, bail};

use crate::{dist, util};

/// The image's name; tagged with the workspace version.
pub const IMAGE: &str = "localhost/nodepulse";

/// Where the host keeps its CA bundle (Debian's ca-certificates).
const CA_BUNDLE: &str = "/etc/ssl/certs/ca-certificates.crt";

#[derive(clap::Args)]
pub struct Args {}

pub fn run(_args: Args) -> Result<()> {
    build().map(|_| ())
}

/// `localhost/nodepulse:<version>`.
pub fn tag() -> String {
    format!("{IMAGE}:{}", dist::VERSION)
}

/// Builds the binary and the image; returns the tag.
pub fn build() -> Result<String> {
    let start = Instant::now();
    if !util::succeeds(Command::new("podman").arg("--version")) {
        bail!("podman is not installed: run `cargo xtask setup` (as root)");
    }
    println!("[1/3] static binary");
    let binary = dist::static_binary()?;

    println!("[2/3] build context");
    let context = context_dir(&binary)?;

    let tag = tag();
    println!("[3/3] podman build -> {tag}");
    let previous = image_id(&tag);
    let root = util::workspace_root();
    util::run(
        Command::new("podman")
            .arg("build")
            .arg("--file")
            .arg(root.join("deploy/container/Containerfile"))
            .args(["--build-arg", &format!("VERSION={}", dist::VERSION)])
            .args(["--build-arg", &format!("REVISION={}", dist::revision())])
            .args(["--build-arg", &format!("CREATED={}", created())])
            .args(["--tag", &tag])
            .arg(&context),
    )?;
    // The image this build replaced would stay behind untagged: remove it (only it).
    if let Some(old) = previous.filter(|old| image_id(&tag).as_ref() != Some(old)) {
        let _ = util::succeeds(Command::new("podman").args(["image", "rm", &old]));
    }
    let size = util::stdout_of(Command::new("podman").args([
        "image",
        "inspect",
        "--format",
        "{{.Size}}",
        &tag,
    ]))
    .and_then(|s| s.trim().parse::<u64>().ok())
    .context("podman image inspect gave no size")?;
    println!(
        "image {tag}: {:.1} MiB, built in {}",
        size as f64 / (1 << 20) as f64,
        util::fmt_duration(start.elapsed())
    );
    Ok(tag)
}

fn image_id(tag: &str) -> Option<String> {
    util::stdout_of(Command::new("podman").args(["image", "inspect", "--format", "{{.Id}}", tag]))
        .map(|s| s.trim().to_owned())
}

/// A directory holding exactly what the Containerfile copies.
fn context_dir(binary: &std::path::Path) -> Result<PathBuf> {
    let dir = util::target_dir().join("image-context");
    if dir.exists() {
        std::fs::remove_dir_all(&dir)?;
    }
    std::fs::create_dir_all(&dir)?;
    std::fs::copy(binary, dir.join("nodepulse"))?;
    std::fs::copy(
        util::workspace_root().join("deploy/nodepulse.toml"),
        dir.join("nodepulse.toml"),
    )?;
    std::fs::copy(CA_BUNDLE, dir.join("ca-certificates.crt")).with_context(|| {
        format!("cannot copy {CA_BUNDLE}: install Debian's ca-certificates package")
    })?;
    Ok(dir)
}

/// Now, RFC 3339 in UTC, for the image's `created` label.
fn created() -> String {
    util::stdout_of(Command::new("date").args(["-u", "+%Y-%m-%dT%H:%M:%SZ"]))
        .map(|s| s.trim().to_owned())
        .unwrap_or_default()
}
