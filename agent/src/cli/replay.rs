//! `nodepulse replay`: the detector over a recording or a CSV, offline.

use std::{fs::File, io::BufReader, process::ExitCode};

use super::{EXIT_CONFIG, ReplayArgs, ReplayFormat, config_error};
use crate::{
    config::{Config, Overrides},
    detect::{
        Alarm, AlarmState,
        replay::{replay_csv, replay_recording},
    },
};

pub fn replay(args: ReplayArgs) -> ExitCode {
    let config = match Config::load(args.config.as_deref(), &Overrides::default()) {
        Ok(c) => c,
        Err(e) => return config_error(e),
    };
    let path = args.file.display().to_string();
    let file = match File::open(&args.file) {
        Ok(f) => BufReader::new(f),
        Err(e) => {
            errln!("nodepulse: cannot read {path}: {e}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    let csv = args.csv
        || args
            .file
            .extension()
            .is_some_and(|e| e.eq_ignore_ascii_case("csv"));
    let result = if csv {
        replay_csv(&path, file, &config.detect).map(|(rows, alarms)| {
            outln!("timestamp,value,score");
            for r in rows {
                outln!("{},{},{:.3}", r.timestamp, r.value, r.score);
            }
            alarms
        })
    } else {
        replay_recording(&path, file, &config.detect).inspect(|alarms| {
            for a in alarms {
                match args.format {
                    ReplayFormat::Json => {
                        outln!("{}", serde_json::to_string(a).unwrap_or_default())
                    }
                    ReplayFormat::Table => outln!(
                        "{:<9} {:<8} {}  [{}]",
                        a.state.as_str().to_uppercase(),
                        a.severity.as_str(),
                        a.summary,
                        a.id
                    ),
                }
            }
        })
    };
    match result {
        Ok(alarms) => {
            errln!("{}", tally(&alarms));
            ExitCode::SUCCESS
        }
        Err(e) => {
            errln!("nodepulse: {e}");
            ExitCode::FAILURE
        }
    }
}

/// "2 alarms opened, 1 resolved, 1 still open at the end".
fn tally(alarms: &[Alarm]) -> String {
    let count = |state| alarms.iter().filter(|a| a.state == state).count();
    let (opened, resolved) = (count(AlarmState::Open), count(AlarmState::Resolved));
    format!(
        "replay: {opened} alarm(s) opened, {resolved} resolved, {} still open at the end",
        opened.saturating_sub(resolved)
    )
}
