//! Embeds the migrations in `sql/` into the binary, in file-name order: plain
//! ones (`.sql`) and the declarations of online ones (`.online`).

use std::{env, fs, path::PathBuf};

fn main() {
    let dir = PathBuf::from(env::var("CARGO_MANIFEST_DIR").expect("set by cargo")).join("sql");
    println!("cargo:rerun-if-changed={}", dir.display());
    let mut files: Vec<PathBuf> = fs::read_dir(&dir)
        .expect("sql/ exists")
        .map(|e| e.expect("readable entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "sql" || e == "online"))
        .collect();
    files.sort();
    let mut out = String::from(
        "/// The migrations in `sql/`, in order: (file name, text).\npub const MIGRATIONS: &[(&str, &str)] = &[\n",
    );
    for f in files {
        println!("cargo:rerun-if-changed={}", f.display());
        let name = f
            .file_name()
            .expect("a file")
            .to_string_lossy()
            .into_owned();
        out.push_str(&format!(
            "    ({name:?}, include_str!({:?})),\n",
            f.display().to_string()
        ));
    }
    out.push_str("];\n");
    fs::write(
        PathBuf::from(env::var("OUT_DIR").expect("set by cargo")).join("migrations.rs"),
        out,
    )
    .expect("OUT_DIR is writable");
}
