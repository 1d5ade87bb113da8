//! Whole partitions to compressed NDJSON and back.
//!
//! One file per partition, `<partition>.ndjson.zst` (zstd), one JSON object per
//! row holding every column: `payload` as JSON, the verbatim `envelope` and
//! `properties` texts as strings (so `/raw` comes back byte for byte), binary
//! columns in base64 (hex for fingerprints). `manifest.json` beside the files
//! lists each file's table, partition, range, row count, size and SHA-256.
//!
//! Archiving writes to a `.part` file, renames it once complete, then reads it back
//! (decompressing every line) and checks the row count and the checksum before
//! anything is dropped. Dropping detaches the partition first, so the rows archived
//! are exactly the rows dropped: an event arriving late for that range goes to the
//! default partition meanwhile, and the maintenance job gives it a partition of
//! its own (archived under the next free name).
//!
//! Restoring loads files in chunks, each its own transaction, creating the
//! partitions they need; `ON CONFLICT DO NOTHING` makes a second restore a no-op.

use std::fs::File;
use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};

use chrono::{DateTime, Utc};
use futures::StreamExt;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tokio_postgres::Client;
use tokio_postgres::binary_copy::BinaryCopyOutStream;
use tokio_postgres::types::Type;

use super::partition::{self, Partition};
use super::{StorageError, Table};
use crate::audit::attest::Keyring;

pub const MANIFEST: &str = "manifest.json";
pub const FORMAT: &str = "candystore-archive/1";
/// zstd's default level: ~300 MB/s per core, a third to a tenth of the JSON's size.
const ZSTD_LEVEL: i32 = 3;
/// Lines per restore transaction.
pub const RESTORE_CHUNK: usize = 10_000;
/// Bytes of lines per restore transaction (a chunk closes at either bound).
const RESTORE_CHUNK_BYTES: usize = 64 << 20;
/// The longest line an archive may hold: one event's row, whose payload,
/// envelope and (for a sanitised event) base64 body all come from a delivery of
/// at most RabbitMQ's largest message (128 MiB by default). A longer line is
/// refused, naming its file and number, before it is read whole.
pub const MAX_LINE_BYTES: usize = 320 << 20;
/// No restored row moves the `seq` sequence past this, whatever its file says:
/// half the range of bigint stays for new events.
pub const MAX_RESTORED_SEQ: i64 = 1 << 62;
/// How fast the maintenance job inside `serve` reads a partition it archives:
/// 16 MiB of rendered rows a second. PostgreSQL renders those rows on the same
/// cores that commit ingest's batches; unpaced (~40 MB/s on two cores) the
/// rendering pushed ingest's p99 past its 100 ms target
/// (`reports/archive-under-ingest.md`). At this pace a day of 1,000 events/s
/// (~86M rows of ~1 KB) is archived in about 1.5 hours. The `archive` command
/// is not paced: an operator running it chose the moment.
pub const BACKGROUND_PACE: Pace = Pace::BytesPerSecond(16 << 20);

/// How fast an archive may read its rows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Pace {
    /// As fast as the server renders them.
    Full,
    /// At most this many bytes of rendered rows a second, on average.
    BytesPerSecond(u64),
}

/// Holds a reader to its [`Pace`]: after each row it sleeps until the time the
/// bytes read so far are due, once that is more than [`Pacer::SLACK`] ahead, so
/// the server renders in bursts of at most SLACK's worth and then waits on a
/// full socket.
struct Pacer {
    rate: Option<u64>,
    start: tokio::time::Instant,
    read: u64,
}

impl Pacer {
    const SLACK: std::time::Duration = std::time::Duration::from_millis(10);

    fn new(pace: Pace) -> Self {
        let rate = match pace {
            Pace::Full => None,
            Pace::BytesPerSecond(r) => Some(r.max(1)),
        };
        Self {
            rate,
            start: tokio::time::Instant::now(),
            read: 0,
        }
    }

    /// When the bytes read so far are due, if that is more than SLACK from now.
    fn read(&mut self, bytes: usize) -> Option<tokio::time::Instant> {
        let rate = self.rate?;
        self.read += bytes as u64;
        let nanos = u128::from(self.read) * 1_000_000_000 / u128::from(rate);
        let due =
            self.start + std::time::Duration::from_nanos(nanos.try_into().unwrap_or(u64::MAX));
        (due > tokio::time::Instant::now() + Self::SLACK).then_some(due)
    }
}

/// One archived partition.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Entry {
    pub table: String,
    pub partition: String,
    /// File name, relative to the manifest.
    pub file: String,
    pub from: DateTime<Utc>,
    pub to: DateTime<Utc>,
    pub rows: u64,
    /// Compressed size.
    pub bytes: u64,
    /// SHA-256 of the file, hex.
    pub sha256: String,
    pub archived_at: DateTime<Utc>,
    /// The highest `seq` and `txid` of the file's rows (absent in archives written
    /// before they were recorded): a restore refuses a row above them and never
    /// moves the sequence past `max_seq`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_seq: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_txid: Option<i64>,
    /// The identity of the store the file was written from (`store_identity`;
    /// absent in archives written before it was recorded). A restore into that
    /// store puts each row back at its place, where the tree holds its leaf;
    /// into another, each row is a new write with a new leaf.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub store: Option<String>,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct Manifest {
    pub format: String,
    pub files: Vec<Entry>,
}

/// Progress to show: total known up front, and a step per row.
pub trait Progress: Send + Sync {
    fn start(&self, what: &str, total: u64);
    fn advance(&self, n: u64);
    fn finish(&self);
}

/// The row as JSON text, built by PostgreSQL.
fn row_json(table: Table) -> &'static str {
    match table {
        Table::Events => {
            "json_build_object('seq', seq, 'id', id, 'event_type', event_type, 'source', source, 'target', target, \
             'routing_key', routing_key, 'exchange', exchange, 'timestamp', \"timestamp\", 'received_at', received_at, \
             'stored_at', stored_at, 'payload', payload, 'session_id', session_id, 'correlation_id', correlation_id, \
             'storage_latency_ms', storage_latency_ms, 'generation', generation, 'envelope', envelope::text, \
             'payload_member', payload_member, 'properties', properties::text, 'sanitized', sanitized, \
             'original_body', translate(encode(original_body, 'base64'), E'\\n', ''), \
             'attestation', encode(attestation, 'hex'), 'salt', encode(salt, 'hex'), 'txid', txid)::text"
        }
        Table::DeadLetter => {
            "json_build_object('seq', seq, 'fingerprint', encode(fingerprint, 'hex'), 'received_at', received_at, \
             'stored_at', stored_at, 'exchange', exchange, 'routing_key', routing_key, 'properties', properties::text, \
             'body', translate(encode(body, 'base64'), E'\\n', ''), 'reason', reason, 'detail', detail)::text"
        }
    }
}

/// The typed record an archived line becomes, for `jsonb_to_record`.
fn record_type(table: Table) -> &'static str {
    match table {
        Table::Events => {
            "seq int8, id text, event_type text, source text, target text, routing_key text, exchange text, \
             \"timestamp\" timestamptz, received_at timestamptz, stored_at timestamptz, payload jsonb, session_id text, \
             correlation_id text, storage_latency_ms float8, generation int2, envelope text, payload_member text, \
             properties text, sanitized bool, original_body text, attestation text, salt text, txid int8"
        }
        Table::DeadLetter => {
            "seq int8, fingerprint text, received_at timestamptz, stored_at timestamptz, exchange text, \
             routing_key text, properties text, body text, reason text, detail text"
        }
    }
}

/// The columns of the table, computed from the typed record `r`.
/// What a restore inserts: each column with the expression that fills it from
/// the archive line (`r`, the line parsed by `jsonb_to_record`; `l.fresh`, a
/// new salt). At home (`adopt` false) a row goes back to its place, `seq` and
/// (events) `txid`, its legacy attestation and its leaf's salt with it (NULL
/// in archives of before migrations 0015 and 0019; `txid` 0 before archives
/// kept it). As a new write (`adopt`) it takes this store's next `seq` and
/// `txid`, and keeps its salt (a new one for a row stored before the tree).
fn restore_columns(table: Table, adopt: bool) -> Vec<(&'static str, &'static str)> {
    let mut pairs = match table {
        Table::Events => vec![
            ("seq", "r.seq"),
            ("id", "r.id"),
            ("event_type", "r.event_type"),
            ("source", "r.source"),
            ("target", "r.target"),
            ("routing_key", "r.routing_key"),
            ("exchange", "r.exchange"),
            ("\"timestamp\"", "r.\"timestamp\""),
            ("received_at", "r.received_at"),
            ("stored_at", "r.stored_at"),
            ("payload", "r.payload"),
            ("session_id", "r.session_id"),
            ("correlation_id", "r.correlation_id"),
            ("storage_latency_ms", "r.storage_latency_ms"),
            ("generation", "r.generation"),
            ("envelope", "r.envelope::json"),
            ("payload_member", "r.payload_member"),
            ("properties", "r.properties::json"),
            ("sanitized", "r.sanitized"),
            ("original_body", "decode(r.original_body, 'base64')"),
            ("txid", "coalesce(r.txid, 0)"),
            ("attestation", "decode(r.attestation, 'hex')"),
            ("salt", "decode(r.salt, 'hex')"),
        ],
        Table::DeadLetter => vec![
            ("seq", "r.seq"),
            ("fingerprint", "decode(r.fingerprint, 'hex')"),
            ("received_at", "r.received_at"),
            ("stored_at", "r.stored_at"),
            ("exchange", "r.exchange"),
            ("routing_key", "r.routing_key"),
            ("properties", "r.properties::json"),
            ("body", "decode(r.body, 'base64')"),
            ("reason", "r.reason"),
            ("detail", "r.detail"),
        ],
    };
    if adopt {
        pairs.retain(|(column, _)| !matches!(*column, "seq" | "txid"));
        for (column, expression) in &mut pairs {
            if *column == "salt" {
                *expression = "coalesce(decode(r.salt, 'hex'), l.fresh)";
            }
        }
    }
    pairs
}

fn archive_err(path: &Path, reason: impl Into<String>) -> StorageError {
    StorageError::Archive {
        path: path.display().to_string(),
        reason: reason.into(),
    }
}

/// Runs `work` on a thread of its own, at a lower CPU priority (nice 10, on
/// Linux): an archive is background work, and on a small machine its compression
/// and read-back would otherwise take the core that ingest needs. `None` when
/// the thread panicked (or could not be started).
///
/// The thread starts when this is called, not when the answer is awaited: the
/// archive feeds its writer through a bounded channel before it awaits it, and
/// a writer that started only then would never drain that channel.
fn in_background<T: Send + 'static>(
    name: &'static str,
    work: impl FnOnce() -> T + Send + 'static,
) -> impl Future<Output = Option<T>> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    let started = std::thread::Builder::new()
        .name(name.to_owned())
        .spawn(move || {
            // On Linux a nice value is per thread: `who` 0 is this thread alone.
            #[cfg(target_os = "linux")]
            // SAFETY: setpriority reads no memory of ours; a failure (a
            // container refusing it) leaves the priority as it was.
            unsafe {
                libc::setpriority(libc::PRIO_PROCESS, 0, 10);
            }
            let _ = tx.send(work());
        });
    async move {
        started.ok()?;
        rx.await.ok()
    }
}

/// Writes `partition` (attached or detached) to `dir`, reading its rows at
/// `pace`, verifies the file and records it in the manifest. Returns the
/// manifest entry.
pub async fn archive_partition(
    client: &Client,
    table: Table,
    partition: &Partition,
    dir: &Path,
    progress: Option<&dyn Progress>,
    pace: Pace,
) -> Result<Entry, StorageError> {
    let range = partition
        .range
        .ok_or_else(|| archive_err(dir, "the default partition is never archived"))?;
    let expected = super::estimated_rows(client, &partition.name).await?;
    if let Some(p) = progress {
        p.start(&partition.name, expected as u64);
    }
    // PostgreSQL renders each row; the file's thread compresses and hashes.
    let mut file = FileWriter::create(dir, &partition.name)?;
    let txid = match table {
        Table::Events => "txid",
        Table::DeadLetter => "NULL::int8",
    };
    let copy = client
        .copy_out(&format!(
            "COPY (SELECT {}, seq, {txid} FROM {} ORDER BY seq) TO STDOUT (FORMAT binary)",
            row_json(table),
            partition.name
        ))
        .await?;
    let rows = BinaryCopyOutStream::new(copy, &[Type::TEXT, Type::INT8, Type::INT8]);
    futures::pin_mut!(rows);
    let mut pacer = Pacer::new(pace);
    let mut streamed: Result<(), StorageError> = Ok(());
    while let Some(row) = rows.next().await {
        let row = match row {
            Ok(r) => r,
            Err(e) => {
                streamed = Err(e.into());
                break;
            }
        };
        let line: &str = row.get(0);
        if !file
            .line(line, row.get::<Option<i64>>(1), row.get::<Option<i64>>(2))
            .await
        {
            break;
        }
        // Rows arrive faster than they can be taken: without this the loop would
        // hold its runtime worker for as long as the server keeps it fed.
        tokio::task::consume_budget().await;
        if let Some(due) = pacer.read(line.len() + 1) {
            tokio::time::sleep_until(due).await;
        }
        if file.count.is_multiple_of(10_000)
            && let Some(p) = progress
        {
            p.advance(10_000);
        }
    }
    let entry = file
        .finish(
            streamed,
            table,
            &partition.name,
            range.start..range.end,
            identity(client).await?,
        )
        .await?;
    if let Some(p) = progress {
        p.finish();
    }
    Ok(entry)
}

/// The compressing thread's answer: bytes written and SHA-256, once it is done.
type Written =
    std::pin::Pin<Box<dyn Future<Output = Option<std::io::Result<(u64, String)>>> + Send>>;

/// An archive file being written, whichever store its rows come from: lines
/// in, compressed and hashed on a thread of its own (fed through an async
/// channel: the runtime's workers never wait on it), then renamed from its
/// `.part` name, read back whole and recorded in the manifest.
pub struct FileWriter {
    dir: PathBuf,
    file_name: String,
    part_path: PathBuf,
    part: PartFile,
    tx: tokio::sync::mpsc::Sender<Vec<u8>>,
    writer: Written,
    buf: Vec<u8>,
    pub count: u64,
    max_seq: Option<i64>,
    max_txid: Option<i64>,
}

impl FileWriter {
    /// A new file in `dir` for the rows of `partition` (under the next free
    /// name, when one of that name is there).
    pub fn create(dir: &Path, partition: &str) -> Result<FileWriter, StorageError> {
        std::fs::create_dir_all(dir)?;
        let file_name = free_name(dir, partition);
        let part_path = dir.join(format!("{file_name}.part"));
        let (tx, mut rx) = tokio::sync::mpsc::channel::<Vec<u8>>(8);
        let writer_path = part_path.clone();
        let writer = in_background(
            "archive-write",
            move || -> std::io::Result<(u64, String)> {
                let file = HashingWriter::new(File::create(&writer_path)?);
                let mut enc = zstd::stream::write::Encoder::new(file, ZSTD_LEVEL)?;
                while let Some(chunk) = rx.blocking_recv() {
                    enc.write_all(&chunk)?;
                }
                let mut file = enc.finish()?;
                file.flush()?;
                file.inner.sync_all()?;
                Ok((file.written, hex(&file.hasher.finalize())))
            },
        );
        Ok(FileWriter {
            dir: dir.to_owned(),
            file_name,
            part: PartFile(Some(part_path.clone())),
            part_path,
            tx,
            writer: Box::pin(writer),
            buf: Vec::with_capacity(1 << 20),
            count: 0,
            max_seq: None,
            max_txid: None,
        })
    }

    /// One row's line, with its `seq` and `txid`; false when the writing
    /// thread has stopped (its error comes from [`FileWriter::finish`]).
    pub async fn line(&mut self, line: &str, seq: Option<i64>, txid: Option<i64>) -> bool {
        self.max_seq = self.max_seq.max(seq);
        self.max_txid = self.max_txid.max(txid);
        self.buf.extend_from_slice(line.as_bytes());
        self.buf.push(b'\n');
        self.count += 1;
        if self.buf.len() >= 1 << 20 {
            let full = std::mem::replace(&mut self.buf, Vec::with_capacity(1 << 20));
            return self.tx.send(full).await.is_ok();
        }
        true
    }

    /// Closes the file (`streamed`: whether every row was read), checks it by
    /// reading it back, and records it in the manifest as the rows of `table`
    /// in `range`, written from the store `store`.
    pub async fn finish(
        mut self,
        streamed: Result<(), StorageError>,
        table: Table,
        partition: &str,
        range: std::ops::Range<DateTime<Utc>>,
        store: Option<String>,
    ) -> Result<Entry, StorageError> {
        if !self.buf.is_empty() {
            let _ = self.tx.send(std::mem::take(&mut self.buf)).await;
        }
        let FileWriter {
            dir,
            file_name,
            part_path,
            part,
            tx,
            writer,
            count,
            max_seq,
            max_txid,
            ..
        } = self;
        drop(tx);
        let written = writer
            .await
            .ok_or_else(|| archive_err(&part_path, "the compressing thread panicked"))?;
        // An error here leaves `part` to remove the file.
        streamed?;
        let (bytes, sha256) = written?;
        let path = dir.join(&file_name);
        std::fs::rename(&part_path, &path)?;
        part.kept();
        // Read it back before anyone relies on it (decompressing it all: a
        // blocking thread).
        let (lines, check) = {
            let path = path.clone();
            in_background("archive-check", move || verify_file(&path))
                .await
                .ok_or_else(|| archive_err(&dir, "the reading-back thread panicked"))??
        };
        if lines != count || check != sha256 {
            return Err(archive_err(
                &path,
                format!("read back {lines} rows with SHA-256 {check}, wrote {count} with {sha256}"),
            ));
        }
        let entry = Entry {
            table: table.name().to_owned(),
            partition: partition.to_owned(),
            file: file_name,
            from: range.start,
            to: range.end,
            rows: count,
            bytes,
            sha256,
            archived_at: Utc::now(),
            max_seq,
            max_txid,
            store,
        };
        record(&dir, &entry)?;
        Ok(entry)
    }
}

/// A `.part` file being written: removed when dropped before [`PartFile::kept`]
/// (an error, or the archiving future dropped at shutdown's deadline), so no
/// half-written file is left beside the archives.
struct PartFile(Option<PathBuf>);

impl PartFile {
    /// Renamed into place: nothing to remove.
    fn kept(mut self) {
        self.0 = None;
    }
}

impl Drop for PartFile {
    fn drop(&mut self) {
        if let Some(path) = self.0.take() {
            let _ = std::fs::remove_file(path);
        }
    }
}

/// `<partition>.ndjson.zst`, or `<partition>-2.ndjson.zst`, ... when a partition of
/// that name was archived before (late events for an archived range).
fn free_name(dir: &Path, partition: &str) -> String {
    let mut n = 1;
    loop {
        let name = if n == 1 {
            format!("{partition}.ndjson.zst")
        } else {
            format!("{partition}-{n}.ndjson.zst")
        };
        if !dir.join(&name).exists() {
            return name;
        }
        n += 1;
    }
}

/// Decompresses `path` to the end: (lines, SHA-256 of the file).
pub fn verify_file(path: &Path) -> Result<(u64, String), StorageError> {
    read_through(path).map_err(|e| archive_err(path, format!("cannot be read back: {e}")))
}

fn read_through(path: &Path) -> std::io::Result<(u64, String)> {
    let mut hasher = Sha256::new();
    let file = HashingReader {
        inner: File::open(path)?,
        hasher: &mut hasher,
    };
    let mut dec = zstd::stream::read::Decoder::new(file)?;
    let mut buf = vec![0u8; 1 << 20];
    let mut lines = 0u64;
    // Bytes since the last newline: a line past MAX_LINE_BYTES is refused here,
    // before any of it is held.
    let mut open = 0usize;
    loop {
        let n = dec.read(&mut buf)?;
        if n == 0 {
            break;
        }
        for chunk in buf[..n].split_inclusive(|b| *b == b'\n') {
            open += chunk.len();
            if open > MAX_LINE_BYTES + 1 {
                return Err(line_too_long(lines + 1));
            }
            if chunk.last() == Some(&b'\n') {
                lines += 1;
                open = 0;
            }
        }
    }
    drop(dec);
    Ok((lines, hex(&hasher.finalize())))
}

fn line_too_long(line: u64) -> std::io::Error {
    std::io::Error::new(
        std::io::ErrorKind::InvalidData,
        format!("line {line} is longer than {MAX_LINE_BYTES} bytes"),
    )
}

/// The next line of `r` without its newline, read with a length limit; `None` at
/// the end. `line` is its number, for the error.
fn next_line(
    r: &mut impl BufRead,
    buf: &mut Vec<u8>,
    line: u64,
) -> std::io::Result<Option<String>> {
    buf.clear();
    let n = r
        .by_ref()
        .take(MAX_LINE_BYTES as u64 + 1)
        .read_until(b'\n', buf)?;
    if n == 0 {
        return Ok(None);
    }
    if buf.last() == Some(&b'\n') {
        buf.pop();
    } else if buf.len() > MAX_LINE_BYTES {
        return Err(line_too_long(line));
    }
    String::from_utf8(std::mem::take(buf))
        .map(Some)
        .map_err(|_| {
            std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("line {line} is not UTF-8"),
            )
        })
}

/// This store's identity (`store_identity`), when its migration has run.
pub async fn identity(client: &Client) -> Result<Option<String>, StorageError> {
    let has: bool = client
        .query_one("SELECT to_regclass('store_identity') IS NOT NULL", &[])
        .await?
        .get(0);
    if !has {
        return Ok(None);
    }
    Ok(client
        .query_opt("SELECT id FROM store_identity", &[])
        .await?
        .map(|r| r.get(0)))
}

fn record(dir: &Path, entry: &Entry) -> Result<(), StorageError> {
    let path = dir.join(MANIFEST);
    let mut manifest = read_manifest(dir)?.unwrap_or(Manifest {
        format: FORMAT.to_owned(),
        files: Vec::new(),
    });
    manifest.files.retain(|e| e.file != entry.file);
    manifest.files.push(entry.clone());
    manifest
        .files
        .sort_by(|a, b| (&a.table, a.from, &a.file).cmp(&(&b.table, b.from, &b.file)));
    let tmp = dir.join(format!("{MANIFEST}.tmp"));
    let text =
        serde_json::to_vec_pretty(&manifest).map_err(|e| archive_err(&path, e.to_string()))?;
    let mut f = File::create(&tmp)?;
    f.write_all(&text)?;
    f.sync_all()?;
    std::fs::rename(&tmp, &path)?;
    Ok(())
}

pub fn read_manifest(dir: &Path) -> Result<Option<Manifest>, StorageError> {
    let path = dir.join(MANIFEST);
    match std::fs::read(&path) {
        Ok(bytes) => serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| archive_err(&path, format!("not a manifest: {e}"))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// What `candystore archive` did.
#[derive(Debug, Default)]
pub struct Archived {
    pub entries: Vec<Entry>,
    pub dropped: Vec<String>,
    /// Rows before the date that no archive could take: they wait in a table's
    /// default partition (no partition covers their time yet) until the
    /// maintenance job moves them into partitions of their own. At most
    /// [`WAITING_COUNTED_UP_TO`] a table are counted.
    pub waiting: Vec<(Table, u64)>,
}

/// How far `Archived::waiting` counts: enough to say "some" or "many", without
/// reading a large backlog whole.
pub const WAITING_COUNTED_UP_TO: u64 = 100_000;

/// `candystore archive --before DATE --to DIR [--drop]`: every partition that ends
/// at or before `before`, of both tables. Holds the maintenance lock meanwhile.
pub async fn archive_before(
    client: &mut Client,
    before: DateTime<Utc>,
    dir: &Path,
    drop: bool,
    keyring: Option<&crate::audit::attest::Keyring>,
    progress: Option<&dyn Progress>,
) -> Result<Archived, StorageError> {
    if !super::maintain::try_lock(client).await? {
        return Err(StorageError::Busy);
    }
    let result = archive_locked(client, before, dir, drop, keyring, progress).await;
    super::maintain::unlock(client).await;
    result
}

async fn archive_locked(
    client: &mut Client,
    before: DateTime<Utc>,
    dir: &Path,
    drop: bool,
    keyring: Option<&crate::audit::attest::Keyring>,
    progress: Option<&dyn Progress>,
) -> Result<Archived, StorageError> {
    let mut out = Archived::default();
    for table in Table::ALL {
        if !super::is_partitioned(client, table).await? {
            return Err(StorageError::NotPartitioned {
                table: table.name(),
            });
        }
        let mut todo: Vec<Partition> = partition::list(client, table)
            .await?
            .into_iter()
            .filter(|p| p.range.is_some_and(|r| r.end <= before))
            .collect();
        if drop {
            // Partitions a previous run detached and did not finish with.
            todo.extend(
                detached(client, table)
                    .await?
                    .into_iter()
                    .filter(|p| p.range.is_some_and(|r| r.end <= before)),
            );
        }
        for p in todo {
            if drop {
                let entry = archive_and_drop(client, table, &p, dir, keyring, progress).await?;
                out.entries.push(entry);
                out.dropped.push(p.name.clone());
            } else {
                out.entries
                    .push(archive_partition(client, table, &p, dir, progress, Pace::Full).await?);
            }
        }
        let waiting = waiting_in_default(client, table, before).await?;
        if waiting > 0 {
            out.waiting.push((table, waiting));
        }
    }
    Ok(out)
}

/// Rows of `table` before `before` in its default partition (up to
/// [`WAITING_COUNTED_UP_TO`]).
async fn waiting_in_default(
    client: &Client,
    table: Table,
    before: DateTime<Utc>,
) -> Result<u64, StorageError> {
    let row = client
        .query_one(
            &format!(
                "SELECT count(*) FROM (SELECT 1 FROM {} WHERE {} < $1 LIMIT {WAITING_COUNTED_UP_TO}) w",
                table.default_partition(),
                table.time_column()
            ),
            &[&before],
        )
        .await?;
    Ok(row.get::<_, i64>(0) as u64)
}

/// The archive files a restore is given: a file as it is; a directory, or the
/// `manifest.json` in one, as every file its manifest lists, in its order.
pub fn archive_files(paths: &[PathBuf]) -> Result<Vec<PathBuf>, StorageError> {
    let mut files = Vec::new();
    for path in paths {
        let dir = if path.is_dir() {
            path.as_path()
        } else if path.file_name().is_some_and(|n| n == MANIFEST) {
            path.parent().unwrap_or(Path::new("."))
        } else {
            files.push(path.clone());
            continue;
        };
        let manifest = read_manifest(dir)?.ok_or_else(|| {
            archive_err(
                path,
                format!(
                    "a directory without {MANIFEST}: pass the archive's directory, its {MANIFEST}, or its .ndjson.zst files"
                ),
            )
        })?;
        files.extend(manifest.files.into_iter().map(|e| dir.join(e.file)));
    }
    Ok(files)
}

/// Detach, archive, verify against the detached table's count, drop. If the
/// archive fails the partition is attached again (or, when late rows for its range
/// arrived meanwhile, left detached for the next run, which finishes it).
pub async fn archive_and_drop(
    client: &mut Client,
    table: Table,
    p: &Partition,
    dir: &Path,
    keyring: Option<&crate::audit::attest::Keyring>,
    progress: Option<&dyn Progress>,
) -> Result<Entry, StorageError> {
    let range = p.range.expect("a ranged partition");
    let attached = partition::list(client, table)
        .await?
        .iter()
        .any(|q| q.name == p.name);
    if attached {
        client
            .batch_execute(&format!(
                "ALTER TABLE {} DETACH PARTITION {}",
                table.name(),
                p.name
            ))
            .await?;
        // Remember the range, so a later run can finish or undo this.
        client
            .batch_execute(&format!(
                "COMMENT ON TABLE {} IS 'candystore: detached for archiving; range {} {}'",
                p.name,
                partition::pg_time(range.start),
                partition::pg_time(range.end)
            ))
            .await?;
    }
    let result = async {
        let entry = archive_partition(client, table, p, dir, progress, Pace::Full).await?;
        let rows: i64 = client
            .query_one(&format!("SELECT count(*) FROM {}", p.name), &[])
            .await?
            .get(0);
        if rows as u64 != entry.rows {
            return Err(archive_err(
                &dir.join(&entry.file),
                format!("{} holds {rows} rows, the archive {}", p.name, entry.rows),
            ));
        }
        Ok(entry)
    }
    .await;
    match result {
        Ok(entry) => {
            super::maintain::drop_partition(client, table, &p.name, range, keyring).await?;
            Ok(entry)
        }
        Err(e) => {
            let again = client
                .batch_execute(&format!(
                    "ALTER TABLE {} ATTACH PARTITION {} FOR VALUES FROM ('{}') TO ('{}')",
                    table.name(),
                    p.name,
                    partition::pg_time(range.start),
                    partition::pg_time(range.end)
                ))
                .await;
            if let Err(a) = again {
                tracing::error!(partition = %p.name, error = %a, "the partition stays detached; the next archive or retention run finishes it");
            }
            Err(e)
        }
    }
}

/// Tables a previous archive run detached (and tagged) but did not drop.
pub async fn detached(client: &Client, table: Table) -> Result<Vec<Partition>, StorageError> {
    let rows = client
        .query(
            "SELECT c.relname::text, obj_description(c.oid, 'pg_class'), pg_total_relation_size(c.oid) FROM pg_class c \
             WHERE c.relkind = 'r' AND NOT c.relispartition AND c.relname LIKE $1 \
               AND obj_description(c.oid, 'pg_class') LIKE 'candystore: detached for archiving;%'",
            &[&format!("{}_p%", table.name())],
        )
        .await?;
    Ok(rows
        .iter()
        .filter_map(|r| {
            let comment: String = r.get(1);
            let (a, b) = comment.rsplit("range ").next()?.split_once("+00 ")?;
            let range = partition::parse_bound(&format!("('{a}+00') ('{b}')"))?;
            Some(Partition {
                name: r.get(0),
                range: Some(range),
                bytes: r.get(2),
            })
        })
        .collect())
}

/// What `candystore restore` did with one file.
#[derive(Debug)]
pub struct Restored {
    pub file: PathBuf,
    pub table: &'static str,
    pub rows: u64,
    /// Rows already present (a second restore, or never dropped).
    pub skipped: u64,
}

/// Loads archive files back. Trusts nothing in them: each file is checked
/// against its entry in the manifest beside it (rows, SHA-256) before anything
/// is loaded, every line is read with a length limit, and every row must lie in
/// the entry's range, with a `seq` and `txid` no higher than the entry states
/// (and than the database has handed out, for `txid`). The first row that fails
/// stops the restore with its file and line number.
pub async fn restore(
    client: &mut Client,
    files: &[PathBuf],
    keyring: Option<&Keyring>,
    progress: Option<&dyn Progress>,
) -> Result<Vec<Restored>, StorageError> {
    let mut out = Vec::new();
    let ours = identity(client).await?;
    for path in files {
        let (table, entry) = checked_entry(path)?;
        if !super::is_partitioned(client, table).await? {
            return Err(StorageError::NotPartitioned {
                table: table.name(),
            });
        }
        let file_name = entry.file.clone();
        // From another store (its identity named and not ours), the rows join
        // this store as new writes (events with new leaves; each row with a
        // new `seq`, which another store's rows may hold here); otherwise they
        // come home to their places.
        let adopt = entry.store.is_some() && ours.is_some() && entry.store != ours;
        let adopt = adopt.then_some(Adopt { keyring });
        // Every row checked before any is loaded, so a file that fails leaves
        // nothing behind (the load checks each row again as it goes). A row
        // that joins as a new write takes a new `txid`: its own is not checked.
        let (check_path, check_entry) = (path.clone(), entry.clone());
        let xmax = match adopt {
            Some(_) => i64::MAX,
            None => xmax(client).await?,
        };
        tokio::task::spawn_blocking(move || check_file(&check_path, table, &check_entry, xmax))
            .await
            .map_err(|_| archive_err(path, "the checking thread panicked"))??;
        if let Some(p) = progress {
            p.start(&file_name, entry.rows);
        }
        let r = restore_file(client, table, path, &entry, adopt, progress).await?;
        if r.rows > r.skipped {
            // Filled in bulk: analysed now, not whenever autovacuum gets to it.
            for p in partition::list(client, table).await? {
                if p.range
                    .is_some_and(|range| range.start < entry.to && entry.from < range.end)
                {
                    super::statistics::analyze(client, &p.name).await?;
                }
            }
        }
        if table == Table::Events && crate::audit::store::has_tree(client).await? {
            // An archive written before a redaction brings the content back:
            // redacted again at once.
            client
                .execute(crate::audit::redact::REDACT_RESTORED, &[])
                .await?;
        }
        if let Some(p) = progress {
            p.finish();
        }
        out.push(r);
    }
    Ok(out)
}

/// The table and manifest entry of the archive file at `path`, once the file
/// is shown to be the one its entry describes (rows, SHA-256): what every
/// restore, into either store, starts from.
pub fn checked_entry(path: &Path) -> Result<(Table, Entry), StorageError> {
    let file_name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let table = Table::of_partition(&file_name).ok_or_else(|| {
        archive_err(
            path,
            format!(
                "not an archive file name (events_p….ndjson.zst or dead_letter_p….ndjson.zst); a directory or its {MANIFEST} restores every file the manifest lists"
            ),
        )
    })?;
    let dir = path.parent().unwrap_or(Path::new("."));
    let entry = read_manifest(dir)?
        .and_then(|m| m.files.into_iter().find(|e| e.file == file_name))
        .ok_or_else(|| {
            archive_err(
                path,
                format!("no entry for it in {MANIFEST} beside it: its range, rows and SHA-256 are what a restore checks it against"),
            )
        })?;
    if entry.table != table.name() || entry.from >= entry.to {
        return Err(archive_err(
            path,
            format!(
                "its manifest entry does not describe a partition of {}",
                table.name()
            ),
        ));
    }
    let (lines, sha) = verify_file(path)?;
    if sha != entry.sha256 || lines != entry.rows {
        return Err(archive_err(
            path,
            format!(
                "{lines} rows with SHA-256 {sha}, the manifest says {} rows with {}",
                entry.rows, entry.sha256
            ),
        ));
    }
    Ok((table, entry))
}

/// An archive file's lines, read in chunks of at most [`RESTORE_CHUNK`] lines
/// or [`RESTORE_CHUNK_BYTES`], each line with a length limit.
pub struct Lines {
    file: BufReader<zstd::stream::read::Decoder<'static, BufReader<File>>>,
    buf: Vec<u8>,
    number: u64,
}

impl Lines {
    pub fn open(path: &Path) -> std::io::Result<Lines> {
        let file = File::open(path).and_then(zstd::stream::read::Decoder::new)?;
        Ok(Lines {
            file: BufReader::with_capacity(1 << 20, file),
            buf: Vec::new(),
            number: 0,
        })
    }

    /// The next chunk; empty at the end.
    pub fn chunk(&mut self) -> std::io::Result<Vec<String>> {
        let (mut chunk, mut bytes) = (Vec::new(), 0usize);
        while chunk.len() < RESTORE_CHUNK && bytes < RESTORE_CHUNK_BYTES {
            self.number += 1;
            match next_line(&mut self.file, &mut self.buf, self.number)? {
                Some(l) => {
                    bytes += l.len();
                    chunk.push(l);
                }
                None => break,
            }
        }
        Ok(chunk)
    }
}

/// What a restore checks of each line before PostgreSQL parses it. serde refuses
/// a key given twice, so the values checked are the values loaded.
#[derive(Deserialize)]
struct Checked {
    #[serde(default)]
    timestamp: Option<DateTime<Utc>>,
    #[serde(default)]
    received_at: Option<DateTime<Utc>>,
    seq: i64,
    #[serde(default)]
    txid: Option<i64>,
}

/// Every transaction that ever wrote a row in this database began below this.
async fn xmax(client: &Client) -> Result<i64, StorageError> {
    Ok(client
        .query_one(
            "SELECT pg_snapshot_xmax(pg_current_snapshot())::text::int8",
            &[],
        )
        .await?
        .get(0))
}

/// Reads `path` through and checks every row as [`refusal`] does.
pub fn check_file(path: &Path, table: Table, entry: &Entry, xmax: i64) -> Result<(), StorageError> {
    let mut file = File::open(path)
        .and_then(zstd::stream::read::Decoder::new)
        .map(|d| BufReader::with_capacity(1 << 20, d))
        .map_err(|e| archive_err(path, e.to_string()))?;
    let mut buf = Vec::new();
    let mut number = 0u64;
    loop {
        number += 1;
        let Some(line) =
            next_line(&mut file, &mut buf, number).map_err(|e| archive_err(path, e.to_string()))?
        else {
            return Ok(());
        };
        check_line(&line, table, entry, xmax)
            .map_err(|why| archive_err(path, format!("line {number}: {why}")))?;
    }
}

/// Checks one archived line of `entry`'s file: the row's time, `seq` and
/// `txid` as [`refusal`] says; returns its time. Pure (the fuzz target's entry).
pub fn check_line(
    line: &str,
    table: Table,
    entry: &Entry,
    xmax: i64,
) -> Result<DateTime<Utc>, String> {
    let row: Checked = serde_json::from_str(line).map_err(|e| e.to_string())?;
    refusal(&row, table, entry, xmax)
}

/// Why a row of `entry`'s file is refused, or its partition time.
fn refusal(row: &Checked, table: Table, entry: &Entry, xmax: i64) -> Result<DateTime<Utc>, String> {
    let at = match table {
        Table::Events => row.timestamp,
        Table::DeadLetter => row.received_at,
    };
    let Some(at) = at else {
        return Err("no time".into());
    };
    if at < entry.from || at >= entry.to {
        return Err(format!(
            "time {at} lies outside its file's partition [{}, {})",
            entry.from, entry.to
        ));
    }
    let max_seq = entry
        .max_seq
        .unwrap_or(MAX_RESTORED_SEQ)
        .min(MAX_RESTORED_SEQ);
    if row.seq < 1 || row.seq > max_seq {
        return Err(format!("seq {} is outside 1..={max_seq}", row.seq));
    }
    if let Some(txid) = row.txid {
        let max_txid = entry.max_txid.unwrap_or(i64::MAX).min(xmax - 1);
        if txid < 0 || txid > max_txid {
            return Err(format!(
                "txid {txid} is outside 0..={max_txid} (its manifest entry, and transactions this database has begun)"
            ));
        }
    }
    Ok(at)
}

/// Rows of another store, restored as new writes of this one: a new place
/// (`txid`, `seq`) each, and a new leaf committing to the row as it came (its
/// salt kept, or a new one for a row stored before the tree), attested with
/// `keyring`'s first key.
#[derive(Clone, Copy)]
struct Adopt<'k> {
    keyring: Option<&'k Keyring>,
}

async fn restore_file(
    client: &mut Client,
    table: Table,
    path: &Path,
    entry: &Entry,
    adopt: Option<Adopt<'_>>,
    progress: Option<&dyn Progress>,
) -> Result<Restored, StorageError> {
    let counting = table == Table::Events && super::catalog::has_session_counts(client).await?;
    let insert = client
        .prepare(&restore_sql(table, counting, adopt.is_some()))
        .await?;
    let xmax = match adopt {
        Some(_) => i64::MAX,
        None => xmax(client).await?,
    };
    let (tx, mut rx) = tokio::sync::mpsc::channel::<std::io::Result<Vec<String>>>(2);
    let reader_path = path.to_owned();
    let reader = tokio::task::spawn_blocking(move || {
        let mut lines = match Lines::open(&reader_path) {
            Ok(l) => l,
            Err(e) => {
                let _ = tx.blocking_send(Err(e));
                return;
            }
        };
        loop {
            match lines.chunk() {
                Ok(c) if c.is_empty() => return,
                chunk => {
                    let failed = chunk.is_err();
                    if tx.blocking_send(chunk).is_err() || failed {
                        return;
                    }
                }
            }
        }
    });
    let mut rows = 0u64;
    let mut inserted = 0u64;
    let mut max_seq = 0i64;
    let mut known = partition::ranges_in(client, table.name()).await?;
    let within = partition::Range {
        start: entry.from,
        end: entry.to,
    };
    while let Some(chunk) = rx.recv().await {
        let chunk = chunk.map_err(|e| archive_err(path, e.to_string()))?;
        // Every row checked, and partitions for the chunk's times made, before
        // anything of it is loaded: no row lands in the default partition.
        for line in &chunk {
            rows += 1;
            let at = check_line(line, table, entry, xmax)
                .map_err(|why| archive_err(path, format!("line {rows}: {why}")))?;
            if let Some(range) = partition::gap_within(at, within, &known) {
                partition::create(client, table, range).await?;
                known.push(range);
            }
        }
        // The lines travel as one text[] parameter: no staging table to write.
        let tx = client.transaction().await?;
        if counting {
            // Under the catalog's turn: the rows it has passed are counted here,
            // the others by it, none twice.
            super::catalog::hold(&tx).await?;
        }
        if let (Some(adopt), Table::Events) = (adopt, table) {
            let salts: Vec<Vec<u8>> = chunk
                .iter()
                .map(|_| crate::audit::leaf::salt().to_vec())
                .collect();
            let rows = tx.query(&insert, &[&chunk, &salts]).await?;
            inserted += rows.len() as u64;
            add_leaves(&tx, &rows, adopt.keyring).await?;
        } else {
            let row = tx.query_one(&insert, &[&chunk]).await?;
            inserted += row.get::<_, i64>(0) as u64;
            max_seq = max_seq.max(row.get::<_, Option<i64>>(1).unwrap_or(0));
        }
        tx.commit().await?;
        if let Some(p) = progress {
            p.advance(chunk.len() as u64);
        }
    }
    let _ = reader.await;
    // Restored rows keep their seq; new rows must be numbered above them. Each
    // was checked against the manifest's highest seq and MAX_RESTORED_SEQ.
    // (Rows that joined as new writes were numbered by the sequence.)
    if adopt.is_none() {
        client
        .execute(
            &format!(
                "SELECT setval(pg_get_serial_sequence('{0}', 'seq'), greatest($1, (SELECT last_value FROM pg_sequences \
                 WHERE schemaname || '.' || sequencename = pg_get_serial_sequence('{0}', 'seq')), 1))",
                table.name()
            ),
            &[&max_seq],
        )
        .await?;
    }
    Ok(Restored {
        file: path.to_owned(),
        table: table.name(),
        rows,
        skipped: rows - inserted,
    })
}

/// One statement: parse the staged lines, insert the rows that are not there yet
/// and their redelivery keys (and, `counting`, their session counts), and answer
/// (rows inserted, highest seq).
///
/// `adopt` (events of another store): each row gets a new place and keeps its
/// salt (or takes the one given beside its line, `$2`), and the statement
/// answers the inserted rows as `txid, seq, CONTENT_COLUMNS, salt`, for their
/// leaves.
fn restore_sql(table: Table, counting: bool, adopt: bool) -> String {
    let name = table.name();
    let pairs = restore_columns(table, adopt);
    let columns = pairs.iter().map(|p| p.0).collect::<Vec<_>>().join(", ");
    let lines = if adopt && table == Table::Events {
        "unnest($1::text[], $2::bytea[]) AS l(line, fresh)"
    } else {
        "unnest($1::text[]) AS l(line)"
    };
    let parsed = format!(
        "SELECT {} FROM {lines}, jsonb_to_record(l.line::jsonb) AS r({})",
        pairs.iter().map(|p| p.1).collect::<Vec<_>>().join(", "),
        record_type(table)
    );
    let returned = match table {
        Table::Events => {
            "seq, id, source, \"timestamp\", received_at, properties, txid, session_id, event_type"
        }
        Table::DeadLetter => "seq, fingerprint, received_at",
    };
    let keys = match table {
        // The same rule as sql/0008: rows whose time looks like a fallback.
        Table::Events => {
            "INSERT INTO event_keys (id, source, \"timestamp\") SELECT id, source, \"timestamp\" FROM ins \
             WHERE \"timestamp\" = received_at OR ((properties->>'timestamp') ~ '^[0-9]{1,15}$' AND \"timestamp\" IN \
             (to_timestamp((properties->>'timestamp')::float8), to_timestamp((properties->>'timestamp')::float8 / 1000))) \
             ON CONFLICT DO NOTHING"
        }
        Table::DeadLetter => {
            "INSERT INTO dead_letter_keys (fingerprint, received_at) SELECT fingerprint, received_at FROM ins \
             ON CONFLICT DO NOTHING"
        }
    };
    // A restored event at home goes back to its place in the storage order,
    // `(txid, seq)`: the tree holds its leaf there, so `verify` checks it
    // again, and it sits behind every live-tail position, so no stream sends it
    // (history, not news). A new write returns what its leaf commits to.
    let (returned, answer) = if adopt && table == Table::Events {
        (
            format!(
                "{returned}, target, routing_key, exchange, payload::text AS payload_text, \
                 envelope::text AS envelope_text, payload_member, properties::text AS properties_text, \
                 correlation_id, generation, sanitized, original_body, salt"
            ),
            "SELECT txid, seq, id, source, \"timestamp\", event_type, target, routing_key, exchange, \
             received_at, payload_text, envelope_text, payload_member, properties_text, session_id, \
             correlation_id, generation, sanitized, original_body, salt FROM ins",
        )
    } else {
        (returned.to_owned(), "SELECT count(*), max(seq) FROM ins")
    };
    format!(
        "WITH ins AS (INSERT INTO {name} ({columns}) {parsed} ON CONFLICT DO NOTHING RETURNING {returned}), \
         k AS ({keys}){sessions} \
         {answer}",
        sessions = if counting {
            format!(", {}", super::catalog::SESSION_COUNT_RESTORED)
        } else {
            String::new()
        }
    )
}

/// The leaves of rows that joined as new writes, each committing to the row as
/// stored (`txid, seq, CONTENT_COLUMNS, salt`), at its place, in the rows'
/// transaction.
async fn add_leaves(
    tx: &tokio_postgres::Transaction<'_>,
    rows: &[tokio_postgres::Row],
    keyring: Option<&Keyring>,
) -> Result<(), StorageError> {
    let (mut txids, mut seqs, mut leaves) = (Vec::new(), Vec::new(), Vec::new());
    for row in rows {
        let content = crate::audit::verify::content(row);
        let salt: &[u8] = row.get(19);
        txids.push(row.get::<_, i64>(0));
        seqs.push(row.get::<_, i64>(1));
        leaves.push(crate::audit::leaf::event(
            content.timestamp,
            &content.commitment(salt),
            keyring,
        ));
    }
    tx.execute(
        "INSERT INTO audit_leaves (txid, seq, leaf) \
         SELECT * FROM unnest($1::bigint[], $2::bigint[], $3::bytea[])",
        &[&txids, &seqs, &leaves],
    )
    .await?;
    Ok(())
}

struct HashingWriter {
    inner: File,
    hasher: Sha256,
    written: u64,
}

impl HashingWriter {
    fn new(inner: File) -> Self {
        Self {
            inner,
            hasher: Sha256::new(),
            written: 0,
        }
    }
}

impl Write for HashingWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.written += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

struct HashingReader<'a> {
    inner: File,
    hasher: &'a mut Sha256,
}

impl Read for HashingReader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        Ok(n)
    }
}

fn hex(bytes: &[u8]) -> String {
    crate::model::hex::encode(bytes)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::{Pace, Pacer, Table, in_background, restore_columns};

    #[test]
    fn a_restore_at_home_fills_every_column_of_the_table_and_a_new_write_all_but_its_place() {
        let names = |table, adopt| {
            restore_columns(table, adopt)
                .iter()
                .map(|p| p.0)
                .collect::<Vec<_>>()
                .join(", ")
        };
        use crate::storage::schema::{DEAD_LETTER_COLUMNS, EVENT_COLUMNS};
        assert_eq!(
            names(Table::Events, false),
            format!("{EVENT_COLUMNS}, txid, attestation, salt")
        );
        assert_eq!(names(Table::DeadLetter, false), DEAD_LETTER_COLUMNS);
        assert_eq!(
            names(Table::Events, true),
            format!(
                "{}, attestation, salt",
                EVENT_COLUMNS.strip_prefix("seq, ").unwrap()
            )
        );
        assert_eq!(
            names(Table::DeadLetter, true),
            DEAD_LETTER_COLUMNS.strip_prefix("seq, ").unwrap()
        );
        let salt = |adopt| {
            restore_columns(Table::Events, adopt)
                .into_iter()
                .find(|p| p.0 == "salt")
                .unwrap()
                .1
        };
        assert_eq!(salt(false), "decode(r.salt, 'hex')");
        assert!(
            salt(true).contains("l.fresh"),
            "a new salt for a row without one"
        );
    }

    #[test]
    fn a_paced_reader_waits_until_its_bytes_are_due_and_a_full_one_never_waits() {
        let mut full = Pacer::new(Pace::Full);
        assert_eq!(full.read(1 << 30), None);

        // 1 MB/s: 5 kB are due in 5 ms, within the slack; 100 kB more in 105 ms.
        let mut paced = Pacer::new(Pace::BytesPerSecond(1_000_000));
        assert_eq!(paced.read(5_000), None);
        let due = paced.read(100_000).expect("105 ms ahead of the pace");
        assert_eq!(due - paced.start, Duration::from_millis(105));
    }

    #[tokio::test]
    async fn background_work_runs_on_a_named_thread_of_lower_priority() {
        #[cfg(target_os = "linux")]
        // SAFETY: getpriority reads no memory of ours.
        let before = unsafe { libc::getpriority(libc::PRIO_PROCESS, 0) };
        let (name, nice) = in_background("archive-test", || {
            // SAFETY: getpriority reads no memory of ours.
            #[cfg(target_os = "linux")]
            let nice = unsafe { libc::getpriority(libc::PRIO_PROCESS, 0) };
            #[cfg(not(target_os = "linux"))]
            let nice = 10;
            (std::thread::current().name().map(str::to_owned), nice)
        })
        .await
        .expect("the work ran");
        assert_eq!(name.as_deref(), Some("archive-test"));
        assert!(nice >= 10, "nice {nice}");
        // The caller's thread keeps its own priority.
        #[cfg(target_os = "linux")]
        assert_eq!(unsafe { libc::getpriority(libc::PRIO_PROCESS, 0) }, before);
    }

    #[tokio::test]
    async fn background_work_starts_before_its_answer_is_awaited() {
        // As the archive uses it: the caller feeds the work through a bounded
        // channel, more than the channel holds, and only then awaits the answer.
        let (tx, mut rx) = tokio::sync::mpsc::channel::<u32>(2);
        let sum = in_background("archive-test", move || {
            let mut sum = 0;
            while let Some(n) = rx.blocking_recv() {
                sum += n;
            }
            sum
        });
        let fed = tokio::time::timeout(std::time::Duration::from_secs(10), async {
            for n in 1..=10 {
                tx.send(n).await.expect("the work is receiving");
            }
        })
        .await;
        assert!(
            fed.is_ok(),
            "the channel was never drained: the work had not started"
        );
        drop(tx);
        assert_eq!(sum.await, Some(55));
    }

    #[tokio::test]
    async fn background_work_that_panics_is_none() {
        assert!(
            in_background("archive-test", || panic!("boom"))
                .await
                .is_none()
        );
    }
}
