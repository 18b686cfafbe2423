//! The collection loop: one task owns all state; every interval it reads the kernel,
//! turns cumulative readings into interval deltas, builds a report and hands it to the
//! exporters.

use std::{
    collections::{BTreeMap, HashMap},
    sync::Arc,
    time::{Duration, Instant},
};

use tokio::signal::unix::{Signal, SignalKind, signal};

use crate::{
    actions::Actions,
    aggregate::{
        Delta, TrackedReading, budget::Budget, carried_total, carry_totals, counter_delta,
    },
    attribution::backing,
    capacity::Capacity,
    config::Config,
    detect::{AlarmState, Detector, ScalarInput, Topology, scalar::ScalarConfig},
    export::{Exporter, otlp::transport::OtlpSender},
    probes::{Probes, handover::Handover, stats::ProgramRunStats},
    report::{AgentReport, CounterReport, ProbeReport, ProgramCost, Report, SeriesReport},
    selfmon::{self, ProcessSample},
    state::{Resume, Saved, SavedProgram, StateDir},
    util::{
        intern::intern,
        time::{rfc3339, unix_nanos},
    },
};

mod reload;

pub use reload::Reload;

/// How long the agent waits for running actions at exit.
const ACTIONS_GRACE: Duration = Duration::from_secs(5);
/// How long queued OTLP batches get to leave at exit (or when a reload replaces the
/// exporter).
const OTLP_FLUSH: Duration = Duration::from_secs(5);

pub struct Pipeline {
    probes: Probes,
    /// How long each exporter took with the previous report, in ms.
    export_ms: BTreeMap<&'static str, f64>,
    budget: Budget,
    exporters: Vec<Box<dyn Exporter>>,
    node: String,
    delta: Delta,
    previous_programs: HashMap<&'static str, ProgramRunStats>,
    previous_drops: HashMap<&'static str, u64>,
    /// Drop counters continued from an older pin set: (base, offset).
    drops_carried: HashMap<&'static str, (u64, u64)>,
    previous_process: ProcessSample,
    detector: Option<Detector>,
    capacity: Option<Capacity>,
    actions: Option<Actions>,
    /// Where the state that outlives the agent is saved, if anywhere.
    state: Option<StateDir>,
    /// Start of the cumulative series (unix ns): this run's, or the previous run's
    /// when the kernel's counts continue.
    start_unix_nano: u64,
    /// The running configuration and how to read it again, for SIGHUP.
    reload: Option<(Config, Reload)>,
    /// The OTLP exporter's sender, flushed at exit.
    otlp: Option<Arc<OtlpSender>>,
    /// The console is a recording (`nodepulse record`): a reload leaves it alone.
    recording: bool,
    /// The last report exported, for an endpoint a reload starts anew.
    last_report: Option<Report>,
    /// Where sysfs is, for what stacked devices are backed by.
    sys_root: std::path::PathBuf,
}

impl Pipeline {
    pub fn new(mut probes: Probes, exporters: Vec<Box<dyn Exporter>>, config: &Config) -> Self {
        let limits = &config.limits;
        // Outliers from the first request on, before any device has a history.
        probes.on_interval(&[]);
        Self {
            probes,
            export_ms: BTreeMap::new(),
            budget: Budget::new(crate::probes::budget_rules(limits)),
            exporters,
            node: config.node_name(),
            delta: Delta::default(),
            previous_programs: HashMap::new(),
            previous_drops: HashMap::new(),
            drops_carried: HashMap::new(),
            previous_process: selfmon::sample(),
            detector: config.detect.enabled.then(|| {
                let topology = Topology::from_sysfs(&config.agent.sys_root);
                Detector::with_topology(config.detect.clone(), &config.node_name(), topology)
            }),
            capacity: config
                .capacity
                .enabled
                .then(|| Capacity::new(&config.capacity)),
            actions: None,
            state: None,
            start_unix_nano: unix_nanos(),
            reload: None,
            otlp: None,
            recording: false,
            last_report: None,
            sys_root: config.agent.sys_root.clone(),
        }
    }

    /// The OTLP sender to flush at exit (a reload may replace it).
    pub fn with_otlp(mut self, otlp: Option<Arc<OtlpSender>>) -> Self {
        self.otlp = otlp;
        self
    }

    /// The console is a recording, which a reload must not replace.
    pub fn recording(mut self, recording: bool) -> Self {
        self.recording = recording;
        self
    }

    /// Lets SIGHUP re-read the configuration (`running` is the one in force).
    pub fn with_reload(mut self, running: Config, reload: Reload) -> Self {
        self.reload = Some((running, reload));
        self
    }

    /// Saves state to `state` from now on, and takes up the previous run's: its
    /// readings (when the kernel's counts continue), its detector's baselines and
    /// open alarms.
    pub fn with_state(mut self, state: StateDir, resume: Resume) -> Self {
        self.start_unix_nano = resume.start_unix_nano;
        let handover = if resume.handed_over {
            self.probes.take_handover()
        } else {
            None
        };
        if let Some(saved) = resume.saved {
            if resume.counts_continue {
                let readings = saved.readings;
                self.delta =
                    Delta::load(readings.histograms, readings.identities, readings.counters)
                        .with_carried(readings.carried, readings.carried_counters);
                self.previous_drops = saved
                    .drops
                    .iter()
                    .map(|(name, &total)| (intern(name), total))
                    .collect();
                self.drops_carried = saved
                    .drops_carried
                    .iter()
                    .map(|(name, &c)| (intern(name), c))
                    .collect();
                self.previous_programs = saved
                    .programs
                    .iter()
                    .map(|(name, p)| {
                        let program = intern(name);
                        let stats = ProgramRunStats {
                            probe: "",
                            program,
                            run_time_ns: p.run_time_ns,
                            run_count: p.run_count,
                            recursion_misses: p.recursion_misses,
                        };
                        (program, stats)
                    })
                    .collect();
                if let Some(handover) = handover {
                    self.carry(handover);
                }
            }
            if let (Some(detector), Some(snapshot)) = (&mut self.detector, saved.detector) {
                match detector.restore(snapshot) {
                    Ok(r) => tracing::info!(
                        series = r.series,
                        judged = r.judged,
                        scalar_series = r.scalars,
                        scalar_judged = r.scalars_judged,
                        open_alarms = ?r.open_alarms,
                        "detector state restored: baselines kept, open alarms stay open"
                    ),
                    Err(e) => tracing::warn!(
                        "the saved detector state cannot be used ({e}); baselines are \
                         learned again"
                    ),
                }
            }
        }
        self.state = Some(state);
        self
    }

    /// Continues the series of the older pin set read at the switch (see
    /// [`crate::probes::handover`]), saying what continues and what was reset.
    fn carry(&mut self, h: Handover) {
        let tracked = |readings: Vec<crate::probes::Reading>| {
            readings
                .into_iter()
                .map(|r| TrackedReading {
                    key: r.key,
                    hist: r.hist,
                    entity: r.entity,
                })
                .collect()
        };
        let (series, counters) = self.delta.carry(
            tracked(h.old.readings),
            tracked(h.base.readings),
            h.old.counters,
            h.base.counters,
        );
        self.drops_carried = carry_totals(&self.drops_carried, h.old.drops, h.base.drops);
        let carried = &self.drops_carried;
        self.previous_drops.retain(|k, _| carried.contains_key(k));
        // The new programs' run times start from zero.
        self.previous_programs.clear();
        tracing::info!(
            from = h.from,
            maps = ?h.carried,
            series,
            counters,
            entries = h.entries,
            repeated = h.repeated,
            took_ms = h.took.as_millis() as u64,
            "counts continue across the switch of pin sets: what the old programs \
             counted until the new ones took over is in the first report, with the same \
             start time"
        );
        for (map, why) in &h.reset {
            tracing::warn!(
                map,
                "map reset at the upgrade: {why}; its series start again from zero"
            );
        }
        for (map, entries) in &h.unsettled {
            tracing::warn!(
                map,
                entries,
                "entries counted at every attempt to read them at one instant: the events \
                 between two readings of each may be lost"
            );
        }
    }

    /// Start of the cumulative series (unix ns).
    pub fn start_unix_nano(&self) -> u64 {
        self.start_unix_nano
    }

    /// Saves what the next start continues from (see [`crate::state`]).
    fn save_state(&self, clean_exit: bool) {
        if let Some(pending) = self.prepare_state(clean_exit)
            && let Err(e) = pending.commit()
        {
            tracing::warn!("cannot save the state: {e}");
        }
    }

    /// Writes what the next start continues from, not yet in place.
    fn prepare_state(&self, clean_exit: bool) -> Option<crate::state::PendingSave> {
        let state = self.state.as_ref()?;
        let (histograms, identities, counters) = self.delta.save();
        let (carried, carried_counters) = self.delta.save_carried();
        let saved = Saved {
            format: crate::state::FORMAT,
            version: env!("CARGO_PKG_VERSION").into(),
            pins: self.probes.pins().map(|p| p.name().to_owned()),
            start_unix_nano: self.start_unix_nano,
            saved_unix_nano: unix_nanos(),
            clean_exit,
            readings: crate::aggregate::saved::SavedReadings {
                histograms,
                identities,
                counters,
                carried,
                carried_counters,
            },
            drops: self
                .previous_drops
                .iter()
                .map(|(&name, &total)| (name.to_owned(), total))
                .collect(),
            drops_carried: self
                .drops_carried
                .iter()
                .map(|(&name, &c)| (name.to_owned(), c))
                .collect(),
            programs: self
                .previous_programs
                .iter()
                .map(|(&name, p)| {
                    let saved = SavedProgram {
                        run_time_ns: p.run_time_ns,
                        run_count: p.run_count,
                        recursion_misses: p.recursion_misses,
                    };
                    (name.to_owned(), saved)
                })
                .collect(),
            detector: self.detector.as_ref().map(Detector::snapshot),
        };
        state
            .prepare(&saved, clean_exit)
            .inspect_err(|e| {
                tracing::warn!(
                    path = %state.path().display(),
                    "cannot save the state: {e}; a restart would lose the detector's baselines"
                )
            })
            .ok()
    }

    /// Remedial actions for the alarms (started before the probes attach, so that a
    /// bad audit log path stops the agent before anything is attached).
    pub fn with_actions(mut self, actions: Option<Actions>) -> Self {
        self.actions = actions;
        self
    }

    pub fn probes(&self) -> &Probes {
        &self.probes
    }

    /// Reads everything once and builds the report for the interval since the last call.
    pub fn collect(&mut self) -> Report {
        let collection = self.probes.collect();
        for (probe, error) in &collection.errors {
            tracing::warn!(probe, "cannot read probe maps: {error}");
        }
        let process = selfmon::sample();
        let interval_s = process
            .at
            .duration_since(self.previous_process.at)
            .as_secs_f64();
        let usage = selfmon::usage_between(&self.previous_process, &process);
        self.previous_process = process;

        let probes = &mut self.probes;
        let collected = self.delta.collect(
            collection
                .readings
                .into_iter()
                .map(|r| TrackedReading {
                    key: r.key,
                    hist: r.hist,
                    entity: r.entity,
                })
                .collect(),
            collection.counters,
            |entity| probes.alive(entity),
        );
        // Their last counts are in this report: their entries can go.
        self.probes.forget(&collected.ended);
        let series = self.budget.apply(collected.series);
        let series: Vec<SeriesReport> = series
            .into_iter()
            .map(|s| SeriesReport::from_owned(s, interval_s))
            .collect();

        let counters: Vec<CounterReport> = collected
            .counters
            .iter()
            .map(|c| CounterReport::new(c, interval_s))
            .collect();

        let mut costs: BTreeMap<&'static str, Vec<ProgramCost>> = BTreeMap::new();
        for now in collection.programs {
            let before = self.previous_programs.get(now.program);
            let events = counter_delta(now.run_count, before.map_or(0, |b| b.run_count));
            let run_time_ns = counter_delta(now.run_time_ns, before.map_or(0, |b| b.run_time_ns));
            let stats_on = self.probes.bpf_stats().unavailable.is_none();
            costs.entry(now.probe).or_default().push(ProgramCost {
                program: now.program,
                events,
                run_time_ns,
                events_total: now.run_count,
                run_time_ns_total: now.run_time_ns,
                recursion_misses: counter_delta(
                    now.recursion_misses,
                    before.map_or(0, |b| b.recursion_misses),
                ),
                recursion_misses_total: now.recursion_misses,
                ns_per_event: (stats_on && events > 0).then(|| run_time_ns as f64 / events as f64),
            });
            self.previous_programs.insert(now.program, now);
        }
        let probes = self
            .probes
            .statuses()
            .iter()
            .map(|st| ProbeReport::new(st, costs.remove(st.probe).unwrap_or_default()))
            .collect();

        let dropped_total: BTreeMap<&'static str, u64> = collection
            .drops
            .into_iter()
            .map(|(name, total)| {
                let total = carried_total(self.drops_carried.get(name).copied(), total);
                (name, total)
            })
            .collect();
        let dropped = dropped_total
            .iter()
            .map(|(&name, &total)| {
                let before = self.previous_drops.insert(name, total).unwrap_or(0);
                (name, counter_delta(total, before))
            })
            .collect();

        self.probes.on_interval(&series);
        let series_devices = stacked_devices(&series);
        let mut agent = AgentReport::new(
            usage,
            dropped,
            dropped_total,
            self.probes.bpf_stats().unavailable.clone(),
        );
        agent.outliers_discarded = collection.outliers_discarded;
        agent.export_ms = self.export_ms.clone();
        let mut report = Report {
            time: rfc3339(unix_nanos()),
            interval_s,
            node: self.node.clone(),
            series,
            counters,
            outliers: collection.outliers,
            probes,
            agent,
            alarms: Vec::new(),
            alarms_open: 0,
            learning: Vec::new(),
            learning_until: None,
            actions: Vec::new(),
            capacity: None,
            backing: self.backing_of(&series_devices),
        };
        report.capacity = self
            .capacity
            .as_mut()
            .map(|c| c.update(&report, unix_nanos() / 1_000_000_000));
        for a in report.capacity.iter().flat_map(|c| &c.alarms) {
            match a.state {
                "open" => tracing::warn!(resource = a.resource, "{}", a.summary),
                "resolved" => tracing::info!(resource = a.resource, "resolved: {}", a.summary),
                _ => {}
            }
        }
        self.detect(&mut report);
        self.capacity_alarms(&mut report);
        report
    }

    /// Capacity alarms join the detector's: the same actions, the same export (each
    /// is its own trace).
    fn capacity_alarms(&mut self, report: &mut Report) {
        let Some(capacity) = &mut self.capacity else {
            return;
        };
        for alarm in capacity.take_alarms() {
            if let Some(actions) = &mut self.actions {
                actions.dispatch(&alarm);
            }
            if alarm.state != AlarmState::Resolved {
                report.alarms_open += 1;
            }
            report.alarms.push(alarm);
        }
    }

    /// What the interval's loop and device-mapper devices are backed by.
    fn backing_of(&self, devices: &[String]) -> BTreeMap<String, String> {
        devices
            .iter()
            .filter_map(|d| Some((d.clone(), backing::identity(&self.sys_root, d)?)))
            .collect()
    }

    /// Runs the detector over the interval's series, logs and acts on its alarms.
    fn detect(&mut self, report: &mut Report) {
        if let Some(detector) = &mut self.detector {
            detector.note_backing(&report.backing, unix_nanos());
            // Only the families the detector watches: the others' deltas and owned
            // labels would be built for nothing (size, depth: a third of a storage
            // node's series).
            let watched: Vec<_> = {
                let config = detector.config();
                report
                    .series
                    .iter()
                    .filter(|s| config.watches(s.family))
                    .collect()
            };
            let deltas: Vec<_> = watched.iter().map(|s| s.delta_histogram()).collect();
            let scalars = scalar_inputs(report, &detector.config().scalar);
            let out = detector.update_with_scalars(
                unix_nanos(),
                (report.interval_s * 1e9) as u64,
                watched.iter().zip(&deltas).map(|(s, h)| {
                    let labels = s
                        .labels
                        .iter()
                        .map(|(k, v)| ((*k).to_owned(), v.clone()))
                        .collect();
                    (s.family, labels, h)
                }),
                scalars,
            );
            for alarm in &out.alarms {
                match alarm.state {
                    AlarmState::Open => tracing::warn!(alarm = alarm.id, "{}", alarm.summary),
                    AlarmState::Resolved => tracing::info!(alarm = alarm.id, "{}", alarm.summary),
                    AlarmState::Ongoing => {}
                }
                if let Some(actions) = &mut self.actions {
                    actions.dispatch(alarm);
                }
            }
            report.alarms = out.alarms;
            report.alarms_open = out.open;
            report.learning = out.learning;
            report.learning_until = out.learning_until.map(crate::util::time::rfc3339);
        }
        if let Some(actions) = &mut self.actions {
            report.actions = actions.completed();
            report.agent.audit_failures_total = actions.audit_failures();
        }
    }
}

/// The loop and device-mapper disks among the series (a partition's, by its disk).
fn stacked_devices(series: &[SeriesReport]) -> Vec<String> {
    let mut out: Vec<String> = series
        .iter()
        .filter(|s| {
            s.labels
                .get("device.type")
                .is_some_and(|t| t == "loop" || t == "dm" || t == "lvm")
        })
        .filter_map(|s| {
            s.labels
                .get("device.disk")
                .or(s.labels.get("device"))
                .cloned()
        })
        .collect();
    out.sort();
    out.dedup();
    out
}

/// The interval's numbers the scalar detector watches ([detect.scalar]): rates of
/// histogram families and counters, means of histogram families.
fn scalar_inputs(report: &Report, c: &ScalarConfig) -> Vec<ScalarInput> {
    let labels = |l: &BTreeMap<&'static str, String>| -> BTreeMap<String, String> {
        l.iter()
            .map(|(k, v)| ((*k).to_owned(), v.clone()))
            .collect()
    };
    let mut out: Vec<ScalarInput> = report
        .series
        .iter()
        .flat_map(|s| c.series_inputs(s.family, s.rate_per_s, s.mean, || labels(&s.labels)))
        .collect();
    out.extend(
        (report.counters.iter())
            .filter_map(|k| c.counter_input(k.family, k.rate_per_s, || labels(&k.labels))),
    );
    out
}

impl Pipeline {
    /// Encodes `report` for every exporter, timed with its export.
    fn prepare(&mut self, report: &Report) {
        for e in &mut self.exporters {
            let started = Instant::now();
            e.prepare(report);
            self.export_ms
                .insert(e.name(), started.elapsed().as_secs_f64() * 1e3);
        }
    }

    /// Hands `report` out with the state saved in between (see [`Exporter::prepare`]).
    /// A kill between the save and the hand-out loses this report's deltas from export,
    /// never counts them twice; encoding first leaves only queue pushes in that window
    /// (tens of milliseconds less: a debug build took 40–80 ms to encode a report of
    /// ~100 series as JSON).
    /// The state is written before and put in place right after the console's write
    /// (by its writer thread when the report had to be queued, see
    /// [`Exporter::export_then`]): a kill can then only fall between a write and a
    /// rename, microseconds, instead of the writer thread's wake-up.
    fn save_and_export(&mut self, report: &Report, clean_exit: bool) {
        self.prepare(report);
        let mut then = self.prepare_state(clean_exit).map(|pending| {
            Box::new(move || {
                if let Err(e) = pending.commit() {
                    tracing::warn!("cannot save the state: {e}");
                }
            }) as crate::export::Then
        });
        for e in &mut self.exporters {
            let started = Instant::now();
            let result = match then.take() {
                Some(t) => {
                    let (result, back) = e.export_then(report, t);
                    then = back;
                    result
                }
                None => e.export(report),
            };
            if let Err(err) = result {
                tracing::warn!(exporter = e.name(), "export failed: {err}");
            }
            *self.export_ms.entry(e.name()).or_default() += started.elapsed().as_secs_f64() * 1e3;
        }
        if let Some(then) = then {
            then();
        }
    }

    /// Runs until SIGINT or SIGTERM, or after `max_reports` reports when non-zero.
    /// Returning drops the probes, which detaches every program.
    pub async fn run(mut self, interval: Duration, max_reports: u64, mut shutdown: Shutdown) {
        let start = Instant::now();
        let mut ticker =
            tokio::time::interval_at(tokio::time::Instant::from_std(start + interval), interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut reports = 0u64;
        loop {
            tokio::select! {
                _ = ticker.tick() => {
                    let report = self.collect();
                    self.save_and_export(&report, false);
                    self.last_report = Some(report);
                    reports += 1;
                    if max_reports != 0 && reports >= max_reports {
                        self.save_state(true);
                        break;
                    }
                    if !self.exporters.is_empty() && self.exporters.iter().all(|e| e.closed()) {
                        tracing::info!("nobody reads the output any more; stopping");
                        break;
                    }
                }
                name = shutdown.requested() => {
                    if name == "SIGHUP" {
                        self.reload();
                        continue;
                    }
                    // A last report, so exporters hold everything measured until now.
                    tracing::info!("{name}: final report, then detaching");
                    let report = self.collect();
                    self.save_and_export(&report, true);
                    break;
                }
            }
        }
        // Runs still going after the grace are killed, with all they started, and
        // audited as stopped.
        if let Some(actions) = &mut self.actions
            && !actions.stop(ACTIONS_GRACE)
        {
            tracing::warn!("actions still running at exit after being killed");
        }
        if let Some(sender) = self.otlp.take() {
            // Give queued batches (the final report included) a few seconds to leave.
            if !sender.flush(OTLP_FLUSH).await {
                tracing::warn!("OTLP: some batches were still queued at exit");
            }
        }
        let kept = self.probes.pins().map(|p| p.dir().display().to_string());
        drop(self);
        match kept {
            Some(dir) => tracing::info!(
                pins = dir,
                "probes stay attached and keep counting until the next start (`nodepulse \
                 cleanup` detaches them); exiting"
            ),
            None => tracing::info!("probes detached, exiting"),
        }
    }
}

/// SIGTERM and SIGINT, caught from startup on so that a signal that arrives while the
/// probes attach still ends in a clean detach; and SIGHUP, which reloads the
/// configuration instead of ending the agent.
pub struct Shutdown {
    sigterm: Signal,
    sigint: Signal,
    sighup: Signal,
}

impl Shutdown {
    /// Must be called inside the tokio runtime.
    pub fn install() -> std::io::Result<Self> {
        Ok(Self {
            sigterm: signal(SignalKind::terminate())?,
            sigint: signal(SignalKind::interrupt())?,
            sighup: signal(SignalKind::hangup())?,
        })
    }

    /// Resolves with the signal's name once one has arrived (also if it arrived before
    /// this was first awaited): `SIGHUP` asks for a reload, the others for the end.
    pub async fn requested(&mut self) -> &'static str {
        tokio::select! {
            _ = self.sigterm.recv() => "SIGTERM",
            _ = self.sigint.recv() => "SIGINT",
            _ = self.sighup.recv() => "SIGHUP",
        }
    }
}
