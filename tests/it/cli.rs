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

#[tokio::test]
async fn an_event_sent_by_hand_from_standard_input_is_stored() {
    use tokio::io::AsyncWriteExt;
    let app = crate::helpers::spawn_app().await;
    let settings = app.settings();
    let body = serde_json::json!({
        "event_id": "by-hand-1",
        "event_type": "agent.task.started",
        "source": "a-person",
        "timestamp": "2026-12-06T10:00:00Z",
        "payload": {"note": "sent with candystore send"}
    })
    .to_string();
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_candystore"))
        .args(["send", "agent.task.started"])
        .env_clear()
        .env("RABBIT_URL", crate::helpers::AMQP)
        .env("RABBIT_EXCHANGE", &app.exchange)
        .env("DATABASE_URL", &settings.database_url)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(body.as_bytes()).await.unwrap();
    drop(stdin);
    let out = child.wait_with_output().await.unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("(confirmed)"), "{stdout}");
    app.wait_for_rows("events", 1).await;
    let event = app.get_json("/events/by-hand-1").await;
    assert_eq!(event["source"], "a-person", "{event}");
    assert_eq!(event["payload"]["note"], "sent with candystore send");
    // A file that is not there is a usage error naming it.
    let (code, stderr) = run(&["send", "k", "/nonexistent/event.json"]);
    assert_eq!(code, 2, "{stderr}");
    assert!(
        stderr.contains("cannot read /nonexistent/event.json"),
        "{stderr}"
    );
}

/// `candystore check` with these variables: (exit code, stdout).
fn check(vars: &[(&str, &str)]) -> (i32, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_candystore"))
        .arg("check")
        .env_clear()
        .env("RABBIT_URL", crate::helpers::AMQP)
        .env("METRICS_PORT", "0")
        .envs(vars.iter().copied())
        .output()
        .unwrap();
    (
        out.status.code().unwrap(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

#[tokio::test]
async fn check_passes_where_serve_can_start_and_names_each_thing_that_would_stop_it() {
    let app = crate::helpers::spawn_app().await;
    let settings = app.settings();
    let key = app.key_file();
    let key = key.to_str().unwrap();
    let (code, out) = check(&[
        ("DATABASE_URL", &settings.database_url),
        ("RABBIT_EXCHANGE", &app.exchange),
        ("RABBIT_QUEUE", &app.queue),
        ("API_PORT", "0"),
        ("SIGNING_KEY_FILE", key),
    ]);
    assert_eq!(code, 0, "{out}");
    for line in [
        "ok    schema: every migration applied",
        &format!("ok    exchange: {:?} exists", app.exchange),
        &format!(
            "ok    binding: a queue can be bound to {:?} with #",
            app.exchange
        ),
        "1 consumer(s)",
        "every check holds",
    ] {
        assert!(out.contains(line), "{line}: {out}");
    }

    // A database not migrated, and an API port taken.
    let db = TempDb::new(false).await;
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port().to_string();
    let (code, out) = check(&[
        ("DATABASE_URL", &db.url),
        ("RABBIT_EXCHANGE", &app.exchange),
        ("RABBIT_QUEUE", &app.queue),
        ("API_HOST", "127.0.0.1"),
        ("API_PORT", &port),
        ("SIGNING_KEY_FILE", key),
    ]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("FAIL  schema: "), "{out}");
    assert!(out.contains("run `candystore migrate`"), "{out}");
    assert!(
        out.contains(&format!(
            "FAIL  API port: cannot listen on 127.0.0.1:{port}"
        )),
        "{out}"
    );
    assert!(out.contains("2 check(s) failed"), "{out}");
    db.drop_it().await;
}

#[tokio::test]
async fn migrate_creates_the_database_its_url_names_only_when_asked() {
    let name = crate::support::unique_name("cs_create");
    let url = format!("{}/{name}", crate::support::PG);
    let (code, stderr) = run_on(&url, &["migrate"]);
    assert_eq!(code, 1, "{stderr}");
    one_line_once(&stderr);
    assert!(
        stderr.contains(&format!(r#"database "{name}" does not exist"#))
            && stderr.contains("run `candystore migrate --create-database`"),
        "{stderr}"
    );
    let out = Command::new(env!("CARGO_BIN_EXE_candystore"))
        .args(["migrate", "--create-database"])
        .env("DATABASE_URL", &url)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.starts_with(&format!("created database {name}\n")),
        "{stdout}"
    );
    // A command logs only what went wrong at the default level: its stdout says what it did.
    assert!(
        out.stderr.is_empty(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let db = crate::support::connect(&url).await;
    candystore::schema::check_schema(&db).await.unwrap();
    drop(db);
    crate::support::connect(&format!("{}/postgres", crate::support::PG))
        .await
        .batch_execute(&format!("DROP DATABASE {name} WITH (FORCE)"))
        .await
        .unwrap();
}
