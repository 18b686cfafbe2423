//! `nodepulse capacity`: the node's capacity standing from a recording, or live from a
//! short recording made in memory; either way through `capacity::replay`, the same
//! learning the agent runs.

use std::{
    fs::File,
    io::{BufReader, Write},
    process::ExitCode,
    sync::{Arc, Mutex},
    time::Duration,
};

use super::{CapacityArgs, EXIT_CONFIG, RunArgs, config_error, out, start_with};
use crate::capacity::{replay::replay, standing::Standing};
use crate::config::Config;

pub const LONG_ABOUT: &str = "\
Each resource of the node (block devices, the host's CPU run queues and pressure, VMs, \
cgroups' pressure) with its utilisation in the last interval, its headroom to the \
latency knee with the knee's evidence (load at the knee, p99 unloaded and at the knee) \
or why it is not known yet, and its forecast time to saturation with the interval, or \
how much longer the forecaster must learn. Worst first: resources forecast to saturate, \
soonest first; then the closest to saturation now.

--from FILE replays a recording (`nodepulse record --output FILE`) through the same \
capacity learning the agent runs; no root needed. Knees and forecasts need history \
(a spread of load; two hours of 10-minute buckets), so a recording of hours is what \
answers \"when does it run out\".

Without --from it attaches the probes for --for (30 s by default; root or \
CAP_BPF + CAP_PERFMON, as `nodepulse record`) and reports that window: utilisation \
now, and headroom and forecasts only as far as such a window can tell (usually \
\"learning\"); it logs only warnings unless --log-level says otherwise. It does \
not read a running agent: that agent's own headroom and forecasts are its capacity.* metrics (Prometheus, OTLP) and its console. \
It can run beside that agent with the same --config: it keeps nothing attached or \
pinned, saves no state, opens no endpoint and exports nothing.";

pub fn capacity(args: CapacityArgs) -> ExitCode {
    if !(args.stretch.is_finite() && args.stretch >= 1.0) {
        errln!(
            "nodepulse: --stretch must be a number of at least 1, got {}",
            args.stretch
        );
        return ExitCode::from(EXIT_CONFIG);
    }
    let config = match args.config.load(None) {
        Ok(c) => c,
        Err(e) => return config_error(e),
    };
    let (name, text) = match &args.from {
        Some(path) => (path.display().to_string(), None),
        None => match live(&args, config.agent.interval) {
            Ok(text) => ("the live window".to_owned(), Some(text)),
            Err(code) => return code,
        },
    };
    let replayed = match (&text, &args.from) {
        (Some(t), _) => replay(
            &name,
            t.as_slice(),
            &config.capacity,
            args.stretch,
            |_, _| {},
        ),
        (None, Some(path)) => match File::open(path) {
            Ok(f) => replay(
                &name,
                BufReader::new(f),
                &config.capacity,
                args.stretch,
                |_, _| {},
            ),
            Err(e) => {
                errln!(
                    "nodepulse: cannot read {name}: {e}; pass a recording made with \
                     `nodepulse record --output FILE`"
                );
                return ExitCode::from(EXIT_CONFIG);
            }
        },
        (None, None) => unreachable!("live returns the recording"),
    };
    let standing = match replayed {
        Ok(r) => Standing::of(&r),
        Err(e) => {
            errln!("nodepulse: {e}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    if args.json {
        outln!("{}", serde_json::to_string(&standing).unwrap_or_default());
    } else {
        out::stdout(format_args!("{}", standing.render()));
    }
    ExitCode::SUCCESS
}

/// A recording kept in memory.
#[derive(Clone, Default)]
struct Memory(Arc<Mutex<Vec<u8>>>);

impl Write for Memory {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// A look beside a running agent that may share this configuration file: it must not
/// adopt or replace that agent's pinned probes, overwrite its saved state, take its
/// ports or send a second copy of the node's telemetry to its collector.
fn observe_only(config: &mut Config) {
    config.agent.keep_attached = false;
    config.agent.state_dir = Default::default();
    config.prometheus.enabled = false;
    config.health.enabled = false;
    config.view.enabled = false;
    config.otlp.enabled = false;
}

/// Records `--for` in memory, as `nodepulse record` does; the recording's text.
fn live(args: &CapacityArgs, configured: Duration) -> Result<Vec<u8>, ExitCode> {
    let interval = args
        .interval
        .unwrap_or_else(|| configured.min(args.for_ / 3))
        .max(Duration::from_secs(1));
    let reports = (args.for_.as_secs_f64() / interval.as_secs_f64())
        .ceil()
        .max(1.0) as u64;
    let run = RunArgs {
        config: super::ConfigArgs {
            config: args.config.config.clone(),
            // A report, not a running agent: its progress is no news.
            log_level: args
                .config
                .log_level
                .or(Some(crate::config::LogLevel::Warn)),
            log_format: args.config.log_format,
            sys_root: args.config.sys_root.clone(),
        },
        interval: Some(interval),
        format: None,
        reports,
        node_name: None,
        otlp_endpoint: None,
    };
    let memory = Memory::default();
    let code = start_with(&run, Some(Box::new(memory.clone())), observe_only);
    if code != ExitCode::SUCCESS {
        return Err(code);
    }
    let text = std::mem::take(&mut *memory.0.lock().unwrap_or_else(|e| e.into_inner()));
    Ok(text)
}
