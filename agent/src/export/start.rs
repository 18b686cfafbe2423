//! Starting each configured exporter: at start (where a failure stops the agent) and
//! at a SIGHUP reload (where it is logged and the running exporter kept).

use std::{net::SocketAddr, sync::Arc};

use super::{
    Exporter,
    console::Console,
    otlp::{OtlpExporter, transport::OtlpSender},
    prometheus::PrometheusExporter,
};
use crate::{config::Config, health::Health, view::live::LiveView};

/// Why an exporter could not start, said for an operator.
#[derive(Debug)]
pub struct StartError {
    pub message: String,
    /// The configuration is at fault (exit code 2 at start), not the host.
    pub config: bool,
}

impl std::fmt::Display for StartError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

/// The console, when `[console]` enables it.
pub fn console(config: &Config) -> Option<Box<dyn Exporter>> {
    config
        .console
        .enabled
        .then(|| Box::new(Console::stdout(config.console.format)) as Box<dyn Exporter>)
}

/// The Prometheus endpoint, when `[prometheus]` enables it.
pub fn prometheus(config: &Config) -> Result<Option<Box<dyn Exporter>>, StartError> {
    if !config.prometheus.enabled {
        return Ok(None);
    }
    let listen = listen_address("prometheus", &config.prometheus.listen)?;
    let (exporter, bound) = PrometheusExporter::start(listen)
        .map_err(|e| cannot_serve("Prometheus metrics", "prometheus", listen, e))?;
    tracing::info!("Prometheus endpoint on http://{bound}/metrics");
    Ok(Some(Box::new(exporter)))
}

/// The health endpoint (fed like an exporter), when `[health]` enables it.
pub fn health(config: &Config) -> Result<Option<Box<dyn Exporter>>, StartError> {
    if !config.health.enabled {
        return Ok(None);
    }
    let listen = listen_address("health", &config.health.listen)?;
    let (health, bound) = Health::start(listen, config.agent.interval)
        .map_err(|e| cannot_serve("health checks", "health", listen, e))?;
    tracing::info!("health endpoint on http://{bound}/healthz and /readyz");
    Ok(Some(Box::new(health)))
}

/// The live view page, when `[view]` enables it.
pub fn view(config: &Config) -> Result<Option<Box<dyn Exporter>>, StartError> {
    if !config.view.enabled {
        return Ok(None);
    }
    let listen = listen_address("view", &config.view.listen)?;
    let (view, bound) = LiveView::start(
        &config.view,
        config.capacity.enabled.then(|| config.capacity.clone()),
        listen,
    )
    .map_err(|e| cannot_serve("the live view", "view", listen, e))?;
    tracing::info!("live view on http://{bound}/view");
    Ok(Some(Box::new(view)))
}

/// The OTLP exporter and its sender.
pub type Otlp = (Box<dyn Exporter>, Arc<OtlpSender>);

/// OTLP export, when `[otlp]` enables it, with cumulative series starting at
/// `start_unix_nano` and its first delta interval at `last_export` (a replaced
/// exporter's, at a reload); and its sender, to flush at exit.
pub fn otlp(
    config: &Config,
    start_unix_nano: u64,
    last_export: Option<u64>,
) -> Result<Option<Otlp>, StartError> {
    if !config.otlp.enabled {
        return Ok(None);
    }
    let (exporter, sender) =
        OtlpExporter::start(&config.otlp, &config.node_name()).map_err(|e| StartError {
            message: format!("cannot start OTLP export: {e}"),
            config: false,
        })?;
    tracing::info!(endpoint = %config.otlp.endpoint, "exporting to OTLP");
    Ok(Some((
        Box::new(exporter.with_start(start_unix_nano).continuing(last_export)),
        sender,
    )))
}

/// A `listen` key, already validated with the rest of the configuration.
fn listen_address(table: &str, listen: &str) -> Result<SocketAddr, StartError> {
    listen.parse().map_err(|e| StartError {
        message: format!("{table}.listen: {e}"),
        config: true,
    })
}

fn cannot_serve(what: &str, table: &str, listen: SocketAddr, e: std::io::Error) -> StartError {
    StartError {
        message: format!(
            "cannot serve {what} on {listen}: {e}\nchoose a free address with [{table}] \
             listen in the configuration"
        ),
        config: false,
    }
}
