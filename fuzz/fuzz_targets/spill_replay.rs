//! Fuzzes spill-log replay with arbitrary segment bytes.
//!
//! 1. `decode_segment` on the raw bytes: never panics, and every record it
//!    returns is well framed and passes its CRC.
//! 2. The bytes as the only segment file of a log: `SpillLog::open` plus
//!    reading (and committing) everything returns exactly what
//!    `decode_segment` found, and appends after recovery survive a reopen.
//! 3. N valid records appended through `SpillLog`, then the bytes glued on as
//!    a torn tail: reopening recovers those N records first, in order.
#![no_main]

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use clew_tracer::reliability::spill::{
    FRAME_HEADER_LEN, FsyncPolicy, SegmentScan, SpillConfig, SpillLog, decode_segment, record_crc,
    segment_file_name,
};
use libfuzzer_sys::fuzz_target;

/// A scratch directory removed on drop (keeps the fuzz crate free of extra
/// dependencies).
struct ScratchDir(PathBuf);

impl ScratchDir {
    fn new() -> Self {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let path = std::env::temp_dir().join(format!(
            "clew-spill-fuzz-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = fs::remove_dir_all(&path);
        fs::create_dir_all(&path).expect("create scratch dir");
        ScratchDir(path)
    }
}

impl Drop for ScratchDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

fn config() -> SpillConfig {
    SpillConfig {
        segment_size: 1 << 20,
        max_total_size: 1 << 30,
        fsync: FsyncPolicy::Never,
    }
}

/// Reads and commits everything, batch by batch.
fn drain(log: &mut SpillLog) -> Vec<(u64, Vec<u8>)> {
    let mut out = Vec::new();
    loop {
        let batch = log.read_batch(7, 512).expect("read_batch");
        let Some(&(last, _)) = batch.last() else {
            break;
        };
        out.extend(batch);
        log.commit(last).expect("commit");
    }
    assert!(log.is_empty());
    out
}

fn check_scan(data: &[u8], scan: &SegmentScan) {
    let mut expected_start = FRAME_HEADER_LEN;
    for r in &scan.records {
        assert_eq!(r.start, expected_start, "records are contiguous");
        let payload = &data[r.clone()];
        let header = &data[r.start - FRAME_HEADER_LEN..r.start];
        let len = u32::from_le_bytes(header[..4].try_into().unwrap());
        let crc = u32::from_le_bytes(header[4..].try_into().unwrap());
        assert_eq!(len as usize, payload.len());
        assert_eq!(
            Some(crc),
            record_crc(payload),
            "returned record fails its CRC"
        );
        expected_start = r.end + FRAME_HEADER_LEN;
    }
    let valid_len = scan.records.last().map_or(0, |r| r.end);
    assert_eq!(scan.valid_len, valid_len);
    assert!(scan.valid_len <= data.len());
}

fn payloads(data: &[u8], scan: &SegmentScan) -> Vec<Vec<u8>> {
    scan.records
        .iter()
        .map(|r| data[r.clone()].to_vec())
        .collect()
}

fn numbered(payloads: &[Vec<u8>]) -> Vec<(u64, Vec<u8>)> {
    payloads
        .iter()
        .enumerate()
        .map(|(i, p)| (i as u64, p.clone()))
        .collect()
}

fn only_segment(dir: &Path) -> PathBuf {
    dir.join(segment_file_name(0))
}

fuzz_target!(|data: &[u8]| {
    // 1. Pure decoding.
    let scan = decode_segment(data);
    check_scan(data, &scan);
    let decoded = payloads(data, &scan);

    // 2. The bytes as a segment file.
    {
        let dir = ScratchDir::new();
        fs::write(only_segment(&dir.0), data).expect("write segment");
        let mut log = SpillLog::open(&dir.0, config()).expect("open");
        let stats = log.stats();
        assert_eq!(
            stats.truncated_bytes + stats.corrupt_bytes,
            (data.len() - scan.valid_len) as u64
        );
        assert_eq!(log.len(), decoded.len() as u64);
        assert_eq!(drain(&mut log), numbered(&decoded));
        let seq = log.append(b"after-recovery").expect("append");
        assert_eq!(seq, decoded.len() as u64);
        drop(log);
        let mut log = SpillLog::open(&dir.0, config()).expect("reopen");
        assert_eq!(log.stats().truncated_bytes + log.stats().corrupt_bytes, 0);
        assert_eq!(drain(&mut log), vec![(seq, b"after-recovery".to_vec())]);
    }

    // 3. N valid records followed by the bytes as a torn tail.
    {
        let n = data.first().map_or(0, |b| usize::from(b % 8));
        let valid: Vec<Vec<u8>> = (0..n).map(|i| vec![i as u8; i * 5]).collect();
        let dir = ScratchDir::new();
        {
            let mut log = SpillLog::open(&dir.0, config()).expect("open");
            for p in &valid {
                log.append(p).expect("append");
            }
        }
        let mut file = OpenOptions::new()
            .append(true)
            .create(true)
            .open(only_segment(&dir.0))
            .expect("open segment");
        file.write_all(data).expect("append tail");
        drop(file);
        let mut log = SpillLog::open(&dir.0, config()).expect("reopen");
        let got = drain(&mut log);
        assert!(got.len() >= n, "lost valid records: {} < {n}", got.len());
        // The valid prefix decodes the same, followed by whatever the tail
        // bytes frame on their own.
        let mut want = valid;
        want.extend(decoded);
        assert_eq!(got, numbered(&want));
    }
});
