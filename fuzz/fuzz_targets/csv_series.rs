#![no_main]
//! See `nodepulse::fuzz`.
libfuzzer_sys::fuzz_target!(init: nodepulse::fuzz::init("csv_series"), |data: &[u8]| {
    (nodepulse::fuzz::target("csv_series").run)(data)
});
