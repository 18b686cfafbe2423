//! The TOML configuration: every key has a documented default (see
//! `deploy/nodepulse.toml`), unknown keys are rejected, and each invalid value gets a
//! message naming its key. Command-line flags override the file.

use std::{
    fmt,
    path::{Path, PathBuf},
    time::Duration,
};

use serde::{Deserialize, Deserializer};
use thiserror::Error;

use crate::probes::{AttachKind, tcp_groups::PortGroup};

#[derive(Debug, Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("config file {path} is invalid{location}: {message}")]
    Parse {
        path: String,
        location: String,
        message: String,
    },
    #[error("config key `{key}` {problem}")]
    Invalid { key: &'static str, problem: String },
    /// For keys inside arrays of tables, e.g. `actions.rules[0].program`.
    #[error("config key `{key}` {problem}")]
    InvalidKey { key: String, problem: String },
}

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
    pub detect: crate::detect::DetectConfig,
    pub actions: crate::actions::ActionsConfig,
}

/// Liveness and readiness over HTTP, for Kubernetes probes and monitoring.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HealthConfig {
    pub enabled: bool,
    pub listen: String,
}

impl Default for HealthConfig {
    fn default() -> Self {
        Self {
            enabled: false,
            listen: "127.0.0.1:9465".into(),
        }
    }
}

/// Export to an OpenTelemetry collector.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OtlpConfig {
    pub enabled: bool,
    /// `http://host:4317` (gRPC) or `http://host:4318` (HTTP; `/v1/<signal>` is
    /// appended). `https://` turns TLS on.
    pub endpoint: String,
    pub protocol: OtlpProtocol,
    pub temporality: Temporality,
    pub compression: Compression,
    #[serde(deserialize_with = "duration")]
    pub timeout: Duration,
    /// Extra request headers (gRPC metadata), e.g. an authorization token.
    pub headers: std::collections::BTreeMap<String, String>,
    /// Batches waiting per signal before new ones are dropped (and counted).
    pub queue_size: usize,
    pub tls: TlsConfig,
    pub retry: RetryConfig,
}

impl Default for OtlpConfig {
    fn default() -> Self {
        Self {
            enabled: false,
            endpoint: "http://localhost:4317".into(),
            protocol: OtlpProtocol::Grpc,
            temporality: Temporality::Cumulative,
            compression: Compression::Gzip,
            timeout: Duration::from_secs(10),
            headers: Default::default(),
            queue_size: 64,
            tls: TlsConfig::default(),
            retry: RetryConfig::default(),
        }
    }
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
pub enum OtlpProtocol {
    #[default]
    #[serde(rename = "grpc")]
    Grpc,
    #[serde(rename = "http/protobuf")]
    HttpProtobuf,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Temporality {
    #[default]
    Cumulative,
    Delta,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Compression {
    #[default]
    Gzip,
    None,
}

/// TLS for `https://` endpoints. Empty paths mean: system roots, no client certificate.
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TlsConfig {
    /// PEM bundle of CAs to trust instead of the system roots.
    pub ca_file: PathBuf,
    /// PEM client certificate and key, for collectors that require mutual TLS.
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
}

/// Retries of retryable failures (gRPC UNAVAILABLE, RESOURCE_EXHAUSTED, …; HTTP 429,
/// 502, 503, 504, connection errors): exponential backoff with full jitter.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RetryConfig {
    #[serde(deserialize_with = "duration")]
    pub initial_backoff: Duration,
    #[serde(deserialize_with = "duration")]
    pub max_backoff: Duration,
    /// Give up on a batch after this long (it is then counted as dropped).
    #[serde(deserialize_with = "duration")]
    pub max_elapsed: Duration,
}

impl Default for RetryConfig {
    fn default() -> Self {
        Self {
            initial_backoff: Duration::from_secs(1),
            max_backoff: Duration::from_secs(30),
            max_elapsed: Duration::from_secs(300),
        }
    }
}

/// A Prometheus scrape endpoint serving the same series.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PrometheusConfig {
    pub enabled: bool,
    pub listen: String,
}

impl Default for PrometheusConfig {
    fn default() -> Self {
        Self {
            enabled: false,
            listen: "127.0.0.1:9464".into(),
        }
    }
}

/// Exceptional events sent individually (as spans) through the kernel's ring buffer.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OutliersConfig {
    /// Unset: on when OTLP export is (spans are where outliers go). Keeping each
    /// request's context costs ~100 ns per block I/O, so it is not paid for nothing.
    pub enabled: Option<bool>,
    /// A block request slower than this is an outlier; `auto` derives a threshold per
    /// device from its recent p99 (never below `block_min`).
    pub block_threshold: Threshold,
    #[serde(deserialize_with = "duration")]
    pub block_min: Duration,
    /// At most this many outliers are turned into spans per interval; the rest are
    /// counted.
    pub max_per_interval: usize,
}

impl Default for OutliersConfig {
    fn default() -> Self {
        Self {
            enabled: None,
            block_threshold: Threshold::Auto,
            block_min: Duration::from_millis(1),
            max_per_interval: 200,
        }
    }
}

/// `"auto"` or a duration such as `"20ms"`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Threshold {
    #[default]
    Auto,
    Fixed(Duration),
}

impl<'de> Deserialize<'de> for Threshold {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        if text.trim() == "auto" {
            return Ok(Self::Auto);
        }
        parse_duration(&text)
            .map(Self::Fixed)
            .map_err(|e| serde::de::Error::custom(format!("{e}, or \"auto\"")))
    }
}

/// Where the host's process, runtime, cgroup, device and Ceph trees are (a container
/// reads them through mounts).
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AttributionConfig {
    pub proc_root: PathBuf,
    /// libvirt keeps live domain XML under `<run_root>/libvirt/qemu/`.
    pub run_root: PathBuf,
    /// Root of the cgroup hierarchy whose ids the scheduler probe reports; empty means
    /// found from /proc/mounts (the cgroup2 mount, or the v1 cpu controller's).
    pub cgroup_root: PathBuf,
    /// Ceph's state directory: OSD data dirs `<ceph_root>/osd/ceph-<id>/` and cephadm's
    /// `<ceph_root>/<fsid>/osd.<id>/`, whose `block` links name the OSD's devices.
    pub ceph_root: PathBuf,
    /// Where the host's `/dev` is: the OSD links point into it (`/dev/<vg>/<lv>`,
    /// `/dev/mapper/…`). Without it, the link targets are still named through sysfs.
    pub dev_root: PathBuf,
}

impl Default for AttributionConfig {
    fn default() -> Self {
        Self {
            proc_root: PathBuf::from("/proc"),
            run_root: PathBuf::from("/run"),
            cgroup_root: PathBuf::new(),
            ceph_root: PathBuf::from("/var/lib/ceph"),
            dev_root: PathBuf::from("/dev"),
        }
    }
}

/// Cardinality budget: per labelled family, the largest series (by samples in the
/// interval) are kept and the rest fold into one `other` series.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsConfig {
    pub max_devices: usize,
    pub max_cgroups: usize,
    pub max_vms: usize,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        Self {
            max_devices: 64,
            max_cgroups: 50,
            max_vms: 100,
        }
    }
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
}

impl Default for AgentConfig {
    fn default() -> Self {
        Self {
            interval: Duration::from_secs(10),
            sys_root: PathBuf::from("/sys"),
            node_name: String::new(),
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

#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ProbesConfig {
    pub block: BlockConfig,
    pub sched: SchedConfig,
    pub kvm: ProbeConfig,
    pub tcp: TcpConfig,
}

/// The storage network probe: TCP round-trip times and retransmissions per peer port
/// group.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TcpConfig {
    pub enabled: bool,
    pub attach: AttachMode,
    /// Named port sets; a connection counts in the group of its remote port, else of
    /// its local port. Default: Ceph's monitor and OSD ports.
    pub groups: Vec<PortGroup>,
}

impl Default for TcpConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            attach: AttachMode::Auto,
            groups: crate::probes::tcp_groups::ceph_defaults(),
        }
    }
}

/// A probe with nothing to set but whether it runs and how it attaches.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ProbeConfig {
    pub enabled: bool,
    pub attach: AttachMode,
}

impl Default for ProbeConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            attach: AttachMode::Auto,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SchedConfig {
    pub enabled: bool,
    pub attach: AttachMode,
    /// Which cgroup a task is counted in.
    pub cgroup: CgroupMode,
}

impl Default for SchedConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            attach: AttachMode::Auto,
            cgroup: CgroupMode::Auto,
        }
    }
}

/// `auto`: the cgroup v2 hierarchy when one is mounted, else the v1 cpu controller's.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CgroupMode {
    #[default]
    Auto,
    V2,
    V1Cpu,
}

#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BlockConfig {
    pub enabled: bool,
    pub attach: AttachMode,
    /// Use the kernel's own issue timestamp where the queue keeps one.
    pub kernel_timestamps: bool,
    /// Latency and counts per cgroup that submitted the I/O.
    pub cgroups: bool,
}

impl Default for BlockConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            attach: AttachMode::Auto,
            kernel_timestamps: true,
            cgroups: true,
        }
    }
}

/// `auto` walks the fallback chain; naming a kind uses only that one.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AttachMode {
    #[default]
    Auto,
    TpBtf,
    RawTracepoint,
    Tracepoint,
    Fentry,
    Kprobe,
}

impl AttachMode {
    pub fn kind(self) -> Option<AttachKind> {
        match self {
            AttachMode::Auto => None,
            AttachMode::TpBtf => Some(AttachKind::TpBtf),
            AttachMode::RawTracepoint => Some(AttachKind::RawTracepoint),
            AttachMode::Tracepoint => Some(AttachKind::Tracepoint),
            AttachMode::Fentry => Some(AttachKind::Fentry),
            AttachMode::Kprobe => Some(AttachKind::Kprobe),
        }
    }
}

pub const MIN_INTERVAL: Duration = Duration::from_secs(1);
pub const MAX_INTERVAL: Duration = Duration::from_secs(3600);

pub(crate) fn duration<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    let text = String::deserialize(d)?;
    parse_duration(&text).map_err(serde::de::Error::custom)
}

/// Parses `10s`, `500ms`, `1m30s`.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    humantime::parse_duration(text.trim())
        .map_err(|e| format!("invalid duration \"{text}\" ({e}); write it like \"10s\" or \"1m\""))
}

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
    pub fn node_name(&self) -> String {
        if self.agent.node_name.is_empty() {
            crate::kernel::hostname()
        } else {
            self.agent.node_name.clone()
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
        ];
        for (key, enabled, listen, port) in listens {
            if enabled || !listen.is_empty() {
                check_listen(key, listen, port)?;
            }
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
        crate::probes::tcp_groups::port_table(&self.probes.tcp.groups).map_err(|problem| {
            ConfigError::Invalid {
                key: "probes.tcp.groups",
                problem,
            }
        })?;
        self.detect.validate()?;
        self.actions.validate()?;
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
}
