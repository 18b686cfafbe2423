//! The console exporter: a compact table for people, or JSON lines for scripts.

use std::io::Write;

use super::Exporter;
use crate::{
    aggregate::histogram::{bucket_lower, bucket_upper},
    catalog,
    report::{CounterReport, ProbeState, QUANTILES, Report, SeriesReport},
};
use serde::Deserialize;

/// Writes reports from a thread of its own through a short queue: a reader that stops
/// reading (a full pipe, a stalled log collector) costs dropped console reports, never
/// a stalled collection loop. On a pipe with room for the report and nothing queued,
/// the loop writes it itself without blocking: the loop saves its state right before
/// (see [`super::Exporter::prepare`]), and a kill between that save and the write
/// loses the report, so the write is one syscall there rather than a thread's wake-up
/// (tens to hundreds of ms on a loaded machine) plus a write that waits for the reader
/// to drain the pipe (a report of ~100 series is 130–230 KB of JSON, a default pipe
/// holds 64 KiB).
pub struct Console {
    queue: Option<std::sync::mpsc::SyncSender<(String, Option<super::Then>)>>,
    /// Set by the writer when the reader has gone (EPIPE) or the output failed.
    closed: std::sync::Arc<std::sync::atomic::AtomicBool>,
    writer: Option<std::thread::JoinHandle<()>>,
    format: ConsoleFormat,
    prepared: super::Prepared<String>,
    /// The output pipe opened again without blocking, when it is a pipe.
    direct: Option<std::fs::File>,
    /// Reports queued and not yet written by the thread.
    pending: std::sync::Arc<std::sync::atomic::AtomicUsize>,
}

impl Console {
    pub fn new<W: Write + Send + 'static>(out: W, format: ConsoleFormat) -> Self {
        Self::with_direct(out, format, None)
    }

    /// Standard output; a pipe is grown to hold whole reports where the kernel allows.
    pub fn stdout(format: ConsoleFormat) -> Self {
        use std::os::fd::AsRawFd;
        let out = std::io::stdout();
        let direct = pipe::reopened(out.as_raw_fd());
        Self::with_direct(out, format, direct)
    }

    fn with_direct<W: Write + Send + 'static>(
        mut out: W,
        format: ConsoleFormat,
        direct: Option<std::fs::File>,
    ) -> Self {
        use std::sync::{Arc, atomic::Ordering};
        let (queue, reports) = std::sync::mpsc::sync_channel::<(String, Option<super::Then>)>(4);
        let closed = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let pending = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let (seen, written) = (closed.clone(), pending.clone());
        let writer = std::thread::Builder::new()
            .name("console".into())
            .spawn(move || {
                for (text, then) in reports {
                    let result = out.write_all(text.as_bytes()).and_then(|()| out.flush());
                    // Before the loop may write directly again: in report order.
                    if let (Ok(()), Some(then)) = (&result, then) {
                        then();
                    }
                    written.fetch_sub(1, Ordering::SeqCst);
                    if let Err(e) = result {
                        failed(&seen, &e);
                        break;
                    }
                }
            })
            .expect("spawn the console writer thread");
        Self {
            queue: Some(queue),
            closed,
            writer: Some(writer),
            format,
            prepared: super::Prepared::default(),
            direct,
            pending,
        }
    }

    /// Writes what it can of `text` from the loop, without blocking, when nothing is
    /// queued (the thread is idle, so order is kept) and the pipe has room; returns
    /// what is left for the thread (all of it when the loop wrote nothing).
    fn write_now<'a>(&self, text: &'a str) -> &'a str {
        use std::{io::Write as _, os::fd::AsRawFd, sync::atomic::Ordering};
        let Some(mut direct) = self.direct.as_ref() else {
            return text;
        };
        if self.pending.load(Ordering::SeqCst) != 0
            || !pipe::has_room(direct.as_raw_fd(), text.len())
        {
            return text;
        }
        let mut rest = text.as_bytes();
        while !rest.is_empty() {
            match direct.write(rest) {
                Ok(0) => break,
                Ok(n) => rest = &rest[n..],
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(e) => {
                    failed(&self.closed, &e);
                    return "";
                }
            }
        }
        &text[text.len() - rest.len()..]
    }
}

/// The output failed or its reader has gone (EPIPE, said nothing about): it stops.
fn failed(closed: &std::sync::atomic::AtomicBool, e: &std::io::Error) {
    if e.kind() != std::io::ErrorKind::BrokenPipe {
        tracing::warn!("console output failed: {e}; it stops here");
    }
    closed.store(true, std::sync::atomic::Ordering::SeqCst);
}

/// The output as a pipe (Linux `F_SETPIPE_SZ`, `FIONREAD`).
mod pipe {
    use std::os::fd::RawFd;

    /// What a pipe is grown to, largest first: a report of a few hundred series many
    /// times over, so a reader that falls behind (parsing each line) still leaves room
    /// for the next. Pages are only taken as data waits in it. Above
    /// `/proc/sys/fs/pipe-max-size` (1 MiB by default) needs `CAP_SYS_RESOURCE`.
    const WANTED: [libc::c_int; 2] = [8 << 20, 1 << 20];
    /// Left free beyond the report (pages only partly filled by earlier writes).
    const SLACK: usize = 64 << 10;

    /// `fd` opened again through `/proc/self/fd` with `O_NONBLOCK` (its own open file
    /// description: the shared one keeps blocking) if it is a pipe, grown to the first
    /// of [`WANTED`] the kernel allows.
    pub fn reopened(fd: RawFd) -> Option<std::fs::File> {
        use std::os::unix::fs::{FileTypeExt as _, OpenOptionsExt as _};
        let path = format!("/proc/self/fd/{fd}");
        if !std::fs::metadata(&path).ok()?.file_type().is_fifo() {
            return None;
        }
        let file = std::fs::OpenOptions::new()
            .write(true)
            .custom_flags(libc::O_NONBLOCK)
            .open(&path)
            .ok()?;
        // SAFETY: fcntl on a pipe fd we hold; a refusal leaves the pipe as it was.
        WANTED
            .iter()
            .any(|&size| unsafe { libc::fcntl(fd, libc::F_SETPIPE_SZ, size) } >= size);
        Some(file)
    }

    /// Whether `len` bytes fit with room to spare: the write then completes at once.
    pub fn has_room(fd: RawFd, len: usize) -> bool {
        let mut unread: libc::c_int = 0;
        // SAFETY: FIONREAD writes one int; F_GETPIPE_SZ reads nothing.
        let (rc, size) = unsafe {
            (
                libc::ioctl(fd, libc::FIONREAD, &mut unread),
                libc::fcntl(fd, libc::F_GETPIPE_SZ),
            )
        };
        rc == 0 && size > 0 && len + 2 * unread.max(0) as usize + SLACK <= size as usize
    }
}

/// At exit, the reports already queued (the final one included) are written out.
impl Drop for Console {
    fn drop(&mut self) {
        drop(self.queue.take());
        if let Some(writer) = self.writer.take() {
            let _ = writer.join();
        }
    }
}

/// One report as the console shows it.
pub fn render(report: &Report, format: ConsoleFormat) -> String {
    match format {
        ConsoleFormat::Json => {
            let mut line = serde_json::to_string(report).unwrap_or_default();
            line.push('\n');
            line
        }
        ConsoleFormat::Table => render_table(report),
    }
}

impl Exporter for Console {
    fn name(&self) -> &'static str {
        "console"
    }

    fn closed(&self) -> bool {
        self.closed.load(std::sync::atomic::Ordering::SeqCst)
    }

    fn prepare(&mut self, report: &Report) {
        if self.queue.is_some() && !self.closed() {
            self.prepared.put(report, render(report, self.format));
        }
    }

    fn export(&mut self, report: &Report) -> std::io::Result<()> {
        let (result, then) = self.export_then(report, Box::new(|| {}));
        if let Some(then) = then {
            then();
        }
        result
    }

    /// `then` runs right after the write: from the loop when it wrote the whole
    /// report, else from the writer thread once it has written the rest.
    fn export_then(
        &mut self,
        report: &Report,
        then: super::Then,
    ) -> (std::io::Result<()>, Option<super::Then>) {
        let text = self.prepared.take(report);
        let Some(queue) = &self.queue else {
            return (Ok(()), Some(then));
        };
        // The reader has gone: nothing to say, and nobody to say it to.
        if self.closed() {
            return (Ok(()), Some(then));
        }
        let text = text.unwrap_or_else(|| render(report, self.format));
        let rest = self.write_now(&text);
        if rest.is_empty() {
            then();
            return (Ok(()), None);
        }
        let rest = rest.to_owned();
        self.pending
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        match queue.try_send((rest, Some(then))) {
            Ok(()) => (Ok(()), None),
            Err(e) => {
                self.pending
                    .fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
                let (_, then) = match e {
                    std::sync::mpsc::TrySendError::Full(m)
                    | std::sync::mpsc::TrySendError::Disconnected(m) => m,
                };
                let e = std::io::Error::other("standard output is not being read; report dropped");
                (Err(e), then)
            }
        }
    }
}

/// `850ns`, `38.1µs`, `1.20ms`, `2.50s`.
pub fn format_ns(ns: f64) -> String {
    let (v, unit) = if ns < 1e3 {
        (ns, "ns")
    } else if ns < 1e6 {
        (ns / 1e3, "µs")
    } else if ns < 1e9 {
        (ns / 1e6, "ms")
    } else {
        (ns / 1e9, "s")
    };
    if v >= 100.0 || unit == "ns" {
        format!("{v:.0}{unit}")
    } else if v >= 10.0 {
        format!("{v:.1}{unit}")
    } else {
        format!("{v:.2}{unit}")
    }
}

fn format_bytes(b: u64) -> String {
    format!("{:.1} MiB", b as f64 / (1024.0 * 1024.0))
}

/// A value in a family's unit: durations and sizes scaled, counts as they are.
pub fn format_value(v: f64, unit: &str) -> String {
    match unit {
        "ns" => format_ns(v),
        "By" => format_size(v),
        _ if v >= 100.0 => format!("{v:.0}"),
        _ => format!("{v:.1}"),
    }
}

/// `512B`, `4.0K`, `1.0M` (binary multiples, as block sizes are).
fn format_size(b: f64) -> String {
    if b < 1024.0 {
        format!("{b:.0}B")
    } else if b < 1024.0 * 1024.0 {
        format!("{:.1}K", b / 1024.0)
    } else {
        format!("{:.1}M", b / (1024.0 * 1024.0))
    }
}

const BARS: [char; 8] = ['▁', '▂', '▃', '▄', '▅', '▆', '▇', '█'];

/// One character per power of two between the lowest and highest populated buckets,
/// with the range's bounds: `16µs ▁▂▅█▆▃▁ 2.1ms`.
pub fn sparkline(s: &SeriesReport) -> String {
    let h = s.delta_histogram();
    let per_octave = agent_common::hist::SUB_BUCKETS as i32;
    let octaves: Vec<(i32, u64)> = {
        let mut v: Vec<(i32, u64)> = Vec::new();
        for (index, count) in h.buckets() {
            let octave = index.div_euclid(per_octave);
            match v.last_mut() {
                Some((o, c)) if *o == octave => *c += count,
                _ => v.push((octave, count)),
            }
        }
        v
    };
    let (Some(&(first, _)), Some(&(last, _))) = (octaves.first(), octaves.last()) else {
        return String::new();
    };
    let max = octaves.iter().map(|&(_, c)| c).max().unwrap_or(1).max(1);
    let bars: String = (first..=last)
        .map(|o| {
            let c = octaves
                .iter()
                .find(|&&(oo, _)| oo == o)
                .map_or(0, |&(_, c)| c);
            if c == 0 {
                ' '
            } else {
                BARS[(c * 7 / max).min(7) as usize]
            }
        })
        .collect();
    format!(
        "{} {bars} {}",
        format_value(bucket_lower(first * per_octave), s.unit),
        format_value(bucket_upper(last * per_octave + per_octave - 1), s.unit)
    )
}

/// Labels too long or too technical for a glance; JSON carries them all.
const HIDDEN_IN_TABLE: [&str; 6] = [
    "dev",
    "vm.uuid",
    "nova.instance.name",
    "nova.flavor",
    "nova.project.id",
    "nova.project.name",
];

/// The series' label values in a fixed-width cell (`loop0 read`, `/system.slice`,
/// `instance-0000002a io`); the whole host when it has none. A bare `true` says nothing
/// on its own, so a flag shows as its name when set (`vda rotational virtio read`) and
/// not at all when clear.
fn series_name(s: &SeriesReport) -> String {
    label_cell(&s.labels)
}

fn label_cell(labels: &std::collections::BTreeMap<&'static str, String>) -> String {
    let values: Vec<&str> = labels
        .iter()
        .filter(|(k, _)| !HIDDEN_IN_TABLE.contains(k))
        .filter_map(|(k, v)| match v.as_str() {
            "true" => k.rsplit('.').next(),
            "false" => None,
            v => Some(v),
        })
        .collect();
    let name = if values.is_empty() {
        "(host)".to_owned()
    } else {
        values.join(" ")
    };
    if name.chars().count() > 34 {
        // Keep the end: cgroup paths and VM names differ at their tails.
        let tail: String = name
            .chars()
            .rev()
            .take(33)
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
            .collect();
        format!("…{tail}")
    } else {
        name
    }
}

pub fn render_table(r: &Report) -> String {
    use std::fmt::Write as _;
    let mut t = String::new();
    let _ = writeln!(
        t,
        "── nodepulse · {} · {} · interval {:.1}s ──",
        r.node, r.time, r.interval_s
    );
    let mut families: Vec<&str> = r.series.iter().map(|s| s.family).collect();
    // The catalogue's order (storage, CPU, VMs); unknown families last, by name.
    let rank = |f: &str| {
        catalog::families()
            .position(|o| o.name == f)
            .unwrap_or(usize::MAX)
    };
    families.sort_by(|a, b| rank(a).cmp(&rank(b)).then(a.cmp(b)));
    families.dedup();
    if r.series.iter().all(|s| s.count == 0) {
        let _ = writeln!(t, "no samples this interval");
    }
    for family in families {
        let rows: Vec<&SeriesReport> = r
            .series
            .iter()
            .filter(|s| s.family == family && s.count > 0)
            .collect();
        if rows.is_empty() {
            continue;
        }
        let _ = writeln!(t, "{family} ({})", catalog::unit(family));
        let _ = write!(t, "  {:<34} {:>9} ", "SERIES", "EVENTS/s");
        for (_, name) in QUANTILES {
            let _ = write!(t, "{name:>8} ");
        }
        let _ = writeln!(t, "{:>8}  DISTRIBUTION", "MEAN");
        for s in rows {
            let _ = write!(t, "  {:<34} {:>9.1} ", series_name(s), s.rate_per_s);
            for (_, name) in QUANTILES {
                let q = s.quantiles.get(name).copied().flatten();
                let _ = write!(
                    t,
                    "{:>8} ",
                    q.map_or("-".into(), |v| format_value(v, s.unit))
                );
            }
            let mean = s.mean.map_or("-".into(), |v| format_value(v, s.unit));
            let _ = writeln!(t, "{mean:>8}  {}", sparkline(s));
        }
    }
    let counters: Vec<&CounterReport> = r.counters.iter().filter(|c| c.total > 0).collect();
    if !counters.is_empty() {
        let _ = writeln!(t, "counts");
        let _ = writeln!(
            t,
            "  {:<24} {:<34} {:>9} {:>12}",
            "FAMILY", "SERIES", "INTERVAL", "TOTAL"
        );
        for c in counters {
            let _ = writeln!(
                t,
                "  {:<24} {:<34} {:>9} {:>12}",
                c.family,
                label_cell(&c.labels),
                c.delta,
                c.total
            );
        }
    }
    if let Some(slowest) = r.outliers.iter().max_by_key(|o| o.latency_ns) {
        let label = |k: &str| {
            slowest
                .labels
                .iter()
                .chain(&slowest.attributes)
                .find(|(key, _)| *key == k)
                .map_or("?", |(_, v)| v.as_str())
        };
        let _ = writeln!(
            t,
            "outliers: {} this interval; slowest {} {} {} by {} (pid {})",
            r.outliers.len(),
            label("device"),
            label("op"),
            format_ns(slowest.latency_ns as f64),
            label("process.executable.name"),
            label("process.pid"),
        );
    }
    render_alarms(&mut t, r);
    if let Some(c) = &r.capacity {
        render_capacity(&mut t, c);
    }
    let _ = writeln!(t, "probes");
    for p in &r.probes {
        let state = match (&p.state, p.attach) {
            (ProbeState::Up, Some(kind)) => format!("up via {kind}"),
            (ProbeState::Up, None) => "up".into(),
            (ProbeState::Down, _) => "DOWN".into(),
            (ProbeState::Disabled, _) => "disabled".into(),
            (ProbeState::NotApplicable, _) => "not applicable".into(),
        };
        let _ = write!(t, "  {:<8} {:<18}", p.probe, state);
        let costs: Vec<String> = p
            .programs
            .iter()
            .map(|c| match c.ns_per_event {
                Some(ns) => format!("{} {} ev {:.0} ns/ev", c.program, c.events, ns),
                None => format!("{} {} ev", c.program, c.events),
            })
            .collect();
        let _ = writeln!(t, "{}", costs.join(" · "));
        if p.state == ProbeState::Down || p.attach.is_none() {
            for e in &p.errors {
                let _ = writeln!(t, "    {e}");
            }
        }
    }
    let dropped: Vec<String> = r
        .agent
        .dropped
        .iter()
        .filter(|&(_, &n)| n > 0)
        .map(|(k, n)| format!("{k} {n}"))
        .collect();
    let _ = writeln!(
        t,
        "agent    cpu {:.2}% · rss {} · dropped: {}",
        r.agent.cpu_percent,
        format_bytes(r.agent.rss_bytes),
        if dropped.is_empty() {
            "none".into()
        } else {
            dropped.join(", ")
        }
    );
    if let Some(why) = &r.agent.bpf_stats_unavailable {
        let _ = writeln!(t, "  (no per-program cost: {why})");
    }
    t
}

/// Alarm events of the interval and finished action runs; nothing when all is quiet.
fn render_alarms(t: &mut String, r: &Report) {
    use std::fmt::Write as _;
    if !r.learning.is_empty() {
        const SHOWN: usize = 5;
        let more = r.learning.len().saturating_sub(SHOWN);
        let _ = writeln!(
            t,
            "detector learning {} series (not judged yet{}): {}{}",
            r.learning.len(),
            r.learning_until
                .as_ref()
                .map_or(String::new(), |t| format!(", until {t}")),
            r.learning[..r.learning.len().min(SHOWN)].join(", "),
            if more > 0 {
                format!(", {more} more")
            } else {
                String::new()
            }
        );
    }
    if r.alarms.is_empty() && r.alarms_open == 0 && r.actions.is_empty() {
        return;
    }
    let _ = writeln!(t, "alarms   {} open", r.alarms_open);
    for a in &r.alarms {
        let _ = writeln!(
            t,
            "  {:<9} {:<8} {}  [{}]",
            a.state.as_str().to_uppercase(),
            a.severity.as_str(),
            a.summary,
            a.id
        );
    }
    for run in &r.actions {
        let detail = match (run.exit_code, run.http_status, &run.error) {
            (_, _, Some(e)) => e.clone(),
            (Some(code), _, None) => format!("exit {code}"),
            (None, Some(status), None) => format!("HTTP {status}"),
            _ => String::new(),
        };
        let _ = writeln!(
            t,
            "  action   {:<19} {} {} for {} ({:.0} ms) {}",
            run.outcome.as_str(),
            run.rule,
            run.kind,
            run.alarm_id,
            run.duration_ms,
            detail
        );
    }
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum ConsoleFormat {
    /// A compact table with a small text histogram per series.
    #[default]
    Table,
    /// One JSON object per interval with every series and its buckets.
    Json,
}

#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ConsoleConfig {
    pub enabled: bool,
    pub format: ConsoleFormat,
}

impl Default for ConsoleConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            format: ConsoleFormat::Table,
        }
    }
}

/// Capacity, worst first: busy and pressure signals, device headroom, forecasts and
/// predicted saturations.
fn render_capacity(t: &mut String, c: &crate::capacity::CapacityReport) {
    use std::fmt::Write as _;
    let mut fractions: Vec<_> = c
        .signals
        .iter()
        .filter(|s| s.unit == "1" && s.value > 0.0)
        .collect();
    fractions.sort_by(|a, b| b.value.total_cmp(&a.value));
    if fractions.is_empty() && c.headroom.is_empty() && c.forecasts.is_empty() {
        return;
    }
    let _ = writeln!(t, "capacity");
    for s in fractions.iter().take(10) {
        let _ = writeln!(
            t,
            "  {:<40} {:<14} {:>6.1} %",
            s.resource,
            s.name,
            s.value * 100.0
        );
    }
    // The five devices closest to their knee; before a knee is seen, headroom is a
    // lower bound (marked >=) against the highest load seen.
    let mut headroom: Vec<_> = c.headroom.iter().filter(|h| h.load_iops > 0.0).collect();
    headroom.sort_by(|a, b| a.headroom.total_cmp(&b.headroom));
    for h in headroom.into_iter().take(5) {
        let bound = if h.knee_known { "" } else { ">=" };
        let knee = match h.knee.knee_load {
            Some(k) => format!("knee {k:.0}/s"),
            None => format!("no knee up to {:.0}/s", h.knee.max_load_seen),
        };
        let _ = writeln!(
            t,
            "  {:<40} headroom {bound}{:.1} % at {:.0}/s ({knee}, unloaded p99 {})",
            h.resource,
            h.headroom * 100.0,
            h.load_iops,
            format_ns(h.knee.unloaded_p99_ns)
        );
    }
    for a in &c.alarms {
        let _ = writeln!(t, "  ALARM {}: {}", a.state, a.summary);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report() -> Report {
        crate::report::sample()
    }

    #[test]
    fn table_shows_series_quantiles_histogram_and_cost() {
        let t = render_table(&report());
        assert!(t.contains("loop7"), "{t}");
        assert!(t.contains("read"), "{t}");
        assert!(t.contains("10.0 "), "{t}"); // 100 samples over 10 s
        assert!(t.contains("up via tp_btf"), "{t}");
        assert!(t.contains("40 ns/ev"), "{t}");
        assert!(t.contains("block_unmatched_completions 3"), "{t}");
        assert!(t.contains("█"), "{t}");
        assert!(t.contains("10.0 MiB"), "{t}");
        assert!(t.contains("block.io.errors") && t.contains("nospc"), "{t}");
    }

    #[test]
    fn json_is_one_line_with_buckets() {
        let text = render(&report(), ConsoleFormat::Json);
        assert_eq!(text.lines().count(), 1);
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        let s = &v["series"][0];
        assert_eq!(s["count"], 100);
        assert_eq!(s["labels"]["device"], "loop7");
        assert_eq!(s["histogram"]["scale"], 3);
        let counts = s["histogram"]["counts"].as_array().unwrap();
        assert_eq!(counts.iter().map(|c| c.as_u64().unwrap()).sum::<u64>(), 100);
        assert!(s["quantiles"]["p99"].as_f64().unwrap() > 1e6);
        assert_eq!(s["unit"], "ns");
        assert_eq!(v["counters"][0]["total"], 5);
    }

    #[test]
    fn alarms_and_action_runs_are_shown_only_when_there_are_some() {
        let mut r = report();
        assert!(!render_table(&r).contains("alarms"));
        let alarm = crate::detect::alarm::sample(crate::detect::Severity::Major);
        r.alarms = vec![alarm.clone()];
        r.alarms_open = 1;
        let t = render_table(&r);
        assert!(t.contains("alarms   1 open"), "{t}");
        assert!(t.contains("OPEN      major"), "{t}");
        assert!(t.contains(&alarm.id), "{t}");
        assert!(
            t.contains("write latency on sdx (block.io.latency) has regressed"),
            "{t}"
        );
        let v: serde_json::Value = serde_json::from_str(&render(&r, ConsoleFormat::Json)).unwrap();
        assert_eq!(v["alarms_open"], 1);
        assert_eq!(v["alarms"][0]["id"], alarm.id.as_str());
        assert_eq!(v["alarms"][0]["state"], "open");
        assert!(v["alarms"][0]["evidence"]["baseline"]["fractions"].is_array());
    }

    /// On a pipe with room the loop writes the report itself: it is in the pipe when
    /// `export` returns, and the next follows it in order.
    #[test]
    fn a_report_is_in_the_pipe_when_export_returns() {
        use std::{io::Read, os::fd::FromRawFd};
        let mut fds = [0; 2];
        // SAFETY: pipe(2) into an array of two fds, each then owned by a File.
        assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0);
        let (mut read, write) = unsafe {
            (
                std::fs::File::from_raw_fd(fds[0]),
                std::fs::File::from_raw_fd(fds[1]),
            )
        };
        let direct = pipe::reopened(fds[1]);
        assert!(direct.is_some(), "a pipe is recognised");
        let mut console = Console::with_direct(write, ConsoleFormat::Json, direct);
        let r = report();
        let line = render(&r, ConsoleFormat::Json);
        console.prepare(&r);
        console.export(&r).unwrap();
        let mut unread: libc::c_int = 0;
        // SAFETY: FIONREAD writes one int.
        assert_eq!(
            unsafe { libc::ioctl(fds[0], libc::FIONREAD, &mut unread) },
            0
        );
        assert_eq!(
            unread as usize,
            line.len(),
            "written before export returned"
        );
        let mut second = r.clone();
        second.time = "later".into();
        console.export(&second).unwrap();
        drop(console);
        let mut text = String::new();
        read.read_to_string(&mut text).unwrap();
        assert_eq!(text, line + &render(&second, ConsoleFormat::Json));
    }

    #[test]
    fn formats_durations() {
        assert_eq!(format_ns(850.0), "850ns");
        assert_eq!(format_ns(38_100.0), "38.1µs");
        assert_eq!(format_ns(1_200_000.0), "1.20ms");
        assert_eq!(format_ns(2_500_000_000.0), "2.50s");
        assert_eq!(format_value(4096.0, "By"), "4.0K");
        assert_eq!(format_value(3.0, "{request}"), "3.0");
    }

    #[test]
    fn flags_show_as_their_name_not_as_a_bare_true() {
        let labels = |rotational: &str| {
            std::collections::BTreeMap::from([
                ("device", "vda".to_owned()),
                ("device.rotational", rotational.to_owned()),
                ("device.type", "virtio".to_owned()),
                ("op", "write".to_owned()),
            ])
        };
        assert_eq!(label_cell(&labels("true")), "vda rotational virtio write");
        assert_eq!(label_cell(&labels("false")), "vda virtio write");
    }
}
