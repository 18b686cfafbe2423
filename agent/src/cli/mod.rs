//! Command line: `nodepulse run`, `check`, `record`, `replay`, `view`, `capacity` and
//! `cleanup`.

#[macro_use]
mod out;
mod capacity;
mod replay;
mod view;

use std::{path::PathBuf, process::ExitCode, time::Duration};

use clap::{Args, Parser, Subcommand};

use crate::{
    actions::Actions,
    check,
    config::{self, Config, LogFormat, LogLevel, Overrides},
    export::{
        Exporter,
        console::{Console, ConsoleFormat},
        otlp::transport::OtlpSender,
        start,
    },
    pipeline::Reload,
    pipeline::{Pipeline, Shutdown},
    probes::Probes,
    settings::{self, ConfigError},
    state::{Resume, StateDir},
};

/// Exit code for an invalid configuration or command line (as clap uses for usage).
pub const EXIT_CONFIG: u8 = 2;

#[derive(Parser, Debug)]
#[command(
    name = "nodepulse",
    version,
    about = "eBPF node performance agent: where latency and queueing come from, per node",
    long_about = "nodepulse measures latency where it happens — in the kernel — and reports \
                  distributions per device every interval, with its own cost beside them; \
                  and, per device, CPU and cgroup, how close each is to saturation \
                  (busy, pressure, headroom to the latency knee, forecast time to \
                  saturation: [capacity] in the configuration).\n\n\
                  It needs root, or CAP_BPF + CAP_PERFMON (CAP_SYS_ADMIN for BPF run-time \
                  stats). Start with `nodepulse check`."
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Attach the probes and report every interval until SIGINT/SIGTERM.
    Run(RunArgs),
    /// Tell what this node supports and what is missing; exit 0 when every enabled
    /// probe can attach, 1 when not, 2 when the configuration is invalid.
    Check(CheckArgs),
    /// Attach the probes and record every interval's series as JSON lines (the console
    /// JSON format), for `nodepulse replay`. Runs no actions.
    Record(RecordArgs),
    /// Run the regression detector offline (no root) over a recording, printing the
    /// alarms it would have raised; or over a CSV of `timestamp,value` rows, printing
    /// each row with an anomaly score in [0, 1].
    Replay(ReplayArgs),
    /// Write a recording as one self-contained HTML page (no root, no network): per
    /// series a latency heatmap with p50/p99/p99.9 and the event rate, alarms as
    /// shaded spans with their figures and actions, probe states and the agent's cost.
    View(ViewArgs),
    /// Each resource's utilisation, headroom to its latency knee and forecast time to
    /// saturation, worst first: from a recording (`--from`, no root), or live.
    #[command(long_about = capacity::LONG_ABOUT)]
    Capacity(CapacityArgs),
    /// Detach the probes kept attached across restarts and remove their pins
    /// (`<bpffs>/nodepulse/`) and the saved state ([agent] state_dir). Run it with the
    /// agent stopped; the Debian package's purge runs it.
    Cleanup(CleanupArgs),
}

#[derive(Args, Debug)]
pub struct CleanupArgs {
    /// Configuration naming [agent] bpffs and state_dir (default: the defaults).
    #[arg(short, long, env = "NODEPULSE_CONFIG")]
    pub config: Option<PathBuf>,
    /// The state directory to clear (overrides [agent] state_dir).
    #[arg(long)]
    pub state_dir: Option<PathBuf>,
    /// Only detach and unpin; keep the saved state (baselines) for a later install.
    #[arg(long)]
    pub keep_state: bool,
}

#[derive(Args, Debug)]
pub struct RecordArgs {
    #[command(flatten)]
    pub run: RunArgs,
    /// File to write (appended to); `-` for standard output.
    #[arg(short, long, default_value = "-")]
    pub output: PathBuf,
}

#[derive(Args, Debug)]
pub struct ReplayArgs {
    /// A recording (`nodepulse record`) or a CSV file (`timestamp,value` per row).
    pub file: PathBuf,
    /// Configuration whose [detect] section is used (default: the defaults).
    #[arg(short, long, env = "NODEPULSE_CONFIG")]
    pub config: Option<PathBuf>,
    /// Treat the file as CSV whatever its name (a `.csv` name is enough otherwise).
    #[arg(long)]
    pub csv: bool,
    /// How alarms are printed (recordings only).
    #[arg(short, long, value_enum, default_value_t = ReplayFormat::Table)]
    pub format: ReplayFormat,
}

#[derive(Args, Debug)]
pub struct ViewArgs {
    /// A recording (`nodepulse record --output FILE`).
    pub file: PathBuf,
    /// The HTML file to write; `-` for standard output.
    #[arg(short, long)]
    pub output: PathBuf,
    /// Show the alarms the detector raises when replayed over the recording (as
    /// `nodepulse replay` does) instead of those recorded.
    #[arg(long)]
    pub detect: bool,
    /// Configuration whose [detect] section `--detect` uses and whose [capacity]
    /// section the capacity part is learned with (default: the defaults).
    #[arg(short, long, env = "NODEPULSE_CONFIG")]
    pub config: Option<PathBuf>,
    /// Capacity part: replay each recorded second as this many (≥ 1), as `nodepulse
    /// capacity --stretch`; its hours are then stretched hours. For demonstrations.
    #[arg(long, default_value_t = 1.0)]
    pub stretch: f64,
    /// Time columns per series: longer recordings merge consecutive reports into one
    /// column (quantiles are computed over the merged reports). The page's size grows
    /// with columns × series.
    #[arg(long, default_value_t = crate::view::DEFAULT_COLUMNS as u32,
          value_parser = clap::value_parser!(u32).range(10..=100_000))]
    pub columns: u32,
}

#[derive(Args, Debug)]
pub struct CapacityArgs {
    /// A recording (`nodepulse record --output FILE`, capacity enabled) to replay
    /// instead of attaching (no root needed).
    #[arg(long)]
    pub from: Option<PathBuf>,
    /// Print the report as one JSON object.
    #[arg(long)]
    pub json: bool,
    /// Live: how long to attach and measure (1s to 1h).
    #[arg(long = "for", default_value = "30s", value_parser = parse_interval)]
    pub for_: Duration,
    /// Live: the interval the window is cut into (default: [agent] interval, at most
    /// a third of --for).
    #[arg(short, long, value_parser = parse_interval)]
    pub interval: Option<Duration>,
    /// Replay each recorded second as this many (≥ 1): a short recording then reaches
    /// the forecaster's two hours; figures are in stretched hours. For demonstrations.
    #[arg(long, default_value_t = 1.0)]
    pub stretch: f64,
    #[command(flatten)]
    pub config: ConfigArgs,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum ReplayFormat {
    /// One line per alarm event: state, severity, summary, id.
    Table,
    /// One JSON object per alarm event, with its evidence.
    Json,
}

#[derive(Args, Debug)]
pub struct ConfigArgs {
    /// TOML configuration file (every key and its default: deploy/nodepulse.toml).
    #[arg(short, long, env = "NODEPULSE_CONFIG")]
    pub config: Option<PathBuf>,
    /// Log level (overrides [log] level).
    #[arg(long, value_enum)]
    pub log_level: Option<LogLevel>,
    /// Log format on standard error (overrides [log] format).
    #[arg(long, value_enum)]
    pub log_format: Option<LogFormat>,
    /// Where sysfs is mounted (overrides [agent] sys_root).
    #[arg(long)]
    pub sys_root: Option<PathBuf>,
}

#[derive(Args, Debug)]
pub struct RunArgs {
    #[command(flatten)]
    pub config: ConfigArgs,
    /// Report interval, e.g. 10s or 1m (overrides [agent] interval; 1s to 1h).
    #[arg(short, long, value_parser = parse_interval)]
    pub interval: Option<Duration>,
    /// Console format (overrides [console] format).
    #[arg(short, long, value_enum)]
    pub format: Option<ConsoleFormat>,
    /// Stop after this many reports (0: run until SIGINT/SIGTERM).
    #[arg(long, default_value_t = 0)]
    pub reports: u64,
    /// The node's name in reports (overrides [agent] node_name; a DaemonSet passes
    /// the Kubernetes node name).
    #[arg(long, env = "NODEPULSE_NODE_NAME")]
    pub node_name: Option<String>,
    /// The collector to export to (overrides [otlp] endpoint, e.g. a node-local
    /// collector at the host's address).
    #[arg(long, env = "NODEPULSE_OTLP_ENDPOINT")]
    pub otlp_endpoint: Option<String>,
}

#[derive(Args, Debug)]
pub struct CheckArgs {
    #[command(flatten)]
    pub config: ConfigArgs,
    /// Print the result as JSON.
    #[arg(long)]
    pub json: bool,
    /// Only validate the configuration (no privileges needed): exit 0 when valid, 2
    /// when not.
    #[arg(long)]
    pub config_only: bool,
}

fn parse_interval(text: &str) -> Result<Duration, String> {
    settings::parse_duration(text).and_then(config::check_interval)
}

impl ConfigArgs {
    fn load(&self, run: Option<&RunArgs>) -> Result<Config, ConfigError> {
        Config::load(self.config.as_deref(), &self.overrides(run))
    }

    fn overrides(&self, run: Option<&RunArgs>) -> Overrides {
        Overrides {
            interval: run.and_then(|r| r.interval),
            console_format: run.and_then(|r| r.format),
            log_level: self.log_level,
            log_format: self.log_format,
            sys_root: self.sys_root.clone(),
            node_name: run.and_then(|r| r.node_name.clone()),
            otlp_endpoint: run.and_then(|r| r.otlp_endpoint.clone()),
        }
    }
}

fn init_logging(config: &Config) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(config.log.level.as_str()));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = match config.log.format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().try_init(),
    };
}

pub fn main(cli: Cli) -> ExitCode {
    // The start of the agent's own totals (its CPU time), whichever exporter reads it.
    crate::util::time::process_start();
    match cli.command {
        Command::Run(args) => run(args),
        Command::Check(args) => check(args),
        Command::Record(args) => record(args),
        Command::Replay(args) => replay::replay(args),
        Command::View(args) => view::view(args),
        Command::Capacity(args) => capacity::capacity(args),
        Command::Cleanup(args) => cleanup(args),
    }
}

pub(super) fn config_error(e: ConfigError) -> ExitCode {
    errln!("nodepulse: {e}");
    errln!("nothing was attached; fix the configuration and start again");
    ExitCode::from(EXIT_CONFIG)
}

fn run(args: RunArgs) -> ExitCode {
    start(&args, None)
}

fn record(args: RecordArgs) -> ExitCode {
    let out: Box<dyn std::io::Write + Send> = if args.output.as_os_str() == "-" {
        Box::new(std::io::stdout())
    } else {
        match std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&args.output)
        {
            Ok(f) => Box::new(f),
            Err(e) => {
                errln!(
                    "nodepulse: cannot write the recording to {}: {e}; choose a writable \
                     path with --output",
                    args.output.display()
                );
                return ExitCode::from(EXIT_CONFIG);
            }
        }
    };
    start(&args.run, Some(out))
}

/// `run`, or `record` when `recording` is set: then the only output is the recording.
pub(super) fn start(args: &RunArgs, recording: Option<Box<dyn std::io::Write + Send>>) -> ExitCode {
    start_with(args, recording, |_| {})
}

/// [`start`] with the loaded configuration (and every reload of it) adjusted first.
pub(super) fn start_with(
    args: &RunArgs,
    recording: Option<Box<dyn std::io::Write + Send>>,
    adjust: fn(&mut Config),
) -> ExitCode {
    let mut config = match args.config.load(Some(args)) {
        Ok(c) => c,
        Err(e) => return config_error(e),
    };
    adjust(&mut config);
    init_logging(&config);
    let runtime = match agent_runtime() {
        Ok(r) => r,
        Err(e) => {
            errln!("nodepulse: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    // SIGHUP reads the same file with the same flags again.
    let (path, overrides) = (
        args.config.config.clone(),
        args.config.overrides(Some(args)),
    );
    let reload: Reload = Box::new(move || {
        let mut config = Config::load(path.as_deref(), &overrides)?;
        adjust(&mut config);
        Ok(config)
    });
    runtime.block_on(run_agent(config, args.reports, recording, reload))
}

/// The agent's runtime. The collection loop runs on the calling thread (`block_on`)
/// and does its work synchronously: reading maps, aggregating, detecting, encoding,
/// tens to hundreds of milliseconds per interval. The endpoints, the OTLP sender and
/// the webhook calls are spawned tasks, so they run on a worker thread of their own
/// and answer while a collection runs; on one shared thread every scrape and liveness
/// probe waited for it (the endpoint bench saw whole rounds of scrapes delayed
/// 130–1,040 ms).
pub(crate) fn agent_runtime() -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("nodepulse-io")
        .enable_all()
        .build()
}

async fn run_agent(
    config: Config,
    max_reports: u64,
    recording: Option<Box<dyn std::io::Write + Send>>,
    reload: Reload,
) -> ExitCode {
    let shutdown = match Shutdown::install() {
        Ok(s) => s,
        Err(e) => {
            errln!("nodepulse: cannot install signal handlers: {e}");
            return ExitCode::FAILURE;
        }
    };
    tracing::info!(
        version = env!("CARGO_PKG_VERSION"),
        "nodepulse starting: {config}"
    );
    // Before anything attaches: an audit log that cannot be written stops the start.
    let actions = if recording.is_some() {
        None
    } else {
        match Actions::start(&config.actions, &config.node_name()) {
            Ok(a) => a,
            Err(e) => {
                errln!("nodepulse: {e}");
                errln!("nothing was attached; fix the configuration and start again");
                return ExitCode::from(EXIT_CONFIG);
            }
        }
    };
    if let Some(a) = &actions {
        tracing::info!(
            rules = config.actions.rules.len(),
            dry_run = config.actions.dry_run,
            audit_log = %a.audit_path().display(),
            "remedial actions configured"
        );
    }
    let probes = match Probes::start(&config) {
        Ok(p) => p,
        Err(e) => {
            errln!("nodepulse: {e}");
            return ExitCode::FAILURE;
        }
    };
    let mut probes = probes;
    let (state, resume) = match open_state(&config, &mut probes) {
        Ok(s) => s,
        Err(code) => return code,
    };
    let start_unix_nano = resume
        .as_ref()
        .map_or_else(crate::util::time::unix_nanos, |r| r.start_unix_nano);
    let recording_on = recording.is_some();
    let Exporters { all, otlp } = match start_exporters(&config, recording, start_unix_nano) {
        Ok(started) => started,
        Err(code) => return code,
    };
    tracing::info!(
        "first report in {}",
        humantime::format_duration(config.agent.interval)
    );
    let mut pipeline = Pipeline::new(probes, all, &config)
        .with_actions(actions)
        .with_otlp(otlp)
        .recording(recording_on)
        .with_reload(config.clone(), reload);
    if let (Some(state), Some(resume)) = (state, resume) {
        pipeline = pipeline.with_state(state, resume);
    }
    pipeline
        .run(config.agent.interval, max_reports, shutdown)
        .await;
    ExitCode::SUCCESS
}

/// The state directory and how this start continues the previous run, when
/// `[agent] state_dir` is set.
fn open_state(
    config: &Config,
    probes: &mut Probes,
) -> Result<(Option<StateDir>, Option<Resume>), ExitCode> {
    if config.agent.state_dir.as_os_str().is_empty() {
        return Ok((None, None));
    }
    let state = StateDir::open(&config.agent.state_dir).map_err(|e| {
        eprintln!("nodepulse: {e}");
        ExitCode::from(EXIT_CONFIG)
    })?;
    let saved = state.load().unwrap_or_else(|e| {
        tracing::warn!("{e}; starting afresh");
        None
    });
    let handover = probes.handover_from().map(str::to_owned);
    let pins = probes.pins().map(|p| (p.name(), p.maps_adopted));
    let resume = Resume::decide(
        saved,
        pins,
        handover.as_deref(),
        crate::util::time::unix_nanos(),
    );
    Ok((Some(state), Some(resume)))
}

/// Every configured exporter (the health endpoint is fed like one), and the OTLP sender
/// to flush at exit.
struct Exporters {
    all: Vec<Box<dyn Exporter>>,
    otlp: Option<std::sync::Arc<OtlpSender>>,
}

/// Starts the configured exporters (with a recording, it replaces the console); on
/// failure, the exit code once the message is printed.
fn start_exporters(
    config: &Config,
    recording: Option<Box<dyn std::io::Write + Send>>,
    start_unix_nano: u64,
) -> Result<Exporters, ExitCode> {
    let failed = |e: start::StartError| {
        errln!("nodepulse: {e}");
        ExitCode::from(if e.config { EXIT_CONFIG } else { 1 })
    };
    let mut all: Vec<Box<dyn Exporter>> = Vec::new();
    match recording {
        Some(out) => all.push(Box::new(Console::new(out, ConsoleFormat::Json))),
        None => all.extend(start::console(config)),
    }
    all.extend(start::prometheus(config).map_err(failed)?);
    all.extend(start::health(config).map_err(failed)?);
    all.extend(start::view(config).map_err(failed)?);
    let mut otlp = None;
    if let Some((exporter, sender)) = start::otlp(config, start_unix_nano, None).map_err(failed)? {
        all.push(exporter);
        otlp = Some(sender);
    }
    Ok(Exporters { all, otlp })
}

fn cleanup(args: CleanupArgs) -> ExitCode {
    let config = match Config::load(args.config.as_deref(), &Overrides::default()) {
        Ok(c) => c,
        Err(e) => return config_error(e),
    };
    let mut failed = false;
    let bpffs = &config.agent.bpffs;
    match crate::probes::pins::remove_all(bpffs) {
        Ok(removed) if removed.is_empty() => {
            println!(
                "nothing pinned under {}",
                bpffs.join(crate::probes::pins::ROOT).display()
            )
        }
        Ok(removed) => {
            for name in removed {
                println!(
                    "removed {} (its probes are detached)",
                    bpffs.join(crate::probes::pins::ROOT).join(name).display()
                );
            }
        }
        Err(e) => {
            eprintln!(
                "nodepulse: cannot remove the pins under {}: {e}",
                bpffs.join(crate::probes::pins::ROOT).display()
            );
            failed = true;
        }
    }
    let state_dir = args.state_dir.unwrap_or(config.agent.state_dir);
    if !args.keep_state && !state_dir.as_os_str().is_empty() {
        match crate::state::remove(&state_dir) {
            Ok(removed) if removed.is_empty() => {
                println!("no saved state in {}", state_dir.display())
            }
            Ok(removed) => {
                for path in removed {
                    println!("removed {}", path.display());
                }
            }
            Err(e) => {
                eprintln!(
                    "nodepulse: cannot remove the saved state in {}: {e}",
                    state_dir.display()
                );
                failed = true;
            }
        }
    }
    if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

fn check(args: CheckArgs) -> ExitCode {
    let config = match args.config.load(None) {
        Ok(c) => c,
        Err(e) => return config_error(e),
    };
    if args.config_only {
        let problems = check::config_preflight(&config);
        if !problems.is_empty() {
            for p in &problems {
                errln!("nodepulse: {p}");
            }
            errln!("`nodepulse run` would fail with this configuration on this host");
            return ExitCode::from(EXIT_CONFIG);
        }
        outln!("configuration is valid: {config}");
        return ExitCode::SUCCESS;
    }
    init_logging(&config);
    let report = check::run(&config);
    if args.json {
        match serde_json::to_string_pretty(&report) {
            Ok(json) => outln!("{json}"),
            Err(e) => errln!("nodepulse: {e}"),
        }
    } else {
        out::stdout(format_args!("{}", report.render()));
    }
    ExitCode::from(report.exit_code() as u8)
}

#[cfg(test)]
mod tests;
