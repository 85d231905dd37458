//! W3C Baggage: the `baggage` header as an ordered list of entries.
//!
//! Choices the spec leaves open, made here:
//!
//! * Syntax is strict: one malformed list-member rejects the whole header
//!   (the caller drops it and counts it). Empty or whitespace-only
//!   list-members are skipped, as RFC 7230 asks of list headers, so empty
//!   header fields can be combined.
//! * A `%` not followed by two hex digits is malformed. Escapes that do not
//!   decode to UTF-8 become U+FFFD, as the spec requires.
//! * Limits: the spec's minimums, [`MAX_MEMBERS`] list-members and
//!   [`MAX_BYTES`] bytes of header value. Beyond them entries are dropped
//!   whole (the spec allows dropping in any order), never rejected: parsing
//!   and [`Baggage::to_header`] keep each entry, in order, that still fits,
//!   measured as it would be re-encoded.
//! * Keys are case-sensitive. A repeated key keeps its first position and
//!   takes the last value, which the spec allows as deduplication.
//! * Properties (after the first `;`) are checked against the grammar and
//!   kept verbatim, minus surrounding whitespace; they are not decoded.

use std::borrow::Cow;
use std::collections::HashMap;
use std::collections::hash_map::Entry;

use percent_encoding::{AsciiSet, CONTROLS, percent_decode_str, utf8_percent_encode};

use super::w3c::is_ows;

/// Most list-members propagated.
pub const MAX_MEMBERS: usize = 64;

/// Most bytes of `baggage` header value propagated.
pub const MAX_BYTES: usize = 8192;

/// Everything outside `baggage-octet`, plus `%`, which must be escaped.
/// `CONTROLS` covers 0x00–0x1F and 0x7F; non-ASCII is always escaped.
const VALUE_ESCAPES: &AsciiSet = &CONTROLS
    .add(b' ')
    .add(b'"')
    .add(b',')
    .add(b';')
    .add(b'\\')
    .add(b'%');

/// Why a `baggage` header or entry was rejected. `member` counts non-empty
/// list-members from 0 across all combined header values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum BaggageError {
    /// A list-member without `=`.
    #[error("baggage: list-member {member} has no '='")]
    MissingEquals {
        /// Index of the offending list-member.
        member: usize,
    },
    /// A key that is not an RFC 7230 token.
    #[error("baggage: list-member {member} has a bad key")]
    InvalidKey {
        /// Index of the offending list-member.
        member: usize,
    },
    /// A value with a character outside `baggage-octet`.
    #[error("baggage: list-member {member} has a bad value")]
    InvalidValue {
        /// Index of the offending list-member.
        member: usize,
    },
    /// A `%` not followed by two hex digits.
    #[error("baggage: list-member {member} has bad percent-encoding")]
    InvalidPercentEncoding {
        /// Index of the offending list-member.
        member: usize,
    },
    /// Properties that do not follow `key [= value]` separated by `;`.
    #[error("baggage: list-member {member} has bad properties")]
    InvalidProperties {
        /// Index of the offending list-member.
        member: usize,
    },
    /// A key given to [`Baggage::insert`] that is not an RFC 7230 token.
    #[error("baggage: key is not a token")]
    InvalidEntryKey,
    /// Properties given to [`Baggage::insert_with_properties`] that do not
    /// follow the grammar.
    #[error("baggage: bad properties")]
    InvalidEntryProperties,
}

/// One baggage list-member: key, decoded value and raw properties.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BaggageEntry {
    key: String,
    value: String,
    properties: Option<String>,
}

impl BaggageEntry {
    /// The key, an RFC 7230 token.
    pub fn key(&self) -> &str {
        &self.key
    }

    /// The decoded value.
    pub fn value(&self) -> &str {
        &self.value
    }

    /// The properties after `;`, verbatim (e.g. `k1=v1;k2`), if any.
    pub fn properties(&self) -> Option<&str> {
        self.properties.as_deref()
    }

    /// Bytes this entry takes in a header, once encoded.
    fn encoded_len(&self) -> usize {
        let value: usize = utf8_percent_encode(&self.value, VALUE_ESCAPES)
            .map(str::len)
            .sum();
        self.key.len() + 1 + value + self.properties.as_ref().map_or(0, |p| 1 + p.len())
    }

    fn write(&self, out: &mut String) {
        out.push_str(&self.key);
        out.push('=');
        out.extend(utf8_percent_encode(&self.value, VALUE_ESCAPES));
        if let Some(p) = &self.properties {
            out.push(';');
            out.push_str(p);
        }
    }
}

/// W3C baggage: ordered entries with unique keys.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Baggage {
    entries: Vec<BaggageEntry>,
}

impl Baggage {
    /// Empty baggage.
    pub fn new() -> Self {
        Self::default()
    }

    /// Parses one or more `baggage` header field values, combined as if
    /// joined with `,`.
    ///
    /// Any malformed list-member rejects the whole header. Entries beyond
    /// [`MAX_MEMBERS`] or [`MAX_BYTES`] are dropped.
    pub fn parse(values: &[&str]) -> Result<Baggage, BaggageError> {
        let mut entries: Vec<BaggageEntry> = Vec::new();
        // Key → position, so a header with many members stays linear.
        let mut positions: HashMap<&str, usize> = HashMap::new();
        let mut member = 0;
        for raw in values.iter().flat_map(|v| v.split(',')) {
            let raw = raw.trim_matches(is_ows);
            if raw.is_empty() {
                continue;
            }
            let (key, entry) = parse_member(raw, member)?;
            match positions.entry(key) {
                Entry::Occupied(pos) => {
                    if let Some(slot) = entries.get_mut(*pos.get()) {
                        *slot = entry;
                    }
                }
                Entry::Vacant(pos) => {
                    pos.insert(entries.len());
                    entries.push(entry);
                }
            }
            member += 1;
        }
        Ok(Baggage { entries }.within_limits())
    }

    /// Sets `key` to `value`, keeping the key's position if present and its
    /// properties cleared. Returns the previous value.
    pub fn insert(
        &mut self,
        key: impl Into<String>,
        value: impl Into<String>,
    ) -> Result<Option<String>, BaggageError> {
        self.insert_with_properties(key, value, None)
    }

    /// Sets `key` to `value` with raw `properties` (the text after `;`, e.g.
    /// `k1=v1;k2`), keeping the key's position if present. Returns the
    /// previous value.
    pub fn insert_with_properties(
        &mut self,
        key: impl Into<String>,
        value: impl Into<String>,
        properties: Option<String>,
    ) -> Result<Option<String>, BaggageError> {
        let key = key.into();
        if !is_token(&key) {
            return Err(BaggageError::InvalidEntryKey);
        }
        if properties
            .as_deref()
            .is_some_and(|p| !is_valid_properties(p))
        {
            return Err(BaggageError::InvalidEntryProperties);
        }
        Ok(self.put(BaggageEntry {
            key,
            value: value.into(),
            properties,
        }))
    }

    /// The value for `key`.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.entry(key).map(BaggageEntry::value)
    }

    /// The whole entry for `key`, with its properties.
    pub fn entry(&self, key: &str) -> Option<&BaggageEntry> {
        self.entries.iter().find(|e| e.key == key)
    }

    /// Removes `key`, returning its value.
    pub fn remove(&mut self, key: &str) -> Option<String> {
        let i = self.entries.iter().position(|e| e.key == key)?;
        Some(self.entries.remove(i).value)
    }

    /// The entries in order.
    pub fn iter(&self) -> std::slice::Iter<'_, BaggageEntry> {
        self.entries.iter()
    }

    /// Number of entries.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// True when there are no entries.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The `baggage` header value, or `None` when nothing is left to send.
    ///
    /// Values are percent-encoded. Entries that would take the header past
    /// [`MAX_MEMBERS`] or [`MAX_BYTES`] are left out whole.
    pub fn to_header(&self) -> Option<String> {
        let mut out = String::new();
        for e in self.fitting() {
            if !out.is_empty() {
                out.push(',');
            }
            e.write(&mut out);
        }
        (!out.is_empty()).then_some(out)
    }

    /// Replaces or appends, returning the previous value.
    fn put(&mut self, entry: BaggageEntry) -> Option<String> {
        match self.entries.iter_mut().find(|e| e.key == entry.key) {
            Some(old) => Some(std::mem::replace(old, entry).value),
            None => {
                self.entries.push(entry);
                None
            }
        }
    }

    /// The entries, in order, that fit within the limits when encoded.
    fn fitting(&self) -> impl Iterator<Item = &BaggageEntry> {
        let (mut count, mut bytes) = (0usize, 0usize);
        self.entries.iter().filter(move |e| {
            let needed = e.encoded_len() + usize::from(count > 0);
            if count < MAX_MEMBERS && bytes + needed <= MAX_BYTES {
                count += 1;
                bytes += needed;
                true
            } else {
                false
            }
        })
    }

    fn within_limits(self) -> Baggage {
        let entries = self.fitting().cloned().collect();
        Baggage { entries }
    }
}

impl<'a> IntoIterator for &'a Baggage {
    type Item = &'a BaggageEntry;
    type IntoIter = std::slice::Iter<'a, BaggageEntry>;

    fn into_iter(self) -> Self::IntoIter {
        self.entries.iter()
    }
}

/// Parses one trimmed, non-empty list-member:
/// `key OWS "=" OWS value *( OWS ";" OWS property )`.
fn parse_member(raw: &str, member: usize) -> Result<(&str, BaggageEntry), BaggageError> {
    let (head, properties) = match raw.split_once(';') {
        Some((head, props)) => (head, Some(props.trim_matches(is_ows))),
        None => (raw, None),
    };
    let (key, value) = head
        .split_once('=')
        .ok_or(BaggageError::MissingEquals { member })?;
    let key = key.trim_end_matches(is_ows);
    if !is_token(key) {
        return Err(BaggageError::InvalidKey { member });
    }
    let value = value.trim_matches(is_ows);
    if !value.bytes().all(is_baggage_octet) {
        return Err(BaggageError::InvalidValue { member });
    }
    if !has_valid_escapes(value) {
        return Err(BaggageError::InvalidPercentEncoding { member });
    }
    if properties.is_some_and(|p| !is_valid_properties(p)) {
        return Err(BaggageError::InvalidProperties { member });
    }
    let entry = BaggageEntry {
        key: key.to_owned(),
        value: decode(value).into_owned(),
        properties: properties.map(str::to_owned),
    };
    Ok((key, entry))
}

/// Percent-decodes, replacing bytes that are not UTF-8 with U+FFFD.
fn decode(value: &str) -> Cow<'_, str> {
    percent_decode_str(value).decode_utf8_lossy()
}

/// RFC 7230 `tchar`.
fn is_tchar(c: u8) -> bool {
    c.is_ascii_alphanumeric()
        || matches!(
            c,
            b'!' | b'#'
                | b'$'
                | b'%'
                | b'&'
                | b'\''
                | b'*'
                | b'+'
                | b'-'
                | b'.'
                | b'^'
                | b'_'
                | b'`'
                | b'|'
                | b'~'
        )
}

/// RFC 7230 `token = 1*tchar`.
fn is_token(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(is_tchar)
}

/// `%x21 / %x23-2B / %x2D-3A / %x3C-5B / %x5D-7E`.
fn is_baggage_octet(c: u8) -> bool {
    matches!(c, 0x21 | 0x23..=0x2b | 0x2d..=0x3a | 0x3c..=0x5b | 0x5d..=0x7e)
}

/// Every `%` is followed by two hex digits.
fn has_valid_escapes(value: &str) -> bool {
    let b = value.as_bytes();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = |j: usize| b.get(j).is_some_and(u8::is_ascii_hexdigit);
            if !(hex(i + 1) && hex(i + 2)) {
                return false;
            }
            i += 3;
        } else {
            i += 1;
        }
    }
    true
}

/// `property *( OWS ";" OWS property )` with
/// `property = key OWS "=" OWS value / key OWS`, given without surrounding
/// whitespace.
fn is_valid_properties(props: &str) -> bool {
    props.split(';').all(|p| {
        let p = p.trim_matches(is_ows);
        match p.split_once('=') {
            Some((k, v)) => {
                is_token(k.trim_end_matches(is_ows))
                    && v.trim_start_matches(is_ows).bytes().all(is_baggage_octet)
            }
            None => is_token(p),
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn parse1(s: &str) -> Result<Baggage, BaggageError> {
        Baggage::parse(&[s])
    }

    fn pairs(b: &Baggage) -> Vec<(&str, &str, Option<&str>)> {
        b.iter()
            .map(|e| (e.key(), e.value(), e.properties()))
            .collect()
    }

    #[test]
    fn spec_examples() {
        let b = parse1("userId=alice,serverNode=DF%2028,isProduction=false").unwrap();
        assert_eq!(
            pairs(&b),
            [
                ("userId", "alice", None),
                ("serverNode", "DF 28", None),
                ("isProduction", "false", None)
            ]
        );
        let split = Baggage::parse(&["userId=alice", "serverNode=DF%2028,isProduction=false"]);
        assert_eq!(split.unwrap(), b);
        let spaced = Baggage::parse(&[
            "userId =   alice",
            "serverNode = DF%2028, isProduction = false",
        ]);
        assert_eq!(spaced.unwrap(), b);
        assert_eq!(
            b.to_header().as_deref(),
            Some("userId=alice,serverNode=DF%2028,isProduction=false")
        );
    }

    #[test]
    fn properties_preserved() {
        let b = parse1(
            "key1=value1;property1;property2, key2 = value2, key3=value3; propertyKey=propertyValue",
        )
        .unwrap();
        assert_eq!(
            pairs(&b),
            [
                ("key1", "value1", Some("property1;property2")),
                ("key2", "value2", None),
                ("key3", "value3", Some("propertyKey=propertyValue")),
            ]
        );
        assert_eq!(
            b.to_header().as_deref(),
            Some(
                "key1=value1;property1;property2,key2=value2,key3=value3;propertyKey=propertyValue"
            )
        );
        let b = parse1("k=v; a = b ;c\t; d=%41").unwrap();
        assert_eq!(
            b.entry("k").unwrap().properties(),
            Some("a = b ;c\t; d=%41")
        );
        assert_eq!(Baggage::parse(&[&b.to_header().unwrap()]).unwrap(), b);
    }

    #[test]
    fn percent_encoding_unicode_and_specials() {
        let mut b = Baggage::new();
        let tricky = "héllo wörld ✓ 🎉 \"q\" a,b;c\\d %25 =x\t\n\u{7f}";
        b.insert("k", tricky).unwrap();
        b.insert("plain", "!#$&'()*+-./:<>?@[]^_`{|}~09azAZ=")
            .unwrap();
        let h = b.to_header().unwrap();
        assert!(
            h.bytes()
                .all(|c| c == b',' || c == b';' || c == b'=' || is_baggage_octet(c))
        );
        assert!(h.contains("plain=!#$&'()*+-./:<>?@[]^_`{|}~09azAZ="));
        assert!(h.starts_with("k=h%C3%A9llo%20w%C3%B6rld%20%E2%9C%93%20%F0%9F%8E%89%20%22q%22%20a%2Cb%3Bc%5Cd%20%2525%20=x%09%0A%7F,"));
        assert_eq!(Baggage::parse(&[&h]).unwrap(), b);
    }

    #[test]
    fn decoding() {
        // Lower-case escapes and escapes of characters that need none.
        assert_eq!(parse1("k=%c3%a9%41").unwrap().get("k"), Some("éA"));
        // Bytes that are not UTF-8 become U+FFFD.
        assert_eq!(parse1("k=a%FFb").unwrap().get("k"), Some("a\u{fffd}b"));
        assert_eq!(parse1("k=%C3").unwrap().get("k"), Some("\u{fffd}"));
        // `=` may appear in values; empty values are allowed.
        assert_eq!(parse1("k=a=b==").unwrap().get("k"), Some("a=b=="));
        assert_eq!(parse1("k=").unwrap().get("k"), Some(""));
        assert_eq!(parse1("k= \t").unwrap().get("k"), Some(""));
    }

    #[test]
    fn invalid_headers() {
        let cases: &[(&str, BaggageError)] = &[
            ("k", BaggageError::MissingEquals { member: 0 }),
            ("a=1,k;p=1", BaggageError::MissingEquals { member: 1 }),
            ("=v", BaggageError::InvalidKey { member: 0 }),
            ("k y=v", BaggageError::InvalidKey { member: 0 }),
            ("k\"=v", BaggageError::InvalidKey { member: 0 }),
            ("ké=v", BaggageError::InvalidKey { member: 0 }),
            ("k(=v", BaggageError::InvalidKey { member: 0 }),
            ("k=a b", BaggageError::InvalidValue { member: 0 }),
            ("k=a\"b", BaggageError::InvalidValue { member: 0 }),
            ("k=a\\b", BaggageError::InvalidValue { member: 0 }),
            ("k=é", BaggageError::InvalidValue { member: 0 }),
            ("k=a\u{1}", BaggageError::InvalidValue { member: 0 }),
            ("k=%", BaggageError::InvalidPercentEncoding { member: 0 }),
            ("k=%4", BaggageError::InvalidPercentEncoding { member: 0 }),
            ("k=%zz", BaggageError::InvalidPercentEncoding { member: 0 }),
            ("k=v;", BaggageError::InvalidProperties { member: 0 }),
            ("k=v;;p", BaggageError::InvalidProperties { member: 0 }),
            ("k=v;=x", BaggageError::InvalidProperties { member: 0 }),
            ("k=v;p=a b", BaggageError::InvalidProperties { member: 0 }),
            ("k=v;p q", BaggageError::InvalidProperties { member: 0 }),
        ];
        for (s, e) in cases {
            assert_eq!(parse1(s), Err(*e), "{s:?}");
        }
    }

    #[test]
    fn empty_members_and_headers() {
        assert!(parse1("").unwrap().is_empty());
        assert!(Baggage::parse(&[]).unwrap().is_empty());
        assert!(parse1(" , ,\t").unwrap().is_empty());
        assert_eq!(Baggage::new().to_header(), None);
        assert_eq!(Baggage::parse(&["", "a=1", ""]).unwrap().len(), 1);
        assert_eq!(parse1("a=1,,b=2,").unwrap().len(), 2);
    }

    #[test]
    fn duplicates_keep_first_position_last_value() {
        let b = parse1("a=1,b=2,a=3").unwrap();
        assert_eq!(pairs(&b), [("a", "3", None), ("b", "2", None)]);
        // Keys are case-sensitive.
        assert_eq!(parse1("a=1,A=2").unwrap().len(), 2);
    }

    #[test]
    fn member_limit() {
        let header = (0..100)
            .map(|i| format!("k{i}=v"))
            .collect::<Vec<_>>()
            .join(",");
        let b = parse1(&header).unwrap();
        assert_eq!(b.len(), MAX_MEMBERS);
        assert_eq!(b.iter().last().unwrap().key(), "k63");

        let mut b = Baggage::new();
        for i in 0..70 {
            b.insert(format!("k{i}"), "v").unwrap();
        }
        assert_eq!(b.len(), 70);
        let h = b.to_header().unwrap();
        assert_eq!(h.split(',').count(), MAX_MEMBERS);
        assert_eq!(parse1(&h).unwrap().len(), MAX_MEMBERS);
    }

    #[test]
    fn huge_header_is_linear() {
        let header = (0..200_000)
            .map(|i| format!("k{i}=v"))
            .collect::<Vec<_>>()
            .join(",");
        let start = std::time::Instant::now();
        let b = parse1(&format!("{header},k5=last")).unwrap();
        assert_eq!(b.len(), MAX_MEMBERS);
        assert_eq!(b.get("k5"), Some("last"));
        assert!(start.elapsed() < std::time::Duration::from_secs(5));
    }

    #[test]
    fn byte_limit() {
        // 3 members of 3000 bytes: the third does not fit, a small fourth does.
        let big = |k: &str| format!("{k}={}", "x".repeat(2998));
        let header = [big("a"), big("b"), big("c"), "d=1".into()].join(",");
        let b = parse1(&header).unwrap();
        let keys: Vec<_> = b.iter().map(BaggageEntry::key).collect();
        assert_eq!(keys, ["a", "b", "d"]);
        assert!(b.to_header().unwrap().len() <= MAX_BYTES);

        // Exactly 8192 bytes is kept.
        let exact = format!("k={}", "x".repeat(MAX_BYTES - 2));
        assert_eq!(parse1(&exact).unwrap().len(), 1);
        let over = format!("k={}", "x".repeat(MAX_BYTES - 1));
        assert!(parse1(&over).unwrap().is_empty());

        // Measured encoded: each é takes 6 bytes on the wire.
        let mut b = Baggage::new();
        b.insert("k", "é".repeat(1400)).unwrap();
        b.insert("small", "1").unwrap();
        assert_eq!(b.to_header().as_deref(), Some("small=1"));
        assert_eq!(b.len(), 2);
    }

    #[test]
    fn map_api() {
        let mut b = Baggage::new();
        assert!(b.is_empty());
        assert_eq!(b.insert("a", "1"), Ok(None));
        assert_eq!(b.insert("b", "2"), Ok(None));
        assert_eq!(b.insert("a", "3"), Ok(Some("1".into())));
        assert_eq!(b.len(), 2);
        assert_eq!(b.get("a"), Some("3"));
        assert_eq!(b.iter().next().unwrap().key(), "a");
        assert_eq!(b.remove("a"), Some("3".into()));
        assert_eq!(b.remove("a"), None);
        assert_eq!(b.get("a"), None);
        assert_eq!(b.insert("bad key", "x"), Err(BaggageError::InvalidEntryKey));
        assert_eq!(b.insert("", "x"), Err(BaggageError::InvalidEntryKey));
        assert_eq!(
            b.insert_with_properties("c", "x", Some("p;q=1".into())),
            Ok(None)
        );
        assert_eq!(b.entry("c").unwrap().properties(), Some("p;q=1"));
        assert_eq!(
            b.insert_with_properties("c", "x", Some("p,q".into())),
            Err(BaggageError::InvalidEntryProperties)
        );
        assert_eq!(
            b.insert_with_properties("c", "x", Some(String::new())),
            Err(BaggageError::InvalidEntryProperties)
        );
        assert_eq!((&b).into_iter().count(), 2);
        assert_eq!(b.to_header().as_deref(), Some("b=2,c=x;p;q=1"));
    }

    fn entries() -> impl Strategy<Value = Vec<(String, String, Option<String>)>> {
        proptest::collection::vec(
            (
                "[!#$%&'*+.^_`|~0-9A-Za-z-]{1,12}",
                any::<String>(),
                proptest::option::of("[a-z]{1,5}(=[!#-+.-:<-Z^-~]{0,5})?(;[a-z]{1,3})?"),
            ),
            0..80,
        )
    }

    proptest! {
        #[test]
        fn baggage_round_trip(list in entries()) {
            let mut b = Baggage::new();
            for (k, v, p) in list {
                b.insert_with_properties(k, v, p).unwrap();
            }
            match b.to_header() {
                Some(h) => {
                    prop_assert!(h.len() <= MAX_BYTES);
                    let again = Baggage::parse(&[&h]).unwrap();
                    prop_assert_eq!(again.to_header(), Some(h));
                    let kept: Vec<_> = b.fitting().cloned().collect();
                    prop_assert_eq!(again.entries, kept);
                }
                None => prop_assert!(b.is_empty()),
            }
        }

        #[test]
        fn parse_never_panics(s in "\\PC{0,120}", raw in proptest::collection::vec(any::<u8>(), 0..120)) {
            let lossy = String::from_utf8_lossy(&raw);
            for input in [s.as_str(), &lossy] {
                if let Ok(b) = Baggage::parse(&[input, input])
                    && let Some(h) = b.to_header()
                {
                    prop_assert_eq!(Baggage::parse(&[&h]), Ok(b));
                }
            }
        }

        #[test]
        fn parse_never_panics_on_near_valid(
            s in "([a-zA-Z%;=, \t\"\\\\0-9]|%[0-9a-fA-F]{2}){0,60}"
        ) {
            if let Ok(b) = Baggage::parse(&[&s])
                && let Some(h) = b.to_header()
            {
                prop_assert_eq!(Baggage::parse(&[&h]), Ok(b));
            }
        }
    }
}
