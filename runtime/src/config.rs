//! Configuration files, layered under flags and environment variables.
//!
//! A file is a YAML mapping whose keys are the binary's long flag names
//! (`grpc-addr`, or `grpc_addr`) and whose values are what the flag would
//! take: scalars, or lists for flags that take several values. Precedence:
//! a flag on the command line, then its environment variable, then the
//! file, then the default — so one file can hold a deployment's settings
//! and a single variable can still override one of them. An unknown key, a
//! nested value or an unreadable file is an error that names the problem.
//!
//! The file is named by `--config <path>` (or `--config=<path>`) or by the
//! environment variable the binary gives (e.g. `CLEW_CONFIG`).

use std::ffi::OsString;
use std::path::PathBuf;

/// Why a configuration file was refused.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The file is not a YAML mapping of flag names to values.
    #[error("config file {path}: {message}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
}

fn scalar(v: &serde_json::Value) -> Option<String> {
    match v {
        serde_json::Value::String(s) => Some(s.clone()),
        serde_json::Value::Number(n) => Some(n.to_string()),
        serde_json::Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

/// The command line `args` (program name first) with the settings of the
/// configuration file, if one is named, added for every flag that neither
/// the command line nor its environment variable sets. Pass the result to
/// `Parser::parse_from`.
///
/// # Errors
///
/// [`ConfigError`] when the named file cannot be read, is not a mapping,
/// names a flag `C` does not have, or gives a flag a nested value.
pub fn args_with_file<C: clap::CommandFactory>(
    args: Vec<OsString>,
    file_env: &str,
) -> Result<Vec<OsString>, ConfigError> {
    let strs: Vec<String> = args
        .iter()
        .map(|a| a.to_string_lossy().into_owned())
        .collect();
    let mut path = None;
    for (i, a) in strs.iter().enumerate() {
        if a == "--config" {
            path = strs.get(i + 1).cloned();
        } else if let Some(p) = a.strip_prefix("--config=") {
            path = Some(p.to_string());
        }
    }
    let path = match path.or_else(|| std::env::var(file_env).ok().filter(|p| !p.is_empty())) {
        Some(p) => PathBuf::from(p),
        None => return Ok(args),
    };
    let text = std::fs::read_to_string(&path).map_err(|source| ConfigError::Read {
        path: path.clone(),
        source,
    })?;
    let invalid = |message: String| ConfigError::Invalid {
        path: path.clone(),
        message,
    };
    if text.trim().is_empty() {
        return Ok(args);
    }
    let doc: serde_json::Value =
        serde_saphyr::from_str(&text).map_err(|e| invalid(e.to_string()))?;
    let map = match doc {
        serde_json::Value::Object(m) => m,
        serde_json::Value::Null => return Ok(args),
        _ => return Err(invalid("expected a mapping of flag names to values".into())),
    };
    let cmd = C::command();
    let mut out = args;
    for (k, v) in map {
        let key = k.replace('_', "-");
        let arg = cmd
            .get_arguments()
            .find(|a| a.get_long() == Some(key.as_str()) && key != "config")
            .ok_or_else(|| invalid(format!("unknown setting {key:?} (see --help)")))?;
        let on_cli = strs
            .iter()
            .any(|a| a == &format!("--{key}") || a.starts_with(&format!("--{key}=")));
        let in_env = arg
            .get_env()
            .is_some_and(|e| std::env::var_os(e).is_some_and(|v| !v.is_empty()));
        if on_cli || in_env {
            continue;
        }
        let values: Vec<String> = match &v {
            serde_json::Value::Array(items) => items
                .iter()
                .map(|i| {
                    scalar(i).ok_or_else(|| invalid(format!("{key}: list items must be scalars")))
                })
                .collect::<Result<_, _>>()?,
            other => {
                vec![scalar(other).ok_or_else(|| invalid(format!("{key}: expected a value")))?]
            }
        };
        let takes_value = arg.get_action().takes_values();
        for value in values {
            if takes_value {
                out.push(format!("--{key}={value}").into());
            } else if value == "true" {
                out.push(format!("--{key}").into());
            } else if value != "false" {
                return Err(invalid(format!("{key}: expected true or false")));
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Debug, Parser)]
    struct Demo {
        #[arg(long)]
        config: Option<PathBuf>,
        #[arg(long, env = "CLEW_TEST_RUNTIME_ADDR", default_value = "0.0.0.0:1")]
        addr: String,
        #[arg(long, default_value_t = 1)]
        workers: u32,
        #[arg(long, value_delimiter = ',')]
        peers: Vec<String>,
        #[arg(long)]
        verbose: bool,
    }

    fn parse(file: &str, cli: &[&str]) -> Result<Demo, ConfigError> {
        let dir = std::env::temp_dir().join(format!("clew-runtime-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join(format!("{}.yaml", cli.len() + file.len()));
        std::fs::write(&path, file).unwrap();
        let mut args: Vec<OsString> =
            vec!["demo".into(), format!("--config={}", path.display()).into()];
        args.extend(cli.iter().map(OsString::from));
        let args = args_with_file::<Demo>(args, "CLEW_TEST_RUNTIME_CONFIG")?;
        Ok(Demo::parse_from(args))
    }

    #[test]
    fn file_fills_what_flags_leave_unset() {
        let d = parse(
            "addr: 127.0.0.1:9\nworkers: 4\npeers: [a:1, b:2]\nverbose: true\n",
            &["--workers", "8"],
        )
        .unwrap();
        assert_eq!(d.addr, "127.0.0.1:9");
        assert_eq!(d.workers, 8, "the flag wins over the file");
        assert_eq!(d.peers, vec!["a:1", "b:2"]);
        assert!(d.verbose);
    }

    #[test]
    fn snake_case_keys_and_empty_files_work() {
        let d = parse("workers: 3\n", &[]).unwrap();
        assert_eq!(d.workers, 3);
        let d = parse("", &[]).unwrap();
        assert_eq!(d.workers, 1);
    }

    #[test]
    fn unknown_keys_and_bad_values_are_clear_errors() {
        let e = parse("wrokers: 3\n", &[]).unwrap_err().to_string();
        assert!(e.contains("unknown setting \"wrokers\""), "{e}");
        let e = parse("workers: {a: 1}\n", &[]).unwrap_err().to_string();
        assert!(e.contains("workers: expected a value"), "{e}");
        let e = parse("- just\n- a list\n", &[]).unwrap_err().to_string();
        assert!(e.contains("expected a mapping"), "{e}");
        let e = parse("verbose: maybe\n", &[]).unwrap_err().to_string();
        assert!(e.contains("true or false"), "{e}");
    }

    #[test]
    fn a_missing_file_names_the_path() {
        let args = vec![
            OsString::from("demo"),
            "--config=/nonexistent/clew.yaml".into(),
        ];
        let e = args_with_file::<Demo>(args, "CLEW_TEST_RUNTIME_CONFIG")
            .unwrap_err()
            .to_string();
        assert!(e.contains("/nonexistent/clew.yaml"), "{e}");
    }
}
