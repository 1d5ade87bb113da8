//! A TCP proxy for link faults, between Candystore and PostgreSQL or RabbitMQ:
//! pass bytes; stall both directions without closing anything; half-close one
//! direction (the far side sees EOF while the other keeps flowing); swallow what
//! Candystore sends while the server's bytes keep arriving (an ack lost on the
//! way); or cut every connection and refuse new ones (an outage).

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    Pass,
    /// Nothing is read or written either way; sockets stay open.
    Stall,
    /// The upstream server sees EOF (Candystore's writes stop arriving).
    HalfCloseUpstream,
    /// Candystore sees EOF (the server's writes stop arriving).
    HalfCloseDownstream,
    /// Candystore's bytes are read and dropped, the connection stays open, and
    /// the server's bytes keep arriving: an ack that never reaches the broker.
    SwallowUpstream,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Dir {
    /// Candystore → server.
    Up,
    /// Server → Candystore.
    Down,
}

pub struct Proxy {
    pub addr: SocketAddr,
    mode: watch::Sender<Mode>,
    refusing: Arc<AtomicBool>,
    /// Cancelled to drop every open connection; replaced after.
    epoch: Arc<std::sync::Mutex<CancellationToken>>,
    task: tokio::task::JoinHandle<()>,
}

impl Proxy {
    pub async fn start(upstream: &str) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
        let addr = listener.local_addr().expect("proxy address");
        let (mode, rx) = watch::channel(Mode::Pass);
        let refusing = Arc::new(AtomicBool::new(false));
        let epoch = Arc::new(std::sync::Mutex::new(CancellationToken::new()));
        let upstream = upstream.to_owned();
        let (r, e) = (refusing.clone(), epoch.clone());
        let task = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                if r.load(Ordering::SeqCst) {
                    drop(client);
                    continue;
                }
                let Ok(server) = TcpStream::connect(&upstream).await else {
                    continue;
                };
                let token = e.lock().unwrap().clone();
                let (cr, cw) = client.into_split();
                let (sr, sw) = server.into_split();
                for (from, to, dir) in [(cr, sw, Dir::Up), (sr, cw, Dir::Down)] {
                    let (token, rx) = (token.clone(), rx.clone());
                    tokio::spawn(async move {
                        tokio::select! {
                            _ = pump(from, to, dir, rx) => {}
                            _ = token.cancelled() => {}
                        }
                    });
                }
            }
        });
        Proxy {
            addr,
            mode,
            refusing,
            epoch,
            task,
        }
    }

    /// What every connection does from now on.
    pub fn set(&self, mode: Mode) {
        self.mode.send_replace(mode);
    }

    /// Drops every open connection and refuses new ones.
    pub fn cut(&self) {
        self.refusing.store(true, Ordering::SeqCst);
        let mut epoch = self.epoch.lock().unwrap();
        epoch.cancel();
        *epoch = CancellationToken::new();
    }

    /// Closes every open connection, as a process's sockets close when it dies,
    /// and passes the new ones.
    pub fn reset(&self) {
        self.cut();
        self.set(Mode::Pass);
        self.restore();
    }

    /// Accepts connections again (after [`Proxy::cut`]).
    pub fn restore(&self) {
        self.refusing.store(false, Ordering::SeqCst);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.task.abort();
        self.epoch.lock().unwrap().cancel();
    }
}

async fn pump(
    mut from: OwnedReadHalf,
    mut to: OwnedWriteHalf,
    dir: Dir,
    mut mode: watch::Receiver<Mode>,
) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let now = *mode.borrow_and_update();
        match (now, dir) {
            (Mode::Stall, _) => {
                if mode.changed().await.is_err() {
                    return;
                }
                continue;
            }
            (Mode::HalfCloseUpstream, Dir::Up) | (Mode::HalfCloseDownstream, Dir::Down) => {
                let _ = to.shutdown().await;
                // This direction is over; hold the read side open, unread.
                let _ = mode.changed().await;
                std::future::pending::<()>().await;
            }
            _ => {}
        }
        tokio::select! {
            read = from.read(&mut buf) => match read {
                Ok(0) | Err(_) => {
                    let _ = to.shutdown().await;
                    return;
                }
                Ok(n) => {
                    // Swallowed bytes are gone for good: the stream is broken
                    // from here, as a lost segment past every retransmit would.
                    let swallow = dir == Dir::Up && *mode.borrow() == Mode::SwallowUpstream;
                    if !swallow && to.write_all(&buf[..n]).await.is_err() {
                        return;
                    }
                }
            },
            changed = mode.changed() => {
                if changed.is_err() {
                    return;
                }
            }
        }
    }
}
