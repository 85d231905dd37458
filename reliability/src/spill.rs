//! An append-only, crash-safe on-disk spill log.
//!
//! # Layout
//!
//! A spill directory holds:
//!
//! - segment files named `{first_seq:020}.log`, where `first_seq` is the
//!   sequence number of the segment's first record. Records within a segment
//!   have consecutive sequence numbers, so a record's number is implicit.
//! - `cursor`: the first unconsumed sequence number, in two 16-byte slots,
//!   each `u64 LE | crc32 LE | 4 zero bytes` (CRC over the 8 value bytes).
//!   The file is made once (write `cursor.tmp`, fsync, rename, fsync the
//!   directory); afterwards each commit overwrites the slot holding the
//!   older value in place, so committing needs no new disk space and works
//!   on a full disk. The cursor only grows, so the larger valid slot is the
//!   current one; a torn write leaves the other slot's earlier value. A
//!   12-byte file (`u64 LE | crc32 LE`, the earlier format) is read too and
//!   rewritten in the new format.
//!
//! # Record framing
//!
//! Each record is `len: u32 LE | crc: u32 LE | payload[len]`, where `crc` is
//! the CRC-32 (IEEE) of the 4 `len` bytes followed by the payload. Covering
//! `len` means a corrupted length cannot frame a wrong slice that happens to
//! check out, and a zero-filled region (what some file systems leave after a
//! crash) never decodes as a run of valid empty records: the CRC of
//! `00 00 00 00` is not zero.
//!
//! # Recovery
//!
//! [`SpillLog::open`] scans the segments oldest first with
//! [`decode_segment`]. In the **last** segment, the first frame that is
//! incomplete or fails its CRC ends the valid data: the file is truncated
//! there so new appends follow valid data (a torn tail is counted in
//! [`SpillStats::truncated_bytes`], a bad record followed by more bytes in
//! [`SpillStats::corrupt_segments`] / [`SpillStats::corrupt_bytes`]). In any
//! **other** segment a bad frame keeps the records before it, skips the rest
//! of that segment (counted, logged at `warn`) and recovery goes on with the
//! next segment; the file is left as it is until it is consumed or evicted.
//! Sequence numbers are never reused below the persisted cursor.
//!
//! # Consumption
//!
//! [`SpillLog::read_batch`] returns the oldest unconsumed records without
//! consuming them (calling it again returns the same records);
//! [`SpillLog::commit`] marks everything up to a sequence number consumed,
//! writes the cursor and deletes segments that are wholly consumed (all but
//! the segment being appended to while it has room, so that a log consumed
//! as fast as it is written makes no file per record). The
//! cursor is forced to stable storage by the next [`SpillLog::sync`] (and
//! on drop), not by each commit: a power loss can only make already
//! delivered records replay. When writing the cursor fails (a full disk
//! before the cursor file could be made, an I/O error), the commit still
//! takes effect in memory, consumed segments are still deleted, and the
//! error is returned as [`Error::CursorNotPersisted`]; the next commit
//! tries again. Delivery is at-least-once: records read but not committed
//! before a crash are replayed.
//!
//! # Size cap
//!
//! When an append would push the total size of the segment files over
//! [`SpillConfig::max_total_size`], whole segments are evicted oldest first,
//! consumed or not; lost unconsumed records are counted
//! ([`SpillLog::evicted_records`], [`SpillLog::evicted_bytes`]) and logged at
//! `warn`. Keep `max_total_size` several times `segment_size`, since eviction
//! works a segment at a time.
//!
//! A record larger than `segment_size` is accepted and gets a segment of its
//! own; one whose frame is larger than `max_total_size` (or whose payload
//! exceeds `u32::MAX` bytes) is rejected with [`Error::RecordTooLarge`].
//!
//! # Use
//!
//! All operations are blocking file I/O behind `&mut self`: in async code,
//! own the log from one task and call it through `spawn_blocking`, or keep it
//! on a dedicated thread. A directory must be used by one `SpillLog` at a
//! time; nothing locks it.

use std::collections::VecDeque;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Bytes of framing before each payload (`len` and `crc`).
pub const FRAME_HEADER_LEN: usize = 8;

const SEGMENT_SUFFIX: &str = ".log";
/// Lock file held exclusively while a log is open.
const LOCK_FILE: &str = "LOCK";
const CURSOR_FILE: &str = "cursor";
const CURSOR_TMP_FILE: &str = "cursor.tmp";
const HEADER: u64 = FRAME_HEADER_LEN as u64;

/// Errors of the spill log.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A file-system operation failed.
    #[error("spill log: {op} {}: {source}", path.display())]
    Io {
        /// What was being done.
        op: &'static str,
        /// The file or directory involved.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// The record cannot be stored: its payload exceeds `u32::MAX` bytes or
    /// its frame exceeds [`SpillConfig::max_total_size`].
    #[error("spill log: record of {size} bytes exceeds the limit of {limit} bytes")]
    RecordTooLarge {
        /// Payload size of the rejected record.
        size: u64,
        /// Largest payload size accepted.
        limit: u64,
    },
    /// All `u64` sequence numbers have been used.
    #[error("spill log: sequence numbers exhausted")]
    SequenceExhausted,
    /// The configuration is unusable.
    #[error("spill log: invalid configuration: {0}")]
    InvalidConfig(&'static str),
    /// A commit took effect in memory, but the cursor could not be written;
    /// after a crash the records since the last written cursor replay.
    #[error("spill log: cursor not persisted (records may replay after a crash): {0}")]
    CursorNotPersisted(Box<Error>),
    /// Another process (or another `SpillLog` in this one) has the
    /// directory open.
    #[error("spill log: {} is in use by another process", .0.display())]
    Locked(PathBuf),
}

/// A record read back from the log: its sequence number and payload.
pub type Record = (u64, Vec<u8>);

/// Result type of the spill log.
pub type Result<T, E = Error> = std::result::Result<T, E>;

fn io_err(op: &'static str, path: &Path) -> impl FnOnce(io::Error) -> Error {
    let path = path.to_path_buf();
    move |source| Error::Io { op, path, source }
}

/// When appended data is forced to stable storage. Appends are written to the
/// file without user-space buffering, so every policy survives a process
/// crash; the policy decides what survives an OS crash or power loss.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FsyncPolicy {
    /// `fsync` after every append.
    Always,
    /// `fsync` after every `n` appends (`0` is treated as `1`).
    EveryN(u32),
    /// `fsync` on the first append at least this long after the last sync.
    /// Call [`SpillLog::sync`] on a timer to bound the window when appends
    /// stop.
    Interval(Duration),
    /// Never `fsync` (not even the cursor or directory); leave it to the OS.
    Never,
}

impl Default for FsyncPolicy {
    fn default() -> Self {
        FsyncPolicy::Interval(Duration::from_secs(1))
    }
}

/// Settings for a [`SpillLog`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpillConfig {
    /// A new segment is started when the next record would take the active
    /// one past this many bytes (framing included). Must be non-zero.
    pub segment_size: u64,
    /// Upper bound on the total size of all segment files; the oldest
    /// segments are evicted to stay under it. Must be at least
    /// [`FRAME_HEADER_LEN`].
    pub max_total_size: u64,
    /// When appends are forced to stable storage.
    pub fsync: FsyncPolicy,
}

impl Default for SpillConfig {
    fn default() -> Self {
        Self {
            segment_size: 16 * 1024 * 1024,
            max_total_size: 512 * 1024 * 1024,
            fsync: FsyncPolicy::default(),
        }
    }
}

impl SpillConfig {
    fn validate(&self) -> Result<()> {
        if self.segment_size == 0 {
            return Err(Error::InvalidConfig("segment_size must be non-zero"));
        }
        if self.max_total_size < HEADER {
            return Err(Error::InvalidConfig(
                "max_total_size must be at least FRAME_HEADER_LEN",
            ));
        }
        Ok(())
    }
}

/// Counters for metrics. All count events since [`SpillLog::open`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SpillStats {
    /// Unconsumed records lost to the size cap.
    pub evicted_records: u64,
    /// On-disk bytes (framing included) of those records.
    pub evicted_bytes: u64,
    /// Corrupt records found (at open or when reading) that made the rest of
    /// a segment unreadable.
    pub corrupt_segments: u64,
    /// Bytes skipped because of those corrupt records.
    pub corrupt_bytes: u64,
    /// Bytes of torn (incomplete) tail records cut off the last segment at
    /// open.
    pub truncated_bytes: u64,
}

/// How a segment's bytes ended, as found by [`decode_segment`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ScanEnd {
    /// Every byte belongs to a valid record.
    Clean,
    /// The last frame starting at `offset` is incomplete, or reaches exactly
    /// the end and fails its CRC: what a write cut short by a crash leaves.
    Truncated {
        /// Byte offset of the torn frame.
        offset: usize,
    },
    /// The frame at `offset` fails its CRC and more bytes follow it.
    Corrupt {
        /// Byte offset of the bad frame.
        offset: usize,
    },
}

/// The result of decoding a segment's bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SegmentScan {
    /// Byte ranges of the payloads of the valid records, in order. The
    /// frame of each starts [`FRAME_HEADER_LEN`] bytes before its range.
    pub records: Vec<Range<usize>>,
    /// Length of the valid prefix: the end of the last valid record.
    pub valid_len: usize,
    /// How the bytes after the valid prefix (if any) look.
    pub end: ScanEnd,
}

/// The CRC stored in the frame of `payload` (CRC-32 of the little-endian
/// `u32` length followed by the payload), or `None` if the payload is longer
/// than `u32::MAX` bytes and cannot be framed.
pub fn record_crc(payload: &[u8]) -> Option<u32> {
    let len = u32::try_from(payload.len()).ok()?;
    Some(frame_crc(len.to_le_bytes(), payload))
}

fn frame_crc(len: [u8; 4], payload: &[u8]) -> u32 {
    let mut h = crc32fast::Hasher::new();
    h.update(&len);
    h.update(payload);
    h.finalize()
}

/// The frame header of a payload made of `parts` (`len` ≤ `u32::MAX`,
/// checked by the caller).
fn frame_header(parts: &[&[u8]], len: u64) -> [u8; FRAME_HEADER_LEN] {
    let len = u32::try_from(len).unwrap_or(u32::MAX).to_le_bytes();
    let mut h = crc32fast::Hasher::new();
    h.update(&len);
    for p in parts {
        h.update(p);
    }
    let mut out = [0u8; FRAME_HEADER_LEN];
    out[..4].copy_from_slice(&len);
    out[4..].copy_from_slice(&h.finalize().to_le_bytes());
    out
}

/// Writes `header` then every part, with vectored writes.
fn write_all_parts(w: &mut File, header: &[u8], parts: &[&[u8]]) -> io::Result<()> {
    let mut bufs: Vec<&[u8]> = Vec::with_capacity(parts.len() + 1);
    bufs.push(header);
    bufs.extend(parts.iter().copied().filter(|p| !p.is_empty()));
    let mut first = 0;
    while first < bufs.len() {
        let slices: Vec<io::IoSlice<'_>> =
            bufs[first..].iter().map(|b| io::IoSlice::new(b)).collect();
        let mut n = w.write_vectored(&slices)?;
        if n == 0 {
            return Err(io::ErrorKind::WriteZero.into());
        }
        while first < bufs.len() && n >= bufs[first].len() {
            n -= bufs[first].len();
            first += 1;
        }
        if n > 0
            && let Some(b) = bufs.get_mut(first)
        {
            *b = &b[n..];
        }
    }
    Ok(())
}

/// Appends the frame of `payload` to `out`.
pub fn encode_record(payload: &[u8], out: &mut Vec<u8>) -> Result<()> {
    let len = u32::try_from(payload.len()).map_err(|_| Error::RecordTooLarge {
        size: payload.len() as u64,
        limit: u64::from(u32::MAX),
    })?;
    let len = len.to_le_bytes();
    out.reserve(FRAME_HEADER_LEN + payload.len());
    out.extend_from_slice(&len);
    out.extend_from_slice(&frame_crc(len, payload).to_le_bytes());
    out.extend_from_slice(payload);
    Ok(())
}

/// Decodes a segment's bytes into records, stopping at the first frame that
/// is incomplete or fails its CRC. Pure and panic-free on any input.
pub fn decode_segment(bytes: &[u8]) -> SegmentScan {
    let mut records = Vec::new();
    let mut pos = 0usize;
    let end = loop {
        let rest = bytes.get(pos..).unwrap_or_default();
        if rest.is_empty() {
            break ScanEnd::Clean;
        }
        let (Some(len), Some(crc)) = (read_u32(rest, 0), read_u32(rest, 4)) else {
            break ScanEnd::Truncated { offset: pos };
        };
        let frame_len = usize::try_from(len)
            .ok()
            .and_then(|l| l.checked_add(FRAME_HEADER_LEN));
        let Some(payload) = frame_len.and_then(|fl| rest.get(FRAME_HEADER_LEN..fl)) else {
            break ScanEnd::Truncated { offset: pos };
        };
        if frame_crc(len.to_le_bytes(), payload) != crc {
            break if FRAME_HEADER_LEN + payload.len() == rest.len() {
                ScanEnd::Truncated { offset: pos }
            } else {
                ScanEnd::Corrupt { offset: pos }
            };
        }
        let start = pos + FRAME_HEADER_LEN;
        records.push(start..start + payload.len());
        pos = start + payload.len();
    };
    SegmentScan {
        records,
        valid_len: pos,
        end,
    }
}

fn read_u32(bytes: &[u8], at: usize) -> Option<u32> {
    let b: [u8; 4] = bytes.get(at..at.checked_add(4)?)?.try_into().ok()?;
    Some(u32::from_le_bytes(b))
}

/// The file name of the segment whose first record is `first_seq`.
pub fn segment_file_name(first_seq: u64) -> String {
    format!("{first_seq:020}{SEGMENT_SUFFIX}")
}

fn parse_segment_name(name: &str) -> Option<u64> {
    let digits = name.strip_suffix(SEGMENT_SUFFIX)?;
    if digits.len() != 20 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

#[derive(Debug)]
struct Segment {
    first_seq: u64,
    path: PathBuf,
    /// Byte offset of each valid record's frame.
    offsets: Vec<u64>,
    /// End of the last valid record.
    valid_end: u64,
    /// Size of the file on disk (can exceed `valid_end` when a corrupt tail
    /// is left in place).
    file_len: u64,
}

impl Segment {
    fn end_seq(&self) -> u64 {
        self.first_seq.saturating_add(self.offsets.len() as u64)
    }

    fn frame_end(&self, idx: usize) -> u64 {
        self.offsets.get(idx + 1).copied().unwrap_or(self.valid_end)
    }

    /// Index of the first record with a sequence number >= `seq`.
    fn index_of(&self, seq: u64) -> usize {
        usize::try_from(seq.saturating_sub(self.first_seq))
            .unwrap_or(usize::MAX)
            .min(self.offsets.len())
    }

    /// On-disk bytes of the records from index `idx` on.
    fn bytes_from(&self, idx: usize) -> u64 {
        self.offsets
            .get(idx)
            .map_or(0, |&o| self.valid_end.saturating_sub(o))
    }
}

/// The on-disk spill log. See the [module docs](self).
#[derive(Debug)]
pub struct SpillLog {
    // Held for the exclusive directory lock; released on drop.
    _lock: File,
    dir: PathBuf,
    config: SpillConfig,
    segments: VecDeque<Segment>,
    /// Write handle on the back segment, positioned at its `valid_end`. `None`
    /// when the back segment must not take more appends.
    writer: Option<File>,
    /// Cached read handle: (first_seq of its segment, file).
    reader: Option<(u64, File)>,
    /// First unconsumed sequence number.
    cursor: u64,
    /// The two-slot cursor file, once it exists in that format.
    cursor_file: Option<CursorFile>,
    /// The cursor was written since the last sync.
    cursor_unsynced: bool,
    /// Sequence number of the next append.
    next_seq: u64,
    /// Sum of `file_len` over `segments`.
    total_bytes: u64,
    unsynced: u32,
    last_sync: Instant,
    stats: SpillStats,
    /// Drop closed segments from the page cache ([`SpillLog::uncache_closed`]).
    uncache_closed: bool,
}

impl SpillLog {
    /// Opens (creating if needed) the spill log in `dir`, recovering from a
    /// crash as described in the [module docs](self).
    pub fn open(dir: impl AsRef<Path>, config: SpillConfig) -> Result<Self> {
        config.validate()?;
        let dir = dir.as_ref().to_path_buf();
        fs::create_dir_all(&dir).map_err(io_err("create directory", &dir))?;
        // Two writers on one directory would interleave frames and fight
        // over the cursor: hold an exclusive lock for the log's lifetime
        // (released by the OS if the process dies).
        let lock_path = dir.join(LOCK_FILE);
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(io_err("open", &lock_path))?;
        match lock.try_lock() {
            Ok(()) => {}
            Err(fs::TryLockError::WouldBlock) => return Err(Error::Locked(dir)),
            Err(fs::TryLockError::Error(e)) => return Err(io_err("lock", &lock_path)(e)),
        }
        let tmp = dir.join(CURSOR_TMP_FILE);
        match fs::remove_file(&tmp) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(io_err("remove", &tmp)(e)),
        }
        let (cursor, cursor_file) = open_cursor(&dir, config.fsync != FsyncPolicy::Never)?;

        let mut names = Vec::new();
        for entry in fs::read_dir(&dir).map_err(io_err("read directory", &dir))? {
            let entry = entry.map_err(io_err("read directory", &dir))?;
            if let Some(first_seq) = entry.file_name().to_str().and_then(parse_segment_name) {
                names.push((first_seq, entry.path()));
            }
        }
        names.sort_unstable_by_key(|(first_seq, _)| *first_seq);

        let mut stats = SpillStats::default();
        let mut segments = VecDeque::with_capacity(names.len());
        let durable = config.fsync != FsyncPolicy::Never;
        for (i, (first_seq, path)) in names.iter().enumerate() {
            let next_first = names.get(i + 1).map(|(s, _)| *s);
            let seg = recover_segment(*first_seq, path, next_first, durable, &mut stats)?;
            segments.push_back(seg);
        }

        let next_seq = segments.back().map_or(cursor, |s| s.end_seq().max(cursor));
        let total_bytes = segments.iter().map(|s| s.file_len).sum();
        let mut log = SpillLog {
            _lock: lock,
            dir,
            config,
            segments,
            writer: None,
            reader: None,
            cursor,
            cursor_file,
            cursor_unsynced: false,
            next_seq,
            total_bytes,
            unsynced: 0,
            last_sync: Instant::now(),
            stats,
            uncache_closed: false,
        };
        log.delete_consumed()?;
        if let Some(back) = log.segments.back()
            && back.end_seq() == log.next_seq
        {
            let mut file = OpenOptions::new()
                .write(true)
                .open(&back.path)
                .map_err(io_err("open", &back.path))?;
            file.seek(SeekFrom::Start(back.valid_end))
                .map_err(io_err("seek", &back.path))?;
            log.writer = Some(file);
        }
        Ok(log)
    }

    /// The directory of the log.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The configuration in use.
    pub fn config(&self) -> &SpillConfig {
        &self.config
    }

    /// Appends a record and returns its sequence number. Sequence numbers
    /// increase strictly. May evict the oldest segments to honour the size
    /// cap. If the write fails, the partial frame is removed (or, failing
    /// that, the segment is closed to appends) and the error returned. An
    /// error from the fsync after a successful write is returned, but the
    /// record stays in the log.
    pub fn append(&mut self, payload: &[u8]) -> Result<u64> {
        self.append_parts(&[payload])
    }

    /// Appends one record whose payload is the concatenation of `parts`,
    /// written with one vectored write and no copy of the parts.
    pub fn append_parts(&mut self, parts: &[&[u8]]) -> Result<u64> {
        let payload_len: u64 = parts.iter().map(|p| p.len() as u64).sum();
        let limit = (self.config.max_total_size - HEADER).min(u64::from(u32::MAX));
        if payload_len > limit {
            return Err(Error::RecordTooLarge {
                size: payload_len,
                limit,
            });
        }
        let frame_len = HEADER + payload_len;
        let seq = self.next_seq;
        let after = seq.checked_add(1).ok_or(Error::SequenceExhausted)?;
        self.make_room(frame_len, seq)?;

        let header = frame_header(parts, payload_len);
        let (Some(writer), Some(back)) = (self.writer.as_mut(), self.segments.back_mut()) else {
            return Err(Error::Io {
                op: "append",
                path: self.dir.clone(),
                source: io::Error::other("no active segment"),
            });
        };
        if let Err(e) = write_all_parts(writer, &header, parts) {
            // Take the partial frame back off so later appends follow valid
            // data; if even that fails, stop appending to this segment.
            let restored = writer
                .set_len(back.valid_end)
                .and_then(|()| writer.seek(SeekFrom::Start(back.valid_end)));
            if restored.is_err() {
                self.writer = None;
            }
            return Err(io_err("write", &back.path)(e));
        }
        back.offsets.push(back.valid_end);
        back.valid_end += frame_len;
        back.file_len = back.valid_end;
        self.total_bytes += frame_len;
        self.next_seq = after;
        self.unsynced = self.unsynced.saturating_add(1);
        let due = match self.config.fsync {
            FsyncPolicy::Always => true,
            FsyncPolicy::EveryN(n) => self.unsynced >= n.max(1),
            FsyncPolicy::Interval(d) => self.last_sync.elapsed() >= d,
            FsyncPolicy::Never => false,
        };
        if due {
            self.sync()?;
        }
        Ok(seq)
    }

    /// Evicts segments to stay under the size cap and starts a new segment
    /// when the next frame does not fit the active one.
    fn make_room(&mut self, frame_len: u64, seq: u64) -> Result<()> {
        let mut roll = match (&self.writer, self.segments.back()) {
            (Some(_), Some(back)) => {
                back.file_len > 0
                    && back.file_len.saturating_add(frame_len) > self.config.segment_size
            }
            _ => true,
        };
        while self.total_bytes.saturating_add(frame_len) > self.config.max_total_size
            && !self.segments.is_empty()
        {
            if self.segments.len() == 1 {
                roll = true;
            }
            self.evict_front()?;
        }
        if roll {
            self.roll(seq)?;
        }
        Ok(())
    }

    /// From now on, drops each segment's pages from the OS page cache when
    /// it is closed (synced, no longer written; `posix_fadvise(DONTNEED)`
    /// on Linux, nothing elsewhere). For a log read back only after a
    /// restart, such as the collector's WAL: kept on disk for long, it would
    /// otherwise hold as much page cache, and the kernel's work for a page
    /// cache growing by every byte written is charged to the writer.
    /// Advisory: reading a dropped segment back reads the disk.
    pub fn uncache_closed(&mut self) {
        self.uncache_closed = true;
    }

    /// Forces appended data and the cursor to stable storage now (whatever
    /// the policy).
    pub fn sync(&mut self) -> Result<()> {
        if self.unsynced > 0
            && let (Some(writer), Some(back)) = (&self.writer, self.segments.back())
        {
            writer.sync_data().map_err(io_err("fsync", &back.path))?;
        }
        self.unsynced = 0;
        self.last_sync = Instant::now();
        if self.cursor_unsynced
            && let Some(c) = &self.cursor_file
        {
            let path = self.dir.join(CURSOR_FILE);
            c.file.sync_data().map_err(io_err("fsync", &path))?;
            self.cursor_unsynced = false;
        }
        Ok(())
    }

    /// For group commit off the log's lock: the sequence number every record
    /// before which a sync of the returned file makes durable (with the
    /// earlier segments, synced when they were closed), and a handle on the
    /// active segment; `None` when nothing was appended since the last
    /// sync. Call [`SpillLog::mark_synced`] with the number afterwards.
    pub fn sync_handle(&mut self) -> Result<Option<(u64, File)>> {
        if self.unsynced == 0 {
            return Ok(None);
        }
        let (Some(writer), Some(back)) = (&self.writer, self.segments.back()) else {
            return Ok(None);
        };
        let file = writer.try_clone().map_err(io_err("dup", &back.path))?;
        Ok(Some((self.next_seq, file)))
    }

    /// Records before `upto` were made durable through a
    /// [`SpillLog::sync_handle`] file.
    pub fn mark_synced(&mut self, upto: u64) {
        if upto >= self.next_seq {
            self.unsynced = 0;
            self.last_sync = Instant::now();
        }
    }

    /// Returns up to `max_records` of the oldest unconsumed records, oldest
    /// first, as `(seq, payload)`, without consuming them. Stops before the
    /// payloads would total more than `max_bytes`, but returns at least one
    /// record if any is available (so an oversized record cannot block).
    pub fn read_batch(&mut self, max_records: usize, max_bytes: usize) -> Result<Vec<Record>> {
        self.read_from(self.cursor, max_records, max_bytes)
    }

    /// Like [`read_batch`](Self::read_batch) but starting at the first
    /// unconsumed record with a sequence number `>= start` (for keeping
    /// several batches in flight).
    pub fn read_from(
        &mut self,
        start: u64,
        max_records: usize,
        max_bytes: usize,
    ) -> Result<Vec<Record>> {
        // Each pass that meets a corrupt record drops it (and the rest of its
        // segment) and starts over, so this ends.
        loop {
            if let Some(out) = self.read_once(start, max_records, max_bytes)? {
                return Ok(out);
            }
        }
    }

    /// One read pass; `None` when a corrupt record was found and dropped.
    fn read_once(
        &mut self,
        start: u64,
        max_records: usize,
        max_bytes: usize,
    ) -> Result<Option<Vec<Record>>> {
        let start = start.max(self.cursor);
        let max_bytes = max_bytes as u64;
        let mut out: Vec<Record> = Vec::new();
        let mut taken_bytes = 0u64;
        let mut si = self.segments.partition_point(|s| s.end_seq() <= start);
        let mut budget_hit = false;
        while si < self.segments.len() && out.len() < max_records && !budget_hit {
            let seg = &self.segments[si];
            let first = seg.index_of(start);
            let mut last = first;
            while last < seg.offsets.len() && out.len() + (last - first) < max_records {
                let payload_len = (seg.frame_end(last) - seg.offsets[last]).saturating_sub(HEADER);
                let progress_made = !out.is_empty() || last > first;
                if progress_made && taken_bytes.saturating_add(payload_len) > max_bytes {
                    budget_hit = true;
                    break;
                }
                taken_bytes = taken_bytes.saturating_add(payload_len);
                last += 1;
            }
            if last == first {
                si += 1;
                continue;
            }
            let from = seg.offsets[first];
            let buf = read_range(&mut self.reader, seg, from, seg.frame_end(last - 1))?;
            for idx in first..last {
                let rel = usize::try_from(seg.offsets[idx] - from).unwrap_or(usize::MAX);
                let rel_end = usize::try_from(seg.frame_end(idx) - from).unwrap_or(usize::MAX);
                let frame = buf.get(rel..rel_end).unwrap_or_default();
                match decode_segment(frame) {
                    SegmentScan {
                        records,
                        end: ScanEnd::Clean,
                        ..
                    } if records.len() == 1 => {
                        let payload = frame.get(FRAME_HEADER_LEN..).unwrap_or_default();
                        out.push((seg.first_seq + idx as u64, payload.to_vec()));
                    }
                    _ => {
                        self.drop_corrupt_tail(si, idx);
                        return Ok(None);
                    }
                }
            }
            si += 1;
        }
        Ok(Some(out))
    }

    /// Marks every record with a sequence number `<= up_to_seq` consumed,
    /// persists the cursor and deletes wholly consumed segments. Committing
    /// backwards is a no-op; committing past the last record consumes
    /// everything written so far.
    pub fn commit(&mut self, up_to_seq: u64) -> Result<()> {
        let Some(last_written) = self.next_seq.checked_sub(1) else {
            return Ok(());
        };
        let new_cursor = up_to_seq.min(last_written) + 1;
        if new_cursor <= self.cursor {
            return Ok(());
        }
        self.cursor = new_cursor;
        let written = self.write_cursor();
        self.delete_consumed()?;
        written.map_err(|e| Error::CursorNotPersisted(Box::new(e)))
    }

    /// Writes `self.cursor` in place, making the two-slot file first if an
    /// earlier attempt could not.
    fn write_cursor(&mut self) -> Result<()> {
        let durable = self.config.fsync != FsyncPolicy::Never;
        if self.cursor_file.is_none() {
            self.cursor_file = Some(create_cursor_file(&self.dir, self.cursor, durable)?);
            return Ok(());
        }
        if let Some(c) = self.cursor_file.as_mut() {
            c.write(self.cursor)
                .map_err(io_err("write", &self.dir.join(CURSOR_FILE)))?;
            self.cursor_unsynced = durable;
        }
        Ok(())
    }

    /// Number of unconsumed records.
    pub fn len(&self) -> u64 {
        self.segments
            .iter()
            .map(|s| s.end_seq().saturating_sub(s.first_seq.max(self.cursor)))
            .sum()
    }

    /// True when no unconsumed record is left.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// On-disk bytes (framing included) of the unconsumed records.
    pub fn unconsumed_bytes(&self) -> u64 {
        self.segments
            .iter()
            .map(|s| s.bytes_from(s.index_of(self.cursor)))
            .sum()
    }

    /// Total size of the segment files.
    pub fn disk_bytes(&self) -> u64 {
        self.total_bytes
    }

    /// Number of segment files.
    pub fn segment_count(&self) -> usize {
        self.segments.len()
    }

    /// The first unconsumed sequence number (one past the last commit).
    pub fn cursor(&self) -> u64 {
        self.cursor
    }

    /// The sequence number the next append will get.
    pub fn next_seq(&self) -> u64 {
        self.next_seq
    }

    /// Unconsumed records lost to the size cap since open.
    pub fn evicted_records(&self) -> u64 {
        self.stats.evicted_records
    }

    /// On-disk bytes of unconsumed records lost to the size cap since open.
    pub fn evicted_bytes(&self) -> u64 {
        self.stats.evicted_bytes
    }

    /// All counters.
    pub fn stats(&self) -> SpillStats {
        self.stats
    }

    fn roll(&mut self, first_seq: u64) -> Result<()> {
        if self.unsynced > 0 && self.config.fsync != FsyncPolicy::Never {
            self.sync()?;
        }
        if self.uncache_closed
            && let Some(w) = &self.writer
        {
            drop_from_page_cache(w);
        }
        self.writer = None;
        // An empty back segment already named `first_seq` (left closed after
        // a failed write) is replaced by the new file of the same name.
        if self
            .segments
            .back()
            .is_some_and(|b| b.first_seq == first_seq)
            && let Some(old) = self.segments.pop_back()
        {
            self.total_bytes = self.total_bytes.saturating_sub(old.file_len);
            self.forget_reader(old.first_seq);
        }
        let path = self.dir.join(segment_file_name(first_seq));
        let file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)
            .map_err(io_err("create", &path))?;
        if self.config.fsync != FsyncPolicy::Never {
            sync_dir(&self.dir)?;
        }
        self.segments.push_back(Segment {
            first_seq,
            path,
            offsets: Vec::new(),
            valid_end: 0,
            file_len: 0,
        });
        self.writer = Some(file);
        self.unsynced = 0;
        Ok(())
    }

    fn remove_front(&mut self) -> Result<()> {
        let Some(front) = self.segments.front() else {
            return Ok(());
        };
        let first_seq = front.first_seq;
        let path = front.path.clone();
        if self.segments.len() == 1 {
            self.writer = None;
        }
        self.forget_reader(first_seq);
        match fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(io_err("remove", &path)(e)),
        }
        if let Some(seg) = self.segments.pop_front() {
            self.total_bytes = self.total_bytes.saturating_sub(seg.file_len);
        }
        Ok(())
    }

    fn evict_front(&mut self) -> Result<()> {
        let Some(front) = self.segments.front() else {
            return Ok(());
        };
        let idx = front.index_of(self.cursor);
        let lost_records = (front.offsets.len() - idx) as u64;
        let lost_bytes = front.bytes_from(idx);
        let first_seq = front.first_seq;
        self.remove_front()?;
        if lost_records > 0 {
            self.stats.evicted_records += lost_records;
            self.stats.evicted_bytes += lost_bytes;
            tracing::warn!(
                first_seq,
                lost_records,
                lost_bytes,
                "spill log over its size cap: evicted unconsumed records"
            );
        }
        Ok(())
    }

    /// Deletes wholly consumed segments, except the one being appended to
    /// while it has room: a log that is consumed as fast as it is written
    /// (a healthy collector behind the sidecar) would otherwise create,
    /// sync and delete a segment file for every record.
    fn delete_consumed(&mut self) -> Result<()> {
        while self
            .segments
            .front()
            .is_some_and(|s| s.end_seq() <= self.cursor)
        {
            let active = self.segments.len() == 1 && self.writer.is_some();
            if active
                && self
                    .segments
                    .front()
                    .is_some_and(|s| s.file_len < self.config.segment_size)
            {
                break;
            }
            self.remove_front()?;
        }
        Ok(())
    }

    /// A record failed its check when read back: keep what precedes it, drop
    /// the rest of the segment, stop appending to it.
    fn drop_corrupt_tail(&mut self, si: usize, idx: usize) {
        let is_back = si + 1 == self.segments.len();
        let Some(seg) = self.segments.get_mut(si) else {
            return;
        };
        let skipped = seg.bytes_from(idx);
        let first_seq = seg.first_seq;
        if let Some(&offset) = seg.offsets.get(idx) {
            seg.valid_end = offset;
        }
        let lost_records = seg.offsets.len().saturating_sub(idx);
        seg.offsets.truncate(idx);
        if is_back {
            self.writer = None;
        }
        self.stats.corrupt_segments += 1;
        self.stats.corrupt_bytes += skipped;
        tracing::warn!(
            first_seq,
            record = idx,
            lost_records,
            skipped_bytes = skipped,
            "spill log: corrupt record on read; skipping the rest of the segment"
        );
    }

    fn forget_reader(&mut self, first_seq: u64) {
        if self.reader.as_ref().is_some_and(|(s, _)| *s == first_seq) {
            self.reader = None;
        }
    }
}

impl Drop for SpillLog {
    fn drop(&mut self) {
        if self.config.fsync != FsyncPolicy::Never
            && let Err(e) = self.sync()
        {
            tracing::warn!(error = %e, "spill log: final fsync failed");
        }
    }
}

/// Scans one segment file at open, truncating the last segment after its
/// valid data.
fn recover_segment(
    first_seq: u64,
    path: &Path,
    next_first: Option<u64>,
    durable: bool,
    stats: &mut SpillStats,
) -> Result<Segment> {
    let bytes = fs::read(path).map_err(io_err("read", path))?;
    let file_len = bytes.len() as u64;
    let scan = decode_segment(&bytes);
    let mut offsets: Vec<u64> = scan
        .records
        .iter()
        .map(|r| (r.start - FRAME_HEADER_LEN) as u64)
        .collect();
    let mut valid_end = scan.valid_len as u64;
    let mut end = scan.end;
    // Sequence numbers must stay below the next segment's first one (and
    // inside u64); extra records can only come from a foreign or damaged
    // file.
    let room = next_first.unwrap_or(u64::MAX).saturating_sub(first_seq);
    if offsets.len() as u64 > room {
        let keep = usize::try_from(room).unwrap_or(usize::MAX);
        if let Some(&offset) = offsets.get(keep) {
            valid_end = offset;
            end = ScanEnd::Corrupt {
                offset: usize::try_from(offset).unwrap_or(usize::MAX),
            };
        }
        offsets.truncate(keep);
    }
    let is_last = next_first.is_none();
    let skipped = file_len - valid_end;
    match end {
        ScanEnd::Clean => {}
        ScanEnd::Truncated { offset } if is_last => {
            stats.truncated_bytes += skipped;
            tracing::warn!(
                path = %path.display(),
                offset,
                bytes = skipped,
                "spill log: torn record at the end of the last segment; truncating"
            );
        }
        ScanEnd::Truncated { offset } | ScanEnd::Corrupt { offset } => {
            stats.corrupt_segments += 1;
            stats.corrupt_bytes += skipped;
            tracing::warn!(
                path = %path.display(),
                offset,
                records_recovered = offsets.len(),
                bytes_skipped = skipped,
                "spill log: corrupt record; skipping the rest of the segment"
            );
        }
    }
    let mut disk_len = file_len;
    if is_last && valid_end < file_len {
        let file = OpenOptions::new()
            .write(true)
            .open(path)
            .map_err(io_err("open", path))?;
        file.set_len(valid_end).map_err(io_err("truncate", path))?;
        if durable {
            file.sync_all().map_err(io_err("fsync", path))?;
        }
        disk_len = valid_end;
    }
    Ok(Segment {
        first_seq,
        path: path.to_path_buf(),
        offsets,
        valid_end,
        file_len: disk_len,
    })
}

fn read_range(
    reader: &mut Option<(u64, File)>,
    seg: &Segment,
    from: u64,
    to: u64,
) -> Result<Vec<u8>> {
    if reader.as_ref().is_none_or(|(s, _)| *s != seg.first_seq) {
        let file = File::open(&seg.path).map_err(io_err("open", &seg.path))?;
        *reader = Some((seg.first_seq, file));
    }
    let Some((_, file)) = reader.as_mut() else {
        return Ok(Vec::new());
    };
    let len = usize::try_from(to.saturating_sub(from)).map_err(|_| Error::Io {
        op: "read",
        path: seg.path.clone(),
        source: io::Error::other("range too large"),
    })?;
    let mut buf = vec![0u8; len];
    let result = file
        .seek(SeekFrom::Start(from))
        .and_then(|_| file.read_exact(&mut buf));
    if let Err(e) = result {
        *reader = None;
        return Err(io_err("read", &seg.path)(e));
    }
    Ok(buf)
}

/// Bytes of one cursor slot: `u64 LE | crc32 LE | 4 zero bytes`.
const CURSOR_SLOT: usize = 16;

/// The open two-slot cursor file.
#[derive(Debug)]
struct CursorFile {
    file: File,
    /// The slot holding the older value: the next write goes there.
    next_slot: u64,
}

impl CursorFile {
    fn write(&mut self, cursor: u64) -> io::Result<()> {
        use std::os::unix::fs::FileExt as _;
        self.file
            .write_all_at(&cursor_slot(cursor), self.next_slot * CURSOR_SLOT as u64)?;
        self.next_slot ^= 1;
        Ok(())
    }
}

fn cursor_slot(cursor: u64) -> [u8; CURSOR_SLOT] {
    let value = cursor.to_le_bytes();
    let mut buf = [0u8; CURSOR_SLOT];
    buf[..8].copy_from_slice(&value);
    buf[8..12].copy_from_slice(&crc32fast::hash(&value).to_le_bytes());
    buf
}

/// The value of a `u64 LE | crc32 LE` slot, if its CRC holds.
fn parse_slot(bytes: &[u8]) -> Option<u64> {
    let value = <[u8; 8]>::try_from(bytes.get(..8)?).ok()?;
    let crc = read_u32(bytes, 8)?;
    (crc32fast::hash(&value) == crc).then(|| u64::from_le_bytes(value))
}

/// Reads the cursor and opens its file for in-place writes; makes the file
/// (or converts an earlier-format one) when it is missing. A file that
/// cannot be made now (a full disk) is made by a later commit.
fn open_cursor(dir: &Path, durable: bool) -> Result<(u64, Option<CursorFile>)> {
    let path = dir.join(CURSOR_FILE);
    let bytes = match fs::read(&path) {
        Ok(b) => Some(b),
        Err(e) if e.kind() == io::ErrorKind::NotFound => None,
        Err(e) => return Err(io_err("read", &path)(e)),
    };
    let slots = bytes.as_deref().and_then(|b| match b.len() {
        12 => parse_slot(b).map(|v| (v, None)),
        32 => {
            let a = parse_slot(&b[..CURSOR_SLOT]);
            let c = parse_slot(&b[CURSOR_SLOT..]);
            match (a, c) {
                (None, None) => None,
                // The slot with the smaller (or no) value is written next.
                (a, c) => Some((a.max(c).unwrap_or(0), Some(u64::from(a >= c)))),
            }
        }
        _ => None,
    });
    let (cursor, next_slot) = match (&bytes, slots) {
        (None, _) => (0, None),
        (Some(_), Some(v)) => v,
        (Some(_), None) => {
            // Falling back to 0 replays whatever is left: at-least-once.
            tracing::warn!(path = %path.display(), "spill log: invalid cursor file; replaying from the oldest record");
            (0, None)
        }
    };
    if let Some(next_slot) = next_slot {
        let file = OpenOptions::new()
            .write(true)
            .open(&path)
            .map_err(io_err("open", &path))?;
        return Ok((cursor, Some(CursorFile { file, next_slot })));
    }
    match create_cursor_file(dir, cursor, durable) {
        Ok(f) => Ok((cursor, Some(f))),
        Err(e) => {
            tracing::warn!(error = %e, "spill log: cannot write the cursor file yet; will retry on commit");
            Ok((cursor, None))
        }
    }
}

/// Makes the two-slot cursor file holding `cursor` (atomically: a temporary
/// file renamed over the old one).
fn create_cursor_file(dir: &Path, cursor: u64, durable: bool) -> Result<CursorFile> {
    let tmp = dir.join(CURSOR_TMP_FILE);
    let dst = dir.join(CURSOR_FILE);
    let mut buf = [0u8; 2 * CURSOR_SLOT];
    buf[..CURSOR_SLOT].copy_from_slice(&cursor_slot(cursor));
    buf[CURSOR_SLOT..].copy_from_slice(&cursor_slot(cursor));
    let written = (|| {
        let mut file = File::create(&tmp).map_err(io_err("create", &tmp))?;
        file.write_all(&buf).map_err(io_err("write", &tmp))?;
        if durable {
            file.sync_data().map_err(io_err("fsync", &tmp))?;
        }
        fs::rename(&tmp, &dst).map_err(io_err("rename", &dst))?;
        if durable {
            sync_dir(dir)?;
        }
        Ok(file)
    })();
    match written {
        Ok(file) => Ok(CursorFile { file, next_slot: 1 }),
        Err(e) => {
            let _ = fs::remove_file(&tmp);
            Err(e)
        }
    }
}

/// Asks the kernel to drop `file`'s clean pages from its page cache
/// (advisory: a failure is only logged).
#[cfg(target_os = "linux")]
fn drop_from_page_cache(file: &File) {
    if let Err(e) = rustix::fs::fadvise(file, 0, None, rustix::fs::Advice::DontNeed) {
        tracing::debug!(error = %e, "spill log: fadvise(DONTNEED) failed");
    }
}

#[cfg(not(target_os = "linux"))]
fn drop_from_page_cache(_file: &File) {}

fn sync_dir(dir: &Path) -> Result<()> {
    // Directory fsync makes a created, renamed or removed entry durable; only
    // meaningful (and only possible) on Unix.
    #[cfg(unix)]
    {
        File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(io_err("fsync directory", dir))?;
    }
    #[cfg(not(unix))]
    let _ = dir;
    Ok(())
}

#[cfg(test)]
mod tests;
