//! Storage network (kernel side: `agent-ebpf/src/tcp.rs`): TCP round-trip time and
//! retransmissions per configured peer port group.

mod config;
mod registry;
pub mod groups;

use agent_common::{
    hist::Histogram,
    names,
    tcp::{MAX_GROUPS, RTT_SHIFT_RACK, RTT_SHIFT_SRTT, TcpLayout},
};
use aya::{
    Ebpf, EbpfLoader,
    maps::{Array, MapData, PerCpuArray},
};

use super::{
    Layouts, Probe, ReadContext, Reading,
    attach::{AttachKind, Attached, Hook, ProgramSpec, Variant, attach_first},
};
use crate::{
    aggregate::{ExpHistogram, SeriesKey, TrackedCounter},
    kernel::btf::Btf,
};
pub use config::TcpConfig as Config;
pub use registry::PROBE_FAMILY;
use groups::{PortGroup, port_table};

pub const NAME: &str = "tcp";
pub const FAMILY_RTT: &str = "net.tcp.rtt";
pub const FAMILY_RETRANSMITS: &str = "net.tcp.retransmits";
pub const LABEL_GROUP: &str = "peer.group";

/// Offsets from BTF (an error rules the probe out with its reason), and how many
/// groups the RTT map must hold.
pub struct TcpLayouts {
    layout: Result<TcpLayout, String>,
    groups: u32,
}

impl TcpLayouts {
    pub fn resolve(btf: Option<&Btf>, groups: &[PortGroup]) -> Self {
        let layout = match btf {
            None => Err("kernel BTF (/sys/kernel/btf/vmlinux) is missing".into()),
            Some(btf) => layout(btf),
        };
        let groups = (groups.len() as u32).clamp(1, MAX_GROUPS);
        Self { layout, groups }
    }
}

impl Layouts for TcpLayouts {
    fn apply<'a>(&'a self, loader: &mut EbpfLoader<'a>) {
        if let Ok(layout) = &self.layout {
            loader.override_global(names::GLOBAL_TCP_LAYOUT, layout, true);
        }
        // 4 KiB per group per CPU: only as many as are configured.
        loader.map_max_entries(names::MAP_TCP_RTT, self.groups);
    }

    fn variants(&self, only: Option<AttachKind>) -> Vec<Variant> {
        let missing = self.layout.as_ref().err().cloned();
        let spec = |program, hook| ProgramSpec { program, hook };
        [
            Variant {
                kind: AttachKind::TpBtf,
                programs: vec![
                    spec(
                        names::PROG_TCP_RETRANSMIT_BTF,
                        Hook::TpBtf("tcp_retransmit_skb"),
                    ),
                    spec(names::PROG_TCP_PROBE_BTF, Hook::TpBtf("tcp_probe")),
                ],
                unavailable: missing.clone(),
            },
            Variant {
                kind: AttachKind::RawTracepoint,
                programs: vec![
                    spec(
                        names::PROG_TCP_RETRANSMIT_RAW,
                        Hook::Raw("tcp_retransmit_skb"),
                    ),
                    spec(names::PROG_TCP_PROBE_RAW, Hook::Raw("tcp_probe")),
                ],
                unavailable: missing,
            },
            Variant {
                kind: AttachKind::Tracepoint,
                programs: vec![],
                unavailable: Some(
                    "not offered: a classic tracepoint costs ~300 ns per event here, too \
                     much on a per-packet path; tp_btf and raw tracepoints cover kernels \
                     with BTF"
                        .into(),
                ),
            },
        ]
        .into_iter()
        .filter(|v| only.is_none_or(|k| k == v.kind))
        .collect()
    }
}

fn layout(btf: &Btf) -> Result<TcpLayout, String> {
    let off = |s: &str, m: &str| btf.member_offset(s, m).map_err(|e| e.to_string());
    let sk_ports = off("sock", "__sk_common.skc_dport")?;
    if off("sock", "__sk_common.skc_num")? != sk_ports + 2 {
        return Err("sock_common.skc_num does not follow skc_dport (no skc_portpair)".into());
    }
    // The latest raw sample where RACK keeps one (4.13+), else the smoothed estimate.
    let (tp_rtt, rtt_shift) = match off("tcp_sock", "rack.rtt_us") {
        Ok(o) => (o, RTT_SHIFT_RACK),
        Err(_) => (off("tcp_sock", "srtt_us")?, RTT_SHIFT_SRTT),
    };
    let retransmit_has_err = match btf.tracepoint_args("tcp_retransmit_skb") {
        Some(3) => 1,
        Some(2) => 0,
        Some(n) => {
            return Err(format!(
                "tcp_retransmit_skb has {n} arguments; expected 2 or 3"
            ));
        }
        None => return Err("the kernel has no tcp_retransmit_skb tracepoint in BTF".into()),
    };
    if btf.tracepoint_args("tcp_probe").is_none() {
        return Err("the kernel has no tcp_probe tracepoint in BTF".into());
    }
    Ok(TcpLayout {
        sk_ports,
        tp_rtt,
        rtt_shift,
        tp_snd_una: off("tcp_sock", "snd_una")?,
        tp_snd_nxt: off("tcp_sock", "snd_nxt")?,
        retransmit_has_err,
    })
}

pub struct TcpProbe {
    attached: Attached,
    groups: Vec<String>,
    rtt: Option<PerCpuArray<MapData, Histogram>>,
    retransmits: Option<PerCpuArray<MapData, u64>>,
}

impl TcpProbe {
    /// Fills the port table, then attaches: no segment is seen unclassified.
    pub fn attach(
        ebpf: &mut Ebpf,
        btf: Option<&aya::Btf>,
        layouts: &TcpLayouts,
        only: Option<AttachKind>,
        groups: &[PortGroup],
    ) -> Self {
        let names = groups.iter().map(|g| g.name.trim().to_owned()).collect();
        let attached = match fill_port_table(ebpf, groups) {
            Ok(()) => attach_first(ebpf, btf, &layouts.variants(only)),
            Err(error) => Attached {
                kind: None,
                programs: Vec::new(),
                failures: vec![super::Attempt {
                    kind: only.unwrap_or(AttachKind::TpBtf),
                    error,
                }],
            },
        };
        let up = attached.kind.is_some();
        Self {
            rtt: take_per_cpu(ebpf, up, names::MAP_TCP_RTT),
            retransmits: take_per_cpu(ebpf, up, names::MAP_TCP_RETRANSMITS),
            attached,
            groups: names,
        }
    }
}

fn take_per_cpu<T: aya::Pod>(
    ebpf: &mut Ebpf,
    up: bool,
    name: &str,
) -> Option<PerCpuArray<MapData, T>> {
    up.then(|| ebpf.take_map(name))
        .flatten()
        .and_then(|m| PerCpuArray::try_from(m).ok())
}

fn fill_port_table(ebpf: &mut Ebpf, groups: &[PortGroup]) -> Result<(), String> {
    let table = port_table(groups)?;
    let map = ebpf
        .map_mut(names::MAP_TCP_PORT_GROUPS)
        .ok_or("map TCP_PORT_GROUPS is missing from the eBPF object (build bug)")?;
    let mut map: Array<&mut MapData, u8> = Array::try_from(map).map_err(|e| e.to_string())?;
    for (port, &group) in table.iter().enumerate().filter(|(_, g)| **g != 0) {
        map.set(port as u32, group, 0)
            .map_err(|e| format!("filling {}: {e}", names::MAP_TCP_PORT_GROUPS))?;
    }
    Ok(())
}

impl Probe for TcpProbe {
    fn name(&self) -> &'static str {
        NAME
    }

    fn attached(&self) -> &Attached {
        &self.attached
    }

    fn attached_mut(&mut self) -> &mut Attached {
        &mut self.attached
    }

    /// Groups that had samples since the agent started.
    fn read(&mut self, _cx: &mut ReadContext<'_>, out: &mut Vec<Reading>) -> Result<(), String> {
        let Some(map) = &self.rtt else {
            return Ok(());
        };
        for (i, name) in self.groups.iter().enumerate() {
            let per_cpu = map
                .get(&(i as u32), 0)
                .map_err(|e| format!("reading {}: {e}", names::MAP_TCP_RTT))?;
            let hist = ExpHistogram::from_per_cpu(per_cpu.iter());
            if hist.count() > 0 {
                out.push(Reading::plain(
                    SeriesKey::new(FAMILY_RTT, [(LABEL_GROUP, name.clone())]),
                    hist,
                ));
            }
        }
        Ok(())
    }

    /// Cumulative retransmissions of every group, summed over CPUs.
    fn read_counters(
        &mut self,
        _cx: &mut ReadContext<'_>,
        out: &mut Vec<TrackedCounter>,
    ) -> Result<(), String> {
        let Some(map) = &self.retransmits else {
            return Ok(());
        };
        for (i, name) in self.groups.iter().enumerate() {
            let per_cpu = map
                .get(&(i as u32), 0)
                .map_err(|e| format!("reading {}: {e}", names::MAP_TCP_RETRANSMITS))?;
            out.push(TrackedCounter::plain(
                SeriesKey::new(FAMILY_RETRANSMITS, [(LABEL_GROUP, name.clone())]),
                per_cpu.iter().sum(),
            ));
        }
        Ok(())
    }
}

const _: () = assert!(MAX_GROUPS <= u8::MAX as u32);

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernel::btf::VMLINUX_BTF;

    #[test]
    fn resolves_the_running_kernels_layout() {
        if !std::path::Path::new(VMLINUX_BTF).exists() {
            eprintln!("SKIPPED: {VMLINUX_BTF} absent on this machine");
            return;
        }
        let btf = Btf::from_sys_fs().unwrap();
        let l = layout(&btf).unwrap();
        // The ports sit in sock_common, at the start of struct sock.
        assert!(l.sk_ports > 0 && l.sk_ports < 64, "{l:?}");
        // tcp_sock fields lie past struct sock's (hundreds of bytes).
        assert!(
            l.tp_snd_una > 500 && l.tp_snd_nxt > 500 && l.tp_rtt > 500,
            "{l:?}"
        );
        assert_eq!(l.rtt_shift, RTT_SHIFT_RACK, "RACK state exists since 4.13");
        let has_err = btf.tracepoint_args("tcp_retransmit_skb") == Some(3);
        assert_eq!(l.retransmit_has_err, u32::from(has_err));
    }
}
