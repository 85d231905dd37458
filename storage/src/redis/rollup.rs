//! Roll-up parts, in the catalogue's hash slot: `ru:<width>:<start>` a hash
//! of owner → through (8 bytes, big-endian) ‖ encoded bucket; `ru:<width>`
//! the bucket starts (8 bytes, big-endian, all at score 0, so `BYLEX`
//! ranges are exact where a float score would round nanoseconds);
//! `ru-widths` the widths in use, for pruning. A bucket's hash expires a
//! retention after its last write, behind `prune_rollups`.

use super::{Inner, Result, corrupt};
use crate::RollupPart;
use crate::rollup::{be_u64, empty_window, sort_parts};

/// `[start` or `(start`: a `ZRANGEBYLEX` bound.
fn bound(inclusive: bool, start: u64) -> Vec<u8> {
    let mut b = vec![if inclusive { b'[' } else { b'(' }];
    b.extend_from_slice(&start.to_be_bytes());
    b
}

impl Inner {
    pub(super) async fn put_rollup_parts(&self, parts: &[RollupPart]) -> Result<()> {
        if parts.is_empty() {
            return Ok(());
        }
        let k = &self.keys;
        let ttl = i64::try_from(self.ttl_ms()).unwrap_or(i64::MAX);
        let mut pipe = ::redis::pipe();
        for p in parts {
            let value = [&p.through.to_be_bytes()[..], &p.bytes].concat();
            let (w, s) = (p.width_nanos, p.start_unix_nanos);
            let key = k.rollup(w, s);
            pipe.hset(&key, &p.owner, value).ignore();
            // A safety net behind prune_rollups: gone a retention after it is
            // last written.
            pipe.pexpire(&key, ttl).ignore();
            pipe.zadd(k.rollup_index(w), &s.to_be_bytes()[..], 0)
                .ignore();
            pipe.sadd(k.rollup_widths(), w).ignore();
        }
        self.with_retry("put_rollups", |mut conn| {
            let pipe = &pipe;
            async move { pipe.query_async::<()>(&mut conn).await }
        })
        .await
    }

    /// The starts of the stored buckets of `width` in `[lo, hi)`.
    async fn rollup_starts(&self, width: u64, lo: Vec<u8>, hi: Vec<u8>) -> Result<Vec<u64>> {
        let key = self.keys.rollup_index(width);
        let members: Vec<Vec<u8>> = self
            .with_retry("rollups", |mut conn| {
                let (key, lo, hi) = (&key, &lo, &hi);
                async move {
                    ::redis::cmd("ZRANGEBYLEX")
                        .arg(key)
                        .arg(lo)
                        .arg(hi)
                        .query_async(&mut conn)
                        .await
                }
            })
            .await?;
        members
            .iter()
            .map(|m| be_u64(m).ok_or_else(|| corrupt("roll-up index member")))
            .collect()
    }

    pub(super) async fn rollup_parts(
        &self,
        width: u64,
        from: u64,
        to: u64,
    ) -> Result<Vec<RollupPart>> {
        if empty_window(width, from, to) {
            return Ok(Vec::new());
        }
        let starts = self
            .rollup_starts(width, bound(true, from), bound(false, to))
            .await?;
        if starts.is_empty() {
            return Ok(Vec::new());
        }
        let k = &self.keys;
        let mut pipe = ::redis::pipe();
        for s in &starts {
            pipe.hgetall(k.rollup(width, *s));
        }
        let hashes: Vec<Vec<(String, Vec<u8>)>> = self
            .with_retry("rollups", |mut conn| {
                let pipe = &pipe;
                async move { pipe.query_async(&mut conn).await }
            })
            .await?;
        let mut out = Vec::new();
        for (start, fields) in starts.iter().zip(hashes) {
            for (owner, value) in fields {
                let through = be_u64(&value).ok_or_else(|| corrupt("roll-up part"))?;
                out.push(RollupPart {
                    width_nanos: width,
                    start_unix_nanos: *start,
                    owner,
                    through,
                    bytes: value[8..].to_vec(),
                });
            }
        }
        sort_parts(&mut out);
        Ok(out)
    }

    pub(super) async fn prune_rollup_parts(&self, ended_by: u64) -> Result<u64> {
        let widths_key = self.keys.rollup_widths();
        let widths: Vec<u64> = self
            .with_retry("prune_rollups", |mut conn| {
                let key = &widths_key;
                async move {
                    ::redis::cmd("SMEMBERS")
                        .arg(key)
                        .query_async(&mut conn)
                        .await
                }
            })
            .await?;
        let mut removed = 0;
        for width in widths.into_iter().filter(|w| *w > 0) {
            // A bucket ended by `ended_by` starts before ended_by - width + 1.
            let Some(limit) = ended_by.checked_sub(width).and_then(|l| l.checked_add(1)) else {
                continue;
            };
            removed += self.prune_width(width, limit).await?;
        }
        Ok(removed)
    }

    /// Removes the buckets of `width` starting before `limit`.
    async fn prune_width(&self, width: u64, limit: u64) -> Result<u64> {
        let starts = self
            .rollup_starts(width, b"-".to_vec(), bound(false, limit))
            .await?;
        if starts.is_empty() {
            return Ok(0);
        }
        let k = &self.keys;
        let mut pipe = ::redis::pipe();
        for s in &starts {
            pipe.hlen(k.rollup(width, *s));
        }
        for s in &starts {
            pipe.del(k.rollup(width, *s)).ignore();
        }
        pipe.cmd("ZREMRANGEBYLEX")
            .arg(k.rollup_index(width))
            .arg("-")
            .arg(bound(false, limit))
            .ignore();
        let lens: Vec<u64> = self
            .with_retry("prune_rollups", |mut conn| {
                let pipe = &pipe;
                async move { pipe.query_async(&mut conn).await }
            })
            .await?;
        Ok(lens.iter().sum())
    }
}
