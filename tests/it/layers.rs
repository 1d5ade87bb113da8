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
            "source/", "sink/", "store/", "storage/", "ops/", "model/", "audit/",
        ]
        .iter()
        .any(|p| path.starts_with(p));
        if below {
            assert!(!text.contains("crate::api"), "{path} depends on api/");
        }
    }
}

/// The crate's top-level modules, highest first: each may import only those
/// after it (ARCHITECTURE.md, "Layers"). `main.rs` and `lib.rs` sit above all.
const ORDER: &[&str] = &[
    // The binary's commands (`main.rs` and `cli/`), which reach the library
    // as `candystore::`: above everything.
    "cli",
    "app",
    "api",
    "ops",
    "sink",
    "store",
    "config",
    "schema",
    "storage",
    "audit",
    "source",
    "metrics",
    "jobs",
    "db",
    "model",
    "telemetry",
    "retry",
];

/// The top-level modules `text` names through `crate::` (comments skipped):
/// `crate::a::…` and each first segment of `crate::{a, b::{…}}`.
fn crate_imports(text: &str) -> Vec<String> {
    let code: String = text
        .lines()
        .filter(|l| !l.trim_start().starts_with("//"))
        .collect::<Vec<_>>()
        .join("\n");
    let mut out = Vec::new();
    let mut rest = code.as_str();
    while let Some(at) = rest.find("crate::") {
        rest = &rest[at + "crate::".len()..];
        if let Some(group) = rest.strip_prefix('{') {
            // The group up to its closing brace, cut at the commas of depth 0.
            let (mut depth, mut parts, mut start) = (0, Vec::new(), 0);
            for (i, c) in group.char_indices() {
                match c {
                    '{' => depth += 1,
                    '}' if depth == 0 => {
                        parts.push(&group[start..i]);
                        break;
                    }
                    '}' => depth -= 1,
                    ',' if depth == 0 => {
                        parts.push(&group[start..i]);
                        start = i + 1;
                    }
                    _ => {}
                }
            }
            for part in parts {
                let name: String = part
                    .trim()
                    .chars()
                    .take_while(|c| c.is_alphanumeric() || *c == '_')
                    .collect();
                if !name.is_empty() {
                    out.push(name);
                }
            }
        } else {
            let name: String = rest
                .chars()
                .take_while(|c| c.is_alphanumeric() || *c == '_')
                .collect();
            out.push(name);
        }
    }
    out
}

/// Every (importer, imported) pair of top-level modules, with a file that does it.
fn module_imports() -> Vec<(String, String, String)> {
    let mut pairs = Vec::new();
    for (path, text) in files() {
        let top = path
            .split('/')
            .next()
            .unwrap()
            .trim_end_matches(".rs")
            .to_owned();
        if top == "main" || top == "lib" {
            continue;
        }
        for name in crate_imports(&text) {
            if name != top && !pairs.iter().any(|(a, b, _)| *a == top && *b == name) {
                pairs.push((top.clone(), name, path.clone()));
            }
        }
    }
    pairs
}

#[test]
fn every_import_points_down_the_stated_order() {
    let rank = |m: &str| ORDER.iter().position(|o| *o == m);
    let mut up = Vec::new();
    for (from, to, path) in module_imports() {
        let (Some(a), Some(b)) = (rank(&from), rank(&to)) else {
            panic!("{path}: module {from} or {to} is not in ORDER (tests/it/layers.rs)");
        };
        if a >= b {
            up.push(format!("{path}: {from} imports {to}, which is above it"));
        }
    }
    assert!(up.is_empty(), "imports pointing up:\n{}", up.join("\n"));
}

#[test]
fn every_module_is_placed_in_the_order() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    for entry in std::fs::read_dir(src).unwrap() {
        let name = entry.unwrap().file_name().to_string_lossy().into_owned();
        let module = name.trim_end_matches(".rs");
        if module == "main" || module == "lib" {
            continue;
        }
        assert!(ORDER.contains(&module), "src/{name} is not in ORDER");
    }
}

#[test]
fn a_grouped_crate_import_names_each_of_its_modules() {
    assert_eq!(
        crate_imports("use crate::{db::{self, PgTarget}, storage::Table, hex};\n// crate::api\n"),
        ["db", "storage", "hex"]
    );
    assert_eq!(
        crate_imports("let x = crate::query::EventQuery::default();"),
        ["query"]
    );
}
