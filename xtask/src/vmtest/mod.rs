//! `cargo xtask vmtest`: the kernel matrix. Boots Debian's 5.10, 6.1 and 6.12 kernels
//! and Ubuntu's 5.15 and 6.8 under QEMU (TCG, an SVM-capable CPU, NVMe, virtio-blk and virtio-SCSI disks, a loop
//! device in the guest), runs the static nodepulse inside with known workloads, and
//! checks its counts against the guest's own. Prints kernel × probe × attach kind ×
//! verdict, then the exactness checks. TCG keeps one host core busy per guest (one
//! vCPU each), so as many guests boot at once as the host has cores: two here, which
//! took the matrix from ~7 to ~4 minutes.

mod churn;
mod initramfs;
mod judge;
mod kernels;
mod qemu;
mod results;
mod runqueue;

pub use kernels::{MATRIX, ensure_ubuntu_keyring, ubuntu_keyring_present};

use std::path::PathBuf;
use std::sync::{
    Mutex,
    atomic::{AtomicUsize, Ordering},
};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::util::{self, fmt_duration};

/// 4 KiB direct writes, then reads, per disk.
pub const IO_COUNT: u64 = 200;
/// Direct reads of the faulty disk's bad sector, each failing with EIO.
pub const ERROR_COUNT: u64 = 3;
/// Iterations of the nested guest's `out; hlt` loop.
pub const KVM_ITERATIONS: u64 = 100;
/// Request/reply turns over the veth pair.
pub const TCP_EXCHANGES: u64 = 50;

#[derive(clap::Args)]
pub struct Args {
    /// Only these kernels (by name: 5.10, 6.1, 6.12, 5.15, 6.8); all by default.
    #[arg(long = "kernel", value_name = "NAME")]
    kernels: Vec<String>,
}

pub const SKIP_NOTICE: &str = "vmtest SKIPPED: booting kernels under QEMU and loading \
                               eBPF in them needs root (the kernel downloads go to root's cache)";

pub fn run(args: Args) -> Result<()> {
    if !util::is_root() {
        println!("*** {SKIP_NOTICE}");
        return Ok(());
    }
    let specs = select(&args.kernels)?;
    run_matrix(&specs)
}

/// The kernels named on the command line, or the whole matrix.
fn select(names: &[String]) -> Result<Vec<kernels::Spec>> {
    if names.is_empty() {
        return Ok(kernels::MATRIX.to_vec());
    }
    names
        .iter()
        .map(|n| {
            kernels::MATRIX
                .iter()
                .find(|s| s.name == n)
                .copied()
                .with_context(|| {
                    format!(
                        "unknown kernel `{n}`; the matrix has {}",
                        kernels::MATRIX.map(|s| s.name).join(", ")
                    )
                })
        })
        .collect()
}

/// Runs the matrix, prints the table and fails if any probe failed to attach or any
/// count was off.
pub fn run_matrix(specs: &[kernels::Spec]) -> Result<()> {
    let start = Instant::now();
    let nodepulse = crate::dist::static_binary()?;
    let kvm_guest = kvm_guest_binary()?;
    let work = util::target_dir().join("vmtest");
    std::fs::create_dir_all(&work)?;

    let kernels = kernels::ensure_all(specs)?;
    let programs = initramfs::Programs {
        nodepulse: &nodepulse,
        kvm_guest: &kvm_guest,
    };
    // TCG runs a guest's one vCPU on one host thread: a guest per core at once.
    let workers = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .min(kernels.len())
        .max(1);
    println!(
        "booting {} kernels, {workers} at a time (one per core)",
        kernels.len()
    );
    // Newer kernels take longer to boot under TCG (6.8 2:14, 5.10 1:06 here): the
    // longest first, so that no long guest runs alone at the end.
    let mut order: Vec<usize> = (0..kernels.len()).collect();
    order.sort_by_key(|&i| std::cmp::Reverse(version(kernels[i].spec.name)));
    let next = AtomicUsize::new(0);
    let printing = Mutex::new(());
    let mut judged: Vec<(usize, Result<Judged>)> = std::thread::scope(|scope| {
        let threads: Vec<_> = (0..workers)
            .map(|_| {
                scope.spawn(|| {
                    let mut done = Vec::new();
                    while let Some(&i) = order.get(next.fetch_add(1, Ordering::Relaxed)) {
                        done.push((i, boot_and_judge(&kernels[i], &programs, &work, &printing)));
                    }
                    done
                })
            })
            .collect();
        threads
            .into_iter()
            .flat_map(|t| t.join().expect("a guest's thread panicked"))
            .collect()
    });
    // The matrix's order, whatever order the guests finished in.
    judged.sort_by_key(|&(i, _)| i);
    let reports = judged
        .into_iter()
        .map(|(_, r)| r)
        .collect::<Result<Vec<_>>>()?;

    let host = host_report(&nodepulse)?;
    let mut rows: Vec<&judge::KernelReport> = reports.iter().map(|(r, _)| r).collect();
    rows.push(&host);
    println!("\n{}", judge::table(&rows));
    let boots: Duration = reports.iter().map(|(_, d)| *d).sum();
    println!(
        "vmtest: {} kernels in {} (guests {})",
        reports.len(),
        fmt_duration(start.elapsed()),
        fmt_duration(boots)
    );
    let failed: Vec<String> = reports.iter().flat_map(|(r, _)| r.failures()).collect();
    if !failed.is_empty() {
        bail!("vmtest failed:\n  {}", failed.join("\n  "));
    }
    Ok(())
}

/// `"6.12"` as (6, 12), for ordering; unparsable parts count as 0.
fn version(name: &str) -> (u32, u32) {
    let mut parts = name.split('.').map(|p| p.parse().unwrap_or(0));
    (parts.next().unwrap_or(0), parts.next().unwrap_or(0))
}

/// A kernel's verdicts, and how long its guest ran.
type Judged = (judge::KernelReport, Duration);

/// Boots one kernel's guest and judges what it reported; prints the verdicts as soon
/// as they are known (one guest's lines at a time).
fn boot_and_judge(
    kernel: &kernels::Kernel,
    programs: &initramfs::Programs<'_>,
    work: &std::path::Path,
    printing: &Mutex<()>,
) -> Result<Judged> {
    let spec = kernel.spec;
    println!("== kernel {} ({}): booting", spec.name, spec.distribution);
    let dir = work.join(spec.name);
    std::fs::create_dir_all(&dir)?;
    let initrd = initramfs::build(kernel, programs, &dir)?;
    let out = qemu::boot(&qemu::Boot {
        vmlinuz: &kernel.vmlinuz(),
        initramfs: &initrd,
        dir: &dir,
        cmdline: &format!(
            "vmtest.io_count={IO_COUNT} vmtest.error_count={ERROR_COUNT} \
             vmtest.kvm_iterations={KVM_ITERATIONS} vmtest.tcp_exchanges={TCP_EXCHANGES}"
        ),
    })
    .with_context(|| format!("kernel {} ({})", spec.name, kernel.release))?;
    std::fs::write(dir.join("results.txt"), &out.results)?;
    let report = judge::judge(kernel, &out.results).with_context(|| {
        format!(
            "kernel {} ({}); the guest's console: {}",
            spec.name,
            kernel.release,
            out.console.display()
        )
    })?;
    let _one_at_a_time = printing.lock().unwrap_or_else(|e| e.into_inner());
    println!(
        "\n== kernel {} ({}): guest {} ran in {} (console: {})",
        spec.name,
        spec.distribution,
        kernel.release,
        fmt_duration(out.elapsed),
        util::relative_to_cwd(&out.console).display()
    );
    report.print();
    Ok((report, out.elapsed))
}

/// `nodepulse check --json` on this machine's own kernel, for the table's host row.
fn host_report(binary: &std::path::Path) -> Result<judge::KernelReport> {
    let out = std::process::Command::new(binary)
        .args(["check", "--json"])
        .stderr(std::process::Stdio::null())
        .output()
        .with_context(|| format!("could not run {}", binary.display()))?;
    judge::KernelReport::host(&String::from_utf8_lossy(&out.stdout))
        .context("`nodepulse check --json` on the host")
}

/// The nested guest program (tests/kvm_guest_process.rs) as a static binary.
fn kvm_guest_binary() -> Result<PathBuf> {
    let target = crate::dist::MUSL_TARGET;
    util::run(util::cargo().args([
        "build",
        "--release",
        "--locked",
        "--package",
        "kvm-guest",
        "--target",
        target,
    ]))?;
    Ok(util::target_dir()
        .join(target)
        .join("release")
        .join("kvm_guest_process"))
}
