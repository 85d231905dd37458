//! Roll-up parts in the `rollups` table: key width ‖ start ‖ owner, value
//! through ‖ the encoded bucket (numbers big-endian).

use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};

use super::{Result, corrupt, db_err};
use crate::RollupPart;
use crate::rollup::{be_u64, empty_window};

pub(super) const ROLLUPS: TableDefinition<'_, &[u8], &[u8]> = TableDefinition::new("rollups");

fn key(width: u64, start: u64, owner: &str) -> Vec<u8> {
    [
        &width.to_be_bytes()[..],
        &start.to_be_bytes(),
        owner.as_bytes(),
    ]
    .concat()
}

fn part(k: &[u8], v: &[u8]) -> Result<RollupPart> {
    let bad = || corrupt("rollups entry");
    let owner = std::str::from_utf8(k.get(16..).ok_or_else(bad)?).map_err(|_| bad())?;
    Ok(RollupPart {
        width_nanos: be_u64(k).ok_or_else(bad)?,
        start_unix_nanos: be_u64(&k[8..]).ok_or_else(bad)?,
        owner: owner.to_owned(),
        through: be_u64(v).ok_or_else(bad)?,
        bytes: v[8..].to_vec(),
    })
}

/// Replaces each part in one committed transaction.
pub(super) fn put_blocking(db: &Database, parts: &[RollupPart]) -> Result<()> {
    let tx = db.begin_write().map_err(db_err)?;
    {
        let mut table = tx.open_table(ROLLUPS).map_err(db_err)?;
        for p in parts {
            let k = key(p.width_nanos, p.start_unix_nanos, &p.owner);
            let v = [&p.through.to_be_bytes()[..], &p.bytes].concat();
            table.insert(k.as_slice(), v.as_slice()).map_err(db_err)?;
        }
    }
    tx.commit().map_err(db_err)
}

pub(super) fn range_blocking(
    db: &Database,
    width: u64,
    from: u64,
    to: u64,
) -> Result<Vec<RollupPart>> {
    if empty_window(width, from, to) {
        return Ok(Vec::new());
    }
    let tx = db.begin_read().map_err(db_err)?;
    let table = tx.open_table(ROLLUPS).map_err(db_err)?;
    let (lo, hi) = (key(width, from, ""), key(width, to, ""));
    let mut out = Vec::new();
    for entry in table.range(lo.as_slice()..hi.as_slice()).map_err(db_err)? {
        let (k, v) = entry.map_err(db_err)?;
        out.push(part(k.value(), v.value())?);
    }
    Ok(out)
}

/// Removes, width by width, the parts of buckets ended by `ended_by`.
pub(super) fn prune_blocking(db: &Database, ended_by: u64) -> Result<u64> {
    let tx = db.begin_write().map_err(db_err)?;
    let mut removed = 0;
    {
        let mut table = tx.open_table(ROLLUPS).map_err(db_err)?;
        let mut next = key(0, 0, "");
        loop {
            let Some(width) = first_width(&table, &next)? else {
                break;
            };
            // start + width <= ended_by, i.e. start < ended_by - width + 1.
            if let Some(limit) = ended_by.checked_sub(width).and_then(|l| l.checked_add(1)) {
                let (lo, hi) = (key(width, 0, ""), key(width, limit, ""));
                let range = lo.as_slice()..hi.as_slice();
                removed += table.range(range.clone()).map_err(db_err)?.count() as u64;
                table.retain_in(range, |_, _| false).map_err(db_err)?;
            }
            match width.checked_add(1) {
                Some(w) => next = key(w, 0, ""),
                None => break,
            }
        }
    }
    tx.commit().map_err(db_err)?;
    Ok(removed)
}

/// The width of the first entry at or after `from`.
fn first_width(
    table: &impl ReadableTable<&'static [u8], &'static [u8]>,
    from: &[u8],
) -> Result<Option<u64>> {
    let mut range = table.range(from..).map_err(db_err)?;
    match range.next() {
        Some(entry) => {
            let (k, _) = entry.map_err(db_err)?;
            Ok(Some(
                be_u64(k.value()).ok_or_else(|| corrupt("rollups key"))?,
            ))
        }
        None => Ok(None),
    }
}
