#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| redrive_connectors::fuzz::csv(data));
