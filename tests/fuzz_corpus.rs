//! The fuzzers' corpora (`fuzz/corpus/TARGET/`) and every crash they found (`fuzz/regressions/TARGET/`,
//! minimised) replayed through the checks the fuzz targets run (`stackinit::fuzzing`), on stable: a
//! regression fails `cargo test` without nightly or cargo-fuzz. Fuzzing itself: `fuzz/run.sh`.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};

fn inputs(target: &str) -> Vec<PathBuf> {
    let fuzz = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz");
    let mut files = Vec::new();
    for dir in ["corpus", "regressions"] {
        let Ok(entries) = std::fs::read_dir(fuzz.join(dir).join(target)) else {
            continue;
        };
        files.extend(entries.filter_map(|e| e.ok()).map(|e| e.path()));
    }
    files.sort();
    files
}

/// Run every input of `target`, then fail naming each input that broke a check.
fn replay(target: &str, check: fn(&[u8]), at_least: usize) {
    let files = inputs(target);
    assert!(
        files.len() >= at_least,
        "{target}: {} inputs, expected the committed corpus",
        files.len()
    );
    let failed: Vec<String> = files
        .iter()
        .filter(|file| {
            let data = std::fs::read(file).unwrap();
            catch_unwind(AssertUnwindSafe(|| check(&data))).is_err()
        })
        .map(|file| file.display().to_string())
        .collect();
    assert!(failed.is_empty(), "{target}: failed on {failed:#?}");
}

#[test]
fn config_corpus() {
    replay("config", stackinit::fuzzing::config, 50);
}

#[test]
fn host_corpus() {
    replay("host", stackinit::fuzzing::host, 50);
}

#[test]
fn uri_path_corpus() {
    replay("uri_path", stackinit::fuzzing::uri_path, 20);
}

#[test]
fn notify_corpus() {
    replay("notify", stackinit::fuzzing::notify, 10);
}

#[test]
fn control_corpus() {
    replay("control", stackinit::fuzzing::control, 20);
}
