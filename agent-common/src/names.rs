//! Names of maps, programs and globals, shared so neither side spells them twice.

pub const MAP_BLOCK_LATENCY: &str = "BLOCK_LATENCY";
pub const MAP_BLOCK_INFLIGHT: &str = "BLOCK_INFLIGHT";
pub const MAP_PROBE_COUNTERS: &str = "PROBE_COUNTERS";

pub const GLOBAL_REQUEST_LAYOUT: &str = "REQUEST_LAYOUT";
pub const GLOBAL_TP_ISSUE_LAYOUT: &str = "TP_ISSUE_LAYOUT";
pub const GLOBAL_TP_COMPLETE_LAYOUT: &str = "TP_COMPLETE_LAYOUT";

pub const PROG_BLOCK_ISSUE_BTF: &str = "block_rq_issue_btf";
pub const PROG_BLOCK_COMPLETE_BTF: &str = "block_rq_complete_btf";
pub const PROG_BLOCK_ISSUE_RAW: &str = "block_rq_issue_raw";
pub const PROG_BLOCK_COMPLETE_RAW: &str = "block_rq_complete_raw";
pub const PROG_BLOCK_ISSUE_TP: &str = "block_rq_issue_tp";
pub const PROG_BLOCK_COMPLETE_TP: &str = "block_rq_complete_tp";
pub const PROG_BLOCK_ISSUE_FENTRY: &str = "block_rq_issue_fentry";
pub const PROG_BLOCK_COMPLETE_FENTRY: &str = "block_rq_complete_fentry";
pub const PROG_BLOCK_ISSUE_KPROBE: &str = "block_rq_issue_kprobe";
pub const PROG_BLOCK_COMPLETE_KPROBE: &str = "block_rq_complete_kprobe";

/// Capacity of the block latency map: devices × operations.
pub const BLOCK_LATENCY_MAX_SERIES: u32 = 1024;
