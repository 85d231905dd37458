//! A trace as stored under its `tr:` key: facts, then span records.

use prost::Message as _;

use super::summary::Summary;
use super::{Result, Span, corrupt};
use crate::filter;

/// The spans of a stored trace (see [`trace_blob`]).
pub(super) fn decode_spans(blob: &[u8]) -> Result<Vec<Span>> {
    if blob.is_empty() {
        return Ok(Vec::new());
    }
    let mut blob = blob
        .split_first_chunk::<4>()
        .and_then(|(len, rest)| rest.get(u32::from_be_bytes(*len) as usize..))
        .ok_or_else(|| corrupt("trace facts"))?;
    let mut spans = Vec::new();
    while !blob.is_empty() {
        let body = blob
            .get(8..10)
            .map(|h| 10 + (usize::from(h[0]) << 8 | usize::from(h[1])))
            .and_then(|at| blob.get(at..))
            .and_then(|rest| rest.split_first_chunk::<4>())
            .ok_or_else(|| corrupt("span record too short"))?;
        let (len, rest) = body;
        let len = u32::from_be_bytes(*len) as usize;
        let body = rest
            .get(..len)
            .ok_or_else(|| corrupt("span record length"))?;
        spans.push(Span::decode(body).map_err(|e| corrupt(format!("span: {e}")))?);
        blob = &rest[len..];
    }
    Ok(spans)
}

/// A fragment as stored: its facts, length-prefixed (4 bytes, big-endian),
/// then its spans, a record each: span id (8 bytes), header length (2
/// bytes, big-endian), header (see [`write_header`]), protobuf length (4
/// bytes, big-endian), protobuf `Span`. A fact is its kind ([`FACT_MAX`] or
/// [`FACT_MIN`]), service name length (2 bytes, big-endian), service name
/// and the duration in 20 decimal digits.
pub(super) fn trace_blob(summary: &Summary<'_>, spans: &[Span]) -> Vec<u8> {
    use std::io::Write as _;
    let lens: Vec<usize> = spans.iter().map(|s| s.encoded_len()).collect();
    let size = spans
        .iter()
        .zip(&lens)
        .map(|(s, n)| 8 + 2 + 29 + s.service.len() + 4 + n)
        .sum::<usize>()
        + 4
        + 23 * (1 + 2 * summary.services.len());
    let mut blob = Vec::with_capacity(size);
    blob.extend_from_slice(&[0; 4]);
    for (kind, svc, duration) in summary.facts() {
        // Service names are cut to what the 16-bit length carries.
        let svc = &svc.as_bytes()[..svc.len().min(u16::MAX as usize)];
        blob.push(kind);
        blob.extend_from_slice(&(svc.len() as u16).to_be_bytes());
        blob.extend_from_slice(svc);
        let _ = write!(blob, "{duration:020}");
    }
    let facts = (blob.len() - 4) as u32;
    blob[..4].copy_from_slice(&facts.to_be_bytes());
    for (span, len) in spans.iter().zip(lens) {
        blob.extend_from_slice(&filter::span_id(span));
        let at = blob.len();
        blob.extend_from_slice(&[0, 0]);
        write_header(&mut blob, span);
        let header = (blob.len() - at - 2) as u16;
        blob[at..at + 2].copy_from_slice(&header.to_be_bytes());
        blob.extend_from_slice(&(len as u32).to_be_bytes());
        span.encode_raw(&mut blob);
    }
    blob
}

/// Appends a span's header: what the store script reads to find calls.
/// Error flag (`0`/`1`), parent id (8 bytes, zero for a root), start (20
/// decimal digits), service (cut to what a 16-bit header length carries).
fn write_header(out: &mut Vec<u8>, span: &Span) {
    use std::io::Write as _;
    out.push(if filter::is_error(span) { b'1' } else { b'0' });
    out.extend_from_slice(&filter::parent_id(span).unwrap_or([0; 8]));
    let _ = write!(out, "{:020}", span.start_time_unix_nano);
    let svc = span.service.as_bytes();
    out.extend_from_slice(&svc[..svc.len().min(u16::MAX as usize - 29)]);
}
