//! Replays every committed fuzz corpus file (`fuzz/corpus/<target>/`) through
//! the property its target checks (`mcpflip::fuzzing`), on stable, in seconds:
//! what the fuzzer once reached stays covered by `cargo test` and `.ci/run`
//! without nightly or libFuzzer. The inputs that once broke a property are in
//! `tests/fuzz_found.rs`, each with the defect it showed.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::Path;

fn replay(target: &str, property: fn(&[u8])) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/corpus")
        .join(target);
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.expect("a directory entry").path())
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    // A corpus that vanished would make this test pass on nothing.
    assert!(
        files.len() >= 3,
        "{}: only {} corpus files",
        dir.display(),
        files.len()
    );
    let mut failed = Vec::new();
    for f in &files {
        let data = std::fs::read(f).unwrap_or_else(|e| panic!("{}: {e}", f.display()));
        if catch_unwind(AssertUnwindSafe(|| property(&data))).is_err() {
            failed.push(f.display().to_string());
        }
    }
    assert!(
        failed.is_empty(),
        "{target}: {} of {} corpus files break the property: {failed:?}",
        failed.len(),
        files.len()
    );
}

#[test]
fn h1_response_corpus() {
    replay("h1_response", mcpflip::fuzzing::h1_response);
}

#[test]
fn h1_request_corpus() {
    replay("h1_request", mcpflip::fuzzing::h1_request);
}

#[test]
fn event_id_tag_corpus() {
    replay("event_id_tag", mcpflip::fuzzing::event_id_tag);
}

#[test]
fn last_event_id_corpus() {
    replay("last_event_id", mcpflip::fuzzing::last_event_id);
}

#[test]
fn sse_scanner_corpus() {
    replay("sse_scanner", mcpflip::fuzzing::sse_scanner);
}

#[test]
fn endpoint_rewrite_corpus() {
    replay("endpoint_rewrite", mcpflip::fuzzing::endpoint_rewrite);
}

#[test]
fn session_tag_corpus() {
    replay("session_tag", mcpflip::fuzzing::session_tag);
}

#[test]
fn host_guard_corpus() {
    replay("host_guard", mcpflip::fuzzing::host_guard);
}

#[test]
fn control_line_corpus() {
    replay("control_line", mcpflip::fuzzing::control_line);
}

#[test]
fn config_text_corpus() {
    replay("config_text", mcpflip::fuzzing::config_text);
}

#[test]
fn state_file_corpus() {
    replay("state_file", mcpflip::fuzzing::state_file);
}

#[test]
fn proxy_protocol_corpus() {
    replay("proxy_protocol", mcpflip::fuzzing::proxy_protocol);
}

#[test]
fn answers_corpus() {
    replay("answers", mcpflip::fuzzing::answers);
}
