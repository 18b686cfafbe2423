#![no_main]
//! See `nodepulse::fuzz`.
libfuzzer_sys::fuzz_target!(init: nodepulse::fuzz::init("libvirt_xml"), |data: &[u8]| {
    (nodepulse::fuzz::target("libvirt_xml").run)(data)
});
