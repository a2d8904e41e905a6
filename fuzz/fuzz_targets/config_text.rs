//! Fuzz target: the property `mcpflip::fuzzing::config_text` (see its doc and fuzz/README.md).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| mcpflip::fuzzing::config_text(data));
