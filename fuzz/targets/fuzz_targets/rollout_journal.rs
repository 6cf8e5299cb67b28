#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| rollgate_fuzz_harness::rollout_journal(data));
