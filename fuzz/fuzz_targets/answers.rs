//! Fuzz target: the property `mcpflip::fuzzing::answers` (see its doc and fuzz/README.md).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| mcpflip::fuzzing::answers(data));
