//! The storage network probe against real TCP traffic: three network namespaces (two
//! clients, one server) joined by veth pairs, one path plain and one shaped by `tc
//! tbf` into a standing queue, iperf3 streams on ports of two configured groups and on
//! an unwatched port. Needs root.

use crate::common;

use std::{collections::BTreeMap, process::Stdio, thread, time::Duration};

use nodepulse::{
    aggregate::ExpHistogram,
    config::Config,
    probes::{
        AttachKind, Probes,
        tcp::{
            self, FAMILY_RTT, LABEL_GROUP,
            groups::{PortGroup, PortSpec},
        },
    },
};

use common::{Workload, require_tool, run, tool};

/// A network namespace, deleted on drop (after the processes in it were killed: the
/// topology's fields drop in order).
struct Netns(String);

impl Netns {
    fn new(role: &str) -> Self {
        let name = format!("np-tcp-{role}-{}", std::process::id());
        run(tool("ip").args(["netns", "add", &name]));
        let ns = Self(name);
        ns.ip(&["link", "set", "lo", "up"]);
        ns
    }

    fn ip(&self, args: &[&str]) {
        run(tool("ip").args(["-n", &self.0]).args(args));
    }

    fn exec(&self) -> std::process::Command {
        let mut c = tool("ip");
        c.args(["netns", "exec", &self.0]);
        c
    }

    /// `RetransSegs` of this namespace's TCP stack (`/proc/net/snmp`).
    /// The largest smoothed RTT (ns) among this namespace's connections, as `ss -ti`
    /// shows it (`rtt:<srtt ms>/<rttvar ms>`).
    fn max_srtt_ns(&self) -> f64 {
        let ss = run(self.exec().args(["ss", "-Hti", "state", "established"]));
        ss.split_whitespace()
            .filter_map(|w| w.strip_prefix("rtt:"))
            .filter_map(|v| v.split('/').next()?.parse::<f64>().ok())
            .fold(0.0, f64::max)
            * 1e6
    }

    fn retrans_segs(&self) -> u64 {
        let snmp = run(self.exec().args(["cat", "/proc/net/snmp"]));
        let tcp: Vec<Vec<&str>> = snmp
            .lines()
            .filter(|l| l.starts_with("Tcp:"))
            .map(|l| l.split_whitespace().collect())
            .collect();
        let at = tcp[0].iter().position(|&f| f == "RetransSegs").unwrap();
        tcp[1][at].parse().unwrap()
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = tool("ip").args(["netns", "del", &self.0]).status();
    }
}

/// Client namespaces `fast` and `slow`, each joined to `server` by a veth pair; the
/// slow client's side sends through a 16 Mbit/s token bucket with a 100 KB queue.
/// Field order is drop order: processes first, then namespaces (their veths go too).
struct Topology {
    servers: Vec<Workload>,
    fast: Netns,
    slow: Netns,
    server: Netns,
}

const FAST_NET: &str = "10.251.1";
const SLOW_NET: &str = "10.251.2";

impl Topology {
    fn new() -> Self {
        let t = Self {
            servers: Vec::new(),
            fast: Netns::new("fast"),
            slow: Netns::new("slow"),
            server: Netns::new("srv"),
        };
        let id = std::process::id() % 100_000;
        for (client, net, tag) in [(&t.fast, FAST_NET, "f"), (&t.slow, SLOW_NET, "s")] {
            let (a, b) = (format!("np{tag}{id}a"), format!("np{tag}{id}b"));
            run(tool("ip")
                .args(["link", "add", &a, "netns", &client.0, "type", "veth"])
                .args(["peer", "name", &b, "netns", &t.server.0]));
            client.ip(&["addr", "add", &format!("{net}.1/24"), "dev", &a]);
            t.server
                .ip(&["addr", "add", &format!("{net}.2/24"), "dev", &b]);
            client.ip(&["link", "set", &a, "up"]);
            t.server.ip(&["link", "set", &b, "up"]);
            if tag == "s" {
                run(tool("tc")
                    .args(["-n", &client.0, "qdisc", "add", "dev", &a, "root", "tbf"])
                    .args(["rate", "16mbit", "burst", "16kb", "limit", "100kb"]));
            }
        }
        t
    }

    /// An iperf3 server for one client on `port`, listening once this returns.
    fn serve(&mut self, port: u16) {
        let child = self
            .server
            .exec()
            .args(["iperf3", "-s", "-1", "-p", &port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start iperf3 -s");
        self.servers.push(Workload(Some(child)));
        for _ in 0..100 {
            let ss = run(self
                .server
                .exec()
                .args(["ss", "-Hltn", &format!("sport = :{port}")]));
            if !ss.trim().is_empty() {
                return;
            }
            thread::sleep(Duration::from_millis(50));
        }
        panic!("iperf3 did not listen on port {port}");
    }

    /// An iperf3 stream from `client` to the server on `net`; `rate` as iperf3's `-b`.
    fn stream(client: &Netns, net: &str, port: u16, secs: u32, rate: &str) -> Workload {
        let child = client
            .exec()
            .args(["iperf3", "-c", &format!("{net}.2"), "-p", &port.to_string()])
            .args(["-t", &secs.to_string(), "-b", rate])
            // Cubic fills whatever queue there is (BBR, this host's default, avoids it).
            .args(["-C", "cubic"])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start iperf3 -c");
        Workload(Some(child))
    }
}

/// What the probe had recorded at one moment.
struct Snapshot {
    rtt: BTreeMap<String, ExpHistogram>,
    retransmits: BTreeMap<String, u64>,
    /// Runs of the per-segment program.
    segments: u64,
}

impl Snapshot {
    fn take(probes: &mut Probes) -> Self {
        let c = probes.collect();
        Self {
            rtt: c
                .readings
                .iter()
                .filter(|r| r.key.family == FAMILY_RTT)
                .map(|r| (r.key.label(LABEL_GROUP).unwrap().to_owned(), r.hist.clone()))
                .collect(),
            retransmits: c
                .counter_pairs()
                .iter()
                .filter(|(k, _)| k.family == tcp::FAMILY_RETRANSMITS)
                .map(|(k, total)| (k.label(LABEL_GROUP).unwrap().to_owned(), *total))
                .collect(),
            segments: c
                .programs
                .iter()
                .filter(|p| p.program.starts_with("tcp_probe"))
                .map(|p| p.run_count)
                .sum(),
        }
    }

    fn rtt_since(&self, earlier: &Self, group: &str) -> ExpHistogram {
        let empty = ExpHistogram::default();
        let now = self.rtt.get(group).unwrap_or(&empty);
        now.since(earlier.rtt.get(group).unwrap_or(&empty))
    }

    fn retransmits(&self, group: &str) -> u64 {
        self.retransmits.get(group).copied().unwrap_or(0)
    }

    fn samples(&self) -> u64 {
        self.rtt.values().map(ExpHistogram::count).sum()
    }
}

/// One scenario at a time: they share the ports of this process.
static NETWORK: std::sync::Mutex<()> = std::sync::Mutex::new(());

#[test]
fn shaped_path_shows_higher_rtt_and_retransmits_per_group_via_tp_btf() {
    require_root!();
    scenario(Some(AttachKind::TpBtf));
}

#[test]
fn shaped_path_shows_higher_rtt_via_raw_tracepoint() {
    require_root!();
    scenario(Some(AttachKind::RawTracepoint));
}

fn scenario(attach: Option<AttachKind>) {
    let _network = NETWORK.lock().unwrap_or_else(|e| e.into_inner());
    require_tool("iperf3");
    // Ports of this test run: between 20000 and 27999, below the ephemeral range.
    let base = 20_000 + (std::process::id() % 2_000) as u16 * 4;
    let (fast_port, slow_port, unwatched_port) = (base, base + 1, base + 2);
    let mut config = Config::default();
    config.probes.block.enabled = false;
    config.probes.sched.enabled = false;
    config.probes.kvm.enabled = false;
    config.probes.tcp.attach = attach;
    config.probes.tcp.groups = vec![
        PortGroup::new("np-fast", &[PortSpec::one(fast_port.into())]),
        PortGroup::new("np-slow", &[PortSpec::one(slow_port.into())]),
    ];
    let mut probes = Probes::start(&config).expect("load the eBPF object");
    let status = probes.statuses().iter().find(|s| s.probe == "tcp").unwrap();
    assert!(
        status.is_up(),
        "tcp probe must attach via {attach:?}: {status:?}"
    );

    let mut net = Topology::new();
    net.serve(fast_port);
    net.serve(slow_port);
    let kernel_before = [&net.fast, &net.slow, &net.server].map(Netns::retrans_segs);
    let before = Snapshot::take(&mut probes);

    // A paced stream on the plain path (no standing queue anywhere) and an unpaced one
    // through the token bucket (its queue fills to the drop limit).
    let fast = Topology::stream(&net.fast, FAST_NET, fast_port, 5, "100M");
    let slow = Topology::stream(&net.slow, SLOW_NET, slow_port, 5, "0");
    thread::sleep(Duration::from_millis(2500));
    let middle = Snapshot::take(&mut probes);
    let kernel_srtt = net.slow.max_srtt_ns();
    fast.finish();
    slow.finish();
    thread::sleep(Duration::from_millis(300));
    let after = Snapshot::take(&mut probes);
    let kernel_after = [&net.fast, &net.slow, &net.server].map(Netns::retrans_segs);

    let fast_rtt = after.rtt_since(&before, "np-fast");
    let slow_rtt = after.rtt_since(&before, "np-slow");
    let (fast_p50, slow_p50) = (
        fast_rtt
            .quantile(0.5)
            .expect("RTT samples on the plain path"),
        slow_rtt
            .quantile(0.5)
            .expect("RTT samples on the shaped path"),
    );
    eprintln!(
        "{attach:?}: plain path {} samples, median {fast_p50:.0} ns; shaped path {} samples, \
         median {slow_p50:.0} ns",
        fast_rtt.count(),
        slow_rtt.count()
    );
    assert!(
        fast_rtt.count() > 100,
        "a 5 s stream acknowledges thousands of segments"
    );
    assert!(
        slow_rtt.count() > 100,
        "a 5 s stream acknowledges thousands of segments"
    );
    // 100 KB queued at 16 Mbit/s is 50 ms; the plain veth answers in microseconds.
    assert!(
        slow_p50 > 5_000_000.0,
        "a standing queue of milliseconds: {slow_p50}"
    );
    assert!(slow_p50 > 20.0 * fast_p50, "{slow_p50} vs {fast_p50}");
    // The field read is the kernel's RTT: the same queue as the sender's own smoothed
    // estimate shows mid-stream.
    let ratio = slow_p50 / kernel_srtt;
    eprintln!("shaped path: the kernel's srtt mid-stream {kernel_srtt:.0} ns");
    assert!(
        (0.33..3.0).contains(&ratio),
        "{slow_p50} vs srtt {kernel_srtt}"
    );

    // Retransmissions: counted per group, never going backwards, and never more than
    // the segments the kernel itself retransmitted in those namespaces (a GSO packet
    // retransmitted at once is one event here, several segments there).
    let kernel: Vec<u64> = (0..3).map(|i| kernel_after[i] - kernel_before[i]).collect();
    for group in ["np-fast", "np-slow"] {
        assert!(before.retransmits(group) <= middle.retransmits(group));
        assert!(middle.retransmits(group) <= after.retransmits(group));
    }
    let ours = |g: &str| after.retransmits(g) - before.retransmits(g);
    eprintln!(
        "retransmissions: plain {} (kernel {} + {}), shaped {} (kernel {} + {})",
        ours("np-fast"),
        kernel[0],
        kernel[2],
        ours("np-slow"),
        kernel[1],
        kernel[2]
    );
    assert!(ours("np-fast") <= kernel[0] + kernel[2]);
    assert!(ours("np-slow") <= kernel[1] + kernel[2]);
    assert!(kernel[1] > 0, "the full token bucket drops segments");
    assert!(
        ours("np-slow") > 0,
        "the shaped path's retransmissions are counted"
    );

    // A stream on a port in no group: the program runs for every segment, and records
    // nothing.
    net.serve(unwatched_port);
    Topology::stream(&net.fast, FAST_NET, unwatched_port, 2, "100M").finish();
    thread::sleep(Duration::from_millis(300));
    let last = Snapshot::take(&mut probes);
    // 25 MB in (mostly 64 KB) GSO segments and their ACKs.
    let seen = last.segments - after.segments;
    eprintln!("unwatched stream: the segment program ran {seen} times, recorded nothing");
    assert!(
        seen > 200,
        "the program saw the unwatched stream: {seen} runs"
    );
    assert_eq!(
        last.samples(),
        after.samples(),
        "unwatched traffic made samples"
    );
    assert_eq!(last.retransmits, after.retransmits);
}

/// A TCP probe that cannot attach leaves the others running and says why.
#[test]
fn a_tcp_probe_that_cannot_attach_is_reported_and_the_rest_run() {
    require_root!();
    let mut config = Config::default();
    config.probes.tcp.attach = Some(AttachKind::Tracepoint);
    let probes = Probes::start(&config).expect("load the eBPF object");
    let status = |name: &str| {
        probes
            .statuses()
            .iter()
            .find(|s| s.probe == name)
            .unwrap()
            .clone()
    };
    let tcp = status("tcp");
    assert!(!tcp.is_up(), "{tcp:?}");
    let failures = &tcp.attached.as_ref().unwrap().failures;
    assert!(
        failures.iter().any(|f| f.error.contains("not offered")),
        "{failures:?}"
    );
    assert!(status("sched").is_up(), "the scheduler probe still runs");
}
