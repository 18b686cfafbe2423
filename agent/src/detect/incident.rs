//! Incidents: series that shift together are one alarm. A slow disk moves its device
//! time, its total, the loop or device-mapper devices stacked on it, the cgroups
//! issuing the I/O and the VMs on it, all at once; an operator (and an action) should
//! see one alarm for it, with those series as evidence, ranked by where the time went.
//!
//! A series alarm joins an open incident of the same resource (block I/O, CPU, KVM
//! exits, network) when its regression started within `group_within` of the
//! incident's latest member (they shifted together), or when it is a device stacked on
//! or under a member's device (known from sysfs) while the incident lasts. A cgroup's
//! run queue and a disk join when their regressions start within
//! `group_cpu_and_io_within`. The incident keeps the id, trace and headline series of the alarm
//! that opened it, so its id stays stable while evidence is added; it resolves when
//! every member has recovered.

use std::{
    collections::{BTreeMap, HashMap},
    path::{Path, PathBuf},
};

use serde::Serialize;

use super::{
    alarm::{Alarm, AlarmState, Severity},
    config::DetectConfig,
};
use crate::{
    aggregate::{ExpHistogram, histogram::bucket_lower},
    export::console::format_ns,
};

/// One series of an incident, as evidence.
#[derive(Clone, Debug, Serialize, serde::Deserialize)]
pub struct RelatedSeries {
    pub series: String,
    pub family: String,
    pub labels: BTreeMap<String, String>,
    /// The series' own alarm id (its regression, inside the incident).
    pub alarm_id: String,
    pub state: AlarmState,
    #[serde(deserialize_with = "crate::util::intern::de_str")]
    pub quantile: crate::util::intern::Static,
    pub factor: f64,
    pub baseline_ns: f64,
    pub current_ns: f64,
    /// Waiting time the shift added in the series' last regressed window (samples ×
    /// (current mean − baseline mean)), in ns: what ranks the evidence.
    pub added_ns: f64,
    /// That time as a share of the incident's total.
    pub share: f64,
}

/// The devices under a block device: a loop device's backing file lives on a
/// filesystem's device; a device-mapper (or md) device has `slaves/`. Read from sysfs
/// when first asked and remembered; without a sysfs root (offline replay) nothing is
/// stacked and incidents are grouped by time alone.
#[derive(Debug, Default)]
pub struct Topology {
    sys_root: Option<PathBuf>,
    lower: HashMap<String, Vec<String>>,
}

impl Topology {
    pub fn from_sysfs(sys_root: &Path) -> Self {
        Self {
            sys_root: Some(sys_root.to_owned()),
            lower: HashMap::new(),
        }
    }

    /// `device` and every device its I/O ends up on, transitively.
    pub fn stack(&mut self, device: &str) -> Vec<String> {
        let mut out = vec![device.to_owned()];
        let mut i = 0;
        while i < out.len() && out.len() < 16 {
            for d in self.lower_of(&out[i].clone()) {
                if !out.contains(&d) {
                    out.push(d);
                }
            }
            i += 1;
        }
        out
    }

    /// `device` is backed by something else now: read what is under it again.
    pub fn forget(&mut self, device: &str) {
        self.lower.remove(device);
    }

    fn lower_of(&mut self, device: &str) -> Vec<String> {
        if let Some(known) = self.lower.get(device) {
            return known.clone();
        }
        let Some(root) = &self.sys_root else {
            return Vec::new();
        };
        let found = read_lower(root, device);
        self.lower.insert(device.to_owned(), found.clone());
        found
    }
}

/// The devices directly under `device`, from sysfs.
fn read_lower(sys_root: &Path, device: &str) -> Vec<String> {
    let block = sys_root.join("block").join(device);
    let mut out: Vec<String> = std::fs::read_dir(block.join("slaves"))
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    if let Ok(file) = std::fs::read_to_string(block.join("loop/backing_file")) {
        out.extend(device_of_file(sys_root, file.trim()));
    }
    out.sort();
    out
}

/// The whole disk holding `path`'s filesystem (a partition's parent), by its
/// major:minor in sysfs.
fn device_of_file(sys_root: &Path, path: &str) -> Option<String> {
    use std::os::unix::fs::MetadataExt as _;
    let dev = std::fs::metadata(path).ok()?.dev();
    let (major, minor) = (libc::major(dev), libc::minor(dev));
    let link = sys_root.join(format!("dev/block/{major}:{minor}"));
    let target = std::fs::canonicalize(&link).ok()?;
    let disk = if link.join("partition").exists() {
        target.parent()?.to_path_buf()
    } else {
        target
    };
    Some(disk.file_name()?.to_string_lossy().into_owned())
}

#[derive(Debug, Serialize, serde::Deserialize)]
struct Member {
    alarm: Alarm,
    added_ns: f64,
}

#[derive(Debug, Serialize, serde::Deserialize)]
pub(super) struct Incident {
    /// The alarm that opened it: its id, trace and headline.
    alarm: Alarm,
    members: BTreeMap<String, Member>,
    /// Start of the latest member's regression (unix ns).
    latest_start: u64,
    /// Devices (stacks included) of its block members.
    devices: Vec<String>,
    #[serde(deserialize_with = "crate::util::intern::de_str")]
    resource: crate::util::intern::Static,
}

/// What a family measures waiting for: series of different resources are separate
/// incidents even when they shift at the same time.
fn resource(family: &str) -> &'static str {
    match family.split('.').next().unwrap_or_default() {
        "block" => "block",
        "sched" | "cgroup" | "vm" => "cpu",
        "kvm" => "kvm",
        "net" => "net",
        _ => "other",
    }
}

/// Whether a series is the unclassified remainder of its kind: the root cgroup (every
/// task nobody placed in a cgroup: kernel threads, and on hosts without systemd or
/// Kubernetes whatever anyone starts) or the budget's `other` fold. Its latency is a
/// mix of unrelated work whose make-up changes as jobs start and stop, so a shift of
/// it names no workload and no resource; it is evidence for an incident opened by a
/// device, a named cgroup or VM, or the node's run queue, never an incident of its own.
pub fn is_remainder(labels: &BTreeMap<String, String>) -> bool {
    use crate::aggregate::budget::OTHER;
    labels.get("cgroup").is_some_and(|c| c == "/" || c == OTHER)
        || labels.get("vm").is_some_and(|v| v == OTHER)
}

/// The node's own run queue (no cgroup, no VM): when every CPU is contended, every
/// latency on the node moves with it, block devices served by kernel threads (loop)
/// included.
fn is_node_cpu(alarm: &Alarm) -> bool {
    resource(&alarm.family) == "cpu" && alarm.labels.is_empty()
}

impl Incident {
    /// Whether a series alarm that opened (or is held) belongs here: the same resource
    /// with its regression starting within `within` of the latest member's, or a
    /// device stacked with a member's; any resource in the same minutes as the node's
    /// own run queue (one cause: the CPUs).
    fn takes(&self, alarm: &Alarm, devices: &[String], within: Within) -> bool {
        let apart = alarm.start_unix_nano.abs_diff(self.latest_start);
        let near = apart <= within.resource;
        let theirs = resource(&alarm.family);
        if self.resource == theirs {
            return near || devices.iter().any(|d| self.devices.contains(d));
        }
        if near && (is_node_cpu(alarm) || self.members.values().any(|m| is_node_cpu(&m.alarm))) {
            return true;
        }
        // A cgroup's or VM's CPU side and a disk's regressions that began together.
        let pair = [self.resource, theirs];
        within.cpu_and_io > 0
            && apart <= within.cpu_and_io
            && pair.contains(&"cpu")
            && pair.contains(&"block")
    }

    /// Adds or updates a member.
    fn add(&mut self, event: Alarm, devices: Vec<String>) {
        if event.state == AlarmState::Open {
            self.latest_start = self.latest_start.max(event.start_unix_nano);
        }
        for d in devices {
            if !self.devices.contains(&d) {
                self.devices.push(d);
            }
        }
        let added_ns = added_time(&event);
        let member = self.members.entry(event.series.clone()).or_insert(Member {
            alarm: event.clone(),
            added_ns,
        });
        // A recovered member keeps the figures of its last regressed window.
        if event.state != AlarmState::Resolved {
            member.added_ns = added_ns;
        }
        member.alarm = event;
    }
}

/// How close in time regressions' starts must be to join an incident.
#[derive(Clone, Copy)]
struct Within {
    /// Of the same resource (`group_within`).
    resource: u64,
    /// A CPU and a block series (`group_cpu_and_io_within`).
    cpu_and_io: u64,
}

impl Within {
    fn of(config: &DetectConfig) -> Self {
        Self {
            resource: config.group_within.as_nanos() as u64,
            cpu_and_io: config.group_cpu_and_io_within.as_nanos() as u64,
        }
    }
}

/// Open incidents of one detector.
#[derive(Debug, Default)]
pub struct Incidents {
    open: Vec<Incident>,
    topology: Topology,
    /// Open alarms of remainder series (`is_remainder`) outside any incident, by series:
    /// they join the next incident they belong to.
    held: BTreeMap<String, Alarm>,
}

impl Incidents {
    /// The open incidents, for the detector's saved state.
    pub(super) fn snapshot(&self) -> &[Incident] {
        &self.open
    }

    /// Reopens incidents saved by an earlier run (the topology stays this run's).
    pub(super) fn restore(&mut self, open: Vec<Incident>) {
        self.open = open;
    }

    pub fn new(topology: Topology) -> Self {
        Self {
            open: Vec::new(),
            topology,
            held: BTreeMap::new(),
        }
    }

    pub fn open(&self) -> impl Iterator<Item = &Alarm> {
        self.open.iter().map(|i| &i.alarm)
    }

    /// A device re-backed (see `Detector::note_backing`): its stack is read anew.
    pub fn forget_device(&mut self, device: &str) {
        self.topology.forget(device);
    }

    pub fn open_count(&self) -> u64 {
        self.open.len() as u64
    }

    /// Takes one interval's series alarm events; returns the incidents' events (at
    /// most one per incident).
    pub fn absorb(
        &mut self,
        mut events: Vec<Alarm>,
        now: u64,
        config: &DetectConfig,
    ) -> Vec<Alarm> {
        let within = Within::of(config);
        // The node's run queue first: it draws every resource's alarms of the same
        // minutes into its incident, but only those that come after it. With windows
        // on the clock's grid every series' window closes in the same report, and in
        // name order `sched.*` came last: a CPU storm's block and cgroup alarms had
        // each opened an incident of their own before it, and it joined one of them.
        events.sort_by_key(|e| !(e.state == AlarmState::Open && is_node_cpu(e)));
        let mut touched: Vec<usize> = Vec::new();
        let mut opened: Vec<usize> = Vec::new();
        for event in events {
            let devices = match event.labels.get("device") {
                Some(d) => self.topology.stack(d),
                None => Vec::new(),
            };
            let home = self
                .open
                .iter()
                .position(|i| i.members.contains_key(&event.series));
            let home = home.or_else(|| {
                (event.state == AlarmState::Open || self.held.contains_key(&event.series))
                    .then_some(())?;
                self.open
                    .iter()
                    .position(|i| i.takes(&event, &devices, within))
            });
            let index = match home {
                Some(index) => {
                    self.held.remove(&event.series);
                    index
                }
                // The remainder opens no incident: held until one it belongs to opens.
                None if is_remainder(&event.labels) => {
                    if event.state == AlarmState::Resolved {
                        self.held.remove(&event.series);
                    } else {
                        self.held.insert(event.series.clone(), event);
                    }
                    continue;
                }
                None if event.state == AlarmState::Open => {
                    self.open.push(Incident {
                        alarm: event.clone(),
                        members: BTreeMap::new(),
                        latest_start: event.start_unix_nano,
                        devices: Vec::new(),
                        resource: resource(&event.family),
                    });
                    opened.push(self.open.len() - 1);
                    self.open.len() - 1
                }
                // An update for a series whose incident is gone: nothing to say.
                None => continue,
            };
            self.open[index].add(event, devices);
            if opened.contains(&index) {
                self.join_held(index, within);
            }
            if !touched.contains(&index) {
                touched.push(index);
            }
        }
        let mut out = Vec::new();
        for &index in &touched {
            let incident = &mut self.open[index];
            // Over when every series that opened or joined it for itself has recovered;
            // the remainder's alarms still open go back to being held.
            let all_recovered = incident
                .members
                .values()
                .filter(|m| !is_remainder(&m.alarm.labels))
                .all(|m| m.alarm.state == AlarmState::Resolved);
            refresh(incident, config);
            if all_recovered {
                incident.alarm.resolve(now);
                incident.alarm.summary = summary(incident);
                for m in incident.members.values() {
                    if m.alarm.state != AlarmState::Resolved {
                        self.held.insert(m.alarm.series.clone(), m.alarm.clone());
                    }
                }
            } else if !opened.contains(&index) {
                incident.alarm.state = AlarmState::Ongoing;
            }
            out.push(incident.alarm.clone());
        }
        self.open.retain(|i| i.alarm.state != AlarmState::Resolved);
        out
    }

    /// Held remainder alarms join a new incident as evidence: those of its resource
    /// (a neighbour's job still running when the workload slowed), and any the incident
    /// takes by time (the node's run queue).
    fn join_held(&mut self, index: usize, within: Within) {
        let incident = &mut self.open[index];
        let joining: Vec<String> = self
            .held
            .values()
            .filter(|h| resource(&h.family) == incident.resource || incident.takes(h, &[], within))
            .map(|h| h.series.clone())
            .collect();
        for series in joining {
            if let Some(h) = self.held.remove(&series) {
                incident.add(h, Vec::new());
            }
        }
    }
}

/// The incident's alarm from its members: headline figures from the series that
/// opened it, severity from the worst member, evidence ranked by added time.
fn refresh(incident: &mut Incident, config: &DetectConfig) {
    let head = incident.alarm.series.clone();
    if let Some(m) = incident.members.get(&head) {
        let keep = (
            incident.alarm.id.clone(),
            incident.alarm.trace_id.clone(),
            incident.alarm.span_id.clone(),
            incident.alarm.state,
        );
        incident.alarm = Alarm {
            related: Vec::new(),
            ..m.alarm.clone()
        };
        (
            incident.alarm.id,
            incident.alarm.trace_id,
            incident.alarm.span_id,
            incident.alarm.state,
        ) = keep;
        incident.alarm.ended = None;
        incident.alarm.end_unix_nano = None;
    }
    // The remainder's shift (a mix whose make-up changed) says nothing of how hard
    // the incident hit: severity is the workloads' and resources'.
    let peak = incident
        .members
        .values()
        .filter(|m| !is_remainder(&m.alarm.labels))
        .map(|m| m.alarm.peak_factor)
        .fold(incident.alarm.peak_factor, f64::max);
    incident.alarm.severity = Severity::of(peak, config).max(incident.alarm.severity);
    let total: f64 = incident.members.values().map(|m| m.added_ns).sum();
    let mut related: Vec<RelatedSeries> = incident
        .members
        .values()
        .map(|m| {
            let a = &m.alarm;
            RelatedSeries {
                series: a.series.clone(),
                family: a.family.clone(),
                labels: a.labels.clone(),
                alarm_id: a.id.clone(),
                state: a.state,
                quantile: a.quantile,
                factor: a.peak_factor,
                baseline_ns: a.baseline_ns.get(a.quantile).copied().unwrap_or(0.0),
                current_ns: a.current_ns.get(a.quantile).copied().unwrap_or(0.0),
                added_ns: m.added_ns,
                share: if total > 0.0 { m.added_ns / total } else { 0.0 },
            }
        })
        .collect();
    related.sort_by(|a, b| b.added_ns.total_cmp(&a.added_ns));
    incident.alarm.related = related;
    incident.alarm.summary = summary(incident);
}

/// The headline's summary, then where the time went when there is more than one series.
fn summary(incident: &Incident) -> String {
    let own = incident
        .alarm
        .summary
        .split(" — ")
        .next()
        .unwrap_or_default();
    let related = &incident.alarm.related;
    if related.len() < 2 {
        return own.to_owned();
    }
    let ranked: Vec<String> = related
        .iter()
        .take(4)
        .map(|r| {
            format!(
                "{} {} ({:.0} %, {} {}→{})",
                r.family,
                where_of(&r.labels),
                r.share * 100.0,
                r.quantile,
                format_ns(r.baseline_ns),
                format_ns(r.current_ns)
            )
        })
        .collect();
    let more = related.len().saturating_sub(4);
    let tail = if more > 0 {
        format!(", {more} more")
    } else {
        String::new()
    };
    format!(
        "{own} — one incident, {} series; time went to: {}{tail}",
        related.len(),
        ranked.join(", ")
    )
}

/// "loop0 write", "/system.slice/x", "instance-2": the labels that say where.
fn where_of(labels: &BTreeMap<String, String>) -> String {
    ["device", "vm", "cgroup", "op", "reason", "peer.group"]
        .iter()
        .filter_map(|k| labels.get(*k).map(String::as_str))
        .collect::<Vec<_>>()
        .join(" ")
}

/// Waiting time the shift added in the alarm's last regressed window, in ns.
fn added_time(alarm: &Alarm) -> f64 {
    let current = &alarm.evidence.current;
    let base = &alarm.evidence.baseline;
    let base_mean: f64 = base
        .fractions
        .iter()
        .enumerate()
        .map(|(i, f)| f * midpoint(base.offset + i as i32))
        .sum();
    let n = current.count() as f64;
    if n == 0.0 {
        return 0.0;
    }
    let current_mean = bucket_mean(current);
    (current_mean - base_mean).max(0.0) * n
}

fn midpoint(index: i32) -> f64 {
    (bucket_lower(index) + bucket_lower(index + 1)) / 2.0
}

/// The histogram's mean from bucket midpoints (as the baseline's, so they compare).
fn bucket_mean(h: &ExpHistogram) -> f64 {
    let n = h.count() as f64;
    h.buckets()
        .map(|(i, c)| c as f64 * midpoint(i))
        .sum::<f64>()
        / n.max(1.0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::detect::{Severity, alarm};

    fn series_alarm(series: &str, device: &str, start: u64, state: AlarmState) -> Alarm {
        let mut a = alarm::sample(Severity::Major);
        a.series = series.into();
        a.labels.insert("device".into(), device.into());
        a.id = format!("id-{series}");
        a.start_unix_nano = start;
        a.state = state;
        a
    }

    const MIN: u64 = 60_000_000_000;

    #[test]
    fn series_that_shift_together_are_one_incident() {
        let config = DetectConfig::default();
        let mut incidents = Incidents::default();
        let t = 1_800_000_000_000_000_000;
        let first = incidents.absorb(
            vec![
                series_alarm("a", "loop0", t, AlarmState::Open),
                series_alarm("b", "vda", t + 10_000_000_000, AlarmState::Open),
            ],
            t,
            &config,
        );
        assert_eq!(first.len(), 1, "{first:?}");
        assert_eq!(first[0].state, AlarmState::Open);
        assert_eq!(first[0].id, "id-a");
        assert_eq!(first[0].related.len(), 2);
        assert!(
            first[0].summary.contains("one incident, 2 series"),
            "{}",
            first[0].summary
        );
        // Much later, on an unrelated device: a second incident.
        let second = incidents.absorb(
            vec![series_alarm("c", "loop3", t + 10 * MIN, AlarmState::Open)],
            t + 10 * MIN,
            &config,
        );
        assert_eq!(second.len(), 1);
        assert_eq!(second[0].id, "id-c");
        assert_eq!(incidents.open_count(), 2);
        // The first resolves once both its series have.
        let r = incidents.absorb(
            vec![series_alarm("a", "loop0", t, AlarmState::Resolved)],
            t + 11 * MIN,
            &config,
        );
        assert_eq!(r[0].state, AlarmState::Ongoing);
        let r = incidents.absorb(
            vec![series_alarm("b", "vda", t, AlarmState::Resolved)],
            t + 12 * MIN,
            &config,
        );
        assert_eq!(r[0].state, AlarmState::Resolved);
        assert_eq!(r[0].id, "id-a", "the id stays the opening alarm's");
        assert_eq!(incidents.open_count(), 1);
    }

    /// A series alarm of `family` with `labels`, started at `start`.
    fn alarm_of(family: &str, labels: &[(&str, &str)], start: u64, state: AlarmState) -> Alarm {
        let mut a = alarm::sample(Severity::Minor);
        a.family = family.into();
        a.labels = labels
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        a.series = crate::detect::series_name(family, &a.labels);
        a.id = format!("id-{}", a.series);
        a.start_unix_nano = start;
        a.state = state;
        a
    }

    #[test]
    fn the_root_cgroup_opens_no_incident_and_is_evidence_for_the_next() {
        let config = DetectConfig::default();
        let mut incidents = Incidents::default();
        let t = 1_800_000_000_000_000_000;
        let root = |state| {
            let mut a = alarm_of(
                "block.cgroup.io.latency",
                &[("cgroup", "/"), ("op", "write")],
                t,
                state,
            );
            a.peak_factor = 30.0;
            a
        };
        // Everyone's unplaced work shifting: held, not alarmed.
        assert!(
            incidents
                .absorb(vec![root(AlarmState::Open)], t, &config)
                .is_empty()
        );
        assert_eq!(incidents.open_count(), 0);
        assert!(
            incidents
                .absorb(vec![root(AlarmState::Ongoing)], t + MIN, &config)
                .is_empty()
        );
        // Ten minutes later a workload's own reads slow: one incident, the root cgroup
        // in its evidence, the severity the workload's.
        let fio = |state| {
            alarm_of(
                "block.cgroup.io.latency",
                &[("cgroup", "/fio"), ("op", "read")],
                t + 10 * MIN,
                state,
            )
        };
        let opened = incidents.absorb(vec![fio(AlarmState::Open)], t + 10 * MIN, &config);
        assert_eq!(opened.len(), 1, "{opened:?}");
        assert_eq!(opened[0].labels["cgroup"], "/fio");
        assert_eq!(opened[0].related.len(), 2, "{:?}", opened[0].related);
        assert!(opened[0].related.iter().any(|r| r.labels["cgroup"] == "/"));
        let own = Severity::of(fio(AlarmState::Open).peak_factor, &config);
        assert_ne!(own, Severity::Critical);
        assert_eq!(
            opened[0].severity, own,
            "the workload's, not the root's 30×"
        );
        // The workload recovers while the root cgroup's alarm goes on: the incident is
        // over, and the root's alarm is held again (no event of its own).
        let r = incidents.absorb(vec![fio(AlarmState::Resolved)], t + 15 * MIN, &config);
        assert_eq!(r.len(), 1);
        assert_eq!(r[0].state, AlarmState::Resolved);
        assert!(
            incidents
                .absorb(vec![root(AlarmState::Ongoing)], t + 16 * MIN, &config)
                .is_empty()
        );
        assert!(
            incidents
                .absorb(vec![root(AlarmState::Resolved)], t + 17 * MIN, &config)
                .is_empty()
        );
        assert_eq!(incidents.open_count(), 0);
        assert!(incidents.held.is_empty());
    }

    #[test]
    fn the_nodes_run_queue_and_a_loop_device_in_the_same_minute_are_one_incident() {
        let config = DetectConfig::default();
        let t = 1_800_000_000_000_000_000;
        let loop1 = alarm_of(
            "block.io.device.latency",
            &[("device", "loop1"), ("op", "read")],
            t,
            AlarmState::Open,
        );
        let node = alarm_of("sched.runqueue.latency", &[], t + MIN / 2, AlarmState::Open);
        let mut incidents = Incidents::default();
        let out = incidents.absorb(vec![loop1.clone(), node.clone()], t, &config);
        assert_eq!(out.len(), 1, "{out:?}");
        assert_eq!(out[0].related.len(), 2);
        // In either order.
        let mut incidents = Incidents::default();
        let out = incidents.absorb(vec![node.clone(), loop1.clone()], t, &config);
        assert_eq!(out.len(), 1, "{out:?}");
        assert_eq!(out[0].family, "sched.runqueue.latency");
        // One cgroup's CPU and a disk starting in the same minute are one incident
        // (`group_cpu_and_io_within`, 2 min); two when that is off, or far apart.
        let cgroup = |start| {
            alarm_of(
                "cgroup.runqueue.latency",
                &[("cgroup", "/batch")],
                start,
                AlarmState::Open,
            )
        };
        let mut incidents = Incidents::default();
        let out = incidents.absorb(vec![loop1.clone(), cgroup(t + MIN)], t, &config);
        assert_eq!(out.len(), 1, "{out:?}");
        assert_eq!(out[0].related.len(), 2);
        let mut incidents = Incidents::default();
        let out = incidents.absorb(vec![loop1.clone(), cgroup(t + 3 * MIN)], t, &config);
        assert_eq!(out.len(), 2, "{out:?}");
        let apart = DetectConfig {
            group_cpu_and_io_within: std::time::Duration::ZERO,
            ..DetectConfig::default()
        };
        let mut incidents = Incidents::default();
        let out = incidents.absorb(vec![loop1.clone(), cgroup(t)], t, &apart);
        assert_eq!(out.len(), 2, "{out:?}");
        // The node's run queue long after the disk's incident opened: its own.
        let mut incidents = Incidents::default();
        incidents.absorb(vec![loop1], t, &config);
        let mut late = node;
        late.start_unix_nano = t + 10 * MIN;
        let out = incidents.absorb(vec![late], t + 10 * MIN, &config);
        assert_eq!(out[0].family, "sched.runqueue.latency");
        assert_eq!(incidents.open_count(), 2);
    }

    /// With windows on the clock's grid, a CPU storm's alarms all open in one report,
    /// in series-name order: a loop device's, a cgroup's run queue, then the node's.
    #[test]
    fn a_cpu_storms_alarms_opened_in_one_report_are_one_incident() {
        let config = DetectConfig::default();
        let t = 1_800_000_000_000_000_000;
        let batch = vec![
            alarm_of(
                "block.io.device.latency",
                &[("device", "loop4"), ("op", "read")],
                t,
                AlarmState::Open,
            ),
            alarm_of(
                "cgroup.runqueue.latency",
                &[("cgroup", "/npsoak-fio-a")],
                t,
                AlarmState::Open,
            ),
            alarm_of("sched.runqueue.latency", &[], t, AlarmState::Open),
        ];
        let mut incidents = Incidents::default();
        let out = incidents.absorb(batch, t, &config);
        assert_eq!(out.len(), 1, "{out:#?}");
        assert_eq!(out[0].family, "sched.runqueue.latency");
        assert_eq!(out[0].related.len(), 3, "{:?}", out[0].related);
        assert_eq!(incidents.open_count(), 1);
    }

    #[test]
    fn a_loop_device_is_stacked_on_its_backing_files_disk() {
        let dir = std::env::temp_dir().join(format!("np-topo-{}", std::process::id()));
        let backing = dir.join("backing.img");
        std::fs::create_dir_all(dir.join("block/loop7/loop")).unwrap();
        std::fs::create_dir_all(dir.join("block/dm-1/slaves/loop7")).unwrap();
        std::fs::write(&backing, b"x").unwrap();
        std::fs::write(
            dir.join("block/loop7/loop/backing_file"),
            format!("{}\n", backing.display()),
        )
        .unwrap();
        // The backing file's device, as sysfs names it.
        use std::os::unix::fs::MetadataExt as _;
        let dev = std::fs::metadata(&backing).unwrap().dev();
        let (major, minor) = (libc::major(dev), libc::minor(dev));
        std::fs::create_dir_all(dir.join("devices/virtual/block/vdz")).unwrap();
        std::fs::create_dir_all(dir.join("dev/block")).unwrap();
        std::os::unix::fs::symlink(
            dir.join("devices/virtual/block/vdz"),
            dir.join(format!("dev/block/{major}:{minor}")),
        )
        .unwrap();
        let mut topology = Topology::from_sysfs(&dir);
        assert_eq!(topology.stack("dm-1"), ["dm-1", "loop7", "vdz"]);
        assert_eq!(topology.stack("vdz"), ["vdz"]);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_stacked_device_joins_even_when_it_started_later() {
        let config = DetectConfig::default();
        let mut topology = Topology::default();
        topology.lower.insert("loop0".into(), vec!["vda".into()]);
        let mut incidents = Incidents::new(topology);
        let t = 1_800_000_000_000_000_000;
        incidents.absorb(
            vec![series_alarm("a", "loop0", t, AlarmState::Open)],
            t,
            &config,
        );
        let later = incidents.absorb(
            vec![series_alarm("b", "vda", t + 10 * MIN, AlarmState::Open)],
            t + 10 * MIN,
            &config,
        );
        assert_eq!(later.len(), 1);
        assert_eq!(later[0].id, "id-a");
        assert_eq!(later[0].state, AlarmState::Ongoing);
        assert_eq!(incidents.open_count(), 1);
    }
}
