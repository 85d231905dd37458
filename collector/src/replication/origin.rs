//! The origin's side: sending each accepted batch's spans to their
//! replicas, waiting for enough copies, and telling the peers how far this
//! collector's batches are stored.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use clew_proto::v1::{ReplicateResponse, Span};
use futures_util::StreamExt as _;
use futures_util::stream::FuturesUnordered;
use parking_lot::{Mutex, RwLock};
use prost::bytes::Bytes;
use tokio::sync::watch;
use tonic::transport::{Channel, Endpoint};

use super::members::{Copies, Members};
use super::metrics::ReplicationMetrics;
use crate::wal::Wal;

/// Settings of replication.
#[derive(Debug, Clone)]
pub struct ReplicationConfig {
    /// This collector's address in the set (`host:port`).
    pub me: String,
    /// The factor and the copies an acknowledgement needs.
    pub copies: Copies,
    /// Longest wait for a peer's answer to one request.
    pub timeout: Duration,
    /// How often the peers are told how far this collector's batches are
    /// stored (and probed).
    pub heartbeat: Duration,
    /// A replica takes over an origin's batches once it has not heard from
    /// it for this long.
    pub takeover_after: Duration,
    /// TLS towards peers (`--peer-tls-ca`), else plain text.
    pub tls: Option<clew_runtime::tls::ClientTls>,
}

impl Default for ReplicationConfig {
    fn default() -> Self {
        ReplicationConfig {
            me: String::new(),
            copies: Copies {
                configured: 0,
                min: 0,
            },
            timeout: Duration::from_secs(2),
            heartbeat: Duration::from_secs(1),
            takeover_after: Duration::from_secs(30),
            tls: None,
        }
    }
}

/// Why a batch did not get its copies.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{needed} copies needed on peers, {got} made ({why})")]
pub struct CopiesMissing {
    /// Copies needed on peers for some trace of the batch.
    pub needed: usize,
    /// Copies made for it.
    pub got: usize,
    /// What went wrong, naming the peers.
    pub why: String,
}

/// A peer: its channel and whether it answers.
#[derive(Debug)]
struct Peer {
    name: String,
    channel: Channel,
    down: AtomicBool,
    /// When the peer last answered a request (a copy or a heartbeat).
    last_answer: Mutex<Instant>,
}

impl Peer {
    fn new(
        name: &str,
        timeout: Duration,
        tls: Option<&clew_runtime::tls::ClientTls>,
    ) -> Option<Arc<Peer>> {
        let endpoint = Endpoint::from_shared(format!("http://{name}"))
            .ok()?
            .connect_timeout(timeout)
            .tcp_nodelay(true)
            .http2_keep_alive_interval(Duration::from_secs(10))
            .keep_alive_timeout(timeout);
        let channel = match tls {
            // The connector does the TCP connect and the TLS handshake.
            Some(tls) => endpoint.connect_with_connector_lazy(tls.connector()),
            None => endpoint.connect_lazy(),
        };
        Some(Arc::new(Peer {
            name: name.to_owned(),
            channel,
            down: AtomicBool::new(false),
            last_answer: Mutex::new(Instant::now()),
        }))
    }

    /// Sends one encoded request; the peer's answer or why there is none.
    async fn call(&self, body: Bytes, timeout: Duration) -> Result<ReplicateResponse, String> {
        let result = tokio::time::timeout(timeout, unary(self.channel.clone(), body)).await;
        match result {
            Ok(Ok(r)) => {
                *self.last_answer.lock() = Instant::now();
                Ok(r)
            }
            Ok(Err(status)) => Err(format!("{}: {}", status.code(), status.message())),
            Err(_) => Err(format!("no answer within {timeout:?}")),
        }
    }

    /// Time since the peer last answered: with a heartbeat every second,
    /// above that it is behind or unreachable.
    fn lag(&self) -> Duration {
        self.last_answer.lock().elapsed()
    }
}

/// One `Replicate` call with a pre-encoded request.
async fn unary(channel: Channel, body: Bytes) -> Result<ReplicateResponse, tonic::Status> {
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready()
        .await
        .map_err(|e| tonic::Status::unavailable(e.to_string()))?;
    let path =
        tonic::codegen::http::uri::PathAndQuery::from_static("/clew.v1.Replication/Replicate");
    let response = grpc
        .unary(
            tonic::Request::new(body),
            path,
            super::codec::RawRequestCodec,
        )
        .await?;
    Ok(response.into_inner())
}

/// Which batches of this incarnation are not yet stored, for the
/// `released_below` told to the peers.
#[derive(Debug)]
struct Releases {
    /// The next batch number.
    next: u64,
    /// The first batch number of this run.
    first: u64,
    /// WAL records of an earlier run (replayed) are all below this.
    replay_end: u64,
    /// Batches sent and not known stored: their WAL record once written.
    open: BTreeMap<u64, Option<u64>>,
}

impl Releases {
    /// Every batch below the result is stored, given the WAL's checkpoint.
    fn watermark(&mut self, wal_checkpoint: u64) -> u64 {
        if wal_checkpoint < self.replay_end {
            // Records replayed from an earlier run are still outstanding;
            // their batches were numbered below this run's first.
            return self.first;
        }
        self.open
            .retain(|_, record| record.is_none_or(|r| r >= wal_checkpoint));
        self.open.first_key_value().map_or(self.next, |(b, _)| *b)
    }
}

/// The origin's replication: see the [module docs](self).
#[derive(Debug, Clone)]
pub struct Replicator {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    config: ReplicationConfig,
    incarnation: u64,
    members: watch::Receiver<Arc<Members>>,
    peers: RwLock<HashMap<String, Arc<Peer>>>,
    releases: Mutex<Releases>,
    released_below: AtomicU64,
    metrics: Arc<ReplicationMetrics>,
}

/// Spans of one accepted batch on their way to their replicas. Dropping it
/// before [`Outgoing::wal_done`] forgets the batch (the client was not
/// answered, so it sends it again).
#[derive(Debug)]
pub struct Outgoing {
    inner: Arc<Inner>,
    batch_seq: u64,
    /// Per target peer: the peer, the encoded request, its span count.
    sends: Vec<(Arc<Peer>, Bytes, usize)>,
    /// Per distinct set of target peers (indexes into `sends`): copies
    /// needed.
    sets: Vec<(Vec<usize>, usize)>,
    done: bool,
}

impl Replicator {
    /// Replication for the WAL of `incarnation`, whose records replayed at
    /// start-up are all below `replay_end`.
    pub fn new(
        config: ReplicationConfig,
        incarnation: u64,
        replay_end: u64,
        members: watch::Receiver<Arc<Members>>,
        metrics: Arc<ReplicationMetrics>,
    ) -> Self {
        // Batch numbers increase across restarts of one incarnation: peers
        // may still hold copies numbered by an earlier run.
        let first = clew_model::now_unix_nanos().max(1);
        Replicator {
            inner: Arc::new(Inner {
                config,
                incarnation,
                members,
                peers: RwLock::new(HashMap::new()),
                releases: Mutex::new(Releases {
                    next: first,
                    first,
                    replay_end,
                    open: BTreeMap::new(),
                }),
                released_below: AtomicU64::new(first),
                metrics,
            }),
        }
    }

    /// This collector's name in the set.
    pub fn me(&self) -> &str {
        &self.inner.config.me
    }

    /// Tells the peers once how far this collector's batches are stored
    /// (at shutdown, after everything accepted was stored).
    pub async fn final_heartbeat(&self, wal: &Wal) {
        let below = self.inner.releases.lock().watermark(wal.checkpoint());
        self.inner.released_below.store(below, Ordering::Relaxed);
        self.heartbeat(below).await;
    }

    /// The metrics.
    pub fn metrics(&self) -> &Arc<ReplicationMetrics> {
        &self.inner.metrics
    }

    /// The members as known now.
    pub fn members(&self) -> Arc<Members> {
        Arc::clone(&self.inner.members.borrow())
    }

    /// Plans the copies of `spans`: `Ok(None)` when none is needed (a
    /// factor of 1), an error when the peers that answer are too few.
    /// `otlp` is the OTLP/protobuf request `spans` were converted from,
    /// whole and in order, when there is one: its spans are forwarded as
    /// they came instead of encoding `spans`.
    pub fn begin(
        &self,
        spans: &[Span],
        otlp: Option<&Bytes>,
    ) -> Result<Option<Outgoing>, CopiesMissing> {
        let members = self.members();
        let copies = self.inner.config.copies;
        let size = members.size();
        let needed = copies.required(size).saturating_sub(1);
        if needed == 0 || spans.is_empty() {
            return Ok(None);
        }
        let wanted = copies.factor(size) - 1;
        let peers = self.peers_of(&members);
        let targets = targets(&members, &peers, spans, wanted, needed)?;
        let batch_seq = {
            let mut r = self.inner.releases.lock();
            let seq = r.next;
            r.next += 1;
            r.open.insert(seq, None);
            seq
        };
        let batch = Batch {
            spans,
            otlp,
            raw: std::cell::OnceCell::new(),
        };
        Ok(Some(self.encode(batch_seq, batch, targets, &peers, needed)))
    }

    /// The peer of each member (`None` for this collector), made on first
    /// use.
    fn peers_of(&self, members: &Members) -> Vec<Option<Arc<Peer>>> {
        let timeout = self.inner.config.timeout;
        let mut out = Vec::with_capacity(members.names().len());
        for (i, name) in members.names().iter().enumerate() {
            if Some(i) == members.me() {
                out.push(None);
                continue;
            }
            let known = self.inner.peers.read().get(name).cloned();
            let peer = known.or_else(|| {
                let peer = Peer::new(name, timeout, self.inner.config.tls.as_ref())?;
                let mut map = self.inner.peers.write();
                Some(Arc::clone(map.entry(name.clone()).or_insert(peer)))
            });
            out.push(peer);
        }
        out
    }

    /// One request per target peer, and the copies each set of targets
    /// needs.
    fn encode(
        &self,
        batch_seq: u64,
        batch: Batch<'_>,
        targets: Targets,
        peers: &[Option<Arc<Peer>>],
        needed: usize,
    ) -> Outgoing {
        let mut by_peer: BTreeMap<usize, Vec<usize>> = BTreeMap::new();
        for (i, set) in targets.of_span.iter().enumerate() {
            for t in &targets.sets[*set] {
                by_peer.entry(*t).or_default().push(i);
            }
        }
        let slots: Vec<usize> = by_peer.keys().copied().collect();
        let header = Header {
            source: &self.inner.config.me,
            incarnation: self.inner.incarnation,
            batch_seq,
            released_below: self.inner.released_below.load(Ordering::Relaxed),
        };
        let sends = by_peer
            .into_iter()
            .filter_map(|(member, picked)| {
                let peer = peers.get(member).cloned().flatten()?;
                let n = picked.len();
                Some((peer, batch.encode(&header, &picked), n))
            })
            .collect();
        let sets = targets
            .sets
            .into_iter()
            .map(|set| {
                let idx = set
                    .iter()
                    .filter_map(|m| slots.iter().position(|s| s == m))
                    .collect();
                (idx, needed)
            })
            .collect();
        Outgoing {
            inner: Arc::clone(&self.inner),
            batch_seq,
            sends,
            sets,
            done: false,
        }
    }

    /// Counts a batch refused for missing copies.
    pub fn count_refused(&self, spans: usize) {
        let m = &self.inner.metrics;
        m.refused_batches.inc();
        m.refused_spans.inc_by(spans as u64);
    }

    /// Tells every peer, every heartbeat, how far this collector's batches
    /// are stored; marks peers up or down; updates the gauges. Runs until
    /// `stop`.
    pub async fn heartbeat_loop(self, wal: Wal, mut stop: watch::Receiver<bool>) {
        let mut tick = tokio::time::interval(self.inner.config.heartbeat);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut was_degraded = false;
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = stop.wait_for(|s| *s) => return,
            }
            let below = self.inner.releases.lock().watermark(wal.checkpoint());
            self.inner.released_below.store(below, Ordering::Relaxed);
            was_degraded = self.publish_gauges(was_degraded);
            self.heartbeat(below).await;
        }
    }

    /// Sends one heartbeat to every peer at once.
    async fn heartbeat(&self, released_below: u64) {
        let members = self.members();
        let peers = self.peers_of(&members);
        self.inner
            .peers
            .write()
            .retain(|name, _| members.is_peer(name));
        let header = Header {
            source: &self.inner.config.me,
            incarnation: self.inner.incarnation,
            batch_seq: 0,
            released_below,
        };
        let body = header.encode(&[]);
        let timeout = self.inner.config.timeout;
        let calls = peers.into_iter().flatten().map(|peer| {
            let body = body.clone();
            async move {
                let result = peer.call(body, timeout).await;
                self.mark(&peer, result.as_ref().err());
            }
        });
        futures_util::future::join_all(calls).await;
    }

    /// Records a call's outcome on the peer's state.
    fn mark(&self, peer: &Peer, error: Option<&String>) {
        let m = &self.inner.metrics;
        let up = m.peer_up.with_label_values(&[&peer.name]);
        m.lag_seconds
            .with_label_values(&[&peer.name])
            .set(peer.lag().as_secs_f64());
        match error {
            None => {
                if peer.down.swap(false, Ordering::Relaxed) {
                    tracing::info!(peer = %peer.name, "replication peer answers again");
                }
                up.set(1);
            }
            Some(e) => {
                if !peer.down.swap(true, Ordering::Relaxed) {
                    tracing::warn!(peer = %peer.name, error = %e, "replication peer does not answer; placing copies on the next peers");
                }
                up.set(0);
            }
        }
    }

    /// Sets the set's gauges; logs when the set becomes too small for the
    /// factor, or big enough again. Returns whether it is degraded.
    pub(super) fn publish_gauges(&self, was_degraded: bool) -> bool {
        let members = self.members();
        let copies = self.inner.config.copies;
        let size = members.size();
        let m = &self.inner.metrics;
        m.members.set(size as i64);
        m.factor.set(copies.factor(size) as i64);
        m.required_copies.set(copies.required(size) as i64);
        let degraded = copies.degraded(size);
        m.degraded.set(i64::from(degraded));
        if degraded && !was_degraded {
            tracing::warn!(
                members = size,
                factor = copies.configured,
                "fewer collectors than the replication factor: each span gets only as many copies as there are collectors"
            );
        } else if was_degraded && !degraded {
            tracing::info!(
                members = size,
                factor = copies.configured,
                "the collector set is big enough for the replication factor again"
            );
        }
        degraded
    }
}

impl Outgoing {
    /// Sends the copies; `Ok` once every trace has the copies it needs.
    pub async fn send(&mut self) -> Result<(), CopiesMissing> {
        let timeout = self.inner.config.timeout;
        let mut calls: FuturesUnordered<_> = self
            .sends
            .iter()
            .enumerate()
            .map(|(slot, (peer, body, _))| {
                let body = body.clone();
                async move {
                    let started = Instant::now();
                    (slot, peer.call(body, timeout).await, started.elapsed())
                }
            })
            .collect();
        let mut acked = vec![false; self.sends.len()];
        let mut failed = vec![None; self.sends.len()];
        while let Some((slot, result, took)) = calls.next().await {
            self.record(slot, &result, took);
            match result {
                Ok(_) => acked[slot] = true,
                Err(e) => failed[slot] = Some(e),
            }
            if let Some(outcome) = self.outcome(&acked, &failed) {
                return outcome;
            }
        }
        self.outcome(&acked, &failed).unwrap_or(Ok(()))
    }

    /// Every set satisfied: `Ok`; some set can no longer be: the error;
    /// else still waiting.
    fn outcome(
        &self,
        acked: &[bool],
        failed: &[Option<String>],
    ) -> Option<Result<(), CopiesMissing>> {
        let mut all = true;
        for (set, needed) in &self.sets {
            let got = set.iter().filter(|s| acked[**s]).count();
            let lost = set.iter().filter(|s| failed[**s].is_some()).count();
            if set.len() - lost < *needed {
                let why = set
                    .iter()
                    .filter_map(|s| {
                        let e = failed[*s].as_ref()?;
                        Some(format!("{}: {e}", self.sends[*s].0.name))
                    })
                    .collect::<Vec<_>>()
                    .join("; ");
                return Some(Err(CopiesMissing {
                    needed: *needed,
                    got,
                    why,
                }));
            }
            all &= got >= *needed;
        }
        all.then_some(Ok(()))
    }

    fn record(&self, slot: usize, result: &Result<ReplicateResponse, String>, took: Duration) {
        let (peer, body, spans) = &self.sends[slot];
        let m = &self.inner.metrics;
        let ok = result.is_ok();
        m.batches
            .with_label_values(&[peer.name.as_str(), if ok { "ok" } else { "failed" }])
            .inc();
        m.bytes
            .with_label_values(&[&peer.name])
            .inc_by(body.len() as u64);
        if ok {
            m.spans
                .with_label_values(&[&peer.name])
                .inc_by(*spans as u64);
            m.ack_seconds
                .with_label_values(&[&peer.name])
                .observe(took.as_secs_f64());
        }
        let replicator = Replicator {
            inner: Arc::clone(&self.inner),
        };
        replicator.mark(peer, result.as_ref().err());
    }

    /// The batch's WAL record (`None`: the WAL append failed). Once it is
    /// released (stored), the peers may drop their copies.
    pub fn wal_done(mut self, record: Option<u64>) {
        self.done = true;
        let mut r = self.inner.releases.lock();
        match record {
            Some(seq) => {
                r.open.insert(self.batch_seq, Some(seq));
            }
            None => {
                r.open.remove(&self.batch_seq);
            }
        }
    }
}

impl Drop for Outgoing {
    fn drop(&mut self) {
        if !self.done {
            self.inner.releases.lock().open.remove(&self.batch_seq);
        }
    }
}

/// Where a batch's spans are copied: the distinct sets of target peers
/// (member indexes, best first) and, for each span, the index of its set.
#[derive(Debug, Default)]
struct Targets {
    sets: Vec<Vec<usize>>,
    of_span: Vec<usize>,
}

/// The up peers each span's trace is copied to: at most `wanted`, and an
/// error when fewer than `needed` answer.
fn targets(
    members: &Members,
    peers: &[Option<Arc<Peer>>],
    spans: &[Span],
    wanted: usize,
    needed: usize,
) -> Result<Targets, CopiesMissing> {
    let up = |i: &usize| {
        peers[*i]
            .as_ref()
            .is_some_and(|p| !p.down.load(Ordering::Relaxed))
    };
    let mut t = Targets {
        sets: Vec::new(),
        of_span: Vec::with_capacity(spans.len()),
    };
    let mut last: Option<(&[u8], usize)> = None;
    for span in spans {
        let set = match last {
            Some((trace, set)) if trace == span.trace_id.as_slice() => set,
            _ => {
                let set: Vec<usize> = members
                    .peers_for(&span.trace_id)
                    .filter(up)
                    .take(wanted)
                    .collect();
                if set.len() < needed {
                    return Err(CopiesMissing {
                        needed,
                        got: 0,
                        why: format!(
                            "{} of {} peers answer",
                            (0..peers.len()).filter(up).count(),
                            members.size() - 1
                        ),
                    });
                }
                let at = match t.sets.iter().position(|s| *s == set) {
                    Some(at) => at,
                    None => {
                        t.sets.push(set);
                        t.sets.len() - 1
                    }
                };
                last = Some((span.trace_id.as_slice(), at));
                at
            }
        };
        t.of_span.push(set);
    }
    Ok(t)
}

/// The spans of an accepted batch, and the OTLP request they came from.
struct Batch<'a> {
    spans: &'a [Span],
    otlp: Option<&'a Bytes>,
    /// `otlp` decoded, once a peer needs a part of it.
    raw: std::cell::OnceCell<Option<crate::ingest::otlp::RawExport>>,
}

impl Batch<'_> {
    /// A `ReplicateRequest` with the spans at positions `picked`: the OTLP
    /// request as it came when it has them all, a subset of it when it has
    /// some, else the spans encoded.
    fn encode(&self, header: &Header<'_>, picked: &[usize]) -> Bytes {
        let Some(body) = self.otlp else {
            return self.encode_spans(header, picked);
        };
        if picked.len() == self.spans.len() {
            return header.encode_otlp(body);
        }
        let raw = self
            .raw
            .get_or_init(|| crate::ingest::otlp::RawExport::decode_body(body.clone()).ok());
        match raw {
            Some(raw) => {
                let mut keep = vec![false; self.spans.len()];
                for i in picked {
                    keep[*i] = true;
                }
                header.encode_otlp(&raw.subset(&keep))
            }
            None => self.encode_spans(header, picked),
        }
    }

    fn encode_spans(&self, header: &Header<'_>, picked: &[usize]) -> Bytes {
        let spans: Vec<&Span> = picked.iter().map(|i| &self.spans[*i]).collect();
        header.encode(&spans)
    }
}

/// The fields of a `ReplicateRequest` other than its spans.
struct Header<'a> {
    source: &'a str,
    incarnation: u64,
    batch_seq: u64,
    released_below: u64,
}

impl Header<'_> {
    /// A `ReplicateRequest` as prost would encode it, from borrowed spans
    /// (no copy of a span is made), into a buffer of the exact size.
    fn encode(&self, spans: &[&Span]) -> Bytes {
        use prost::Message as _;
        use prost::encoding::{WireType, encode_key, encode_varint, encoded_len_varint};
        let lens: Vec<usize> = spans.iter().map(|s| s.encoded_len()).collect();
        let field = |len: usize| 1 + encoded_len_varint(len as u64) + len;
        let size = field(self.source.len())
            + lens.iter().map(|l| field(*l)).sum::<usize>()
            + 1
            + encoded_len_varint(self.batch_seq)
            + 9
            + 1
            + encoded_len_varint(self.released_below);
        let mut buf = Vec::with_capacity(size);
        encode_key(1, WireType::LengthDelimited, &mut buf);
        encode_varint(self.source.len() as u64, &mut buf);
        buf.extend_from_slice(self.source.as_bytes());
        for (span, len) in spans.iter().zip(lens) {
            encode_key(2, WireType::LengthDelimited, &mut buf);
            encode_varint(len as u64, &mut buf);
            span.encode_raw(&mut buf);
        }
        if self.batch_seq != 0 {
            encode_key(3, WireType::Varint, &mut buf);
            encode_varint(self.batch_seq, &mut buf);
        }
        encode_key(4, WireType::SixtyFourBit, &mut buf);
        buf.extend_from_slice(&self.incarnation.to_le_bytes());
        if self.released_below != 0 {
            encode_key(5, WireType::Varint, &mut buf);
            encode_varint(self.released_below, &mut buf);
        }
        Bytes::from(buf)
    }

    /// A `ReplicateRequest` carrying an OTLP request body (field 6).
    fn encode_otlp(&self, body: &[u8]) -> Bytes {
        use prost::encoding::{WireType, encode_key, encode_varint};
        let mut buf = self.encode(&[]).to_vec();
        buf.reserve(11 + body.len());
        encode_key(6, WireType::LengthDelimited, &mut buf);
        encode_varint(body.len() as u64, &mut buf);
        buf.extend_from_slice(body);
        Bytes::from(buf)
    }
}

#[cfg(test)]
pub(super) fn encode_for_test(
    source: &str,
    incarnation: u64,
    batch_seq: u64,
    released_below: u64,
    spans: &[Span],
) -> Bytes {
    Header {
        source,
        incarnation,
        batch_seq,
        released_below,
    }
    .encode(&spans.iter().collect::<Vec<_>>())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_watermark_waits_for_the_oldest_unstored_batch() {
        let mut r = Releases {
            next: 100,
            first: 100,
            replay_end: 0,
            open: BTreeMap::new(),
        };
        assert_eq!(r.watermark(0), 100, "nothing open: everything below next");
        // Batches 100..103 sent; 100 and 102 in WAL records 5 and 7, 101
        // still being written.
        r.next = 103;
        r.open.extend([(100, Some(5)), (101, None), (102, Some(7))]);
        assert_eq!(r.watermark(5), 100, "record 5 not released");
        assert_eq!(r.watermark(6), 101, "101 is not in the WAL yet");
        r.open.insert(101, Some(6));
        assert_eq!(r.watermark(7), 102);
        assert_eq!(r.watermark(8), 103);
        assert!(r.open.is_empty());
    }

    #[test]
    fn replayed_records_hold_the_watermark_at_the_runs_first_batch() {
        let mut r = Releases {
            next: 500,
            first: 500,
            replay_end: 10,
            open: BTreeMap::new(),
        };
        assert_eq!(r.watermark(9), 500);
        r.next = 502;
        assert_eq!(r.watermark(9), 500, "an earlier run's record is unstored");
        assert_eq!(r.watermark(10), 502);
    }
}
