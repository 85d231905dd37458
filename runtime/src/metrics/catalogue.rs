//! The check that keeps `docs/METRICS.md` true (feature `testing`): each
//! section holds one table, `| metric | type | labels | meaning |`, whose
//! rows must be exactly the metrics of one registry.

use std::collections::BTreeMap;
use std::path::PathBuf;

use prometheus::proto::MetricType;

use super::{Described, Kind, Registry};

/// One row of a catalogue table.
#[derive(Debug)]
struct Row {
    kind: String,
    labels: Vec<String>,
}

/// Panics, listing every difference, unless the section `section` of the
/// workspace's `docs/METRICS.md` lists exactly the metrics of `registry`,
/// each with its type and labels.
pub fn catalogue_check(section: &str, registry: &Registry) {
    let path = catalogue_path();
    let markdown = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    if let Err(problems) = check_catalogue(&markdown, section, registry) {
        panic!(
            "{} (section `{section}`) disagrees with the registry:\n  {}",
            path.display(),
            problems.join("\n  ")
        );
    }
}

fn catalogue_path() -> PathBuf {
    // The runtime variable (set by cargo and nextest) names the crate under
    // test, so a test binary built in another checkout reads its own; every
    // crate sits in the workspace root.
    let dir = std::env::var("CARGO_MANIFEST_DIR")
        .unwrap_or_else(|_| env!("CARGO_MANIFEST_DIR").to_string());
    PathBuf::from(dir).join("../docs/METRICS.md")
}

/// The differences between section `section` of the catalogue `markdown`
/// and the metrics of `registry`, one sentence each.
pub fn check_catalogue(
    markdown: &str,
    section: &str,
    registry: &Registry,
) -> Result<(), Vec<String>> {
    let rows = parse_section(markdown, section).map_err(|e| vec![e])?;
    let registered = registry.described();
    let mut problems = gathered_disagreements(registry, &registered);
    for d in &registered {
        let Some(row) = rows.get(&d.name) else {
            problems.push(format!("`{}` is registered but has no row", d.name));
            continue;
        };
        if row.kind != d.kind.as_str() {
            problems.push(format!(
                "`{}` is a {}, its row says {}",
                d.name,
                d.kind.as_str(),
                row.kind
            ));
        }
        if sorted(&row.labels) != sorted(&d.labels) {
            problems.push(format!(
                "`{}` has labels {:?}, its row says {:?}",
                d.name, d.labels, row.labels
            ));
        }
    }
    for name in rows.keys() {
        if !registered.iter().any(|d| &d.name == name) {
            problems.push(format!("row `{name}` is not registered"));
        }
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(problems)
    }
}

/// What Prometheus gathers (families with samples) against what the
/// registry recorded at registration.
fn gathered_disagreements(registry: &Registry, registered: &[Described]) -> Vec<String> {
    let mut problems = Vec::new();
    for family in registry.gather() {
        let name = family.name();
        let kind = match family.get_field_type() {
            MetricType::COUNTER => Some(Kind::Counter),
            MetricType::GAUGE => Some(Kind::Gauge),
            MetricType::HISTOGRAM => Some(Kind::Histogram),
            _ => None,
        };
        let Some(d) = registered.iter().find(|d| d.name == name) else {
            problems.push(format!("`{name}` is gathered but was not registered here"));
            continue;
        };
        if kind != Some(d.kind) {
            problems.push(format!(
                "`{name}` is gathered as {kind:?}, not {:?}",
                d.kind
            ));
        }
        for metric in family.get_metric() {
            let labels: Vec<String> = metric
                .get_label()
                .iter()
                .map(|l| l.name().to_string())
                .filter(|l| !registry.const_labels().contains(l))
                .collect();
            if sorted(&labels) != sorted(&d.labels) {
                problems.push(format!("`{name}` is gathered with labels {labels:?}"));
            }
        }
    }
    problems
}

fn sorted(labels: &[String]) -> Vec<&str> {
    let mut v: Vec<&str> = labels.iter().map(String::as_str).collect();
    v.sort_unstable();
    v
}

/// The rows of the table under the `## <section>` heading (the heading may
/// go on after the section's name: `## connections (every server)`).
fn parse_section(markdown: &str, section: &str) -> Result<BTreeMap<String, Row>, String> {
    let mut lines = markdown.lines().skip_while(|l| !is_heading(l, section));
    if lines.next().is_none() {
        return Err(format!("no `## {section}` heading"));
    }
    let mut rows = BTreeMap::new();
    for line in lines.take_while(|l| !l.starts_with("## ")) {
        let Some((name, row)) = parse_row(line)? else {
            continue;
        };
        if rows.insert(name.clone(), row).is_some() {
            return Err(format!("`{name}` has two rows"));
        }
    }
    if rows.is_empty() {
        return Err(format!("section `{section}` has no table rows"));
    }
    Ok(rows)
}

fn is_heading(line: &str, section: &str) -> bool {
    let Some(title) = line.strip_prefix("## ") else {
        return false;
    };
    let title = title.trim().to_ascii_lowercase();
    let section = section.to_ascii_lowercase();
    title == section || title.starts_with(&format!("{section} "))
}

/// One metric's row, `None` for lines outside the table, the header and
/// the separator.
fn parse_row(line: &str) -> Result<Option<(String, Row)>, String> {
    let Some(inner) = line
        .trim()
        .strip_prefix('|')
        .and_then(|l| l.strip_suffix('|'))
    else {
        return Ok(None);
    };
    let cells: Vec<&str> = inner.split('|').map(str::trim).collect();
    let [name, kind, labels, meaning] = cells[..] else {
        return Err(format!("row without 4 cells: {line}"));
    };
    let is_rule = name.chars().all(|c| c == '-' || c == ':');
    if name == "metric" || is_rule {
        return Ok(None);
    }
    if meaning.is_empty() {
        return Err(format!("`{name}` has no meaning"));
    }
    let labels = match labels {
        "" | "—" | "-" => Vec::new(),
        l => l
            .split(',')
            .map(|l| l.trim().trim_matches('`').to_string())
            .collect(),
    };
    let row = Row {
        kind: kind.to_ascii_lowercase(),
        labels,
    };
    Ok(Some((name.trim_matches('`').to_string(), row)))
}
