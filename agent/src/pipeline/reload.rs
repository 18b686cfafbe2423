//! SIGHUP: the configuration read again and applied without detaching anything that
//! did not change. Probes enabled or disabled are attached or detached one by one (the
//! others keep running, their counts continuous); limits, the detector, exporters and
//! actions are replaced in place. An invalid file, or a part that cannot start (a
//! listener whose port is taken), is logged with the reason and the running one kept.

use std::sync::Arc;

use super::{OTLP_FLUSH, Pipeline};
use crate::{
    actions::Actions,
    config::Config,
    detect::{Detector, Topology},
    export::{Exporter, otlp::transport::OtlpSender, start},
    settings::ConfigError,
};

/// Reads the configuration again (SIGHUP).
pub type Reload = Box<dyn Fn() -> Result<Config, ConfigError> + Send>;

impl Pipeline {
    /// SIGHUP: reads the configuration again and applies what changed. What cannot
    /// change while running (load-time shapes: map sizes, attach modes, the interval,
    /// where state lives) is named as applying at the next restart, which with
    /// `keep_attached` loses nothing.
    pub(super) fn reload(&mut self) {
        let Some((running, read)) = &self.reload else {
            return;
        };
        let new = match read() {
            Ok(c) => c,
            Err(e) => {
                tracing::error!("configuration not reloaded, the running one stays: {e}");
                return;
            }
        };
        let running = running.clone();
        // What is in force once this reload is done; a part that could not be applied
        // keeps its running value, so the next SIGHUP tries it again.
        let mut now = running.clone();
        let mut applied = Vec::new();
        let mut failed = Vec::new();
        if new.limits != now.limits {
            self.budget
                .set_rules(crate::probes::budget_rules(&new.limits));
            now.limits = new.limits.clone();
            applied.push("limits");
        }
        if new.detect != now.detect {
            self.set_detect(&new);
            now.detect = new.detect.clone();
            applied.push("detect");
        }
        let mut wanted = new.probes.clone();
        // KVM's exit tracepoints were resolved at start only if tracefs was there.
        let kvm_later =
            wanted.kvm.enabled && !now.probes.kvm.enabled && !self.probes.attachable_later("kvm");
        if kvm_later {
            wanted.kvm.enabled = false;
        }
        let mut enabled = now.probes.with_enabled_of(&wanted);
        if enabled != now.probes {
            let toggled = self.probes.set_enabled(&wanted);
            tracing::info!(
                attached = ?toggled.attached,
                detached = ?toggled.detached,
                failed = ?toggled.failed,
                "probes enabled or disabled; the others keep running"
            );
            // A family a probe of which did not attach stays as it was, so the next
            // SIGHUP tries that probe again (it is parked, not running).
            for family in &toggled.failed_families {
                enabled.set_enabled(family, now.probes.enabled(family));
            }
            if enabled != now.probes {
                applied.push("probes");
            }
            if !toggled.failed.is_empty() {
                failed.push("probes");
            }
            now.probes = enabled;
        }
        self.reload_exporters(&new, &mut now, &mut applied, &mut failed);
        if new.actions != now.actions {
            match self.set_actions(&new) {
                Ok(()) => {
                    now.actions = new.actions.clone();
                    applied.push("actions");
                }
                Err(e) => {
                    tracing::error!("actions not changed, the running ones stay: {e}");
                    failed.push("actions");
                }
            }
        }
        let later: Vec<&str> = [
            ("agent", new.agent != now.agent),
            ("log", new.log != now.log),
            ("attribution", new.attribution != now.attribution),
            (
                "probes",
                new.probes.with_enabled_of(&now.probes) != now.probes,
            ),
            ("probes.kvm (tracefs was not mounted at start)", kvm_later),
            ("outliers", new.outliers != now.outliers),
            (
                "outliers (on with OTLP)",
                new.outliers_enabled() != running.outliers_enabled(),
            ),
        ]
        .into_iter()
        .filter_map(|(section, changed)| changed.then_some(section))
        .collect();
        tracing::info!(
            applied = ?applied,
            failed = ?failed,
            at_next_restart = ?later,
            "configuration reloaded"
        );
        if let Some((running, _)) = &mut self.reload {
            *running = now;
        }
    }

    /// `[detect]`: series keep their windows, baselines and alarms.
    fn set_detect(&mut self, new: &Config) {
        match (&mut self.detector, new.detect.enabled) {
            (Some(d), true) => d.set_config(new.detect.clone()),
            (None, true) => {
                let topology = Topology::from_sysfs(&new.agent.sys_root);
                self.detector = Some(Detector::with_topology(
                    new.detect.clone(),
                    &self.node,
                    topology,
                ));
            }
            (_, false) => self.detector = None,
        }
    }

    /// `[actions]`: runs in progress go on; per-incident decisions, cooldowns and the
    /// hourly count carry over.
    fn set_actions(&mut self, new: &Config) -> Result<(), crate::actions::ActionsError> {
        match &mut self.actions {
            Some(actions) => actions.reconfigure(&new.actions),
            None => {
                self.actions = Actions::start(&new.actions, &self.node)?;
                Ok(())
            }
        }
    }

    /// Each exporter whose section changed is started anew (a moved listener binds
    /// before the old one closes) and replaces the running one.
    fn reload_exporters(
        &mut self,
        new: &Config,
        now: &mut Config,
        applied: &mut Vec<&'static str>,
        failed: &mut Vec<&'static str>,
    ) {
        let mut outcome = |name: &'static str, ok: bool| {
            if ok {
                applied.push(name);
            } else {
                failed.push(name);
            }
        };
        if new.console != now.console && !self.recording {
            self.replace_exporter("console", Ok(start::console(new)));
            now.console = new.console.clone();
            outcome("console", true);
        }
        if new.prometheus != now.prometheus {
            let ok = self.replace_exporter("prometheus", start::prometheus(new));
            if ok {
                now.prometheus = new.prometheus.clone();
            }
            outcome("prometheus", ok);
        }
        if new.health != now.health {
            let ok = self.replace_exporter("health", start::health(new));
            if ok {
                now.health = new.health.clone();
            }
            outcome("health", ok);
        }
        if new.view != now.view {
            let ok = self.replace_exporter("view", start::view(new));
            if ok {
                now.view = new.view.clone();
            }
            outcome("view", ok);
        }
        if new.otlp != now.otlp {
            let last_export = self
                .exporters
                .iter()
                .find(|e| e.name() == "otlp")
                .and_then(|e| e.last_export());
            let ok = match start::otlp(new, self.start_unix_nano, last_export) {
                Ok(started) => {
                    let (exporter, sender) = started.unzip();
                    self.replace_exporter("otlp", Ok(exporter));
                    self.retire_otlp(sender);
                    now.otlp = new.otlp.clone();
                    true
                }
                Err(e) => self.replace_exporter("otlp", Err(e)),
            };
            outcome("otlp", ok);
        }
    }

    /// Puts `started` in the place of the running exporter called `name` (or removes
    /// it, for `Ok(None)`); on an error keeps the running one. Whether it replaced.
    /// An endpoint (Prometheus, health) is given the last report first, so it serves
    /// from its first request instead of "not ready" until the next interval.
    fn replace_exporter(
        &mut self,
        name: &str,
        started: Result<Option<Box<dyn Exporter>>, start::StartError>,
    ) -> bool {
        let started = match started {
            Ok(s) => s,
            Err(e) => {
                tracing::error!(exporter = name, "not changed, the running one stays: {e}");
                return false;
            }
        };
        let mut started = started;
        if let (Some(e), Some(report), "prometheus" | "health" | "view") =
            (&mut started, &self.last_report, name)
            && let Err(err) = e.export(report)
        {
            tracing::warn!(exporter = name, "export failed: {err}");
        }
        let at = self.exporters.iter().position(|e| e.name() == name);
        match (at, started) {
            (Some(i), Some(e)) => self.exporters[i] = e,
            (Some(i), None) => drop(self.exporters.remove(i)),
            (None, Some(e)) => self.exporters.push(e),
            (None, None) => {}
        }
        true
    }

    /// Replaces the OTLP sender flushed at exit; the old one gets the usual time to
    /// deliver what it queued, off the loop.
    fn retire_otlp(&mut self, sender: Option<Arc<OtlpSender>>) {
        if let Some(old) = std::mem::replace(&mut self.otlp, sender) {
            tokio::spawn(async move {
                if !old.flush(OTLP_FLUSH).await {
                    tracing::warn!("OTLP: the replaced exporter's queue was not emptied");
                }
            });
        }
    }
}
