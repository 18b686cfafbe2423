#![no_main]
//! See `nodepulse::fuzz`.
libfuzzer_sys::fuzz_target!(init: nodepulse::fuzz::init("otlp_answers"), |data: &[u8]| {
    (nodepulse::fuzz::target("otlp_answers").run)(data)
});
