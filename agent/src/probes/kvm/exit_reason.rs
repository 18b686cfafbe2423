//! Where the in-kernel exit probe finds an exit's reason when it attaches by tp_btf or
//! raw tracepoint: in the arguments of `kvm_exit`, or in the vendor's vCPU struct. Both
//! are read from BTF (kvm's, then kvm_amd's / kvm_intel's) where the kernel has it.
//!
//! `kvm_exit` passes `(unsigned int exit_reason, struct kvm_vcpu *vcpu, u32 isa)` up to
//! 5.15 and `(struct kvm_vcpu *vcpu, u32 isa)` from 5.16 ("KVM: x86: Get exit_reason as
//! part of kvm_x86_ops.get_exit_info", commit 0a62a0319abb, merged in the 5.16 merge
//! window; see docs/architecture.md "KVM exits" for the record; the BTF of Debian's 5.10 and
//! Ubuntu's 5.15 shows the old form, 6.1 on the new), where the tracepoint itself asks
//! the vendor (`get_exit_info()`): SVM returns
//! `vcpu_svm->vmcb->control.exit_code`, VMX `vcpu_vmx->exit_reason` (a `u32` up to 5.11,
//! then `union vmx_exit_reason`, whose `full` is the same 32 bits). Both vendor structs
//! embed the `struct kvm_vcpu` the tracepoint hands over, so the reason is read relative
//! to it.
//!
//! A kernel whose BTF cannot say (none at all, or no module BTF for a loadable kvm, as
//! Debian's 5.10) is judged by its release: before 5.16 the reason is argument 0, which a
//! raw tracepoint reads without any type. The kernel checks that guess at attach time:
//! it refuses a raw tracepoint program that reads past the tracepoint's last argument
//! (`bpf_probe_register()`: `max_ctx_offset > num_args * 8` is `EINVAL`, since 4.17), and
//! the program reads argument 2 (`isa`), so a `(vcpu, isa)` kernel (a backport under an
//! older release) refuses it and the classic tracepoint is used instead.

use std::path::Path;

use agent_common::kvm::KvmExitReason;

use crate::kernel::btf::{Btf, BtfError, TypeDesc};

/// The first release whose `kvm_exit` passes `(vcpu, isa)`.
pub const VCPU_FORM_SINCE: (u32, u32) = (5, 16);

/// How `kvm_exit` gives the exit reason on this kernel.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ExitArgs {
    /// `(exit_reason, vcpu, isa)`, as BTF says: an argument.
    Reason,
    /// `(exit_reason, vcpu, isa)` by the kernel's release, no BTF saying: the raw
    /// tracepoint only (tp_btf needs the type). `btf` is why BTF could not say.
    ReasonByRelease { btf: String },
    /// `(vcpu, isa)`: read through the vCPU, at these offsets (5.16 on).
    Vcpu(KvmExitReason),
}

/// Why BTF did not give `kvm_exit`'s form.
enum Unknown {
    /// No BTF has the tracepoint's type: the release may still tell.
    NoBtf(String),
    /// BTF has it and it is unusable: nothing else is trusted over it.
    Refused(String),
}

/// Reads `kvm_exit`'s prototype and, when needed, the vendors' layouts from the BTF
/// under `dir` (normally `/sys/kernel/btf`), whose `vmlinux` is `vmlinux` (parsed); where
/// no BTF has the prototype, goes by `release` (`uname -r`). The error says why neither
/// tp_btf nor raw tracepoint programs can be used.
pub fn resolve(dir: &Path, vmlinux: Option<&Btf>, release: &str) -> Result<ExitArgs, String> {
    match from_btf(dir, vmlinux) {
        Ok(args) => Ok(args),
        Err(Unknown::Refused(why)) => Err(why),
        Err(Unknown::NoBtf(why)) => by_release(release, why),
    }
}

fn from_btf(dir: &Path, vmlinux: Option<&Btf>) -> Result<ExitArgs, Unknown> {
    let vmlinux = vmlinux.ok_or_else(|| {
        Unknown::NoBtf(format!(
            "the kernel has no BTF ({})",
            dir.join("vmlinux").display()
        ))
    })?;
    let args = match vmlinux.tracepoint_arg_types("kvm_exit") {
        Some(args) => args,
        None => module(dir, vmlinux, "kvm")
            .map_err(Unknown::NoBtf)?
            .tracepoint_arg_types("kvm_exit")
            .ok_or_else(|| {
                Unknown::NoBtf(format!(
                    "{} has no btf_trace_kvm_exit",
                    dir.join("kvm").display()
                ))
            })?,
    };
    let vcpu = TypeDesc::Pointer("kvm_vcpu".into());
    match args.as_slice() {
        [TypeDesc::Int(4), v, TypeDesc::Int(4)] if *v == vcpu => Ok(ExitArgs::Reason),
        [v, TypeDesc::Int(4)] if *v == vcpu => vendors(dir, vmlinux)
            .map(ExitArgs::Vcpu)
            .map_err(Unknown::Refused),
        other => Err(Unknown::Refused(format!(
            "kvm_exit passes {other:?}, neither (exit_reason, vcpu, isa) nor (vcpu, isa)"
        ))),
    }
}

/// `kvm_exit`'s form by the release alone, `btf` saying why BTF could not tell.
fn by_release(release: &str, btf: String) -> Result<ExitArgs, String> {
    let Some(version) = major_minor(release) else {
        return Err(format!(
            "{btf}, and the release `{release}` is not major.minor[.…]: which arguments              kvm_exit passes is unknown"
        ));
    };
    if version < VCPU_FORM_SINCE {
        return Ok(ExitArgs::ReasonByRelease { btf });
    }
    Err(format!(
        "{btf}: from {}.{} kvm_exit passes (vcpu, isa) and the reason is read from the          vendor's vCPU struct, at offsets only BTF gives",
        VCPU_FORM_SINCE.0, VCPU_FORM_SINCE.1
    ))
}

/// `5.10.0-46-amd64` → (5, 10).
fn major_minor(release: &str) -> Option<(u32, u32)> {
    let mut parts = release.split(|c: char| !c.is_ascii_digit());
    let major = parts.next()?.parse().ok()?;
    let minor = parts.next()?.parse().ok()?;
    Some((major, minor))
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
        assert_eq!(resolve(dir.path(), Some(&vmlinux), "6.1.0-57-amd64"), Ok(ExitArgs::Reason));
    }

    #[test]
    fn the_new_form_reads_the_vendors_struct() {
        let (dir, vmlinux) = kernel(false);
        let Ok(ExitArgs::Vcpu(r)) = resolve(dir.path(), Some(&vmlinux), "6.1.0-57-amd64") else {
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
        let err = resolve(dir.path(), Some(&vmlinux), "6.1.0-57-amd64").unwrap_err();
        assert!(err.contains("CONFIG_DEBUG_INFO_BTF_MODULES"), "{err}");
        let err = resolve(dir.path(), None, "6.1.0-57-amd64").unwrap_err();
        assert!(err.contains("has no BTF"), "{err}");
    }

    /// Without module BTF (Debian's 5.10), or without any BTF, a release before 5.16 has
    /// the reason as argument 0; 5.16 on would need the vendors' offsets, which only BTF
    /// gives; BTF, where it has the prototype, wins over the release.
    #[test]
    fn without_btf_the_release_decides() {
        let (dir, vmlinux) = kernel(false);
        std::fs::remove_file(dir.path().join("kvm")).unwrap();
        for release in ["5.10.0-46-amd64", "5.15.0-208-generic", "4.18.0-553.el8_10.x86_64"] {
            let Ok(ExitArgs::ReasonByRelease { btf }) =
                resolve(dir.path(), Some(&vmlinux), release)
            else {
                panic!("{release}: not judged by its release");
            };
            assert!(btf.contains("CONFIG_DEBUG_INFO_BTF_MODULES"), "{btf}");
            assert!(matches!(
                resolve(dir.path(), None, release),
                Ok(ExitArgs::ReasonByRelease { .. })
            ));
        }
        for release in ["5.16.0", "6.1.0-57-amd64"] {
            let err = resolve(dir.path(), Some(&vmlinux), release).unwrap_err();
            assert!(err.contains("from 5.16 kvm_exit passes (vcpu, isa)"), "{err}");
        }
        let err = resolve(dir.path(), None, "unknown").unwrap_err();
        assert!(err.contains("`unknown` is not major.minor"), "{err}");
        // BTF that has the prototype is believed over an old release.
        let (dir, vmlinux) = kernel(false);
        assert!(matches!(
            resolve(dir.path(), Some(&vmlinux), "5.10.0-46-amd64"),
            Ok(ExitArgs::Vcpu(_))
        ));
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
        let err = resolve(dir.path(), Some(&vmlinux), "6.1.0-57-amd64").unwrap_err();
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
        match resolve(dir, Some(&vmlinux), &crate::kernel::release()) {
            Ok(_) => {}
            Err(e) => assert!(e.contains("no vendor's exit reason was found"), "{e}"),
        }
    }
}
