//! Process supervision shared by `clew-local` (the all-in-one) and the
//! multi-process end-to-end tests: start clew's real binaries on loopback,
//! wait for them to be ready, stop them gracefully or with `kill -9`, and
//! read the query API.

pub mod http;
pub mod jaeger;
pub mod proc;
pub mod proxy;

pub use proc::{Proc, bin_dir, free_port};
