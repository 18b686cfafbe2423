//! The TCP workloads: an iperf3 stream over loopback, on a port of a configured peer
//! group or on one in none, measured with only the TCP probe running so that its
//! per-packet cost is all the agent adds.

use std::process::{Child, Command, Stdio};

use anyhow::{Context, Result, ensure};
use serde_json::Value;

pub const WATCHED_PORT: u16 = 15_201;
pub const UNWATCHED_PORT: u16 = 15_202;

/// The agent's configuration for both workloads: the other probes off, one group.
pub fn config() -> String {
    format!(
        "[probes.block]\nenabled = false\n[probes.sched]\nenabled = false\n\
         [probes.kvm]\nenabled = false\n[probes.tcp]\n\
         groups = [{{ name = \"bench\", ports = [{WATCHED_PORT}] }}]\n"
    )
}

/// An iperf3 server, killed (by PID) on drop.
pub struct Server(Child);

impl Server {
    pub fn start(port: u16) -> Result<Self> {
        let child = Command::new("iperf3")
            .args(["-s", "-B", "127.0.0.1", "-p", &port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting iperf3 -s (cargo xtask setup installs it)")?;
        // Listening well within this; the first client retries nothing.
        std::thread::sleep(std::time::Duration::from_millis(300));
        Ok(Self(child))
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Bits per second the server received over one run.
pub fn stream(port: u16, runtime: u64) -> Result<f64> {
    let out = Command::new("iperf3")
        .args(["-c", "127.0.0.1", "-J", "-p", &port.to_string()])
        .args(["-t", &runtime.to_string()])
        .output()
        .context("running iperf3 -c")?;
    ensure!(
        out.status.success(),
        "iperf3 failed: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    let report: Value = serde_json::from_slice(&out.stdout).context("iperf3's JSON")?;
    report["end"]["sum_received"]["bits_per_second"]
        .as_f64()
        .context("no received bits/s in iperf3's report")
}
