//! The layering ARCHITECTURE.md promises, checked on the source: only `source/`
//! uses lapin, only `config.rs` reads the environment, and nothing below the API
//! (the pipeline, storage, the operators' tools, query building) depends on it.

use std::path::{Path, PathBuf};

fn sources(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            sources(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// Every source file as (path relative to `src/`, text).
fn files() -> Vec<(String, String)> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut paths = Vec::new();
    sources(&src, &mut paths);
    paths
        .into_iter()
        .map(|p| {
            let rel = p.strip_prefix(&src).unwrap().to_string_lossy().into_owned();
            (rel, std::fs::read_to_string(&p).unwrap())
        })
        .collect()
}

#[test]
fn only_the_source_uses_lapin() {
    for (path, text) in files() {
        if path.starts_with("source/") {
            continue;
        }
        assert!(
            !text.contains("lapin::") && !text.contains("use lapin"),
            "{path} uses lapin"
        );
    }
}

#[test]
fn only_config_reads_the_environment() {
    for (path, text) in files() {
        if path == "config.rs" {
            continue;
        }
        assert!(
            !text.contains("env::var(") && !text.contains("env::vars("),
            "{path} reads the environment"
        );
    }
}

#[test]
fn nothing_below_the_api_depends_on_it() {
    for (path, text) in files() {
        let below = [
            "source/",
            "sink/",
            "storage/",
            "ops/",
            "batch.rs",
            "query.rs",
            "attest.rs",
            "replay_mark.rs",
            "envelope.rs",
        ]
        .iter()
        .any(|p| path.starts_with(p));
        if below {
            assert!(!text.contains("crate::api"), "{path} depends on api/");
        }
    }
}
