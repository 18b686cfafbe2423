//! Storage network: TCP round-trip time and retransmissions per peer port group.
//!
//! Hooks (checked against Linux 6.1 – 6.18):
//! - `tcp_probe(const struct sock *sk, const struct sk_buff *skb)`, fired at the top of
//!   `tcp_rcv_established()` for every segment an established socket receives, before
//!   the segment is processed.
//! - `tcp_retransmit_skb(const struct sock *sk, const struct sk_buff *skb, int err)`
//!   (6.12+: fired by `tcp_retransmit_skb()` after every attempt, `err` its result;
//!   before: `(sk, skb)`, fired by `__tcp_retransmit_skb()` only when the segment went
//!   out). `TcpLayout::retransmit_has_err` says which.
//!
//! Per packet, unwatched traffic costs one 32-bit load (both ports) and at most two
//! inlined array reads (the port → group table, remote port first, then local port).
//! A watched segment is a sample only while the socket has data awaiting an ACK
//! (`snd_una != snd_nxt`): those are the segments that feed the RTT estimator. A pure
//! receiver's RTT state only dates from its handshake and would drown the senders'.
//! The sample goes to its group's dense per-CPU histogram: an inlined array lookup.
//!
//! The RTT is `tcp_sock.rack.rtt_us`: the raw RTT of the most recently sent segment
//! known delivered, as RACK measured it when its ACK arrived (not smoothed, Karn's
//! rule applied to retransmitted segments). Read at the next received segment, so
//! each value is the previous ACK's sample. Kernels without it fall back to
//! `srtt_us >> 3`, the smoothed estimator bcc's tcprtt reports.

use agent_common::{
    hist::Histogram,
    tcp::{MAX_GROUPS, PORT_TABLE_ENTRIES, TcpLayout, split_portpair},
};
use aya_ebpf::{
    helpers::generated::bpf_skc_to_tcp_sock,
    macros::{btf_tracepoint, map, raw_tracepoint},
    maps::{Array, PerCpuArray},
    programs::{BtfTracePointContext, RawTracePointContext},
};

use crate::shared::{DirectRead, KernelRead, ProbeRead, add_sample, global};

/// Port → group index + 1 (0: not watched), filled by the agent before attach.
#[map(name = "TCP_PORT_GROUPS")]
static TCP_PORT_GROUPS: Array<u8> = Array::with_max_entries(PORT_TABLE_ENTRIES, 0);

/// RTT histogram per group, per CPU: few, fixed series, so a dense histogram each
/// (an inlined array lookup rather than a hash-map lookup per sample). The agent sizes
/// it to the configured groups at load.
#[map(name = "TCP_RTT")]
static TCP_RTT: PerCpuArray<Histogram> = PerCpuArray::with_max_entries(MAX_GROUPS, 0);

/// Retransmissions per group, per CPU.
#[map(name = "TCP_RETRANSMITS")]
static TCP_RETRANSMITS: PerCpuArray<u64> = PerCpuArray::with_max_entries(MAX_GROUPS, 0);

/// Offsets resolved by the agent from the running kernel's BTF before load.
#[unsafe(no_mangle)]
static TCP_LAYOUT: TcpLayout = TcpLayout::UNRESOLVED;

#[inline(always)]
fn layout() -> TcpLayout {
    global(&TCP_LAYOUT)
}

/// The group of a connection: its remote port's, else its local port's.
#[inline(always)]
fn group<R: KernelRead>(sk: u64, l: &TcpLayout) -> Option<u32> {
    let (remote, local) = split_portpair(R::read::<u32>(sk, l.sk_ports)?);
    let of = |port: u16| {
        TCP_PORT_GROUPS
            .get(port as u32)
            .copied()
            .filter(|&g| g != 0)
    };
    let g = of(remote).or_else(|| of(local))?;
    Some(g as u32 - 1)
}

/// `tp` is where the `tcp_sock` fields are read from (the socket itself).
#[inline(always)]
fn on_segment<R: KernelRead>(sk: u64, tp: impl FnOnce() -> Option<u64>) {
    let l = layout();
    let Some(group) = group::<R>(sk, &l) else {
        return;
    };
    let Some(tp) = tp() else {
        return;
    };
    let (Some(una), Some(nxt)) = (
        R::read::<u32>(tp, l.tp_snd_una),
        R::read::<u32>(tp, l.tp_snd_nxt),
    ) else {
        return;
    };
    if una == nxt {
        return; // nothing of ours in flight: no RTT being measured
    }
    let Some(rtt) = R::read::<u32>(tp, l.tp_rtt) else {
        return;
    };
    let us = rtt >> (l.rtt_shift & 7);
    if us == 0 {
        return; // no sample yet on this connection
    }
    if let Some(h) = TCP_RTT.get_ptr_mut(group) {
        // SAFETY: this CPU's element of a per-CPU array, valid while the program runs
        // and written by no other CPU.
        add_sample(unsafe { &mut *h }, us as u64 * 1000);
    }
}

/// `err` reads the third argument; it is called only where the kernel passes one (the
/// verifier rejects reading an argument a tracepoint does not have, and skips the
/// branch the read-only layout rules out).
#[inline(always)]
fn on_retransmit<R: KernelRead>(sk: u64, err: impl FnOnce() -> i32) {
    let l = layout();
    if l.retransmit_has_err != 0 && err() != 0 {
        return; // not sent (e.g. the original still in a queue below TCP)
    }
    if let Some(group) = group::<R>(sk, &l)
        && let Some(c) = TCP_RETRANSMITS.get_ptr_mut(group)
    {
        // SAFETY: this CPU's element of a per-CPU array (valid while the program
        // runs): no other CPU writes it, so a plain add is enough.
        unsafe { *c += 1 };
    }
}

#[btf_tracepoint(function = "tcp_probe")]
pub fn tcp_probe_btf(ctx: BtfTracePointContext) -> i32 {
    let sk: *mut core::ffi::c_void = ctx.arg(0);
    // The tcp_sock fields lie beyond `struct sock`: the verifier allows direct loads
    // there only through the tcp_sock pointer this helper returns (NULL if not TCP).
    on_segment::<DirectRead>(sk as u64, || {
        // SAFETY: the helper checks its argument (any socket pointer, or NULL) and
        // returns NULL when it is not a TCP socket.
        let tp = unsafe { bpf_skc_to_tcp_sock(sk) };
        (!tp.is_null()).then_some(tp as u64)
    });
    0
}

#[raw_tracepoint(tracepoint = "tcp_probe")]
pub fn tcp_probe_raw(ctx: RawTracePointContext) -> i32 {
    let sk: u64 = ctx.arg(0);
    on_segment::<ProbeRead>(sk, || Some(sk));
    0
}

#[btf_tracepoint(function = "tcp_retransmit_skb")]
pub fn tcp_retransmit_btf(ctx: BtfTracePointContext) -> i32 {
    let sk: *const u8 = ctx.arg(0);
    on_retransmit::<DirectRead>(sk as u64, || ctx.arg::<i64>(2) as i32);
    0
}

#[raw_tracepoint(tracepoint = "tcp_retransmit_skb")]
pub fn tcp_retransmit_raw(ctx: RawTracePointContext) -> i32 {
    let sk: u64 = ctx.arg(0);
    on_retransmit::<ProbeRead>(sk, || ctx.arg::<u64>(2) as i32);
    0
}
