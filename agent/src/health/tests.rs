//! Tests of the parent module: readiness from reports, and the responses (including
//! over real HTTP on loopback).
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::*;
use crate::report::{ProbeReport, sample};

const LIMIT: Duration = Duration::from_secs(60);

fn state(not_ready: Option<&str>, progress_ago: Duration) -> (State, Instant) {
    let now = Instant::now() + Duration::from_secs(3600);
    let state = State {
        last_progress: now - progress_ago,
        reports: 4,
        not_ready: not_ready.map(str::to_owned),
    };
    (state, now)
}

/// The whole body of a response (a `Full` body is ready at once).
fn body(r: &Response<Full<Bytes>>) -> String {
    use http_body_util::BodyExt as _;
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let bytes = rt.block_on(r.body().clone().collect()).unwrap().to_bytes();
    String::from_utf8(bytes.to_vec()).unwrap()
}

fn down_probe(errors: Vec<String>) -> ProbeReport {
    ProbeReport {
        probe: "sched",
        state: ProbeState::Down,
        attach: None,
        errors,
        programs: vec![],
    }
}

#[test]
fn a_report_with_every_probe_up_is_ready() {
    assert_eq!(not_ready(&sample()), None);
}

#[test]
fn a_down_probe_is_named_with_its_first_error() {
    let mut r = sample();
    r.probes
        .push(down_probe(vec!["tp_btf: Operation not permitted".into()]));
    assert_eq!(
        not_ready(&r).unwrap(),
        "probe sched is not attached (tp_btf: Operation not permitted)"
    );
}

#[test]
fn disabled_and_not_applicable_probes_do_not_count_but_one_must_be_up() {
    let mut r = sample();
    r.probes.push(ProbeReport {
        state: ProbeState::NotApplicable,
        ..down_probe(vec!["no /dev/kvm".into()])
    });
    assert_eq!(not_ready(&r), None);
    r.probes[0].state = ProbeState::Disabled;
    assert_eq!(
        not_ready(&r).unwrap(),
        "no probe is attached (all disabled or not applicable)"
    );
}

#[test]
fn liveness_is_ok_while_reports_come_even_when_not_ready() {
    let (s, now) = state(Some(FIRST_INTERVAL), Duration::from_secs(5));
    let r = respond(&Method::GET, LIVENESS_PATH, &s, now, LIMIT);
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(body(&r), "ok\n");
}

#[test]
fn readiness_says_why_not() {
    let (s, now) = state(Some(FIRST_INTERVAL), Duration::from_secs(5));
    let r = respond(&Method::GET, READINESS_PATH, &s, now, LIMIT);
    assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(
        body(&r),
        "not ready: the first interval has not completed yet\n"
    );
    let (s, now) = state(None, Duration::from_secs(5));
    let r = respond(&Method::HEAD, READINESS_PATH, &s, now, LIMIT);
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(body(&r), "ready: 4 reports\n");
}

#[test]
fn a_stalled_loop_fails_both() {
    let (s, now) = state(None, Duration::from_secs(61));
    for path in [LIVENESS_PATH, READINESS_PATH] {
        let r = respond(&Method::GET, path, &s, now, LIMIT);
        assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE, "{path}");
        assert_eq!(body(&r), "stalled: no report for 61s (limit 60s)\n");
    }
}

#[test]
fn other_paths_and_methods_are_refused() {
    let (s, now) = state(None, Duration::ZERO);
    let r = respond(&Method::GET, "/metrics", &s, now, LIMIT);
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    let r = respond(&Method::POST, READINESS_PATH, &s, now, LIMIT);
    assert_eq!(r.status(), StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(r.headers()["allow"], "GET, HEAD");
}

#[test]
fn stall_limit_scales_with_the_interval() {
    assert_eq!(
        stall_limit(Duration::from_secs(10)),
        Duration::from_secs(60)
    );
    assert_eq!(stall_limit(Duration::from_secs(1)), Duration::from_secs(33));
}

async fn get(addr: SocketAddr, path: &str) -> String {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    out
}

#[tokio::test(flavor = "current_thread")]
async fn over_http_readiness_follows_the_reports() {
    let (mut health, addr) =
        Health::start("127.0.0.1:0".parse().unwrap(), Duration::from_secs(10)).unwrap();
    let before = get(addr, READINESS_PATH).await;
    assert!(before.starts_with("HTTP/1.1 503"), "{before}");
    assert!(before.ends_with("not ready: the first interval has not completed yet\n"));
    assert!(get(addr, LIVENESS_PATH).await.starts_with("HTTP/1.1 200"));

    health.export(&sample()).unwrap();
    let after = get(addr, READINESS_PATH).await;
    assert!(after.starts_with("HTTP/1.1 200"), "{after}");
    assert!(after.ends_with("ready: 1 reports\n"), "{after}");

    let mut broken = sample();
    broken.probes[0].state = ProbeState::Down;
    health.export(&broken).unwrap();
    let again = get(addr, READINESS_PATH).await;
    assert!(again.starts_with("HTTP/1.1 503"), "{again}");
    assert!(again.contains("probe block is not attached"), "{again}");
}
