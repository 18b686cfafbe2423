//! Remedial actions: what runs when an alarm opens or resolves, only where a rule says
//! so. Safety first: dry-run, a cooldown per rule, a global hourly limit and a cap on
//! runs at the same time; every decision (runs and skips) goes to the audit log. Runs
//! happen on threads of their own and come back through a channel, so the collection
//! loop never waits for one.

pub mod audit;
pub mod config;
pub mod program;
pub mod run_cgroup;
pub mod sweep;
pub mod webhook;

use std::{
    collections::{BTreeMap, HashMap, VecDeque},
    path::PathBuf,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicUsize, Ordering},
        mpsc,
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use serde::Serialize;
use thiserror::Error;

pub use config::{ActionRule, ActionsConfig, Trigger, WebhookFormat};

use crate::{
    detect::{Alarm, AlarmState},
    util::{
        random,
        time::{rfc3339, unix_nanos},
    },
};
use audit::AuditLog;

#[derive(Debug, Error)]
pub enum ActionsError {
    #[error(
        "cannot open the action audit log {path}: {source}; set actions.audit_log to a \
         writable path"
    )]
    Audit {
        path: PathBuf,
        source: std::io::Error,
    },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// Written before a program or webhook starts; its end follows in another record.
    Started,
    /// Killed, with everything it started, because the agent was stopping.
    Stopped,
    /// Found still running (it or what it started) when the agent started again after
    /// a crash, and killed.
    KilledAfterRestart,
    /// Audited as started by an agent that ended before recording how it ended, with
    /// nothing of it left running at the next start.
    Unfinished,
    Ok,
    Failed,
    TimedOut,
    DryRun,
    SkippedCooldown,
    SkippedRateLimit,
    SkippedConcurrency,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Started => "started",
            Outcome::Stopped => "stopped",
            Outcome::KilledAfterRestart => "killed_after_restart",
            Outcome::Unfinished => "unfinished",
            Outcome::Ok => "ok",
            Outcome::Failed => "failed",
            Outcome::TimedOut => "timed_out",
            Outcome::DryRun => "dry_run",
            Outcome::SkippedCooldown => "skipped_cooldown",
            Outcome::SkippedRateLimit => "skipped_rate_limit",
            Outcome::SkippedConcurrency => "skipped_concurrency",
        }
    }
}

/// One run of one rule for one alarm event: the audit line, the log record and the
/// span (a child of the alarm's span).
#[derive(Clone, Debug, Serialize)]
pub struct ActionRun {
    pub time: String,
    pub alarm_id: String,
    /// The alarm event that triggered it: `open`, `ongoing` (a series the rule matches
    /// joined the open incident) or `resolved`.
    pub event: &'static str,
    pub series: String,
    pub rule: String,
    /// `program` or `webhook`.
    pub kind: &'static str,
    /// The argv (joined) or the URL.
    pub target: String,
    pub outcome: Outcome,
    pub exit_code: Option<i32>,
    pub http_status: Option<u16>,
    pub duration_ms: f64,
    pub error: Option<String>,
    /// The first 4 KiB of the program's output or the webhook's answer.
    pub output: String,
    /// Processes of the run (`pid comm`) still alive when it ended, and killed then:
    /// whatever it left in the background or detached with `setsid`.
    pub killed: Vec<String>,
    pub trace_id: String,
    pub span_id: String,
    pub parent_span_id: String,
    pub start_unix_nano: u64,
    pub end_unix_nano: u64,
}

impl ActionRun {
    fn new(alarm: &Alarm, rule: &ActionRule, outcome: Outcome) -> Self {
        let now = unix_nanos();
        let (kind, target) = if rule.program.is_empty() {
            ("webhook", rule.webhook.clone())
        } else {
            ("program", rule.program.join(" "))
        };
        Self {
            time: rfc3339(now),
            alarm_id: alarm.id.clone(),
            event: alarm.state.as_str(),
            series: alarm.series.clone(),
            rule: rule.name.clone(),
            kind,
            target,
            outcome,
            exit_code: None,
            http_status: None,
            duration_ms: 0.0,
            error: None,
            output: String::new(),
            killed: Vec::new(),
            trace_id: alarm.trace_id.clone(),
            span_id: random::hex_id::<8>(),
            parent_span_id: alarm.span_id.clone(),
            start_unix_nano: now,
            end_unix_nano: now,
        }
    }

    /// W3C trace context of this run, for the program or the webhook receiver.
    pub fn traceparent(&self) -> String {
        format!("00-{}-{}-01", self.trace_id, self.span_id)
    }
}

pub struct Actions {
    config: ActionsConfig,
    node: String,
    audit: Arc<AuditLog>,
    /// Last run per rule (cooldown).
    last_run: HashMap<String, Instant>,
    /// Starts within the last hour (global rate limit).
    started: VecDeque<Instant>,
    running: Arc<AtomicUsize>,
    /// Set when the agent stops: running programs are killed.
    stop: Arc<AtomicBool>,
    done_tx: mpsc::Sender<ActionRun>,
    done_rx: mpsc::Receiver<ActionRun>,
    threads: Vec<JoinHandle<()>>,
    /// Per open incident (alarm id), the rules whose `open` run was decided (started
    /// or skipped): each runs at most once per incident.
    decided: HashMap<String, Vec<String>>,
}

impl Actions {
    /// `None` when no rule is configured: then nothing can ever run.
    pub fn start(config: &ActionsConfig, node: &str) -> Result<Option<Self>, ActionsError> {
        if config.rules.is_empty() {
            return Ok(None);
        }
        let audit = AuditLog::open(&config.audit_log).map_err(|source| ActionsError::Audit {
            path: config.audit_log.clone(),
            source,
        })?;
        match run_cgroup::containment() {
            Ok(how) => tracing::info!("actions: {how}"),
            Err(why) => tracing::warn!("actions: {why}"),
        }
        let (done_tx, done_rx) = mpsc::channel();
        take_over_orphans(&audit, &done_tx);
        Ok(Some(Self {
            config: config.clone(),
            node: node.to_owned(),
            audit: Arc::new(audit),
            last_run: HashMap::new(),
            started: VecDeque::new(),
            running: Arc::new(AtomicUsize::new(0)),
            stop: Arc::new(AtomicBool::new(false)),
            done_tx,
            done_rx,
            threads: Vec::new(),
            decided: HashMap::new(),
        }))
    }

    /// SIGHUP: new rules and limits. Runs in progress go on (audited where they
    /// started); per-incident decisions, cooldowns and the hourly count carry over, so
    /// a reload never runs a rule twice for one incident.
    pub fn reconfigure(&mut self, config: &ActionsConfig) -> Result<(), ActionsError> {
        if config.audit_log != self.config.audit_log {
            let audit =
                AuditLog::open(&config.audit_log).map_err(|source| ActionsError::Audit {
                    path: config.audit_log.clone(),
                    source,
                })?;
            self.audit = Arc::new(audit);
        }
        self.config = config.clone();
        Ok(())
    }

    pub fn audit_path(&self) -> &std::path::Path {
        self.audit.path()
    }

    /// Audit records that could not be written since the start.
    pub fn audit_failures(&self) -> u64 {
        self.audit.failures()
    }

    /// Starts (or skips, or dry-runs) every rule that matches this alarm event. An
    /// alarm is an incident: a rule's `open` run happens once per incident, when the
    /// incident first matches it: when it opens, or when a matching series joins it
    /// later (a rule on a loop device still runs when its backing disk's alarm opened
    /// the incident a window earlier).
    pub fn dispatch(&mut self, alarm: &Alarm) {
        let trigger = match alarm.state {
            AlarmState::Open | AlarmState::Ongoing => Trigger::Open,
            AlarmState::Resolved => Trigger::Resolved,
        };
        let decided = self.decided.entry(alarm.id.clone()).or_default();
        let rules: Vec<ActionRule> = self
            .config
            .rules
            .iter()
            .filter(|r| r.on.contains(&trigger) && matches(r, alarm))
            .filter(|r| trigger == Trigger::Resolved || !decided.contains(&r.name))
            .cloned()
            .collect();
        if trigger == Trigger::Resolved {
            self.decided.remove(&alarm.id);
        } else {
            decided.extend(rules.iter().map(|r| r.name.clone()));
        }
        for rule in rules {
            let now = Instant::now();
            while self
                .started
                .front()
                .is_some_and(|t| now.duration_since(*t) >= Duration::from_secs(3600))
            {
                self.started.pop_front();
            }
            // A resolution is never held back by the cooldown: a receiver must hear it.
            let cooling = trigger == Trigger::Open
                && self
                    .last_run
                    .get(&rule.name)
                    .is_some_and(|t| now.duration_since(*t) < rule.cooldown);
            let skip = if cooling {
                Some(Outcome::SkippedCooldown)
            } else if self.started.len() >= self.config.max_per_hour as usize {
                Some(Outcome::SkippedRateLimit)
            } else if self.running.load(Ordering::SeqCst) >= self.config.max_concurrent {
                Some(Outcome::SkippedConcurrency)
            } else if self.config.dry_run {
                Some(Outcome::DryRun)
            } else {
                None
            };
            if let Some(outcome) = skip {
                if outcome == Outcome::DryRun {
                    self.last_run.insert(rule.name.clone(), now);
                    self.started.push_back(now);
                }
                let run = ActionRun::new(alarm, &rule, outcome);
                finish(&self.audit, &self.done_tx, run);
                continue;
            }
            self.last_run.insert(rule.name.clone(), now);
            self.started.push_back(now);
            self.spawn(rule, alarm.clone());
        }
        self.threads.retain(|t| !t.is_finished());
    }

    fn spawn(&mut self, rule: ActionRule, alarm: Alarm) {
        let running = Arc::clone(&self.running);
        let audit = Arc::clone(&self.audit);
        let done = self.done_tx.clone();
        let node = self.node.clone();
        let stop = Arc::clone(&self.stop);
        running.fetch_add(1, Ordering::SeqCst);
        let spawned = std::thread::Builder::new()
            .name(format!("action {}", rule.name))
            .spawn(move || {
                let run = execute(&rule, &alarm, &node, &audit, &stop);
                finish(&audit, &done, run);
                running.fetch_sub(1, Ordering::SeqCst);
            });
        match spawned {
            Ok(t) => self.threads.push(t),
            Err(e) => {
                self.running.fetch_sub(1, Ordering::SeqCst);
                tracing::error!("cannot start a thread for an action: {e}");
            }
        }
    }

    /// Runs that finished (or were skipped) since the last call.
    pub fn completed(&mut self) -> Vec<ActionRun> {
        self.done_rx.try_iter().collect()
    }

    /// Waits up to `timeout` for running actions (at shutdown, and in tests).
    pub fn wait(&mut self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while self.running.load(Ordering::SeqCst) > 0 {
            if Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
        true
    }

    /// At agent stop: waits up to `grace` for running actions, then kills the programs
    /// still running with everything they started, and waits for their records.
    /// Whether every run ended.
    pub fn stop(&mut self, grace: Duration) -> bool {
        if self.wait(grace) {
            return true;
        }
        self.stop.store(true, Ordering::SeqCst);
        // A program gets its SIGTERM, a second of grace, then the sweep.
        self.wait(program::KILL_GRACE + Duration::from_secs(5))
    }
}

/// The event name of a run read back from its environment or audit record.
fn event_name(state: &str) -> &'static str {
    [AlarmState::Ongoing, AlarmState::Resolved]
        .into_iter()
        .map(AlarmState::as_str)
        .find(|name| *name == state)
        .unwrap_or(AlarmState::Open.as_str())
}

/// At start: runs of an agent that is gone (it crashed or was killed) whose programs,
/// or what they started, still live are killed and audited, one record per run.
fn take_over_orphans(audit: &AuditLog, done: &mpsc::Sender<ActionRun>) {
    let killed = sweep::kill_orphaned_runs(&audit.path().to_string_lossy());
    let mut runs: BTreeMap<String, Vec<sweep::Marked>> = BTreeMap::new();
    for m in killed {
        let id = m.env.get(sweep::RUN_VAR).cloned().unwrap_or_default();
        runs.entry(id).or_default().push(m);
    }
    for (id, procs) in &mut runs {
        for m in kill_left_in_cgroup(id) {
            if !procs.iter().any(|p| p.pid == m.pid) {
                procs.push(m);
            }
        }
    }
    let mut taken: Vec<String> = runs.keys().cloned().collect();
    for (span_id, procs) in runs {
        let env = &procs[0].env;
        let var = |k: &str| env.get(k).cloned().unwrap_or_default();
        // TRACEPARENT is 00-<trace>-<span>-01, the span being this run's.
        let trace_id = var("TRACEPARENT")
            .split('-')
            .nth(1)
            .unwrap_or_default()
            .to_owned();
        let now = unix_nanos();
        let run = ActionRun {
            time: rfc3339(now),
            alarm_id: var("NODEPULSE_ALARM_ID"),
            event: event_name(&var("NODEPULSE_ALARM_STATE")),
            series: var("NODEPULSE_ALARM_SERIES"),
            rule: var("NODEPULSE_RULE"),
            kind: "program",
            target: String::new(),
            outcome: Outcome::KilledAfterRestart,
            exit_code: None,
            http_status: None,
            duration_ms: 0.0,
            error: Some(format!(
                "left running by agent {} that is gone; killed at this start",
                var(sweep::AGENT_VAR)
            )),
            output: String::new(),
            killed: procs.iter().map(sweep::Marked::describe).collect(),
            trace_id,
            span_id,
            parent_span_id: String::new(),
            start_unix_nano: now,
            end_unix_nano: now,
        };
        finish(audit, done, run);
    }
    // Runs on record as started with no end, and nothing left running: their end is
    // unknown, which is worth a record of its own.
    for started in audit::unfinished(audit.path()) {
        let text = |k: &str| started[k].as_str().unwrap_or_default().to_owned();
        let span_id = text("span_id");
        if taken.contains(&span_id) {
            continue;
        }
        taken.push(span_id.clone());
        // What hid from the environment scan still sits in the run's cgroup.
        let killed = kill_left_in_cgroup(&span_id);
        let now = unix_nanos();
        let run = ActionRun {
            time: rfc3339(now),
            alarm_id: text("alarm_id"),
            event: event_name(started["event"].as_str().unwrap_or_default()),
            series: text("series"),
            rule: text("rule"),
            kind: if started["kind"] == "webhook" {
                "webhook"
            } else {
                "program"
            },
            target: text("target"),
            outcome: if killed.is_empty() {
                Outcome::Unfinished
            } else {
                Outcome::KilledAfterRestart
            },
            exit_code: None,
            http_status: None,
            duration_ms: 0.0,
            error: Some(if killed.is_empty() {
                "the agent stopped before recording how this run ended; nothing of it was \
                 still running at this start"
                    .into()
            } else {
                "left running by an agent that is gone, hidden from the environment scan \
                 but still in the run's cgroup; killed at this start"
                    .into()
            }),
            output: String::new(),
            killed: killed.iter().map(sweep::Marked::describe).collect(),
            trace_id: text("trace_id"),
            span_id,
            parent_span_id: text("parent_span_id"),
            start_unix_nano: started["start_unix_nano"].as_u64().unwrap_or(now),
            end_unix_nano: now,
        };
        finish(audit, done, run);
    }
}

/// Kills what is left in the cgroup of run `span_id` (from an earlier life of the
/// agent) and removes the cgroup.
fn kill_left_in_cgroup(span_id: &str) -> Vec<sweep::Marked> {
    let Some(cgroup) = run_cgroup::RunCgroup::existing(span_id) else {
        return Vec::new();
    };
    let killed = cgroup.kill_all();
    cgroup.remove();
    killed
}

/// A rule matches an alarm when the alarm's series, or any series of its incident,
/// has the rule's family and labels: a rule on `vda` runs once for an incident that
/// a loop device on `vda` opened.
fn matches(rule: &ActionRule, alarm: &Alarm) -> bool {
    let series_matches = |family: &str, labels: &BTreeMap<String, String>| {
        (rule.family.is_empty() || rule.family == family)
            && rule.labels.iter().all(|(k, v)| labels.get(k) == Some(v))
    };
    (series_matches(&alarm.family, &alarm.labels)
        || alarm
            .related
            .iter()
            .any(|r| series_matches(&r.family, &r.labels)))
        && alarm.severity >= rule.min_severity
}

/// Audits, logs and hands back one run. An audit failure is logged, never fatal.
fn finish(audit: &AuditLog, done: &mpsc::Sender<ActionRun>, run: ActionRun) {
    if let Err(e) = audit.record(&run) {
        tracing::error!(
            path = %audit.path().display(),
            "cannot append to the action audit log: {e}"
        );
    }
    match run.outcome {
        Outcome::Ok | Outcome::DryRun => tracing::info!(
            alarm = run.alarm_id,
            rule = run.rule,
            outcome = run.outcome.as_str(),
            exit_code = run.exit_code,
            duration_ms = run.duration_ms,
            "action {}: {}",
            run.kind,
            run.target
        ),
        _ => tracing::warn!(
            alarm = run.alarm_id,
            rule = run.rule,
            outcome = run.outcome.as_str(),
            exit_code = run.exit_code,
            duration_ms = run.duration_ms,
            "action {} {}: {}",
            run.kind,
            run.target,
            run.error.as_deref().unwrap_or("")
        ),
    }
    let _ = done.send(run);
}

/// The alarm as environment variables for a program.
fn environment(
    alarm: &Alarm,
    rule: &ActionRule,
    node: &str,
    run: &ActionRun,
    audit_log: &std::path::Path,
) -> Vec<(String, String)> {
    let mut env = vec![
        ("NODEPULSE_ALARM_ID".into(), alarm.id.clone()),
        ("NODEPULSE_ALARM_STATE".into(), alarm.state.as_str().into()),
        ("NODEPULSE_ALARM_SERIES".into(), alarm.series.clone()),
        ("NODEPULSE_ALARM_FAMILY".into(), alarm.family.clone()),
        (
            "NODEPULSE_ALARM_SEVERITY".into(),
            alarm.severity.as_str().into(),
        ),
        ("NODEPULSE_ALARM_QUANTILE".into(), alarm.quantile.into()),
        (
            "NODEPULSE_ALARM_FACTOR".into(),
            format!("{:.3}", alarm.factor),
        ),
        ("NODEPULSE_ALARM_STARTED".into(), alarm.started.clone()),
        ("NODEPULSE_ALARM_SUMMARY".into(), alarm.summary.clone()),
        ("NODEPULSE_RULE".into(), rule.name.clone()),
        ("NODEPULSE_NODE".into(), node.into()),
        (
            sweep::AUDIT_VAR.into(),
            audit_log.to_string_lossy().into_owned(),
        ),
        ("TRACEPARENT".into(), run.traceparent()),
    ];
    for (k, v) in &alarm.labels {
        let name: String = k
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() {
                    c.to_ascii_uppercase()
                } else {
                    '_'
                }
            })
            .collect();
        env.push((format!("NODEPULSE_LABEL_{name}"), v.clone()));
    }
    env
}

/// Runs the rule's program or webhook to completion (on the action's thread), audited
/// as started first, so that a run cut short by a crash is still on record.
fn execute(
    rule: &ActionRule,
    alarm: &Alarm,
    node: &str,
    audit: &AuditLog,
    stop: &AtomicBool,
) -> ActionRun {
    let mut run = ActionRun::new(alarm, rule, Outcome::Started);
    if let Err(e) = audit.record(&run) {
        tracing::error!(
            path = %audit.path().display(),
            "cannot append to the action audit log: {e}"
        );
    }
    run.outcome = Outcome::Ok;
    let started = Instant::now();
    if rule.program.is_empty() {
        let body = webhook::payload(rule.format, alarm, node, &rule.name);
        let result = webhook::post(
            &rule.webhook,
            serde_json::to_vec(&body).unwrap_or_default(),
            rule.timeout,
            &run.traceparent(),
        );
        run.http_status = result.status;
        run.output = result.body;
        run.outcome = match (&result.error, result.timed_out) {
            (_, true) => Outcome::TimedOut,
            (Some(_), _) => Outcome::Failed,
            (None, _) => Outcome::Ok,
        };
        run.error = result.error;
    } else {
        let stdin = webhook::payload(WebhookFormat::Nodepulse, alarm, node, &rule.name);
        let env = environment(alarm, rule, node, &run, audit.path());
        let result = program::run(
            &rule.program,
            &env,
            &serde_json::to_vec(&stdin).unwrap_or_default(),
            rule.timeout,
            &run.span_id,
            stop,
        );
        run.exit_code = result.exit_code;
        run.output = result.output;
        run.killed = result.killed;
        run.outcome = if result.stopped {
            run.error = Some("killed because the agent is stopping".into());
            Outcome::Stopped
        } else if result.timed_out {
            run.error = Some(format!(
                "killed after its timeout of {}",
                humantime::format_duration(rule.timeout)
            ));
            Outcome::TimedOut
        } else if let Some(e) = result.error {
            run.error = Some(e);
            Outcome::Failed
        } else if result.exit_code == Some(0) {
            Outcome::Ok
        } else {
            run.error = Some(match (result.exit_code, result.signal) {
                (Some(code), _) => format!("exited with status {code}"),
                (None, Some(sig)) => format!("killed by signal {sig}"),
                (None, None) => "ended without a status".into(),
            });
            Outcome::Failed
        };
    }
    run.duration_ms = started.elapsed().as_secs_f64() * 1e3;
    run.end_unix_nano = unix_nanos();
    run
}

#[cfg(test)]
mod tests;
