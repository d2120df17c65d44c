#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| coffer_store::audit_codec::fuzzing::render_stored(data));
