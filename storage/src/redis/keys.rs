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
///
/// A deployment's keys are split into shards: every key of a trace and
/// every index entry of that trace live in the shard of its trace id, so a
/// trace's writes, its removal and a search's walk of one shard each touch
/// one hash slot. On a single server there is one shard and no hash tag
/// (the layout of earlier versions, unchanged); on a Redis Cluster each
/// shard's keys carry a hash tag chosen so that the shards' slots spread
/// evenly over the 16,384 slots, and the catalogue (services, operations,
/// the index registry, leases and the layout record) carries its own tag.
#[derive(Debug, Clone)]
pub(super) struct Keys {
    prefix: Vec<u8>,
    /// Per shard: its hash tag (`{…}`), or empty on a single server.
    tags: Vec<Vec<u8>>,
    /// The catalogue's hash tag, or empty.
    global: Vec<u8>,
}

/// Hash slots of a Redis Cluster.
const SLOTS: usize = 16_384;

/// The hash tag of shard `shard` of `shards`: the first `{shard.j}` whose
/// slot is in the shard's even share of the slot space.
fn shard_tag(shard: usize, shards: usize) -> Vec<u8> {
    let (lo, hi) = (shard * SLOTS / shards, (shard + 1) * SLOTS / shards);
    (0u32..)
        .map(|j| format!("{shard}.{j}"))
        .find(|t| (lo..hi).contains(&slot(t.as_bytes())))
        .map(|t| format!("{{{t}}}").into_bytes())
        .unwrap_or_default()
}

/// The cluster hash slot of `key`: CRC16 (XMODEM) of its hash tag (the
/// bytes between the first `{` and the next `}`, when not empty), else of
/// the whole key, modulo 16,384.
pub(super) fn slot(key: &[u8]) -> usize {
    let tagged = key.iter().position(|b| *b == b'{').and_then(|open| {
        let rest = &key[open + 1..];
        let close = rest.iter().position(|b| *b == b'}')?;
        (close > 0).then(|| &rest[..close])
    });
    usize::from(crc16::State::<crc16::XMODEM>::calculate(
        tagged.unwrap_or(key),
    )) % SLOTS
}

impl Keys {
    /// The keys under `prefix`: one untagged shard when `shards` is `None`
    /// (a single server), else that many tagged shards.
    pub(super) fn new(prefix: &str, shards: Option<usize>) -> Self {
        let (tags, global) = match shards {
            None => (vec![Vec::new()], Vec::new()),
            Some(n) => {
                let n = n.max(1);
                (
                    (0..n).map(|s| shard_tag(s, n)).collect(),
                    b"{clew}".to_vec(),
                )
            }
        };
        Keys {
            prefix: prefix.as_bytes().to_vec(),
            tags,
            global,
        }
    }

    /// How many shards there are.
    pub(super) fn shards(&self) -> usize {
        self.tags.len()
    }

    /// The shard of a trace id.
    pub(super) fn shard_of(&self, tid: &[u8]) -> usize {
        if self.tags.len() == 1 {
            return 0;
        }
        let h = tid.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
            (h ^ u64::from(*b)).wrapping_mul(0x100_0000_01b3)
        });
        (h % self.tags.len() as u64) as usize
    }

    /// The keys of shard `shard`.
    pub(super) fn shard(&self, shard: usize) -> ShardKeys<'_> {
        let shard = shard % self.tags.len();
        ShardKeys {
            shard,
            prefix: &self.prefix,
            tag: &self.tags[shard],
        }
    }

    /// The keys of the shard of `tid`.
    pub(super) fn of_trace(&self, tid: &[u8]) -> ShardKeys<'_> {
        self.shard(self.shard_of(tid))
    }

    fn key(&self, parts: &[&[u8]]) -> Vec<u8> {
        join(&self.prefix, &self.global, parts)
    }
    /// `lease:<name>`: the holder of a lease.
    pub(super) fn lease(&self, name: &str) -> Vec<u8> {
        self.key(&[b"lease:", name.as_bytes()])
    }
    /// `layout`: the shard count every collector of the deployment uses.
    pub(super) fn layout(&self) -> Vec<u8> {
        self.key(&[b"layout"])
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
    /// `ru:<width>:<start>`: a roll-up bucket's parts, by owner.
    pub(super) fn rollup(&self, width: u64, start: u64) -> Vec<u8> {
        self.key(&[format!("ru:{width}:{start}").as_bytes()])
    }
    /// `ru:<width>`: the starts of the stored buckets of a width.
    pub(super) fn rollup_index(&self, width: u64) -> Vec<u8> {
        self.key(&[format!("ru:{width}").as_bytes()])
    }
    /// `ru-widths`: the widths that have buckets.
    pub(super) fn rollup_widths(&self) -> Vec<u8> {
        self.key(&[b"ru-widths"])
    }
}

fn join(prefix: &[u8], tag: &[u8], parts: &[&[u8]]) -> Vec<u8> {
    let len = prefix.len() + tag.len() + parts.iter().map(|p| p.len()).sum::<usize>();
    let mut k = Vec::with_capacity(len);
    k.extend_from_slice(prefix);
    k.extend_from_slice(tag);
    for p in parts {
        k.extend_from_slice(p);
    }
    k
}

/// The keys of one shard: its traces and its indexes.
#[derive(Debug, Clone, Copy)]
pub(super) struct ShardKeys<'a> {
    shard: usize,
    prefix: &'a [u8],
    tag: &'a [u8],
}

impl ShardKeys<'_> {
    /// Which shard these are the keys of.
    pub(super) fn index(&self) -> usize {
        self.shard
    }
    fn key(&self, parts: &[&[u8]]) -> Vec<u8> {
        join(self.prefix, self.tag, parts)
    }
    /// `tr:`, not the earlier layout's `t:` (a hash): a server holding data
    /// of that layout is read as if those traces had expired.
    pub(super) fn trace(&self, tid: &[u8]) -> Vec<u8> {
        self.key(&[b"tr:", tid])
    }
    pub(super) fn orphans(&self, tid: &[u8]) -> Vec<u8> {
        self.key(&[b"w:", tid])
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
