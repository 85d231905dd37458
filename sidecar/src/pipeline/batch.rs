//! Requests within a collector's limits: chunking what an application sent,
//! coalescing queued records into one request, and halving a request a
//! collector refused.
//!
//! A collector refuses a request of more than its `--max-spans-per-batch`
//! spans or `--max-request-bytes` bytes as a whole. The sidecar therefore
//! cuts every routed part into records of at most
//! [`Limits::max_spans`] spans and [`Limits::max_bytes`] bytes when it
//! accepts them, coalesces records only while the sum stays under both
//! limits, and answers a refusal of a request by sending its halves.

use bytes::{Bytes, BytesMut};
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans};
use prost::Message as _;

/// Size limits of one request to a collector.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Most spans in one request.
    pub max_spans: usize,
    /// Most encoded bytes in one request (a single span larger than this
    /// is sent alone).
    pub max_bytes: usize,
}

/// Cuts `req` into requests of at most `limits` (each span kept under its
/// resource and scope), encoded, with their span counts. A request within
/// the limits is encoded as it is.
pub fn chunk(req: ExportTraceServiceRequest, limits: Limits) -> Vec<(Bytes, usize)> {
    let spans = crate::routing::span_count(&req);
    if spans <= limits.max_spans {
        let body = req.encode_to_vec();
        if body.len() <= limits.max_bytes || spans <= 1 {
            return vec![(Bytes::from(body), spans)];
        }
    }
    split_request(req, limits)
        .into_iter()
        .map(|r| {
            let n = crate::routing::span_count(&r);
            (Bytes::from(r.encode_to_vec()), n)
        })
        .collect()
}

/// Where a chunk being built stands.
#[derive(Default)]
struct Chunker {
    out: Vec<ExportTraceServiceRequest>,
    cur: ExportTraceServiceRequest,
    spans: usize,
    bytes: usize,
    /// The current chunk's last resource / scope group is the one being read.
    open_resource: bool,
    open_scope: bool,
}

impl Chunker {
    fn flush(&mut self) {
        if self.spans > 0 {
            self.out.push(std::mem::take(&mut self.cur));
        }
        self.spans = 0;
        self.bytes = 0;
        self.open_resource = false;
        self.open_scope = false;
    }
}

/// Splits `req` into requests within `limits` by an estimate of each
/// span's encoded size.
pub fn split_request(
    req: ExportTraceServiceRequest,
    limits: Limits,
) -> Vec<ExportTraceServiceRequest> {
    let max_spans = limits.max_spans.max(1);
    let mut c = Chunker::default();
    for rs in req.resource_spans {
        let ResourceSpans {
            resource,
            scope_spans,
            schema_url,
        } = rs;
        let rs_overhead = resource.as_ref().map_or(0, |r| r.encoded_len()) + schema_url.len() + 8;
        c.open_resource = false;
        for ss in scope_spans {
            let ScopeSpans {
                scope,
                spans,
                schema_url: scope_schema,
            } = ss;
            let ss_overhead =
                scope.as_ref().map_or(0, |s| s.encoded_len()) + scope_schema.len() + 8;
            c.open_scope = false;
            for span in spans {
                let len = span.encoded_len() + 6;
                let extra = |c: &Chunker| {
                    len + if c.open_resource { 0 } else { rs_overhead }
                        + if c.open_scope { 0 } else { ss_overhead }
                };
                if c.spans > 0 && (c.spans >= max_spans || c.bytes + extra(&c) > limits.max_bytes) {
                    c.flush();
                }
                c.bytes += extra(&c);
                if !c.open_resource {
                    c.cur.resource_spans.push(ResourceSpans {
                        resource: resource.clone(),
                        scope_spans: Vec::new(),
                        schema_url: schema_url.clone(),
                    });
                    c.open_resource = true;
                }
                let Some(last_rs) = c.cur.resource_spans.last_mut() else {
                    continue;
                };
                if !c.open_scope {
                    last_rs.scope_spans.push(ScopeSpans {
                        scope: scope.clone(),
                        spans: Vec::new(),
                        schema_url: scope_schema.clone(),
                    });
                    c.open_scope = true;
                }
                if let Some(last_ss) = last_rs.scope_spans.last_mut() {
                    last_ss.spans.push(span);
                    c.spans += 1;
                }
            }
        }
    }
    c.flush();
    c.out
}

/// One request to send: concatenated encoded records (protobuf merges
/// concatenated messages, so the body is the request of all their spans)
/// and where each record ends.
#[derive(Debug, Clone)]
pub struct Batch {
    /// The encoded request.
    pub body: Bytes,
    /// Spans in it.
    pub spans: usize,
    /// (end offset in `body`, spans) of each record, in order.
    pub records: Vec<(usize, usize)>,
}

impl Batch {
    /// A batch of one record.
    pub fn one(body: Bytes, spans: usize) -> Self {
        let end = body.len();
        Batch {
            body,
            spans,
            records: vec![(end, spans)],
        }
    }

    /// The two halves of a refused batch: by records when it has several,
    /// else by spans (decoding the record). `None` for a single span or a
    /// body that does not decode: nothing smaller can be sent.
    pub fn halves(&self) -> Option<(Batch, Batch)> {
        if self.records.len() > 1 {
            let mid = self.records.len() / 2;
            let cut = self.records[mid - 1].0;
            let first = Batch {
                body: self.body.slice(..cut),
                spans: self.records[..mid].iter().map(|r| r.1).sum(),
                records: self.records[..mid].to_vec(),
            };
            let second = Batch {
                body: self.body.slice(cut..),
                spans: self.records[mid..].iter().map(|r| r.1).sum(),
                records: self.records[mid..]
                    .iter()
                    .map(|&(end, n)| (end - cut, n))
                    .collect(),
            };
            return Some((first, second));
        }
        if self.spans <= 1 {
            return None;
        }
        let req = ExportTraceServiceRequest::decode(self.body.clone()).ok()?;
        let limits = Limits {
            max_spans: self.spans.div_ceil(2),
            max_bytes: usize::MAX,
        };
        let mut parts = split_request(req, limits).into_iter();
        let (a, b) = (parts.next()?, parts.next()?);
        let encode = |r: ExportTraceServiceRequest| {
            let n = crate::routing::span_count(&r);
            Batch::one(Bytes::from(r.encode_to_vec()), n)
        };
        Some((encode(a), encode(b)))
    }
}

/// Builds a [`Batch`] from records while it stays within [`Limits`].
#[derive(Debug)]
pub struct Coalescer {
    limits: Limits,
    parts: Vec<Bytes>,
    bytes: usize,
    spans: usize,
    records: Vec<(usize, usize)>,
}

impl Coalescer {
    /// An empty batch under `limits`.
    pub fn new(limits: Limits) -> Self {
        Coalescer {
            limits,
            parts: Vec::new(),
            bytes: 0,
            spans: 0,
            records: Vec::new(),
        }
    }

    /// Whether a record of `len` bytes and `spans` spans still fits (the
    /// first record always does).
    pub fn fits(&self, len: usize, spans: usize) -> bool {
        self.records.is_empty()
            || (self.spans + spans <= self.limits.max_spans
                && self.bytes + len <= self.limits.max_bytes)
    }

    /// Adds a record.
    pub fn push(&mut self, body: Bytes, spans: usize) {
        self.bytes += body.len();
        self.spans += spans;
        self.records.push((self.bytes, spans));
        self.parts.push(body);
    }

    /// True when nothing was added.
    pub fn is_empty(&self) -> bool {
        self.records.is_empty()
    }

    /// The batch (one copy of the bytes when there are several records).
    pub fn finish(self) -> Batch {
        let body = if self.parts.len() == 1 {
            self.parts.into_iter().next().unwrap_or_default()
        } else {
            let mut b = BytesMut::with_capacity(self.bytes);
            for p in &self.parts {
                b.extend_from_slice(p);
            }
            b.freeze()
        };
        Batch {
            body,
            spans: self.spans,
            records: self.records,
        }
    }
}

/// The limit a collector's refusal names ("... more than the limit of
/// N"), if it names one.
pub fn limit_in_refusal(message: &str) -> Option<usize> {
    let rest = message.split("more than the limit of ").nth(1)?;
    let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
    digits.parse().ok().filter(|&n| n > 0)
}

#[cfg(test)]
mod tests;
