#![no_main]
//! See `nodepulse::fuzz`.
libfuzzer_sys::fuzz_target!(init: nodepulse::fuzz::init("names"), |data: &[u8]| {
    (nodepulse::fuzz::target("names").run)(data)
});
