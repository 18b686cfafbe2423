#![no_main]
//! See `nodepulse::fuzz`.
libfuzzer_sys::fuzz_target!(init: nodepulse::fuzz::init("http_requests"), |data: &[u8]| {
    (nodepulse::fuzz::target("http_requests").run)(data)
});
