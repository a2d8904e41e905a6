//! Fuzz target: the property `mcpflip::fuzzing::sse_scanner` (see its doc and fuzz/README.md).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| mcpflip::fuzzing::sse_scanner(data));
