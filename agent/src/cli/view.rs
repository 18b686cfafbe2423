//! `nodepulse view`: a recording as one HTML page.

use std::{io::Write, process::ExitCode};

use super::{EXIT_CONFIG, ViewArgs, config_error};
use crate::{
    config::{Config, Overrides},
    view::{self, Options},
};

pub fn view(args: ViewArgs) -> ExitCode {
    if !(args.stretch.is_finite() && args.stretch >= 1.0) {
        errln!(
            "nodepulse: --stretch must be a number of at least 1, got {}",
            args.stretch
        );
        return ExitCode::from(EXIT_CONFIG);
    }
    let config = match Config::load(args.config.as_deref(), &Overrides::default()) {
        Ok(c) => c,
        Err(e) => return config_error(e),
    };
    let options = Options {
        max_columns: args.columns as usize,
        detect: args.detect.then_some(config.detect),
        capacity: Some((config.capacity, args.stretch)),
    };
    let data = match view::read_file(&args.file, &options) {
        Ok(d) => d,
        Err(e) => {
            errln!("nodepulse: {e}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    let page = view::html::page(&data, None);
    let written = if args.output.as_os_str() == "-" {
        std::io::stdout().lock().write_all(page.as_bytes())
    } else {
        std::fs::write(&args.output, &page)
    };
    if let Err(e) = written {
        errln!(
            "nodepulse: cannot write {}: {e}; choose a writable path with --output",
            args.output.display()
        );
        return ExitCode::FAILURE;
    }
    errln!(
        "view: {} series, {} alarm(s), {} reports in {} columns, {} capacity resource(s); \
         {} KiB written to {}",
        data.series.len(),
        data.alarms.len(),
        data.reports,
        data.times.len(),
        data.capacity.as_ref().map_or(0, |c| c.resources.len()),
        page.len() / 1024,
        args.output.display()
    );
    ExitCode::SUCCESS
}
