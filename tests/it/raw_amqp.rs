//! A hostile publisher: AMQP 0-9-1 written by hand over TCP, so a test can send
//! what no well-behaved client library would build (short strings that are not
//! UTF-8, absurdly nested header tables, unknown field types) to the real broker.
//!
//! It speaks just enough of the protocol: the handshake (PLAIN guest/guest), one
//! channel in confirm mode, `basic.publish` with a hand-encoded content header,
//! and waits for the broker's confirm of every message.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const FRAME_METHOD: u8 = 1;
const FRAME_HEADER: u8 = 2;
const FRAME_BODY: u8 = 3;
const FRAME_HEARTBEAT: u8 = 8;
const FRAME_END: u8 = 0xCE;

/// The basic properties of a raw publish, as bytes: each short string is sent
/// exactly as given, valid UTF-8 or not.
#[derive(Clone, Debug, Default)]
pub struct RawProps {
    pub content_type: Option<Vec<u8>>,
    /// The encoded content of a field table (entries only, no length prefix).
    pub headers: Option<Vec<u8>>,
    pub message_id: Option<Vec<u8>>,
    pub kind: Option<Vec<u8>>,
}

pub struct RawPublisher {
    stream: TcpStream,
    frame_max: u32,
    next_tag: u64,
}

impl RawPublisher {
    /// Connects to 127.0.0.1:5672 as guest and opens channel 1 in confirm mode.
    pub async fn connect() -> RawPublisher {
        let mut stream = TcpStream::connect("127.0.0.1:5672")
            .await
            .expect("connect to RabbitMQ");
        stream.write_all(b"AMQP\x00\x00\x09\x01").await.unwrap();
        let mut p = RawPublisher {
            stream,
            frame_max: 131_072,
            next_tag: 1,
        };
        p.expect_method(0, (10, 10)).await; // connection.start
        let mut start_ok = method(10, 11);
        start_ok.extend(0u32.to_be_bytes()); // client properties: empty table
        start_ok.extend(short(b"PLAIN"));
        start_ok.extend(long(b"\0guest\0guest"));
        start_ok.extend(short(b"en_US"));
        p.send(FRAME_METHOD, 0, &start_ok).await;
        let tune = p.expect_method(0, (10, 30)).await; // connection.tune
        let channel_max = u16::from_be_bytes([tune[4], tune[5]]);
        let frame_max = u32::from_be_bytes([tune[6], tune[7], tune[8], tune[9]]);
        p.frame_max = if frame_max == 0 { 131_072 } else { frame_max };
        let mut tune_ok = method(10, 31);
        tune_ok.extend(channel_max.to_be_bytes());
        tune_ok.extend(p.frame_max.to_be_bytes());
        tune_ok.extend(0u16.to_be_bytes()); // no heartbeats
        p.send(FRAME_METHOD, 0, &tune_ok).await;
        let mut open = method(10, 40);
        open.extend(short(b"/"));
        open.extend(short(b""));
        open.push(0);
        p.send(FRAME_METHOD, 0, &open).await;
        p.expect_method(0, (10, 41)).await;
        let mut ch_open = method(20, 10);
        ch_open.extend(short(b""));
        p.send(FRAME_METHOD, 1, &ch_open).await;
        p.expect_method(1, (20, 11)).await;
        let mut select = method(85, 10);
        select.push(0); // nowait = false
        p.send(FRAME_METHOD, 1, &select).await;
        p.expect_method(1, (85, 11)).await;
        p
    }

    /// Publishes one message and waits for the broker's confirm.
    pub async fn publish(
        &mut self,
        exchange: &str,
        routing_key: &[u8],
        props: &RawProps,
        body: &[u8],
    ) {
        let mut publish = method(60, 40);
        publish.extend(0u16.to_be_bytes());
        publish.extend(short(exchange.as_bytes()));
        publish.extend(short(routing_key));
        publish.push(0); // mandatory, immediate: off
        self.send(FRAME_METHOD, 1, &publish).await;

        let mut header = Vec::new();
        header.extend(60u16.to_be_bytes());
        header.extend(0u16.to_be_bytes());
        header.extend((body.len() as u64).to_be_bytes());
        let mut flags: u16 = 0;
        let mut fields = Vec::new();
        if let Some(ct) = &props.content_type {
            flags |= 1 << 15;
            fields.extend(short(ct));
        }
        if let Some(h) = &props.headers {
            flags |= 1 << 13;
            fields.extend(long(h));
        }
        flags |= 1 << 12; // delivery mode
        fields.push(2); // persistent
        if let Some(id) = &props.message_id {
            flags |= 1 << 7;
            fields.extend(short(id));
        }
        if let Some(kind) = &props.kind {
            flags |= 1 << 5;
            fields.extend(short(kind));
        }
        header.extend(flags.to_be_bytes());
        header.extend(fields);
        self.send(FRAME_HEADER, 1, &header).await;
        let chunk = (self.frame_max as usize).saturating_sub(8).max(1);
        for part in body.chunks(chunk) {
            self.send(FRAME_BODY, 1, part).await;
        }
        let tag = self.next_tag;
        self.next_tag += 1;
        let ack = self.expect_method(1, (60, 80)).await; // basic.ack
        let acked = u64::from_be_bytes(ack[4..12].try_into().unwrap());
        assert!(acked >= tag, "the broker confirmed {acked}, expected {tag}");
    }

    pub async fn close(mut self) {
        let mut close = method(10, 50);
        close.extend(200u16.to_be_bytes());
        close.extend(short(b"bye"));
        close.extend(0u16.to_be_bytes());
        close.extend(0u16.to_be_bytes());
        self.send(FRAME_METHOD, 0, &close).await;
        let _ = tokio::time::timeout(Duration::from_secs(2), self.expect_method(0, (10, 51))).await;
    }

    async fn send(&mut self, kind: u8, channel: u16, payload: &[u8]) {
        let mut frame = Vec::with_capacity(payload.len() + 8);
        frame.push(kind);
        frame.extend(channel.to_be_bytes());
        frame.extend((payload.len() as u32).to_be_bytes());
        frame.extend(payload);
        frame.push(FRAME_END);
        self.stream.write_all(&frame).await.expect("write frame");
    }

    /// Reads frames until a method frame on `channel`; panics on any other method
    /// (such as the broker closing the channel) with what the broker said.
    async fn expect_method(&mut self, channel: u16, want: (u16, u16)) -> Vec<u8> {
        loop {
            let (kind, ch, payload) =
                tokio::time::timeout(Duration::from_secs(10), self.read_frame())
                    .await
                    .expect("the broker answered within 10s");
            if kind == FRAME_HEARTBEAT {
                continue;
            }
            assert_eq!(kind, FRAME_METHOD, "expected a method frame");
            let got = (
                u16::from_be_bytes([payload[0], payload[1]]),
                u16::from_be_bytes([payload[2], payload[3]]),
            );
            if got == want && ch == channel {
                return payload;
            }
            let text = if got == (10, 50) || got == (20, 40) {
                let len = payload[6] as usize;
                String::from_utf8_lossy(&payload[7..7 + len]).into_owned()
            } else {
                String::new()
            };
            panic!("expected method {want:?} on channel {channel}, got {got:?} on {ch}: {text}");
        }
    }

    async fn read_frame(&mut self) -> (u8, u16, Vec<u8>) {
        let mut head = [0u8; 7];
        self.stream.read_exact(&mut head).await.expect("read frame");
        let size = u32::from_be_bytes([head[3], head[4], head[5], head[6]]) as usize;
        let mut payload = vec![0u8; size + 1];
        self.stream
            .read_exact(&mut payload)
            .await
            .expect("read frame");
        assert_eq!(payload.pop(), Some(FRAME_END), "frame end octet");
        (head[0], u16::from_be_bytes([head[1], head[2]]), payload)
    }
}

fn method(class: u16, id: u16) -> Vec<u8> {
    let mut m = Vec::new();
    m.extend(class.to_be_bytes());
    m.extend(id.to_be_bytes());
    m
}

/// An AMQP short string: a length octet, then the bytes as given.
pub fn short(s: &[u8]) -> Vec<u8> {
    assert!(s.len() <= 255, "short strings hold at most 255 bytes");
    let mut v = vec![s.len() as u8];
    v.extend(s);
    v
}

/// An AMQP long string (or table content): a 32-bit length, then the bytes.
pub fn long(s: &[u8]) -> Vec<u8> {
    let mut v = (s.len() as u32).to_be_bytes().to_vec();
    v.extend(s);
    v
}

/// One field-table entry: the name as given, then the already typed value.
pub fn entry(name: &[u8], typed_value: &[u8]) -> Vec<u8> {
    let mut v = short(name);
    v.extend(typed_value);
    v
}

/// A typed long-string value (`S`).
pub fn long_string(s: &[u8]) -> Vec<u8> {
    let mut v = vec![b'S'];
    v.extend(long(s));
    v
}

/// A field array (`A`) nested `depth` deep, the innermost holding one long string.
pub fn nested_arrays(depth: usize) -> Vec<u8> {
    let mut v = long_string(b"bottom");
    for _ in 0..depth {
        let mut outer = vec![b'A'];
        outer.extend(long(&v));
        v = outer;
    }
    v
}
