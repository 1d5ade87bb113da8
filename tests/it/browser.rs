//! The live tail from a browser with auth on: a page served from another origin
//! asks for a ticket with its bearer token (a CORS fetch), then follows the tail
//! with EventSource, in headless Chromium (Debian's `chromium`, which `make test`
//! installs when it is missing).

use std::time::Duration;

use candystore::app::AppOptions;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::mpsc;

use crate::helpers::{gen1, spawn_app_with};

const TOKEN: &str = "browser-token-0123456789";
const CHROMIUM: &str = "/usr/bin/chromium";

/// Serves `page` at `/` and reports every other path requested (the page's
/// signals) on the channel.
async fn serve_page(listener: TcpListener, page: String, seen: mpsc::Sender<String>) {
    loop {
        let Ok((mut socket, _)) = listener.accept().await else {
            return;
        };
        let page = page.clone();
        let seen = seen.clone();
        tokio::spawn(async move {
            let mut buf = vec![0u8; 8192];
            let mut n = 0;
            while !buf[..n].windows(4).any(|w| w == b"\r\n\r\n") && n < buf.len() {
                match socket.read(&mut buf[n..]).await {
                    Ok(0) | Err(_) => return,
                    Ok(k) => n += k,
                }
            }
            let head = String::from_utf8_lossy(&buf[..n]);
            let path = head.split(' ').nth(1).unwrap_or("").to_owned();
            let (status, body) = if path == "/" {
                ("200 OK", page)
            } else {
                if path != "/favicon.ico" {
                    let _ = seen.send(path).await;
                }
                ("204 No Content", String::new())
            };
            let response = format!(
                "HTTP/1.1 {status}\r\ncontent-type: text/html\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = socket.write_all(response.as_bytes()).await;
        });
    }
}

#[tokio::test]
async fn a_page_on_another_origin_follows_the_tail_with_a_ticket() {
    assert!(
        std::path::Path::new(CHROMIUM).exists(),
        "{CHROMIUM} is missing: `make test` installs Debian's chromium"
    );
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let origin = format!("http://{}", listener.local_addr().unwrap());
    let app = spawn_app_with(
        &[("API_TOKEN", TOKEN), ("CORS_ALLOWED_ORIGINS", &origin)],
        AppOptions::default(),
    )
    .await;
    let api = app.api("");
    let page = format!(
        r#"<!doctype html><html><body><script>
const api = "{api}";
const signal = (what) => fetch("/" + what);
fetch(api + "/events/stream/tickets", {{ method: "POST", headers: {{ "Authorization": "Bearer {TOKEN}" }} }})
  .then((r) => r.ok ? r.json() : Promise.reject("ticket " + r.status))
  .then((t) => {{
    const es = new EventSource(api + "/events/stream?ticket=" + encodeURIComponent(t.ticket));
    es.onopen = () => signal("opened");
    es.addEventListener("event", (e) => {{
      signal("got?id=" + encodeURIComponent(JSON.parse(e.data).id));
      es.close();
    }});
    es.onerror = () => signal("error");
  }})
  .catch((e) => signal("failed?" + encodeURIComponent(String(e))));
</script></body></html>"#
    );
    let (tx, mut seen) = mpsc::channel(16);
    let server = tokio::spawn(serve_page(listener, page, tx));
    let profile = tempfile_dir();
    let mut chromium = tokio::process::Command::new(CHROMIUM)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            &format!("--user-data-dir={}", profile.display()),
            &format!("{origin}/"),
        ])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    assert_eq!(
        next(&mut seen).await,
        "/opened",
        "the stream opened with its ticket"
    );
    app.publish("browser", &gen1("seen-in-browser", "browser"))
        .await;
    assert_eq!(next(&mut seen).await, "/got?id=seen-in-browser");
    let _ = chromium.kill().await;
    server.abort();
    let _ = std::fs::remove_dir_all(&profile);

    // Without a ticket or a token the tail is closed; a ticket is spent by its first use.
    let res = app
        .http
        .get(app.api("/events/stream"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 401);
    let (t, first) = app.open_stream_by_ticket(Some(TOKEN)).await;
    assert_eq!(first, 200);
    for bad in [t.as_str(), "not-a-ticket"] {
        let res = app
            .http
            .get(app.api(&format!("/events/stream?ticket={bad}")))
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 401, "{bad}");
    }
    let res = app
        .http
        .post(app.api("/events/stream/tickets"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 401, "a ticket needs the bearer token");
}

fn tempfile_dir() -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("cs-chromium-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// The page's next signal, within 30 s.
async fn next(seen: &mut mpsc::Receiver<String>) -> String {
    tokio::time::timeout(Duration::from_secs(30), seen.recv())
        .await
        .expect("the page signals within 30 s")
        .unwrap()
}
