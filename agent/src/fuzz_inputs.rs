//! Every parser of outside input, fed mutated inputs: none may panic (an error is fine,
//! and expected for most). Inputs start from valid examples and are mutated by byte
//! flips, insertions, deletions, chunk duplication and splicing in hostile tokens
//! (huge numbers, NaN, NULs, deep nesting, invalid UTF-8), with a fixed seed per
//! target so a failure replays.
//!
//! `cargo test -p agent --lib fuzz_inputs` runs 2,000 inputs per target (seconds; 200
//! for the sysfs, Ceph and cgroup trees, each input a tree of files);
//! `NODEPULSE_FUZZ_ITERS=200000 cargo test --release -p agent --lib fuzz_inputs` is the
//! longer run. `NODEPULSE_FUZZ_SEED` changes the seed.

use crate::detect::eval::Rng;

const HOSTILE: &[&[u8]] = &[
    b"NaN",
    b"inf",
    b"-inf",
    b"1e309",
    b"-1",
    b"18446744073709551616",
    b"\0",
    b"\xff\xfe",
    b"\n",
    b"\r\n",
    b",",
    b"=",
    b"\"",
    b"[[[[[[[[[[[[[[[[[[[[",
    b"{{{{{{{{{{{{{{{{",
    b"]]}}",
    b"<",
    b"<!DOCTYPE x [<!ENTITY a \"aaaa\">]>",
    b"&a;",
    b"</",
    b"\xe2\x80\xae",
    b"\x1b[31m",
    b"-name",
    b"guest=",
    b"-uuid",
    b"0:0",
    b"cgroup2",
    b"0.0.0.0:0",
];

fn iterations() -> usize {
    std::env::var("NODEPULSE_FUZZ_ITERS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2000)
}

fn seed(target: u64) -> u64 {
    std::env::var("NODEPULSE_FUZZ_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0x5eed)
        ^ target
}

fn below(rng: &mut Rng, n: usize) -> usize {
    (rng.next_u64() % n.max(1) as u64) as usize
}

/// One mutation of `input`, a few edits deep.
fn mutate(rng: &mut Rng, input: &[u8]) -> Vec<u8> {
    let mut out = input.to_vec();
    for _ in 0..1 + below(rng, 4) {
        let at = below(rng, out.len() + 1);
        match below(rng, 6) {
            0 if !out.is_empty() => {
                let i = below(rng, out.len());
                out[i] ^= 1 << below(rng, 8);
            }
            1 => out.insert(at, rng.next_u64() as u8),
            2 if at < out.len() => {
                let end = (at + 1 + below(rng, 16)).min(out.len());
                out.drain(at..end);
            }
            3 if at < out.len() => {
                let end = (at + 1 + below(rng, 64)).min(out.len());
                let chunk = out[at..end].to_vec();
                for _ in 0..1 + below(rng, 8) {
                    out.splice(at..at, chunk.iter().copied());
                }
            }
            _ => {
                let token = HOSTILE[below(rng, HOSTILE.len())];
                out.splice(at..at, token.iter().copied());
            }
        }
    }
    out
}

/// Runs `parse` over the seeds and their mutations; a panic fails the test with the
/// input that caused it.
fn fuzz(target: u64, seeds: &[&[u8]], parse: impl Fn(&[u8])) {
    fuzz_n(target, seeds, iterations(), parse);
}

/// [`fuzz`] with `n` inputs, for targets whose inputs are costly (file trees).
fn fuzz_n(target: u64, seeds: &[&[u8]], n: usize, parse: impl Fn(&[u8])) {
    let mut rng = Rng::new(seed(target));
    let started = std::time::Instant::now();
    for s in seeds {
        parse(s);
    }
    for _ in 0..n {
        let base = seeds[below(&mut rng, seeds.len())];
        let input = mutate(&mut rng, base);
        let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| parse(&input)));
        assert!(
            outcome.is_ok(),
            "target {target} panicked on {:?}",
            String::from_utf8_lossy(&input)
        );
    }
    eprintln!(
        "fuzz target {target}: {n} inputs in {:?}",
        started.elapsed()
    );
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

#[test]
fn configuration() {
    let example = include_bytes!("../../deploy/nodepulse.toml");
    let seeds: &[&[u8]] = &[
        example,
        b"[prometheus]\nenabled = true\nlisten = \"127.0.0.1:9464\"\n[health]\nenabled = true\n",
        b"[[actions.rules]]\nname = \"r\"\nfamily = \"block.io.latency\"\nprogram = [\"/bin/true\"]\ntimeout = \"5s\"\n",
        b"[detect]\nfamilies = [\"block.io.latency\"]\nmin_shift = { \"block.io.latency\" = \"1ms\" }\n",
        b"[agent]\ninterval = \"10s\"\nnode_name = \"n\"\n[otlp]\nenabled = true\nendpoint = \"http://127.0.0.1:4317\"\n",
    ];
    fuzz(1, seeds, |b| {
        let _ = crate::config::Config::parse(&text(b), "fuzz.toml");
    });
}

#[test]
fn csv_series() {
    let seeds: &[&[u8]] = &[
        b"timestamp,value\n1,2\n2,3\n3,2.5\n4,100\n",
        b"2026-01-01T00:00:00Z,1\n2026-01-01T00:00:01Z,1e3\n# comment\n\n",
    ];
    let config = crate::detect::DetectConfig::default();
    fuzz(2, seeds, |b| {
        let _ = crate::detect::replay::replay_csv("f.csv", b, &config);
    });
}

#[test]
fn recordings() {
    let seeds: &[&[u8]] = &[
        br#"{"time":"2026-11-26T23:59:10Z","interval_s":10.0,"node":"n","series":[{"family":"block.io.latency","labels":{"device":"sda","op":"read"},"sum_ns":100,"histogram":{"zero_count":0,"offset":100,"counts":[1,2,3]}}]}"#,
    ];
    let config = crate::detect::DetectConfig::default();
    fuzz(3, seeds, |b| {
        let _ = crate::detect::replay::replay_recording("f.jsonl", b, &config);
    });
}

#[test]
fn qemu_command_lines() {
    let seeds: &[&[u8]] = &[
        b"qemu-system-x86_64\0-name\0guest=instance-0000002a,debug-threads=on\0-uuid\x000f0e1d2c-3b4a-5968-7a8b-9c0d1e2f3a4b\0-smp\x004\0",
        b"/usr/bin/qemu-kvm\0-name\0vm1\0",
    ];
    fuzz(4, seeds, |b| {
        let args: Vec<String> = b
            .split(|c| *c == 0)
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect();
        let _ = crate::attribution::vms::parse_qemu_cmdline(&args);
    });
}

#[test]
fn libvirt_domain_xml() {
    let seeds: &[&[u8]] = &[
        br#"<domain type="kvm"><name>instance-0000002a</name><uuid>0f0e1d2c-3b4a-5968-7a8b-9c0d1e2f3a4b</uuid><metadata><nova:instance xmlns:nova="http://openstack.org/xmlns/libvirt/nova/1.1"><nova:name>web-1</nova:name><nova:flavor name="m1.small"/><nova:owner><nova:project uuid="p">proj</nova:project></nova:owner></nova:instance></metadata></domain>"#,
    ];
    fuzz(5, seeds, |b| {
        let _ = crate::attribution::vms::parse_domain_xml(&text(b));
    });
}

#[test]
fn mounts_and_environments() {
    let seeds: &[&[u8]] = &[
        b"cgroup2 /sys/fs/cgroup cgroup2 rw,nosuid 0 0\ncgroup /sys/fs/cgroup/cpu,cpuacct cgroup rw,cpu,cpuacct 0 0\ncgroup /sys/fs/cgroup/blkio cgroup rw,blkio 0 0\n",
        b"A=1\0NODEPULSE_ACTION_RUN=abc\0NODEPULSE_ACTION_AGENT=1:2\0",
    ];
    use crate::attribution::{
        CgroupMode,
        cgroups::{find_hierarchy, find_io_hierarchy},
    };
    fuzz(6, seeds, |b| {
        let t = text(b);
        for mode in [CgroupMode::Auto, CgroupMode::V2, CgroupMode::V1Cpu] {
            let _ = find_hierarchy(&t, mode);
        }
        let _ = find_io_hierarchy(&t);
        let env = crate::actions::sweep::parse_environ(b);
        if let Some(a) = env.get(crate::actions::sweep::AGENT_VAR) {
            let _ = crate::actions::sweep::agent_alive(a);
        }
    });
}

#[test]
fn names_for_people() {
    let seeds: &[&[u8]] = &[b"vm-\xe2\x80\xaeexe", b"plain-name", b"\x1b[31mX\x1b[0m"];
    fuzz(7, seeds, |b| {
        let t = text(b);
        let bounded = crate::util::text::bounded(&t);
        assert!(bounded.chars().count() <= crate::util::text::MAX_LABEL_CHARS);
        assert!(
            !crate::util::text::escape(&t)
                .chars()
                .any(crate::util::text::is_unsafe)
        );
    });
}

#[test]
fn collector_answers() {
    let seeds = crate::export::otlp::transport::answer_seeds();
    let seeds: Vec<&[u8]> = seeds.iter().map(Vec::as_slice).collect();
    fuzz(8, &seeds, |b| {
        for error in crate::export::otlp::transport::answer_errors(b) {
            // An error says what happened, briefly: the collector's text is cut to 300
            // characters after a short prefix naming the status and the endpoint.
            assert!(!error.trim().is_empty());
            assert!(
                error.chars().count() <= 400,
                "{} chars",
                error.chars().count()
            );
        }
    });
}

/// The thread serving the endpoints under fuzzing. A panic in a connection's task
/// would only close that connection (tokio catches it), so a panic hook counts them.
const ENDPOINTS_THREAD: &str = "fuzz-endpoints";
static ENDPOINT_PANICS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// The agent's real endpoints (Prometheus with a report, health) on a current-thread
/// runtime of their own, as the agent runs them; their addresses. Stopped when the
/// sender is dropped.
fn endpoints() -> (tokio::sync::oneshot::Sender<()>, Vec<std::net::SocketAddr>) {
    use crate::export::{Exporter, prometheus::PrometheusExporter};
    let (addrs_tx, addrs_rx) = std::sync::mpsc::channel();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let previous = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        if std::thread::current().name() == Some(ENDPOINTS_THREAD) {
            ENDPOINT_PANICS.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        }
        previous(info);
    }));
    let spawned = std::thread::Builder::new().name(ENDPOINTS_THREAD.into());
    spawned
        .spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            let _entered = rt.enter();
            let any = "127.0.0.1:0".parse().unwrap();
            let (mut prom, prom_addr) = PrometheusExporter::start(any).unwrap();
            prom.export(&crate::report::sample()).unwrap();
            prom.wait_rendered();
            let (health, health_addr) =
                crate::health::Health::start(any, std::time::Duration::from_secs(10)).unwrap();
            addrs_tx.send(vec![prom_addr, health_addr]).unwrap();
            let _ = rt.block_on(stopped);
            drop((prom, health));
        })
        .unwrap();
    (stop, addrs_rx.recv().unwrap())
}

/// Sends `request` on a fresh connection, closes the writing half (so a server waiting
/// for the rest of a request sees its end) and reads the answer to its end.
fn exchange(addr: std::net::SocketAddr, request: &[u8]) -> Vec<u8> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(std::time::Duration::from_secs(10)))
        .unwrap();
    // The server may answer and close before reading it all (headers too large).
    let _ = s.write_all(request);
    let _ = s.shutdown(std::net::Shutdown::Write);
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    out
}

#[test]
fn http_requests() {
    let seeds: &[&[u8]] = &[
        b"GET /metrics HTTP/1.1\r\nHost: x\r\nAccept: text/plain;version=0.0.4\r\n\r\n",
        b"GET /healthz HTTP/1.0\r\n\r\n",
        b"HEAD /readyz?verbose=1 HTTP/1.1\r\nhost: x\r\n\r\nGET /metrics HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n",
        b"POST /metrics HTTP/1.1\r\nhost: x\r\ncontent-length: 5\r\n\r\nhello",
        b"GET /healthz HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
    ];
    let (_stop, addrs) = endpoints();
    let n = std::sync::atomic::AtomicUsize::new(0);
    // Answers by their first status digit ('-' for none).
    let tally = std::sync::Mutex::new(std::collections::BTreeMap::<char, usize>::new());
    fuzz(9, seeds, |b| {
        let i = n.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let answer = exchange(addrs[i % addrs.len()], b);
        let class = answer.get(9).map_or('-', |c| *c as char);
        *tally.lock().unwrap().entry(class).or_default() += 1;
        // Nothing (the request never completed), or HTTP answers: a malformed request
        // gets a 4xx from the parser, never a dropped or garbled server.
        assert!(
            answer.is_empty() || answer.starts_with(b"HTTP/1."),
            "{:?}",
            text(&answer)
        );
    });
    // The mutations reach both the parser's refusals and the handlers.
    let tally = tally.into_inner().unwrap();
    eprintln!("http answers by status class: {tally:?}");
    assert!(tally.get(&'2').is_some_and(|n| *n > 0), "{tally:?}");
    assert!(tally.get(&'4').is_some_and(|n| *n > 0), "{tally:?}");
    assert_eq!(
        ENDPOINT_PANICS.load(std::sync::atomic::Ordering::SeqCst),
        0,
        "the endpoints panicked (see above)"
    );
    // Both endpoints still answer after all of it.
    for (addr, path) in addrs.iter().zip(["/metrics", "/healthz"]) {
        let request = format!("GET {path} HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n");
        let answer = text(&exchange(*addr, request.as_bytes()));
        assert!(answer.starts_with("HTTP/1.1 200"), "{path}: {answer}");
    }
}

/// Whether `rel` is a plain relative path (no `..`, `.`, root or NUL): where a sysfs
/// script may write.
fn plain_relative(rel: &str) -> bool {
    !rel.is_empty()
        && !rel.contains('\0')
        && std::path::Path::new(rel)
            .components()
            .all(|c| matches!(c, std::path::Component::Normal(_)))
}

/// Whether a link target stays inside the tree, counted by name from the link's own
/// directory (at `depth` below the root): relative with no more `..` than that, or an
/// absolute `/dev/…` name (the probes map those to the tree's `dev`).
fn contained_target(target: &str, depth: usize) -> bool {
    if target.contains('\0') {
        return false;
    }
    if let Some(rest) = target.strip_prefix("/dev/") {
        return !rest.split('/').any(|c| c == "..");
    }
    let mut d = depth as i64;
    for c in target.split('/') {
        match c {
            ".." => d -= 1,
            "" | "." => {}
            _ => d += 1,
        }
        if d < 0 || target.starts_with('/') {
            return false;
        }
    }
    true
}

/// Applies one line of a sysfs script to `tree`: `rel=value` writes a file,
/// `rel->target` makes a symlink. Nothing is written outside the tree (a path whose
/// real parent lies elsewhere through earlier links is skipped).
fn apply_sysfs_line(tree: &crate::attribution::fixture::Tree, root: &std::path::Path, line: &str) {
    let (rel, link, value) = match (line.split_once("->"), line.split_once('=')) {
        (Some((rel, target)), _) => (rel, true, target),
        (None, Some((rel, value))) => (rel, false, value),
        _ => return,
    };
    if !plain_relative(rel) {
        return;
    }
    let path = tree.path(rel);
    let Some(parent) = path.parent() else { return };
    // The deepest existing ancestor must really be inside the tree.
    let existing = parent.ancestors().find(|a| a.exists()).unwrap_or(root);
    if !std::fs::canonicalize(existing).is_ok_and(|real| real.starts_with(root)) {
        return;
    }
    if std::fs::create_dir_all(parent).is_err()
        || !std::fs::canonicalize(parent).is_ok_and(|real| real.starts_with(root))
    {
        return;
    }
    let _ = std::fs::remove_file(&path);
    if link {
        let depth = std::path::Path::new(rel).components().count() - 1;
        if contained_target(value, depth) {
            let _ = std::os::unix::fs::symlink(value, &path);
        }
    } else {
        let _ = std::fs::write(&path, value);
    }
}

#[test]
fn sysfs_and_ceph_trees() {
    use crate::attribution::{
        ceph,
        cgroups::CgroupNames,
        devices::DeviceNames,
        fixture::{NVME, SDB, dev, storage_node},
    };
    let nvme = format!("sys/devices/{NVME}");
    let sdb = format!("sys/devices/{SDB}");
    let seeds: Vec<Vec<u8>> = [
        format!("{nvme}/dev=259:0\n{nvme}/uevent=MAJOR=259\nMINOR=0\nDEVTYPE=disk\n"),
        format!("{nvme}/queue/rotational=0\n{sdb}/queue/rotational=1\n{nvme}/nvme0n1p2/partition=2\n"),
        "sys/devices/virtual/block/dm-0/dm/name=ceph--abc-osd--block--xyz\nsys/devices/virtual/block/dm-0/dm/uuid=LVM-Kx2aBcD\n".into(),
        format!("sys/devices/virtual/block/dm-0/slaves/sdb->../../../../{SDB}\nsys/dev/block/8:16->../../devices/{SDB}\n"),
        "ceph/osd/ceph-3/block->/dev/ceph-abc/osd-block-xyz\nceph/osd/ceph-7/block.db->/dev/mapper/x\ndev/ceph-db/db-12->../dm-2\n".into(),
        "sys/bus/rbd/devices/0->../../../devices/rbd/0\nsys/devices/rbd/0/pool=volumes\nsys/devices/rbd/0/name=v\nsys/devices/rbd/0/major=251\nsys/devices/rbd/0/minor=0\n".into(),
        "sys/dev/block/8:48->8:48\nsys/class/block/sdq->../../devices/virtual/block/sdq\nsys/devices/virtual/block/sdq/dev=65:0\n".into(),
        "cgroup/kubepods.slice/kubepods-pod1.slice/cri-containerd-ab.scope/cgroup.procs=1\ncgroup/machine.slice/machine-qemu\\x2d1\\x2dvm.scope/x=\ncgroup/loop->..\n".into(),
    ]
    .into_iter()
    .map(String::into_bytes)
    .collect();
    let seeds: Vec<&[u8]> = seeds.iter().map(Vec::as_slice).collect();
    let numbers = [
        dev(259, 0),
        dev(259, 2),
        dev(8, 16),
        dev(8, 32),
        dev(8, 48),
        dev(253, 0),
        dev(253, 2),
        dev(251, 0),
        dev(65, 0),
    ];
    // A fresh storage node now and then, so mutations pile up but do not drown it.
    let tree = std::cell::RefCell::new(storage_node());
    let inputs = std::cell::Cell::new(0usize);
    // Each input writes files and walks the trees (milliseconds): a tenth of the count.
    fuzz_n(10, &seeds, iterations() / 10, |b| {
        if inputs.replace(inputs.get() + 1) % 50 == 49 {
            *tree.borrow_mut() = storage_node();
        }
        let t = tree.borrow();
        let root = std::fs::canonicalize(t.path("")).unwrap();
        for line in text(b).lines() {
            apply_sysfs_line(&t, &root, line);
        }
        let mut names = DeviceNames::new(t.roots());
        for n in numbers {
            let _ = names.lookup(n).labels();
        }
        let _ = ceph::scan(&t.roots());
        // Cgroup directories named by whoever created them, found by inode number.
        let cgroups = t.path("cgroup");
        let mut names = CgroupNames::new(cgroups.clone());
        for dir in walkdir_ids(&cgroups) {
            let _ = names.name(dir);
        }
    });
}

/// Inode numbers (cgroup ids) of the directories under `root`, a few levels deep.
fn walkdir_ids(root: &std::path::Path) -> Vec<u64> {
    use std::os::unix::fs::MetadataExt;
    let mut ids = Vec::new();
    let mut dirs = vec![(root.to_path_buf(), 0)];
    while let Some((dir, depth)) = dirs.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            if let Ok(meta) = std::fs::symlink_metadata(&path)
                && meta.is_dir()
                && depth < 8
            {
                ids.push(meta.ino());
                dirs.push((path, depth + 1));
            }
        }
    }
    ids
}
