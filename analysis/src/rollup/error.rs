//! Why a roll-up blob cannot be read, or an operation does not fit.

/// A roll-up blob that does not decode, or buckets that do not fit
/// together. Decoding never panics: every malformed input is one of these,
/// naming the field and the byte offset where reading stopped.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RollupError {
    /// The blob does not start with the expected tag byte: not a blob of
    /// this type.
    #[error("not a clew {expected} blob (first byte {found:#04x})")]
    BadTag {
        /// What was being decoded (`sketch` or `bucket`).
        expected: &'static str,
        /// The first byte found (0 for an empty input).
        found: u8,
    },
    /// A format version this build does not read.
    #[error("{what} format version {found} is not supported (this build reads {supported})")]
    UnsupportedVersion {
        /// What was being decoded.
        what: &'static str,
        /// The version in the blob.
        found: u8,
        /// The version this build reads.
        supported: u8,
    },
    /// The input ends inside a field.
    #[error("truncated at byte {at}: `{field}` needs more bytes")]
    Truncated {
        /// Offset where the field started.
        at: usize,
        /// The field being read.
        field: &'static str,
    },
    /// A varint longer than 19 bytes, larger than its field's type, or
    /// not in its shortest form.
    #[error("bad varint at byte {at} in `{field}`: too long, out of range or not minimal")]
    BadVarint {
        /// Offset where the varint started.
        at: usize,
        /// The field being read.
        field: &'static str,
    },
    /// A field that decodes but breaks the format's rules.
    #[error("invalid `{field}` at byte {at}: {reason}")]
    Invalid {
        /// Offset just after the field.
        at: usize,
        /// The field.
        field: &'static str,
        /// Which rule it breaks.
        reason: &'static str,
    },
    /// Bytes left after a complete blob.
    #[error("{extra} unexpected bytes after the end of the blob at byte {at}")]
    TrailingBytes {
        /// Where the blob ended.
        at: usize,
        /// How many bytes follow it.
        extra: usize,
    },
    /// A bucket width of 0, or a start not a multiple of the width.
    #[error(
        "bucket [{start_unix_nanos}, +{width_nanos}) is not aligned: the width must be > 0 and divide the start"
    )]
    Unaligned {
        /// The bucket's start, Unix nanoseconds.
        start_unix_nanos: u64,
        /// Its width, nanoseconds.
        width_nanos: u64,
    },
    /// A bucket merged into one whose time range does not contain it.
    #[error(
        "bucket [{inner_start}, +{inner_width}) does not fit inside [{outer_start}, +{outer_width})"
    )]
    NotContained {
        /// The start of the bucket being merged in.
        inner_start: u64,
        /// Its width.
        inner_width: u64,
        /// The start of the bucket merged into.
        outer_start: u64,
        /// Its width.
        outer_width: u64,
    },
}
