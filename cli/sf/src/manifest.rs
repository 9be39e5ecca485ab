//! Reading `-f FILE|DIR|-` into validated objects before anything is sent.
//!
//! Contract: [`load`] reads every source (a file, every `*.yaml|*.yml|*.json` file of a
//! directory in name order, or stdin for `-`), splits multi-document YAML on `---`
//! lines, and returns every object — or, if ANY document is bad, every problem found,
//! each as `FILE:LINE[:COLUMN]: message`, and nothing at all. A `kind: List` document
//! contributes its `items`. Checks: YAML syntax; `apiVersion` is
//! `shakenfist.io/v1alpha1`; `kind` is known; `metadata.name` is set; the object decodes
//! as its typed form from `sf-schema` (unknown or mistyped fields, with their line);
//! `sf-schema`'s validator for the kind; no object twice. Objects without a namespace
//! get the default one (namespaced kinds only).

use std::io::Read;
use std::path::Path;

use serde::de::DeserializeOwned;
use serde_json::Value;
use sf_schema::FieldError;

use crate::kinds::{self, API_VERSION, KindInfo};

/// One object read from a manifest.
#[derive(Debug, Clone)]
pub struct Document {
    /// Where it came from (`FILE:LINE`).
    pub origin: String,
    /// Its kind.
    pub kind: &'static KindInfo,
    /// `metadata.name`.
    pub name: String,
    /// `metadata.namespace` (filled in for namespaced kinds).
    pub namespace: String,
    /// The object as JSON.
    pub object: Value,
}

impl Document {
    /// `kind/name` as `sf` prints it.
    pub fn display(&self) -> String {
        format!("{}/{}", self.kind.singular(), self.name)
    }
}

/// Manifest problems; each line is one problem with its location.
#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    /// One or more documents are invalid; nothing was applied.
    #[error("{}", .problems.join("\n"))]
    Invalid {
        /// Every problem, `FILE:LINE: message`.
        problems: Vec<String>,
    },
    /// A source could not be read.
    #[error("reading {path}: {source}")]
    Read {
        /// The source.
        path: String,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// No objects in the sources.
    #[error("no objects found in {0}")]
    Empty(String),
}

/// Reads and validates every source.
pub fn load(sources: &[String], default_namespace: &str) -> Result<Vec<Document>, ManifestError> {
    let mut texts = Vec::new();
    for source in sources {
        read_source(source, &mut texts)?;
    }
    let mut problems = Vec::new();
    let mut docs = Vec::new();
    for (name, text) in &texts {
        parse_text(name, text, default_namespace, &mut docs, &mut problems);
    }
    let mut seen = std::collections::HashMap::new();
    for doc in &docs {
        let key = (doc.kind.kind, doc.namespace.clone(), doc.name.clone());
        if let Some(first) = seen.insert(key, doc.origin.clone()) {
            problems.push(format!(
                "{}: {} appears twice (first at {first})",
                doc.origin,
                doc.display()
            ));
        }
    }
    if !problems.is_empty() {
        return Err(ManifestError::Invalid { problems });
    }
    if docs.is_empty() {
        return Err(ManifestError::Empty(sources.join(", ")));
    }
    Ok(docs)
}

fn read_source(source: &str, out: &mut Vec<(String, String)>) -> Result<(), ManifestError> {
    let read_err = |source_err| ManifestError::Read {
        path: source.to_string(),
        source: source_err,
    };
    if source == "-" {
        let mut text = String::new();
        std::io::stdin()
            .read_to_string(&mut text)
            .map_err(read_err)?;
        out.push(("<stdin>".to_string(), text));
        return Ok(());
    }
    let path = Path::new(source);
    if path.is_dir() {
        let mut entries: Vec<_> = std::fs::read_dir(path)
            .map_err(read_err)?
            .filter_map(Result::ok)
            .map(|e| e.path())
            .filter(|p| {
                p.is_file()
                    && p.extension()
                        .and_then(|e| e.to_str())
                        .is_some_and(|e| matches!(e, "yaml" | "yml" | "json"))
            })
            .collect();
        entries.sort();
        for entry in entries {
            let text = std::fs::read_to_string(&entry).map_err(|e| ManifestError::Read {
                path: entry.display().to_string(),
                source: e,
            })?;
            out.push((entry.display().to_string(), text));
        }
        return Ok(());
    }
    let text = std::fs::read_to_string(path).map_err(read_err)?;
    out.push((source.to_string(), text));
    Ok(())
}

/// Splits YAML text into documents: `(first line number, text)`. Separator lines are
/// blanked (kept as empty lines) so line numbers inside a chunk stay absolute when
/// offset by the chunk's first line.
pub fn split_documents(text: &str) -> Vec<(usize, String)> {
    let mut chunks = Vec::new();
    let mut start = 1;
    let mut current = String::new();
    for (i, line) in text.lines().enumerate() {
        let lineno = i + 1;
        let is_separator = line == "---" || line.starts_with("--- ") || line.starts_with("---\t");
        if is_separator {
            chunks.push((start, std::mem::take(&mut current)));
            start = lineno;
            // Keep inline content after the marker at its columns.
            current.push_str(&format!("   {}\n", &line[3..]));
            continue;
        }
        if line == "..." {
            current.push('\n');
            continue;
        }
        current.push_str(line);
        current.push('\n');
    }
    chunks.push((start, current));
    chunks
        .into_iter()
        .filter(|(_, chunk)| {
            chunk.lines().any(|l| {
                let t = l.trim();
                !t.is_empty() && !t.starts_with('#')
            })
        })
        .collect()
}

/// Formats a YAML error at its absolute position.
fn yaml_problem(file: &str, first_line: usize, err: &serde_norway::Error) -> String {
    let text = err.to_string();
    let message = text
        .find(" at line ")
        .map_or(text.as_str(), |i| &text[..i])
        .to_string();
    match err.location() {
        Some(loc) => format!(
            "{file}:{}:{}: {message}",
            first_line + loc.line() - 1,
            loc.column()
        ),
        None => format!("{file}:{first_line}: {message}"),
    }
}

fn parse_text(
    file: &str,
    text: &str,
    default_namespace: &str,
    docs: &mut Vec<Document>,
    problems: &mut Vec<String>,
) {
    let is_json = file.ends_with(".json") || text.trim_start().starts_with('{');
    let chunks = if is_json {
        vec![(1, text.to_string())]
    } else {
        split_documents(text)
    };
    for (first_line, chunk) in chunks {
        // The separator line itself is blank in the chunk, so line 1 of the chunk is
        // the separator's line (or line 1 of the file).
        let value: Value = match serde_norway::from_str(&chunk) {
            Ok(v) => v,
            Err(e) => {
                problems.push(yaml_problem(file, first_line, &e));
                continue;
            }
        };
        let origin_line = chunk
            .lines()
            .position(|l| {
                let t = l.trim();
                !t.is_empty() && !t.starts_with('#')
            })
            .map_or(first_line, |p| first_line + p);
        let origin = format!("{file}:{origin_line}");
        if value.get("kind").and_then(Value::as_str) == Some("List") {
            match value.get("items").and_then(Value::as_array) {
                Some(items) => {
                    for (i, item) in items.iter().enumerate() {
                        check_object(
                            &format!("{origin} (items[{i}])"),
                            None,
                            item.clone(),
                            default_namespace,
                            docs,
                            problems,
                        );
                    }
                }
                None => problems.push(format!("{origin}: a List without items")),
            }
            continue;
        }
        check_object(
            &origin,
            Some((file, first_line, &chunk)),
            value,
            default_namespace,
            docs,
            problems,
        );
    }
}

/// Typed decoding of the YAML text (for the line of a bad field), then of the value.
fn typed<T: DeserializeOwned>(
    yaml: Option<(&str, usize, &str)>,
    value: &Value,
    origin: &str,
) -> Result<T, String> {
    if let Some((file, first_line, chunk)) = yaml
        && let Err(e) = serde_norway::from_str::<T>(chunk)
    {
        return Err(yaml_problem(file, first_line, &e));
    }
    serde_json::from_value::<T>(value.clone()).map_err(|e| format!("{origin}: {e}"))
}

fn validate<T: DeserializeOwned>(
    yaml: Option<(&str, usize, &str)>,
    value: &Value,
    origin: &str,
    check: impl Fn(&T) -> Vec<FieldError>,
) -> Vec<String> {
    match typed::<T>(yaml, value, origin) {
        Ok(object) => check(&object)
            .into_iter()
            .map(|e| format!("{origin}: {e}"))
            .collect(),
        Err(problem) => vec![problem],
    }
}

/// Validates an object with sf-schema's validator for its kind.
pub fn validate_kind(
    kind: &str,
    yaml: Option<(&str, usize, &str)>,
    value: &Value,
    origin: &str,
) -> Vec<String> {
    use sf_schema::validation as v;
    match kind {
        "Instance" => validate::<sf_schema::Instance>(yaml, value, origin, v::validate_instance),
        "Network" => validate::<sf_schema::Network>(yaml, value, origin, v::validate_network),
        "NetworkInterface" => validate::<sf_schema::NetworkInterface>(
            yaml,
            value,
            origin,
            v::validate_network_interface,
        ),
        "IPAMLease" => {
            validate::<sf_schema::IPAMLease>(yaml, value, origin, v::validate_ipam_lease)
        }
        "Artifact" => validate::<sf_schema::Artifact>(yaml, value, origin, v::validate_artifact),
        "Blob" => validate::<sf_schema::Blob>(yaml, value, origin, v::validate_blob),
        "Namespace" => validate::<sf_schema::Namespace>(yaml, value, origin, v::validate_namespace),
        "Node" => validate::<sf_schema::Node>(yaml, value, origin, v::validate_node),
        "ClusterOperation" => validate::<sf_schema::ClusterOperation>(
            yaml,
            value,
            origin,
            v::validate_cluster_operation,
        ),
        _ => Vec::new(),
    }
}

fn check_object(
    origin: &str,
    yaml: Option<(&str, usize, &str)>,
    mut value: Value,
    default_namespace: &str,
    docs: &mut Vec<Document>,
    problems: &mut Vec<String>,
) {
    if !value.is_object() {
        problems.push(format!("{origin}: expected an object (a YAML mapping)"));
        return;
    }
    let api_version = value.get("apiVersion").and_then(Value::as_str);
    if api_version != Some(API_VERSION) {
        problems.push(format!(
            "{origin}: apiVersion must be {API_VERSION}, found {}",
            api_version.map_or("nothing".to_string(), |v| format!("{v:?}"))
        ));
        return;
    }
    let Some(kind_name) = value.get("kind").and_then(Value::as_str) else {
        problems.push(format!("{origin}: kind is required"));
        return;
    };
    let Some(kind) = kinds::by_kind(kind_name) else {
        problems.push(format!(
            "{origin}: unknown kind {kind_name:?} (known: {})",
            kinds::KINDS
                .iter()
                .map(|k| k.kind)
                .collect::<Vec<_>>()
                .join(", ")
        ));
        return;
    };
    let Some(name) = value
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .filter(|n| !n.is_empty())
        .map(str::to_string)
    else {
        problems.push(format!("{origin}: metadata.name is required"));
        return;
    };
    let namespace = if kind.namespaced {
        let ns = value
            .pointer("/metadata/namespace")
            .and_then(Value::as_str)
            .filter(|n| !n.is_empty())
            .unwrap_or(default_namespace)
            .to_string();
        if let Some(meta) = value.get_mut("metadata").and_then(Value::as_object_mut) {
            meta.insert("namespace".into(), Value::String(ns.clone()));
        }
        ns
    } else {
        String::new()
    };
    let found = validate_kind(kind.kind, yaml, &value, origin);
    if !found.is_empty() {
        problems.extend(found);
        return;
    }
    docs.push(Document {
        origin: origin.to_string(),
        kind,
        name,
        namespace,
        object: value,
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = "\
# a comment
apiVersion: shakenfist.io/v1alpha1
kind: Network
metadata: {name: web}
spec: {netblock: 10.0.0.0/24}
---
apiVersion: shakenfist.io/v1alpha1
kind: Instance
metadata:
  name: web-1
  namespace: other
spec:
  cpus: 1
  memory: 512
  disks: [{size: 8}]
";

    fn parse(text: &str) -> (Vec<Document>, Vec<String>) {
        let mut docs = Vec::new();
        let mut problems = Vec::new();
        parse_text("f.yaml", text, "demo", &mut docs, &mut problems);
        (docs, problems)
    }

    #[test]
    fn splits_documents_with_their_lines() {
        let chunks = split_documents(GOOD);
        assert_eq!(chunks.len(), 2);
        assert_eq!(chunks[0].0, 1);
        assert_eq!(chunks[1].0, 6);
    }

    #[test]
    fn good_documents_parse_and_get_the_default_namespace() {
        let (docs, problems) = parse(GOOD);
        assert!(problems.is_empty(), "{problems:?}");
        assert_eq!(docs.len(), 2);
        assert_eq!(docs[0].namespace, "demo");
        assert_eq!(docs[0].object["metadata"]["namespace"], "demo");
        assert_eq!(docs[0].origin, "f.yaml:2");
        assert_eq!(docs[1].namespace, "other");
        assert_eq!(docs[1].display(), "instance/web-1");
        assert_eq!(docs[1].origin, "f.yaml:7");
    }

    #[test]
    fn syntax_errors_name_the_absolute_line() {
        let bad = format!(
            "{GOOD}---\napiVersion: shakenfist.io/v1alpha1\nkind: Network\nmetadata: {{name: x\nspec: {{}}\n"
        );
        let (_, problems) = parse(&bad);
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert!(
            problems[0].starts_with("f.yaml:19") || problems[0].starts_with("f.yaml:20"),
            "{problems:?}"
        );
    }

    #[test]
    fn unknown_fields_name_their_line() {
        let bad = GOOD.replace("  memory: 512\n", "  memory: 512\n  colour: red\n");
        let (_, problems) = parse(&bad);
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert!(problems[0].starts_with("f.yaml:15:"), "{problems:?}");
        assert!(problems[0].contains("colour"), "{problems:?}");
    }

    #[test]
    fn semantic_errors_are_reported_per_document() {
        let bad = GOOD
            .replace("cpus: 1", "cpus: 0")
            .replace("kind: Network", "kind: Netwerk");
        let (docs, problems) = parse(&bad);
        assert!(docs.is_empty());
        assert_eq!(problems.len(), 2, "{problems:?}");
        assert!(
            problems[0].contains("unknown kind \"Netwerk\""),
            "{problems:?}"
        );
        assert!(problems[1].starts_with("f.yaml:7: "), "{problems:?}");
        assert!(problems[1].contains("spec.cpus"), "{problems:?}");
    }

    #[test]
    fn lists_contribute_their_items() {
        let list = serde_json::json!({
            "apiVersion": "v1", "kind": "List",
            "items": [{"apiVersion": API_VERSION, "kind": "Network", "metadata": {"name": "n"}, "spec": {"netblock": "10.1.0.0/24"}}]
        });
        let (docs, problems) = parse(&list.to_string());
        assert!(problems.is_empty(), "{problems:?}");
        assert_eq!(docs.len(), 1);
    }
}
