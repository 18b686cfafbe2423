//! The built artifacts, for real: the container image run by podman with the
//! DaemonSet's capabilities, mounts and configuration (and refused without them), and
//! the Debian package inspected, verified, installed, run as its unit would run it, and
//! purged. Needs root, and the artifacts of `cargo xtask image` and `cargo xtask deb`
//! (`cargo xtask test` builds both first).

use crate::common;

mod container;
mod deb;

use std::{
    process::{Command, Output},
    time::{Duration, Instant},
};

const VERSION: &str = env!("CARGO_PKG_VERSION");

fn output(cmd: &mut Command) -> Output {
    cmd.output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"))
}

/// Polls `GET /readyz` until it answers 200 or `within` has passed; the last answer.
fn wait_ready(addr: &str, within: Duration) -> Option<(u16, String)> {
    let started = Instant::now();
    loop {
        let answer = common::http_get(addr, "/readyz").ok();
        if answer.as_ref().is_some_and(|(s, _)| *s == 200) || started.elapsed() > within {
            return answer;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}
