#![no_main]
//! See `nodepulse::fuzz`.
libfuzzer_sys::fuzz_target!(init: nodepulse::fuzz::init("recordings"), |data: &[u8]| {
    (nodepulse::fuzz::target("recordings").run)(data)
});
