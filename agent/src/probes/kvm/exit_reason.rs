//! Where the in-kernel exit probe finds an exit's reason when it attaches by tp_btf or
//! raw tracepoint: in the arguments of `kvm_exit`, or in the vendor's vCPU struct. Both
//! are read from BTF (kvm's, then kvm_amd's / kvm_intel's), never assumed per kernel.
//!
//! `kvm_exit` passes `(unsigned int exit_reason, struct kvm_vcpu *vcpu, u32 isa)` up to
//! 5.15 and `(struct kvm_vcpu *vcpu, u32 isa)` from 5.16, where the tracepoint itself
//! asks the vendor (`get_exit_info()`): SVM returns `vcpu_svm->vmcb->control.exit_code`,
//! VMX `vcpu_vmx->exit_reason` (a `u32` up to 5.11, then `union vmx_exit_reason`, whose
//! `full` is the same 32 bits). Both vendor structs embed the `struct kvm_vcpu` the
//! tracepoint hands over, so the reason is read relative to it.

use std::path::Path;

use agent_common::kvm::KvmExitReason;

use crate::kernel::btf::{Btf, BtfError, TypeDesc};

/// How `kvm_exit` gives the exit reason on this kernel.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ExitArgs {
    /// `(exit_reason, vcpu, isa)`: an argument (up to 5.15).
    Reason,
    /// `(vcpu, isa)`: read through the vCPU, at these offsets (5.16 on).
    Vcpu(KvmExitReason),
}

/// Reads `kvm_exit`'s prototype and, when needed, the vendors' layouts from the BTF
/// under `dir` (normally `/sys/kernel/btf`), whose `vmlinux` is `vmlinux` (parsed).
/// The error says why neither tp_btf nor raw tracepoint programs can be used.
pub fn resolve(dir: &Path, vmlinux: Option<&Btf>) -> Result<ExitArgs, String> {
    let vmlinux = vmlinux.ok_or_else(|| {
        format!(
            "the kernel has no BTF ({}), so which arguments kvm_exit passes is unknown",
            dir.join("vmlinux").display()
        )
    })?;
    let args = match vmlinux.tracepoint_arg_types("kvm_exit") {
        Some(args) => args,
        None => module(dir, vmlinux, "kvm")?
            .tracepoint_arg_types("kvm_exit")
            .ok_or_else(|| {
                format!("{} has no btf_trace_kvm_exit", dir.join("kvm").display())
            })?,
    };
    let vcpu = TypeDesc::Pointer("kvm_vcpu".into());
    match args.as_slice() {
        [TypeDesc::Int(4), v, TypeDesc::Int(4)] if *v == vcpu => Ok(ExitArgs::Reason),
        [v, TypeDesc::Int(4)] if *v == vcpu => vendors(dir, vmlinux).map(ExitArgs::Vcpu),
        other => Err(format!(
            "kvm_exit passes {other:?}, neither (exit_reason, vcpu, isa) nor (vcpu, isa)"
        )),
    }
}

/// Module `name`'s split BTF over `vmlinux`.
fn module(dir: &Path, vmlinux: &Btf, name: &str) -> Result<Btf, String> {
    let path = dir.join(name);
    let split = std::fs::read(&path).map_err(|e| {
        if e.kind() == std::io::ErrorKind::NotFound {
            format!(
                "{} is absent: this kernel publishes no BTF for module {name} (built \
                 without CONFIG_DEBUG_INFO_BTF_MODULES, or older than 5.11), or it is not \
                 loaded",
                path.display()
            )
        } else {
            format!("cannot read {}: {e}", path.display())
        }
    })?;
    Btf::parse_split(vmlinux, &split).map_err(|e| format!("{}: {e}", path.display()))
}

/// Runs `read` on the BTF holding struct `strukt`: vmlinux's when the vendor module
/// is built in, else module `name`'s.
fn in_vendor_btf<T>(
    dir: &Path,
    vmlinux: &Btf,
    name: &str,
    strukt: &str,
    read: impl FnOnce(&Btf) -> Result<T, String>,
) -> Result<T, String> {
    if vmlinux.member_offset(strukt, "vcpu").is_ok() {
        return read(vmlinux);
    }
    read(&module(dir, vmlinux, name)?)
}

/// Every vendor whose layout is found; an error only when neither is.
fn vendors(dir: &Path, vmlinux: &Btf) -> Result<KvmExitReason, String> {
    let mut out = KvmExitReason::UNRESOLVED;
    let svm = in_vendor_btf(dir, vmlinux, "kvm_amd", "vcpu_svm", svm);
    let vmx = in_vendor_btf(dir, vmlinux, "kvm_intel", "vcpu_vmx", vmx);
    if let Ok((vcpu, vmcb, exit_code)) = &svm {
        (out.svm_vcpu, out.svm_vmcb, out.svm_exit_code, out.svm_ok) = (*vcpu, *vmcb, *exit_code, 1);
    }
    if let Ok((vcpu, exit_reason)) = &vmx {
        (out.vmx_vcpu, out.vmx_exit_reason, out.vmx_ok) = (*vcpu, *exit_reason, 1);
    }
    match (svm, vmx) {
        (Err(a), Err(i)) => Err(format!(
            "kvm_exit passes (vcpu, isa) and no vendor's exit reason was found: SVM: {a}; \
             VMX: {i}"
        )),
        _ => Ok(out),
    }
}

fn expect(what: &str, got: &TypeDesc, ok: bool) -> Result<(), String> {
    ok.then_some(())
        .ok_or_else(|| format!("{what} is {got:?}, not what the probe reads"))
}

fn btf_error(e: BtfError) -> String {
    e.to_string()
}

/// Offset of the `struct kvm_vcpu` a vendor's vCPU struct `strukt` embeds as `vcpu`:
/// the tracepoint hands over a pointer to it, so the vendor's fields are read relative
/// to it.
fn embedded_vcpu(btf: &Btf, strukt: &str) -> Result<u32, String> {
    let (vcpu, ty) = btf.member(strukt, "vcpu").map_err(btf_error)?;
    expect(
        &format!("{strukt}.vcpu"),
        &ty,
        matches!(&ty, TypeDesc::Composite(n, _) if n == "kvm_vcpu"),
    )?;
    Ok(vcpu)
}

/// `vcpu_svm`: offsets of `vcpu` and of the `vmcb` pointer, and of
/// `control.exit_code` in `struct vmcb`.
fn svm(btf: &Btf) -> Result<(u32, u32, u32), String> {
    let vcpu = embedded_vcpu(btf, "vcpu_svm")?;
    let (vmcb, ty) = btf.member("vcpu_svm", "vmcb").map_err(btf_error)?;
    expect("vcpu_svm.vmcb", &ty, ty == TypeDesc::Pointer("vmcb".into()))?;
    let (exit_code, ty) = btf
        .member("vmcb", "control.exit_code")
        .map_err(btf_error)?;
    // A u32, or a u64 whose low half (little-endian: first) is the code.
    expect(
        "vmcb.control.exit_code",
        &ty,
        matches!(ty, TypeDesc::Int(4 | 8)),
    )?;
    Ok((vcpu, vmcb, exit_code))
}

/// `vcpu_vmx`: offsets of `vcpu` and of `exit_reason` (32 bits).
fn vmx(btf: &Btf) -> Result<(u32, u32), String> {
    let vcpu = embedded_vcpu(btf, "vcpu_vmx")?;
    let (exit_reason, ty) = btf.member("vcpu_vmx", "exit_reason").map_err(btf_error)?;
    expect(
        "vcpu_vmx.exit_reason",
        &ty,
        matches!(ty, TypeDesc::Int(4) | TypeDesc::Composite(_, 4)),
    )?;
    Ok((vcpu, exit_reason))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernel::btf::tests::Builder;

    /// A vmlinux with `struct kvm_vcpu` and `u32`, and a kvm module whose `kvm_exit`
    /// has the old `(exit_reason, vcpu, isa)` or the new `(vcpu, isa)` form.
    fn kernel(old_form: bool) -> (tempfile::TempDir, Btf) {
        let mut b = Builder::base();
        let uint = b.int("unsigned int", 4);
        let u32_t = b.typedef("u32", uint);
        let u64_t = b.int("long long unsigned int", 8);
        let vcpu = b.strukt("kvm_vcpu", 64, &[("vcpu_id", uint, 0)]);
        let base = b.build();
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("vmlinux"), &base).unwrap();
        let mut m = Builder::split(&base);
        let vcpu_ptr = m.ptr(vcpu);
        if old_form {
            m.tracepoint("kvm_exit", &[uint, vcpu_ptr, u32_t]);
        } else {
            m.tracepoint("kvm_exit", &[vcpu_ptr, u32_t]);
        }
        std::fs::write(dir.path().join("kvm"), m.build()).unwrap();
        // kvm_amd: vcpu_svm { struct kvm_vcpu vcpu; struct vmcb *vmcb; } with the
        // vcpu not first, to show the offsets are relative to it.
        let mut a = Builder::split(&base);
        let control = a.strukt(
            "vmcb_control_area",
            1024,
            &[("intercepts", u32_t, 0), ("exit_code", u32_t, 112)],
        );
        let vmcb = a.strukt("vmcb", 2048, &[("control", control, 0)]);
        let vmcb_ptr = a.ptr(vmcb);
        a.strukt(
            "vcpu_svm",
            6600,
            &[("pad", u64_t, 0), ("vcpu", vcpu, 8), ("vmcb", vmcb_ptr, 6552)],
        );
        std::fs::write(dir.path().join("kvm_amd"), a.build()).unwrap();
        let btf = Btf::parse(&base).unwrap();
        (dir, btf)
    }

    #[test]
    fn the_old_form_passes_the_reason() {
        let (dir, vmlinux) = kernel(true);
        assert_eq!(resolve(dir.path(), Some(&vmlinux)), Ok(ExitArgs::Reason));
    }

    #[test]
    fn the_new_form_reads_the_vendors_struct() {
        let (dir, vmlinux) = kernel(false);
        let Ok(ExitArgs::Vcpu(r)) = resolve(dir.path(), Some(&vmlinux)) else {
            panic!("no layout");
        };
        assert_eq!(
            (r.svm_vcpu, r.svm_vmcb, r.svm_exit_code, r.svm_ok),
            (8, 6552, 112, 1)
        );
        // kvm_intel is not loaded: VMX stays unresolved, and SVM alone is enough.
        assert_eq!(r.vmx_ok, 0);
    }

    #[test]
    fn without_module_btf_the_reason_says_why() {
        let (dir, vmlinux) = kernel(false);
        std::fs::remove_file(dir.path().join("kvm")).unwrap();
        let err = resolve(dir.path(), Some(&vmlinux)).unwrap_err();
        assert!(err.contains("CONFIG_DEBUG_INFO_BTF_MODULES"), "{err}");
        let err = resolve(dir.path(), None).unwrap_err();
        assert!(err.contains("has no BTF"), "{err}");
    }

    #[test]
    fn a_vendor_layout_of_the_wrong_shape_is_refused() {
        let (dir, vmlinux) = kernel(false);
        // vmcb as an embedded struct instead of a pointer.
        let base = std::fs::read(dir.path().join("vmlinux")).unwrap();
        let mut a = Builder::split(&base);
        let uint = 1;
        let vcpu = 4;
        let vmcb = a.strukt("vmcb", 8, &[("exit_code", uint, 0)]);
        a.strukt("vcpu_svm", 80, &[("vcpu", vcpu, 0), ("vmcb", vmcb, 64)]);
        std::fs::write(dir.path().join("kvm_amd"), a.build()).unwrap();
        let err = resolve(dir.path(), Some(&vmlinux)).unwrap_err();
        assert!(err.contains("vcpu_svm.vmcb is Composite"), "{err}");
        assert!(err.contains("kvm_intel is absent"), "{err}");
    }

    /// This kernel's own `kvm_exit`, when KVM has it: the form is recognised (the
    /// development VM's PVM has neither vendor struct, which is then said).
    #[test]
    fn reads_the_running_kernels_kvm_exit() {
        let dir = Path::new(crate::kernel::module_btf::SYS_BTF_DIR);
        let Ok(vmlinux) = Btf::from_sys_fs() else {
            eprintln!("SKIPPED: no kernel BTF");
            return;
        };
        let in_btf = vmlinux.tracepoint_arg_types("kvm_exit").is_some()
            || dir.join("kvm").exists();
        if !in_btf {
            eprintln!("SKIPPED: no kvm_exit in this kernel's BTF");
            return;
        }
        match resolve(dir, Some(&vmlinux)) {
            Ok(_) => {}
            Err(e) => assert!(e.contains("no vendor's exit reason was found"), "{e}"),
        }
    }
}
