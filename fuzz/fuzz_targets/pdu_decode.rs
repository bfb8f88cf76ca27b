#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| rtgt::fuzzing::pdu_decode(data));
