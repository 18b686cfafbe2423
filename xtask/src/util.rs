//! Running external commands visibly, and step-by-step progress with timings.

use std::ffi::OsStr;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

/// The workspace root: xtask lives one level below it.
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask has a parent directory")
        .to_path_buf()
}

/// Where cargo puts build output (honours `CARGO_TARGET_DIR`).
pub fn target_dir() -> PathBuf {
    match std::env::var_os("CARGO_TARGET_DIR") {
        Some(dir) => workspace_root().join(dir),
        None => workspace_root().join("target"),
    }
}

/// `cargo` with the workspace root as working directory, so tasks behave the same
/// from any subdirectory, and without the package variables `cargo run` gave the xtask
/// (`CARGO_PKG_NAME=xtask`, `CARGO_MANIFEST_DIR`, ...): build scripts that watch them
/// (ring's) saw them change, so `cargo xtask soak record` rebuilt the whole release
/// tree a plain `cargo build --release` had just built (15 minutes on the shared VM).
pub fn cargo() -> Command {
    let mut cmd = Command::new("cargo");
    cmd.current_dir(workspace_root());
    for (key, _) in std::env::vars_os() {
        let key = key.to_string_lossy();
        if key.starts_with("CARGO_PKG_") || key.starts_with("CARGO_MANIFEST_") {
            cmd.env_remove(&*key);
        }
    }
    cmd
}

/// Runs an example of the agent crate in release mode with `args`.
pub fn run_agent_example(example: &str, args: &[String]) -> Result<()> {
    let mut cmd = cargo();
    cmd.args([
        "run",
        "--release",
        "--quiet",
        "-p",
        "agent",
        "--example",
        example,
        "--",
    ])
    .args(args);
    run(&mut cmd)
}

pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// Prints `$ cmd args`, runs it with inherited stdio and fails with the command line
/// and its exit status unless it succeeds.
pub fn run(cmd: &mut Command) -> Result<()> {
    let line = display(cmd);
    println!("$ {line}");
    let status = cmd
        .status()
        .with_context(|| format!("could not start `{line}`"))?;
    if !status.success() {
        bail!("`{line}` failed ({status})");
    }
    Ok(())
}

/// Runs a probe command silently: true if it started and exited successfully.
pub fn succeeds(cmd: &mut Command) -> bool {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Runs a probe command silently and returns its stdout if it succeeded.
pub fn stdout_of(cmd: &mut Command) -> Option<String> {
    let out = cmd
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The command as a shell line: explicitly set variables first, arguments quoted
/// where needed. A variable that extends the inherited value is shown as `...:$VAR`
/// so long PATHs stay readable.
pub fn display(cmd: &Command) -> String {
    let mut parts = Vec::new();
    for (key, value) in cmd.get_envs() {
        let Some(value) = value else { continue };
        let (key, value) = (key.to_string_lossy(), value.to_string_lossy());
        let shown = match std::env::var(&*key) {
            Ok(old) if !old.is_empty() && value.len() > old.len() && value.ends_with(&old) => {
                format!("{}${key}", &value[..value.len() - old.len()])
            }
            _ => value.into_owned(),
        };
        parts.push(format!("{key}={}", quote(&shown)));
    }
    parts.push(quote(&cmd.get_program().to_string_lossy()));
    parts.extend(cmd.get_args().map(|a| quote(&a.to_string_lossy())));
    parts.join(" ")
}

/// Quotes one word for a POSIX shell, only when it needs it.
pub fn quote(word: &str) -> String {
    let plain = |c: char| c.is_ascii_alphanumeric() || "_-./=:,+@%$".contains(c);
    if !word.is_empty() && word.chars().all(plain) {
        word.to_string()
    } else {
        format!("'{}'", word.replace('\'', r"'\''"))
    }
}

/// Quotes and joins arguments for display.
pub fn quote_all<S: AsRef<OsStr>>(args: &[S]) -> String {
    args.iter()
        .map(|a| quote(&a.as_ref().to_string_lossy()))
        .collect::<Vec<_>>()
        .join(" ")
}

/// `path` relative to the current directory when it is below it, for messages the
/// user may copy.
pub fn relative_to_cwd(path: &Path) -> PathBuf {
    std::env::current_dir()
        .ok()
        .and_then(|cwd| path.strip_prefix(cwd).ok().map(Path::to_path_buf))
        .unwrap_or_else(|| path.to_path_buf())
}

/// Human-sized durations: `12 ms`, `3.4 s`, `5 min 07 s`.
pub fn fmt_duration(d: Duration) -> String {
    let secs = d.as_secs_f64();
    if secs < 1.0 {
        format!("{} ms", d.as_millis())
    } else if secs < 60.0 {
        format!("{secs:.1} s")
    } else {
        format!("{} min {:02} s", d.as_secs() / 60, d.as_secs() % 60)
    }
}

/// Numbered steps, printed as `[k/N] what ... result`.
pub struct Progress {
    total: usize,
    current: usize,
}

impl Progress {
    pub fn new(total: usize) -> Self {
        Self { total, current: 0 }
    }

    /// Starts the next step: prints `[k/N] what ... ` and leaves the line open for
    /// the result (or for [`Step::start_line`] when output follows).
    pub fn step(&mut self, what: &str) -> Step {
        self.current += 1;
        let label = format!("[{}/{}] {what}", self.current, self.total);
        print!("{label} ... ");
        let _ = std::io::stdout().flush();
        Step {
            label,
            start: Instant::now(),
        }
    }
}

pub struct Step {
    label: String,
    start: Instant,
}

impl Step {
    pub fn elapsed(&self) -> Duration {
        self.start.elapsed()
    }

    /// Closes the open line with `status`, before the step prints output of its own.
    pub fn start_line(&self, status: &str) {
        println!("{status}");
    }

    /// Closes the open line: nothing had to be done.
    pub fn present(self) {
        println!("ok (already present, {})", fmt_duration(self.elapsed()));
    }

    /// Prints the step's label again with its outcome, after output in between.
    pub fn finish(self, outcome: &str) -> Duration {
        let elapsed = self.elapsed();
        println!("{} ... {outcome} in {}", self.label, fmt_duration(elapsed));
        elapsed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quotes_only_when_needed() {
        assert_eq!(quote("--features"), "--features");
        assert_eq!(
            quote("llvm-22,llvm-link-static"),
            "llvm-22,llvm-link-static"
        );
        assert_eq!(quote("-f=${Status}"), "'-f=${Status}'");
        assert_eq!(quote("two words"), "'two words'");
        assert_eq!(quote("it's"), r"'it'\''s'");
        assert_eq!(quote(""), "''");
    }

    #[test]
    fn shows_extended_variables_relative_to_inherited_value() {
        let old = std::env::var("PATH").unwrap_or_default();
        let mut cmd = Command::new("cargo");
        cmd.env("PATH", format!("/opt/x/bin:{old}"))
            .env("LLVM_PREFIX", "/usr/lib/llvm-22")
            .args(["install", "a b"]);
        let shown = display(&cmd);
        assert!(shown.contains("LLVM_PREFIX=/usr/lib/llvm-22"), "{shown}");
        assert!(shown.ends_with("cargo install 'a b'"), "{shown}");
        if !old.is_empty() {
            assert!(shown.contains("PATH=/opt/x/bin:$PATH"), "{shown}");
        }
    }

    #[test]
    fn durations_are_human_sized() {
        assert_eq!(fmt_duration(Duration::from_millis(12)), "12 ms");
        assert_eq!(fmt_duration(Duration::from_millis(3_240)), "3.2 s");
        assert_eq!(fmt_duration(Duration::from_secs(307)), "5 min 07 s");
    }
}
