//! The switch program's memory of each task (`RUNQ_TASKS`, by thread id): emptied when
//! the programs attach afresh or detach, and swept of the tasks whose free the kernel
//! did not run the program for.

use std::{
    borrow::BorrowMut,
    time::{Duration, Instant},
};

use agent_common::sched::RunqTask;
use aya::maps::{HashMap, MapData};

use crate::attribution::Attribution;

/// How often the map is swept: skipped frees are rare, and a sweep costs a lookup per
/// remembered task.
pub const SWEEP_EVERY: Duration = Duration::from_secs(60);

pub struct TaskMap {
    map: HashMap<MapData, u32, RunqTask>,
    swept: Instant,
}

impl TaskMap {
    pub fn new(map: HashMap<MapData, u32, RunqTask>) -> Self {
        Self {
            map,
            swept: Instant::now(),
        }
    }

    pub fn get(&self, tid: u32) -> Option<RunqTask> {
        self.map.get(&tid, 0).ok()
    }

    pub fn insert(&mut self, tid: u32, task: RunqTask) -> bool {
        self.map.insert(tid, task, 0).is_ok()
    }

    pub fn forget_all(&mut self) {
        forget_all(&mut self.map);
    }

    /// [`Self::sweep`] once [`SWEEP_EVERY`] has passed since the last one.
    pub fn sweep_when_due(&mut self, attribution: &mut Attribution) {
        if self.swept.elapsed() >= SWEEP_EVERY {
            self.sweep(attribution);
        }
    }

    /// Deletes the entries of threads that no longer exist: the kernel frees a task
    /// without running the free program now and then (see architecture.md), and the
    /// map, which never evicts, must not fill with the dead. Returns how many went;
    /// `None` when the host's threads cannot be looked up (nothing is deleted then).
    pub fn sweep(&mut self, attribution: &mut Attribution) -> Option<usize> {
        self.swept = Instant::now();
        let listed: Vec<(u32, u64)> = self
            .map
            .iter()
            .filter_map(Result::ok)
            .map(|(tid, task)| (tid, task.start_time))
            .collect();
        let mut gone = 0;
        for (tid, start_time) in listed {
            if attribution.thread_exists(tid)? {
                continue;
            }
            // Unless a new task took the id since it was listed.
            if self.get(tid).is_some_and(|t| t.start_time == start_time)
                && self.map.remove(&tid).is_ok()
            {
                gone += 1;
            }
        }
        if gone > 0 {
            tracing::debug!(gone, "run-queue task map: entries of exited threads swept");
        }
        Some(gone)
    }
}

/// Empties a task map: run while none of the programs runs, so nothing is inserted
/// meanwhile.
pub fn forget_all<T: BorrowMut<MapData>>(tasks: &mut HashMap<T, u32, RunqTask>) {
    let tids: Vec<u32> = tasks.keys().filter_map(Result::ok).collect();
    for tid in tids {
        let _ = tasks.remove(&tid);
    }
}
