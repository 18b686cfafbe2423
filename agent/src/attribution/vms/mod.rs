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
//! file, so every label value is bounded ([`super::MAX_LABEL_CHARS`], no control
//! characters) and a process that cannot be identified is still labelled, as
//! `pid:<pid>`.

use std::{
    collections::HashMap,
    io::{self, Read},
    path::{Path, PathBuf},
};

use super::{Labels, bound_label, is_uuid};

/// Labels that identify a VM in a series; the first becomes `other` when the
/// cardinality budget folds VMs.
pub const SERIES_IDENTITY: &[&str] = &[
    "vm",
    "vm.uuid",
    "nova.instance.name",
    "nova.flavor",
    "nova.project.id",
    "nova.project.name",
];

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
    #[error("{path} is empty: the process is exiting")]
    Exiting { path: PathBuf },
}

/// A VM's labels as resolved now.
pub struct VmLookup {
    pub labels: Labels,
    /// The process runs and the labels were read from it now (not the fallback of a
    /// process that is exiting or gone).
    pub running: bool,
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

/// Start time (clock ticks after boot) from `/proc/<pid>/stat`: field 22, counted after
/// the last `)` because the command name in field 2 may itself contain `)` and spaces.
fn parse_start_time(stat: &str) -> Option<u64> {
    let (_, after_comm) = stat.rsplit_once(')')?;
    // Fields from 3 (state) on; field 22 is the 20th of them.
    after_comm.split_whitespace().nth(19)?.parse().ok()
}

/// Process state (field 3 of `/proc/<pid>/stat`), read after the command name.
fn parse_state(stat: &str) -> Option<char> {
    let (_, after_comm) = stat.rsplit_once(')')?;
    after_comm.split_whitespace().next()?.chars().next()
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
    #[cfg(test)]
    pub fn labels(&mut self, pid: u32) -> Vec<(&'static str, String)> {
        self.lookup(pid).labels
    }

    /// The labels, and whether they describe a process that runs now. A process on
    /// its way out still has a `/proc` entry and is not yet a zombie after the kernel
    /// has released its memory (and with it the command line), while its VM is torn
    /// down: labels read then are the fallback, and must not replace the name the VM
    /// ran under.
    ///
    /// The cache is keyed by the process start time, checked on every call, so a pid
    /// reused by another process is resolved again. One read of `/proc/<pid>/stat`
    /// gives the start time and the state.
    pub fn lookup(&mut self, pid: u32) -> VmLookup {
        let unresolved = |pid| VmLookup {
            labels: fallback_labels(pid),
            running: false,
        };
        let stat = match stat_under(&self.proc_root, pid) {
            Ok(stat) => stat,
            Err(error) => {
                tracing::debug!(pid, %error, "cannot read process stat");
                return unresolved(pid);
            }
        };
        let Some(start_time) = parse_start_time(&stat) else {
            tracing::debug!(pid, "no start time in the process's stat");
            return unresolved(pid);
        };
        let labels = match self.cache.get(&pid) {
            Some(entry) if entry.start_time == start_time => entry.labels.clone(),
            _ => match self.resolve(pid) {
                Ok((labels, provisional)) => {
                    let entry = Entry {
                        start_time,
                        provisional,
                        labels: labels.clone(),
                    };
                    self.cache.insert(pid, entry);
                    labels
                }
                Err(error) => {
                    // Exiting or exited meanwhile; nothing worth caching.
                    tracing::debug!(pid, %error, "cannot read process command line");
                    return unresolved(pid);
                }
            },
        };
        VmLookup {
            labels,
            running: is_live(&stat),
        }
    }

    /// Whether process `pid` still runs: it has a `/proc` entry and has not exited (a
    /// zombie's threads are gone, and with them its vCPUs). The labels of a process
    /// that is gone are whatever resolution gave last; the caller remembers them.
    pub fn is_running(&self, pid: u32) -> bool {
        stat_under(&self.proc_root, pid).is_ok_and(|stat| is_live(&stat))
    }

    /// Drops entries whose process is gone or whose pid now belongs to another process,
    /// and entries resolved before libvirt's XML was found, so they are looked up again.
    /// Call once per interval.
    pub fn forget_exited(&mut self) {
        let proc_root = &self.proc_root;
        self.cache.retain(|&pid, entry| {
            !entry.provisional && start_time_under(proc_root, pid) == Some(entry.start_time)
        });
    }

    /// Labels for a process, and whether they are provisional (no domain XML found).
    fn resolve(&self, pid: u32) -> Result<(Labels, bool), VmError> {
        let path = self.proc_root.join(pid.to_string()).join("cmdline");
        let raw = read_bounded(&path, CMDLINE_LIMIT)?;
        if raw.is_empty() {
            // Its memory is released: the process is exiting (QEMU is no kernel thread).
            return Err(VmError::Exiting { path });
        }
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

fn stat_under(proc_root: &Path, pid: u32) -> Result<String, VmError> {
    let path = proc_root.join(pid.to_string()).join("stat");
    std::fs::read_to_string(&path).map_err(|source| VmError::Io { path, source })
}

/// The start time of `pid`, `None` when it cannot be read (the process is gone).
fn start_time_under(proc_root: &Path, pid: u32) -> Option<u64> {
    parse_start_time(&stat_under(proc_root, pid).ok()?)
}

/// A process that has not exited: not a zombie or dead.
fn is_live(stat: &str) -> bool {
    parse_state(stat).is_some_and(|state| !matches!(state, 'Z' | 'X' | 'x'))
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
mod tests;
