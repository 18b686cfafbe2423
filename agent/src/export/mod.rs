//! Where reports go. The console is the default; each exporter gets every report.

pub mod console;
pub mod http;
pub mod otlp;
pub mod prometheus;
pub mod start;

use crate::report::Report;

/// What to do once a report has left (see [`Exporter::export_then`]).
pub type Then = Box<dyn FnOnce() + Send>;

pub trait Exporter {
    fn name(&self) -> &'static str;
    /// Does the slow part of exporting `report` (encoding it) ahead of the `export` of
    /// the same report, which then only hands the result out. The collection loop saves
    /// its state between the two: a kill after the save and before the hand-out loses
    /// the report's deltas, so as little as possible stands between them.
    fn prepare(&mut self, _report: &Report) {}
    /// Must not block the collection loop for long: slow sinks queue and drop.
    fn export(&mut self, report: &Report) -> std::io::Result<()>;
    /// [`Self::export`], then `then` (the state saved with this report put in place)
    /// once the report has left, or `then` handed back for the caller to run. The
    /// console takes it: a report queued for its writer thread is only out once that
    /// thread has written it, and a kill in between must not leave a state that says
    /// it was (the report's deltas were lost: one interval in twenty kills).
    fn export_then(&mut self, report: &Report, then: Then) -> (std::io::Result<()>, Option<Then>) {
        (self.export(report), Some(then))
    }
    /// Nobody reads this output any more (a closed pipe): when every exporter says so,
    /// the agent ends, as `nodepulse run | head` expects.
    fn closed(&self) -> bool {
        false
    }
    /// When it last exported (unix ns), for an exporter whose delta intervals end
    /// there: its replacement at a reload starts the next interval from it.
    fn last_export(&self) -> Option<u64> {
        None
    }
}

/// What an exporter prepared for one report, taken by that report's export. A report
/// exported without being prepared (a reload feeding the last report to a new
/// exporter) finds nothing and is encoded then.
pub struct Prepared<T>(Option<(usize, T)>);

impl<T> Default for Prepared<T> {
    fn default() -> Self {
        Self(None)
    }
}

impl<T> Prepared<T> {
    pub fn put(&mut self, report: &Report, value: T) {
        self.0 = Some((std::ptr::from_ref(report).addr(), value));
    }

    /// What was prepared for `report`, if anything. The loop exports each report right
    /// after preparing it, so what is kept belongs to the report at that address.
    pub fn take(&mut self, report: &Report) -> Option<T> {
        match self.0.take() {
            Some((at, value)) if at == std::ptr::from_ref(report).addr() => Some(value),
            _ => None,
        }
    }
}
