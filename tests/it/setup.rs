//! The set-up a fresh machine gets from `make run` and `make test`:
//! `scripts/ensure-services.sh` decides what to install and start for which
//! store and purpose, shown with `--plan` against machines it is told about.

use std::process::Command;

/// The script's plan for a machine with `open` ports answering, `installed`
/// services, apt-get or not: its lines, in order.
fn plan(
    purpose: &str,
    database_url: Option<&str>,
    open: &str,
    installed: &str,
    apt: bool,
) -> Vec<String> {
    let mut cmd = Command::new("bash");
    cmd.arg(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/scripts/ensure-services.sh"
    ))
    .args(["--for", purpose, "--plan"])
    .env("ENSURE_OPEN", open)
    .env("ENSURE_INSTALLED", installed)
    .env("ENSURE_APT", if apt { "yes" } else { "no" })
    .env_remove("DATABASE_URL");
    if let Some(url) = database_url {
        cmd.env("DATABASE_URL", url);
    }
    lines(cmd)
}

/// The lines a script printed, once it succeeded.
fn lines(mut cmd: Command) -> Vec<String> {
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(str::to_owned)
        .collect()
}

const PG_URL: &str = "postgres://postgres@127.0.0.1:5432/candystore";

#[test]
fn a_machine_with_both_services_running_gets_nothing() {
    assert_eq!(
        plan("test", None, "5432 5672", "postgresql rabbitmq", true),
        [
            "postgresql: running on 127.0.0.1:5432",
            "rabbitmq: running on 127.0.0.1:5672"
        ]
    );
}

#[test]
fn installed_services_that_are_down_are_started_not_installed() {
    assert_eq!(
        plan("run", Some(PG_URL), "", "postgresql rabbitmq", true),
        [
            "postgresql: installed, start it",
            "rabbitmq: installed, start it"
        ]
    );
}

#[test]
fn a_fresh_debian_machine_installs_what_the_store_and_the_purpose_need() {
    // The default store is the embedded file: only the broker.
    assert_eq!(
        plan("run", None, "", "", true),
        [
            "postgresql: not needed (DATABASE_URL=sqlite:candystore.db)",
            "rabbitmq: install with apt-get, then start it"
        ]
    );
    // A PostgreSQL URL given whole: both.
    assert_eq!(
        plan("run", Some("postgres://me@127.0.0.1/events"), "", "", true),
        [
            "postgresql: install with apt-get, then start it",
            "rabbitmq: install with apt-get, then start it"
        ]
    );
    // An embedded store runs without PostgreSQL: only the broker.
    assert_eq!(
        plan("run", Some("sqlite:candystore.db"), "", "", true),
        [
            "postgresql: not needed (DATABASE_URL=sqlite:candystore.db)",
            "rabbitmq: install with apt-get, then start it"
        ]
    );
    // The tests need PostgreSQL whatever the URL.
    assert_eq!(
        plan(
            "test",
            Some("sqlite:candystore.db"),
            "5672",
            "rabbitmq",
            true
        ),
        [
            "postgresql: install with apt-get, then start it",
            "rabbitmq: running on 127.0.0.1:5672"
        ]
    );
}

#[test]
fn a_machine_without_apt_is_told_the_one_command_that_gets_a_missing_service() {
    assert_eq!(
        plan("run", Some(PG_URL), "5432", "postgresql", false),
        [
            "postgresql: running on 127.0.0.1:5432",
            "rabbitmq: missing, and no apt-get here: docker compose -f ops/compose.yaml up -d rabbitmq"
        ]
    );
}

#[test]
fn every_production_file_the_project_ships_names_postgresql() {
    for (file, line) in [
        ("Dockerfile", "ENV DATABASE_URL=postgres://"),
        (
            "ops/systemd/candystore.service",
            "Environment=DATABASE_URL=postgres://",
        ),
        ("ops/compose.yaml", "DATABASE_URL: postgres://"),
        (
            "config/high-throughput.toml",
            "database_url = \"postgres://",
        ),
    ] {
        let text =
            std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/").to_owned() + file)
                .unwrap();
        assert!(
            text.lines().any(|l| l.trim_start().starts_with(line)),
            "{file} names no PostgreSQL store ({line}…)"
        );
    }
}

/// `scripts/ensure-toolchain.sh --plan` for a machine with `rustc` (a version,
/// or none), rustup, a C compiler, curl and apt-get or not: its lines.
fn toolchain_plan(rustc: &str, rustup: bool, cc: bool, curl: bool, apt: bool) -> Vec<String> {
    let yes = |b: bool| if b { "yes" } else { "no" };
    let mut cmd = Command::new("bash");
    cmd.arg(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/scripts/ensure-toolchain.sh"
    ))
    .arg("--plan")
    .env("ENSURE_RUSTC", rustc)
    .env("ENSURE_RUSTUP", yes(rustup))
    .env("ENSURE_CC", yes(cc))
    .env("ENSURE_CURL", yes(curl))
    .env("ENSURE_APT", yes(apt));
    lines(cmd)
}

#[test]
fn the_toolchain_is_installed_on_a_machine_with_nothing_and_left_alone_where_it_suffices() {
    let need = env!("CARGO_PKG_RUST_VERSION");
    // A machine with nothing: curl and a C compiler from apt-get, then rustup.
    assert_eq!(
        toolchain_plan("none", false, false, false, true),
        [
            "rust: missing: curl with apt-get, then rustup's installer, stable, into ~/.cargo",
            "cc: missing: build-essential with apt-get"
        ]
    );
    // Rust new enough and a compiler: nothing.
    assert_eq!(
        toolchain_plan("1.95.0", true, true, true, true),
        [
            format!("rust: rustc 1.95.0 (at least {need})"),
            "cc: present".to_owned()
        ]
    );
    // An older rustup toolchain is updated; an older system rustc gets rustup beside it.
    assert_eq!(
        toolchain_plan("1.80.0", true, true, true, false)[0],
        format!("rust: rustc 1.80.0 is older than {need}: rustup update stable")
    );
    assert_eq!(
        toolchain_plan("1.63.0", false, true, true, true)[0],
        format!(
            "rust: rustc 1.63.0 is older than {need} and not rustup's: rustup's installer, stable, into ~/.cargo"
        )
    );
    // No apt-get: what is missing is named, nothing guessed.
    assert_eq!(
        toolchain_plan("none", false, false, false, false),
        [
            "rust: missing: rustup's installer, stable, into ~/.cargo (needs curl)",
            "cc: missing, and no apt-get here: install a C compiler (gcc or clang)"
        ]
    );
}
