//! Static bearer tokens from a file, one a line, re-read when it changes.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Weak};
use std::time::Duration;

use parking_lot::RwLock;
use ring::digest::{SHA256, digest};

use super::AuthError;

/// The SHA-256 digests of the accepted tokens. Tokens are compared by
/// digest, every digest every time, so a comparison takes the same time
/// whichever token (and whatever length) was presented.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(super) struct TokenSet(Vec<[u8; 32]>);

fn sha256(token: &str) -> [u8; 32] {
    let mut out = [0u8; 32];
    out.copy_from_slice(digest(&SHA256, token.as_bytes()).as_ref());
    out
}

impl TokenSet {
    /// One token a line; blank lines and lines starting with `#` are
    /// skipped, surrounding whitespace trimmed.
    pub(super) fn parse(text: &str) -> Self {
        TokenSet(
            text.lines()
                .map(str::trim)
                .filter(|l| !l.is_empty() && !l.starts_with('#'))
                .map(sha256)
                .collect(),
        )
    }

    pub(super) fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether `token` is one of the set, in time independent of which.
    pub(super) fn contains(&self, token: &str) -> bool {
        let presented = sha256(token);
        let mut found = 0u8;
        for known in &self.0 {
            let mut diff = 0u8;
            for (a, b) in known.iter().zip(presented.iter()) {
                diff |= a ^ b;
            }
            // 1 when equal, without a branch on the secret.
            found |= u8::from(diff == 0);
        }
        found != 0
    }
}

/// The token file and the set last read from it.
#[derive(Debug)]
pub(super) struct TokenFile {
    path: PathBuf,
    set: RwLock<Arc<TokenSet>>,
}

impl TokenFile {
    /// Reads `path`; start-up stops when it cannot be read.
    pub(super) async fn open(path: &Path) -> Result<Arc<Self>, AuthError> {
        let text = read(path).await?;
        let set = TokenSet::parse(&text);
        if set.len() == 0 {
            tracing::warn!(file = %path.display(), "the token file holds no token: every token is refused");
        }
        Ok(Arc::new(TokenFile {
            path: path.to_owned(),
            set: RwLock::new(Arc::new(set)),
        }))
    }

    pub(super) fn current(&self) -> Arc<TokenSet> {
        Arc::clone(&self.set.read())
    }

    /// Reads the file again; a failed read keeps the last good set.
    async fn reload(&self) {
        match read(&self.path).await {
            Ok(text) => {
                let set = TokenSet::parse(&text);
                if *self.current() != set {
                    tracing::info!(file = %self.path.display(), tokens = set.len(), "token file changed: reloaded");
                    *self.set.write() = Arc::new(set);
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "re-reading the token file failed; keeping the tokens read before");
            }
        }
    }

    /// Re-reads the file every `every` while the set is in use (a
    /// Kubernetes Secret is updated by swapping a symlink, so the content
    /// is compared, not the modification time).
    pub(super) fn watch(this: &Arc<Self>, every: Duration) {
        let weak: Weak<Self> = Arc::downgrade(this);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.tick().await;
            loop {
                tick.tick().await;
                let Some(file) = weak.upgrade() else { return };
                file.reload().await;
            }
        });
    }
}

async fn read(path: &Path) -> Result<String, AuthError> {
    tokio::fs::read_to_string(path)
        .await
        .map_err(|source| AuthError::Read {
            path: path.to_owned(),
            source,
        })
}
