//! What the image and the Debian package ship: one static binary, built for the musl
//! target so that it needs no libc from the host or the image (the image is `FROM
//! scratch`, the package installs on any Debian release), and resolves names with
//! musl's own resolver from `/etc/resolv.conf`.

use std::path::PathBuf;

use anyhow::{Result, bail};

use crate::util;

pub const MUSL_TARGET: &str = "x86_64-unknown-linux-musl";

/// The workspace version, which the image tag and the package version carry.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// Builds `nodepulse` for [`MUSL_TARGET`] in the release profile and returns the path
/// of a stripped copy (`target/dist/nodepulse`).
pub fn static_binary() -> Result<PathBuf> {
    println!("building the static nodepulse binary ({MUSL_TARGET}, release)");
    util::run(util::cargo().args([
        "build",
        "--release",
        "--locked",
        "--package",
        "agent",
        "--bin",
        "nodepulse",
        "--target",
        MUSL_TARGET,
    ]))?;
    let binary = util::target_dir()
        .join(MUSL_TARGET)
        .join("release")
        .join("nodepulse");
    // The symbol table only matters to debuggers; the shipped copy goes without
    // (about a fifth of the size).
    let shipped = util::target_dir().join("dist").join("nodepulse");
    std::fs::create_dir_all(shipped.parent().expect("a directory"))?;
    std::fs::copy(&binary, &shipped)?;
    util::run(
        std::process::Command::new("strip")
            .arg("--strip-all")
            .arg(&shipped),
    )?;
    let binary = shipped;
    let bytes = std::fs::read(&binary)?;
    if has_interpreter(&bytes) {
        bail!(
            "{} is dynamically linked (it names a program interpreter); the image and the \
             package need a static binary",
            binary.display()
        );
    }
    println!(
        "static binary: {} ({:.1} MiB)",
        util::relative_to_cwd(&binary).display(),
        bytes.len() as f64 / (1 << 20) as f64
    );
    Ok(binary)
}

/// The commit being packaged, for the image's revision label (`unknown` outside git).
pub fn revision() -> String {
    util::stdout_of(
        std::process::Command::new("git")
            .current_dir(util::workspace_root())
            .args(["rev-parse", "HEAD"]),
    )
    .map(|s| s.trim().to_owned())
    .unwrap_or_else(|| "unknown".into())
}

/// Whether an ELF64 executable has a program interpreter (a `PT_INTERP` program
/// header): a static executable has none, so it runs without any loader or libc.
fn has_interpreter(elf: &[u8]) -> bool {
    const PT_INTERP: u32 = 3;
    let u16_at = |o: usize| {
        elf.get(o..o + 2)
            .map(|b| u16::from_le_bytes([b[0], b[1]]) as usize)
    };
    let u32_at = |o: usize| {
        elf.get(o..o + 4)
            .map(|b| u32::from_le_bytes(b.try_into().unwrap()))
    };
    let u64_at = |o: usize| {
        elf.get(o..o + 8)
            .map(|b| u64::from_le_bytes(b.try_into().unwrap()) as usize)
    };
    let (Some(phoff), Some(size), Some(count)) = (u64_at(0x20), u16_at(0x36), u16_at(0x38)) else {
        return true;
    };
    (0..count).any(|i| u32_at(phoff + i * size) == Some(PT_INTERP))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_dynamic_executable_has_an_interpreter() {
        // The test binary itself is linked against glibc dynamically.
        let me = std::fs::read(std::env::current_exe().unwrap()).unwrap();
        assert!(has_interpreter(&me));
    }

    #[test]
    fn program_headers_without_interp_mean_static() {
        // ELF64 header with two program headers (PT_LOAD = 1, PT_NOTE = 4) at 64.
        let mut elf = vec![0u8; 64 + 2 * 56];
        elf[0x20..0x28].copy_from_slice(&64u64.to_le_bytes());
        elf[0x36..0x38].copy_from_slice(&56u16.to_le_bytes());
        elf[0x38..0x3a].copy_from_slice(&2u16.to_le_bytes());
        elf[64..68].copy_from_slice(&1u32.to_le_bytes());
        elf[120..124].copy_from_slice(&4u32.to_le_bytes());
        assert!(!has_interpreter(&elf));
        elf[120..124].copy_from_slice(&3u32.to_le_bytes());
        assert!(has_interpreter(&elf));
    }
}
