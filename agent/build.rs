//! Builds the kernel programs (`agent-ebpf`) for the BPF target with the nightly
//! toolchain and `bpf-linker`; `cargo xtask setup` installs both.
//!
//! The kernel programs do not depend on how the agent is built (they are always built
//! in release for the BPF target), yet every build of the agent (debug, release, the
//! static musl binary, clippy, the upgrade test's feature) runs this script with an
//! `OUT_DIR` of its own, and aya-build keeps its cargo target directory there: the
//! same programs were compiled four or five times in a CI run, about a minute each.
//! So they are built in one directory per feature set under the workspace's target
//! directory, where cargo's own fingerprints make every build after the first a no-op,
//! and the object is copied into this build's `OUT_DIR`.
use std::path::{Path, PathBuf};

use anyhow::Context as _;

/// The object's file name, in `OUT_DIR` (see `probes/mod.rs`).
const OBJECT: &str = "agent-ebpf";

fn main() -> anyhow::Result<()> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../agent-ebpf");
    let root = root.to_str().expect("workspace path is UTF-8");
    // The upgrade test's build: another map layout (see agent-ebpf's features).
    let features: &[&str] = if std::env::var_os("CARGO_FEATURE_TEST_UPGRADE_LAYOUT").is_some() {
        &["test-upgrade-layout"]
    } else {
        &[]
    };
    let out_dir = PathBuf::from(std::env::var_os("OUT_DIR").context("OUT_DIR not set")?);
    let shared = shared_dir(&out_dir, features);
    std::fs::create_dir_all(&shared).with_context(|| format!("creating {}", shared.display()))?;
    // Two builds of the agent at once (two cargo commands) would otherwise copy the
    // object while the other writes it.
    let lock = std::fs::File::create(shared.join(".lock"))?;
    lock.lock()
        .with_context(|| format!("locking {}", shared.display()))?;
    // SAFETY: the build script is single-threaded here; aya-build reads OUT_DIR to
    // place its target directory and the object.
    unsafe { std::env::set_var("OUT_DIR", &shared) };
    aya_build::build_ebpf(
        [aya_build::Package {
            name: "agent-ebpf",
            root_dir: root,
            features,
            ..Default::default()
        }],
        aya_build::Toolchain::Nightly,
    )?;
    let (from, to) = (shared.join(OBJECT), out_dir.join(OBJECT));
    std::fs::copy(&from, &to)
        .with_context(|| format!("copying {} to {}", from.display(), to.display()))?;
    drop(lock);
    Ok(())
}

/// `<target dir>/ebpf/<features>`: the target directory is the outermost ancestor of
/// `OUT_DIR` that cargo marked with `CACHEDIR.TAG` (it marks a cross-compilation's
/// `<target dir>/<triple>` too); `OUT_DIR` itself when none is.
fn shared_dir(out_dir: &Path, features: &[&str]) -> PathBuf {
    let name = if features.is_empty() {
        "default".to_owned()
    } else {
        features.join("+")
    };
    out_dir
        .ancestors()
        .filter(|dir| dir.join("CACHEDIR.TAG").is_file())
        .last()
        .unwrap_or(out_dir)
        .join("ebpf")
        .join(name)
}
