#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| okvm_fuzz::target("frames_host")(data));
