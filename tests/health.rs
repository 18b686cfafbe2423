//! The health endpoint of a running agent over real HTTP: not ready until the first
//! interval has completed, ready once it has with every probe attached, live
//! throughout. Needs root.

use crate::common;

use std::time::{Duration, Instant};

use common::{RunningAgent, http_get, logged_address};

#[test]
fn readiness_follows_the_first_interval() {
    require_root!();
    let config = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(
        config.path(),
        "[health]\nenabled = true\nlisten = \"127.0.0.1:0\"\n\
         [console]\nformat = \"json\"\n[agent]\ninterval = \"3s\"\n",
    )
    .unwrap();
    let started = Instant::now();
    let agent = RunningAgent::start(&[
        "--config",
        config.path().to_str().unwrap(),
        "--node-name",
        "node-from-flag",
    ]);
    let addr = logged_address(&agent, "health endpoint on http://");

    // The first report is due 3 s after start: not ready before it, but live.
    let (status, body) = http_get(&addr, "/readyz").unwrap();
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "too slow to see the agent before its first interval"
    );
    assert_eq!(
        (status, body.as_str()),
        (503, "not ready: the first interval has not completed yet\n")
    );
    assert_eq!(http_get(&addr, "/healthz").unwrap(), (200, "ok\n".into()));

    let deadline = Instant::now() + Duration::from_secs(15);
    let ready = loop {
        let (status, body) = http_get(&addr, "/readyz").unwrap();
        if status == 200 || Instant::now() > deadline {
            break (status, body);
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    assert_eq!(ready.0, 200, "never ready: {}", ready.1);
    assert!(ready.1.starts_with("ready: "), "{}", ready.1);
    assert_eq!(http_get(&addr, "/healthz").unwrap().0, 200);
    assert_eq!(http_get(&addr, "/metrics").unwrap().0, 404);

    // The node name given on the command line is the one reported.
    let (out, _) = agent.terminate();
    let first: serde_json::Value = serde_json::from_str(out.lines().next().unwrap()).unwrap();
    assert_eq!(first["node"], "node-from-flag");
}
