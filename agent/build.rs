//! Builds the kernel programs (`agent-ebpf`) for the BPF target with the nightly
//! toolchain and `bpf-linker`; `cargo xtask setup` installs both.
use std::path::Path;

fn main() -> anyhow::Result<()> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../agent-ebpf");
    let root = root.to_str().expect("workspace path is UTF-8");
    // The upgrade test's build: another map layout (see agent-ebpf's features).
    let features: &[&str] = if std::env::var_os("CARGO_FEATURE_TEST_UPGRADE_LAYOUT").is_some() {
        &["test-upgrade-layout"]
    } else {
        &[]
    };
    aya_build::build_ebpf(
        [aya_build::Package {
            name: "agent-ebpf",
            root_dir: root,
            features,
            ..Default::default()
        }],
        aya_build::Toolchain::Nightly,
    )
}
