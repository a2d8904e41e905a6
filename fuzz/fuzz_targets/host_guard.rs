//! Fuzz target: the property `mcpflip::fuzzing::host_guard` (see its doc and fuzz/README.md).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| mcpflip::fuzzing::host_guard(data));
