//! Fuzz targets: every parser of outside input as a function of raw bytes that must not
//! panic (an error is fine, and expected for most inputs), with the valid examples its
//! fuzzing starts from. Two drivers run them: libFuzzer through the cargo-fuzz crate in
//! `fuzz/` (`cargo xtask fuzz`, nightly, coverage-guided) and the seeded mutation tests
//! in `fuzz_inputs.rs` (stable, in the ordinary suite).

mod endpoints;
mod sysfs;

use std::{io, path::Path};

pub use endpoints::exchange as http_exchange;

/// One fuzz target.
pub struct Target {
    /// The name of its cargo-fuzz target (`fuzz/fuzz_targets/<name>.rs`).
    pub name: &'static str,
    /// Valid inputs to start from.
    pub seeds: fn() -> Vec<Vec<u8>>,
    /// Parses one input; panics only on a defect.
    pub run: fn(&[u8]),
}

/// Every target, one per kind of outside input.
pub const TARGETS: &[Target] = &[
    Target {
        name: "configuration",
        seeds: configuration_seeds,
        run: configuration,
    },
    Target {
        name: "csv_series",
        seeds: csv_seeds,
        run: csv_series,
    },
    Target {
        name: "recordings",
        seeds: recording_seeds,
        run: recordings,
    },
    Target {
        name: "qemu_cmdline",
        seeds: qemu_seeds,
        run: qemu_cmdline,
    },
    Target {
        name: "libvirt_xml",
        seeds: libvirt_seeds,
        run: libvirt_xml,
    },
    Target {
        name: "mounts_environ",
        seeds: mounts_seeds,
        run: mounts_environ,
    },
    Target {
        name: "names",
        seeds: names_seeds,
        run: names,
    },
    Target {
        name: "otlp_answers",
        seeds: crate::export::otlp::transport::answer_seeds,
        run: otlp_answers,
    },
    Target {
        name: "http_requests",
        seeds: endpoints::seeds,
        run: endpoints::http_requests,
    },
    Target {
        name: "sysfs_trees",
        seeds: sysfs::seeds,
        run: sysfs::trees,
    },
];

/// The target named `name`.
pub fn target(name: &str) -> &'static Target {
    TARGETS
        .iter()
        .find(|t| t.name == name)
        .unwrap_or_else(|| panic!("no fuzz target named {name}"))
}

/// Writes the seeds of `name` into `dir` (a libFuzzer corpus), as `seed-<n>`.
pub fn write_seeds(name: &str, dir: &Path) -> io::Result<()> {
    std::fs::create_dir_all(dir)?;
    for (i, seed) in (target(name).seeds)().iter().enumerate() {
        std::fs::write(dir.join(format!("seed-{i}")), seed)?;
    }
    Ok(())
}

/// The cargo-fuzz targets' initialisation: seeds the corpus directory named by
/// `NODEPULSE_FUZZ_SEEDS_TO`, when set (`cargo xtask fuzz` sets it).
pub fn init(name: &str) {
    if let Some(dir) = std::env::var_os("NODEPULSE_FUZZ_SEEDS_TO") {
        write_seeds(name, Path::new(&dir)).expect("writing the fuzz seeds");
    }
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn seeds(list: &[&[u8]]) -> Vec<Vec<u8>> {
    list.iter().map(|s| s.to_vec()).collect()
}

fn configuration_seeds() -> Vec<Vec<u8>> {
    seeds(&[
        include_bytes!("../../../deploy/nodepulse.toml"),
        b"[prometheus]\nenabled = true\nlisten = \"127.0.0.1:9464\"\n[health]\nenabled = true\n",
        b"[[actions.rules]]\nname = \"r\"\nfamily = \"block.io.latency\"\nprogram = [\"/bin/true\"]\ntimeout = \"5s\"\n",
        b"[detect]\nfamilies = [\"block.io.latency\"]\nmin_shift = { \"block.io.latency\" = \"1ms\" }\n",
        b"[agent]\ninterval = \"10s\"\nnode_name = \"n\"\n[otlp]\nenabled = true\nendpoint = \"http://127.0.0.1:4317\"\n",
    ])
}

fn configuration(b: &[u8]) {
    let _ = crate::config::Config::parse(&text(b), "fuzz.toml");
}

fn csv_seeds() -> Vec<Vec<u8>> {
    seeds(&[
        b"timestamp,value\n1,2\n2,3\n3,2.5\n4,100\n",
        b"2026-01-01T00:00:00Z,1\n2026-01-01T00:00:01Z,1e3\n# comment\n\n",
    ])
}

fn csv_series(b: &[u8]) {
    let config = crate::detect::DetectConfig::default();
    let _ = crate::detect::replay::replay_csv("f.csv", b, &config);
}

fn recording_seeds() -> Vec<Vec<u8>> {
    seeds(&[
        br#"{"time":"2026-11-26T23:59:10Z","interval_s":10.0,"node":"n","series":[{"family":"block.io.latency","labels":{"device":"sda","op":"read"},"sum_ns":100,"histogram":{"zero_count":0,"offset":100,"counts":[1,2,3]}}]}"#,
    ])
}

fn recordings(b: &[u8]) {
    let config = crate::detect::DetectConfig::default();
    let _ = crate::detect::replay::replay_recording("f.jsonl", b, &config);
}

fn qemu_seeds() -> Vec<Vec<u8>> {
    seeds(&[
        b"qemu-system-x86_64\0-name\0guest=instance-0000002a,debug-threads=on\0-uuid\x000f0e1d2c-3b4a-5968-7a8b-9c0d1e2f3a4b\0-smp\x004\0",
        b"/usr/bin/qemu-kvm\0-name\0vm1\0",
    ])
}

/// `/proc/<pid>/cmdline`: NUL-separated arguments.
fn qemu_cmdline(b: &[u8]) {
    let args: Vec<String> = b
        .split(|c| *c == 0)
        .map(|a| String::from_utf8_lossy(a).into_owned())
        .collect();
    let _ = crate::attribution::vms::parse_qemu_cmdline(&args);
}

fn libvirt_seeds() -> Vec<Vec<u8>> {
    seeds(&[
        br#"<domain type="kvm"><name>instance-0000002a</name><uuid>0f0e1d2c-3b4a-5968-7a8b-9c0d1e2f3a4b</uuid><metadata><nova:instance xmlns:nova="http://openstack.org/xmlns/libvirt/nova/1.1"><nova:name>web-1</nova:name><nova:flavor name="m1.small"/><nova:owner><nova:project uuid="p">proj</nova:project></nova:owner></nova:instance></metadata></domain>"#,
    ])
}

fn libvirt_xml(b: &[u8]) {
    let _ = crate::attribution::vms::parse_domain_xml(&text(b));
}

fn mounts_seeds() -> Vec<Vec<u8>> {
    seeds(&[
        b"cgroup2 /sys/fs/cgroup cgroup2 rw,nosuid 0 0\ncgroup /sys/fs/cgroup/cpu,cpuacct cgroup rw,cpu,cpuacct 0 0\ncgroup /sys/fs/cgroup/blkio cgroup rw,blkio 0 0\n",
        b"A=1\0NODEPULSE_ACTION_RUN=abc\0NODEPULSE_ACTION_AGENT=1:2\0",
    ])
}

/// `/proc/mounts` (cgroup hierarchies) and `/proc/<pid>/environ` (action markers).
fn mounts_environ(b: &[u8]) {
    use crate::attribution::{
        CgroupMode,
        cgroups::{find_hierarchy, find_io_hierarchy},
    };
    let t = text(b);
    for mode in [CgroupMode::Auto, CgroupMode::V2, CgroupMode::V1Cpu] {
        let _ = find_hierarchy(&t, mode);
    }
    let _ = find_io_hierarchy(&t);
    let env = crate::actions::sweep::parse_environ(b);
    if let Some(a) = env.get(crate::actions::sweep::AGENT_VAR) {
        let _ = crate::actions::sweep::agent_alive(a);
    }
}

fn names_seeds() -> Vec<Vec<u8>> {
    seeds(&[b"vm-\xe2\x80\xaeexe", b"plain-name", b"\x1b[31mX\x1b[0m"])
}

/// Names from hosts and operators, as shown to people: bounded and with nothing unsafe.
fn names(b: &[u8]) {
    use crate::util::text;
    let t = self::text(b);
    let bounded = text::bounded(&t);
    assert!(bounded.chars().count() <= text::MAX_LABEL_CHARS);
    assert!(!text::escape(&t).chars().any(text::is_unsafe));
}

/// A collector's answers, every parser of them; the errors they make are short.
fn otlp_answers(b: &[u8]) {
    for error in crate::export::otlp::transport::answer_errors(b) {
        // The collector's text is cut to 300 characters after a short prefix naming the
        // status and the endpoint.
        assert!(!error.trim().is_empty());
        assert!(
            error.chars().count() <= 400,
            "{} chars",
            error.chars().count()
        );
    }
}
