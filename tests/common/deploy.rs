//! Helpers of the deployment tests: the repository's deploy/ files, the tools that
//! check them (kubectl, the kubernetes-validate venv, promtool, podman, dpkg), YAML read
//! through the venv's PyYAML, and the names of the metrics nodepulse exports.

use std::{
    collections::BTreeSet,
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use serde_json::Value;

/// The workspace root (the agent crate's parent).
pub fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("agent/ has a parent")
        .to_path_buf()
}

/// The deployment tests' venv, found by the same rule as `cargo xtask setup`
/// (xtask/src/setup.rs, `venv_dir`).
pub fn venv_bin(tool: &str) -> PathBuf {
    let cache = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .unwrap_or_else(|| PathBuf::from("/tmp"));
    let path = cache.join("nodepulse/venv/bin").join(tool);
    assert!(
        path.is_file(),
        "{} is missing: run `cargo xtask setup` (it creates the venv with kubernetes-validate)",
        path.display()
    );
    path
}

/// Runs `cmd` with `input` on stdin; panics with stderr unless it succeeds.
pub fn run_with_input(cmd: &mut Command, input: &str) -> String {
    use std::io::Write;
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.as_bytes())
        .unwrap();
    super::stdout_of_success(cmd, child.wait_with_output().unwrap())
}

/// Every YAML document of `text`, as JSON values (PyYAML's safe loader).
pub fn yaml_documents(text: &str) -> Vec<Value> {
    let json = run_with_input(
        Command::new(venv_bin("python")).args([
            "-c",
            "import json, sys, yaml; json.dump([d for d in yaml.safe_load_all(sys.stdin) if d is not None], sys.stdout)",
        ]),
        text,
    );
    serde_json::from_str(&json).expect("PyYAML's JSON")
}

/// A YAML file of the repository, as one JSON value.
pub fn yaml_file(relative: &str) -> Value {
    let text = std::fs::read_to_string(repo().join(relative)).unwrap();
    let mut docs = yaml_documents(&text);
    assert_eq!(docs.len(), 1, "{relative} holds one document");
    docs.remove(0)
}

/// `kubectl kustomize deploy/kubernetes/<dir>`: the manifests as YAML.
pub fn kustomize(dir: &str) -> String {
    let out = super::tool("kubectl")
        .arg("kustomize")
        .arg(repo().join("deploy/kubernetes").join(dir))
        .output()
        .unwrap_or_else(|e| panic!("kubectl is not installed ({e}): install kubectl"));
    assert!(
        out.status.success(),
        "kubectl kustomize {dir}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// The single object of `kind` among `objects`.
pub fn object<'a>(objects: &'a [Value], kind: &str) -> &'a Value {
    let found: Vec<&Value> = objects.iter().filter(|o| o["kind"] == kind).collect();
    assert_eq!(found.len(), 1, "one {kind} expected");
    found[0]
}

/// A tool from Debian's packages, or a failure naming the fix.
pub fn require_debian_tool(tool: &str, package: &str) {
    let found = Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    assert!(
        found,
        "{tool} is not installed: run `cargo xtask setup` (Debian package {package})"
    );
}

/// Every metric name a Prometheus can query from nodepulse, from its metric catalogue
/// (agent/src/catalog.rs): scraped from `/metrics` (classic histograms with their
/// `_bucket`, `_count` and `_sum` series), or received through the collector, whose
/// OTLP translation turns dots into underscores, appends the unit (`ns` →
/// `_nanoseconds`, `s` → `_seconds`, `By` → `_bytes`, `{thing}` → nothing, `1` on a gauge
/// → `_ratio`) and `_total` on counters, and keeps histograms native (one series).
pub fn exported_metrics() -> BTreeSet<String> {
    use nodepulse::catalog::{self, Kind, SELF_METRICS};
    let translated = |otlp: &str, unit: &str, kind: Kind| {
        let suffix = match unit {
            "ns" => "_nanoseconds",
            "s" => "_seconds",
            "By" => "_bytes",
            "1" if kind == Kind::Gauge => "_ratio",
            _ => "",
        };
        let total = if kind == Kind::Counter { "_total" } else { "" };
        format!("{}{suffix}{total}", catalog::prometheus_label(otlp))
    };
    let mut names: BTreeSet<String> = catalog::prometheus_series_names().into_iter().collect();
    for f in catalog::families() {
        names.insert(translated(&catalog::otlp_name(f.name), f.unit, f.kind));
    }
    for m in SELF_METRICS {
        names.insert(translated(m.otlp, m.unit, m.kind));
    }
    names
}

/// Series every Prometheus has of its own.
pub const PROMETHEUS_BUILTIN: &[&str] = &["up", "ALERTS"];

/// The metric names a PromQL expression selects: identifiers followed by a selector,
/// a range or the end of a term, which are neither functions, keywords nor label names
/// (recording rules, with their colons, are left out).
pub fn metric_names(expr: &str) -> Vec<String> {
    // Keywords, and aggregation operators (followed by `by`/`without`, not `(`).
    const WORDS: &[&str] = &[
        "and",
        "or",
        "unless",
        "offset",
        "bool",
        "le",
        "inf",
        "nan",
        "sum",
        "min",
        "max",
        "avg",
        "group",
        "stddev",
        "stdvar",
        "count",
        "count_values",
        "bottomk",
        "topk",
        "quantile",
    ];
    // Keywords whose parentheses hold label names.
    const GROUPING: &[&str] = &[
        "by",
        "without",
        "on",
        "ignoring",
        "group_left",
        "group_right",
    ];
    let chars: Vec<char> = expr.chars().collect();
    let mut names = Vec::new();
    let (mut i, mut in_string, mut depth_braces) = (0, false, 0);
    while i < chars.len() {
        let c = chars[i];
        if c == '"' {
            in_string = !in_string;
        }
        if in_string {
            i += 1;
            continue;
        }
        match c {
            '{' => depth_braces += 1,
            '}' => depth_braces -= 1,
            _ => {}
        }
        let starts = (c.is_ascii_alphabetic() || c == '_')
            && (i == 0 || !(chars[i - 1].is_ascii_alphanumeric() || "_:$.".contains(chars[i - 1])));
        if !starts || depth_braces > 0 {
            i += 1;
            continue;
        }
        let start = i;
        while i < chars.len() && (chars[i].is_ascii_alphanumeric() || "_:".contains(chars[i])) {
            i += 1;
        }
        let word: String = chars[start..i].iter().collect();
        let next = chars[i..].iter().find(|c| !c.is_whitespace()).copied();
        let in_grouping = {
            // Inside `by (...)`/`on (...)`: the last unclosed '(' follows such a keyword.
            let before: String = chars[..start].iter().collect();
            let open = before.rfind('(');
            let close = before.rfind(')');
            open.is_some_and(|o| close.is_none_or(|c| c < o))
                && before[..open.unwrap()]
                    .trim_end()
                    .rsplit(|c: char| !c.is_ascii_alphanumeric() && c != '_')
                    .next()
                    .is_some_and(|w| GROUPING.contains(&w))
        };
        let is_call = next == Some('(');
        let lower = word.to_ascii_lowercase();
        let is_keyword = WORDS.contains(&lower.as_str()) || GROUPING.contains(&lower.as_str());
        if !is_call && !is_keyword && !in_grouping && !word.contains(':') && !word.starts_with('$')
        {
            names.push(word);
        }
    }
    names
}

/// Checks that every name is exported, listing each unknown one with where it is used.
pub fn assert_exported(uses: &[(String, String)]) {
    let exported = exported_metrics();
    let mut unknown = Vec::new();
    for (name, place) in uses {
        if exported.contains(name) || PROMETHEUS_BUILTIN.contains(&name.as_str()) {
            continue;
        }
        unknown.push(format!("{place}: {name}"));
    }
    assert!(
        unknown.is_empty(),
        "queries of metrics nodepulse does not export:\n{}",
        unknown.join("\n")
    );
}

/// A Kubernetes quantity in Mi: `128Mi` → 128.
pub fn mebibytes(v: &Value) -> u64 {
    let s = v.as_str().unwrap();
    s.strip_suffix("Mi")
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("{s}: write memory quantities in Mi"))
}
