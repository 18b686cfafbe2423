//! `nodepulse view` as a person sees it: the report of a real recording (a CPU squeeze
//! injected into a cgroup, tests/data/soak-squeeze-10s.jsonl) rendered by headless
//! Chromium, checked through the DOM the page built (series drawn, the alarm span where
//! the squeeze was, no errors), with a screenshot kept in target/artifacts/.

use crate::common;

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
};

use serde_json::{Value, json};

/// The squeeze of the recording (tests/replay.rs tells its story).
const SQUEEZE_START: &str = "2026-12-06T13:02:42Z";
const SQUEEZE_END: &str = "2026-12-06T13:04:42Z";

fn recording() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/data/soak-squeeze-10s.jsonl")
}

/// Screenshots and reports kept for CI (target/artifacts/).
fn artifacts() -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("../artifacts");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// `nodepulse view <args>`, which must succeed.
fn view(args: &[&str]) -> String {
    let mut cmd = common::nodepulse();
    cmd.arg("view").args(args);
    let out = cmd.output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "{cmd:?}: {stderr}");
    stderr
}

/// Headless Chromium on `url` with `extra` flags, the network cut off: its stdout, and
/// the console messages it logged.
fn chromium(url: &str, extra: &[&str]) -> (String, Vec<String>) {
    common::require_tool("chromium");
    let profile = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let mut cmd = common::tool("chromium");
    cmd.args([
        "--headless",
        // As root Chromium refuses to start sandboxed.
        "--no-sandbox",
        "--disable-gpu",
        "--enable-logging=stderr",
        "--v=0",
        // Lets the page's asynchronous start (inflating its data) finish before the
        // dump or the screenshot.
        "--virtual-time-budget=20000",
        "--window-size=1400,1100",
        // Nothing resolves: the page must need no network (the live test reaches
        // the agent by its loopback address).
        "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",
    ])
    .arg(format!("--user-data-dir={}", profile.path().display()))
    .args(extra)
    .arg(url);
    let out = cmd.output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{cmd:?}: {stderr}");
    let console = stderr
        .lines()
        .filter(|l| l.contains("CONSOLE"))
        .map(str::to_owned)
        .collect();
    (String::from_utf8_lossy(&out.stdout).into_owned(), console)
}

/// The DOM after the page's script ran.
fn render(page: &Path, hash: &str) -> String {
    let url = format!("file://{}{hash}", page.display());
    let (dom, console) = chromium(&url, &["--dump-dom"]);
    assert!(console.is_empty(), "console messages: {console:#?}");
    assert_eq!(
        text_of(&dom, "<pre id=\"errors\">"),
        "",
        "the page reported errors"
    );
    assert!(
        dom.contains("data-ready=\"true\""),
        "never got ready: {dom}"
    );
    dom
}

/// Attributes of every tag that starts with `start` (e.g. `<section class="card"`).
fn tags(dom: &str, start: &str) -> Vec<BTreeMap<String, String>> {
    dom.match_indices(start)
        .map(|(i, _)| {
            let tag = &dom[i..i + dom[i..].find('>').unwrap()];
            let mut attrs = BTreeMap::new();
            let mut rest = tag;
            while let Some(eq) = rest.find("=\"") {
                let name = rest[..eq].rsplit(' ').next().unwrap().to_owned();
                let value_end = rest[eq + 2..].find('"').unwrap();
                attrs.insert(name, rest[eq + 2..eq + 2 + value_end].to_owned());
                rest = &rest[eq + 2 + value_end + 1..];
            }
            attrs
        })
        .collect()
}

/// Text between `open` and the next `<`.
fn text_of<'a>(dom: &'a str, open: &str) -> &'a str {
    let i = dom
        .find(open)
        .unwrap_or_else(|| panic!("no {open} in {dom}"))
        + open.len();
    &dom[i..i + dom[i..].find('<').unwrap()]
}

fn unix_ms(rfc3339: &str) -> f64 {
    humantime::parse_rfc3339(rfc3339)
        .unwrap()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as f64
}

/// The report of the real squeeze recording, with the alarm the detector raises over
/// it: one heatmap drawn, the alarm's span over the squeeze and nowhere else, and
/// nothing the page would fetch.
#[test]
fn chromium_shows_the_heatmap_and_the_alarm_span_of_a_real_squeeze() {
    let dir = artifacts();
    let page = dir.join("view-squeeze.html");
    let said = view(&[
        "--detect",
        recording().to_str().unwrap(),
        "-o",
        page.to_str().unwrap(),
    ]);
    assert!(said.contains("1 series, 1 alarm(s), 272 reports"), "{said}");
    let html = std::fs::read_to_string(&page).unwrap();
    for url in ["http://", "https://", "//cdn", "<link"] {
        assert!(
            !html.contains(url),
            "the page refers to {url}: it must be self-contained"
        );
    }

    let dom = render(&page, "");
    assert!(
        dom.contains("data-capacity=\"0\""),
        "no capacity signals recorded"
    );
    let cards = tags(&dom, "<section class=\"card\"");
    assert_eq!(cards.len(), 1, "{cards:#?}");
    let card = &cards[0];
    assert_eq!(
        card["data-series"],
        "cgroup.runqueue.latency{cgroup=/npsoak-squeeze}"
    );
    assert_eq!(card["data-drawn"], "true", "{card:#?}");
    // 272 columns of a wide distribution: many cells painted.
    let cells: usize = card["data-cells"].parse().unwrap();
    assert!(cells > 2000, "{cells} heat cells painted");

    let spans = tags(&dom, "<div class=\"span ");
    assert_eq!(spans.len(), 1, "one alarm span: {spans:#?}");
    let span = &spans[0];
    // Dated from the window that holds the squeeze's start, ended after it.
    let (start, end) = (unix_ms(&span["data-start"]), unix_ms(&span["data-end"]));
    assert!(
        (unix_ms(SQUEEZE_START) - 60_000.0..=unix_ms(SQUEEZE_END)).contains(&start),
        "{span:#?}"
    );
    assert!(end > unix_ms(SQUEEZE_END), "{span:#?}");
    // Placed where those times are on the time axis (272 ten-second columns from
    // 12:24:35 to 13:09:58).
    let (t0, t1) = (
        unix_ms("2026-12-06T12:24:35Z"),
        unix_ms("2026-12-06T13:09:58Z"),
    );
    let left: f64 = span["data-left"].parse().unwrap();
    let width: f64 = span["data-width"].parse().unwrap();
    let column = 1.0 / 272.0;
    assert!(
        (left - (start - t0) / (t1 - t0)).abs() < 2.0 * column,
        "span at {left}: {span:#?}"
    );
    assert!(
        (width - (end - start) / (t1 - t0)).abs() < 2.0 * column,
        "span {width} wide: {span:#?}"
    );
    assert!(
        dom.contains("from the detector replayed over the recording"),
        "{dom}"
    );
    assert!(dom.contains("has recovered at"), "the alarm's summary");

    let shot = dir.join("view-squeeze.png");
    let _ = std::fs::remove_file(&shot);
    let (_, console) = chromium(
        &format!("file://{}", page.display()),
        &[&format!("--screenshot={}", shot.display())],
    );
    assert!(console.is_empty(), "{console:#?}");
    let png = std::fs::read(&shot).unwrap();
    assert!(
        png.starts_with(b"\x89PNG") && png.len() > 20_000,
        "{} bytes",
        png.len()
    );
}

/// A real recording with capacity signals: `nodepulse record --interval 2s` while fio
/// (SCHED_FIFO, 512 KiB random reads, Poisson arrivals) stepped a memory-backed loop
/// device (loop7) through 4 % to 88 % of the 2,078 reads/s it did at full speed, 25 s
/// per step (2026-12-07 10:42-10:47 UTC, host load ~30). Trimmed to loop7's device
/// latency series and the capacity signals of loop7 and the host
/// (tests/data/capacity-knee-2s.jsonl.gz). Stretched 60x, its 5 minutes reach the
/// forecaster's two hours. The page must list the resources in the order `nodepulse
/// capacity --from` gives, with the same headroom, knee and forecast, and draw the
/// knee's evidence and the trend.
#[test]
fn chromium_shows_capacity_worst_first_with_the_knees_evidence_and_the_forecast() {
    use std::io::Read as _;
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let rec = dir.path().join("capacity-knee-2s.jsonl");
    let gz = std::fs::File::open(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/data/capacity-knee-2s.jsonl.gz"),
    )
    .unwrap();
    let mut text = String::new();
    flate2::read::GzDecoder::new(gz)
        .read_to_string(&mut text)
        .unwrap();
    std::fs::write(&rec, text).unwrap();
    let rec = rec.to_str().unwrap();
    let page = artifacts().join("view-capacity.html");
    let said = view(&[rec, "--stretch", "60", "-o", page.to_str().unwrap()]);
    assert!(said.contains("147 reports"), "{said}");

    let out = common::nodepulse()
        .args(["capacity", "--from", rec, "--stretch", "60", "--json"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let standing: Value = serde_json::from_slice(&out.stdout).unwrap();
    let expected = standing["resources"].as_array().unwrap();

    let dom = render(&page, "");
    let rows = tags(&dom, "<div class=\"cap ");
    let order: Vec<&str> = rows.iter().map(|r| r["data-resource"].as_str()).collect();
    let theirs: Vec<&str> = expected
        .iter()
        .map(|r| r["resource"].as_str().unwrap())
        .collect();
    assert_eq!(order, theirs, "the page's order against the command's");
    assert!(order.len() >= 3, "{order:?}");
    assert!(
        dom.contains(&format!("data-capacity=\"{}\"", order.len())),
        "{dom}"
    );
    let close = |page: &str, command: &Value| {
        let (a, b): (f64, f64) = (page.parse().unwrap(), command.as_f64().unwrap());
        assert!((a - b).abs() <= 1e-9 * b.abs().max(1.0), "{a} against {b}");
    };
    for (row, r) in rows.iter().zip(expected) {
        assert_eq!(
            row["data-forecast"],
            r["forecast"]["state"].as_str().unwrap()
        );
        assert_eq!(row["data-kind"], r["kind"].as_str().unwrap());
        if row["data-forecast"] == "saturating" {
            close(&row["data-hours"], &r["forecast"]["hours"]);
        }
    }

    // The swept device: its knee learned from the sweep, drawn with its evidence,
    // and its busy fraction forecast to saturate with an interval around the point.
    let i = order.iter().position(|r| *r == "io:loop7").unwrap();
    let (row, r) = (&rows[i], &expected[i]);
    let knee: f64 = row["data-knee"].parse().unwrap();
    close(&row["data-knee"], &r["headroom"]["knee_iops"]);
    close(&row["data-headroom"], &r["headroom"]["headroom"]);
    assert!(
        (83.0..=1_828.0).contains(&knee),
        "knee at {knee}/s, within the sweep"
    );
    assert_eq!(row["data-forecast"], "saturating", "{row:#?}");
    let (lower, hours): (f64, f64) = (
        row["data-lower"].parse().unwrap(),
        row["data-hours"].parse().unwrap(),
    );
    assert!(lower <= hours, "{row:#?}");
    if row["data-upper"] != "never" {
        assert!(
            hours <= row["data-upper"].parse::<f64>().unwrap(),
            "{row:#?}"
        );
    }
    let row_dom = &dom[dom.find("data-resource=\"io:loop7\"").unwrap()..];
    let row_dom = &row_dom[..row_dom[1..]
        .find("<div class=\"cap ")
        .map_or(row_dom.len(), |e| e + 1)];
    let curve = r["headroom"]["curve"].as_array().unwrap().len();
    assert!(curve >= 5, "{curve} bins of load");
    let knee_plot = &tags(row_dom, "<canvas class=\"knee\"")[0];
    assert_eq!(knee_plot["data-points"], curve.to_string());
    let trend = &tags(row_dom, "<canvas class=\"trend\"")[0];
    let buckets: usize = trend["data-points"].parse().unwrap();
    // 4.85 stretched hours: 28-29 closed 10-minute buckets.
    assert!((27..=30).contains(&buckets), "{buckets} buckets");
    assert!(
        trend["data-refits"].parse::<usize>().unwrap() >= 2,
        "{trend:#?}"
    );
    assert!(row_dom.contains("busy reaches 0.9 in "), "{row_dom}");
    assert!(dom.contains("stretched h (each recorded second read as 60)"));

    let shot = artifacts().join("view-capacity.png");
    let _ = std::fs::remove_file(&shot);
    let (_, console) = chromium(
        &format!("file://{}#family=none", page.display()),
        &[&format!("--screenshot={}", shot.display())],
    );
    assert!(console.is_empty(), "{console:#?}");
    assert!(std::fs::read(&shot).unwrap().starts_with(b"\x89PNG"));
}

/// A recording in the agent's full format (the real squeeze's series, a second series,
/// the alarm events as the agent writes them, an action run, probe states and the
/// agent's usage): the report shows the recorded alarm with its action and outcome, the
/// probes and the agent's cost, and a link's filter and time brush narrow it.
#[test]
fn chromium_shows_recorded_alarms_actions_probes_and_honours_filters() {
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    // The alarm events the detector raises over the real recording, as `record` would
    // have written them in the report of their time.
    let out = common::nodepulse()
        .args(["replay", "--format", "json"])
        .arg(recording())
        .output()
        .unwrap();
    assert!(out.status.success());
    let events: Vec<Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let opened = events.iter().find(|e| e["state"] == "open").unwrap();
    let resolved = events.iter().find(|e| e["state"] == "resolved").unwrap();
    let id = opened["id"].as_str().unwrap();

    let mut text = String::new();
    let mut placed = [false; 2];
    let lines = std::fs::read_to_string(recording()).unwrap();
    for line in lines.lines() {
        let mut report: Value = serde_json::from_str(line).unwrap();
        let time = report["time"].as_str().unwrap().to_owned();
        let mut other = report["series"][0].clone();
        other["labels"] = json!({"cgroup": "/quiet-neighbour"});
        report["series"].as_array_mut().unwrap().push(other);
        let mut alarms = Vec::new();
        let mut actions = Vec::new();
        // Each event goes into the first report at or after the time it happened.
        for (e, done) in [opened, resolved].into_iter().zip(&mut placed) {
            let at = e["ended"]
                .as_str()
                .unwrap_or(e["started"].as_str().unwrap());
            if *done || at > time.as_str() {
                continue;
            }
            *done = true;
            alarms.push(e.clone());
            if e["state"] == "open" {
                actions.push(json!({
                    "time": time, "alarm_id": id, "event": "open",
                    "series": e["series"], "rule": "squeeze-relief", "kind": "program",
                    "target": "/usr/local/bin/relieve --cgroup /npsoak-squeeze",
                    "outcome": "ok", "exit_code": 0, "duration_ms": 41.5,
                }));
            }
        }
        report["alarms"] = json!(alarms);
        report["actions"] = json!(actions);
        report["probes"] = json!([
            {"probe": "sched", "state": "up", "attach": "tp_btf", "errors": [],
             "programs": [{"program": "sched_switch_btf", "events": 1000, "run_time_ns": 90000}]},
            {"probe": "kvm", "state": "not_applicable", "attach": null,
             "errors": ["no /dev/kvm"], "programs": []},
        ]);
        report["agent"] = json!({"cpu_percent": 0.4, "rss_bytes": 24 << 20,
            "dropped_total": {"ring_buffer_full": 0}});
        text.push_str(&report.to_string());
        text.push('\n');
    }
    let rec = dir.path().join("full.jsonl");
    std::fs::write(&rec, text).unwrap();
    let page = dir.path().join("full.html");
    let said = view(&[rec.to_str().unwrap(), "-o", page.to_str().unwrap()]);
    assert!(said.contains("2 series, 1 alarm(s)"), "{said}");

    let dom = render(&page, "");
    assert!(dom.contains("raised while recording"), "{dom}");
    assert_eq!(tags(&dom, "<section class=\"card\"").len(), 2);
    let spans = tags(&dom, "<div class=\"span ");
    assert_eq!(spans.len(), 1, "only on the squeezed series: {spans:#?}");
    assert_eq!(spans[0]["data-alarm"], id);
    let actions = tags(&dom, "<tr class=\"action\"");
    assert_eq!(actions.len(), 1, "{dom}");
    assert_eq!(
        text_of(&dom, "<td class=\"outcome-ok\">"),
        "ok",
        "the action's outcome"
    );
    assert!(dom.contains("/usr/local/bin/relieve --cgroup /npsoak-squeeze"));
    let probes = tags(&dom, "<tr data-probe=");
    let states: BTreeMap<&str, &str> = probes
        .iter()
        .map(|p| (p["data-probe"].as_str(), p["data-state"].as_str()))
        .collect();
    assert_eq!(
        states,
        BTreeMap::from([("kvm", "not_applicable"), ("sched", "up")])
    );
    assert!(dom.contains("sched_switch_btf"), "program cost listed");
    assert!(
        text_of(&dom, "<p id=\"agent-cost\">").starts_with("CPU 0.40 % on average"),
        "{dom}"
    );

    // A link narrows the view: by label words, and to the squeeze's minutes.
    let dom = render(
        &page,
        &format!("#labels=neighbour&from={SQUEEZE_START}&to={SQUEEZE_END}"),
    );
    let body = &tags(&dom, "<body")[0];
    assert_eq!(body["data-shown"], "1", "{body:#?}");
    let shown: Vec<_> = tags(&dom, "<section class=\"card\"")
        .into_iter()
        .filter(|c| c["data-series"].contains("quiet-neighbour"))
        .collect();
    assert_eq!(shown.len(), 1);
    // 120 s of 10 s columns, give or take the columns the ends fall in.
    let range: Vec<usize> = body["data-range"]
        .split(',')
        .map(|c| c.parse().unwrap())
        .collect();
    assert!((12..=14).contains(&(range[1] - range[0])), "{body:#?}");
    let dom = render(&page, "#alarmed=1");
    assert_eq!(tags(&dom, "<body")[0]["data-shown"], "1");
}

/// What is wrong and what to do, for a file that is not a recording.
#[test]
fn view_of_something_else_says_what_is_wrong() {
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let bad = dir.path().join("notes.txt");
    std::fs::write(&bad, "{\"time\":\"2026-12-06T12:00:00Z\"}\nhello\n").unwrap();
    let out = common::nodepulse()
        .arg("view")
        .arg(&bad)
        .args(["-o", dir.path().join("x.html").to_str().unwrap()])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("line 1: not a nodepulse recording line")
            && stderr.contains("nodepulse record --output FILE"),
        "{stderr}"
    );
    assert!(!dir.path().join("x.html").exists());
}

/// The live page of a running agent (root): `/view.json` carries the agent's last
/// reports with its probe states, and `/view` renders in Chromium, refreshing from it
/// without errors.
#[test]
fn a_running_agent_serves_the_live_view() {
    require_root!();
    let config = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(
        config.path(),
        "[view]\nenabled = true\nlisten = \"127.0.0.1:0\"\nminutes = 1\n\
         [console]\nenabled = false\n[agent]\ninterval = \"1s\"\n",
    )
    .unwrap();
    let agent = common::RunningAgent::start(&["--config", config.path().to_str().unwrap()]);
    let addr = common::logged_address(&agent, "live view on http://");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let data: Value = loop {
        let (status, body) = common::http_get(&addr, "/view.json").unwrap();
        if status == 200 {
            let data: Value = serde_json::from_str(&body).unwrap();
            if data["reports"].as_u64() >= Some(3) && !data["series"].as_array().unwrap().is_empty()
            {
                break data;
            }
        }
        assert!(std::time::Instant::now() < deadline, "{status}: {body}");
        std::thread::sleep(std::time::Duration::from_millis(300));
    };
    let probes: Vec<&str> = data["probes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["probe"].as_str().unwrap())
        .collect();
    assert!(probes.contains(&"sched"), "{probes:?}");
    assert!(data["agent"]["cpu_percent_mean"].as_f64().is_some());
    // Capacity is on by default: the page learns it from the kept reports (the host's
    // CPU at least; no forecast within a minute).
    let capacity = data["capacity"]["resources"].as_array().unwrap();
    let cpu = capacity.iter().find(|r| r["resource"] == "cpu").unwrap();
    assert_eq!(cpu["forecast"]["state"], "learning", "{cpu}");
    assert_eq!(common::http_get(&addr, "/metrics").unwrap().0, 404);

    let url = format!("http://{addr}/view");
    let (dom, console) = chromium(&url, &["--dump-dom"]);
    let _ = agent.terminate();
    assert!(console.is_empty(), "console messages: {console:#?}");
    assert_eq!(
        text_of(&dom, "<pre id=\"errors\">"),
        "",
        "the page reported errors"
    );
    let body = &tags(&dom, "<body")[0];
    assert_eq!(body["data-live"], "/view.json");
    assert_eq!(body["data-ready"], "true");
    assert!(
        body["data-series"].parse::<usize>().unwrap() >= 1,
        "{body:#?}"
    );
    assert!(
        tags(&dom, "<div class=\"cap ")
            .iter()
            .any(|c| c["data-resource"] == "cpu"),
        "{dom}"
    );
    assert!(
        tags(&dom, "<tr data-probe=")
            .iter()
            .any(|p| p["data-probe"] == "sched" && p["data-state"] == "up"),
        "{dom}"
    );
}
