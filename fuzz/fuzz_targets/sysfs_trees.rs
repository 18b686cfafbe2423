#![no_main]
//! See `nodepulse::fuzz`.
libfuzzer_sys::fuzz_target!(init: nodepulse::fuzz::init("sysfs_trees"), |data: &[u8]| {
    (nodepulse::fuzz::target("sysfs_trees").run)(data)
});
