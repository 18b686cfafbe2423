//! Storage network: TCP round-trip times and retransmissions per configured peer port
//! group. Layout and limits shared by the kernel programs and the agent.

/// At most this many port groups; a group's index is its slot in the RTT histograms
/// and the retransmission counters.
pub const MAX_GROUPS: u32 = 32;

/// One entry per TCP port: 0 = not watched, else group index + 1.
pub const PORT_TABLE_ENTRIES: u32 = 65_536;

/// RTT field choices for [`TcpLayout::rtt_shift`].
pub const RTT_SHIFT_RACK: u32 = 0;
/// `srtt_us` holds the smoothed RTT times 8.
pub const RTT_SHIFT_SRTT: u32 = 3;

/// Offsets resolved by the agent from the running kernel's BTF before load. All are
/// from the start of `struct sock`, which `struct tcp_sock` begins with.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TcpLayout {
    /// `sock_common.skc_dport` (network order); `skc_num` (host order) follows it, so
    /// one 32-bit load reads both ports.
    pub sk_ports: u32,
    /// `tcp_sock.rack.rtt_us` (the latest RTT sample, µs) or, where the kernel has no
    /// RACK state, `tcp_sock.srtt_us` (smoothed, µs × 8); see `rtt_shift`.
    pub tp_rtt: u32,
    /// Right shift that turns the field at `tp_rtt` into microseconds.
    pub rtt_shift: u32,
    /// `tcp_sock.snd_una` and `snd_nxt`: equal when no data of ours awaits an ACK.
    pub tp_snd_una: u32,
    pub tp_snd_nxt: u32,
    /// 1 when `tcp_retransmit_skb` carries the transmit result (`int err`, 6.12+) and
    /// fires for failed attempts too; 0 when it fires only for sent retransmissions.
    pub retransmit_has_err: u32,
}
plain_data!(TcpLayout, 6 * 4);

impl TcpLayout {
    pub const UNRESOLVED: Self = Self {
        sk_ports: 0,
        tp_rtt: 0,
        rtt_shift: 0,
        tp_snd_una: 0,
        tp_snd_nxt: 0,
        retransmit_has_err: 0,
    };
}

/// The remote and local port of a 32-bit load at `skc_dport` (the kernel's
/// `skc_portpair`): the remote port is in network order, the local one in host order.
#[inline(always)]
pub fn split_portpair(pair: u32) -> (u16, u16) {
    let remote = u16::from_be((pair & 0xffff) as u16);
    let local = (pair >> 16) as u16;
    (remote, local)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn portpair_splits_remote_network_order_and_local_host_order() {
        // As a little-endian load sees `skc_dport = htons(6789)`, `skc_num = 50000`.
        let bytes = [0x1a, 0x85, 0x50, 0xc3];
        assert_eq!(split_portpair(u32::from_le_bytes(bytes)), (6789, 50000));
    }
}
