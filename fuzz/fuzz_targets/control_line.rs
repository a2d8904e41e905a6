//! Fuzz target: the property `mcpflip::fuzzing::control_line` (see its doc and fuzz/README.md).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| mcpflip::fuzzing::control_line(data));
