//! QEMU processes → the VMs operators know, on libvirt/OpenStack KVM hypervisors.
//!
//! The kernel side reports the tgid of the QEMU process owning a vCPU thread. Its
//! command line carries the guest name (`-name guest=…`) and UUID (`-uuid …`); libvirt's
//! live domain XML (`<run_root>/libvirt/qemu/<name>.xml`) adds what Nova put in the
//! domain's metadata: instance name, flavor, project. Both roots are configurable so a
//! container can read the host's `/proc` and `/run` through mounts (the proc root must
//! be the host's: the kernel reports pids of the initial pid namespace), and tests can
//! use fixture trees.
//!
//! Everything read here is controlled by whoever started the process or wrote the
//! file, so every label value is bounded ([`MAX_LABEL_CHARS`], no control characters)
//! and a process that cannot be identified is still labelled, as `pid:<pid>`.

use std::{
    collections::HashMap,
    io::{self, Read},
    path::{Path, PathBuf},
};

/// Longest label value, in characters; longer values are truncated.
pub const MAX_LABEL_CHARS: usize = 128;

/// Cap on how much of `/proc/<pid>/cmdline` is read. libvirt's QEMU command lines are
/// tens of KiB; the kernel allows megabytes. `-name` and `-uuid` come early.
const CMDLINE_LIMIT: u64 = 1 << 20;

/// Cap on a domain XML file. Status XML is typically well under 1 MiB.
const DOMAIN_XML_LIMIT: u64 = 4 << 20;

/// Nova's metadata namespace, versioned (`…/nova/1.0`, `…/nova/1.1`, …).
const NOVA_NS_PREFIX: &str = "http://openstack.org/xmlns/libvirt/nova/";

#[derive(Debug, thiserror::Error)]
pub enum VmError {
    #[error("reading {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{path} is larger than {limit} bytes")]
    TooLarge { path: PathBuf, limit: u64 },
    #[error("{path} is not UTF-8")]
    NotUtf8 { path: PathBuf },
    #[error("malformed domain XML: {0}")]
    Xml(#[from] roxmltree::Error),
    #[error("domain XML root is <{0}>, expected <domain> or <domstatus>")]
    UnexpectedRoot(String),
    #[error("<domstatus> has no <domain>")]
    NoDomain,
    #[error("domain XML has no <name>")]
    NoName,
}

/// What QEMU's command line says about the guest.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct QemuArgs {
    /// `-name guest=NAME` (or the bare `-name NAME`), unescaped; unbounded.
    pub guest_name: Option<String>,
    /// `-uuid`, lower-cased; only a well-formed UUID.
    pub uuid: Option<String>,
    /// argv\[0] is a `qemu*` binary, or the arguments have `-name`/`-uuid`.
    pub is_qemu: bool,
}

/// A libvirt domain, from its XML.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Domain {
    /// libvirt domain name (`instance-0000002a` under Nova).
    pub name: String,
    /// Domain UUID, lower-cased; under Nova, the instance UUID.
    pub uuid: Option<String>,
    pub nova: Option<NovaInstance>,
}

/// Nova's `<nova:instance>` domain metadata.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NovaInstance {
    /// The instance's display name (`openstack server list`).
    pub name: Option<String>,
    pub flavor: Option<String>,
    pub project_uuid: Option<String>,
    pub project_name: Option<String>,
    pub user_uuid: Option<String>,
}

/// Parses QEMU's argv. The last `-name`/`-uuid` wins, as in QEMU. A malformed UUID is
/// dropped: it would not be the one libvirt or Nova know.
pub fn parse_qemu_cmdline(args: &[String]) -> QemuArgs {
    let mut out = QemuArgs {
        is_qemu: args.first().is_some_and(|a0| {
            a0.rsplit('/')
                .next()
                .is_some_and(|file| file.starts_with("qemu"))
        }),
        ..QemuArgs::default()
    };
    let mut rest = args.iter().skip(1);
    while let Some(arg) = rest.next() {
        // QEMU accepts options with one dash or two.
        let option = arg.strip_prefix("--").or_else(|| arg.strip_prefix('-'));
        match option {
            Some("name") => {
                if let Some(value) = rest.next() {
                    out.is_qemu = true;
                    out.guest_name = guest_from_name_option(value);
                }
            }
            Some("uuid") => {
                if let Some(value) = rest.next() {
                    out.is_qemu = true;
                    if is_uuid(value) {
                        out.uuid = Some(value.to_ascii_lowercase());
                    } else {
                        tracing::debug!(uuid = %bound_label(value), "ignoring malformed -uuid");
                    }
                }
            }
            _ => {}
        }
    }
    out
}

/// The guest name in a `-name` value: `guest=NAME,debug-threads=on`, or `NAME` alone as
/// the first (implied `guest`) parameter. QEMU writes a comma inside a value as `,,`.
fn guest_from_name_option(value: &str) -> Option<String> {
    let mut guest = None;
    for (i, param) in split_qemu_opts(value).into_iter().enumerate() {
        match param.split_once('=') {
            Some(("guest", name)) => guest = Some(name.to_owned()),
            Some(_) => {}
            None if i == 0 => guest = Some(param),
            None => {}
        }
    }
    guest.filter(|g| !g.is_empty())
}

/// Splits QEMU option parameters at single commas, turning `,,` into `,`.
fn split_qemu_opts(value: &str) -> Vec<String> {
    let mut params = vec![String::new()];
    let mut chars = value.chars().peekable();
    while let Some(c) = chars.next() {
        if c != ',' {
            params.last_mut().expect("never empty").push(c);
        } else if chars.next_if_eq(&',').is_some() {
            params.last_mut().expect("never empty").push(',');
        } else {
            params.push(String::new());
        }
    }
    params
}

/// `8-4-4-4-12` hex digits, the only form libvirt and QEMU print.
fn is_uuid(s: &str) -> bool {
    s.len() == 36
        && s.bytes().enumerate().all(|(i, b)| match i {
            8 | 13 | 18 | 23 => b == b'-',
            _ => b.is_ascii_hexdigit(),
        })
}

/// Parses libvirt domain XML: the live status file (`<domstatus>` around `<domain>`) or
/// a bare `<domain>`. DTDs are refused (roxmltree's default), so entity expansion cannot
/// blow up.
pub fn parse_domain_xml(text: &str) -> Result<Domain, VmError> {
    let doc = roxmltree::Document::parse(text)?;
    let root = doc.root_element();
    let domain = match root.tag_name().name() {
        "domain" if root.tag_name().namespace().is_none() => root,
        "domstatus" if root.tag_name().namespace().is_none() => {
            plain_child(root, "domain").ok_or(VmError::NoDomain)?
        }
        other => return Err(VmError::UnexpectedRoot(bound_label(other))),
    };
    let name = plain_child(domain, "name")
        .and_then(|n| text_of(n))
        .ok_or(VmError::NoName)?;
    let uuid = plain_child(domain, "uuid")
        .and_then(|n| text_of(n))
        .and_then(|u| {
            if is_uuid(&u) {
                Some(u.to_ascii_lowercase())
            } else {
                tracing::debug!(uuid = %bound_label(&u), "ignoring malformed domain <uuid>");
                None
            }
        });
    let nova = plain_child(domain, "metadata")
        .and_then(|m| nova_child(m, "instance"))
        .map(|instance| {
            let owner = nova_child(instance, "owner");
            let project = owner.and_then(|o| nova_child(o, "project"));
            NovaInstance {
                name: nova_child(instance, "name").and_then(text_of),
                flavor: nova_child(instance, "flavor").and_then(|f| attr_of(f, "name")),
                project_uuid: project.and_then(|p| attr_of(p, "uuid")),
                project_name: project.and_then(text_of),
                user_uuid: owner
                    .and_then(|o| nova_child(o, "user"))
                    .and_then(|u| attr_of(u, "uuid")),
            }
        });
    Ok(Domain { name, uuid, nova })
}

/// First child element `name` in no namespace (libvirt's own elements; keeps
/// `<nova:name>` and friends from matching).
fn plain_child<'a, 'input>(
    node: roxmltree::Node<'a, 'input>,
    name: &str,
) -> Option<roxmltree::Node<'a, 'input>> {
    node.children().find(|c| {
        c.is_element() && c.tag_name().name() == name && c.tag_name().namespace().is_none()
    })
}

/// First child element with local name `name` in any version of Nova's namespace,
/// whatever prefix the document binds it to.
fn nova_child<'a, 'input>(
    node: roxmltree::Node<'a, 'input>,
    name: &str,
) -> Option<roxmltree::Node<'a, 'input>> {
    node.children().find(|c| {
        c.is_element()
            && c.tag_name().name() == name
            && c.tag_name()
                .namespace()
                .is_some_and(|ns| ns.starts_with(NOVA_NS_PREFIX))
    })
}

/// Trimmed text of an element; `None` when empty.
fn text_of(node: roxmltree::Node) -> Option<String> {
    nonempty(node.text())
}

fn attr_of(node: roxmltree::Node, name: &str) -> Option<String> {
    nonempty(node.attribute(name))
}

fn nonempty(s: Option<&str>) -> Option<String> {
    s.map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
}

/// A label value from untrusted text: control characters replaced with `_`, at most
/// [`MAX_LABEL_CHARS`] characters.
fn bound_label(s: &str) -> String {
    s.chars()
        .take(MAX_LABEL_CHARS)
        .map(|c| if c.is_control() { '_' } else { c })
        .collect()
}

/// Start time (clock ticks after boot) from `/proc/<pid>/stat`: field 22, counted after
/// the last `)` because the command name in field 2 may itself contain `)` and spaces.
fn parse_start_time(stat: &str) -> Option<u64> {
    let (_, after_comm) = stat.rsplit_once(')')?;
    // Fields from 3 (state) on; field 22 is the 20th of them.
    after_comm.split_whitespace().nth(19)?.parse().ok()
}

/// Reads at most `limit` bytes of a file; more is an error, not a silent truncation.
fn read_bounded(path: &Path, limit: u64) -> Result<Vec<u8>, VmError> {
    let io_err = |source| VmError::Io {
        path: path.to_path_buf(),
        source,
    };
    let mut bytes = Vec::new();
    std::fs::File::open(path)
        .map_err(io_err)?
        .take(limit + 1)
        .read_to_end(&mut bytes)
        .map_err(io_err)?;
    if bytes.len() as u64 > limit {
        return Err(VmError::TooLarge {
            path: path.to_path_buf(),
            limit,
        });
    }
    Ok(bytes)
}

/// Metric labels: (key, bounded value).
type Labels = Vec<(&'static str, String)>;

/// A cached resolution, valid for one process incarnation.
struct Entry {
    start_time: u64,
    /// Resolved without libvirt's XML because the file was not there (yet, or not a
    /// libvirt guest); [`VmResolver::forget_exited`] drops it so it is tried again.
    provisional: bool,
    labels: Labels,
}

/// Metric labels for the VM a QEMU process runs, cached per process.
pub struct VmResolver {
    proc_root: PathBuf,
    run_root: PathBuf,
    cache: HashMap<u32, Entry>,
}

impl VmResolver {
    /// `proc_root` is the host's `/proc`, `run_root` the host's `/run` (libvirt's status
    /// XML lives in `<run_root>/libvirt/qemu/`).
    pub fn new(proc_root: PathBuf, run_root: PathBuf) -> Self {
        Self {
            proc_root,
            run_root,
            cache: HashMap::new(),
        }
    }

    /// Labels for the VM owning `pid`: `vm`, and when known `vm.uuid` and Nova's
    /// `nova.instance.name`, `nova.flavor`, `nova.project.id`, `nova.project.name`.
    /// A process that is not QEMU, or cannot be read, is `vm=pid:<pid>`.
    ///
    /// The cache is keyed by the process start time, checked on every call, so a pid
    /// reused by another process is resolved again.
    pub fn labels(&mut self, pid: u32) -> Vec<(&'static str, String)> {
        let start_time = match self.start_time(pid) {
            Ok(t) => t,
            Err(error) => {
                tracing::debug!(pid, %error, "cannot read process start time");
                return fallback_labels(pid);
            }
        };
        if let Some(entry) = self.cache.get(&pid)
            && entry.start_time == start_time
        {
            return entry.labels.clone();
        }
        let (labels, provisional) = match self.resolve(pid) {
            Ok(resolved) => resolved,
            Err(error) => {
                // Most likely the process exited meanwhile; nothing worth caching.
                tracing::debug!(pid, %error, "cannot read process command line");
                return fallback_labels(pid);
            }
        };
        self.cache.insert(
            pid,
            Entry {
                start_time,
                provisional,
                labels: labels.clone(),
            },
        );
        labels
    }

    /// Drops entries whose process is gone or whose pid now belongs to another process,
    /// and entries resolved before libvirt's XML was found, so they are looked up again.
    /// Call once per interval.
    pub fn forget_exited(&mut self) {
        let proc_root = &self.proc_root;
        self.cache.retain(|&pid, entry| {
            !entry.provisional
                && start_time_under(proc_root, pid).is_ok_and(|t| t == entry.start_time)
        });
    }

    fn start_time(&self, pid: u32) -> Result<u64, VmError> {
        start_time_under(&self.proc_root, pid)
    }

    /// Labels for a process, and whether they are provisional (no domain XML found).
    fn resolve(&self, pid: u32) -> Result<(Labels, bool), VmError> {
        let path = self.proc_root.join(pid.to_string()).join("cmdline");
        let raw = read_bounded(&path, CMDLINE_LIMIT)?;
        let argv: Vec<String> = raw
            .split(|&b| b == 0)
            .map(|arg| String::from_utf8_lossy(arg).into_owned())
            .collect();
        // The cmdline ends with a NUL, leaving an empty last piece.
        let argv = match argv.split_last() {
            Some((last, init)) if last.is_empty() => init,
            _ => &argv[..],
        };
        let args = parse_qemu_cmdline(argv);
        if !args.is_qemu {
            return Ok((fallback_labels(pid), false));
        }
        let (domain, provisional) = match &args.guest_name {
            Some(guest) => self.domain_for(pid, guest, args.uuid.as_deref()),
            None => (None, false),
        };
        Ok((build_labels(pid, &args, domain.as_ref()), provisional))
    }

    /// libvirt's domain for a guest name, if its XML exists, parses and agrees with the
    /// process's `-uuid` (a stale file for an earlier domain of the same name must not
    /// label this one). The flag says the file was missing, worth retrying later.
    fn domain_for(&self, pid: u32, guest: &str, uuid: Option<&str>) -> (Option<Domain>, bool) {
        // The name becomes a path: keep it inside libvirt's directory. libvirt itself
        // refuses `/` in domain names.
        if guest.contains('/') || guest == "." || guest == ".." {
            tracing::debug!(pid, guest = %bound_label(guest), "guest name is not a file name");
            return (None, false);
        }
        let path = self
            .run_root
            .join("libvirt/qemu")
            .join(format!("{guest}.xml"));
        let bytes = match read_bounded(&path, DOMAIN_XML_LIMIT) {
            Ok(bytes) => bytes,
            Err(VmError::Io { source, .. }) if source.kind() == io::ErrorKind::NotFound => {
                tracing::debug!(pid, path = %path.display(), "no libvirt domain XML");
                return (None, true);
            }
            Err(error) => {
                tracing::debug!(pid, %error, "cannot read libvirt domain XML");
                return (None, false);
            }
        };
        let Ok(text) = String::from_utf8(bytes) else {
            tracing::debug!(pid, error = %VmError::NotUtf8 { path }, "bad libvirt domain XML");
            return (None, false);
        };
        match parse_domain_xml(&text) {
            Ok(domain) => match (uuid, domain.uuid.as_deref()) {
                (Some(process), Some(xml)) if process != xml => {
                    tracing::debug!(
                        pid,
                        path = %path.display(),
                        "domain XML UUID differs from the process's -uuid; ignoring it"
                    );
                    (None, false)
                }
                _ => (Some(domain), false),
            },
            Err(error) => {
                tracing::debug!(pid, path = %path.display(), %error, "bad libvirt domain XML");
                (None, false)
            }
        }
    }
}

fn start_time_under(proc_root: &Path, pid: u32) -> Result<u64, VmError> {
    let path = proc_root.join(pid.to_string()).join("stat");
    let stat = std::fs::read_to_string(&path).map_err(|source| VmError::Io {
        path: path.clone(),
        source,
    })?;
    parse_start_time(&stat).ok_or_else(|| VmError::Io {
        path,
        source: io::Error::new(io::ErrorKind::InvalidData, "no start time in stat"),
    })
}

fn fallback_labels(pid: u32) -> Labels {
    vec![("vm", format!("pid:{pid}"))]
}

fn build_labels(pid: u32, args: &QemuArgs, domain: Option<&Domain>) -> Labels {
    let vm = match (domain, &args.guest_name) {
        (Some(d), _) => bound_label(&d.name),
        (None, Some(guest)) => bound_label(guest),
        (None, None) => format!("pid:{pid}"),
    };
    let mut labels = vec![("vm", vm)];
    if let Some(uuid) = domain
        .and_then(|d| d.uuid.as_deref())
        .or(args.uuid.as_deref())
    {
        labels.push(("vm.uuid", bound_label(uuid)));
    }
    if let Some(nova) = domain.and_then(|d| d.nova.as_ref()) {
        for (key, value) in [
            ("nova.instance.name", &nova.name),
            ("nova.flavor", &nova.flavor),
            ("nova.project.id", &nova.project_uuid),
            ("nova.project.name", &nova.project_name),
        ] {
            if let Some(value) = value {
                labels.push((key, bound_label(value)));
            }
        }
    }
    labels
}

#[cfg(test)]
mod tests {
    use super::*;

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

        let nasty = "a\nb\tc\u{1b}[31m";
        assert_eq!(bound_label(nasty), "a_b_c_[31m");

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
        assert_eq!(label(&labels, "vm"), Some("vm_x"));
        assert_eq!(
            label(&labels, "nova.instance.name").unwrap().len(),
            MAX_LABEL_CHARS
        );
        assert_eq!(label(&labels, "nova.flavor"), Some("f_1"));
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
}
