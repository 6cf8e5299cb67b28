#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| rollgate_fuzz_harness::ansible_inventory(data));
