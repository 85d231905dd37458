//! The open-file limit: every connection is a descriptor, so the soft limit
//! (often 1024) must not be what bounds a server; its connection limits
//! should.

use std::io;

use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};

/// The open-file limit before and after [`raise_nofile_limit`]
/// (`u64::MAX` for unlimited).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NofileLimit {
    /// The soft limit at start-up.
    pub soft_before: u64,
    /// The soft limit now.
    pub soft: u64,
    /// The hard limit.
    pub hard: u64,
}

/// Raises the soft open-file limit (RLIMIT_NOFILE) to the hard limit.
///
/// # Errors
///
/// When `setrlimit` refuses.
pub fn raise_nofile_limit() -> io::Result<NofileLimit> {
    let before = getrlimit(Resource::Nofile);
    let soft_before = before.current.unwrap_or(u64::MAX);
    let hard = before.maximum.unwrap_or(u64::MAX);
    if soft_before < hard {
        setrlimit(
            Resource::Nofile,
            Rlimit {
                current: before.maximum,
                maximum: before.maximum,
            },
        )?;
    }
    let now = getrlimit(Resource::Nofile);
    Ok(NofileLimit {
        soft_before,
        soft: now.current.unwrap_or(u64::MAX),
        hard,
    })
}

/// [`raise_nofile_limit`], logging both numbers (or why it failed): call
/// at start-up.
pub fn raise_nofile_limit_logged() -> Option<NofileLimit> {
    match raise_nofile_limit() {
        Ok(l) => {
            tracing::info!(
                soft_before = l.soft_before,
                soft = l.soft,
                hard = l.hard,
                "open-file limit"
            );
            Some(l)
        }
        Err(e) => {
            tracing::warn!(error = %e, "cannot raise the open-file limit");
            None
        }
    }
}

/// Sets both the soft and hard open-file limits to `n` (raising the hard
/// limit needs privilege: `CAP_SYS_RESOURCE`). For tests and tools that
/// open many connections.
///
/// # Errors
///
/// When `setrlimit` refuses.
pub fn set_nofile_limit(n: u64) -> io::Result<()> {
    setrlimit(
        Resource::Nofile,
        Rlimit {
            current: Some(n),
            maximum: Some(n),
        },
    )
    .map_err(io::Error::from)
}
