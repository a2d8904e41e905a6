//! Fuzz target: the property `mcpflip::fuzzing::last_event_id` (see its doc and fuzz/README.md).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| mcpflip::fuzzing::last_event_id(data));
