#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| coffer_core::audit::fuzzing::verify_export(data));
