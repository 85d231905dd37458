//! Block format version 1: one row per span (docs/COLD-FORMAT.md).
//!
//! The columns that searches filter on are real columns; the nested parts
//! of a span (attributes, resource, events, links, vector clocks) are
//! OTLP/JSON text, so every value comes back with its type.

use std::sync::{Arc, LazyLock};

use arrow_array::builder::{FixedSizeBinaryBuilder, Int32Builder, StringBuilder, UInt64Builder};
use arrow_array::cast::AsArray as _;
use arrow_array::types::{Int32Type, UInt64Type};
use arrow_array::{Array, ArrayRef, RecordBatch};
use arrow_schema::{DataType, Field, Schema, SchemaRef};
use clew_proto::v1::{Span, Status};

use crate::ColdError;
use crate::json;

/// The version written in every block's metadata and Parquet key-value
/// metadata.
pub const FORMAT_VERSION: u32 = 1;

/// Column names, in schema order.
pub mod col {
    pub const TRACE_ID: &str = "trace_id";
    pub const SPAN_ID: &str = "span_id";
    pub const PARENT_SPAN_ID: &str = "parent_span_id";
    pub const SERVICE: &str = "service";
    pub const NAME: &str = "name";
    pub const KIND: &str = "kind";
    pub const START: &str = "start_unix_nano";
    pub const END: &str = "end_unix_nano";
    pub const DURATION: &str = "duration_nano";
    pub const STATUS_CODE: &str = "status_code";
    pub const STATUS_MESSAGE: &str = "status_message";
    pub const TRACE_STATE: &str = "trace_state";
    pub const NODE: &str = "node";
    pub const ATTRIBUTES: &str = "attributes";
    pub const RESOURCE: &str = "resource";
    pub const EVENTS: &str = "events";
    pub const LINKS: &str = "links";
    pub const CLOCK_START: &str = "clock_start";
    pub const CLOCK_END: &str = "clock_end";
}

static SCHEMA: LazyLock<SchemaRef> = LazyLock::new(|| {
    use DataType::{FixedSizeBinary, Int32, UInt64, Utf8};
    let f = |name, ty, nullable| Field::new(name, ty, nullable);
    Arc::new(Schema::new(vec![
        f(col::TRACE_ID, FixedSizeBinary(16), false),
        f(col::SPAN_ID, FixedSizeBinary(8), false),
        f(col::PARENT_SPAN_ID, FixedSizeBinary(8), true),
        f(col::SERVICE, Utf8, false),
        f(col::NAME, Utf8, false),
        f(col::KIND, Int32, false),
        f(col::START, UInt64, false),
        f(col::END, UInt64, false),
        f(col::DURATION, UInt64, false),
        f(col::STATUS_CODE, Int32, true),
        f(col::STATUS_MESSAGE, Utf8, true),
        f(col::TRACE_STATE, Utf8, false),
        f(col::NODE, Utf8, false),
        f(col::ATTRIBUTES, Utf8, false),
        f(col::RESOURCE, Utf8, false),
        f(col::EVENTS, Utf8, false),
        f(col::LINKS, Utf8, false),
        f(col::CLOCK_START, Utf8, true),
        f(col::CLOCK_END, Utf8, true),
    ]))
});

/// The Arrow schema of a block.
pub fn schema() -> SchemaRef {
    Arc::clone(&SCHEMA)
}

/// The position of columns in the schema (and in a block's Parquet
/// schema, which is flat), for projections and row-group statistics.
pub fn indices<const N: usize>(names: [&str; N]) -> [usize; N] {
    names.map(|n| SCHEMA.index_of(n).unwrap_or(usize::MAX))
}

/// Builders for one record batch.
struct Builders {
    trace_id: FixedSizeBinaryBuilder,
    span_id: FixedSizeBinaryBuilder,
    parent: FixedSizeBinaryBuilder,
    service: StringBuilder,
    name: StringBuilder,
    kind: Int32Builder,
    start: UInt64Builder,
    end: UInt64Builder,
    duration: UInt64Builder,
    status_code: Int32Builder,
    status_message: StringBuilder,
    trace_state: StringBuilder,
    node: StringBuilder,
    attributes: StringBuilder,
    resource: StringBuilder,
    events: StringBuilder,
    links: StringBuilder,
    clock_start: StringBuilder,
    clock_end: StringBuilder,
}

impl Builders {
    fn new(n: usize) -> Self {
        let s = || StringBuilder::with_capacity(n, n * 8);
        Builders {
            trace_id: FixedSizeBinaryBuilder::with_capacity(n, 16),
            span_id: FixedSizeBinaryBuilder::with_capacity(n, 8),
            parent: FixedSizeBinaryBuilder::with_capacity(n, 8),
            service: s(),
            name: s(),
            kind: Int32Builder::with_capacity(n),
            start: UInt64Builder::with_capacity(n),
            end: UInt64Builder::with_capacity(n),
            duration: UInt64Builder::with_capacity(n),
            status_code: Int32Builder::with_capacity(n),
            status_message: s(),
            trace_state: s(),
            node: s(),
            attributes: s(),
            resource: s(),
            events: s(),
            links: s(),
            clock_start: s(),
            clock_end: s(),
        }
    }

    fn push(&mut self, span: &Span) -> Result<(), ColdError> {
        let invalid = |what: &str| ColdError::InvalidSpan(what.to_owned());
        self.trace_id
            .append_value(&span.trace_id)
            .map_err(|_| invalid("trace id is not 16 bytes"))?;
        self.span_id
            .append_value(&span.span_id)
            .map_err(|_| invalid("span id is not 8 bytes"))?;
        if span.parent_span_id.is_empty() {
            self.parent.append_null();
        } else {
            self.parent
                .append_value(&span.parent_span_id)
                .map_err(|_| invalid("parent span id is not 8 bytes"))?;
        }
        self.service.append_value(&span.service);
        self.name.append_value(&span.name);
        self.kind.append_value(span.kind);
        self.start.append_value(span.start_time_unix_nano);
        self.end.append_value(span.end_time_unix_nano);
        self.duration.append_value(
            span.end_time_unix_nano
                .saturating_sub(span.start_time_unix_nano),
        );
        self.status_code
            .append_option(span.status.as_ref().map(|s| s.code));
        self.status_message
            .append_option(span.status.as_ref().map(|s| s.message.as_str()));
        self.trace_state.append_value(&span.trace_state);
        self.node.append_value(&span.node);
        self.attributes
            .append_value(json::key_values(&span.attributes).to_string());
        self.resource
            .append_value(json::key_values(&span.resource).to_string());
        self.events
            .append_value(json::events(&span.events).to_string());
        self.links
            .append_value(json::links(&span.links).to_string());
        let clock = |c| match json::clock(c) {
            serde_json::Value::Null => None,
            v => Some(v.to_string()),
        };
        self.clock_start
            .append_option(clock(span.clock_start.as_ref()));
        self.clock_end.append_option(clock(span.clock_end.as_ref()));
        Ok(())
    }

    fn finish(mut self) -> Result<RecordBatch, ColdError> {
        let columns: Vec<ArrayRef> = vec![
            Arc::new(self.trace_id.finish()),
            Arc::new(self.span_id.finish()),
            Arc::new(self.parent.finish()),
            Arc::new(self.service.finish()),
            Arc::new(self.name.finish()),
            Arc::new(self.kind.finish()),
            Arc::new(self.start.finish()),
            Arc::new(self.end.finish()),
            Arc::new(self.duration.finish()),
            Arc::new(self.status_code.finish()),
            Arc::new(self.status_message.finish()),
            Arc::new(self.trace_state.finish()),
            Arc::new(self.node.finish()),
            Arc::new(self.attributes.finish()),
            Arc::new(self.resource.finish()),
            Arc::new(self.events.finish()),
            Arc::new(self.links.finish()),
            Arc::new(self.clock_start.finish()),
            Arc::new(self.clock_end.finish()),
        ];
        RecordBatch::try_new(schema(), columns).map_err(|e| ColdError::Encode(e.to_string()))
    }
}

/// The spans as one record batch, in the order given.
pub fn to_batch<'a>(
    spans: impl ExactSizeIterator<Item = &'a Span>,
) -> Result<RecordBatch, ColdError> {
    let mut b = Builders::new(spans.len());
    for span in spans {
        b.push(span)?;
    }
    b.finish()
}

/// Typed access to the columns of a batch read from a block; a column
/// that is missing or of another type is a corrupt block, never a panic.
#[derive(Debug)]
pub struct Columns<'a> {
    batch: &'a RecordBatch,
}

impl<'a> Columns<'a> {
    /// Views `batch`.
    pub fn new(batch: &'a RecordBatch) -> Self {
        Columns { batch }
    }

    fn column(&self, name: &str) -> Result<&'a ArrayRef, ColdError> {
        self.batch
            .column_by_name(name)
            .ok_or_else(|| ColdError::Corrupt(format!("no column {name}")))
    }

    fn mistyped(name: &str) -> ColdError {
        ColdError::Corrupt(format!("column {name} has another type"))
    }

    /// A fixed-size binary column.
    pub fn binary(&self, name: &str) -> Result<&'a arrow_array::FixedSizeBinaryArray, ColdError> {
        self.column(name)?
            .as_fixed_size_binary_opt()
            .ok_or_else(|| Self::mistyped(name))
    }

    /// A string column.
    pub fn string(&self, name: &str) -> Result<&'a arrow_array::StringArray, ColdError> {
        self.column(name)?
            .as_string_opt::<i32>()
            .ok_or_else(|| Self::mistyped(name))
    }

    /// A `u64` column.
    pub fn u64(&self, name: &str) -> Result<&'a arrow_array::UInt64Array, ColdError> {
        self.column(name)?
            .as_primitive_opt::<UInt64Type>()
            .ok_or_else(|| Self::mistyped(name))
    }

    /// An `i32` column.
    pub fn i32(&self, name: &str) -> Result<&'a arrow_array::Int32Array, ColdError> {
        self.column(name)?
            .as_primitive_opt::<Int32Type>()
            .ok_or_else(|| Self::mistyped(name))
    }
}

/// Decodes every row of a batch holding all the columns.
pub fn from_batch(batch: &RecordBatch) -> Result<Vec<Span>, ColdError> {
    let c = Columns::new(batch);
    let (trace, span, parent) = (
        c.binary(col::TRACE_ID)?,
        c.binary(col::SPAN_ID)?,
        c.binary(col::PARENT_SPAN_ID)?,
    );
    let (service, name, kind) = (
        c.string(col::SERVICE)?,
        c.string(col::NAME)?,
        c.i32(col::KIND)?,
    );
    let (start, end) = (c.u64(col::START)?, c.u64(col::END)?);
    let (code, message) = (c.i32(col::STATUS_CODE)?, c.string(col::STATUS_MESSAGE)?);
    let (trace_state, node) = (c.string(col::TRACE_STATE)?, c.string(col::NODE)?);
    let nested = Nested::new(&c)?;
    (0..batch.num_rows())
        .map(|i| {
            let mut s = nested.span(i)?;
            s.trace_id = trace.value(i).to_vec();
            s.span_id = span.value(i).to_vec();
            s.parent_span_id = if parent.is_null(i) {
                Vec::new()
            } else {
                parent.value(i).to_vec()
            };
            s.service = service.value(i).to_owned();
            s.name = name.value(i).to_owned();
            s.kind = kind.value(i);
            s.start_time_unix_nano = start.value(i);
            s.end_time_unix_nano = end.value(i);
            s.status = (!code.is_null(i)).then(|| Status {
                code: code.value(i),
                message: message.value(i).to_owned(),
            });
            s.trace_state = trace_state.value(i).to_owned();
            s.node = node.value(i).to_owned();
            Ok(s)
        })
        .collect()
}

/// The JSON columns of a batch.
struct Nested<'a> {
    attributes: &'a arrow_array::StringArray,
    resource: &'a arrow_array::StringArray,
    events: &'a arrow_array::StringArray,
    links: &'a arrow_array::StringArray,
    clock_start: &'a arrow_array::StringArray,
    clock_end: &'a arrow_array::StringArray,
}

impl<'a> Nested<'a> {
    fn new(c: &Columns<'a>) -> Result<Self, ColdError> {
        Ok(Nested {
            attributes: c.string(col::ATTRIBUTES)?,
            resource: c.string(col::RESOURCE)?,
            events: c.string(col::EVENTS)?,
            links: c.string(col::LINKS)?,
            clock_start: c.string(col::CLOCK_START)?,
            clock_end: c.string(col::CLOCK_END)?,
        })
    }

    /// A span holding row `i`'s nested parts.
    fn span(&self, i: usize) -> Result<Span, ColdError> {
        let parse = |col: &str, text: &str| {
            serde_json::from_str::<serde_json::Value>(text)
                .map_err(|e| ColdError::Corrupt(format!("column {col}: {e}")))
        };
        let nested =
            |col: &str, e: json::JsonError| ColdError::Corrupt(format!("column {col}: {e}"));
        let clock = |col: &str, a: &arrow_array::StringArray| {
            if a.is_null(i) {
                return Ok(None);
            }
            json::parse_clock(&parse(col, a.value(i))?).map_err(|e| nested(col, e))
        };
        Ok(Span {
            attributes: json::parse_key_values(&parse(col::ATTRIBUTES, self.attributes.value(i))?)
                .map_err(|e| nested(col::ATTRIBUTES, e))?,
            resource: json::parse_key_values(&parse(col::RESOURCE, self.resource.value(i))?)
                .map_err(|e| nested(col::RESOURCE, e))?,
            events: json::parse_events(&parse(col::EVENTS, self.events.value(i))?)
                .map_err(|e| nested(col::EVENTS, e))?,
            links: json::parse_links(&parse(col::LINKS, self.links.value(i))?)
                .map_err(|e| nested(col::LINKS, e))?,
            clock_start: clock(col::CLOCK_START, self.clock_start)?,
            clock_end: clock(col::CLOCK_END, self.clock_end)?,
            ..Span::default()
        })
    }
}
