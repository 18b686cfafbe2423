//! One subject at a time. The suite is one test executable, so libtest may run a test
//! of one subject (block_probe, sched_probe, regression_live, …) beside a test of
//! another. Tests of the same subject were written to share the machine (each has its
//! own loop device, cgroup or namespace, and their counts are per device or per
//! cgroup); tests of different subjects were not: a scheduler test counts run delay
//! host-wide, the live regression test needs the disks and CPUs quiet while it builds
//! its baseline. A test holds its subject's lock while it runs: tests of its own
//! subject may run beside it, those of any other subject wait.

use std::sync::{Condvar, Mutex, MutexGuard, PoisonError};

/// The subject whose tests are running, and how many of them are.
struct Running {
    subject: Option<&'static str>,
    tests: usize,
}

static RUNNING: Mutex<Running> = Mutex::new(Running {
    subject: None,
    tests: 0,
});
/// Signalled when the last test of a subject ends.
static FREED: Condvar = Condvar::new();

fn running() -> MutexGuard<'static, Running> {
    // Nothing panics while holding it, so even a poisoned lock holds a consistent state.
    RUNNING.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Held by a running test; other subjects' tests wait until the last holder of its
/// subject drops it (also when the test panics).
pub struct SubjectLock;

impl SubjectLock {
    /// Waits until no test of another subject runs. `module` is the caller's
    /// `module_path!()`; the subject is the module under the crate root.
    pub fn take(module: &'static str) -> Self {
        let subject = module.split("::").nth(1).unwrap_or(module);
        let mut running = running();
        while running.subject.is_some_and(|s| s != subject) {
            running = FREED.wait(running).unwrap_or_else(PoisonError::into_inner);
        }
        running.subject = Some(subject);
        running.tests += 1;
        Self
    }
}

impl Drop for SubjectLock {
    fn drop(&mut self) {
        let mut running = running();
        running.tests -= 1;
        if running.tests == 0 {
            running.subject = None;
            FREED.notify_all();
        }
    }
}

/// Holds the calling test's subject lock until the test ends. Root-only tests take it
/// through `require_root!`; every other test starts with this.
#[macro_export]
macro_rules! one_subject_at_a_time {
    () => {
        let _subject = $crate::common::subject::SubjectLock::take(module_path!());
    };
}
