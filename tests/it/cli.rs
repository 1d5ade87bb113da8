//! The command line refuses what it cannot run before it connects to anything:
//! exit 2, one line naming the option (never an HTTP parameter's name).

use std::process::Command;

/// Runs `candystore ARGS` with no broker or database to reach: (exit code, stderr).
fn run(args: &[&str]) -> (i32, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_candystore"))
        .args(args)
        .env("DATABASE_URL", "postgres://postgres@127.0.0.1:1/nowhere")
        .env("RABBIT_URL", "amqp://guest:guest@127.0.0.1:1/%2f")
        .output()
        .unwrap();
    (
        out.status.code().unwrap(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
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
