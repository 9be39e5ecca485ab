//! Output formatting: tables, YAML/JSON, colour, field lookup, numeric address sort.
//!
//! Contract: pure functions. [`Table::render`] pads columns to the widest cell
//! (measured without colour codes) with three spaces between columns and no
//! trailing spaces; [`Colour`] colours state words only when enabled (stdout is a
//! terminal and `NO_COLOR` is unset). [`sort_addresses`] orders IPv4 addresses
//! numerically (unparsable ones last, by text).

use std::net::Ipv4Addr;

use chrono::{DateTime, Utc};
use serde_json::Value;

use crate::kinds::{Column, KindInfo};

/// Whether to colour output.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Colour(pub bool);

impl Colour {
    /// Colour when stdout is a terminal and `NO_COLOR` is unset.
    pub fn detect() -> Self {
        use std::io::IsTerminal;
        Colour(std::io::stdout().is_terminal() && std::env::var_os("NO_COLOR").is_none())
    }

    /// Colours a state-like word: green for good, red for bad, yellow for in-between.
    pub fn state(self, word: &str) -> String {
        if !self.0 {
            return word.to_string();
        }
        let code = match word {
            "created" | "running" | "complete" | "True" | "held" | "on" => "32",
            "error" | "crashed" | "False" | "missing" | "abort" | "deleted" => "31",
            "initial" | "preflight" | "creating" | "queued" | "executing" | "delete_wait"
            | "paused" | "halo" | "Unknown" | "stopping" => "33",
            _ => return word.to_string(),
        };
        format!("\x1b[{code}m{word}\x1b[0m")
    }

    /// Bold (headers).
    pub fn bold(self, text: &str) -> String {
        if self.0 {
            format!("\x1b[1m{text}\x1b[0m")
        } else {
            text.to_string()
        }
    }
}

/// The printable width of a cell (without ANSI colour codes).
pub fn visible_width(cell: &str) -> usize {
    let mut width = 0;
    let mut in_escape = false;
    for c in cell.chars() {
        if in_escape {
            if c == 'm' {
                in_escape = false;
            }
        } else if c == '\x1b' {
            in_escape = true;
        } else {
            width += 1;
        }
    }
    width
}

/// A simple aligned table.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Table {
    /// Column headers.
    pub headers: Vec<String>,
    /// Rows (each as long as `headers`).
    pub rows: Vec<Vec<String>>,
}

impl Table {
    /// A table with these headers.
    pub fn new(headers: &[&str]) -> Self {
        Table {
            headers: headers.iter().map(ToString::to_string).collect(),
            rows: Vec::new(),
        }
    }

    /// Adds a row.
    pub fn push(&mut self, row: Vec<String>) {
        self.rows.push(row);
    }

    fn widths(&self) -> Vec<usize> {
        let mut widths: Vec<usize> = self.headers.iter().map(|h| visible_width(h)).collect();
        for row in &self.rows {
            for (i, cell) in row.iter().enumerate() {
                if let Some(w) = widths.get_mut(i) {
                    *w = (*w).max(visible_width(cell));
                }
            }
        }
        widths
    }

    /// Renders one line with the given widths.
    pub fn line(cells: &[String], widths: &[usize]) -> String {
        let mut out = String::new();
        for (i, cell) in cells.iter().enumerate() {
            let last = i + 1 == cells.len();
            out.push_str(cell);
            if !last {
                let pad = widths
                    .get(i)
                    .copied()
                    .unwrap_or(0)
                    .saturating_sub(visible_width(cell));
                out.push_str(&" ".repeat(pad + 3));
            }
        }
        out.trim_end().to_string()
    }

    /// The table as text, one line per row, header first, ending in a newline.
    pub fn render(&self) -> String {
        let widths = self.widths();
        let mut out = Table::line(&self.headers, &widths);
        out.push('\n');
        for row in &self.rows {
            out.push_str(&Table::line(row, &widths));
            out.push('\n');
        }
        out
    }
}

/// Looks up a dotted path (`status.interfaces.0.ipv4`; `-1` is an array's last
/// item, `status.versions.-1.index`) in an object.
pub fn lookup<'a>(object: &'a Value, path: &str) -> Option<&'a Value> {
    let mut current = object;
    for part in path.split('.') {
        current = match current {
            Value::Object(map) => map.get(part)?,
            Value::Array(items) if part == "-1" => items.last()?,
            Value::Array(items) => items.get(part.parse::<usize>().ok()?)?,
            _ => return None,
        };
    }
    Some(current)
}

/// A value as a table cell (`<none>` when absent or null).
pub fn cell(value: Option<&Value>) -> String {
    match value {
        None | Some(Value::Null) => "<none>".into(),
        Some(Value::String(s)) if s.is_empty() => "<none>".into(),
        Some(Value::String(s)) => s.clone(),
        Some(Value::Array(items)) if items.is_empty() => "<none>".into(),
        Some(other) => other.to_string(),
    }
}

/// A duration as kubectl prints ages: `45s`, `12m`, `5h`, `3d`.
pub fn short_duration(seconds: i64) -> String {
    let s = seconds.max(0);
    if s < 120 {
        format!("{s}s")
    } else if s < 120 * 60 {
        format!("{}m", s / 60)
    } else if s < 48 * 3600 {
        format!("{}h", s / 3600)
    } else {
        format!("{}d", s / 86400)
    }
}

/// The age of an object from `metadata.creationTimestamp`.
pub fn age(object: &Value, now: DateTime<Utc>) -> String {
    object
        .pointer("/metadata/creationTimestamp")
        .and_then(Value::as_str)
        .and_then(|t| DateTime::parse_from_rfc3339(t).ok())
        .map_or_else(
            || "<unknown>".into(),
            |t| short_duration((now - t.with_timezone(&Utc)).num_seconds()),
        )
}

/// Which columns to show.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TableStyle {
    /// `-o wide`.
    pub wide: bool,
    /// Show the namespace column (listing across namespaces).
    pub namespace: bool,
}

/// The headers of a kind's table.
pub fn headers(kind: &KindInfo, style: TableStyle) -> Vec<String> {
    let mut h = Vec::new();
    if style.namespace && kind.namespaced {
        h.push("NAMESPACE".to_string());
    }
    h.push("NAME".to_string());
    let extra: &[Column] = if style.wide { kind.wide } else { &[] };
    h.extend(
        kind.columns
            .iter()
            .chain(extra)
            .map(|c| c.header.to_string()),
    );
    h.push("AGE".to_string());
    h
}

/// One object's row.
pub fn row(
    kind: &KindInfo,
    object: &Value,
    style: TableStyle,
    now: DateTime<Utc>,
    colour: Colour,
) -> Vec<String> {
    let mut r = Vec::new();
    if style.namespace && kind.namespaced {
        r.push(cell(object.pointer("/metadata/namespace")));
    }
    r.push(cell(object.pointer("/metadata/name")));
    let extra: &[Column] = if style.wide { kind.wide } else { &[] };
    for column in kind.columns.iter().chain(extra) {
        let text = cell(lookup(object, column.path));
        r.push(colour.state(&text));
    }
    r.push(age(object, now));
    r
}

/// Sorts rows by an IPv4 address (key function), numerically; unparsable last.
pub fn sort_addresses<T>(items: &mut [T], address: impl Fn(&T) -> &str) {
    items.sort_by(|a, b| {
        let (a, b) = (address(a), address(b));
        match (a.parse::<Ipv4Addr>(), b.parse::<Ipv4Addr>()) {
            (Ok(x), Ok(y)) => x.cmp(&y),
            (Ok(_), Err(_)) => std::cmp::Ordering::Less,
            (Err(_), Ok(_)) => std::cmp::Ordering::Greater,
            (Err(_), Err(_)) => a.cmp(b),
        }
    });
}

/// Words YAML 1.1 readers (PyYAML, go-yaml v2, kubectl) take as booleans.
const YAML11_BOOLS: &[&str] = &[
    "y", "Y", "yes", "Yes", "YES", "n", "N", "no", "No", "NO", "on", "On", "ON", "off", "Off",
    "OFF",
];

/// Quotes plain scalars that YAML 1.1 would read as booleans (`powerState: on`), so
/// what `sf` prints means the same to every YAML reader. serde_norway writes real
/// booleans as `true`/`false`, so such a plain word is always a string.
fn quote_yaml11_bools(yaml: &str) -> String {
    let mut out = String::with_capacity(yaml.len());
    // The indentation of the line that opened a block scalar (`|`, `|-`, `>`...):
    // deeper lines are its text and stay untouched.
    let mut block: Option<usize> = None;
    for line in yaml.lines() {
        let indent = line.len() - line.trim_start().len();
        if let Some(opener) = block {
            if line.trim().is_empty() || indent > opener {
                out.push_str(line);
                out.push('\n');
                continue;
            }
            block = None;
        }
        let end = line.trim_end();
        if ["|", "|-", "|+", ">", ">-", ">+"]
            .iter()
            .any(|m| end.ends_with(&format!(" {m}")) || end == *m)
        {
            block = Some(indent);
        }
        let split = line.rfind(": ").map(|i| i + 2).or_else(|| {
            let trimmed = line.trim_start();
            trimmed
                .starts_with("- ")
                .then(|| line.len() - trimmed.len() + 2)
        });
        match split {
            Some(at) if YAML11_BOOLS.contains(&&line[at..]) => {
                out.push_str(&line[..at]);
                out.push('\'');
                out.push_str(&line[at..]);
                out.push('\'');
            }
            _ => out.push_str(line),
        }
        out.push('\n');
    }
    out
}

/// An object as YAML (a multi-document stream for several).
pub fn to_yaml(objects: &[Value]) -> Result<String, serde_norway::Error> {
    let mut out = String::new();
    for (i, object) in objects.iter().enumerate() {
        if i > 0 {
            out.push_str("---\n");
        }
        out.push_str(&quote_yaml11_bools(&serde_norway::to_string(object)?));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kinds::lookup as kind;
    use serde_json::json;

    #[test]
    fn tables_align_and_trim() {
        let mut t = Table::new(&["NAME", "STATE"]);
        t.push(vec!["a-long-name".into(), "created".into()]);
        t.push(vec!["b".into(), "<none>".into()]);
        assert_eq!(
            t.render(),
            "NAME          STATE\na-long-name   created\nb             <none>\n"
        );
    }

    #[test]
    fn colour_codes_do_not_count_for_width() {
        let c = Colour(true);
        let mut t = Table::new(&["NAME", "STATE", "X"]);
        t.push(vec!["a".into(), c.state("error"), "1".into()]);
        t.push(vec!["b".into(), "created".into(), "2".into()]);
        let text = t.render();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[1], "a      \x1b[31merror\x1b[0m     1");
        assert_eq!(lines[2], "b      created   2");
        assert_eq!(Colour(false).state("error"), "error");
    }

    #[test]
    fn instance_rows_use_the_kind_columns() {
        let inst = kind("instance").expect("kind");
        let object = json!({
            "metadata": {"name": "web-1", "namespace": "demo", "creationTimestamp": "2026-01-01T00:00:00Z"},
            "spec": {"cpus": 2, "memory": 1024, "powerState": "on"},
            "status": {"state": "created", "powerState": "running", "node": "hv-1",
                       "interfaces": [{"ipv4": "10.0.0.7"}]}
        });
        let now: DateTime<Utc> = "2026-01-01T00:05:00Z".parse().expect("time");
        let style = TableStyle {
            wide: true,
            namespace: true,
        };
        assert_eq!(
            headers(inst, style),
            [
                "NAMESPACE",
                "NAME",
                "STATE",
                "POWER",
                "NODE",
                "CPUS",
                "MEMORY",
                "IPV4",
                "WANT",
                "AGE"
            ]
        );
        assert_eq!(
            row(inst, &object, style, now, Colour(false)),
            [
                "demo", "web-1", "created", "running", "hv-1", "2", "1024", "10.0.0.7", "on", "5m"
            ]
        );
        let narrow = TableStyle {
            wide: false,
            namespace: false,
        };
        assert_eq!(
            row(
                inst,
                &json!({"metadata": {"name": "x"}}),
                narrow,
                now,
                Colour(false)
            ),
            ["x", "<none>", "<none>", "<none>", "<unknown>"]
        );
    }

    #[test]
    fn addresses_sort_numerically() {
        let mut a = vec![
            "10.0.0.10",
            "10.0.0.9",
            "bogus",
            "10.0.0.100",
            "9.255.255.255",
            "10.0.0.1",
        ];
        sort_addresses(&mut a, |s| s);
        assert_eq!(
            a,
            [
                "9.255.255.255",
                "10.0.0.1",
                "10.0.0.9",
                "10.0.0.10",
                "10.0.0.100",
                "bogus"
            ]
        );
    }

    #[test]
    fn yaml_quotes_words_yaml11_reads_as_booleans() {
        let v = json!({"spec": {"powerState": "on", "flag": true, "list": ["off", "x"], "name": "on-call"}});
        let text = to_yaml(std::slice::from_ref(&v)).expect("yaml");
        assert!(text.contains("powerState: 'on'"), "{text}");
        assert!(text.contains("- 'off'"), "{text}");
        assert!(text.contains("flag: true"), "{text}");
        assert!(text.contains("name: on-call"), "{text}");
        let back: Value = serde_norway::from_str(&text).expect("parse");
        assert_eq!(back, v);
        let block = json!({"text": "a: on\nb\n", "after": "off"});
        let text = to_yaml(std::slice::from_ref(&block)).expect("yaml");
        assert!(text.contains("a: on\n"), "block text untouched: {text}");
        assert!(text.contains("after: 'off'"), "{text}");
        assert_eq!(
            serde_norway::from_str::<Value>(&text).expect("parse"),
            block
        );
    }

    #[test]
    fn durations() {
        assert_eq!(short_duration(5), "5s");
        assert_eq!(short_duration(119), "119s");
        assert_eq!(short_duration(600), "10m");
        assert_eq!(short_duration(3 * 3600), "3h");
        assert_eq!(short_duration(5 * 86400), "5d");
    }

    #[test]
    fn lookups_walk_objects_and_arrays() {
        let v = json!({"a": {"b": [{"c": 1}]}});
        assert_eq!(lookup(&v, "a.b.0.c"), Some(&json!(1)));
        assert_eq!(lookup(&v, "a.b.1.c"), None);
        assert_eq!(cell(lookup(&v, "a.x")), "<none>");
        let v = json!({"versions": [{"index": 1}, {"index": 2}], "none": []});
        assert_eq!(lookup(&v, "versions.-1.index"), Some(&json!(2)));
        assert_eq!(cell(lookup(&v, "none.-1.index")), "<none>");
    }
}
