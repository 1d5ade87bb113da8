//! Peak heap memory of decoding one large body, as a multiple of its size.
//!
//! A counting allocator records the high-water mark of live heap bytes while one
//! delivery is decoded (the delivery's own body excluded), for the bodies the
//! hardening issue names: one array of 10 million integers (20 MB), and the same
//! size as many small objects. The tree a general JSON parser builds is shown
//! beside it for scale. Figures go to reports/memory-decode.md.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};

use candystore::source::decode::{Properties, RawDelivery, decode};

struct Counting;

static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            let now = LIVE.fetch_add(layout.size(), Ordering::Relaxed) + layout.size();
            PEAK.fetch_max(now, Ordering::Relaxed);
        }
        p
    }
    unsafe fn dealloc(&self, p: *mut u8, layout: Layout) {
        unsafe { System.dealloc(p, layout) };
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

/// Peak live bytes above the starting point while `f` runs.
fn peak_of<T>(f: impl FnOnce() -> T) -> (usize, T) {
    let base = LIVE.load(Ordering::Relaxed);
    PEAK.store(base, Ordering::Relaxed);
    let out = f();
    (PEAK.load(Ordering::Relaxed) - base, out)
}

fn delivery(body: Vec<u8>) -> RawDelivery {
    RawDelivery {
        body,
        repairs: Default::default(),
        exchange: "events".into(),
        routing_key: "bench.memory".into(),
        properties: Properties::default(),
        received_at: chrono::Utc::now(),
        authentic_replay: false,
    }
}

fn main() {
    let ints: Vec<u64> = (0..10_000_000).map(|i| i % 10).collect();
    let objects: Vec<serde_json::Value> = (0..400_000)
        .map(|i| serde_json::json!({"k": i, "v": "text"}))
        .collect();
    let cases = [
        (
            "10 million integers (gen 1 data)",
            serde_json::to_vec(&serde_json::json!({"id": "m-1", "event_type": "big", "data": ints})).unwrap(),
        ),
        (
            "400k small objects (gen 3 data)",
            serde_json::to_vec(&serde_json::json!({"specversion": "1.0", "id": "m-2", "type": "big", "source": "s", "data": objects})).unwrap(),
        ),
    ];
    let mut report = String::from(
        "# Decode memory (peak heap while decoding one body)\n\n`cargo bench --bench memory`. The body itself is not counted; what decode keeps (the payload text, the envelope) is.\n\n| body | size | decode peak | × size | a simd-json tree of it | × size |\n|---|---|---|---|---|---|\n",
    );
    for (name, body) in cases {
        let size = body.len();
        let copy = body.clone();
        let (tree_peak, _) = peak_of(move || {
            let mut buf = copy;
            let v = simd_json::to_borrowed_value(&mut buf).map(|v| std::mem::size_of_val(&v));
            v.is_ok()
        });
        let raw = delivery(body);
        let (peak, record) = peak_of(move || decode(raw));
        assert!(
            matches!(record, candystore::model::envelope::Record::Event(_)),
            "{name} decodes to an event"
        );
        let mb = |b: usize| b as f64 / 1e6;
        let line = format!(
            "| {name} | {:.1} MB | {:.1} MB | {:.2} | {:.1} MB | {:.1} |\n",
            mb(size),
            mb(peak),
            peak as f64 / size as f64,
            mb(tree_peak),
            tree_peak as f64 / size as f64
        );
        print!("{line}");
        report.push_str(&line);
    }
    std::fs::create_dir_all("reports").ok();
    std::fs::write("reports/memory-decode.md", report).expect("write the report");
}
