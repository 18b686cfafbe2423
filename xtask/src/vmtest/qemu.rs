//! Boots one kernel under QEMU's TCG (no `/dev/kvm` needed) with an SVM-capable CPU and
//! an NVMe, a virtio-blk and a virtio-SCSI disk, plus a second virtio-blk disk whose
//! reads at [`FAULTY_SECTOR`] fail with EIO (QEMU's blkdebug driver); the guest's
//! results come back over a second serial port written to a file.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::util;

/// Size of each emulated disk (sparse files).
const DISK_BYTES: u64 = 64 << 20;

/// The 512-byte sector of the faulty disk (`vdb` in the guest) whose reads fail: 4 MiB in,
/// away from what the kernel's partition scan reads at boot.
pub const FAULTY_SECTOR: u64 = 8192;

/// Long enough for a TCG boot (20–25 s here) and the guest's run on a busy machine.
const TIMEOUT: Duration = Duration::from_secs(300);

pub struct Boot<'a> {
    pub vmlinuz: &'a Path,
    pub initramfs: &'a Path,
    /// Where disks, the console log and the results go.
    pub dir: &'a Path,
    /// Extra kernel command line words (`vmtest.*` settings for the guest script).
    pub cmdline: &'a str,
}

/// What the guest wrote: its console and its results port.
pub struct Output {
    pub console: PathBuf,
    pub results: String,
    pub elapsed: Duration,
}

pub fn boot(b: &Boot<'_>) -> Result<Output> {
    std::fs::create_dir_all(b.dir)?;
    let disk = |name: &str| -> Result<PathBuf> {
        let path = b.dir.join(format!("{name}.img"));
        let file = std::fs::File::create(&path)?;
        file.set_len(DISK_BYTES)?;
        Ok(path)
    };
    let (nvme, virtio, scsi) = (disk("nvme")?, disk("virtio")?, disk("scsi")?);
    let faulty = disk("faulty")?;
    let faulty_node = serde_json::json!({
        "driver": "raw",
        "node-name": "faulty0",
        "file": {
            "driver": "blkdebug",
            "image": {"driver": "file", "filename": faulty},
            "inject-error": [{"event": "read_aio", "errno": 5, "sector": FAULTY_SECTOR}],
        },
    });
    let console = b.dir.join("console.log");
    let results = b.dir.join("results.txt");
    let _ = std::fs::remove_file(&results);

    let drive = |id: &str, path: &Path| {
        format!(
            "if=none,id={id},format=raw,cache=unsafe,file={}",
            path.display()
        )
    };
    let mut cmd = Command::new("qemu-system-x86_64");
    cmd.args(["-machine", "q35", "-accel", "tcg"])
        // EPYC with SVM: kvm_amd loads in the guest and nested guests exit for real.
        .args(["-cpu", "EPYC,+svm", "-smp", "1", "-m", "1024"])
        .args(["-display", "none", "-no-reboot", "-nodefaults"])
        .arg("-kernel")
        .arg(b.vmlinuz)
        .arg("-initrd")
        .arg(b.initramfs)
        // no_timer_check: under TCG on a loaded host the kernel's IO-APIC timer check can
        // miss its window and panic at boot ("IO-APIC + timer doesn't work!", 6.12 at
        // host load ~16); QEMU's timer is wired, the check only costs a flaky boot.
        .args([
            "-append",
            &format!(
                "console=ttyS0 panic=-1 quiet loglevel=4 mitigations=off no_timer_check {}",
                b.cmdline
            ),
        ])
        .args(["-serial", &format!("file:{}", console.display())])
        .args(["-serial", &format!("file:{}", results.display())])
        .args(["-drive", &drive("nvme0", &nvme)])
        .args(["-device", "nvme,drive=nvme0,serial=vmtest-nvme"])
        .args(["-drive", &drive("virtio0", &virtio)])
        .args(["-device", "virtio-blk-pci,drive=virtio0"])
        .args(["-device", "virtio-scsi-pci,id=scsi0"])
        .args(["-drive", &drive("scsi0", &scsi)])
        .args(["-device", "scsi-hd,drive=scsi0,bus=scsi0.0"])
        .args(["-blockdev", &faulty_node.to_string()])
        .args(["-device", "virtio-blk-pci,drive=faulty0"]);
    println!("$ {}", util::display(&cmd));
    let start = Instant::now();
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .context("could not start qemu-system-x86_64 (Debian package qemu-system-x86)")?;
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break status;
        }
        if start.elapsed() > TIMEOUT {
            // Our own child, by its id.
            let _ = child.kill();
            let _ = child.wait();
            bail!(
                "the guest did not power off within {} s; its console: {}",
                TIMEOUT.as_secs(),
                console.display()
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    let mut stderr = String::new();
    if let Some(mut pipe) = child.stderr.take() {
        use std::io::Read as _;
        let _ = pipe.read_to_string(&mut stderr);
    }
    if !status.success() {
        bail!("qemu-system-x86_64 failed ({status}): {stderr}");
    }
    let results = std::fs::read_to_string(&results)
        .with_context(|| format!("read the guest's results {}", results.display()))?;
    for d in [nvme, virtio, scsi, faulty] {
        let _ = std::fs::remove_file(d);
    }
    Ok(Output {
        console,
        results,
        elapsed: start.elapsed(),
    })
}
