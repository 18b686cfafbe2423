#![no_main]
//! See `nodepulse::fuzz`.
libfuzzer_sys::fuzz_target!(init: nodepulse::fuzz::init("mounts_environ"), |data: &[u8]| {
    (nodepulse::fuzz::target("mounts_environ").run)(data)
});
