//! The reference in `docs/` is kept current: every variable with its default and
//! every metric the code defines is listed in `docs/contract.md`, and nothing
//! points at files a user of the repository does not have.

use std::path::Path;

fn read(path: &str) -> String {
    std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join(path)).unwrap()
}

#[test]
fn the_contract_lists_every_variable_with_its_default() {
    let contract = read("docs/contract.md");
    for v in candystore::config::VARIABLES {
        let row = format!("| `{}` | `{}`", v.name, v.default);
        assert!(
            contract.contains(&row),
            "docs/contract.md has no row starting {row:?}"
        );
    }
}

/// Every `"candystore_…"` string literal under `dir`.
fn metric_names(dir: &Path, out: &mut Vec<String>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            metric_names(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            let text = std::fs::read_to_string(&path).unwrap();
            for piece in text.split("\"candystore_").skip(1) {
                let name: String = piece
                    .chars()
                    .take_while(|c| c.is_ascii_lowercase() || *c == '_')
                    .collect();
                if piece[name.len()..].starts_with('"') {
                    out.push(format!("candystore_{name}"));
                }
            }
        }
    }
}

#[test]
fn the_contract_lists_every_metric() {
    let contract = read("docs/contract.md");
    let mut names = Vec::new();
    metric_names(
        &Path::new(env!("CARGO_MANIFEST_DIR")).join("src"),
        &mut names,
    );
    names.sort();
    names.dedup();
    assert!(names.len() > 40, "found only {names:?}");
    for name in names {
        assert!(
            contract.contains(&format!("`{name}`")) || contract.contains(&format!("`{name}{{")),
            "docs/contract.md does not list {name}"
        );
    }
}

#[test]
fn the_documents_point_only_at_files_the_repository_has() {
    for doc in [
        "README.md",
        "ARCHITECTURE.md",
        "docs/contract.md",
        "docs/envelopes.md",
        "docs/RELIABILITY.md",
    ] {
        let text = read(doc);
        assert!(
            !text.contains("../shared") && !text.contains("shared/spec"),
            "{doc} points at ../shared/, which a user of the repository does not have"
        );
    }
}

/// Every `docs/….md` and `reports/…` a document or a source file names exists:
/// moving an argument out of ARCHITECTURE.md leaves no pointer behind.
#[test]
fn every_document_a_file_points_to_exists() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut files = vec![root.join("README.md"), root.join("ARCHITECTURE.md")];
    for dir in [
        "docs",
        "src",
        "src/api",
        "src/storage",
        "src/sink",
        "src/source",
        "src/audit",
        "sql",
    ] {
        for e in std::fs::read_dir(root.join(dir)).unwrap() {
            let p = e.unwrap().path();
            if p.is_file() {
                files.push(p);
            }
        }
    }
    for file in files {
        let text = std::fs::read_to_string(&file).unwrap();
        for prefix in ["docs/", "reports/"] {
            for (at, _) in text.match_indices(prefix) {
                let name: String = text[at..]
                    .chars()
                    .take_while(|c| c.is_alphanumeric() || "/._-".contains(*c))
                    .collect();
                let name = name.trim_end_matches(['.', '/']);
                // Only whole file names (a pattern such as `reports/query-*.md` is not one).
                if !name.ends_with(".md") && !name.ends_with(".txt") && !name.ends_with(".svg") {
                    continue;
                }
                assert!(
                    root.join(name).exists(),
                    "{} points at {name}, which does not exist",
                    file.display()
                );
            }
        }
    }
}

#[tokio::test]
async fn help_lists_every_variable_with_its_default_and_the_exit_codes() {
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_candystore"))
        .arg("--help")
        .env_clear()
        .output()
        .await
        .unwrap();
    assert!(out.status.success());
    let help = String::from_utf8(out.stdout).unwrap();
    for v in candystore::config::VARIABLES {
        let line = help
            .lines()
            .find(|l| l.trim_start().starts_with(&format!("{} ", v.name)))
            .unwrap_or_else(|| panic!("--help does not list {}:\n{help}", v.name));
        let default = if v.default.is_empty() {
            "[default: unset]".to_owned()
        } else {
            format!("[default: {:?}]", v.default)
        };
        assert!(line.contains(&default), "{line}");
    }
    for code in ["0 ", "2 ", "70 ", "75 "] {
        assert!(
            help.lines().any(|l| l.trim_start().starts_with(code)),
            "exit code {code} in:\n{help}"
        );
    }
}
