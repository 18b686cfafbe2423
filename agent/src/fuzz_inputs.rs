//! Every parser of outside input, fed mutated inputs: none may panic (an error is fine,
//! and expected for most). Inputs start from valid examples and are mutated by byte
//! flips, insertions, deletions, chunk duplication and splicing in hostile tokens
//! (huge numbers, NaN, NULs, deep nesting, invalid UTF-8), with a fixed seed per
//! target so a failure replays.
//!
//! `cargo test -p agent --lib fuzz_inputs` runs 2,000 inputs per target (seconds);
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
    let mut rng = Rng::new(seed(target));
    let started = std::time::Instant::now();
    let n = iterations();
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
        let _ = crate::detect::replay::replay_csv("f.csv", b, 10, &config);
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
