//! The statistics of a bucket's keys: a hash index over a vector, so a
//! key's place, found once, reaches its statistics again by position
//! (a batch of spans finds its keys, then reads and counts by position).

use std::collections::HashMap;
use std::hash::Hash;

use super::bucket::Stats;

type FastMap<K, V> = HashMap<K, V, foldhash::fast::RandomState>;

/// Keys and their statistics, in the order the keys were made.
#[derive(Debug, Clone)]
pub(super) struct Keyed<K> {
    index: FastMap<K, u32>,
    entries: Vec<(K, Stats)>,
}

impl<K> Default for Keyed<K> {
    fn default() -> Self {
        Keyed {
            index: FastMap::default(),
            entries: Vec::new(),
        }
    }
}

impl<K: Copy + Eq + Hash> Keyed<K> {
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn contains_key(&self, key: &K) -> bool {
        self.index.contains_key(key)
    }

    pub fn index_of(&self, key: &K) -> Option<&u32> {
        self.index.get(key)
    }

    pub fn get(&self, key: &K) -> Option<&Stats> {
        let at = *self.index.get(key)?;
        self.at(at)
    }

    /// The place of `key`, made (with empty statistics) when missing.
    pub fn place(&mut self, key: K) -> u32 {
        if let Some(&at) = self.index.get(&key) {
            return at;
        }
        // A bucket's keys are bounded by its limits, far below u32::MAX.
        let at = self.entries.len() as u32;
        self.entries.push((key, Stats::default()));
        self.index.insert(key, at);
        at
    }

    /// The statistics of `key`, made empty when missing.
    pub fn entry(&mut self, key: K) -> &mut Stats {
        let at = self.place(key) as usize;
        &mut self.entries[at].1
    }

    pub fn at(&self, at: u32) -> Option<&Stats> {
        self.entries.get(at as usize).map(|(_, s)| s)
    }

    pub fn at_mut(&mut self, at: u32) -> Option<&mut Stats> {
        self.entries.get_mut(at as usize).map(|(_, s)| s)
    }

    pub fn iter(&self) -> impl Iterator<Item = (&K, &Stats)> {
        self.entries.iter().map(|(k, s)| (k, s))
    }

    pub fn keys(&self) -> impl Iterator<Item = &K> {
        self.entries.iter().map(|(k, _)| k)
    }
}
