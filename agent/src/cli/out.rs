//! Writing to standard output and error without panicking: `println!` panics when the
//! reader has gone (`nodepulse replay x.csv | head -1`). A closed pipe means nobody
//! wants more output, so the process ends quietly with 0; any other write error is
//! said on stderr and ends it with 1.

use std::io::{self, Write};

/// Writes to stdout (see the module doc for errors).
pub fn stdout(args: std::fmt::Arguments) {
    let result = io::stdout().lock().write_fmt(args);
    if let Err(e) = result {
        if e.kind() == io::ErrorKind::BrokenPipe {
            std::process::exit(0);
        }
        stderr(format_args!(
            "nodepulse: cannot write to standard output: {e}\n"
        ));
        std::process::exit(1);
    }
}

/// Writes to stderr; a stderr that cannot be written to is ignored (there is nowhere
/// left to say so).
pub fn stderr(args: std::fmt::Arguments) {
    let _ = io::stderr().lock().write_fmt(args);
}

/// `println!` that never panics.
macro_rules! outln {
    ($($arg:tt)*) => {
        $crate::cli::out::stdout(format_args!("{}\n", format_args!($($arg)*)))
    };
}

/// `eprintln!` that never panics.
macro_rules! errln {
    ($($arg:tt)*) => {
        $crate::cli::out::stderr(format_args!("{}\n", format_args!($($arg)*)))
    };
}
