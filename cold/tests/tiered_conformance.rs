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

mod all_cold {
    use super::*;

    async fn fixture() -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let store = moving(
            Arc::new(MemoryStorage::new(10_000)),
            dir_tier(dir.path()),
            1,
        );
        Fixture::with_guard(Arc::new(store), dir)
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
        let dir = tempfile::tempdir().unwrap();
        let store = moving(
            Arc::new(MemoryStorage::new(10_000)),
            dir_tier(dir.path()),
            2,
        );
        Fixture::with_guard(Arc::new(store), dir)
    }

    clew_storage::conformance_tests!(core fixture);
}
