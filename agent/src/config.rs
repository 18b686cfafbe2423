//! The TOML configuration: every key has a documented default (see
//! `deploy/nodepulse.toml`), unknown keys are rejected, and each invalid value gets a
//! message naming its key. Command-line flags override the file.
//!
//! Each section is defined by the module that uses it (a probe family's by its folder);
//! this file embeds them and holds only the agent's own. The error type and the value
//! parsers are in [`crate::settings`], which the section owners import instead.

use std::{
    fmt,
    path::{Path, PathBuf},
    time::Duration,
};

use serde::Deserialize;

use crate::{
    actions::ActionsConfig,
    aggregate::budget::LimitsConfig,
    attribution::AttributionConfig,
    capacity::CapacityConfig,
    detect::DetectConfig,
    export::{
        console::{ConsoleConfig, ConsoleFormat},
        otlp::transport::OtlpConfig,
        prometheus::PrometheusConfig,
    },
    health::HealthConfig,
    probes::{FAMILIES, ProbesConfig, Setup, outliers::OutliersConfig},
    settings::{ConfigError, duration},
};

#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub agent: AgentConfig,
    pub log: LogConfig,
    pub console: ConsoleConfig,
    pub probes: ProbesConfig,
    pub attribution: AttributionConfig,
    pub limits: LimitsConfig,
    pub otlp: OtlpConfig,
    pub prometheus: PrometheusConfig,
    pub outliers: OutliersConfig,
    pub health: HealthConfig,
    pub detect: DetectConfig,
    pub actions: ActionsConfig,
    pub capacity: CapacityConfig,
    pub view: crate::view::live::ViewConfig,
}

#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AgentConfig {
    /// How often maps are read and a report is produced.
    #[serde(deserialize_with = "duration")]
    pub interval: Duration,
    /// Where sysfs is; a container reads the host's through a mount.
    pub sys_root: PathBuf,
    /// The node's name in reports and exports; empty means the host name. A pod has a
    /// host name of its own, so a DaemonSet sets this (from the downward API).
    pub node_name: String,
    /// Where the agent keeps what must outlive it (start time, last readings, detector
    /// baselines and open alarms); empty: nothing is kept, every start is a fresh one.
    pub state_dir: PathBuf,
    /// Keep the probes attached and their maps pinned in bpffs while the agent is
    /// down, so a restarted agent adopts them and nothing is lost in between (needs
    /// `state_dir`). `nodepulse cleanup` detaches and removes them.
    pub keep_attached: bool,
    /// Where bpffs is mounted; pins go under `<bpffs>/nodepulse/<version>-<layout>/`.
    pub bpffs: PathBuf,
    /// An external BTF file (as BTFHub provides) used instead of
    /// `/sys/kernel/btf/vmlinux`; empty: the kernel's own.
    pub btf: PathBuf,
}

impl Default for AgentConfig {
    fn default() -> Self {
        Self {
            interval: Duration::from_secs(10),
            sys_root: PathBuf::from("/sys"),
            node_name: String::new(),
            state_dir: PathBuf::new(),
            keep_attached: false,
            bpffs: PathBuf::from("/sys/fs/bpf"),
            btf: PathBuf::new(),
        }
    }
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum LogLevel {
    Error,
    Warn,
    #[default]
    Info,
    Debug,
    Trace,
}

impl LogLevel {
    pub fn as_str(self) -> &'static str {
        match self {
            LogLevel::Error => "error",
            LogLevel::Warn => "warn",
            LogLevel::Info => "info",
            LogLevel::Debug => "debug",
            LogLevel::Trace => "trace",
        }
    }
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    pub level: LogLevel,
    pub format: LogFormat,
}

pub const MIN_INTERVAL: Duration = Duration::from_secs(1);
pub const MAX_INTERVAL: Duration = Duration::from_secs(3600);

/// Checks an interval (from the file or `--interval`).
pub fn check_interval(interval: Duration) -> Result<Duration, String> {
    if interval < MIN_INTERVAL || interval > MAX_INTERVAL {
        return Err(format!(
            "must be between 1s and 1h, got {}",
            humantime::format_duration(interval)
        ));
    }
    Ok(interval)
}

/// Command-line flags that override the file.
#[derive(Clone, Debug, Default)]
pub struct Overrides {
    pub interval: Option<Duration>,
    pub console_format: Option<ConsoleFormat>,
    pub log_level: Option<LogLevel>,
    pub log_format: Option<LogFormat>,
    pub sys_root: Option<PathBuf>,
    pub node_name: Option<String>,
    pub otlp_endpoint: Option<String>,
}

impl Config {
    /// The configured node name, else the host name.
    /// The configured name, else the host's, with anything that would act on a
    /// terminal or hide in text escaped (see [`crate::util::text`]).
    pub fn node_name(&self) -> String {
        if self.agent.node_name.is_empty() {
            crate::util::text::bounded(&crate::kernel::hostname())
        } else {
            crate::util::text::escape(&self.agent.node_name).into_owned()
        }
    }

    /// Whether outliers are collected: as configured, else when OTLP export is on.
    pub fn outliers_enabled(&self) -> bool {
        self.outliers.enabled.unwrap_or(self.otlp.enabled)
    }

    /// Reads `path` (or the defaults when `None`), applies the flags and validates.
    pub fn load(path: Option<&Path>, overrides: &Overrides) -> Result<Self, ConfigError> {
        let mut config = match path {
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
                    path: path.display().to_string(),
                    source,
                })?;
                Self::parse(&text, &path.display().to_string())?
            }
            None => Self::default(),
        };
        config.apply(overrides);
        config.validate()?;
        Ok(config)
    }

    pub fn parse(text: &str, origin: &str) -> Result<Self, ConfigError> {
        let config: Self = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: origin.to_owned(),
            location: e.span().map(|s| locate(text, s.start)).unwrap_or_default(),
            message: e.message().to_owned(),
        })?;
        config.validate()?;
        Ok(config)
    }

    fn apply(&mut self, o: &Overrides) {
        if let Some(v) = o.interval {
            self.agent.interval = v;
        }
        if let Some(v) = o.console_format {
            self.console.format = v;
        }
        if let Some(v) = o.log_level {
            self.log.level = v;
        }
        if let Some(v) = o.log_format {
            self.log.format = v;
        }
        if let Some(v) = &o.sys_root {
            self.agent.sys_root = v.clone();
        }
        if let Some(v) = &o.node_name {
            self.agent.node_name = v.clone();
        }
        if let Some(v) = &o.otlp_endpoint {
            self.otlp.endpoint = v.clone();
        }
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        check_interval(self.agent.interval).map_err(|problem| ConfigError::Invalid {
            key: "agent.interval",
            problem,
        })?;
        let chars = self.agent.node_name.chars().count();
        if chars > crate::util::text::MAX_LABEL_CHARS {
            return Err(ConfigError::Invalid {
                key: "agent.node_name",
                problem: format!(
                    "is {chars} characters long; at most {} (set by --node-name, \
                     NODEPULSE_NODE_NAME or [agent] node_name)",
                    crate::util::text::MAX_LABEL_CHARS
                ),
            });
        }
        let paths = [
            ("agent.sys_root", &self.agent.sys_root),
            ("attribution.proc_root", &self.attribution.proc_root),
            ("attribution.run_root", &self.attribution.run_root),
            ("attribution.ceph_root", &self.attribution.ceph_root),
            ("attribution.dev_root", &self.attribution.dev_root),
        ];
        for (key, path) in paths {
            if !path.is_absolute() {
                return Err(ConfigError::Invalid {
                    key,
                    problem: format!("must be an absolute path, got \"{}\"", path.display()),
                });
            }
        }
        let state_dir = &self.agent.state_dir;
        if !state_dir.as_os_str().is_empty() && !state_dir.is_absolute() {
            return Err(ConfigError::Invalid {
                key: "agent.state_dir",
                problem: format!(
                    "must be empty (keep nothing) or an absolute path, got \"{}\"",
                    state_dir.display()
                ),
            });
        }
        if self.agent.keep_attached && state_dir.as_os_str().is_empty() {
            return Err(ConfigError::Invalid {
                key: "agent.keep_attached",
                problem: "needs [agent] state_dir: a restarted agent continues the kept \
                          probes' counts from the readings saved there (e.g. state_dir = \
                          \"/var/lib/nodepulse\")"
                    .into(),
            });
        }
        if !self.agent.bpffs.is_absolute() {
            return Err(ConfigError::Invalid {
                key: "agent.bpffs",
                problem: format!(
                    "must be an absolute path (where bpffs is mounted), got \"{}\"",
                    self.agent.bpffs.display()
                ),
            });
        }
        let btf = &self.agent.btf;
        if !btf.as_os_str().is_empty() {
            if !btf.is_absolute() {
                return Err(ConfigError::Invalid {
                    key: "agent.btf",
                    problem: format!(
                        "must be empty (the kernel's own BTF) or an absolute path, got \"{}\"",
                        btf.display()
                    ),
                });
            }
            crate::kernel::btf_file::open(btf).map_err(|e| ConfigError::Invalid {
                key: "agent.btf",
                problem: e.problem,
            })?;
        }
        let cgroup_root = &self.attribution.cgroup_root;
        if !cgroup_root.as_os_str().is_empty() && !cgroup_root.is_absolute() {
            return Err(ConfigError::Invalid {
                key: "attribution.cgroup_root",
                problem: format!(
                    "must be empty (found from /proc/mounts) or an absolute path, got \"{}\"",
                    cgroup_root.display()
                ),
            });
        }
        if self.otlp.enabled {
            crate::export::otlp::transport::validate(&self.otlp)?;
        }
        let listens = [
            (
                "prometheus.listen",
                self.prometheus.enabled,
                &self.prometheus.listen,
                9464,
            ),
            (
                "health.listen",
                self.health.enabled,
                &self.health.listen,
                9465,
            ),
            ("view.listen", self.view.enabled, &self.view.listen, 9466),
        ];
        for (key, enabled, listen, port) in listens {
            if enabled || !listen.is_empty() {
                check_listen(key, listen, port)?;
            }
        }
        // Each endpoint against those listed before it.
        let endpoints = [
            (
                "prometheus",
                self.prometheus.enabled,
                &self.prometheus.listen,
                9464,
            ),
            ("health", self.health.enabled, &self.health.listen, 9465),
            ("view", self.view.enabled, &self.view.listen, 9466),
        ];
        for (i, &(table, enabled, listen, port)) in endpoints.iter().enumerate() {
            for &(other, other_enabled, other_listen, _) in &endpoints[..i] {
                if enabled && other_enabled {
                    check_listen_clash((other, other_listen), (table, listen, port))?;
                }
            }
        }
        if !(1..=1440).contains(&self.view.minutes) {
            return Err(ConfigError::Invalid {
                key: "view.minutes",
                problem: format!("must be between 1 and 1440, got {}", self.view.minutes),
            });
        }
        if !(1..=4096).contains(&self.view.max_mib) {
            return Err(ConfigError::Invalid {
                key: "view.max_mib",
                problem: format!("must be between 1 and 4096, got {}", self.view.max_mib),
            });
        }
        if !(1..=100_000).contains(&self.outliers.max_per_interval) {
            return Err(ConfigError::Invalid {
                key: "outliers.max_per_interval",
                problem: format!(
                    "must be between 1 and 100000, got {}",
                    self.outliers.max_per_interval
                ),
            });
        }
        for family in FAMILIES {
            family.validate(&self.probes)?;
        }
        // Here rather than in the detector's own validation: a family name is the
        // catalogue's business.
        for family in &self.detect.families {
            if let Some(problem) = crate::catalog::unknown_family(family) {
                return Err(ConfigError::Invalid {
                    key: "detect.families",
                    problem,
                });
            }
        }
        self.detect.validate()?;
        self.actions.validate()?;
        self.capacity.validate()?;
        let limits = [
            ("limits.max_devices", self.limits.max_devices),
            ("limits.max_cgroups", self.limits.max_cgroups),
            ("limits.max_vms", self.limits.max_vms),
        ];
        for (key, value) in limits {
            if !(1..=10_000).contains(&value) {
                return Err(ConfigError::Invalid {
                    key,
                    problem: format!("must be between 1 and 10000, got {value}"),
                });
            }
        }
        Ok(())
    }
}

/// A listen address: an IP address and a port.
/// Two endpoints cannot share a port on overlapping addresses (the same address, or a
/// wildcard and any address): the second bind would fail after every probe attached.
fn check_listen_clash(
    (first, first_listen): (&str, &str),
    (table, listen, default_port): (&'static str, &str, u16),
) -> Result<(), ConfigError> {
    let (Ok(p), Ok(h)) = (
        first_listen.parse::<std::net::SocketAddr>(),
        listen.parse::<std::net::SocketAddr>(),
    ) else {
        return Ok(());
    };
    let overlap = p.ip() == h.ip() || p.ip().is_unspecified() || h.ip().is_unspecified();
    if p.port() == h.port() && p.port() != 0 && overlap {
        let key = match table {
            "health" => "health.listen",
            _ => "view.listen",
        };
        return Err(ConfigError::Invalid {
            key,
            problem: format!(
                "\"{listen}\" clashes with {first}.listen \"{first_listen}\": both endpoints \
                 would listen on port {}; give [{table}] a port of its own (default \
                 {default_port})",
                p.port()
            ),
        });
    }
    Ok(())
}

fn check_listen(key: &'static str, listen: &str, port: u16) -> Result<(), ConfigError> {
    listen
        .parse::<std::net::SocketAddr>()
        .map(|_| ())
        .map_err(|e| ConfigError::Invalid {
            key,
            problem: format!(
                "must be an address and port such as \"127.0.0.1:{port}\" or \"[::]:{port}\", got \"{listen}\" ({e})"
            ),
        })
}

/// " at line L, column C (in [table])" for a byte offset of the text.
fn locate(text: &str, offset: usize) -> String {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let column = before.len() - before.rfind('\n').map_or(0, |i| i + 1) + 1;
    let table = before
        .lines()
        .rev()
        .map(str::trim)
        .find(|l| l.starts_with('['))
        .map(|t| format!(" (in {t})"))
        .unwrap_or_default();
    format!(" at line {line}, column {column}{table}")
}

impl<'a> From<&'a Config> for Setup<'a> {
    fn from(config: &'a Config) -> Self {
        Setup {
            probes: &config.probes,
            sys_root: &config.agent.sys_root,
            attribution: &config.attribution,
            outliers: &config.outliers,
            outliers_enabled: config.outliers_enabled(),
            bpffs: config
                .agent
                .keep_attached
                .then_some(config.agent.bpffs.as_path()),
            btf: (!config.agent.btf.as_os_str().is_empty()).then_some(config.agent.btf.as_path()),
        }
    }
}

impl fmt::Display for Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "interval {}, console {:?}, block probe {}",
            humantime::format_duration(self.agent.interval),
            self.console.format,
            if self.probes.block.enabled {
                "on"
            } else {
                "off"
            }
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(text: &str) -> String {
        Config::parse(text, "test.toml").unwrap_err().to_string()
    }

    #[test]
    fn the_example_file_documents_the_defaults() {
        let example = include_str!("../../deploy/nodepulse.toml");
        assert_eq!(
            Config::parse(example, "example").unwrap(),
            Config::default()
        );
    }

    #[test]
    fn endpoints_on_one_port_clash() {
        for (p, h) in [
            ("127.0.0.1:9464", "127.0.0.1:9464"),
            ("0.0.0.0:9464", "127.0.0.1:9464"),
            ("127.0.0.1:9464", "[::]:9464"),
        ] {
            let e = err(&format!(
                "[prometheus]\nenabled = true\nlisten = \"{p}\"\n\
                 [health]\nenabled = true\nlisten = \"{h}\"\n"
            ));
            assert!(
                e.contains(&format!(
                    "`health.listen` \"{h}\" clashes with prometheus.listen"
                )),
                "{e}"
            );
            assert!(e.contains("port of its own"), "{e}");
        }
        // Different ports, different addresses or port 0 (the kernel picks) are fine.
        for (p, h) in [
            ("127.0.0.1:9464", "127.0.0.1:9465"),
            ("127.0.0.1:9464", "127.0.0.2:9464"),
            ("127.0.0.1:0", "127.0.0.1:0"),
        ] {
            Config::parse(
                &format!(
                    "[prometheus]\nenabled = true\nlisten = \"{p}\"\n\
                     [health]\nenabled = true\nlisten = \"{h}\"\n"
                ),
                "t",
            )
            .unwrap();
        }
    }

    #[test]
    fn the_view_endpoint_is_checked_like_the_others() {
        let e = err("[health]\nenabled = true\nlisten = \"127.0.0.1:9465\"\n\
             [view]\nenabled = true\nlisten = \"0.0.0.0:9465\"\n");
        assert!(
            e.contains("`view.listen` \"0.0.0.0:9465\" clashes with health.listen")
                && e.contains("give [view] a port of its own (default 9466)"),
            "{e}"
        );
        let e = err("[view]\nenabled = true\nlisten = \"localhost\"\n");
        assert!(e.contains("`view.listen`"), "{e}");
        let e = err("[view]\nminutes = 0\n");
        assert!(
            e.contains("`view.minutes`") && e.contains("between 1 and 1440"),
            "{e}"
        );
        Config::parse(
            "[prometheus]\nenabled = true\n[health]\nenabled = true\n[view]\nenabled = true\n",
            "t",
        )
        .unwrap();
    }

    #[test]
    fn unknown_families_are_named_in_detect_and_action_rules() {
        let e = err("[detect]\nfamilies = [\"block.io.latency\", \"nope\"]\n");
        assert!(
            e.contains("`detect.families` names `nope`, which is not a metric family"),
            "{e}"
        );
        assert!(e.contains("block.io.latency"), "{e}");
        let e = err(
            "[[actions.rules]]\nname = \"r\"\nfamily = \"blok.io.latency\"\n\
             program = [\"/bin/true\"]\n",
        );
        assert!(
            e.contains("`actions.rules[0].family` names `blok.io.latency`"),
            "{e}"
        );
        Config::parse(
            "[detect]\nfamilies = [\"block.io.size\"]\n[[actions.rules]]\nname = \"r\"\n\
             family = \"block.io.latency\"\nprogram = [\"/bin/true\"]\n",
            "t",
        )
        .unwrap();
    }

    #[test]
    fn empty_file_means_defaults() {
        assert_eq!(Config::parse("", "t").unwrap(), Config::default());
    }

    #[test]
    fn unknown_key_is_named_with_its_table_and_line() {
        let e = err("[agent]\nintervl = \"5s\"\n");
        assert!(e.contains("unknown field `intervl`"), "{e}");
        assert!(e.contains("line 2"), "{e}");
        assert!(e.contains("(in [agent])"), "{e}");
        assert!(e.contains("expected one of `interval`"), "{e}");
    }

    #[test]
    fn unknown_table_is_rejected() {
        let e = err("[agnet]\n");
        assert!(e.contains("unknown field `agnet`"), "{e}");
    }

    #[test]
    fn unknown_probe_key_is_rejected() {
        let e = err("[probes.block]\nenable = true\n");
        assert!(e.contains("unknown field `enable`"), "{e}");
        assert!(e.contains("(in [probes.block])"), "{e}");
    }

    #[test]
    fn bad_duration_says_how_to_write_one() {
        let e = err("[agent]\ninterval = \"10 parsecs\"\n");
        assert!(e.contains("invalid duration \"10 parsecs\""), "{e}");
        assert!(e.contains("like \"10s\""), "{e}");
    }

    #[test]
    fn duration_must_be_a_string() {
        let e = err("[agent]\ninterval = 10\n");
        assert!(e.contains("invalid type: integer"), "{e}");
    }

    #[test]
    fn interval_out_of_range() {
        let e = err("[agent]\ninterval = \"0s\"\n");
        assert_eq!(
            e,
            "config key `agent.interval` must be between 1s and 1h, got 0s"
        );
        let e = err("[agent]\ninterval = \"2h\"\n");
        assert!(e.contains("got 2h"), "{e}");
    }

    #[test]
    fn bad_enum_values_list_the_choices() {
        let e = err("[console]\nformat = \"tabel\"\n");
        assert!(e.contains("unknown variant `tabel`"), "{e}");
        assert!(e.contains("`table`"), "{e}");
        let e = err("[probes.block]\nattach = \"uprobe\"\n");
        assert!(e.contains("unknown variant `uprobe`"), "{e}");
        assert!(e.contains("`tp_btf`"), "{e}");
        let e = err("[log]\nlevel = \"loud\"\n");
        assert!(e.contains("unknown variant `loud`"), "{e}");
    }

    #[test]
    fn wrong_type_for_bool() {
        let e = err("[console]\nenabled = \"yes\"\n");
        assert!(
            e.contains("invalid type: string \"yes\", expected a boolean"),
            "{e}"
        );
    }

    #[test]
    fn relative_sys_root_is_rejected() {
        let e = err("[agent]\nsys_root = \"host/sys\"\n");
        assert!(
            e.starts_with("config key `agent.sys_root` must be an absolute path"),
            "{e}"
        );
    }

    #[test]
    fn limits_and_roots_are_checked() {
        let e = err("[limits]\nmax_cgroups = 0\n");
        assert_eq!(
            e,
            "config key `limits.max_cgroups` must be between 1 and 10000, got 0"
        );
        let e = err("[attribution]\nproc_root = \"proc\"\n");
        assert!(
            e.starts_with("config key `attribution.proc_root` must be an absolute"),
            "{e}"
        );
        let e = err("[probes.sched]\ncgroup = \"v3\"\n");
        assert!(e.contains("unknown variant `v3`"), "{e}");
    }

    #[test]
    fn tcp_port_groups_are_checked_with_their_key() {
        let e = err(concat!(
            "[probes.tcp]\n",
            "groups = [{ name = \"a\", ports = [\"10-20\"] },",
            " { name = \"b\", ports = [15] }]\n"
        ));
        assert!(
            e.starts_with("config key `probes.tcp.groups` port 15 is in group \"a\""),
            "{e}"
        );
        let e = err("[probes.tcp]\ngroups = [{ name = \"a\", ports = [\"x\"] }]\n");
        assert!(e.contains("invalid port \"x\""), "{e}");
        assert!(e.contains("(in [probes.tcp])"), "{e}");
        let e = err("[probes.tcp]\ngroups = [{ name = \"a\", port = [1] }]\n");
        assert!(e.contains("unknown field `port`"), "{e}");
        let c = Config::parse(
            "[probes.tcp]\ngroups = [{ name = \"rgw\", ports = [7480, \"8000-8001\"] }]\n",
            "t",
        )
        .unwrap();
        assert_eq!(c.probes.tcp.groups.len(), 1);
        assert_eq!(c.probes.tcp.groups[0].ports.len(), 2);
    }

    #[test]
    fn flags_override_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.toml");
        std::fs::write(
            &path,
            "[agent]\ninterval = \"30s\"\n[console]\nformat = \"json\"\n",
        )
        .unwrap();
        let c = Config::load(
            Some(&path),
            &Overrides {
                interval: Some(Duration::from_secs(2)),
                ..Default::default()
            },
        )
        .unwrap();
        assert_eq!(c.agent.interval, Duration::from_secs(2));
        assert_eq!(c.console.format, ConsoleFormat::Json);
    }

    #[test]
    fn missing_file_is_a_clear_error() {
        let e = Config::load(
            Some(Path::new("/nonexistent/np.toml")),
            &Overrides::default(),
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.starts_with("cannot read config file /nonexistent/np.toml"),
            "{e}"
        );
    }

    #[test]
    fn action_and_detect_errors_name_the_key_and_the_fix() {
        let err = |text: &str| Config::parse(text, "t.toml").unwrap_err().to_string();
        let e = err("[[actions.rules]]\nname = \"x\"\nprogram = [\"/nonexistent/fix\"]\n");
        assert!(e.contains("`actions.rules[0].program`"), "{e}");
        assert!(e.contains("/nonexistent/fix"), "{e}");
        let e = err("[[actions.rules]]\nname = \"x\"\nprogram = [\"fix.sh\"]\n");
        assert!(e.contains("absolute path"), "{e}");
        let e = err("[[actions.rules]]\nname = \"x\"\n");
        assert!(e.contains("exactly one of `program`"), "{e}");
        let e = err("[[actions.rules]]\nname = \"x\"\nwebhook = \"alertmanager:9093\"\n");
        assert!(e.contains("`actions.rules[0].webhook`"), "{e}");
        let e = err(
            "[[actions.rules]]\nname = \"x\"\nprogram = [\"/bin/true\"]\nmin_severity = \"huge\"\n",
        );
        assert!(e.contains("unknown variant `huge`"), "{e}");
        let e = err("[actions]\naudit_log = \"audit.jsonl\"\n");
        assert!(
            e.contains("`actions.audit_log` must be an absolute path"),
            "{e}"
        );
        let e = err("[detect]\np99_ratio = 0.9\n");
        assert!(e.contains("`detect.p99_ratio`"), "{e}");
    }
}
