use super::*;
use proptest::prelude::*;
use std::collections::VecDeque;

fn cfg(segment_size: u64) -> SpillConfig {
    SpillConfig {
        segment_size,
        max_total_size: 1 << 30,
        fsync: FsyncPolicy::Never,
    }
}

fn payload(i: usize) -> Vec<u8> {
    // Varying lengths, including empty.
    if i.is_multiple_of(11) {
        return Vec::new();
    }
    let mut v = format!("{i}:").into_bytes();
    v.resize(v.len() + i % 13, b'x');
    v
}

fn read_all(log: &mut SpillLog) -> Vec<(u64, Vec<u8>)> {
    log.read_batch(usize::MAX, usize::MAX).unwrap()
}

fn numbered(records: &[Vec<u8>], first: u64) -> Vec<(u64, Vec<u8>)> {
    records
        .iter()
        .enumerate()
        .map(|(i, r)| (first + i as u64, r.clone()))
        .collect()
}

fn segment_files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "log"))
        .collect();
    files.sort();
    files
}

fn frame(payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    encode_record(payload, &mut out).unwrap();
    out
}

// ---- decode_segment ----

#[test]
fn decode_empty_and_valid() {
    let scan = decode_segment(&[]);
    assert_eq!(scan.records, Vec::<Range<usize>>::new());
    assert_eq!(scan.end, ScanEnd::Clean);

    let mut bytes = frame(b"hello");
    bytes.extend(frame(b""));
    bytes.extend(frame(b"world!"));
    let scan = decode_segment(&bytes);
    assert_eq!(scan.end, ScanEnd::Clean);
    assert_eq!(scan.valid_len, bytes.len());
    let got: Vec<&[u8]> = scan.records.iter().map(|r| &bytes[r.clone()]).collect();
    assert_eq!(got, vec![&b"hello"[..], b"", b"world!"]);
}

#[test]
fn decode_zero_fill_is_not_a_record() {
    let mut bytes = frame(b"ok");
    let valid = bytes.len();
    bytes.extend([0u8; 8]);
    let scan = decode_segment(&bytes);
    assert_eq!(scan.records.len(), 1);
    assert_eq!(scan.end, ScanEnd::Truncated { offset: valid });
    bytes.extend([0u8; 100]);
    let scan = decode_segment(&bytes);
    assert_eq!(scan.records.len(), 1);
    assert_eq!(scan.valid_len, valid);
    assert_eq!(scan.end, ScanEnd::Corrupt { offset: valid });
}

#[test]
fn decode_partial_header_and_oversized_len() {
    let mut bytes = frame(b"a");
    bytes.extend([1, 2, 3]);
    assert_eq!(decode_segment(&bytes).end, ScanEnd::Truncated { offset: 9 });
    let mut bytes = frame(b"a");
    bytes.extend(u32::MAX.to_le_bytes());
    bytes.extend([0; 20]);
    let scan = decode_segment(&bytes);
    assert_eq!(scan.records.len(), 1);
    assert_eq!(scan.end, ScanEnd::Truncated { offset: 9 });
}

#[test]
fn decode_bad_crc_in_middle_is_corrupt() {
    let mut bytes = frame(b"one");
    let second = bytes.len();
    bytes.extend(frame(b"two"));
    bytes.extend(frame(b"three"));
    bytes[second + FRAME_HEADER_LEN] ^= 0x01;
    let scan = decode_segment(&bytes);
    assert_eq!(scan.records.len(), 1);
    assert_eq!(scan.end, ScanEnd::Corrupt { offset: second });
}

#[test]
fn record_crc_covers_length() {
    // Same payload bytes, different framing length => different CRC.
    assert_ne!(record_crc(b""), Some(0));
    let f = frame(b"abc");
    assert_eq!(f[4..8], record_crc(b"abc").unwrap().to_le_bytes());
}

// ---- SpillLog ----

#[test]
fn round_trip_and_batch_limits() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = SpillLog::open(dir.path(), cfg(1 << 20)).unwrap();
    assert!(log.is_empty());
    assert!(read_all(&mut log).is_empty());
    let records: Vec<_> = (0..100).map(payload).collect();
    for (i, r) in records.iter().enumerate() {
        assert_eq!(log.append(r).unwrap(), i as u64);
    }
    assert_eq!(log.len(), 100);
    assert_eq!(read_all(&mut log), numbered(&records, 0));
    // Reading does not consume.
    assert_eq!(
        log.read_batch(3, usize::MAX).unwrap(),
        numbered(&records[..3], 0)
    );
    assert_eq!(
        log.read_batch(3, usize::MAX).unwrap(),
        numbered(&records[..3], 0)
    );
    assert!(log.read_batch(0, usize::MAX).unwrap().is_empty());
    // Byte budget, but at least one record.
    let batch = log.read_batch(100, 0).unwrap();
    assert_eq!(batch, numbered(&records[..1], 0));
    let budget = records[..10].iter().map(Vec::len).sum::<usize>();
    let batch = log.read_batch(100, budget).unwrap();
    assert!(batch.len() >= 10, "{}", batch.len());
    assert!(batch.iter().map(|(_, p)| p.len()).sum::<usize>() <= budget);
    assert_eq!(
        log.read_from(42, 2, usize::MAX).unwrap(),
        numbered(&records[42..44], 42)
    );
}

#[test]
fn restart_replays_in_order_across_segments() {
    let dir = tempfile::tempdir().unwrap();
    let records: Vec<_> = (0..60).map(payload).collect();
    {
        let mut log = SpillLog::open(dir.path(), cfg(64)).unwrap();
        for r in &records[..50] {
            log.append(r).unwrap();
        }
        assert!(log.segment_count() > 3);
    }
    let mut log = SpillLog::open(dir.path(), cfg(64)).unwrap();
    assert_eq!(log.stats(), SpillStats::default());
    assert_eq!(read_all(&mut log), numbered(&records[..50], 0));
    for (i, r) in records[50..].iter().enumerate() {
        assert_eq!(log.append(r).unwrap(), 50 + i as u64);
    }
    drop(log);
    let mut log = SpillLog::open(dir.path(), cfg(64)).unwrap();
    assert_eq!(read_all(&mut log), numbered(&records, 0));
}

#[test]
fn segment_files_are_named_by_first_seq() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = SpillLog::open(dir.path(), cfg(2 * (HEADER + 4))).unwrap();
    for _ in 0..5 {
        log.append(b"abcd").unwrap();
    }
    let names: Vec<String> = segment_files(dir.path())
        .iter()
        .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    assert_eq!(
        names,
        vec![
            "00000000000000000000.log",
            "00000000000000000002.log",
            "00000000000000000004.log"
        ]
    );
}

#[test]
fn committed_records_are_not_replayed_after_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let records: Vec<_> = (0..40).map(payload).collect();
    {
        let mut log = SpillLog::open(dir.path(), cfg(64)).unwrap();
        for r in &records {
            log.append(r).unwrap();
        }
        let segments_before = log.segment_count();
        let batch = log.read_batch(25, usize::MAX).unwrap();
        log.commit(batch.last().unwrap().0).unwrap();
        assert_eq!(log.cursor(), 25);
        assert_eq!(log.len(), 15);
        assert!(
            log.segment_count() < segments_before,
            "consumed segments deleted"
        );
        assert_eq!(segment_files(dir.path()).len(), log.segment_count());
        // Backwards commit is a no-op.
        log.commit(3).unwrap();
        assert_eq!(log.cursor(), 25);
        assert_eq!(read_all(&mut log), numbered(&records[25..], 25));
    }
    let mut log = SpillLog::open(dir.path(), cfg(64)).unwrap();
    assert_eq!(log.cursor(), 25);
    assert_eq!(read_all(&mut log), numbered(&records[25..], 25));
    // Commit past the end consumes everything; all segments go but the one
    // being appended to, while it has room.
    log.commit(u64::MAX).unwrap();
    assert!(log.is_empty());
    assert!(log.segment_count() <= 1);
    assert_eq!(segment_files(dir.path()).len(), log.segment_count());
    assert_eq!(log.append(b"next").unwrap(), 40);
    drop(log);
    let mut log = SpillLog::open(dir.path(), cfg(64)).unwrap();
    assert_eq!(read_all(&mut log), vec![(40, b"next".to_vec())]);
}

#[test]
fn sequence_numbers_never_go_below_cursor_after_losing_tail() {
    let dir = tempfile::tempdir().unwrap();
    {
        let mut log = SpillLog::open(dir.path(), cfg(1 << 20)).unwrap();
        for i in 0..10 {
            log.append(&payload(i)).unwrap();
        }
        log.commit(7).unwrap();
    }
    // Damage records 2.. of the only segment: the cursor (8) is past the
    // valid data, so new appends must start a fresh segment at 8 or later.
    let path = segment_files(dir.path()).remove(0);
    let bytes = fs::read(&path).unwrap();
    let scan = decode_segment(&bytes);
    fs::write(&path, &bytes[..scan.records[2].start - 1]).unwrap();
    let mut log = SpillLog::open(dir.path(), cfg(1 << 20)).unwrap();
    assert!(log.is_empty());
    let seq = log.append(b"after").unwrap();
    assert!(seq >= 8, "seq {seq} reuses a consumed number");
    drop(log);
    let mut log = SpillLog::open(dir.path(), cfg(1 << 20)).unwrap();
    assert_eq!(read_all(&mut log), vec![(seq, b"after".to_vec())]);
}

#[test]
fn torn_tail_at_every_offset_recovers_earlier_records() {
    let records: Vec<_> = (0..5)
        .map(|i| format!("span-{i}-payload").into_bytes())
        .collect();
    let template = tempfile::tempdir().unwrap();
    {
        let mut log = SpillLog::open(template.path(), cfg(1 << 20)).unwrap();
        for r in &records {
            log.append(r).unwrap();
        }
    }
    let full = fs::read(template.path().join(segment_file_name(0))).unwrap();
    let last_start = full.len() - frame(&records[4]).len();
    for cut in last_start..full.len() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(segment_file_name(0));
        fs::write(&path, &full[..cut]).unwrap();
        let mut log = SpillLog::open(dir.path(), cfg(1 << 20)).unwrap();
        assert_eq!(
            read_all(&mut log),
            numbered(&records[..4], 0),
            "cut at {cut}"
        );
        assert_eq!(log.stats().truncated_bytes, (cut - last_start) as u64);
        assert_eq!(log.stats().corrupt_segments, 0);
        assert_eq!(fs::metadata(&path).unwrap().len(), last_start as u64);
        // New appends follow the valid data.
        assert_eq!(log.append(b"new").unwrap(), 4);
        drop(log);
        let mut log = SpillLog::open(dir.path(), cfg(1 << 20)).unwrap();
        let mut want = numbered(&records[..4], 0);
        want.push((4, b"new".to_vec()));
        assert_eq!(read_all(&mut log), want, "cut at {cut}");
        assert_eq!(log.stats(), SpillStats::default());
    }
}

#[test]
fn torn_tail_with_garbled_payload_is_truncated() {
    let dir = tempfile::tempdir().unwrap();
    {
        let mut log = SpillLog::open(dir.path(), cfg(1 << 20)).unwrap();
        log.append(b"first").unwrap();
        log.append(b"second").unwrap();
    }
    let path = dir.path().join(segment_file_name(0));
    let mut bytes = fs::read(&path).unwrap();
    let n = bytes.len();
    bytes[n - 1] ^= 0xff;
    fs::write(&path, &bytes).unwrap();
    let mut log = SpillLog::open(dir.path(), cfg(1 << 20)).unwrap();
    assert_eq!(read_all(&mut log), vec![(0, b"first".to_vec())]);
    assert_eq!(log.stats().truncated_bytes, frame(b"second").len() as u64);
}

/// 3 segments of 5 records each (payloads of 4 bytes, frames of 12).
fn three_segments(dir: &Path) -> Vec<Vec<u8>> {
    let records: Vec<_> = (0..15).map(|i| format!("r{i:03}").into_bytes()).collect();
    let mut log = SpillLog::open(dir, cfg(5 * 12)).unwrap();
    for r in &records {
        log.append(r).unwrap();
    }
    assert_eq!(log.segment_count(), 3);
    records
}

#[test]
fn bad_crc_in_middle_segment_skips_rest_of_that_segment() {
    let dir = tempfile::tempdir().unwrap();
    let records = three_segments(dir.path());
    // Flip a payload byte of record 2 (of 0..5) in the first segment.
    let path = dir.path().join(segment_file_name(0));
    let mut bytes = fs::read(&path).unwrap();
    bytes[2 * 12 + FRAME_HEADER_LEN] ^= 0x40;
    fs::write(&path, &bytes).unwrap();

    let mut log = SpillLog::open(dir.path(), cfg(5 * 12)).unwrap();
    let mut want = numbered(&records[..2], 0);
    want.extend(numbered(&records[5..], 5));
    assert_eq!(read_all(&mut log), want);
    assert_eq!(log.stats().corrupt_segments, 1);
    assert_eq!(log.stats().corrupt_bytes, 3 * 12);
    assert_eq!(log.stats().truncated_bytes, 0);
    // The damaged file is left alone; appends go on at the end.
    assert_eq!(fs::metadata(&path).unwrap().len(), 60);
    assert_eq!(log.append(b"more").unwrap(), 15);
    // Consuming past the damaged segment deletes it.
    log.commit(6).unwrap();
    assert!(!path.exists());
}

#[test]
fn bad_crc_in_middle_of_last_segment_truncates_it() {
    let dir = tempfile::tempdir().unwrap();
    let records = three_segments(dir.path());
    let path = dir.path().join(segment_file_name(10));
    let mut bytes = fs::read(&path).unwrap();
    bytes[12 + 5] ^= 0x01; // crc byte of record 11
    fs::write(&path, &bytes).unwrap();

    let mut log = SpillLog::open(dir.path(), cfg(5 * 12)).unwrap();
    assert_eq!(read_all(&mut log), numbered(&records[..11], 0));
    assert_eq!(log.stats().corrupt_segments, 1);
    assert_eq!(log.stats().corrupt_bytes, 4 * 12);
    assert_eq!(log.append(b"tail").unwrap(), 11);
    drop(log);
    let mut log = SpillLog::open(dir.path(), cfg(5 * 12)).unwrap();
    let mut want = numbered(&records[..11], 0);
    want.push((11, b"tail".to_vec()));
    assert_eq!(read_all(&mut log), want);
    assert_eq!(log.stats(), SpillStats::default());
}

#[test]
fn corruption_found_on_read_is_skipped_and_counted() {
    let dir = tempfile::tempdir().unwrap();
    let records = three_segments(dir.path());
    let mut log = SpillLog::open(dir.path(), cfg(5 * 12)).unwrap();
    let path = dir.path().join(segment_file_name(5));
    let mut bytes = fs::read(&path).unwrap();
    bytes[3 * 12 + FRAME_HEADER_LEN] ^= 0x02; // record 8
    fs::write(&path, &bytes).unwrap();

    let mut want = numbered(&records[..8], 0);
    want.extend(numbered(&records[10..], 10));
    assert_eq!(read_all(&mut log), want);
    assert_eq!(log.stats().corrupt_segments, 1);
    assert_eq!(log.len(), 13);
    // A batch that starts at the damage still makes progress.
    let dir2 = tempfile::tempdir().unwrap();
    let records = three_segments(dir2.path());
    let mut log = SpillLog::open(dir2.path(), cfg(5 * 12)).unwrap();
    let path = dir2.path().join(segment_file_name(0));
    let mut bytes = fs::read(&path).unwrap();
    bytes[FRAME_HEADER_LEN] ^= 0x02; // record 0
    fs::write(&path, &bytes).unwrap();
    assert_eq!(
        log.read_batch(2, usize::MAX).unwrap(),
        numbered(&records[5..7], 5)
    );
}

#[test]
fn size_cap_evicts_oldest_segments_and_counts() {
    let dir = tempfile::tempdir().unwrap();
    // 100-byte frames, 3 per segment, at most 1000 bytes on disk.
    let config = SpillConfig {
        segment_size: 300,
        max_total_size: 1000,
        fsync: FsyncPolicy::Never,
    };
    let mut log = SpillLog::open(dir.path(), config.clone()).unwrap();
    let records: Vec<Vec<u8>> = (0..20u8).map(|i| vec![i; 92]).collect();
    for (i, r) in records.iter().enumerate() {
        log.append(r).unwrap();
        assert!(log.disk_bytes() <= 1000);
        let on_disk: u64 = segment_files(dir.path())
            .iter()
            .map(|p| fs::metadata(p).unwrap().len())
            .sum();
        assert_eq!(on_disk, log.disk_bytes(), "after append {i}");
    }
    // Segments hold 3 records; once 1000 bytes are reached the oldest whole
    // segment goes: 0..3, 3..6, 6..9 and 9..12 are evicted unconsumed,
    // leaving 12..15, 15..18, 18..20 (800 bytes).
    assert_eq!(log.evicted_records(), 12);
    assert_eq!(log.evicted_bytes(), 1200);
    assert_eq!(log.disk_bytes(), 800);
    assert_eq!(read_all(&mut log), numbered(&records[12..], 12));

    // Consumed records evicted are not counted as lost.
    log.commit(13).unwrap(); // segment 12..15 keeps one unconsumed record
    for r in &records[..3] {
        log.append(r).unwrap();
    }
    assert_eq!(log.evicted_records(), 12 + 1);
    assert_eq!(log.evicted_bytes(), 1200 + 100);
    assert_eq!(log.read_batch(1, usize::MAX).unwrap()[0].0, 15);
    drop(log);
    let mut log = SpillLog::open(dir.path(), config).unwrap();
    let got = read_all(&mut log);
    let seqs: Vec<u64> = got.iter().map(|(s, _)| *s).collect();
    assert_eq!(seqs, (15..23).collect::<Vec<_>>());
    assert_eq!(got.last().unwrap().1, records[2]);
}

#[test]
fn oversized_records_get_their_own_segment_or_are_rejected() {
    let dir = tempfile::tempdir().unwrap();
    let config = SpillConfig {
        segment_size: 32,
        max_total_size: 1000,
        fsync: FsyncPolicy::Never,
    };
    let mut log = SpillLog::open(dir.path(), config.clone()).unwrap();
    log.append(b"small").unwrap();
    let big = vec![7u8; 500];
    log.append(&big).unwrap();
    log.append(b"after").unwrap();
    assert_eq!(log.segment_count(), 3);
    let too_big = vec![0u8; 1000 - FRAME_HEADER_LEN + 1];
    assert!(matches!(
        log.append(&too_big),
        Err(Error::RecordTooLarge {
            size: 993,
            limit: 992
        })
    ));
    assert_eq!(log.next_seq(), 3);
    drop(log);
    let mut log = SpillLog::open(dir.path(), config).unwrap();
    assert_eq!(
        read_all(&mut log),
        vec![(0, b"small".to_vec()), (1, big), (2, b"after".to_vec())]
    );
}

#[test]
fn fsync_policies_do_not_change_content() {
    let policies = [
        FsyncPolicy::Always,
        FsyncPolicy::EveryN(3),
        FsyncPolicy::EveryN(0),
        FsyncPolicy::Interval(Duration::ZERO),
        FsyncPolicy::Interval(Duration::from_secs(3600)),
        FsyncPolicy::Never,
    ];
    let mut snapshots = Vec::new();
    for fsync in policies {
        let dir = tempfile::tempdir().unwrap();
        let config = SpillConfig {
            segment_size: 100,
            max_total_size: 1 << 20,
            fsync,
        };
        let read = {
            let mut log = SpillLog::open(dir.path(), config.clone()).unwrap();
            for i in 0..30 {
                log.append(&payload(i)).unwrap();
            }
            log.commit(12).unwrap();
            log.sync().unwrap();
            drop(log);
            let mut log = SpillLog::open(dir.path(), config).unwrap();
            read_all(&mut log)
        };
        let mut files: Vec<(String, Vec<u8>)> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| {
                let e = e.unwrap();
                (
                    e.file_name().to_string_lossy().into_owned(),
                    fs::read(e.path()).unwrap(),
                )
            })
            .collect();
        files.sort();
        snapshots.push((fsync, files, read));
    }
    let (_, files0, read0) = &snapshots[0];
    assert_eq!(read0.first().unwrap().0, 13);
    for (policy, files, read) in &snapshots[1..] {
        assert_eq!(files, files0, "{policy:?}");
        assert_eq!(read, read0, "{policy:?}");
    }
}

#[test]
fn junk_files_are_ignored_and_bad_cursor_replays_all() {
    let dir = tempfile::tempdir().unwrap();
    {
        let mut log = SpillLog::open(dir.path(), cfg(1 << 20)).unwrap();
        log.append(b"a").unwrap();
        log.append(b"b").unwrap();
        log.commit(0).unwrap();
    }
    fs::write(dir.path().join("notes.txt"), b"hi").unwrap();
    fs::write(dir.path().join("123.log"), b"junk").unwrap();
    fs::write(dir.path().join(CURSOR_TMP_FILE), b"stale").unwrap();
    let mut log = SpillLog::open(dir.path(), cfg(1 << 20)).unwrap();
    assert_eq!(read_all(&mut log), vec![(1, b"b".to_vec())]);
    assert!(!dir.path().join(CURSOR_TMP_FILE).exists());
    drop(log);
    fs::write(dir.path().join(CURSOR_FILE), b"garbage!garbage!").unwrap();
    let mut log = SpillLog::open(dir.path(), cfg(1 << 20)).unwrap();
    assert_eq!(
        read_all(&mut log),
        vec![(0, b"a".to_vec()), (1, b"b".to_vec())]
    );
}

#[test]
fn invalid_config_is_rejected() {
    let dir = tempfile::tempdir().unwrap();
    let zero_segment = SpillConfig {
        segment_size: 0,
        ..SpillConfig::default()
    };
    assert!(matches!(
        SpillLog::open(dir.path(), zero_segment),
        Err(Error::InvalidConfig(_))
    ));
    let tiny_cap = SpillConfig {
        max_total_size: 7,
        ..SpillConfig::default()
    };
    assert!(matches!(
        SpillLog::open(dir.path(), tiny_cap),
        Err(Error::InvalidConfig(_))
    ));
}

#[test]
fn overlapping_segments_keep_sequence_numbers_increasing() {
    let dir = tempfile::tempdir().unwrap();
    let mut a = Vec::new();
    for i in 0..5u8 {
        encode_record(&[i], &mut a).unwrap();
    }
    fs::write(dir.path().join(segment_file_name(0)), &a).unwrap();
    let mut b = Vec::new();
    encode_record(b"b", &mut b).unwrap();
    fs::write(dir.path().join(segment_file_name(3)), &b).unwrap();
    let mut log = SpillLog::open(dir.path(), cfg(1 << 20)).unwrap();
    assert_eq!(
        read_all(&mut log),
        vec![(0, vec![0]), (1, vec![1]), (2, vec![2]), (3, b"b".to_vec())]
    );
    assert_eq!(log.stats().corrupt_segments, 1);
}

// ---- model-based property test ----

#[derive(Debug, Clone)]
enum Op {
    Append(Vec<u8>),
    /// Commit through the n-th unconsumed record (modulo the count).
    Commit(usize),
    Reopen,
    Read(usize, usize),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        5 => proptest::collection::vec(any::<u8>(), 0..40).prop_map(Op::Append),
        2 => any::<usize>().prop_map(Op::Commit),
        1 => Just(Op::Reopen),
        2 => (0usize..10, 0usize..100).prop_map(|(n, b)| Op::Read(n, b)),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]
    #[test]
    fn matches_a_vecdeque_model(
        ops in proptest::collection::vec(op(), 1..80),
        segment_size in 1u64..200,
        always in any::<bool>(),
    ) {
        let dir = tempfile::tempdir().unwrap();
        let config = SpillConfig {
            segment_size,
            max_total_size: 1 << 30,
            fsync: if always { FsyncPolicy::Always } else { FsyncPolicy::Never },
        };
        let mut log = SpillLog::open(dir.path(), config.clone()).unwrap();
        let mut model: VecDeque<(u64, Vec<u8>)> = VecDeque::new();
        let mut next = 0u64;
        for op in ops {
            match op {
                Op::Append(p) => {
                    prop_assert_eq!(log.append(&p).unwrap(), next);
                    model.push_back((next, p));
                    next += 1;
                }
                Op::Commit(n) => {
                    if !model.is_empty() {
                        let k = n % model.len();
                        log.commit(model[k].0).unwrap();
                        model.drain(..=k);
                    }
                }
                Op::Reopen => {
                    drop(log);
                    log = SpillLog::open(dir.path(), config.clone()).unwrap();
                    prop_assert_eq!(log.stats(), SpillStats::default());
                }
                Op::Read(n, max_bytes) => {
                    let got = log.read_batch(n, max_bytes).unwrap();
                    let want: Vec<_> = model.iter().take(n).cloned().collect();
                    prop_assert!(want.starts_with(&got));
                    if n > 0 && !model.is_empty() {
                        prop_assert!(!got.is_empty());
                    }
                    let bytes: usize = got.iter().map(|(_, p)| p.len()).sum();
                    prop_assert!(got.len() <= 1 || bytes <= max_bytes);
                }
            }
            prop_assert_eq!(log.len(), model.len() as u64);
            let all = log.read_batch(usize::MAX, usize::MAX).unwrap();
            prop_assert_eq!(&all, &model.iter().cloned().collect::<Vec<_>>());
        }
    }
}

#[test]
fn cap_below_segment_size_evicts_the_active_segment() {
    let dir = tempfile::tempdir().unwrap();
    let config = SpillConfig {
        segment_size: 1000,
        max_total_size: 250,
        fsync: FsyncPolicy::Never,
    };
    let mut log = SpillLog::open(dir.path(), config).unwrap();
    let p = [1u8; 92]; // 100-byte frames
    assert_eq!(log.append(&p).unwrap(), 0);
    assert_eq!(log.append(&p).unwrap(), 1);
    assert_eq!(log.append(&p).unwrap(), 2);
    assert_eq!(log.evicted_records(), 2);
    assert_eq!(log.evicted_bytes(), 200);
    assert_eq!(log.disk_bytes(), 100);
    assert_eq!(read_all(&mut log), vec![(2, p.to_vec())]);
    assert_eq!(
        segment_files(dir.path()),
        vec![dir.path().join(segment_file_name(2))]
    );
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]
    /// With a size cap, what is readable is always the newest part of the
    /// model: eviction only ever drops the oldest records, and every dropped
    /// unconsumed record is counted.
    #[test]
    fn eviction_only_drops_oldest_and_counts_them(
        ops in proptest::collection::vec(op(), 1..80),
        segment_size in 1u64..120,
        max_total_size in 8u64..400,
    ) {
        let dir = tempfile::tempdir().unwrap();
        let config = SpillConfig { segment_size, max_total_size, fsync: FsyncPolicy::Never };
        let mut log = SpillLog::open(dir.path(), config.clone()).unwrap();
        let mut model: VecDeque<(u64, Vec<u8>)> = VecDeque::new();
        let mut evicted_before_reopen = 0u64;
        let mut dropped = 0u64;
        for op in ops {
            match op {
                Op::Append(p) => {
                    match log.append(&p) {
                        Ok(seq) => model.push_back((seq, p)),
                        Err(Error::RecordTooLarge { .. }) => {
                            prop_assert!(HEADER + p.len() as u64 > max_total_size);
                        }
                        Err(e) => return Err(TestCaseError::fail(e.to_string())),
                    }
                }
                Op::Commit(n) => {
                    if !model.is_empty() {
                        let k = n % model.len();
                        log.commit(model[k].0).unwrap();
                        model.drain(..=k);
                    }
                }
                Op::Reopen => {
                    evicted_before_reopen += log.evicted_records();
                    drop(log);
                    log = SpillLog::open(dir.path(), config.clone()).unwrap();
                }
                Op::Read(..) => {}
            }
            prop_assert!(log.disk_bytes() <= max_total_size);
            let all = log.read_batch(usize::MAX, usize::MAX).unwrap();
            let model_vec: Vec<_> = model.iter().cloned().collect();
            prop_assert!(model_vec.ends_with(&all), "not a suffix: {:?} vs {:?}", all, model_vec);
            dropped += (model.len() - all.len()) as u64;
            model = all.into_iter().collect();
            prop_assert_eq!(evicted_before_reopen + log.evicted_records(), dropped);
        }
    }
}

#[test]
fn a_second_open_of_the_same_directory_is_refused_until_the_first_closes() {
    let dir = tempfile::tempdir().unwrap();
    let mut first = SpillLog::open(dir.path(), SpillConfig::default()).unwrap();
    first.append(b"one").unwrap();
    match SpillLog::open(dir.path(), SpillConfig::default()) {
        Err(Error::Locked(p)) => assert_eq!(p, dir.path()),
        other => panic!("expected Locked, got {other:?}"),
    }
    drop(first);
    let mut again = SpillLog::open(dir.path(), SpillConfig::default()).unwrap();
    let recs = again.read_batch(10, 1 << 20).unwrap();
    assert_eq!(recs.len(), 1, "the lock file is not mistaken for a segment");
}

#[test]
fn cursor_is_written_in_place_and_survives_a_torn_slot() {
    let dir = tempfile::tempdir().unwrap();
    let cursor_path = dir.path().join(CURSOR_FILE);
    {
        let mut log = SpillLog::open(dir.path(), cfg(1 << 20)).unwrap();
        for i in 0..5u8 {
            log.append(&[i]).unwrap();
        }
        let inode = |p: &Path| std::os::unix::fs::MetadataExt::ino(&fs::metadata(p).unwrap());
        let before = inode(&cursor_path);
        log.commit(0).unwrap();
        log.commit(1).unwrap();
        log.commit(2).unwrap();
        // Commits overwrite the same file: no new inode, no growth.
        assert_eq!(inode(&cursor_path), before);
        assert_eq!(fs::metadata(&cursor_path).unwrap().len(), 32);
    }
    // Cursor 3 went to the slot that held 1; tearing it leaves cursor 2.
    let mut bytes = fs::read(&cursor_path).unwrap();
    let torn = if parse_slot(&bytes[..16]) == Some(3) {
        0
    } else {
        16
    };
    bytes[torn + 3] ^= 0xff;
    fs::write(&cursor_path, &bytes).unwrap();
    let mut log = SpillLog::open(dir.path(), cfg(1 << 20)).unwrap();
    assert_eq!(log.cursor(), 2);
    assert_eq!(
        read_all(&mut log),
        vec![(2, vec![2]), (3, vec![3]), (4, vec![4])]
    );
}

#[test]
fn earlier_twelve_byte_cursor_is_read_and_converted() {
    let dir = tempfile::tempdir().unwrap();
    {
        let mut log = SpillLog::open(dir.path(), cfg(1 << 20)).unwrap();
        for i in 0..4u8 {
            log.append(&[i]).unwrap();
        }
    }
    let value = 2u64.to_le_bytes();
    let mut old = value.to_vec();
    old.extend_from_slice(&crc32fast::hash(&value).to_le_bytes());
    fs::write(dir.path().join(CURSOR_FILE), &old).unwrap();
    let mut log = SpillLog::open(dir.path(), cfg(1 << 20)).unwrap();
    assert_eq!(read_all(&mut log), vec![(2, vec![2]), (3, vec![3])]);
    assert_eq!(
        fs::metadata(dir.path().join(CURSOR_FILE)).unwrap().len(),
        32
    );
    log.commit(2).unwrap();
    drop(log);
    let mut log = SpillLog::open(dir.path(), cfg(1 << 20)).unwrap();
    assert_eq!(read_all(&mut log), vec![(3, vec![3])]);
}

#[test]
fn commit_on_a_full_disk_takes_effect_and_frees_segments() {
    // A real full file system: a 1 MiB tmpfs (needs root; skipped otherwise).
    let dir = tempfile::tempdir().unwrap();
    let mounted = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=1m", "tmpfs"])
        .arg(dir.path())
        .status()
        .is_ok_and(|s| s.success());
    if !mounted {
        eprintln!("SKIPPED: cannot mount a tmpfs (not root?)");
        return;
    }
    struct Unmount<'a>(&'a Path);
    impl Drop for Unmount<'_> {
        fn drop(&mut self) {
            let _ = std::process::Command::new("umount").arg(self.0).status();
        }
    }
    let _guard = Unmount(dir.path());
    let config = SpillConfig {
        segment_size: 64 << 10,
        max_total_size: 64 << 20,
        fsync: FsyncPolicy::Always,
    };
    let mut log = SpillLog::open(dir.path(), config).unwrap();
    let record = vec![7u8; 4000];
    let mut appended = 0u64;
    loop {
        match log.append(&record) {
            Ok(_) => appended += 1,
            Err(Error::Io { source, .. }) if source.raw_os_error() == Some(28) => break,
            Err(e) => panic!("unexpected error: {e}"),
        }
        assert!(appended < 1000, "the 1 MiB tmpfs never filled");
    }
    assert!(appended > 100);
    // Consume everything while the disk is full: every commit succeeds and
    // the consumed segments are deleted, so appends work again.
    let mut consumed = 0;
    while consumed < appended {
        let batch = log.read_batch(10, usize::MAX).unwrap();
        let last = batch.last().unwrap().0;
        log.commit(last).unwrap();
        consumed += batch.len() as u64;
    }
    assert!(log.is_empty());
    log.append(&record).unwrap();
    drop(log);
    let mut log = SpillLog::open(dir.path(), cfg(1 << 20)).unwrap();
    assert_eq!(read_all(&mut log), vec![(appended, record)]);
}

#[test]
fn a_log_consumed_as_fast_as_written_keeps_its_active_segment() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = SpillLog::open(dir.path(), cfg(1 << 20)).unwrap();
    for i in 0..100u64 {
        let seq = log.append(&i.to_le_bytes()).unwrap();
        log.commit(seq).unwrap();
        assert_eq!(
            log.segment_count(),
            1,
            "no segment made and deleted per record"
        );
    }
    assert_eq!(
        segment_files(dir.path()),
        vec![dir.path().join(segment_file_name(0))]
    );
    drop(log);
    // Reopened, the consumed segment goes.
    let log = SpillLog::open(dir.path(), cfg(1 << 20)).unwrap();
    assert!(log.is_empty());
    assert!(segment_files(dir.path()).is_empty());
}

/// Bytes of `path` resident in the page cache, as util-linux's `fincore`
/// reports them (mincore(2) on a mapping of the file).
#[cfg(target_os = "linux")]
fn resident_bytes(path: &Path) -> u64 {
    let out = std::process::Command::new("fincore")
        .args(["--bytes", "--noheadings", "--raw", "--output", "RES"])
        .arg(path)
        .output()
        .expect("fincore (util-linux) runs");
    assert!(out.status.success(), "fincore {}", path.display());
    String::from_utf8_lossy(&out.stdout).trim().parse().unwrap()
}

/// With `uncache_closed`, a segment leaves the page cache when the log
/// moves to the next one, synced first; its records still read back after
/// a reopen. Without it, the closed segment stays cached.
#[cfg(target_os = "linux")]
#[test]
fn closed_segments_leave_the_page_cache_when_asked() {
    let record = vec![7u8; 64 * 1024];
    for uncache in [true, false] {
        let dir = tempfile::tempdir().unwrap();
        let config = SpillConfig {
            segment_size: 1 << 20,
            max_total_size: 1 << 30,
            fsync: FsyncPolicy::EveryN(u32::MAX),
        };
        let mut log = SpillLog::open(dir.path(), config.clone()).unwrap();
        if uncache {
            log.uncache_closed();
        }
        // Two full segments and the start of a third.
        for _ in 0..40 {
            log.append(&record).unwrap();
            log.sync().unwrap();
        }
        let files = segment_files(dir.path());
        assert_eq!(files.len(), 3, "{files:?}");
        let first = resident_bytes(&files[0]);
        if uncache {
            assert_eq!(first, 0, "a closed segment is dropped from the cache");
        } else {
            let len = fs::metadata(&files[0]).unwrap().len();
            assert!(
                first + 4096 > len,
                "a closed segment stays cached ({first} of {len})"
            );
        }
        assert!(
            resident_bytes(&files[2]) > 0,
            "the active segment is cached"
        );
        drop(log);
        let mut log = SpillLog::open(dir.path(), config).unwrap();
        let back = read_all(&mut log);
        assert_eq!(back.len(), 40);
        assert!(back.iter().all(|(_, p)| *p == record));
    }
}
