//! Why a policy file is refused: every message names a line.

/// A policy file that cannot be used. Its `Display` is the message to stop
/// start-up with (the caller adds the file's path).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ConfigError {
    /// Not YAML, or not of the policy file's shape: an unknown or
    /// unsupported policy type, a missing or unknown field, a value of the
    /// wrong type.
    #[error("line {line}, column {column}{}: {message}", in_field(field))]
    Syntax {
        /// 1-based line (0 when unknown).
        line: u64,
        /// 1-based column (0 when unknown).
        column: u64,
        /// The key whose value is wrong, when the message does not name it.
        field: Option<String>,
        /// What is wrong.
        message: String,
    },
    /// Well-formed, but a policy's settings are wrong: a bad regular
    /// expression, a percentage out of range, a name used twice or unknown.
    #[error("policy `{policy}`{}: {message}", at_line(*line))]
    Invalid {
        /// The policy's name, with its parents' (`parent / child`).
        policy: String,
        /// 1-based line of the offending value, or of the policy's name
        /// (0 when unknown, as for JSON read through serde_json).
        line: u64,
        /// What is wrong, starting with the field's name.
        message: String,
    },
    /// The file has no policies: every trace would be dropped.
    #[error("no policies: a sampling policy file needs at least one")]
    Empty,
}

fn in_field(field: &Option<String>) -> String {
    field
        .as_ref()
        .map(|f| format!(", `{f}`"))
        .unwrap_or_default()
}

fn at_line(line: u64) -> String {
    if line == 0 {
        String::new()
    } else {
        format!(" (line {line})")
    }
}

impl ConfigError {
    /// The line the error points at (0 when unknown).
    pub fn line(&self) -> u64 {
        match self {
            ConfigError::Syntax { line, .. } | ConfigError::Invalid { line, .. } => *line,
            ConfigError::Empty => 0,
        }
    }

    /// A parse error of `text`, with the key the error is in when the
    /// message does not already name one.
    pub(crate) fn from_yaml(e: &serde_saphyr::Error, text: &str) -> Self {
        let e = e.without_snippet();
        let (line, column) = e.location().map_or((0, 0), |l| (l.line(), l.column()));
        let mut message = e.to_string();
        // serde-saphyr ends its messages with the location we lead with.
        let suffix = format!(" at line {line}, column {column}");
        if let Some(stripped) = message.strip_suffix(&suffix) {
            message.truncate(stripped.len());
        }
        // serde-saphyr names Rust types; say what the file should hold.
        for (rust, yaml) in [
            ("invalid i64", "expected an integer"),
            ("invalid f64", "expected a number"),
            ("invalid bool", "expected true or false"),
        ] {
            if message == rust {
                message = yaml.to_string();
            }
        }
        let field = if message.contains("field `") {
            None
        } else {
            key_before(text, line, column)
        };
        ConfigError::Syntax {
            line,
            column,
            field,
            message,
        }
    }

    pub(crate) fn invalid(policy: &str, line: u64, message: impl Into<String>) -> Self {
        ConfigError::Invalid {
            policy: policy.to_string(),
            line,
            message: message.into(),
        }
    }
}

/// The mapping key nearest before `column` on `line` (1-based, in
/// characters): `threshold_ms` for an error at `abc` in
/// `latency: {threshold_ms: abc}` or in `  threshold_ms: abc`.
fn key_before(text: &str, line: u64, column: u64) -> Option<String> {
    let index = usize::try_from(line.checked_sub(1)?).ok()?;
    let row = text.lines().nth(index)?;
    let upto: String = row
        .chars()
        .take(usize::try_from(column.saturating_sub(1)).ok()?)
        .collect();
    let chars: Vec<char> = upto.chars().collect();
    // A key's colon is followed by a blank (YAML) or preceded by a quote
    // (JSON); a colon inside a value (`http://`) is neither.
    let colon = (0..chars.len()).rev().find(|&i| {
        chars[i] == ':'
            && (chars.get(i + 1).is_none_or(|c| c.is_whitespace())
                || (i > 0 && matches!(chars[i - 1], '"' | '\'')))
    })?;
    let key: String = chars[..colon]
        .iter()
        .copied()
        .filter(|c| !matches!(c, '"' | '\''))
        .rev()
        .take_while(|c| c.is_alphanumeric() || matches!(c, '_' | '-' | '.'))
        .collect::<Vec<_>>()
        .into_iter()
        .rev()
        .collect();
    (!key.is_empty()).then_some(key)
}
