//! Tests of the parent module.
use super::*;
use crate::attribution::MAX_LABEL_CHARS;

const UUID: &str = "3e7c5f7a-9b1d-4c2e-8f3a-6d5b4c3a2b1c";

/// A Nova guest's live status file, as libvirt writes it (trimmed).
const NOVA_STATUS_XML: &str = r#"<!--
WARNING: THIS IS AN AUTO-GENERATED FILE. CHANGES TO IT ARE LIKELY TO BE
OVERWRITTEN AND LOST. Changes to this xml configuration should be made using:
  virsh edit instance-0000002a
or other application using the libvirt API.
-->

<domstatus state='running' reason='booted' pid='4242'>
  <taint flag='high-privileges'/>
  <monitor path='/var/lib/libvirt/qemu/domain-3-instance-0000002a/monitor.sock' type='unix'/>
  <vcpus>
<vcpu id='0' pid='4250'/>
<vcpu id='1' pid='4251'/>
  </vcpus>
  <qemuCaps>
<flag name='kvm'/>
<flag name='name-guest'/>
  </qemuCaps>
  <domain type='kvm' id='3'>
<name>instance-0000002a</name>
<uuid>3E7C5F7A-9B1D-4C2E-8F3A-6D5B4C3A2B1C</uuid>
<metadata>
  <nova:instance xmlns:nova="http://openstack.org/xmlns/libvirt/nova/1.1">
    <nova:package version="27.1.0"/>
    <nova:name>web-1</nova:name>
    <nova:creationTime>2024-05-02 09:14:33</nova:creationTime>
    <nova:flavor name="m1.small">
      <nova:memory>2048</nova:memory>
      <nova:disk>20</nova:disk>
      <nova:swap>0</nova:swap>
      <nova:ephemeral>0</nova:ephemeral>
      <nova:vcpus>2</nova:vcpus>
    </nova:flavor>
    <nova:owner>
      <nova:user uuid="5b2b0e4bd2f44a8c9a3b1d2e3f4a5b6c">admin</nova:user>
      <nova:project uuid="9f8e7d6c5b4a49382716a5b4c3d2e1f0">demo</nova:project>
    </nova:owner>
    <nova:root type="image" uuid="0c1d2e3f-4a5b-4c6d-8e7f-901a2b3c4d5e"/>
    <nova:ports>
      <nova:port uuid="aa11bb22-cc33-4d44-8e55-ff6677889900">
        <nova:ip type="fixed" address="10.0.0.12" ipVersion="4"/>
      </nova:port>
    </nova:ports>
  </nova:instance>
</metadata>
<memory unit='KiB'>2097152</memory>
<vcpu placement='static'>2</vcpu>
<sysinfo type='smbios'>
  <system>
    <entry name='manufacturer'>OpenStack Foundation</entry>
    <entry name='product'>OpenStack Nova</entry>
    <entry name='uuid'>3e7c5f7a-9b1d-4c2e-8f3a-6d5b4c3a2b1c</entry>
  </system>
</sysinfo>
<os>
  <type arch='x86_64' machine='pc-q35-8.2'>hvm</type>
</os>
<devices>
  <emulator>/usr/bin/qemu-system-x86_64</emulator>
  <disk type='network' device='disk'>
    <source protocol='rbd' name='vms/3e7c5f7a-9b1d-4c2e-8f3a-6d5b4c3a2b1c_disk'/>
    <target dev='vda' bus='virtio'/>
  </disk>
</devices>
  </domain>
</domstatus>
"#;

fn argv(args: &[&str]) -> Vec<String> {
    args.iter().map(|s| s.to_string()).collect()
}

/// libvirt's QEMU command line for the Nova guest above (trimmed).
fn libvirt_argv(name_value: &str) -> Vec<String> {
    argv(&[
        "/usr/bin/qemu-system-x86_64",
        "-name",
        name_value,
        "-S",
        "-machine",
        "pc-q35-8.2,usb=off,dump-guest-core=off",
        "-accel",
        "kvm",
        "-uuid",
        UUID,
        "-smbios",
        "type=1,manufacturer=OpenStack Foundation,product=OpenStack Nova",
        "-no-user-config",
        "-nodefaults",
    ])
}

/// A `/proc/<pid>/stat` line with `start` as field 22.
fn stat_line(pid: u32, comm: &str, start: u64) -> String {
    format!(
        "{pid} ({comm}) S 1 {pid} {pid} 0 -1 4194560 1234 0 0 0 500 250 0 0 20 0 9 0 \
         {start} 4294967296 65536 18446744073709551615 1 1 0 0 0 0 0 0 0 17 3 0 0 0 0 0\n"
    )
}

struct Fixture {
    dir: tempfile::TempDir,
}

impl Fixture {
    fn new() -> Self {
        Self {
            dir: tempfile::tempdir().unwrap(),
        }
    }
    fn proc_root(&self) -> PathBuf {
        self.dir.path().join("proc")
    }
    fn run_root(&self) -> PathBuf {
        self.dir.path().join("run")
    }
    fn resolver(&self) -> VmResolver {
        VmResolver::new(self.proc_root(), self.run_root())
    }
    fn process(&self, pid: u32, start: u64, args: &[String]) {
        let d = self.proc_root().join(pid.to_string());
        std::fs::create_dir_all(&d).unwrap();
        let mut cmdline = Vec::new();
        for a in args {
            cmdline.extend_from_slice(a.as_bytes());
            cmdline.push(0);
        }
        std::fs::write(d.join("cmdline"), cmdline).unwrap();
        std::fs::write(d.join("stat"), stat_line(pid, "qemu-system-x86", start)).unwrap();
    }
    fn exit(&self, pid: u32) {
        std::fs::remove_dir_all(self.proc_root().join(pid.to_string())).unwrap();
    }
    fn domain_xml(&self, name: &str, text: &str) {
        let d = self.run_root().join("libvirt/qemu");
        std::fs::create_dir_all(&d).unwrap();
        std::fs::write(d.join(format!("{name}.xml")), text).unwrap();
    }
}

fn label<'a>(labels: &'a [(&'static str, String)], key: &str) -> Option<&'a str> {
    labels
        .iter()
        .find(|(k, _)| *k == key)
        .map(|(_, v)| v.as_str())
}

#[test]
fn cmdline_guest_parameter_with_debug_threads() {
    let args = parse_qemu_cmdline(&libvirt_argv("guest=instance-0000002a,debug-threads=on"));
    assert_eq!(
        args,
        QemuArgs {
            guest_name: Some("instance-0000002a".into()),
            uuid: Some(UUID.into()),
            is_qemu: true,
        }
    );
}

#[test]
fn cmdline_bare_name() {
    let args = parse_qemu_cmdline(&argv(&["qemu-kvm", "-name", "foo"]));
    assert_eq!(args.guest_name.as_deref(), Some("foo"));
    assert!(args.is_qemu);
    let args = parse_qemu_cmdline(&argv(&["qemu-kvm", "-name", "foo,debug-threads=on"]));
    assert_eq!(args.guest_name.as_deref(), Some("foo"));
    // Double-dash spelling, and the last -name wins.
    let args = parse_qemu_cmdline(&argv(&["qemu-kvm", "--name", "a", "-name", "guest=b"]));
    assert_eq!(args.guest_name.as_deref(), Some("b"));
    // No guest parameter at all.
    let args = parse_qemu_cmdline(&argv(&["qemu-kvm", "-name", "debug-threads=on"]));
    assert_eq!(args.guest_name, None);
}

#[test]
fn cmdline_doubled_commas_are_escaped_commas() {
    let args = parse_qemu_cmdline(&argv(&[
        "/usr/libexec/qemu-kvm",
        "-name",
        "guest=web,,prod,,,debug-threads=on",
    ]));
    assert_eq!(args.guest_name.as_deref(), Some("web,prod,"));
    let args = parse_qemu_cmdline(&argv(&["qemu-kvm", "-name", "a,,b"]));
    assert_eq!(args.guest_name.as_deref(), Some("a,b"));
}

#[test]
fn cmdline_uuid_valid_and_invalid() {
    let upper = UUID.to_ascii_uppercase();
    let args = parse_qemu_cmdline(&argv(&["qemu-kvm", "-uuid", &upper]));
    assert_eq!(args.uuid.as_deref(), Some(UUID));
    assert!(args.is_qemu);
    for bad in [
        "not-a-uuid",
        "3e7c5f7a9b1d4c2e8f3a6d5b4c3a2b1c",
        "3e7c5f7a-9b1d-4c2e-8f3a-6d5b4c3a2b1",
        "3e7c5f7a-9b1d-4c2e-8f3a_6d5b4c3a2b1c",
        "ge7c5f7a-9b1d-4c2e-8f3a-6d5b4c3a2b1c",
        "3e7c5f7a-9b1d-4c2e-8f3a-6d5b4c3a2b1cé",
    ] {
        let args = parse_qemu_cmdline(&argv(&["qemu-kvm", "-uuid", bad]));
        assert_eq!(args.uuid, None, "{bad}");
    }
    // A trailing -uuid without a value.
    assert_eq!(
        parse_qemu_cmdline(&argv(&["/bin/true", "-uuid"])),
        QemuArgs::default()
    );
}

#[test]
fn cmdline_of_other_programs() {
    assert_eq!(
        parse_qemu_cmdline(&argv(&["/usr/sbin/sshd", "-D", "-e"])),
        QemuArgs::default()
    );
    assert_eq!(parse_qemu_cmdline(&[]), QemuArgs::default());
    // Only the file name counts, not the directory.
    assert!(!parse_qemu_cmdline(&argv(&["/opt/qemu/bin/cloud-hypervisor"])).is_qemu);
    assert!(parse_qemu_cmdline(&argv(&["/opt/x/qemu-system-aarch64"])).is_qemu);
}

#[test]
fn nova_status_xml() {
    let domain = parse_domain_xml(NOVA_STATUS_XML).unwrap();
    assert_eq!(
        domain,
        Domain {
            name: "instance-0000002a".into(),
            uuid: Some(UUID.into()),
            nova: Some(NovaInstance {
                name: Some("web-1".into()),
                flavor: Some("m1.small".into()),
                project_uuid: Some("9f8e7d6c5b4a49382716a5b4c3d2e1f0".into()),
                project_name: Some("demo".into()),
                user_uuid: Some("5b2b0e4bd2f44a8c9a3b1d2e3f4a5b6c".into()),
            }),
        }
    );
}

#[test]
fn bare_domain_xml_any_nova_prefix_and_version() {
    let xml = r#"<domain type="kvm">
          <name>vm1</name>
          <metadata>
            <other:thing xmlns:other="urn:example"><other:name>no</other:name></other:thing>
            <n:instance xmlns:n="http://openstack.org/xmlns/libvirt/nova/1.0">
              <n:name>db &amp; cache</n:name>
            </n:instance>
          </metadata>
        </domain>"#;
    let domain = parse_domain_xml(xml).unwrap();
    assert_eq!(domain.name, "vm1");
    assert_eq!(domain.uuid, None);
    let nova = domain.nova.unwrap();
    assert_eq!(nova.name.as_deref(), Some("db & cache"));
    assert_eq!(nova.flavor, None);
    assert_eq!(nova.project_uuid, None);

    // Not Nova's namespace: no Nova metadata.
    let xml = r#"<domain><name>vm2</name><metadata>
          <nova:instance xmlns:nova="http://example.com/nova/"><nova:name>x</nova:name></nova:instance>
        </metadata></domain>"#;
    assert_eq!(parse_domain_xml(xml).unwrap().nova, None);
}

#[test]
fn malformed_xml_is_an_error() {
    for (xml, want) in [
        ("<domain><name>vm1</name>", "malformed"),
        ("", "malformed"),
        ("\u{0}\u{1}binary", "malformed"),
        (
            "<!DOCTYPE d [<!ENTITY a \"aaaa\">]><domain><name>&a;</name></domain>",
            "malformed",
        ),
        (
            "<network><name>default</name></network>",
            "root is <network>",
        ),
        ("<domstatus state='running'/>", "no <domain>"),
        ("<domain><uuid>x</uuid></domain>", "no <name>"),
        ("<domain><name>  </name></domain>", "no <name>"),
    ] {
        let err = parse_domain_xml(xml).unwrap_err().to_string();
        assert!(err.contains(want), "{xml:?}: {err}");
    }
}

#[test]
fn full_resolution_from_proc_and_libvirt() {
    let fx = Fixture::new();
    fx.process(
        4242,
        987_654,
        &libvirt_argv("guest=instance-0000002a,debug-threads=on"),
    );
    fx.domain_xml("instance-0000002a", NOVA_STATUS_XML);
    let mut resolver = fx.resolver();
    let want: Vec<(&str, String)> = vec![
        ("vm", "instance-0000002a".into()),
        ("vm.uuid", UUID.into()),
        ("nova.instance.name", "web-1".into()),
        ("nova.flavor", "m1.small".into()),
        ("nova.project.id", "9f8e7d6c5b4a49382716a5b4c3d2e1f0".into()),
        ("nova.project.name", "demo".into()),
    ];
    assert_eq!(resolver.labels(4242), want);
    // Served from the cache: the files no longer matter while the process lives.
    std::fs::remove_file(fx.run_root().join("libvirt/qemu/instance-0000002a.xml")).unwrap();
    assert_eq!(resolver.labels(4242), want);
}

#[test]
fn missing_xml_falls_back_to_the_cmdline_and_is_retried() {
    let fx = Fixture::new();
    fx.process(
        4242,
        100,
        &libvirt_argv("guest=instance-0000002a,debug-threads=on"),
    );
    let mut resolver = fx.resolver();
    let labels = resolver.labels(4242);
    assert_eq!(
        labels,
        vec![
            ("vm", "instance-0000002a".to_string()),
            ("vm.uuid", UUID.to_string())
        ]
    );
    // libvirt writes the file; the next interval picks it up.
    fx.domain_xml("instance-0000002a", NOVA_STATUS_XML);
    resolver.forget_exited();
    assert_eq!(
        label(&resolver.labels(4242), "nova.instance.name"),
        Some("web-1")
    );
}

#[test]
fn unusable_xml_is_ignored() {
    let fx = Fixture::new();
    let mut resolver = fx.resolver();
    // Malformed: the cmdline's name and UUID.
    fx.process(1, 10, &libvirt_argv("guest=broken"));
    fx.domain_xml("broken", "<domstatus><domain><name>broken</name>");
    assert_eq!(
        resolver.labels(1),
        vec![("vm", "broken".to_string()), ("vm.uuid", UUID.to_string())]
    );
    // A stale file for another domain of that name: its UUID differs.
    fx.process(2, 10, &libvirt_argv("guest=stale"));
    fx.domain_xml(
        "stale",
        "<domain><name>stale</name><uuid>00000000-0000-4000-8000-000000000000</uuid></domain>",
    );
    assert_eq!(label(&resolver.labels(2), "vm.uuid"), Some(UUID));
    // A guest name that would leave libvirt's directory is not used as a path.
    fx.domain_xml("secret", "<domain><name>leaked</name></domain>");
    fx.process(3, 10, &argv(&["qemu-kvm", "-name", "guest=../qemu/secret"]));
    assert_eq!(label(&resolver.labels(3), "vm"), Some("../qemu/secret"));
}

#[test]
fn unreadable_and_non_qemu_processes_are_labelled_by_pid() {
    let fx = Fixture::new();
    fx.process(77, 5, &argv(&["/usr/sbin/sshd", "-D"]));
    let mut resolver = fx.resolver();
    assert_eq!(resolver.labels(77), vec![("vm", "pid:77".to_string())]);
    assert_eq!(resolver.labels(78), vec![("vm", "pid:78".to_string())]);
    // stat present but cmdline gone (process exiting): fallback, not cached.
    let d = fx.proc_root().join("79");
    std::fs::create_dir_all(&d).unwrap();
    std::fs::write(d.join("stat"), stat_line(79, "qemu-kvm", 5)).unwrap();
    assert_eq!(resolver.labels(79), vec![("vm", "pid:79".to_string())]);
    assert!(!resolver.cache.contains_key(&79));
    // Garbage stat.
    std::fs::write(d.join("stat"), "79 (qemu-kvm) S 1").unwrap();
    assert_eq!(resolver.labels(79), vec![("vm", "pid:79".to_string())]);
}

#[test]
fn start_time_is_read_after_the_last_parenthesis() {
    let stat = stat_line(
        4242,
        "evil) S 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 19 (",
        31,
    );
    assert_eq!(parse_start_time(&stat), Some(31));
    assert_eq!(parse_start_time("4242 (x) S 1"), None);
    assert_eq!(parse_start_time("no parenthesis"), None);
}

#[test]
fn reused_pid_is_resolved_again() {
    let fx = Fixture::new();
    fx.process(4242, 100, &libvirt_argv("guest=instance-0000002a"));
    fx.domain_xml("instance-0000002a", NOVA_STATUS_XML);
    let mut resolver = fx.resolver();
    assert_eq!(
        label(&resolver.labels(4242), "vm"),
        Some("instance-0000002a")
    );
    // The VM is gone; another guest got the same pid.
    fx.process(
        4242,
        200,
        &argv(&["qemu-system-x86_64", "-name", "guest=scratch"]),
    );
    assert_eq!(resolver.labels(4242), vec![("vm", "scratch".to_string())]);
}

#[test]
fn label_values_are_bounded() {
    let fx = Fixture::new();
    let long = format!("{}\u{7}tail", "é".repeat(200));
    fx.process(
        9,
        1,
        &argv(&["qemu-kvm", "-name", &format!("guest={long}")]),
    );
    let mut resolver = fx.resolver();
    let vm = label(&resolver.labels(9), "vm").unwrap().to_owned();
    assert_eq!(vm.chars().count(), MAX_LABEL_CHARS);
    assert!(vm.chars().all(|c| c == 'é'));

    let nasty = "a\nb\tc\u{1b}[31m\u{202e}";
    assert_eq!(bound_label(nasty), "a\\u{a}b\\u{9}c\\u{1b}[31m\\u{202e}");

    // From the XML too.
    let xml = format!(
        "<domain><name>vm\u{85}x</name><metadata>\
         <nova:instance xmlns:nova=\"http://openstack.org/xmlns/libvirt/nova/1.1\">\
         <nova:name>{}</nova:name><nova:flavor name=\"f&#10;1\"/>\
         </nova:instance></metadata></domain>",
        "n".repeat(1000)
    );
    fx.domain_xml("vmx", &xml);
    fx.process(10, 1, &argv(&["qemu-kvm", "-name", "vmx"]));
    let labels = resolver.labels(10);
    assert_eq!(label(&labels, "vm"), Some("vm\\u{85}x"));
    assert_eq!(
        label(&labels, "nova.instance.name").unwrap().len(),
        MAX_LABEL_CHARS
    );
    assert_eq!(label(&labels, "nova.flavor"), Some("f\\u{a}1"));
}

#[test]
fn forget_exited_drops_gone_and_reused_pids() {
    let fx = Fixture::new();
    fx.domain_xml("instance-0000002a", NOVA_STATUS_XML);
    fx.process(1, 10, &libvirt_argv("guest=instance-0000002a"));
    fx.process(2, 20, &argv(&["/usr/sbin/sshd"]));
    fx.process(3, 30, &argv(&["/usr/sbin/cron"]));
    let mut resolver = fx.resolver();
    for pid in [1, 2, 3] {
        resolver.labels(pid);
    }
    assert_eq!(resolver.cache.len(), 3);
    fx.exit(2);
    fx.process(3, 31, &argv(&["/usr/sbin/cron"]));
    resolver.forget_exited();
    let mut kept: Vec<u32> = resolver.cache.keys().copied().collect();
    kept.sort();
    assert_eq!(kept, vec![1]);
    assert_eq!(label(&resolver.labels(1), "nova.flavor"), Some("m1.small"));
}

#[test]
fn a_process_runs_until_it_exits_or_becomes_a_zombie() {
    let fx = Fixture::new();
    fx.process(41, 5, &argv(&["qemu-system-x86_64", "-name", "guest=a"]));
    let resolver = fx.resolver();
    assert!(resolver.is_running(41));
    let zombie = stat_line(41, "qemu) (x", 5).replacen(") S ", ") Z ", 1);
    std::fs::write(fx.proc_root().join("41/stat"), zombie).unwrap();
    assert!(!resolver.is_running(41), "a zombie has no vCPUs left");
    fx.exit(41);
    assert!(!resolver.is_running(41));
}

#[test]
fn a_process_whose_memory_is_released_is_not_running_under_the_fallback() {
    let fx = Fixture::new();
    // No libvirt XML: the resolution is provisional and redone every interval.
    fx.process(90, 5, &argv(&["qemu-kvm", "-name", "guest=leaving"]));
    let mut resolver = fx.resolver();
    let vm = resolver.lookup(90);
    assert_eq!(label(&vm.labels, "vm"), Some("leaving"));
    assert!(vm.running);
    resolver.forget_exited();
    // do_exit has released the memory (the command line reads empty) but the process
    // is no zombie yet while its VM is torn down.
    std::fs::write(fx.proc_root().join("90/cmdline"), b"").unwrap();
    let vm = resolver.lookup(90);
    assert_eq!(vm.labels, vec![("vm", "pid:90".to_string())]);
    assert!(
        !vm.running,
        "the fallback must not stand for the running VM"
    );
    assert!(!resolver.cache.contains_key(&90));
}
