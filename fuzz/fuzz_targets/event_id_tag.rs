//! Fuzz target: the property `mcpflip::fuzzing::event_id_tag` (see its doc and fuzz/README.md).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| mcpflip::fuzzing::event_id_tag(data));
