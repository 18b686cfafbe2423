//! Names of maps, programs and globals, shared so neither side spells them twice.

pub const MAP_BLOCK_LATENCY: &str = "BLOCK_LATENCY";
pub const MAP_BLOCK_LATENCY_SPILL: &str = "BLOCK_LATENCY_SPILL";
pub const MAP_BLOCK_INFLIGHT: &str = "BLOCK_INFLIGHT";
pub const MAP_BLOCK_SLOT_LOCKS: &str = "BLOCK_SLOT_LOCKS";
pub const MAP_BLOCK_DEPTH: &str = "BLOCK_DEPTH";
pub const MAP_BLOCK_ERRORS: &str = "BLOCK_ERRORS";
pub const MAP_BLOCK_RECONCILE: &str = "BLOCK_RECONCILE";
pub const MAP_PROBE_COUNTERS: &str = "PROBE_COUNTERS";

pub const GLOBAL_REQUEST_LAYOUT: &str = "REQUEST_LAYOUT";
pub const GLOBAL_TP_ISSUE_LAYOUT: &str = "TP_ISSUE_LAYOUT";
pub const GLOBAL_TP_COMPLETE_LAYOUT: &str = "TP_COMPLETE_LAYOUT";

pub const PROG_BLOCK_ISSUE_BTF: &str = "block_rq_issue_btf";
/// Never attached: run by the agent (`BPF_PROG_TEST_RUN`) to release issued requests
/// whose completion the kernel made without running the completion program.
pub const PROG_BLOCK_SWEEP: &str = "block_sweep";
pub const PROG_BLOCK_COMPLETE_BTF: &str = "block_rq_complete_btf";
pub const PROG_BLOCK_ISSUE_RAW: &str = "block_rq_issue_raw";
pub const PROG_BLOCK_COMPLETE_RAW: &str = "block_rq_complete_raw";
/// Up to 5.10, where `block_rq_complete` passes an errno instead of a `blk_status_t`.
pub const PROG_BLOCK_COMPLETE_BTF_ERRNO: &str = "block_rq_complete_btf_errno";
pub const PROG_BLOCK_COMPLETE_RAW_ERRNO: &str = "block_rq_complete_raw_errno";
pub const PROG_BLOCK_ISSUE_TP: &str = "block_rq_issue_tp";
pub const PROG_BLOCK_COMPLETE_TP: &str = "block_rq_complete_tp";
pub const PROG_BLOCK_ISSUE_FENTRY: &str = "block_rq_issue_fentry";
pub const PROG_BLOCK_COMPLETE_FENTRY: &str = "block_rq_complete_fentry";
pub const PROG_BLOCK_ISSUE_KPROBE: &str = "block_rq_issue_kprobe";
pub const PROG_BLOCK_COMPLETE_KPROBE: &str = "block_rq_complete_kprobe";
pub const PROG_BLOCK_INSERT_BTF: &str = "block_rq_insert_btf";
pub const PROG_BLOCK_REQUEUE_BTF: &str = "block_rq_requeue_btf";
pub const PROG_BLOCK_INSERT_RAW: &str = "block_rq_insert_raw";
pub const PROG_BLOCK_REQUEUE_RAW: &str = "block_rq_requeue_raw";
/// The same, for kernels whose request tracepoints pass the queue first (up to 5.10).
pub const PROG_BLOCK_INSERT_BTF_Q: &str = "block_rq_insert_btf_q";
pub const PROG_BLOCK_ISSUE_BTF_Q: &str = "block_rq_issue_btf_q";
pub const PROG_BLOCK_REQUEUE_BTF_Q: &str = "block_rq_requeue_btf_q";
pub const PROG_BLOCK_INSERT_RAW_Q: &str = "block_rq_insert_raw_q";
pub const PROG_BLOCK_ISSUE_RAW_Q: &str = "block_rq_issue_raw_q";
pub const PROG_BLOCK_REQUEUE_RAW_Q: &str = "block_rq_requeue_raw_q";

/// Capacity of the block latency map: devices × operations.
pub const BLOCK_LATENCY_MAX_SERIES: u32 = 1024;

/// Capacity of the preallocated block latency map that takes a series' samples while
/// its entry in the main map cannot be created (the main map allocates on insert, which
/// can fail in the atomic context of a completion). The agent then creates the main
/// entry from userspace, so each spilled series needs a slot only briefly.
pub const BLOCK_LATENCY_SPILL_SERIES: u32 = 32;

pub const MAP_SCHED_LATENCY: &str = "SCHED_LATENCY";
pub const MAP_SPARSE_HIST: &str = "SPARSE_HIST";
pub const MAP_VCPU_PENDING: &str = "VCPU_PENDING";
pub const MAP_VCPU_FLAG: &str = "VCPU_FLAG";
pub const MAP_VCPU_THREADS: &str = "VCPU_THREADS";
pub const MAP_RUNQ_SATURATION: &str = "RUNQ_SATURATION";
pub const MAP_RUNQ_TASKS: &str = "RUNQ_TASKS";

pub const GLOBAL_SCHED_LAYOUT: &str = "SCHED_LAYOUT";
pub const GLOBAL_KVM_EXIT_LAYOUT: &str = "KVM_EXIT_LAYOUT";
pub const GLOBAL_KVM_EXIT_REASON: &str = "KVM_EXIT_REASON";

pub const PROG_SCHED_SWITCH_BTF: &str = "sched_switch_btf";
pub const PROG_SCHED_SWITCH_RAW: &str = "sched_switch_raw";
pub const PROG_RUNQ_NR_RUNNING_BTF: &str = "runq_nr_running_btf";
pub const PROG_RUNQ_NR_RUNNING_RAW: &str = "runq_nr_running_raw";
pub const PROG_RUNQ_TASK_FREE_BTF: &str = "runq_task_free_btf";
pub const PROG_RUNQ_TASK_FREE_RAW: &str = "runq_task_free_raw";

pub const PROG_KVM_USER_EXIT_BTF: &str = "kvm_user_exit_btf";
pub const PROG_KVM_RUN_BTF: &str = "kvm_run_btf";
pub const PROG_KVM_USER_EXIT_RAW: &str = "kvm_user_exit_raw";
pub const PROG_KVM_RUN_RAW: &str = "kvm_run_raw";
pub const PROG_KVM_USER_EXIT_TP: &str = "kvm_user_exit_tp";
pub const PROG_KVM_RUN_TP: &str = "kvm_run_tp";
pub const PROG_KVM_EXIT_TP: &str = "kvm_exit_tp";
pub const PROG_KVM_ENTRY_TP: &str = "kvm_entry_tp";
pub const PROG_KVM_EXIT_BTF: &str = "kvm_exit_btf";
pub const PROG_KVM_EXIT_BTF_REASON: &str = "kvm_exit_btf_reason";
pub const PROG_KVM_EXIT_RAW: &str = "kvm_exit_raw";
pub const PROG_KVM_EXIT_RAW_REASON: &str = "kvm_exit_raw_reason";
pub const PROG_KVM_ENTRY_BTF: &str = "kvm_entry_btf";
pub const PROG_KVM_ENTRY_RAW: &str = "kvm_entry_raw";

pub const MAP_OUTLIERS: &str = "OUTLIERS";
pub const MAP_OUTLIER_MIN: &str = "OUTLIER_MIN";
pub const MAP_BLOCK_THRESHOLDS: &str = "BLOCK_THRESHOLDS";
pub const GLOBAL_OUTLIER_LAYOUT: &str = "OUTLIER_LAYOUT";

pub const MAP_TCP_PORT_GROUPS: &str = "TCP_PORT_GROUPS";
pub const MAP_TCP_RTT: &str = "TCP_RTT";
pub const MAP_TCP_RETRANSMITS: &str = "TCP_RETRANSMITS";
pub const GLOBAL_TCP_LAYOUT: &str = "TCP_LAYOUT";
pub const PROG_TCP_PROBE_BTF: &str = "tcp_probe_btf";
pub const PROG_TCP_PROBE_RAW: &str = "tcp_probe_raw";
pub const PROG_TCP_RETRANSMIT_BTF: &str = "tcp_retransmit_btf";
pub const PROG_TCP_RETRANSMIT_RAW: &str = "tcp_retransmit_raw";
