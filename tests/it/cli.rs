//! The command line refuses what it cannot run before it connects to anything:
//! exit 2, one line naming the option (never an HTTP parameter's name).

use std::process::Command;

use crate::support::TempDb;

/// Runs `candystore ARGS` with no broker or database to reach: (exit code, stderr).
fn run(args: &[&str]) -> (i32, String) {
    run_on("postgres://postgres@127.0.0.1:1/nowhere", args)
}

/// Runs `candystore ARGS` on the database at `url`: (exit code, stderr).
fn run_on(url: &str, args: &[&str]) -> (i32, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_candystore"))
        .args(args)
        .env("DATABASE_URL", url)
        .env("RABBIT_URL", "amqp://guest:guest@127.0.0.1:1/%2f")
        .output()
        .unwrap();
    (
        out.status.code().unwrap(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Asserts `stderr` is one `candystore: …` line in which no cause is repeated.
fn one_line_once(stderr: &str) {
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 1, "one line: {stderr}");
    assert!(lines[0].starts_with("candystore: "), "{stderr}");
    let causes: Vec<&str> = lines[0].split(": ").collect();
    for pair in causes.windows(2) {
        assert_ne!(pair[0], pair[1], "a cause repeated: {stderr}");
    }
}

#[test]
fn a_command_that_fails_says_why_once_on_one_line() {
    let (code, stderr) = run(&["dead-letters", "list"]);
    assert_eq!(code, 1, "{stderr}");
    one_line_once(&stderr);
    assert!(
        stderr.contains("cannot connect to the database"),
        "{stderr}"
    );
}

#[tokio::test]
async fn a_database_without_tables_is_named_with_the_command_that_makes_them() {
    let db = TempDb::new(false).await;
    let (code, stderr) = run_on(&db.url, &["dead-letters", "list"]);
    assert_eq!(code, 1, "{stderr}");
    one_line_once(&stderr);
    assert!(
        stderr.contains(r#"relation "dead_letter" does not exist"#),
        "{stderr}"
    );
    assert!(
        stderr.contains("run `candystore migrate` first"),
        "{stderr}"
    );
    db.drop_it().await;
}

#[tokio::test]
async fn a_dead_letter_id_that_names_none_is_a_usage_error() {
    let db = TempDb::new(true).await;
    let (code, stderr) = run_on(&db.url, &["dead-letters", "show", "999"]);
    assert_eq!(code, 2, "{stderr}");
    one_line_once(&stderr);
    assert!(stderr.contains("no dead letter with id 999"), "{stderr}");
    db.drop_it().await;
}

#[test]
fn a_bad_time_option_is_refused_with_exit_2_naming_that_option() {
    for (args, option) in [
        (
            &["replay", "--exchange", "x", "--since", "yesterday"][..],
            "--since",
        ),
        (
            &["replay", "--exchange", "x", "--until", "2026-13-01"][..],
            "--until",
        ),
        (&["dead-letters", "list", "--since", "soon"][..], "--since"),
        (
            &["dead-letters", "purge", "--until", "later"][..],
            "--until",
        ),
        (
            &["archive", "--before", "junk", "--to", "/nonexistent"][..],
            "--before",
        ),
    ] {
        let (code, stderr) = run(args);
        assert_eq!(code, 2, "{args:?}: {stderr}");
        assert!(stderr.contains(option), "{args:?} names {option}: {stderr}");
        assert!(
            stderr.contains("expected YYYY-MM-DD or an RFC 3339 time"),
            "{stderr}"
        );
        for other in ["--since", "--until", "--before"] {
            if other != option {
                assert!(!stderr.contains(other), "{args:?} names {other}: {stderr}");
            }
        }
    }
}

#[test]
fn a_bad_replay_filter_names_its_option_not_an_api_parameter() {
    for (args, option, reason) in [
        (
            &["replay", "--exchange", "x", "--payload-contains", "[1]"][..],
            "--payload-contains",
            "must be a JSON object",
        ),
        (
            &["replay", "--exchange", "x", "--session-id", ""][..],
            "--session-id",
            "must be non-empty text",
        ),
    ] {
        let (code, stderr) = run(args);
        assert_eq!(code, 2, "{args:?}: {stderr}");
        assert!(stderr.contains(option), "{stderr}");
        assert!(stderr.contains(reason), "{stderr}");
        assert!(!stderr.contains("parameter"), "{stderr}");
        assert!(!stderr.contains("payload_contains"), "{stderr}");
    }
    let (code, stderr) = run(&[
        "replay",
        "--exchange",
        "x",
        "--since",
        "2026-12-05",
        "--until",
        "2026-12-04",
    ]);
    assert_eq!(code, 2, "{stderr}");
    assert!(
        stderr.contains("invalid --until: it is before --since"),
        "{stderr}"
    );
}
