//! The collector set: who the members are, which one this collector is, and
//! how many copies of a span that allows.

use std::sync::Arc;
use std::time::Duration;

use clew_model::placement;
use tokio::sync::watch;

/// The collector set as known now. Members are named `host:port`, the
/// address sidecars dial (see [`placement::member_key`]); the list is sorted
/// and has no duplicates.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Members {
    names: Vec<String>,
    hashes: Vec<u64>,
    me: Option<usize>,
}

impl Members {
    /// The set `names` (any order, duplicates ignored, schemes stripped),
    /// seen by the member `me`.
    pub fn new(names: impl IntoIterator<Item = String>, me: &str) -> Self {
        let mut names: Vec<String> = names
            .into_iter()
            .map(|n| placement::member_key(&n).to_owned())
            .filter(|n| !n.is_empty())
            .collect();
        names.sort();
        names.dedup();
        let hashes = names.iter().map(|n| placement::member_hash(n)).collect();
        let me_key = placement::member_key(me);
        let me = names.iter().position(|n| n == me_key);
        Members { names, hashes, me }
    }

    /// The members' names, sorted.
    pub fn names(&self) -> &[String] {
        &self.names
    }

    /// Index of this collector in [`names`](Self::names), when it is a
    /// member.
    pub fn me(&self) -> Option<usize> {
        self.me
    }

    /// Whether `name` is a member other than this collector.
    pub fn is_peer(&self, name: &str) -> bool {
        let key = placement::member_key(name);
        self.names
            .iter()
            .enumerate()
            .any(|(i, n)| n == key && Some(i) != self.me)
    }

    /// The set's size, counting this collector even while it is not (yet)
    /// listed: it keeps a copy of what it accepts in any case.
    pub fn size(&self) -> usize {
        self.names.len() + usize::from(self.me.is_none())
    }

    /// The members other than this collector for a trace, best first: the
    /// order its copies are placed in.
    pub fn peers_for(&self, trace_id: &[u8]) -> impl Iterator<Item = usize> + '_ {
        placement::rank(&self.hashes, trace_id)
            .into_iter()
            .filter(move |i| Some(*i) != self.me)
    }
}

/// Copies a span gets, from the configured factor and minimum and the set's
/// size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Copies {
    /// The factor configured (0: 2 when the set has two or more members,
    /// else 1).
    pub configured: usize,
    /// Copies that must be durable before a batch is acknowledged (0: as
    /// many as the effective factor).
    pub min: usize,
}

impl Copies {
    /// The factor in force for a set of `size` members: the configured one,
    /// shrunk to the set's size.
    pub fn factor(&self, size: usize) -> usize {
        let wanted = match self.configured {
            0 if size >= 2 => 2,
            0 => 1,
            n => n,
        };
        wanted.min(size).max(1)
    }

    /// Copies that must be durable for an acknowledgement in a set of
    /// `size` members (this collector's own WAL counts as one).
    pub fn required(&self, size: usize) -> usize {
        let factor = self.factor(size);
        match self.min {
            0 => factor,
            n => n.min(factor),
        }
    }

    /// Whether a set of `size` members is too small for the configured
    /// factor.
    pub fn degraded(&self, size: usize) -> bool {
        self.configured > size
    }
}

/// Resolves `name` (`host:port`) to one member per address, sorted.
pub async fn resolve(name: &str) -> std::io::Result<Vec<String>> {
    let mut out: Vec<String> = tokio::net::lookup_host(name)
        .await?
        .map(|a| a.to_string())
        .collect();
    out.sort();
    out.dedup();
    Ok(out)
}

/// Re-resolves `dns` every `every` and publishes the set (with the `fixed`
/// members) when it changed. An empty or failed answer keeps the last set:
/// a rollout must not shrink the set to nothing.
pub async fn dns_loop(
    tx: Arc<watch::Sender<Arc<Members>>>,
    fixed: Vec<String>,
    dns: String,
    me: String,
    every: Duration,
) {
    let mut tick = tokio::time::interval(every.max(Duration::from_millis(100)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        match resolve(&dns).await {
            Ok(list) if !list.is_empty() => {
                let next = Members::new(fixed.iter().cloned().chain(list), &me);
                tx.send_if_modified(|cur| {
                    if **cur == next {
                        return false;
                    }
                    tracing::info!(members = ?next.names(), "collector set changed");
                    *cur = Arc::new(next);
                    true
                });
            }
            Ok(_) => tracing::warn!(name = %dns, "peer DNS name has no addresses; keeping the set"),
            Err(e) => {
                tracing::warn!(name = %dns, error = %e, "resolving the peer DNS name failed; keeping the set")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn members_are_sorted_deduplicated_and_scheme_free() {
        let m = Members::new(["http://b:1".to_owned(), "a:1".into(), "b:1".into()], "b:1");
        assert_eq!(m.names(), ["a:1", "b:1"]);
        assert_eq!(m.me(), Some(1));
        assert!(m.is_peer("a:1"));
        assert!(!m.is_peer("b:1"), "this collector is not its own peer");
        assert!(!m.is_peer("c:1"));
        assert_eq!(m.size(), 2);
        let outside = Members::new(["a:1".to_owned()], "z:1");
        assert_eq!(outside.me(), None);
        assert_eq!(outside.size(), 2, "counts itself while unlisted");
    }

    #[test]
    fn the_factor_shrinks_to_the_set() {
        let auto = Copies {
            configured: 0,
            min: 0,
        };
        assert_eq!((auto.factor(1), auto.factor(2), auto.factor(5)), (1, 2, 2));
        assert!(!auto.degraded(1));
        let three = Copies {
            configured: 3,
            min: 2,
        };
        assert_eq!(three.factor(5), 3);
        assert_eq!(three.required(5), 2);
        assert_eq!(three.factor(2), 2);
        assert_eq!(three.required(1), 1);
        assert!(three.degraded(2));
        assert!(!three.degraded(3));
    }

    #[test]
    fn peers_for_skips_this_collector_and_follows_placement() {
        let names: Vec<String> = ["a:1", "b:1", "c:1"].map(String::from).to_vec();
        let m = Members::new(names.clone(), "b:1");
        let hashes: Vec<u64> = m
            .names()
            .iter()
            .map(|n| placement::member_hash(n))
            .collect();
        for i in 0u64..500 {
            let trace = placement::mix(i).to_be_bytes();
            let expect: Vec<usize> = placement::rank(&hashes, &trace)
                .into_iter()
                .filter(|j| *j != 1)
                .collect();
            assert_eq!(m.peers_for(&trace).collect::<Vec<_>>(), expect);
        }
    }
}

#[cfg(test)]
mod dns_tests {
    use super::*;

    #[tokio::test]
    async fn the_set_follows_a_dns_name() {
        // `localhost` resolves through /etc/hosts on every machine.
        let (tx, mut rx) = watch::channel(Arc::new(Members::new(
            Vec::<String>::new(),
            "127.0.0.1:4317",
        )));
        let task = tokio::spawn(dns_loop(
            Arc::new(tx),
            vec!["10.9.9.9:4317".into()],
            "localhost:4317".into(),
            "127.0.0.1:4317".into(),
            Duration::from_millis(100),
        ));
        rx.changed().await.unwrap();
        let m = rx.borrow().clone();
        task.abort();
        assert!(
            m.names().contains(&"127.0.0.1:4317".to_owned()),
            "{:?}",
            m.names()
        );
        assert!(
            m.names().contains(&"10.9.9.9:4317".to_owned()),
            "fixed peers stay"
        );
        assert!(
            m.me().is_some(),
            "this collector found itself in the answer"
        );
    }
}
