//! The fuzz targets (`crate::fuzz`) on stable, fed mutated inputs: none may panic (an
//! error is fine, and expected for most). Inputs start from the targets' seeds and are
//! mutated by byte
//! flips, insertions, deletions, chunk duplication and splicing in hostile tokens
//! (huge numbers, NaN, NULs, deep nesting, invalid UTF-8), with a fixed seed per
//! target so a failure replays.
//!
//! `cargo test -p agent --lib fuzz_inputs` runs 2,000 inputs per target (seconds; 200
//! for the sysfs, Ceph and cgroup trees, each input a tree of files);
//! `NODEPULSE_FUZZ_ITERS=200000 cargo test --release -p agent --lib fuzz_inputs` is the
//! longer run. `NODEPULSE_FUZZ_SEED` changes the seed. Coverage-guided fuzzing of the
//! same targets is `cargo xtask fuzz` (libFuzzer, nightly).

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

/// [`fuzz`] on the target named `name`.
fn fuzz_target(target: u64, name: &str, n: usize) {
    let t = crate::fuzz::target(name);
    let seeds = (t.seeds)();
    let seeds: Vec<&[u8]> = seeds.iter().map(Vec::as_slice).collect();
    fuzz_n(target, &seeds, n, t.run);
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

#[test]
fn configuration() {
    fuzz_target(1, "configuration", iterations());
}

#[test]
fn csv_series() {
    fuzz_target(2, "csv_series", iterations());
}

#[test]
fn recordings() {
    fuzz_target(3, "recordings", iterations());
}

#[test]
fn qemu_command_lines() {
    fuzz_target(4, "qemu_cmdline", iterations());
}

#[test]
fn libvirt_domain_xml() {
    fuzz_target(5, "libvirt_xml", iterations());
}

#[test]
fn mounts_and_environments() {
    fuzz_target(6, "mounts_environ", iterations());
}

#[test]
fn names_for_people() {
    fuzz_target(7, "names", iterations());
}

#[test]
fn collector_answers() {
    fuzz_target(8, "otlp_answers", iterations());
}

#[test]
fn http_requests() {
    let t = crate::fuzz::target("http_requests");
    let seeds = (t.seeds)();
    let seeds: Vec<&[u8]> = seeds.iter().map(Vec::as_slice).collect();
    // Answers by their first status digit ('-' for none).
    let tally = std::sync::Mutex::new(std::collections::BTreeMap::<char, usize>::new());
    fuzz(9, &seeds, |b| {
        (t.run)(b);
        let answer = crate::fuzz::http_exchange(b);
        let class = answer.get(9).map_or('-', |c| *c as char);
        *tally.lock().unwrap().entry(class).or_default() += 1;
    });
    // The mutations reach both the parser's refusals and the handlers.
    let tally = tally.into_inner().unwrap();
    eprintln!("http answers by status class: {tally:?}");
    assert!(tally.get(&'2').is_some_and(|n| *n > 0), "{tally:?}");
    assert!(tally.get(&'4').is_some_and(|n| *n > 0), "{tally:?}");
    // Both endpoints still answer after all of it.
    for path in ["/metrics", "/healthz"] {
        let request = format!("GET {path} HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n");
        // The exchange takes turns between the two endpoints: one of each.
        let answers = [
            crate::fuzz::http_exchange(request.as_bytes()),
            crate::fuzz::http_exchange(request.as_bytes()),
        ];
        assert!(
            answers.iter().any(|a| a.starts_with(b"HTTP/1.1 200")),
            "{path}: {:?}",
            answers.map(|a| String::from_utf8_lossy(&a).into_owned())
        );
    }
}

#[test]
fn sysfs_and_ceph_trees() {
    // Each input writes files and walks the trees (milliseconds): a tenth of the count.
    fuzz_target(10, "sysfs_trees", iterations() / 10);
}
