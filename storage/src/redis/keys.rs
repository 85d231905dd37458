//! The key layout (see the module docs' table): key names under the
//! prefix, the members of the sorted sets, the trace facts' names and the
//! duration buckets.

/// A sorted-set key and one of its members.
pub(super) type KeyMember = (Vec<u8>, Vec<u8>);

/// A score and member of one `ZADD`.
pub(super) type ScoredMember<'a> = (u64, &'a [u8]);

/// How a `ZADD` treats an existing member.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(super) enum Mode {
    /// Keep the lowest score (earliest start).
    Lt,
    /// Keep the highest score (newest end, longest duration).
    Gt,
}

/// A `deps` member: the store script builds the same bytes.
pub(super) fn dep_member(
    parent: &str,
    child: &str,
    error: bool,
    tid: &[u8],
    child_span: &[u8],
) -> Vec<u8> {
    let mut m = Vec::with_capacity(parent.len() + child.len() + 27);
    m.extend_from_slice(parent.as_bytes());
    m.push(0);
    m.extend_from_slice(child.as_bytes());
    m.push(0);
    m.push(if error { b'1' } else { b'0' });
    m.extend_from_slice(tid);
    m.extend_from_slice(child_span);
    m
}

pub(super) fn parse_dep_member(m: &[u8]) -> Option<(&str, &str, bool)> {
    let n = m.len().checked_sub(26)?;
    if m[n] != 0 {
        return None;
    }
    let error = m[n + 1] == b'1';
    let names = std::str::from_utf8(&m[..n]).ok()?;
    let (parent, child) = names.split_once('\0')?;
    Some((parent, child, error))
}

pub(super) fn op_member(kind: i32, name: &str) -> Vec<u8> {
    format!("{kind}:{name}").into_bytes()
}

/// Key names under the configured prefix.
#[derive(Debug, Clone)]
pub(super) struct Keys(Vec<u8>);

impl Keys {
    /// The keys under `prefix`.
    pub(super) fn new(prefix: &str) -> Self {
        Keys(prefix.as_bytes().to_vec())
    }

    fn key(&self, parts: &[&[u8]]) -> Vec<u8> {
        let mut k = Vec::with_capacity(self.0.len() + parts.iter().map(|p| p.len()).sum::<usize>());
        k.extend_from_slice(&self.0);
        for p in parts {
            k.extend_from_slice(p);
        }
        k
    }
    /// `tr:`, not the earlier layout's `t:` (a hash): a server holding data
    /// of that layout is read as if those traces had expired.
    pub(super) fn trace(&self, tid: &[u8]) -> Vec<u8> {
        self.key(&[b"tr:", tid])
    }
    pub(super) fn orphans(&self, tid: &[u8]) -> Vec<u8> {
        self.key(&[b"w:", tid])
    }
    /// `lease:<name>`: the holder of a lease.
    pub(super) fn lease(&self, name: &str) -> Vec<u8> {
        self.key(&[b"lease:", name.as_bytes()])
    }
    pub(super) fn deps(&self) -> Vec<u8> {
        self.key(&[b"deps"])
    }
    pub(super) fn all(&self) -> Vec<u8> {
        self.key(&[b"i:all"])
    }
    pub(super) fn service(&self, svc: &str) -> Vec<u8> {
        self.key(&[b"i:s:", svc.as_bytes()])
    }
    pub(super) fn operation(&self, svc: &str, op: &str) -> Vec<u8> {
        self.key(&[b"i:o:", svc.as_bytes(), b"\0", op.as_bytes()])
    }
    pub(super) fn tag(&self, key: &str, value: &str) -> Vec<u8> {
        self.key(&[b"i:t:", key.as_bytes(), b"\0", value.as_bytes()])
    }
    pub(super) fn errors(&self, svc: Option<&str>) -> Vec<u8> {
        match svc {
            Some(svc) => self.key(&[b"i:e:", svc.as_bytes()]),
            None => self.key(&[b"i:e"]),
        }
    }
    /// Traces by the bucket of their shortest span of `svc`, scored by start.
    pub(super) fn short(&self, svc: &str, bucket: u32) -> Vec<u8> {
        self.key(&[format!("i:m:{bucket:03}:").as_bytes(), svc.as_bytes()])
    }
    pub(super) fn services(&self) -> Vec<u8> {
        self.key(&[b"services"])
    }
    pub(super) fn operations(&self, svc: &str) -> Vec<u8> {
        self.key(&[b"ops:", svc.as_bytes()])
    }
    pub(super) fn registry(&self) -> Vec<u8> {
        self.key(&[b"keys"])
    }
}

/// Fact kind: the longest span duration of a service.
pub(super) const FACT_MAX: u8 = b'D';
/// Fact kind: the shortest span duration of a service (of any service when
/// the name is empty).
pub(super) const FACT_MIN: u8 = b'm';

/// A fact's name as the scripts look it up: kind, then the service name.
pub(super) fn fact(kind: u8, svc: &str) -> Vec<u8> {
    let mut f = Vec::with_capacity(1 + svc.len());
    f.push(kind);
    f.extend_from_slice(svc.as_bytes());
    f
}

/// The shortest-duration bucket of a duration: a quarter of an octave
/// (bit length, then the next two bits), so that a span at most `d` long is
/// in a bucket up to `bucket(d)`, and one in that bucket is at most 25 %
/// longer.
pub(super) fn bucket(d: u64) -> u32 {
    let bits = 64 - d.leading_zeros();
    if bits <= 2 {
        return d as u32;
    }
    (bits << 2) | ((d >> (bits - 3)) & 3) as u32
}
