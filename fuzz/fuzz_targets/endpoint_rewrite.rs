//! Fuzz target: the property `mcpflip::fuzzing::endpoint_rewrite` (see its doc and fuzz/README.md).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| mcpflip::fuzzing::endpoint_rewrite(data));
