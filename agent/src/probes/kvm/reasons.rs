//! Names for KVM exit reasons: `KVM_EXIT_*` (exits to the VMM, include/uapi/linux/kvm.h),
//! VMX basic exit reasons (Intel SDM vol. 3, appendix C) and SVM exit codes (AMD APM
//! vol. 2, appendix C). Unknown values keep their number, so nothing is hidden.

/// ISA values of the `kvm_exit` tracepoint.
pub use agent_common::kvm::{ISA_SVM, ISA_VMX};

const USERSPACE: [&str; 40] = [
    "unknown",
    "exception",
    "io",
    "hypercall",
    "debug",
    "hlt",
    "mmio",
    "irq_window_open",
    "shutdown",
    "fail_entry",
    "intr",
    "set_tpr",
    "tpr_access",
    "s390_sieic",
    "s390_reset",
    "dcr",
    "nmi",
    "internal_error",
    "osi",
    "papr_hcall",
    "s390_ucontrol",
    "watchdog",
    "s390_tsch",
    "epr",
    "system_event",
    "s390_stsi",
    "ioapic_eoi",
    "hyperv",
    "arm_nisv",
    "x86_rdmsr",
    "x86_wrmsr",
    "dirty_ring_full",
    "ap_reset_hold",
    "x86_bus_lock",
    "xen",
    "riscv_sbi",
    "riscv_csr",
    "notify",
    "loongarch_iocsr",
    "memory_fault",
];

/// `KVM_EXIT_*` reason of an exit to userspace.
pub fn userspace(reason: u32) -> String {
    USERSPACE
        .get(reason as usize)
        .map_or_else(|| format!("exit_{reason}"), |s| (*s).to_owned())
}

const VMX: [(u32, &str); 62] = [
    (0, "exception_nmi"),
    (1, "external_interrupt"),
    (2, "triple_fault"),
    (3, "init_signal"),
    (4, "sipi_signal"),
    (7, "interrupt_window"),
    (8, "nmi_window"),
    (9, "task_switch"),
    (10, "cpuid"),
    (12, "hlt"),
    (13, "invd"),
    (14, "invlpg"),
    (15, "rdpmc"),
    (16, "rdtsc"),
    (18, "vmcall"),
    (19, "vmclear"),
    (20, "vmlaunch"),
    (21, "vmptrld"),
    (22, "vmptrst"),
    (23, "vmread"),
    (24, "vmresume"),
    (25, "vmwrite"),
    (26, "vmoff"),
    (27, "vmon"),
    (28, "cr_access"),
    (29, "dr_access"),
    (30, "io_instruction"),
    (31, "msr_read"),
    (32, "msr_write"),
    (33, "invalid_state"),
    (34, "msr_load_fail"),
    (36, "mwait"),
    (37, "monitor_trap_flag"),
    (39, "monitor"),
    (40, "pause"),
    (41, "mce_during_vmentry"),
    (43, "tpr_below_threshold"),
    (44, "apic_access"),
    (45, "eoi_induced"),
    (46, "gdtr_idtr"),
    (47, "ldtr_tr"),
    (48, "ept_violation"),
    (49, "ept_misconfig"),
    (50, "invept"),
    (51, "rdtscp"),
    (52, "preemption_timer"),
    (53, "invvpid"),
    (54, "wbinvd"),
    (55, "xsetbv"),
    (56, "apic_write"),
    (57, "rdrand"),
    (58, "invpcid"),
    (59, "vmfunc"),
    (60, "encls"),
    (61, "rdseed"),
    (62, "pml_full"),
    (63, "xsaves"),
    (64, "xrstors"),
    (67, "umwait"),
    (68, "tpause"),
    (74, "bus_lock"),
    (75, "notify"),
];

const SVM: [(u32, &str); 47] = [
    (0x060, "intr"),
    (0x061, "nmi"),
    (0x062, "smi"),
    (0x063, "init"),
    (0x064, "vintr"),
    (0x065, "cr0_sel_write"),
    (0x066, "idtr_read"),
    (0x067, "gdtr_read"),
    (0x068, "ldtr_read"),
    (0x069, "tr_read"),
    (0x06a, "idtr_write"),
    (0x06b, "gdtr_write"),
    (0x06c, "ldtr_write"),
    (0x06d, "tr_write"),
    (0x06e, "rdtsc"),
    (0x06f, "rdpmc"),
    (0x070, "pushf"),
    (0x071, "popf"),
    (0x072, "cpuid"),
    (0x073, "rsm"),
    (0x074, "iret"),
    (0x075, "swint"),
    (0x076, "invd"),
    (0x077, "pause"),
    (0x078, "hlt"),
    (0x079, "invlpg"),
    (0x07a, "invlpga"),
    (0x07b, "ioio"),
    (0x07c, "msr"),
    (0x07d, "task_switch"),
    (0x07e, "ferr_freeze"),
    (0x07f, "shutdown"),
    (0x080, "vmrun"),
    (0x081, "vmmcall"),
    (0x082, "vmload"),
    (0x083, "vmsave"),
    (0x087, "rdtscp"),
    (0x089, "wbinvd"),
    (0x08a, "monitor"),
    (0x08b, "mwait"),
    (0x08d, "xsetbv"),
    (0x08f, "efer_write_trap"),
    (0x0a0, "invpcid"),
    (0x0a5, "bus_lock"),
    (0x400, "npf"),
    (0x401, "avic_incomplete_ipi"),
    (0x402, "avic_unaccelerated_access"),
];

/// Name of an in-kernel exit, from the `kvm_exit` record's reason and ISA.
pub fn in_kernel(isa: u32, reason: u32) -> String {
    let find = |table: &[(u32, &'static str)]| {
        table
            .iter()
            .find(|&&(r, _)| r == reason)
            .map(|&(_, n)| n.to_owned())
    };
    let name = match isa {
        // VMX: bits 15:0 are the basic reason; the rest are flags.
        ISA_VMX => {
            let basic = reason & 0xffff;
            VMX.iter()
                .find(|&&(r, _)| r == basic)
                .map(|&(_, n)| n.to_owned())
        }
        ISA_SVM => match reason {
            0x000..=0x00f => Some(format!("read_cr{reason}")),
            0x010..=0x01f => Some(format!("write_cr{}", reason - 0x10)),
            0x020..=0x02f => Some(format!("read_dr{}", reason - 0x20)),
            0x030..=0x03f => Some(format!("write_dr{}", reason - 0x30)),
            0x040..=0x05f => Some(format!("exception_{}", reason - 0x40)),
            0x090..=0x09f => Some(format!("cr{}_write_trap", reason - 0x90)),
            _ => find(&SVM),
        },
        _ => None,
    };
    name.unwrap_or_else(|| format!("exit_{reason}"))
}

pub fn isa_name(isa: u32) -> &'static str {
    match isa {
        ISA_VMX => "vmx",
        ISA_SVM => "svm",
        _ => "unknown",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn userspace_reasons() {
        assert_eq!(userspace(2), "io");
        assert_eq!(userspace(5), "hlt");
        assert_eq!(userspace(6), "mmio");
        assert_eq!(userspace(29), "x86_rdmsr");
        assert_eq!(userspace(39), "memory_fault");
        assert_eq!(userspace(1000), "exit_1000");
    }

    #[test]
    fn intel_reasons() {
        assert_eq!(in_kernel(ISA_VMX, 30), "io_instruction");
        assert_eq!(in_kernel(ISA_VMX, 48), "ept_violation");
        assert_eq!(in_kernel(ISA_VMX, 12), "hlt");
        // Entry-failure flag (bit 31) set: the basic reason still decodes.
        assert_eq!(in_kernel(ISA_VMX, 0x8000_0021), "invalid_state");
        assert_eq!(in_kernel(ISA_VMX, 5), "exit_5");
    }

    #[test]
    fn amd_reasons() {
        assert_eq!(in_kernel(ISA_SVM, 0x07b), "ioio");
        assert_eq!(in_kernel(ISA_SVM, 0x400), "npf");
        assert_eq!(in_kernel(ISA_SVM, 0x078), "hlt");
        assert_eq!(in_kernel(ISA_SVM, 0x003), "read_cr3");
        assert_eq!(in_kernel(ISA_SVM, 0x04e), "exception_14");
        assert_eq!(in_kernel(ISA_SVM, 0x999), "exit_2457");
        assert_eq!(in_kernel(7, 1), "exit_1");
    }

    #[test]
    fn tables_have_no_duplicates() {
        for table in [&VMX[..], &SVM[..]] {
            let mut codes: Vec<u32> = table.iter().map(|&(c, _)| c).collect();
            codes.sort_unstable();
            codes.dedup();
            assert_eq!(codes.len(), table.len());
        }
    }
}
