#![allow(clippy::unwrap_used, clippy::expect_used)]
//! The storage conformance suite, unchanged, on hot storage in front of a
//! cold tier: once with everything moved cold after every store (over a
//! memory store and over a real redis-server), once with every other
//! store moved, so traces are split across the tiers.

mod common;

use std::sync::Arc;

use clew_storage::conformance::Fixture;
use clew_storage::memory::MemoryStorage;
use common::moving::{dir_tier, moving};

/// A memory store in front of a directory tier, moved every `every`-th
/// store.
fn over_memory(every: u64) -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let hot = Arc::new(MemoryStorage::new(10_000));
    let store = moving(hot, dir_tier(dir.path()), every);
    Fixture::with_guard(Arc::new(store), dir)
}

mod all_cold {
    use super::*;

    async fn fixture() -> Fixture {
        over_memory(1)
    }

    clew_storage::conformance_tests!(core fixture);
}

mod all_cold_over_redis {
    use super::*;
    use clew_storage::redis::{RedisConfig, RedisStorage};
    use clew_storage::testing::RedisServer;

    async fn fixture() -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let server = RedisServer::start(false).await;
        let hot = RedisStorage::connect(RedisConfig {
            url: server.url(),
            ..RedisConfig::default()
        })
        .await
        .unwrap();
        let store = moving(Arc::new(hot), dir_tier(dir.path()), 1);
        Fixture::with_guard(Arc::new(store), (dir, server))
    }

    clew_storage::conformance_tests!(core fixture);
}

mod split_across_tiers {
    use super::*;

    async fn fixture() -> Fixture {
        over_memory(2)
    }

    clew_storage::conformance_tests!(core fixture);
}
