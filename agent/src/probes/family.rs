//! What the registry asks of a probe family. Each family lives in its own folder under
//! `probes/` (its kernel programs in `agent-ebpf/src/<family>.rs`) and is named once in
//! [`super::FAMILIES`]; loading, attaching, `check`, the pipeline, the exporters and the
//! configuration all go through this trait.

use std::path::Path;

use aya::{Ebpf, EbpfLoader};

use super::{
    ProbesConfig,
    attach::{AttachKind, Variant},
    outliers::{Outliers, OutliersConfig},
};
use crate::{
    aggregate::budget::{LimitsConfig, Rule},
    attribution::AttributionConfig,
    catalog::Family,
    kernel::btf::Btf,
    report::SeriesReport,
    settings::ConfigError,
};

/// The parts of the configuration the probes start from.
#[derive(Clone, Copy)]
pub struct Setup<'a> {
    pub probes: &'a ProbesConfig,
    /// Where sysfs is.
    pub sys_root: &'a Path,
    pub attribution: &'a AttributionConfig,
    pub outliers: &'a OutliersConfig,
    /// Whether outliers are collected (as configured, else when OTLP export is on).
    pub outliers_enabled: bool,
    /// Where bpffs is, when the probes are to be pinned there and kept attached
    /// across restarts (see [`super::pins`]).
    pub bpffs: Option<&'a Path>,
    /// `[agent] btf`: a BTF file to use instead of the kernel's own.
    pub btf: Option<&'a Path>,
}

/// What a family may consult to resolve its layouts before the object is loaded.
pub struct Kernel<'a> {
    /// nodepulse's own reading of the kernel BTF, `None` without one.
    pub btf: Option<&'a Btf>,
    /// Where tracefs is mounted, if it is.
    pub tracefs: Option<&'a Path>,
}

/// One probe family: its section of `[probes]`, its metric families, its layouts and
/// its probes.
pub trait ProbeFamily: Sync {
    /// The name of its `[probes.<name>]` section.
    fn name(&self) -> &'static str;
    /// The metric families it reports (see [`crate::catalog`]).
    fn catalogue(&self) -> &'static [Family];
    /// The cardinality budget of its labelled metric families.
    fn budget_rules(&self, _limits: &LimitsConfig) -> Vec<Rule> {
        Vec::new()
    }
    /// Checks its section beyond what parsing checks.
    fn validate(&self, _probes: &ProbesConfig) -> Result<(), ConfigError> {
        Ok(())
    }
    /// Whether, as configured, it needs classic tracepoints (and so tracefs mounted).
    fn needs_tracefs(&self, _setup: &Setup<'_>) -> bool {
        false
    }
    /// Whether `family` is measured when its probe attaches via `kind`.
    fn measured_with(&self, _family: &str, _kind: AttachKind) -> bool {
        true
    }
    /// Resolves what its programs need from this kernel.
    fn resolve(&self, setup: &Setup<'_>, kernel: &Kernel<'_>) -> Box<dyn Resolved>;
}

/// One probe of a family as configured (most families have one; KVM has two).
#[derive(Clone, Debug)]
pub struct Plan {
    pub probe: &'static str,
    pub enabled: bool,
    /// The only kind the configuration allows, if it names one.
    pub forced: Option<AttachKind>,
    /// The kinds `check` tries, in chain order.
    pub kinds: &'static [AttachKind],
    /// Why the probe cannot apply to this host, if so (not a failure).
    pub not_applicable: Option<&'static str>,
}

/// A family resolved against this kernel: ready to set the object's globals before
/// loading, then to attach its probes.
pub trait Resolved {
    /// Sets the kernel programs' globals and map sizes.
    fn apply<'a>(&'a self, loader: &mut EbpfLoader<'a>);
    /// Its probes, in attach order.
    fn plans(&self) -> Vec<Plan>;
    /// The attach variants of `probe`: its fallback chain, or only `only`.
    fn variants(&self, probe: &str, only: Option<AttachKind>) -> Vec<Variant>;
    /// Attaches `probe` through its chain (or the configured kind).
    fn attach(&self, probe: &str, ebpf: &mut Ebpf, btf: Option<&aya::Btf>)
    -> Box<dyn super::Probe>;
}

/// What a probe may act on once per interval, after the report's series are built.
pub struct Interval<'a> {
    /// The interval's series, after the cardinality budget.
    pub series: &'a [SeriesReport],
    /// The outlier channel, when outliers are on.
    pub outliers: Option<&'a mut Outliers>,
}

/// The layouts of a family with one probe: the object's globals, and the probe's chain.
pub trait Layouts {
    /// Sets the kernel programs' globals and map sizes.
    fn apply<'a>(&'a self, loader: &mut EbpfLoader<'a>);
    /// The fallback chain, or just `only` when the configuration forces one kind.
    fn variants(&self, only: Option<AttachKind>) -> Vec<Variant>;
}

/// Attaches a one-probe family's probe with its resolved layouts.
pub type Attach<L> = Box<dyn Fn(&L, &mut Ebpf, Option<&aya::Btf>) -> Box<dyn super::Probe>>;

/// [`Resolved`] for a family with one probe.
pub struct OneProbe<L> {
    pub plan: Plan,
    pub layouts: L,
    pub attach: Attach<L>,
}

impl<L: Layouts> Resolved for OneProbe<L> {
    fn apply<'a>(&'a self, loader: &mut EbpfLoader<'a>) {
        self.layouts.apply(loader);
    }

    fn plans(&self) -> Vec<Plan> {
        vec![self.plan.clone()]
    }

    fn variants(&self, _probe: &str, only: Option<AttachKind>) -> Vec<Variant> {
        self.layouts.variants(only)
    }

    fn attach(
        &self,
        _probe: &str,
        ebpf: &mut Ebpf,
        btf: Option<&aya::Btf>,
    ) -> Box<dyn super::Probe> {
        (self.attach)(&self.layouts, ebpf, btf)
    }
}
