//! The OTLP exporter: each report becomes a metrics request (and, when the interval had
//! outliers, a traces request; when something happened worth a log, a logs request),
//! handed to the transport's bounded queues without waiting. A collector that is slow
//! or away never holds up the collection loop: batches queue, then drop (counted).

pub mod alarms;
pub mod encode;
pub mod transport;

use std::sync::Arc;

use opentelemetry_proto::tonic::{metrics::v1::Metric, resource::v1::Resource};

use self::{
    encode::{Event, Times, int_point, kv, self_metric},
    transport::{OtlpConfig, OtlpSender, Signal, Temporality, TransportError},
};
use super::Exporter;
use crate::{catalog, report::Report, util::time::unix_nanos};

pub struct OtlpExporter {
    sender: Arc<OtlpSender>,
    resource: Resource,
    temporality: Temporality,
    histogram_scale: i32,
    agent_start: u64,
    /// Start of the agent's own totals (its CPU time): the process's, whatever
    /// exporter a reload put in place.
    process_start: u64,
    /// Start of this transport's counters, which begin at zero with it.
    transport_start: u64,
    last_export: u64,
    /// Probe failures are logged once, not every interval.
    reported_failures: bool,
}

impl OtlpExporter {
    /// Starts the transport (inside the tokio runtime). The returned sender handle lets
    /// the caller flush the queues at shutdown.
    pub fn start(
        config: &OtlpConfig,
        host_name: &str,
    ) -> Result<(Self, Arc<OtlpSender>), TransportError> {
        let sender = Arc::new(transport::start(config)?);
        let now = unix_nanos();
        Ok((
            Self {
                sender: Arc::clone(&sender),
                resource: encode::resource(host_name),
                temporality: config.temporality,
                histogram_scale: config.histogram_scale,
                agent_start: now,
                process_start: crate::util::time::process_start(),
                transport_start: now,
                last_export: now,
                reported_failures: false,
            },
            sender,
        ))
    }

    /// Cumulative series start at `start` (unix ns): a restarted agent continuing the
    /// kernel's counts keeps the previous run's start, so sums do not look reset.
    pub fn with_start(mut self, start: u64) -> Self {
        self.agent_start = start;
        self
    }

    /// The next delta interval starts at `last_export` (unix ns): the replaced
    /// exporter's last, so a reload neither loses nor stretches an interval.
    pub fn continuing(mut self, last_export: Option<u64>) -> Self {
        if let Some(at) = last_export {
            self.last_export = at;
        }
        self
    }

    /// The times of an export at `now`, which ends its delta interval.
    fn times_until(&mut self, now: u64) -> Times {
        let times = Times {
            agent_start: self.agent_start,
            process_start: self.process_start,
            interval_start: self.last_export,
            now,
        };
        self.last_export = now;
        times
    }

    /// The transport's own counters, so a collector outage shows once it is back.
    fn transport_metrics(&self, times: Times) -> Vec<Metric> {
        // Counted by this transport, from zero at its start.
        let times = Times {
            agent_start: self.transport_start,
            ..times
        };
        let stats = self.sender.stats();
        let mut batches = Vec::new();
        let mut bytes = Vec::new();
        for signal in Signal::ALL {
            let s = stats.signal(signal);
            for (outcome, n) in [
                ("sent", s.batches_sent),
                ("failed", s.batches_failed),
                ("dropped", s.batches_dropped),
            ] {
                batches.push(int_point(
                    n,
                    vec![kv("signal", signal.name()), kv("outcome", outcome)],
                    times,
                ));
            }
            bytes.push(int_point(
                s.bytes_sent,
                vec![kv("signal", signal.name())],
                times,
            ));
        }
        vec![
            self_metric(&catalog::OTLP_BATCHES, batches),
            self_metric(&catalog::OTLP_BYTES, bytes),
        ]
    }
}

impl Exporter for OtlpExporter {
    fn name(&self) -> &'static str {
        "otlp"
    }

    fn last_export(&self) -> Option<u64> {
        Some(self.last_export)
    }

    fn export(&mut self, report: &Report) -> std::io::Result<()> {
        let now = unix_nanos();
        let times = self.times_until(now);
        let extra = self.transport_metrics(times);
        let metrics = encode::metrics_request(
            report,
            &self.resource,
            self.temporality,
            self.histogram_scale,
            times,
            extra,
        );
        let mut dropped = Vec::new();
        if !self.sender.try_send_metrics(metrics) {
            dropped.push("metrics");
        }
        let mut spans = encode::outlier_spans(&report.outliers);
        spans.extend(alarms::alarm_spans(&report.alarms));
        spans.extend(alarms::action_spans(&report.actions));
        if !spans.is_empty()
            && !self
                .sender
                .try_send_traces(encode::spans_request(spans, &self.resource))
        {
            dropped.push("traces");
        }
        let mut events = Vec::new();
        if !self.reported_failures {
            self.reported_failures = true;
            events = Event::probe_failures(report, now);
        }
        events.extend(alarms::alarm_events(&report.alarms, now));
        events.extend(alarms::action_events(&report.actions));
        if !events.is_empty()
            && !self
                .sender
                .try_send_logs(encode::logs_request(&events, &self.resource))
        {
            dropped.push("logs");
        }
        if dropped.is_empty() {
            Ok(())
        } else {
            // Counted by the transport; said once here so the operator sees why.
            Err(std::io::Error::other(format!(
                "OTLP queue full, dropped this interval's {}",
                dropped.join(" and ")
            )))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A replacement (a SIGHUP's) goes on from the replaced exporter's last export, and
    /// the agent's own totals keep the process's start.
    #[tokio::test(flavor = "current_thread")]
    async fn a_replacement_continues_the_process_start_and_the_interval() {
        let process_start = crate::util::time::process_start();
        let config = OtlpConfig {
            enabled: true,
            endpoint: "http://127.0.0.1:9".into(),
            ..OtlpConfig::default()
        };
        let (mut first, _) = OtlpExporter::start(&config, "node").unwrap();
        let exported = first.times_until(unix_nanos()).now;
        std::thread::sleep(std::time::Duration::from_millis(2));
        let (second, _) = OtlpExporter::start(&config, "node").unwrap();
        let mut second = second.continuing(first.last_export());
        let times = second.times_until(unix_nanos());
        assert_eq!(times.interval_start, exported);
        assert_eq!(times.process_start, process_start);
        assert!(
            second.transport_start > exported,
            "its transport counts anew"
        );
    }
}
