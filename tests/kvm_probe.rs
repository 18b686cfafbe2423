//! The KVM probe against a real guest: a process with a QEMU-like command line runs a
//! real-mode guest through /dev/kvm doing a known number of `out` + `hlt` exits to
//! userspace, with a libvirt domain XML fixture carrying Nova metadata. Needs root and
//! /dev/kvm.

mod common;

use std::{
    collections::BTreeMap,
    io::{BufRead, Write},
    process::{Command, Stdio},
};

use nodepulse::{aggregate::ExpHistogram, config::Config, probes::Probes};

use common::kvm_guest::guest_process_path;

const UUID: &str = "6f0c8b2e-5d4a-4c1e-9b7a-2f3e4d5c6b7a";
const DOMAIN: &str = "instance-0000002a";

fn domain_xml() -> String {
    format!(
        r#"<domstatus state='running' reason='booted' pid='1'>
  <domain type='kvm' id='3'>
    <name>{DOMAIN}</name>
    <uuid>{UUID}</uuid>
    <metadata>
      <nova:instance xmlns:nova="http://openstack.org/xmlns/libvirt/nova/1.1">
        <nova:package version="27.1.0"/>
        <nova:name>web-01</nova:name>
        <nova:flavor name="m1.small"><nova:memory>2048</nova:memory></nova:flavor>
        <nova:owner>
          <nova:user uuid="0b1c">admin</nova:user>
          <nova:project uuid="a1b2c3">demo</nova:project>
        </nova:owner>
      </nova:instance>
    </metadata>
  </domain>
</domstatus>"#
    )
}

/// A series' histogram and labels.
type Series = (ExpHistogram, Vec<(&'static str, String)>);

/// Series of `family` for the test VM, by exit reason.
fn by_reason(probes: &mut Probes, family: &str) -> BTreeMap<String, Series> {
    probes
        .collect()
        .readings
        .into_iter()
        .filter(|r| r.key.family == family && r.key.label("vm.uuid") == Some(UUID))
        .map(|r| {
            let reason = r.key.label("reason").unwrap().to_owned();
            (reason, (r.hist, r.key.labels))
        })
        .collect()
}

#[test]
fn exits_to_userspace_are_counted_exactly_per_vm_and_reason() {
    require_root!();
    if !std::path::Path::new("/dev/kvm").exists() {
        eprintln!("SKIPPED: no /dev/kvm on this machine");
        return;
    }
    let run_root = tempfile::tempdir().unwrap();
    let qemu = run_root.path().join("libvirt/qemu");
    std::fs::create_dir_all(&qemu).unwrap();
    std::fs::write(qemu.join(format!("{DOMAIN}.xml")), domain_xml()).unwrap();
    let mut config = Config::default();
    config.attribution.run_root = run_root.path().to_path_buf();
    let mut probes = Probes::start(&config).expect("load");
    let kvm = probes.statuses().iter().find(|s| s.probe == "kvm").unwrap();
    assert!(kvm.is_up(), "{kvm:?}");

    // The guest waits for a line on stdin, so the probes see its very first KVM_RUN.
    let iterations = 500u64;
    let mut guest = Command::new(guest_process_path())
        .args([
            "-name",
            &format!("guest={DOMAIN},debug-threads=on"),
            "-uuid",
            UUID,
        ])
        .env("NODEPULSE_KVM_GUEST_ITERATIONS", iterations.to_string())
        .env("NODEPULSE_KVM_GUEST_WAIT", "1")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("start the guest process");
    let mut stdin = guest.stdin.take().unwrap();
    let stdout = guest.stdout.take().unwrap();
    let _guard = common::Workload(Some(guest));
    writeln!(stdin).unwrap();
    let mut line = String::new();
    std::io::BufReader::new(stdout)
        .read_line(&mut line)
        .unwrap();
    let run: serde_json::Value = serde_json::from_str(&line).expect("the guest's report");
    let io = run["io"].as_u64().unwrap();
    let hlt = run["hlt"].as_u64().unwrap();
    assert_eq!((io, hlt), (iterations, iterations), "the guest's own count");

    let runs = by_reason(&mut probes, "kvm.run.duration");
    let handled = by_reason(&mut probes, "kvm.exit.userspace.latency");
    eprintln!(
        "guest: {io} io, {hlt} hlt exits; nodepulse runs: {:?}; handled: {:?}",
        runs.iter()
            .map(|(r, (h, _))| (r.clone(), h.count()))
            .collect::<Vec<_>>(),
        handled
            .iter()
            .map(|(r, (h, _))| (r.clone(), h.count()))
            .collect::<Vec<_>>(),
    );
    // One KVM_RUN ends in each exit: exact counts per reason.
    assert_eq!(runs["io"].0.count(), io);
    assert_eq!(runs["hlt"].0.count(), hlt);
    // Every exit but the last one was followed by a KVM_RUN (the helper stops after its
    // last hlt), so handling time exists for all the others.
    assert_eq!(handled["io"].0.count(), io);
    assert_eq!(handled["hlt"].0.count(), hlt - 1);
    for (h, _) in runs.values().chain(handled.values()) {
        assert!(
            h.sum > 0 && h.quantile(0.5).unwrap() > 0.0,
            "latencies present"
        );
    }
    // The VM is named from the libvirt XML (Nova metadata included), not the pid.
    let labels: BTreeMap<_, _> = runs["io"].1.iter().cloned().collect();
    assert_eq!(labels["vm"], DOMAIN);
    assert_eq!(labels["vm.uuid"], UUID);
    assert_eq!(labels["nova.instance.name"], "web-01");
    assert_eq!(labels["nova.flavor"], "m1.small");
    assert_eq!(labels["nova.project.name"], "demo");
    // Let the guest process exit.
    writeln!(stdin).unwrap();
}

/// A vCPU thread sharing its CPU with a busy loop waits for it; that wait is reported
/// per VM (the KVM probe registers the thread, the scheduler probe attributes it).
#[test]
fn vcpu_run_queue_wait_is_attributed_to_the_vm() {
    require_root!();
    if !std::path::Path::new("/dev/kvm").exists() {
        eprintln!("SKIPPED: no /dev/kvm on this machine");
        return;
    }
    common::require_tool("taskset");
    let mut probes = Probes::start(&Config::default()).expect("load");
    let hog = Command::new("taskset")
        .args(["-c", "0", "sh", "-c", "while :; do :; done"])
        .spawn()
        .expect("start a busy loop");
    let _hog = common::Workload(Some(hog));
    let uuid = "0d5b0c39-2f4e-4a63-8d0a-5e6f7a8b9c0d";
    let mut guest = Command::new("taskset")
        .args(["-c", "0"])
        .arg(guest_process_path())
        .args(["-name", "guest=vcpu-wait-test", "-uuid", uuid])
        .env("NODEPULSE_KVM_GUEST_ITERATIONS", "20000")
        .env("NODEPULSE_KVM_GUEST_WAIT", "1")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("start the guest process");
    let mut stdin = guest.stdin.take().unwrap();
    let stdout = guest.stdout.take().unwrap();
    let _guard = common::Workload(Some(guest));
    writeln!(stdin).unwrap();
    let mut line = String::new();
    std::io::BufReader::new(stdout)
        .read_line(&mut line)
        .unwrap();

    let wait = probes
        .collect()
        .readings
        .into_iter()
        .find(|r| r.key.family == "vm.vcpu.wait" && r.key.label("vm.uuid") == Some(uuid))
        .map(|r| r.hist)
        .expect("a vm.vcpu.wait series for the VM");
    eprintln!(
        "vCPU waits: {}, p50 {:.0} ns, max bucket {:?}",
        wait.count(),
        wait.quantile(0.5).unwrap(),
        wait.quantile(1.0)
    );
    assert!(wait.count() > 0);
    assert!(
        wait.quantile(1.0).unwrap() > 100_000.0,
        "waited behind the busy loop"
    );
    writeln!(stdin).unwrap();
}
