#![no_main]
//! See `nodepulse::fuzz`.
libfuzzer_sys::fuzz_target!(init: nodepulse::fuzz::init("configuration"), |data: &[u8]| {
    (nodepulse::fuzz::target("configuration").run)(data)
});
