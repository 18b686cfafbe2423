#![no_main]
//! See `nodepulse::fuzz`.
libfuzzer_sys::fuzz_target!(init: nodepulse::fuzz::init("qemu_cmdline"), |data: &[u8]| {
    (nodepulse::fuzz::target("qemu_cmdline").run)(data)
});
