//! The kernels of the matrix: Debian's and Ubuntu's own packages, fetched with a private
//! apt configuration per archive (own sources.list, lists and cache under the kernel
//! cache, so the host's apt is left untouched; the archives' signatures checked against
//! their keyrings as the host's apt would), unpacked with `dpkg-deb -x` and indexed with
//! `depmod -b`. An unpacked kernel is kept and reused: reruns skip the network.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};

use crate::util;

/// One kernel of the matrix.
#[derive(Clone, Copy, Debug)]
pub struct Spec {
    /// Short name used on the command line and in the table.
    pub name: &'static str,
    /// Where fleets get it.
    pub distribution: &'static str,
    /// Package names start with this ...
    pub prefix: &'static str,
    /// ... and end with this, with only digits, dots, `-` and `+deb12` between.
    pub suffix: &'static str,
    /// The archive that ships it.
    pub archive: Archive,
    /// Packages of the same version unpacked beside the image, named by the prefix that
    /// replaces `linux-image-`: Ubuntu ships the modules apart from the image (the
    /// guest's drivers are all in `linux-modules-`; `linux-modules-extra-` is not needed).
    pub companions: &'static [&'static str],
}

/// Where a kernel package comes from: each archive has its own sources and apt state.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Archive {
    Debian,
    Ubuntu,
}

impl Archive {
    fn name(self) -> &'static str {
        match self {
            Archive::Debian => "debian",
            Archive::Ubuntu => "ubuntu",
        }
    }

    fn sources(self) -> String {
        match self {
            Archive::Debian => DEBIAN_SOURCES.to_owned(),
            Archive::Ubuntu => UBUNTU_SOURCES.replace("KEYRING", UBUNTU_KEYRING),
        }
    }
}

pub const MATRIX: [Spec; 5] = [
    Spec {
        name: "5.10",
        distribution: "Debian 11 (bullseye)",
        prefix: "linux-image-5.10.0-",
        suffix: "-amd64",
        archive: Archive::Debian,
        companions: &[],
    },
    Spec {
        name: "6.1",
        distribution: "Debian 12 (bookworm)",
        prefix: "linux-image-6.1.0-",
        suffix: "-amd64",
        archive: Archive::Debian,
        companions: &[],
    },
    Spec {
        name: "6.12",
        distribution: "Debian 12 (bookworm-backports)",
        prefix: "linux-image-6.12.",
        suffix: "+deb12-amd64",
        archive: Archive::Debian,
        companions: &[],
    },
    Spec {
        name: "5.15",
        distribution: "Ubuntu 22.04 (jammy)",
        prefix: "linux-image-5.15.0-",
        suffix: "-generic",
        archive: Archive::Ubuntu,
        companions: &["linux-modules-"],
    },
    Spec {
        name: "6.8",
        distribution: "Ubuntu 24.04 (noble)",
        prefix: "linux-image-6.8.0-",
        suffix: "-generic",
        archive: Archive::Ubuntu,
        companions: &["linux-modules-"],
    },
];

/// The Debian suites searched; bullseye for 5.10, bookworm and its backports for the rest
/// (and for Ubuntu's keyring, which bookworm itself lacks).
const DEBIAN_SOURCES: &str = "\
deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://deb.debian.org/debian bullseye main
deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://deb.debian.org/debian-security bullseye-security main
deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://deb.debian.org/debian bookworm main
deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://deb.debian.org/debian-security bookworm-security main
deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://deb.debian.org/debian bookworm-backports main
";

/// The Ubuntu suites searched: jammy for 5.15, noble for 6.8, with their updates.
const UBUNTU_SOURCES: &str = "\
deb [arch=amd64 signed-by=KEYRING] http://archive.ubuntu.com/ubuntu jammy main
deb [arch=amd64 signed-by=KEYRING] http://archive.ubuntu.com/ubuntu jammy-updates main
deb [arch=amd64 signed-by=KEYRING] http://archive.ubuntu.com/ubuntu jammy-security main
deb [arch=amd64 signed-by=KEYRING] http://archive.ubuntu.com/ubuntu noble main
deb [arch=amd64 signed-by=KEYRING] http://archive.ubuntu.com/ubuntu noble-updates main
deb [arch=amd64 signed-by=KEYRING] http://archive.ubuntu.com/ubuntu noble-security main
";

/// The Ubuntu archive's keyring, as Debian's package `ubuntu-keyring` installs it.
const UBUNTU_KEYRING: &str = "/usr/share/keyrings/ubuntu-archive-keyring.gpg";

/// An unpacked kernel: its image and module tree.
#[derive(Clone, Debug)]
pub struct Kernel {
    pub spec: Spec,
    /// `uname -r` of the kernel, e.g. `6.1.0-57-amd64`.
    pub release: String,
    /// The unpacked package (`boot/`, `lib/modules/<release>/`).
    pub root: PathBuf,
}

impl Kernel {
    pub fn vmlinuz(&self) -> PathBuf {
        self.root
            .join("boot")
            .join(format!("vmlinuz-{}", self.release))
    }
}

/// `$XDG_CACHE_HOME/nodepulse/kernels`, by default `~/.cache/nodepulse/kernels`: outside
/// the clone (the packages are large) and kept across `cargo clean`.
pub fn cache_dir() -> PathBuf {
    crate::setup::venv_dir()
        .parent()
        .expect("the venv lives in the nodepulse cache")
        .join("kernels")
}

/// The unpacked kernels for `specs`, in order, fetching those the cache lacks (with
/// one `apt-get update` per archive for all of them).
pub fn ensure_all(specs: &[Spec]) -> Result<Vec<Kernel>> {
    let cache = cache_dir();
    let mut apts: Vec<(Archive, PrivateApt)> = Vec::new();
    let mut kernels = Vec::new();
    for &spec in specs {
        if let Some(kernel) = cached(&cache, spec)? {
            kernels.push(kernel);
            continue;
        }
        if !apts.iter().any(|(a, _)| *a == spec.archive) {
            if spec.archive == Archive::Ubuntu {
                ensure_ubuntu_keyring()?;
            }
            println!(
                "vmtest: reading the {} archive's index",
                spec.archive.name()
            );
            let fresh = PrivateApt::new(&cache, spec.archive)?;
            fresh.update()?;
            apts.push((spec.archive, fresh));
        }
        let (_, apt) = apts
            .iter()
            .find(|(a, _)| *a == spec.archive)
            .expect("added above");
        kernels.push(fetch(&cache, apt, spec)?);
    }
    Ok(kernels)
}

/// Whether the Ubuntu archive's keyring is installed.
pub fn ubuntu_keyring_present() -> bool {
    Path::new(UBUNTU_KEYRING).exists()
}

/// Installs Debian's `ubuntu-keyring` (from bookworm-backports: bookworm has none) when
/// its keyring is missing, so the Ubuntu archive's signatures are checked as Debian's
/// are. The package comes through the Debian archive, itself checked.
pub fn ensure_ubuntu_keyring() -> Result<()> {
    if ubuntu_keyring_present() {
        return Ok(());
    }
    println!("vmtest: installing Debian's ubuntu-keyring (for {UBUNTU_KEYRING})");
    let cache = cache_dir();
    let apt = PrivateApt::new(&cache, Archive::Debian)?;
    apt.update()?;
    let debs = cache.join("debs");
    std::fs::create_dir_all(&debs)?;
    apt.download("ubuntu-keyring", &debs)?;
    let deb = downloaded(&debs, "ubuntu-keyring")?;
    util::run(Command::new("dpkg").arg("-i").arg(&deb))?;
    std::fs::remove_file(&deb)?;
    if !ubuntu_keyring_present() {
        bail!("ubuntu-keyring is installed but {UBUNTU_KEYRING} is still missing");
    }
    Ok(())
}

/// The `.deb` `apt-get download` left for `package` in `debs`.
fn downloaded(debs: &Path, package: &str) -> Result<PathBuf> {
    std::fs::read_dir(debs)?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .find(|p| {
            p.file_name()
                .and_then(|f| f.to_str())
                .is_some_and(|f| f.starts_with(&format!("{package}_")) && f.ends_with(".deb"))
        })
        .with_context(|| {
            format!(
                "apt-get download left no {package}_*.deb in {}",
                debs.display()
            )
        })
}

/// Downloads and unpacks the newest package of `spec`, with its companions.
fn fetch(cache: &Path, apt: &PrivateApt, spec: Spec) -> Result<Kernel> {
    let package = apt.newest(spec)?.with_context(|| {
        format!(
            "no package {}*{} in the {} archive ({})",
            spec.prefix,
            spec.suffix,
            spec.archive.name(),
            spec.archive.sources()
        )
    })?;
    let mut packages = vec![package.clone()];
    for companion in spec.companions {
        let rest = package
            .strip_prefix("linux-image-")
            .expect("kernel images are linux-image-*");
        packages.push(format!("{companion}{rest}"));
    }
    let debs = cache.join("debs");
    std::fs::create_dir_all(&debs)?;
    let sizes: Vec<u64> = packages
        .iter()
        .map(|p| apt.size(p))
        .collect::<Result<_>>()?;
    let total: u64 = sizes.iter().sum();
    let mut done = 0;
    for (i, (p, size)) in packages.iter().zip(&sizes).enumerate() {
        println!(
            "vmtest: kernel {}: downloading {p} ({} MB; package {} of {}, {} of {} MB)",
            spec.name,
            size / 1_000_000,
            i + 1,
            packages.len(),
            done / 1_000_000,
            total / 1_000_000
        );
        apt.download(p, &debs)?;
        done += size;
    }
    // Unpacked into a temporary name first, so an interrupted run leaves no half tree
    // that a rerun would take as cached.
    let root = cache.join("unpacked").join(&package);
    let partial = cache.join("unpacked").join(format!("{package}.partial"));
    let _ = std::fs::remove_dir_all(&partial);
    std::fs::create_dir_all(&partial)?;
    let mut debs_of = Vec::new();
    for p in &packages {
        let deb = downloaded(&debs, p)?;
        util::run(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&partial))?;
        debs_of.push(deb);
    }
    let release = release_of(&partial)?;
    util::run(Command::new("depmod").arg("-b").arg(&partial).arg(&release))?;
    std::fs::rename(&partial, &root)?;
    for deb in debs_of {
        std::fs::remove_file(&deb)?;
    }
    Ok(Kernel {
        spec,
        release,
        root,
    })
}

/// The newest already unpacked kernel matching `spec`.
fn cached(cache: &Path, spec: Spec) -> Result<Option<Kernel>> {
    let Ok(entries) = std::fs::read_dir(cache.join("unpacked")) else {
        return Ok(None);
    };
    let mut names: Vec<String> = entries
        .filter_map(Result::ok)
        .filter_map(|e| e.file_name().into_string().ok())
        .filter(|n| matches(spec, n))
        .collect();
    names.sort_by(|a, b| version_cmp(a, b));
    let Some(name) = names.pop() else {
        return Ok(None);
    };
    let root = cache.join("unpacked").join(name);
    let release = release_of(&root)?;
    Ok(Some(Kernel {
        spec,
        release,
        root,
    }))
}

/// Whether `package` is a kernel image of `spec` (not `-dbg`, `-unsigned`, `-rt`,
/// `-cloud`).
fn matches(spec: Spec, package: &str) -> bool {
    package
        .strip_prefix(spec.prefix)
        .and_then(|rest| rest.strip_suffix(spec.suffix))
        .is_some_and(|middle| {
            !middle.is_empty()
                && middle
                    .chars()
                    .all(|c| c.is_ascii_digit() || c == '.' || c == '-')
        })
}

/// Orders package names by their numbers (`6.12.9` before `6.12.10`).
fn version_cmp(a: &str, b: &str) -> std::cmp::Ordering {
    let numbers = |s: &str| -> Vec<u64> {
        s.split(|c: char| !c.is_ascii_digit())
            .filter(|p| !p.is_empty())
            .map(|p| p.parse().unwrap_or(u64::MAX))
            .collect()
    };
    numbers(a).cmp(&numbers(b))
}

/// The one `lib/modules/<release>` of an unpacked package.
fn release_of(root: &Path) -> Result<String> {
    let modules = root.join("lib/modules");
    let mut releases: Vec<String> = std::fs::read_dir(&modules)
        .with_context(|| format!("read {}", modules.display()))?
        .filter_map(Result::ok)
        .filter_map(|e| e.file_name().into_string().ok())
        .collect();
    match releases.len() {
        1 => Ok(releases.remove(0)),
        _ => bail!(
            "expected one kernel release in {}, found {releases:?}",
            modules.display()
        ),
    }
}

/// apt-get with its own sources, lists and cache under the kernel cache.
struct PrivateApt {
    options: Vec<String>,
}

impl PrivateApt {
    fn new(cache: &Path, archive: Archive) -> Result<Self> {
        // Debian's state keeps its old place, so existing caches stay valid.
        let dir = match archive {
            Archive::Debian => cache.join("apt"),
            Archive::Ubuntu => cache.join("apt-ubuntu"),
        };
        for sub in ["lists/partial", "cache/archives/partial"] {
            std::fs::create_dir_all(dir.join(sub))?;
        }
        let sources = dir.join("sources.list");
        std::fs::write(&sources, archive.sources())?;
        let d = |p: &str| dir.join(p).display().to_string();
        let options = [
            format!("Dir::Etc::SourceList={}", sources.display()),
            "Dir::Etc::SourceParts=/nonexistent".into(),
            format!("Dir::State={}", d("")),
            format!("Dir::State::Lists={}", d("lists")),
            // Read only, to resolve nothing: apt-get download installs nothing.
            "Dir::State::status=/var/lib/dpkg/status".into(),
            format!("Dir::Cache={}", d("cache")),
            "Debug::NoLocking=1".into(),
            // Running as root, apt would hand downloads to the `_apt` user, who cannot
            // write to a cache in root's home.
            "APT::Sandbox::User=root".into(),
        ]
        .into_iter()
        .flat_map(|o| ["-o".to_owned(), o])
        .collect();
        Ok(Self { options })
    }

    fn command(&self, program: &str) -> Command {
        let mut cmd = Command::new(program);
        cmd.env("DEBIAN_FRONTEND", "noninteractive")
            .args(&self.options);
        cmd
    }

    fn update(&self) -> Result<()> {
        util::run(self.command("apt-get").args(["-q", "update"]))
    }

    /// The newest package name matching `spec` in the private lists.
    fn newest(&self, spec: Spec) -> Result<Option<String>> {
        let names = util::stdout_of(self.command("apt-cache").args(["pkgnames", spec.prefix]))
            .context("apt-cache pkgnames failed")?;
        let mut names: Vec<&str> = names.lines().filter(|n| matches(spec, n)).collect();
        names.sort_by(|a, b| version_cmp(a, b));
        Ok(names.pop().map(str::to_owned))
    }

    /// The size in bytes of the candidate `.deb` of `package`.
    fn size(&self, package: &str) -> Result<u64> {
        let show =
            util::stdout_of(
                self.command("apt-cache")
                    .args(["show", "--no-all-versions", package]),
            )
            .with_context(|| format!("apt-cache show {package} failed"))?;
        show.lines()
            .find_map(|l| l.strip_prefix("Size: "))
            .and_then(|s| s.trim().parse().ok())
            .with_context(|| format!("apt-cache show {package} gave no Size"))
    }

    fn download(&self, package: &str, into: &Path) -> Result<()> {
        util::run(
            self.command("apt-get")
                .current_dir(into)
                .args(["-q", "download", package]),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_generic_images_match() {
        let [v510, v61, v612, v515, v68] = MATRIX;
        assert!(matches(v515, "linux-image-5.15.0-208-generic"));
        assert!(!matches(v515, "linux-image-unsigned-5.15.0-208-generic"));
        assert!(!matches(v515, "linux-image-5.15.0-208-lowlatency"));
        assert!(matches(v68, "linux-image-6.8.0-155-generic"));
        assert!(!matches(v68, "linux-image-6.8.0-155-generic-64k"));
        assert!(matches(v510, "linux-image-5.10.0-46-amd64"));
        assert!(!matches(v510, "linux-image-5.10.0-46-cloud-amd64"));
        assert!(!matches(v510, "linux-image-5.10.0-46-amd64-unsigned"));
        assert!(!matches(v510, "linux-image-5.10.0-46-rt-amd64"));
        assert!(matches(v61, "linux-image-6.1.0-57-amd64"));
        assert!(!matches(v61, "linux-image-6.12.118+deb12-amd64"));
        assert!(matches(v612, "linux-image-6.12.118+deb12-amd64"));
        assert!(!matches(v612, "linux-image-6.12.118+deb12-cloud-amd64"));
    }

    #[test]
    fn versions_order_by_number() {
        let mut names = [
            "linux-image-6.12.100+deb12-amd64",
            "linux-image-6.12.94+deb12-amd64",
            "linux-image-6.12.118+deb12-amd64",
        ];
        names.sort_by(|a, b| version_cmp(a, b));
        assert_eq!(names[2], "linux-image-6.12.118+deb12-amd64");
        assert_eq!(names[0], "linux-image-6.12.94+deb12-amd64");
    }
}
