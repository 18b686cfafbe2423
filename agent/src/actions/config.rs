//! `[actions]` and `[[actions.rules]]`: which alarms run what, and the safety limits.

use std::{collections::BTreeMap, os::unix::fs::PermissionsExt, path::PathBuf, time::Duration};

use serde::Deserialize;

use crate::{
    detect::Severity,
    settings::{ConfigError, duration},
};

#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ActionsConfig {
    /// Decide, log and audit every run, but run nothing.
    pub dry_run: bool,
    /// Every run (and every run skipped by a limit) is appended here as a JSON line.
    pub audit_log: PathBuf,
    /// Runs at the same time; beyond this a run is skipped (and audited as such).
    pub max_concurrent: usize,
    /// Runs started per hour across all rules.
    pub max_per_hour: u32,
    /// Nothing runs unless a rule says so.
    pub rules: Vec<ActionRule>,
}

impl Default for ActionsConfig {
    fn default() -> Self {
        Self {
            dry_run: false,
            audit_log: PathBuf::from("/var/lib/nodepulse/actions.jsonl"),
            max_concurrent: 2,
            max_per_hour: 20,
            rules: Vec::new(),
        }
    }
}

/// When a rule fires.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Trigger {
    Open,
    Resolved,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WebhookFormat {
    /// `{"event": …, "node": …, "rule": …, "alarm": {…}}`.
    #[default]
    Nodepulse,
    /// Alertmanager's `POST /api/v2/alerts` body.
    Alertmanager,
}

#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ActionRule {
    pub name: String,
    /// Series family to match; empty matches all.
    #[serde(default)]
    pub family: String,
    /// Labels the series must carry with these values.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    #[serde(default = "minor")]
    pub min_severity: Severity,
    #[serde(default = "on_open")]
    pub on: Vec<Trigger>,
    /// After a run, the rule does not run again on an opening alarm for this long.
    #[serde(default = "ten_minutes", deserialize_with = "duration")]
    pub cooldown: Duration,
    #[serde(default = "thirty_seconds", deserialize_with = "duration")]
    pub timeout: Duration,
    /// argv of a program to run (no shell): `["/usr/local/bin/fix", "--device"]`.
    #[serde(default)]
    pub program: Vec<String>,
    /// Or a URL to POST the alarm to.
    #[serde(default)]
    pub webhook: String,
    #[serde(default)]
    pub format: WebhookFormat,
}

fn minor() -> Severity {
    Severity::Minor
}
fn on_open() -> Vec<Trigger> {
    vec![Trigger::Open]
}
fn ten_minutes() -> Duration {
    Duration::from_secs(600)
}
fn thirty_seconds() -> Duration {
    Duration::from_secs(30)
}

fn invalid(key: String, problem: String) -> ConfigError {
    ConfigError::InvalidKey { key, problem }
}

impl ActionsConfig {
    pub fn validate(&self) -> Result<(), ConfigError> {
        if !self.audit_log.is_absolute() {
            return Err(invalid(
                "actions.audit_log".into(),
                format!(
                    "must be an absolute path, got \"{}\"",
                    self.audit_log.display()
                ),
            ));
        }
        if !(1..=64).contains(&self.max_concurrent) {
            return Err(invalid(
                "actions.max_concurrent".into(),
                format!("must be between 1 and 64, got {}", self.max_concurrent),
            ));
        }
        if !(1..=10_000).contains(&self.max_per_hour) {
            return Err(invalid(
                "actions.max_per_hour".into(),
                format!("must be between 1 and 10000, got {}", self.max_per_hour),
            ));
        }
        let mut names = std::collections::HashSet::new();
        for (i, rule) in self.rules.iter().enumerate() {
            let key = |field: &str| format!("actions.rules[{i}].{field}");
            if rule.name.trim().is_empty() {
                return Err(invalid(
                    key("name"),
                    "must name the rule (it appears in the audit log)".into(),
                ));
            }
            if !names.insert(rule.name.as_str()) {
                return Err(invalid(
                    key("name"),
                    format!(
                        "\"{}\" is used by an earlier rule; names must be unique",
                        rule.name
                    ),
                ));
            }
            if !rule.family.is_empty()
                && let Some(problem) = crate::catalog::unknown_family(&rule.family)
            {
                return Err(invalid(key("family"), problem));
            }
            if rule.on.is_empty() {
                return Err(invalid(
                    key("on"),
                    "must list \"open\", \"resolved\" or both".into(),
                ));
            }
            if rule.timeout < Duration::from_millis(100) || rule.timeout > Duration::from_secs(3600)
            {
                return Err(invalid(
                    key("timeout"),
                    format!(
                        "must be between 100ms and 1h, got {}",
                        humantime::format_duration(rule.timeout)
                    ),
                ));
            }
            match (rule.program.is_empty(), rule.webhook.is_empty()) {
                (true, true) | (false, false) => {
                    return Err(invalid(
                        key("program"),
                        "set exactly one of `program` (an argv array) or `webhook` (a URL)".into(),
                    ));
                }
                (false, true) => {
                    check_program(&rule.program).map_err(|p| invalid(key("program"), p))?
                }
                (true, false) => {
                    check_webhook(&rule.webhook).map_err(|p| invalid(key("webhook"), p))?
                }
            }
        }
        Ok(())
    }
}

/// The program must exist and be executable now: better to refuse at startup than to
/// find out when the first alarm fires.
fn check_program(argv: &[String]) -> Result<(), String> {
    let path = std::path::Path::new(&argv[0]);
    if !path.is_absolute() {
        return Err(format!(
            "must start with an absolute path (no shell, no PATH lookup), got \"{}\"",
            argv[0]
        ));
    }
    let meta = std::fs::metadata(path).map_err(|e| {
        format!(
            "\"{}\" cannot be used ({e}); install it or fix the path",
            argv[0]
        )
    })?;
    if !meta.is_file() || meta.permissions().mode() & 0o111 == 0 {
        return Err(format!(
            "\"{}\" is not an executable file; `chmod +x` it or point to the right file",
            argv[0]
        ));
    }
    Ok(())
}

fn check_webhook(url: &str) -> Result<(), String> {
    let parsed = url::Url::parse(url).map_err(|e| {
        format!(
            "\"{url}\" is not a URL ({e}); write it like \"http://alertmanager:9093/api/v2/alerts\""
        )
    })?;
    if !matches!(parsed.scheme(), "http" | "https") || parsed.host_str().is_none() {
        return Err(format!(
            "\"{url}\" must be an http:// or https:// URL with a host"
        ));
    }
    Ok(())
}
