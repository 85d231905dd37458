//! Process supervision shared by `clew-local` (the all-in-one) and the
//! multi-process end-to-end tests: start clew's real binaries on loopback,
//! wait for them to be ready, stop them gracefully or with `kill -9`, and
//! read the query API; and the chaos tests' tools: network namespaces,
//! blackholes, small disks, and span load whose every span is checked.

pub mod chaos;
pub mod http;
pub mod jaeger;
pub mod netns;
pub mod proc;
pub mod proxy;
pub mod spanload;

pub use proc::{Proc, bin_dir, free_port};
