//! CPU cost of the per-event path: decode + projection, and COPY encoding.

use bytes::BytesMut;
use candystore::model::envelope::{Event, Record};
use candystore::source::decode::{Properties, RawDelivery, decode};
use candystore::source::publish::sample_event;
use candystore::store::postgres::copy;
use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};

fn delivery(body: Vec<u8>) -> RawDelivery {
    RawDelivery {
        body,
        repairs: Default::default(),
        exchange: "events".into(),
        routing_key: "bench.event".into(),
        properties: Properties::default(),
        received_at: chrono::Utc::now(),
        authentic_replay: false,
    }
}

fn bench_decode(c: &mut Criterion) {
    let mut group = c.benchmark_group("decode");
    for generation in 1..=3u8 {
        let (_, body) = sample_event("bench", 1, 1024, generation);
        group.throughput(Throughput::Bytes(body.len() as u64));
        group.bench_function(format!("generation_{generation}_1kb"), |b| {
            b.iter_batched(|| delivery(body.clone()), decode, BatchSize::SmallInput)
        });
    }
    let (_, body) = sample_event("bench", 1, 1024, 1);
    let text = String::from_utf8(body)
        .unwrap()
        .replacen("lorem", "lo\\u0000rem", 1);
    group.bench_function("sanitised_1kb", |b| {
        b.iter_batched(
            || delivery(text.clone().into_bytes()),
            decode,
            BatchSize::SmallInput,
        )
    });
    group.bench_function("poison_not_json", |b| {
        b.iter_batched(
            || delivery(b"definitely not json".to_vec()),
            decode,
            BatchSize::SmallInput,
        )
    });
    group.finish();
}

fn bench_copy(c: &mut Criterion) {
    let events: Vec<Event> = (0..500)
        .map(|i| {
            match decode(delivery(
                sample_event("bench", i, 1024, (i % 3) as u8 + 1).1,
            )) {
                Record::Event(e) => *e,
                Record::DeadLetter(_) | Record::Replayed => {
                    unreachable!("sample events are events")
                }
            }
        })
        .collect();
    let mut group = c.benchmark_group("copy");
    group.throughput(Throughput::Elements(events.len() as u64));
    group.bench_function("encode_500_events", |b| {
        let mut buf = BytesMut::with_capacity(copy::encoded_len_hint(&events));
        b.iter(|| {
            buf.clear();
            copy::encode(&events, copy::Audit::Off, &mut buf);
            buf.len()
        })
    });
    // Each row with its leaf (`audit::leaf::seal`: the payload's jsonb text, a
    // salt, the commitment), without and with AUDIT_KEY (one HMAC per leaf).
    group.bench_function("encode_500_events_with_leaves", |b| {
        let mut buf = BytesMut::with_capacity(copy::encoded_len_hint(&events));
        b.iter(|| {
            buf.clear();
            copy::encode(&events, copy::Audit::Tree(None), &mut buf);
            buf.len()
        })
    });
    // The leaf's parts: jsonb's text of each payload, and a salt.
    group.bench_function("jsonb_text_500_payloads", |b| {
        b.iter(|| {
            events
                .iter()
                .map(|e| candystore::audit::jsonb::canonical(&e.payload).map_or(0, |c| c.len()))
                .sum::<usize>()
        })
    });
    group.bench_function("salt_500", |b| {
        b.iter(|| {
            (0..500)
                .map(|_| candystore::audit::leaf::salt()[0] as usize)
                .sum::<usize>()
        })
    });
    let ring = candystore::audit::attest::Keyring::new(&["k".repeat(64)]);
    group.bench_function("encode_500_events_attested", |b| {
        let mut buf = BytesMut::with_capacity(copy::encoded_len_hint(&events));
        b.iter(|| {
            buf.clear();
            copy::encode(&events, copy::Audit::Tree(ring.as_ref()), &mut buf);
            buf.len()
        })
    });
    group.finish();
}

criterion_group!(benches, bench_decode, bench_copy);
criterion_main!(benches);
