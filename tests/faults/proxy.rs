//! A TCP proxy for link faults: pass bytes, stall both directions without
//! closing anything, or half-close one direction (the far side sees EOF while
//! the other direction keeps flowing).

use std::net::SocketAddr;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    Pass,
    /// Nothing is read or written either way; sockets stay open.
    Stall,
    /// The upstream server sees EOF (Candystore's writes stop arriving).
    HalfCloseUpstream,
    /// Candystore sees EOF (the server's writes stop arriving).
    HalfCloseDownstream,
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
    task: tokio::task::JoinHandle<()>,
}

impl Proxy {
    pub async fn start(upstream: &str) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (mode, rx) = watch::channel(Mode::Pass);
        let upstream = upstream.to_owned();
        let task = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let Ok(server) = TcpStream::connect(&upstream).await else {
                    continue;
                };
                let (cr, cw) = client.into_split();
                let (sr, sw) = server.into_split();
                tokio::spawn(pump(cr, sw, Dir::Up, rx.clone()));
                tokio::spawn(pump(sr, cw, Dir::Down, rx.clone()));
            }
        });
        Proxy { addr, mode, task }
    }

    pub fn set(&self, mode: Mode) {
        self.mode.send_replace(mode);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.task.abort();
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
                    if to.write_all(&buf[..n]).await.is_err() {
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
