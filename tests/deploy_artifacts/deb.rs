//! The Debian package: inspected, installed, verified, run as its unit runs it, purged.

use std::{
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use super::{VERSION, output, wait_ready};
use crate::common::{self, deploy::repo};

fn package() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(|d| repo().join(d))
        .unwrap_or_else(|| repo().join("target"));
    let deb = target.join(format!("debian/nodepulse_{VERSION}_amd64.deb"));
    assert!(
        deb.is_file(),
        "{} is missing: run `cargo xtask deb` (cargo xtask test builds it first)",
        deb.display()
    );
    deb
}

fn installed() -> bool {
    output(common::tool("dpkg-query").args(["-W", "-f=${Status}", "nodepulse"]))
        .stdout
        .starts_with(b"install ok")
}

/// Purges the package when the test ends, however it ends.
struct Installed;

impl Drop for Installed {
    fn drop(&mut self) {
        let _ = common::tool("dpkg").args(["--purge", "nodepulse"]).output();
    }
}

const UNIT: &str = "/lib/systemd/system/nodepulse.service";
const CONFIG: &str = "/etc/nodepulse/nodepulse.toml";

#[test]
fn the_debian_package_installs_verifies_runs_and_purges() {
    require_root!();
    let deb = package();
    assert!(
        !installed(),
        "a nodepulse package is already installed on this machine; this test installs and \
         purges its own: remove it first (dpkg --purge nodepulse)"
    );
    for absent in ["/etc/nodepulse", "/var/lib/nodepulse"] {
        assert!(
            !Path::new(absent).exists(),
            "{absent} exists before the install"
        );
    }
    inspect(&deb);

    let _purge = Installed;
    common::run(common::tool("dpkg").arg("--install").arg(&deb));
    assert!(installed());
    check_installed_files();
    check_unit();
    run_as_the_unit();

    common::run(common::tool("dpkg").args(["--purge", "nodepulse"]));
    assert!(!installed());
    for (what, name) in [("passwd", "nodepulse"), ("group", "nodepulse")] {
        let entry = output(Command::new("getent").args([what, name]));
        assert!(entry.stdout.is_empty(), "{what} {name} left after purge");
    }
    for gone in [
        "/usr/bin/nodepulse",
        UNIT,
        "/etc/nodepulse",
        "/var/lib/nodepulse",
    ] {
        assert!(!Path::new(gone).exists(), "{gone} left after purge");
    }
}

/// `dpkg-deb --info` and `--contents`: fields, maintainer scripts, files and modes.
fn inspect(deb: &Path) {
    let info = common::run(common::tool("dpkg-deb").arg("--info").arg(deb));
    for field in [
        "Package: nodepulse",
        &format!("Version: {VERSION}"),
        "Architecture: amd64",
        "Depends: passwd",
    ] {
        assert!(info.contains(field), "{field}\n{info}");
    }
    for file in ["postinst", "prerm", "postrm", "conffiles"] {
        assert!(info.contains(file), "{file}\n{info}");
    }
    let contents = common::run(common::tool("dpkg-deb").arg("--contents").arg(deb));
    for (mode, path) in [
        ("-rwxr-xr-x root/root", "./usr/bin/nodepulse"),
        ("-rw-r----- root/root", "./etc/nodepulse/nodepulse.toml"),
        (
            "-rw-r--r-- root/root",
            "./lib/systemd/system/nodepulse.service",
        ),
        (
            "-rw-r--r-- root/root",
            "./usr/share/doc/nodepulse/nodepulse.toml.example",
        ),
    ] {
        assert!(
            contents
                .lines()
                .any(|l| l.starts_with(mode) && l.ends_with(path)),
            "{mode} {path} in\n{contents}"
        );
    }
}

/// The system user, the configuration's owner and mode, and a configuration that parses.
fn check_installed_files() {
    let user = common::run(Command::new("getent").args(["passwd", "nodepulse"]));
    assert!(
        user.contains(":/var/lib/nodepulse:/usr/sbin/nologin"),
        "{user}"
    );
    let uid: u32 = user.split(':').nth(2).unwrap().parse().unwrap();
    assert!(uid > 0 && uid < 1000, "a system user: {user}");
    let stat = common::run(Command::new("stat").args(["-c", "%a %U:%G", CONFIG]));
    assert_eq!(stat.trim(), "640 root:nodepulse");
    common::run(Command::new("/usr/bin/nodepulse").args([
        "check",
        "--config-only",
        "--config",
        CONFIG,
    ]));
}

/// `systemd-analyze verify`, and the sandbox's exposure score: OK or better.
fn check_unit() {
    common::run(common::tool("systemd-analyze").args(["verify", UNIT]));
    let security =
        common::run(common::tool("systemd-analyze").args(["security", "--offline=true", UNIT]));
    let overall = security
        .lines()
        .find(|l| l.contains("Overall exposure level"))
        .unwrap_or_else(|| panic!("{security}"));
    let score: f64 = overall
        .split(':')
        .nth(1)
        .and_then(|s| s.split_whitespace().next())
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no score in {overall}"));
    use std::io::Write as _;
    let _ = writeln!(
        std::io::stderr(),
        "MEASURED systemd-analyze security: {}",
        overall.trim()
    );
    assert!(
        overall.contains(" OK") || overall.contains(" SAFE"),
        "exposure above OK: {overall}\n{security}"
    );
    assert!(score < 4.0, "{overall}");
}

/// The agent as the unit runs it, without systemd (not PID 1 on every machine, e.g.
/// CI's): the unit's user, its ambient capabilities as the only ones, no new
/// privileges. It must attach and become ready, pin its probes in the directory the
/// unit's `ExecStartPre` prepares (in a bpffs of the test's own), and adopt them when
/// started again.
fn run_as_the_unit() {
    let unit = std::fs::read_to_string(UNIT).unwrap();
    let caps: Vec<String> = unit
        .lines()
        .find_map(|l| l.strip_prefix("AmbientCapabilities="))
        .expect("the unit grants ambient capabilities")
        .split_whitespace()
        .map(|c| format!("+{}", c.trim_start_matches("CAP_").to_lowercase()))
        .collect();
    let caps = format!("-all,{}", caps.join(","));

    // The unit's ExecStartPre, against the test's bpffs instead of /sys/fs/bpf.
    let bpffs = common::Bpffs::mount();
    let prepare = unit
        .lines()
        .find_map(|l| l.strip_prefix("ExecStartPre=+"))
        .expect("the unit prepares the pin directory with full privileges")
        .replace("/sys/fs/bpf", &bpffs.path.display().to_string());
    let mut words = prepare.split_whitespace();
    common::run(Command::new(words.next().unwrap()).args(words));
    let read_write = unit
        .lines()
        .find_map(|l| l.strip_prefix("ReadWritePaths="))
        .expect("the unit lets it write its pin directory");
    assert_eq!(read_write, "/sys/fs/bpf/nodepulse");
    // The package's configuration with bpffs pointed there, readable by the user.
    let dir = tempfile::tempdir().unwrap();
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let mut config: toml::Table = std::fs::read_to_string(CONFIG).unwrap().parse().unwrap();
    assert_eq!(config["agent"]["keep_attached"].as_bool(), Some(true));
    config["agent"]
        .as_table_mut()
        .unwrap()
        .insert("bpffs".into(), bpffs.path.display().to_string().into());
    let copy = dir.path().join("nodepulse.toml");
    std::fs::write(&copy, toml::to_string(&config).unwrap()).unwrap();
    std::fs::set_permissions(&copy, std::fs::Permissions::from_mode(0o644)).unwrap();

    let mut logs = Vec::new();
    for _ in 0..2 {
        let agent = common::tool("setpriv")
            .args(["--reuid=nodepulse", "--regid=nodepulse", "--init-groups"])
            .arg(format!("--inh-caps={caps}"))
            .arg(format!("--ambient-caps={caps}"))
            .arg(format!("--bounding-set={caps}"))
            .arg("--no-new-privs")
            .arg("/usr/bin/nodepulse")
            .args(["run", "--config"])
            .arg(&copy)
            .args(["--interval", "1s", "--reports", "3"])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let ready = wait_ready(&toml_listen(CONFIG, "health"), Duration::from_secs(15));
        let out = agent.wait_with_output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(out.status.success(), "{stderr}");
        assert_eq!(
            ready.as_ref().map(|r| r.0),
            Some(200),
            "{ready:?}\n{stderr}"
        );
        logs.push(stderr);
    }
    assert!(logs[0].contains("probes pinned"), "{}", logs[0]);
    assert!(
        logs[1].contains("continuing the kernel's counts from pinned maps")
            && logs[1].contains("previous run exited cleanly"),
        "{}",
        logs[1]
    );
}

/// `[table] listen` of a configuration file.
fn toml_listen(path: &str, table: &str) -> String {
    let config: toml::Table = std::fs::read_to_string(path).unwrap().parse().unwrap();
    config[table]["listen"].as_str().unwrap().to_owned()
}
