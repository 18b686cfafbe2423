//! Where reports go. The console is the default; each exporter gets every report.

pub mod console;
pub mod http;
pub mod otlp;
pub mod prometheus;
pub mod start;

use crate::report::Report;

pub trait Exporter {
    fn name(&self) -> &'static str;
    /// Must not block the collection loop for long: slow sinks queue and drop.
    fn export(&mut self, report: &Report) -> std::io::Result<()>;
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
