//! The collector's write-ahead log: an ingest batch is acknowledged only once
//! it is on disk.
//!
//! # Group commit
//!
//! One writer thread owns the log. [`Wal::append`] encodes the batch in the
//! caller's task, queues it and waits for its acknowledgement. The writer
//! takes everything queued (up to [`WalConfig::max_group_records`] /
//! [`WalConfig::max_group_bytes`]), writes the records, makes them durable
//! with **one** `fdatasync` for the whole group and then acknowledges each
//! caller. While it syncs, the next group queues up, so the number of fsyncs
//! adapts to the load without a timer; [`WalConfig::group_linger`] can add a
//! short wait to build larger groups.
//!
//! # On disk
//!
//! The log is a [`SpillLog`] (segment files of CRC-framed records, torn-tail
//! recovery, a persisted cursor) used with per-record syncing turned off: it
//! is opened with [`FsyncPolicy::EveryN`]`(u32::MAX)`, so an append only
//! writes, and the writer calls [`SpillLog::sync`] once per group. The spill
//! log still syncs a segment before moving to the next one and syncs the
//! directory when it creates a segment, so every record of a group is durable
//! after the group's sync. Its size-cap eviction is disabled
//! (`max_total_size = u64::MAX`): a WAL must never drop acknowledged data, so
//! disk use is bounded by [`WalConfig::max_disk_bytes`] (appends fail with
//! [`Error::Full`]) and by ingest backpressure on the assembler instead.
//! A record's payload is a [`RecordPayload`]: the batch's clew spans
//! (field 1, laid out as a prost-encoded [`ExportRequest`]), or the
//! OTLP/protobuf request body they were converted from (field 2,
//! [`Wal::append_otlp`]), kept as it came instead of re-encoded: ingest
//! writes it when every span of the request converted unchanged, so
//! converting the body again at replay (without limits) gives the same
//! spans. Field 3 is a tag ([`Wal::append_tagged`]): the replica logs of
//! [`crate::replication`] are WALs too, and keep there the origin's number
//! of the batch.
//!
//! # Incarnation
//!
//! [`incarnation`] gives the WAL directory's identity, a random number
//! written beside the segments when the directory is first used. A
//! collector whose disk was lost starts with a new one, which tells its
//! peers that the copies they keep of its batches are the only ones left.
//!
//! # Checkpoint and truncation
//!
//! Every record is *outstanding* from the moment it is written (or found at
//! open) until it is released: [`Wal::release`] says every span of it is
//! durably in storage. The assembler releases a record when the last trace
//! fragment holding its spans has been stored. The **checkpoint** is the
//! lowest outstanding sequence number (or the next one to be written when
//! none is outstanding): every record below it is in storage. The writer
//! persists it (as the spill log's cursor) at most every
//! [`WalConfig::checkpoint_interval`], on [`Wal::persist_checkpoint`] and on
//! shutdown; the spill log then deletes the segments wholly below it.
//!
//! An [`Appended`] acknowledgement that is dropped before it reaches the
//! assembler (the ingest call was cancelled after queueing the batch) releases
//! its record: the client was not told the batch was accepted, so it will
//! send it again, and the orphan must not hold back the checkpoint forever.
//!
//! # Recovery
//!
//! [`Wal::open`] recovers the log (a torn last record, which was never
//! acknowledged, is cut off) and returns every record at or after the
//! persisted checkpoint, in order, for replay into the assembler. Storage
//! writes are idempotent, so replaying something already stored is harmless.
//!
//! # Failures
//!
//! A failed write is taken back off the log and reported to its caller only.
//! A failed fsync **poisons** the log: after one, Linux may have dropped the
//! dirty pages, so a later successful fsync proves nothing. Every later
//! append fails with [`Error::Poisoned`] and the process should restart and
//! recover from what is really on disk.

use std::collections::BTreeSet;
use std::fmt;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use clew_proto::v1::{ExportRequest, Span};
use clew_reliability::spill::{self, FRAME_HEADER_LEN, FsyncPolicy, SpillConfig, SpillLog};
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use parking_lot::Mutex;
use prost::Message;
use tokio::sync::oneshot;

/// Errors of the WAL.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Opening, writing or reading the log failed.
    #[error("wal: {0}")]
    Log(#[from] spill::Error),
    /// An earlier fsync failed; the log takes no more appends (restart to
    /// recover).
    #[error("wal: poisoned by an earlier fsync failure: {0}")]
    Poisoned(#[source] Arc<spill::Error>),
    /// The log is at [`WalConfig::max_disk_bytes`]; the batch was not
    /// written. Callers should answer RESOURCE_EXHAUSTED / 429.
    #[error("wal: full ({disk_bytes} bytes on disk, limit {limit})")]
    Full {
        /// Size of the segment files.
        disk_bytes: u64,
        /// The configured limit.
        limit: u64,
    },
    /// The writer thread has stopped (after [`Wal::shutdown`]).
    #[error("wal: closed")]
    Closed,
    /// The writer thread could not be started.
    #[error("wal: cannot start the writer thread: {0}")]
    Spawn(#[source] std::io::Error),
    /// A file of the log's directory could not be read or written.
    #[error("wal: {0}")]
    Io(#[from] std::io::Error),
    /// The configuration is unusable.
    #[error("wal: invalid configuration: {0}")]
    InvalidConfig(&'static str),
}

/// Result type of the WAL.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Settings for a [`Wal`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WalConfig {
    /// Size at which a new segment file is started. Segments are deleted
    /// whole once every record in them is below the checkpoint, so smaller
    /// segments free disk sooner at the cost of more files.
    pub segment_size: u64,
    /// Appends fail with [`Error::Full`] while the segment files total this
    /// many bytes or more (`None`: no limit).
    pub max_disk_bytes: Option<u64>,
    /// Most records written under one fsync.
    pub max_group_records: usize,
    /// Most payload bytes written under one fsync (a group always takes at
    /// least one record).
    pub max_group_bytes: usize,
    /// How long the writer waits for more records after the first one of a
    /// group before syncing. Zero (the default) syncs at once: groups then
    /// form from whatever queued during the previous sync.
    pub group_linger: Duration,
    /// The persisted checkpoint is advanced (and segments deleted) at most
    /// this often. Persisting costs two fsyncs; a stale checkpoint only
    /// means more (idempotent) replay after a crash.
    pub checkpoint_interval: Duration,
    /// Whether to fsync at all. Turning it off keeps data across a process
    /// crash but not across an OS crash or power loss: for tests and
    /// throwaway local setups only.
    pub fsync: bool,
}

impl Default for WalConfig {
    fn default() -> Self {
        Self {
            segment_size: 32 * 1024 * 1024,
            max_disk_bytes: None,
            max_group_records: 1024,
            max_group_bytes: 16 * 1024 * 1024,
            group_linger: Duration::ZERO,
            checkpoint_interval: Duration::from_secs(1),
            fsync: true,
        }
    }
}

impl WalConfig {
    fn validate(&self) -> Result<()> {
        if self.segment_size == 0 {
            return Err(Error::InvalidConfig("segment_size must be non-zero"));
        }
        if self.max_group_records == 0 {
            return Err(Error::InvalidConfig("max_group_records must be non-zero"));
        }
        Ok(())
    }
}

/// Counters and gauges for metrics, updated by the writer thread.
#[derive(Debug, Default)]
pub struct WalStats {
    /// Records appended (acknowledged) since open.
    pub records: AtomicU64,
    /// On-disk bytes (framing included) of those records.
    pub bytes: AtomicU64,
    /// Groups written; each ends with one fsync (when fsync is on).
    pub groups: AtomicU64,
    /// Group fsyncs issued: one per group when fsync is on. (The spill log
    /// also syncs when it rolls a segment, and persisting a checkpoint
    /// syncs twice; those are not counted here.)
    pub fsyncs: AtomicU64,
    /// Total time spent in group fsyncs, in nanoseconds.
    pub fsync_nanos: AtomicU64,
    /// Size (records) of the largest group so far.
    pub max_group_records: AtomicU64,
    /// Appends refused or failed (full, poisoned, write error).
    pub append_errors: AtomicU64,
    /// Times the checkpoint was persisted.
    pub checkpoints: AtomicU64,
    /// Gauge: the persisted checkpoint (first sequence number replayed after
    /// a crash).
    pub persisted_checkpoint: AtomicU64,
    /// Gauge: total size of the segment files.
    pub disk_bytes: AtomicU64,
    /// Records found at open that did not decode as an `ExportRequest` and
    /// were skipped.
    pub undecodable_records: AtomicU64,
}

/// A record read back at open, to replay into the assembler.
#[derive(Debug, Clone, PartialEq)]
pub struct WalRecord {
    /// Sequence number of the record.
    pub seq: u64,
    /// The ingest batch.
    pub batch: ExportRequest,
    /// The tag it was appended with ([`Wal::append_tagged`]; 0 otherwise).
    pub tag: u64,
}

/// Which records are still needed, shared by the handles, the writer and
/// [`Appended`] guards.
#[derive(Debug)]
struct Outstanding {
    /// Records written (or replayed) and not yet released.
    held: BTreeSet<u64>,
    /// Sequence number of the next record to be written.
    next_seq: u64,
    /// Records at or after it stay whatever is released ([`Wal::set_floor`]).
    floor: Option<u64>,
    /// Records written whose [`Appended`] was neither handed on nor dropped.
    unconsumed: BTreeSet<u64>,
}

impl Outstanding {
    fn checkpoint(&self) -> u64 {
        let released = self.held.first().copied().unwrap_or(self.next_seq);
        self.floor.map_or(released, |f| released.min(f))
    }
}

#[derive(Debug)]
struct Shared {
    outstanding: Mutex<Outstanding>,
    stats: WalStats,
}

impl Shared {
    fn release(&self, seq: u64) {
        self.outstanding.lock().held.remove(&seq);
    }

    fn consumed(&self, seq: u64) {
        self.outstanding.lock().unconsumed.remove(&seq);
    }
}

/// The acknowledgement of a durable append: its sequence number, and the
/// record's hold on the WAL.
///
/// Hand it to the assembler ([`crate::assembly::Assembler::add`]), which
/// keeps the record until every span in it is stored. Dropping it instead
/// releases the record at once (see the [module docs](self)).
#[must_use = "hand the acknowledgement to the assembler; dropping it releases the record"]
pub struct Appended {
    seq: u64,
    shared: Option<Arc<Shared>>,
}

impl Appended {
    /// Sequence number of the record.
    pub fn seq(&self) -> u64 {
        self.seq
    }

    /// Gives up the guard without releasing: the holder now owes
    /// [`Wal::release`].
    pub(crate) fn into_held_seq(mut self) -> u64 {
        if let Some(shared) = self.shared.take() {
            shared.consumed(self.seq);
        }
        self.seq
    }
}

impl fmt::Debug for Appended {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Appended").field("seq", &self.seq).finish()
    }
}

impl Drop for Appended {
    fn drop(&mut self) {
        if let Some(shared) = self.shared.take() {
            shared.consumed(self.seq);
            shared.release(self.seq);
        }
    }
}

enum Msg {
    Append {
        payload: Vec<u8>,
        ack: oneshot::Sender<Result<Appended>>,
    },
    PersistCheckpoint {
        ack: oneshot::Sender<Result<u64>>,
    },
    Shutdown {
        ack: oneshot::Sender<Result<u64>>,
    },
}

/// A handle on the WAL; clones share the one writer thread. See the
/// [module docs](self).
#[derive(Debug, Clone)]
pub struct Wal {
    tx: mpsc::Sender<Msg>,
    shared: Arc<Shared>,
    dir: PathBuf,
    // Declared after `tx`: when the last handle drops, its sender goes
    // first (disconnecting the writer), then this joins the writer.
    _writer: Arc<WriterThread>,
}

/// Waits for the writer thread when the last `Wal` handle is dropped, so
/// the directory (and its lock) is free once the WAL is gone. Appends
/// already queued are written first.
#[derive(Debug)]
struct WriterThread(Mutex<Option<std::thread::JoinHandle<()>>>);

impl Drop for WriterThread {
    fn drop(&mut self) {
        if let Some(handle) = self.0.lock().take() {
            let _ = handle.join();
        }
    }
}

impl Wal {
    /// Opens (creating if needed) the WAL in `dir`, recovers it, starts the
    /// writer thread, and returns the records at or after the persisted
    /// checkpoint, oldest first, to replay. The replayed records are
    /// outstanding until [released](Self::release) (the assembler does it
    /// once they are stored).
    ///
    /// Blocking file I/O: call it at start-up or from `spawn_blocking`.
    pub fn open(dir: impl AsRef<Path>, config: WalConfig) -> Result<(Wal, Vec<WalRecord>)> {
        config.validate()?;
        let dir = dir.as_ref().to_path_buf();
        let mut log = SpillLog::open(
            &dir,
            SpillConfig {
                segment_size: config.segment_size,
                max_total_size: u64::MAX,
                fsync: if config.fsync {
                    FsyncPolicy::EveryN(u32::MAX)
                } else {
                    FsyncPolicy::Never
                },
            },
        )?;
        // Read back only at the next start: closed segments need no cache.
        log.uncache_closed();
        let stats = WalStats::default();
        let raw = log.read_batch(usize::MAX, usize::MAX)?;
        let mut held = BTreeSet::new();
        let mut replay = Vec::with_capacity(raw.len());
        for (seq, payload) in raw {
            match decode_record(&payload) {
                Ok((batch, tag)) => {
                    held.insert(seq);
                    replay.push(WalRecord { seq, batch, tag });
                }
                Err(error) => {
                    // The frame's CRC matched, so this is not disk damage but
                    // a foreign or incompatible record: nothing to replay.
                    stats.undecodable_records.fetch_add(1, Ordering::Relaxed);
                    tracing::error!(seq, %error, "wal: record does not decode; skipping it");
                }
            }
        }
        let log_stats = log.stats();
        tracing::info!(
            dir = %dir.display(),
            checkpoint = log.cursor(),
            next_seq = log.next_seq(),
            replay_records = replay.len(),
            truncated_bytes = log_stats.truncated_bytes,
            corrupt_bytes = log_stats.corrupt_bytes,
            "wal: opened"
        );
        stats
            .persisted_checkpoint
            .store(log.cursor(), Ordering::Relaxed);
        stats.disk_bytes.store(log.disk_bytes(), Ordering::Relaxed);
        let shared = Arc::new(Shared {
            outstanding: Mutex::new(Outstanding {
                held,
                next_seq: log.next_seq(),
                floor: None,
                unconsumed: BTreeSet::new(),
            }),
            stats,
        });
        let (tx, rx) = mpsc::channel();
        let writer = Writer {
            log,
            config,
            shared: Arc::clone(&shared),
            rx,
            poisoned: None,
            last_checkpoint: Instant::now(),
        };
        let writer = std::thread::Builder::new()
            .name("clew-wal".into())
            .spawn(move || writer.run())
            .map_err(Error::Spawn)?;
        Ok((
            Wal {
                tx,
                shared,
                dir,
                _writer: Arc::new(WriterThread(Mutex::new(Some(writer)))),
            },
            replay,
        ))
    }

    /// Queues `batch` for the log and returns a future that resolves once it
    /// is durable. The batch is encoded and queued when this is called, not
    /// when the future is first polled; dropping the future does not take it
    /// back (the record is then released as soon as it is written).
    pub fn append(
        &self,
        batch: &ExportRequest,
    ) -> impl Future<Output = Result<Appended>> + Send + use<> {
        self.append_sized(batch).1
    }

    /// [`append`](Self::append), also returning the encoded length of each
    /// span of `batch` (in order), which the encoding computes anyway: the
    /// assembler accounts memory with them.
    pub fn append_sized(
        &self,
        batch: &ExportRequest,
    ) -> (
        Vec<u64>,
        impl Future<Output = Result<Appended>> + Send + use<>,
    ) {
        let (payload, sizes) = encode_batch(batch);
        (sizes, self.queue(payload))
    }

    /// [`append`](Self::append), keeping `tag` with the record (a replica
    /// log keeps the origin's batch number there); [`WalRecord::tag`] gives
    /// it back at open.
    pub fn append_tagged(
        &self,
        batch: &ExportRequest,
        tag: u64,
    ) -> impl Future<Output = Result<Appended>> + Send + use<> {
        use prost::encoding::{WireType, encode_key, encode_varint};
        let (mut payload, _) = encode_batch(batch);
        encode_key(3, WireType::Varint, &mut payload);
        encode_varint(tag, &mut payload);
        self.queue(payload)
    }

    /// [`append_tagged`](Self::append_tagged) for spans that are already
    /// encoded (each a prost-encoded [`Span`]): they are written as they
    /// are, without decoding.
    pub fn append_encoded_tagged(
        &self,
        spans: &[prost::bytes::Bytes],
        tag: u64,
    ) -> impl Future<Output = Result<Appended>> + Send + use<> {
        use prost::encoding::{WireType, encode_key, encode_varint, encoded_len_varint};
        let total: usize = spans
            .iter()
            .map(|s| 1 + encoded_len_varint(s.as_ref().len() as u64) + s.as_ref().len())
            .sum();
        let mut payload = Vec::with_capacity(total + 11);
        for span in spans {
            let span = span.as_ref();
            encode_key(1, WireType::LengthDelimited, &mut payload);
            encode_varint(span.len() as u64, &mut payload);
            payload.extend_from_slice(span);
        }
        encode_key(3, WireType::Varint, &mut payload);
        encode_varint(tag, &mut payload);
        self.queue(payload)
    }

    /// [`append`](Self::append) for a batch converted from the
    /// OTLP/protobuf request `body` with nothing rejected, dropped or
    /// shortened: the record keeps `body` itself, which costs a copy instead
    /// of encoding every span. Replay converts it again without limits
    /// (see [`crate::ingest::otlp::from_otlp`]), which gives the same spans.
    pub fn append_otlp(
        &self,
        body: &[u8],
    ) -> impl Future<Output = Result<Appended>> + Send + use<> {
        use prost::encoding::{WireType, encode_key, encode_varint, encoded_len_varint};
        let mut payload =
            Vec::with_capacity(1 + encoded_len_varint(body.len() as u64) + body.len());
        encode_key(2, WireType::LengthDelimited, &mut payload);
        encode_varint(body.len() as u64, &mut payload);
        payload.extend_from_slice(body);
        self.queue(payload)
    }

    /// [`append_otlp`](Self::append_otlp) with a tag, as
    /// [`append_tagged`](Self::append_tagged).
    pub fn append_otlp_tagged(
        &self,
        body: &[u8],
        tag: u64,
    ) -> impl Future<Output = Result<Appended>> + Send + use<> {
        use prost::encoding::{WireType, encode_key, encode_varint, encoded_len_varint};
        let mut payload =
            Vec::with_capacity(1 + encoded_len_varint(body.len() as u64) + body.len() + 11);
        encode_key(2, WireType::LengthDelimited, &mut payload);
        encode_varint(body.len() as u64, &mut payload);
        payload.extend_from_slice(body);
        encode_key(3, WireType::Varint, &mut payload);
        encode_varint(tag, &mut payload);
        self.queue(payload)
    }

    fn queue(&self, payload: Vec<u8>) -> impl Future<Output = Result<Appended>> + Send + use<> {
        let (ack, rx) = oneshot::channel();
        let sent = self.tx.send(Msg::Append { payload, ack }).is_ok();
        async move {
            if !sent {
                return Err(Error::Closed);
            }
            rx.await.map_err(|_| Error::Closed)?
        }
    }

    /// Releases record `seq`: every span in it is durably stored. Releasing
    /// an unknown or already released record does nothing.
    pub fn release(&self, seq: u64) {
        self.shared.release(seq);
    }

    /// Keeps every record at or after `floor` in the log however many are
    /// released: a second consumer of the records (the roll-ups) has not
    /// made them durable yet. `None` lifts it.
    pub fn set_floor(&self, floor: Option<u64>) {
        self.shared.outstanding.lock().floor = floor;
    }

    /// Every record below it has been handed to its consumer
    /// ([`Appended`] consumed by the assembler) or given up (dropped):
    /// what a second consumer of the records (the roll-ups) has seen all of.
    pub fn consumed_below(&self) -> u64 {
        let out = self.shared.outstanding.lock();
        out.unconsumed.first().copied().unwrap_or(out.next_seq)
    }

    /// The checkpoint as of now (not necessarily persisted yet): every record
    /// below it has been released (and is below the floor).
    pub fn checkpoint(&self) -> u64 {
        self.shared.outstanding.lock().checkpoint()
    }

    /// Number of records written or replayed and not yet released.
    pub fn outstanding(&self) -> usize {
        self.shared.outstanding.lock().held.len()
    }

    /// Persists the current checkpoint now (deleting the segments below it)
    /// and returns it.
    pub async fn persist_checkpoint(&self) -> Result<u64> {
        let (ack, rx) = oneshot::channel();
        self.tx
            .send(Msg::PersistCheckpoint { ack })
            .map_err(|_| Error::Closed)?;
        rx.await.map_err(|_| Error::Closed)?
    }

    /// Writes out everything queued before it, persists the checkpoint and
    /// stops the writer thread. Later appends (from any clone) fail with
    /// [`Error::Closed`]. Returns the persisted checkpoint.
    pub async fn shutdown(&self) -> Result<u64> {
        let (ack, rx) = oneshot::channel();
        self.tx
            .send(Msg::Shutdown { ack })
            .map_err(|_| Error::Closed)?;
        let result = rx.await.map_err(|_| Error::Closed)?;
        // The writer acknowledges and then exits, closing the log: wait for
        // that, so the directory (and its lock) is free when this returns.
        let handle = self._writer.0.lock().take();
        if let Some(handle) = handle {
            let _ = tokio::task::spawn_blocking(move || handle.join()).await;
        }
        result
    }

    /// Counters and gauges.
    pub fn stats(&self) -> &WalStats {
        &self.shared.stats
    }

    /// The WAL's directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

/// The incarnation of the WAL in `dir`: read from its `incarnation` file,
/// or made (random, never 0) and written durably when there is none.
/// Blocking file I/O: call it at start-up.
pub fn incarnation(dir: &Path) -> std::io::Result<u64> {
    let path = dir.join("incarnation");
    match std::fs::read_to_string(&path) {
        Ok(text) => {
            return u64::from_str_radix(text.trim(), 16)
                .ok()
                .filter(|n| *n != 0)
                .ok_or_else(|| {
                    std::io::Error::new(
                        std::io::ErrorKind::InvalidData,
                        format!("{}: not a WAL incarnation", path.display()),
                    )
                });
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    std::fs::create_dir_all(dir)?;
    let id = {
        use rand::TryRngCore as _;
        rand::rngs::OsRng
            .try_next_u64()
            .map_err(std::io::Error::other)?
            .max(1)
    };
    let tmp = dir.join("incarnation.tmp");
    {
        use std::io::Write as _;
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(format!("{id:016x}\n").as_bytes())?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, &path)?;
    std::fs::File::open(dir)?.sync_all()?;
    Ok(id)
}

/// A record's payload: clew spans (as in an [`ExportRequest`], which is why
/// records written before field 2 existed read the same), or an
/// OTLP/protobuf `ExportTraceServiceRequest` body whose spans all converted
/// unchanged.
#[derive(Clone, PartialEq, prost::Message)]
struct RecordPayload {
    #[prost(message, repeated, tag = "1")]
    spans: Vec<Span>,
    #[prost(bytes = "vec", tag = "2")]
    otlp: Vec<u8>,
    #[prost(uint64, tag = "3")]
    tag: u64,
}

/// The batch a record holds, and its tag.
fn decode_record(payload: &[u8]) -> std::result::Result<(ExportRequest, u64), String> {
    let record = RecordPayload::decode(payload).map_err(|e| e.to_string())?;
    let mut spans = record.spans;
    if !record.otlp.is_empty() {
        let request =
            ExportTraceServiceRequest::decode(record.otlp.as_slice()).map_err(|e| e.to_string())?;
        let converted =
            crate::ingest::otlp::from_otlp(request, &crate::ingest::otlp::Limits::unbounded())
                .map_err(|e| e.to_string())?;
        spans.extend(converted.spans);
    }
    Ok((ExportRequest { spans }, record.tag))
}

/// `batch` as prost encodes it (`spans`, field 1, one length-delimited
/// record per span), with each span's encoded length. Every span's length is
/// computed once: `encode_to_vec` would size the request, then size each span
/// again for its length prefix.
fn encode_batch(batch: &ExportRequest) -> (Vec<u8>, Vec<u64>) {
    use prost::encoding::{WireType, encode_key, encode_varint, encoded_len_varint};
    let sizes: Vec<u64> = batch
        .spans
        .iter()
        .map(|span| span.encoded_len() as u64)
        .collect();
    let total: usize = sizes
        .iter()
        .map(|&n| 1 + encoded_len_varint(n) + n as usize)
        .sum();
    let mut payload = Vec::with_capacity(total);
    for (span, &n) in batch.spans.iter().zip(&sizes) {
        encode_key(1, WireType::LengthDelimited, &mut payload);
        encode_varint(n, &mut payload);
        span.encode_raw(&mut payload);
    }
    (payload, sizes)
}

/// The writer thread's state.
struct Writer {
    log: SpillLog,
    config: WalConfig,
    shared: Arc<Shared>,
    rx: mpsc::Receiver<Msg>,
    poisoned: Option<Arc<spill::Error>>,
    last_checkpoint: Instant,
}

/// A queued append taken into the current group.
struct Pending {
    payload: Vec<u8>,
    ack: oneshot::Sender<Result<Appended>>,
}

impl Writer {
    fn run(mut self) {
        let mut group: Vec<Pending> = Vec::new();
        // A control message met while filling a group; handled after it.
        let mut deferred: Option<Msg> = None;
        // When idle, wake now and then to persist the checkpoint.
        let idle_wait = self
            .config
            .checkpoint_interval
            .max(Duration::from_millis(10));
        loop {
            let msg = match deferred.take() {
                Some(msg) => msg,
                None => match self.rx.recv_timeout(idle_wait) {
                    Ok(msg) => msg,
                    Err(mpsc::RecvTimeoutError::Timeout) => {
                        self.maybe_checkpoint(false);
                        continue;
                    }
                    Err(mpsc::RecvTimeoutError::Disconnected) => {
                        // Every handle is gone: leave the checkpoint as fresh
                        // as it can be; the spill log syncs when dropped.
                        self.maybe_checkpoint(true);
                        return;
                    }
                },
            };
            match msg {
                Msg::Append { payload, ack } => {
                    let mut bytes = payload.len();
                    group.push(Pending { payload, ack });
                    deferred = self.fill_group(&mut group, &mut bytes);
                    self.write_group(&mut group);
                    self.maybe_checkpoint(false);
                }
                Msg::PersistCheckpoint { ack } => {
                    let _ = ack.send(self.persist_checkpoint());
                }
                Msg::Shutdown { ack } => {
                    // Appends queued before the shutdown have been written
                    // (the queue is FIFO); those queued after it see their
                    // acknowledgement dropped, i.e. `Error::Closed`.
                    let result = self.persist_checkpoint();
                    let _ = ack.send(result);
                    tracing::info!("wal: writer stopped");
                    return;
                }
            }
        }
    }

    /// Takes more queued appends into `group` until a limit is reached or the
    /// queue is empty (after waiting up to `group_linger`). Returns a control
    /// message that ended the group, to be handled next.
    fn fill_group(&mut self, group: &mut Vec<Pending>, bytes: &mut usize) -> Option<Msg> {
        let linger_until = Instant::now() + self.config.group_linger;
        while group.len() < self.config.max_group_records && *bytes < self.config.max_group_bytes {
            let next = match self.rx.try_recv() {
                Ok(msg) => Some(msg),
                Err(_) => {
                    let left = linger_until.saturating_duration_since(Instant::now());
                    if left.is_zero() {
                        None
                    } else {
                        self.rx.recv_timeout(left).ok()
                    }
                }
            };
            match next {
                Some(Msg::Append { payload, ack }) => {
                    *bytes += payload.len();
                    group.push(Pending { payload, ack });
                }
                Some(other) => return Some(other),
                None => return None,
            }
        }
        None
    }

    /// Writes the group, syncs once, acknowledges every caller.
    fn write_group(&mut self, group: &mut Vec<Pending>) {
        let stats = &self.shared.stats;
        let mut written: Vec<(u64, oneshot::Sender<Result<Appended>>)> =
            Vec::with_capacity(group.len());
        for Pending { payload, ack } in group.drain(..) {
            if let Some(e) = &self.poisoned {
                stats.append_errors.fetch_add(1, Ordering::Relaxed);
                let _ = ack.send(Err(Error::Poisoned(Arc::clone(e))));
                continue;
            }
            let frame_len = (FRAME_HEADER_LEN + payload.len()) as u64;
            if let Some(limit) = self.config.max_disk_bytes {
                let disk_bytes = self.log.disk_bytes();
                if disk_bytes.saturating_add(frame_len) > limit {
                    stats.append_errors.fetch_add(1, Ordering::Relaxed);
                    let _ = ack.send(Err(Error::Full { disk_bytes, limit }));
                    continue;
                }
            }
            // Hold the record before it exists, so the checkpoint can never
            // pass it.
            let expected = self.log.next_seq();
            {
                let mut out = self.shared.outstanding.lock();
                out.held.insert(expected);
                out.unconsumed.insert(expected);
            }
            match self.log.append(&payload) {
                Ok(seq) => {
                    let mut out = self.shared.outstanding.lock();
                    if seq != expected {
                        // Not expected from the spill log; keep the books
                        // right anyway.
                        tracing::error!(seq, expected, "wal: unexpected sequence number");
                        out.held.remove(&expected);
                        out.held.insert(seq);
                        out.unconsumed.remove(&expected);
                        out.unconsumed.insert(seq);
                    }
                    out.next_seq = seq.saturating_add(1);
                    drop(out);
                    stats.bytes.fetch_add(frame_len, Ordering::Relaxed);
                    written.push((seq, ack));
                }
                Err(e) => {
                    let mut out = self.shared.outstanding.lock();
                    out.held.remove(&expected);
                    out.unconsumed.remove(&expected);
                    drop(out);
                    stats.append_errors.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(error = %e, "wal: append failed");
                    let _ = ack.send(Err(Error::Log(e)));
                }
            }
        }
        if written.is_empty() {
            return;
        }
        if self.config.fsync {
            let started = Instant::now();
            let synced = self.log.sync();
            let nanos = u64::try_from(started.elapsed().as_nanos()).unwrap_or(u64::MAX);
            stats.fsyncs.fetch_add(1, Ordering::Relaxed);
            stats.fsync_nanos.fetch_add(nanos, Ordering::Relaxed);
            if let Err(e) = synced {
                tracing::error!(error = %e, "wal: fsync failed; refusing further appends");
                let e = Arc::new(e);
                self.poisoned = Some(Arc::clone(&e));
                stats
                    .append_errors
                    .fetch_add(written.len() as u64, Ordering::Relaxed);
                for (_, ack) in written {
                    // The records stay held: whatever of them survived is
                    // replayed after the restart.
                    let _ = ack.send(Err(Error::Poisoned(Arc::clone(&e))));
                }
                return;
            }
        }
        stats.groups.fetch_add(1, Ordering::Relaxed);
        stats
            .records
            .fetch_add(written.len() as u64, Ordering::Relaxed);
        stats
            .max_group_records
            .fetch_max(written.len() as u64, Ordering::Relaxed);
        stats
            .disk_bytes
            .store(self.log.disk_bytes(), Ordering::Relaxed);
        for (seq, ack) in written {
            // If the caller is gone, the returned guard is dropped here and
            // releases the orphaned record.
            let _ = ack.send(Ok(Appended {
                seq,
                shared: Some(Arc::clone(&self.shared)),
            }));
        }
    }

    fn maybe_checkpoint(&mut self, force: bool) {
        if !force && self.last_checkpoint.elapsed() < self.config.checkpoint_interval {
            return;
        }
        if let Err(e) = self.persist_checkpoint() {
            tracing::warn!(error = %e, "wal: persisting the checkpoint failed");
        }
    }

    fn persist_checkpoint(&mut self) -> Result<u64> {
        self.last_checkpoint = Instant::now();
        if let Some(e) = &self.poisoned {
            return Err(Error::Poisoned(Arc::clone(e)));
        }
        let target = self.shared.outstanding.lock().checkpoint();
        if target > self.log.cursor() {
            // The spill log's cursor is one past the last consumed record.
            self.log.commit(target - 1)?;
            let stats = &self.shared.stats;
            stats.checkpoints.fetch_add(1, Ordering::Relaxed);
            stats
                .persisted_checkpoint
                .store(self.log.cursor(), Ordering::Relaxed);
            stats
                .disk_bytes
                .store(self.log.disk_bytes(), Ordering::Relaxed);
            tracing::debug!(checkpoint = self.log.cursor(), "wal: checkpoint persisted");
        }
        Ok(self.log.cursor())
    }
}

#[cfg(test)]
pub(crate) mod tests;
