//! Fuzzes the W3C `traceparent`, `tracestate` and `baggage` parsers and the
//! `clew-vclock` decoder: none may panic, and whatever parses must survive a
//! format → parse round trip.

#![no_main]

use clew_tracer::propagation::baggage::{Baggage, MAX_BYTES, MAX_MEMBERS};
use clew_tracer::propagation::w3c::{
    format_traceparent, format_tracestate, parse_traceparent, parse_tracestate,
};
use clew_tracer::clock::{MAX_ENTRIES, VectorClock};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // Header field values are split on NUL so one input can carry several
    // values of the same header; bytes that are not UTF-8 are replaced.
    let text = String::from_utf8_lossy(data);
    let values: Vec<&str> = text.split('\0').collect();

    for v in &values {
        if let Ok((trace_id, span_id, flags)) = parse_traceparent(v) {
            let header = format_traceparent(trace_id, span_id, flags);
            assert_eq!(header.len(), 55);
            assert_eq!(parse_traceparent(&header), Ok((trace_id, span_id, flags)));
        }
    }

    if let Ok(state) = parse_tracestate(&values) {
        match format_tracestate(&state) {
            Some(header) => assert_eq!(parse_tracestate(&[header]), Ok(state.clone())),
            None => assert!(state.is_empty()),
        }
    }

    if let Ok(baggage) = Baggage::parse(&values) {
        assert!(baggage.len() <= MAX_MEMBERS);
        match baggage.to_header() {
            Some(header) => {
                assert!(header.len() <= MAX_BYTES);
                assert_eq!(Baggage::parse(&[&header]), Ok(baggage));
            }
            None => assert!(baggage.is_empty()),
        }
    }

    if let Ok(clock) = VectorClock::decode(&values.join(",")) {
        assert!(clock.len() <= MAX_ENTRIES);
        assert_eq!(VectorClock::decode(&clock.encode()), Ok(clock));
    }
});
