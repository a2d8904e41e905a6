//! Fuzz target: the property `mcpflip::fuzzing::proxy_protocol` (see its doc and fuzz/README.md).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| mcpflip::fuzzing::proxy_protocol(data));
