//! Kubernetes label and field selectors: parsing and matching, no I/O.
//!
//! Contract: [`LabelSelector::parse`] accepts the Kubernetes syntax (`a=b`, `a==b`,
//! `a!=b`, `a in (x,y)`, `a notin (x)`, `a`, `!a`, comma-separated, all must hold);
//! [`FieldSelector::parse`] accepts `metadata.name` and `metadata.namespace` with `=`,
//! `==` and `!=` (what CRDs support). Both match a resource's JSON object. A parse error
//! names the offending requirement.

use std::collections::BTreeSet;

use serde_json::Value;

/// A selector that could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid {what} selector '{input}': {reason}")]
pub struct SelectorError {
    /// `label` or `field`.
    pub what: &'static str,
    /// The requirement that failed.
    pub input: String,
    /// Why.
    pub reason: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum LabelRequirement {
    Equals(String, String),
    NotEquals(String, String),
    In(String, BTreeSet<String>),
    NotIn(String, BTreeSet<String>),
    Exists(String),
    NotExists(String),
}

/// A parsed label selector; the empty selector matches everything.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct LabelSelector {
    requirements: Vec<LabelRequirement>,
}

/// Splits on commas that are not inside parentheses.
fn split_top_level(s: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let mut depth = 0i32;
    let mut start = 0;
    for (i, c) in s.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => depth -= 1,
            ',' if depth == 0 => {
                out.push(&s[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    out.push(&s[start..]);
    out
}

fn valid_key(k: &str) -> bool {
    !k.is_empty()
        && k.len() <= 317
        && k.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '/'))
}

fn valid_value(v: &str) -> bool {
    v.len() <= 63
        && v.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

impl LabelSelector {
    /// Parses a selector; the empty string is the match-all selector.
    pub fn parse(input: &str) -> Result<Self, SelectorError> {
        let mut requirements = Vec::new();
        if input.trim().is_empty() {
            return Ok(Self { requirements });
        }
        for raw in split_top_level(input) {
            let part = raw.trim();
            let err = |reason: &str| SelectorError {
                what: "label",
                input: part.to_string(),
                reason: reason.to_string(),
            };
            if part.is_empty() {
                return Err(err("empty requirement"));
            }
            let req = if let Some(key) = part.strip_prefix('!') {
                let key = key.trim();
                if !valid_key(key) {
                    return Err(err("invalid label key"));
                }
                LabelRequirement::NotExists(key.to_string())
            } else if let Some((k, v)) = part.split_once("!=") {
                LabelRequirement::NotEquals(k.trim().to_string(), v.trim().to_string())
            } else if let Some((k, v)) = part.split_once("==") {
                LabelRequirement::Equals(k.trim().to_string(), v.trim().to_string())
            } else if let Some((k, v)) = part.split_once('=') {
                LabelRequirement::Equals(k.trim().to_string(), v.trim().to_string())
            } else if let Some((k, rest)) = split_set_op(part, " notin ") {
                LabelRequirement::NotIn(k, parse_set(rest).ok_or_else(|| err("expected (v1,v2)"))?)
            } else if let Some((k, rest)) = split_set_op(part, " in ") {
                LabelRequirement::In(k, parse_set(rest).ok_or_else(|| err("expected (v1,v2)"))?)
            } else {
                LabelRequirement::Exists(part.to_string())
            };
            let (key, values): (&str, Vec<&String>) = match &req {
                LabelRequirement::Equals(k, v) | LabelRequirement::NotEquals(k, v) => (k, vec![v]),
                LabelRequirement::In(k, s) | LabelRequirement::NotIn(k, s) => {
                    (k, s.iter().collect())
                }
                LabelRequirement::Exists(k) | LabelRequirement::NotExists(k) => (k, vec![]),
            };
            if !valid_key(key) {
                return Err(err("invalid label key"));
            }
            if values.iter().any(|v| !valid_value(v)) {
                return Err(err("invalid label value"));
            }
            requirements.push(req);
        }
        Ok(Self { requirements })
    }

    /// True when it has no requirement.
    pub fn is_empty(&self) -> bool {
        self.requirements.is_empty()
    }

    /// Whether an object's `metadata.labels` satisfy every requirement.
    pub fn matches(&self, object: &Value) -> bool {
        let labels = object.pointer("/metadata/labels");
        let get = |k: &str| labels.and_then(|l| l.get(k)).and_then(Value::as_str);
        self.requirements.iter().all(|r| match r {
            LabelRequirement::Equals(k, v) => get(k) == Some(v.as_str()),
            LabelRequirement::NotEquals(k, v) => get(k) != Some(v.as_str()),
            LabelRequirement::In(k, s) => get(k).is_some_and(|x| s.contains(x)),
            LabelRequirement::NotIn(k, s) => get(k).is_none_or(|x| !s.contains(x)),
            LabelRequirement::Exists(k) => get(k).is_some(),
            LabelRequirement::NotExists(k) => get(k).is_none(),
        })
    }
}

fn split_set_op(part: &str, op: &str) -> Option<(String, String)> {
    part.split_once(op)
        .map(|(k, rest)| (k.trim().to_string(), rest.trim().to_string()))
}

fn parse_set(rest: String) -> Option<BTreeSet<String>> {
    let inner = rest.strip_prefix('(')?.strip_suffix(')')?;
    let set: BTreeSet<String> = inner
        .split(',')
        .map(|v| v.trim().to_string())
        .filter(|v| !v.is_empty())
        .collect();
    if set.is_empty() { None } else { Some(set) }
}

/// The fields a field selector may name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SelectableField {
    /// `metadata.name`.
    Name,
    /// `metadata.namespace`.
    Namespace,
}

/// A parsed field selector.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct FieldSelector {
    requirements: Vec<(SelectableField, bool, String)>,
}

impl FieldSelector {
    /// Parses a selector; the empty string matches everything.
    pub fn parse(input: &str) -> Result<Self, SelectorError> {
        let mut requirements = Vec::new();
        if input.trim().is_empty() {
            return Ok(Self { requirements });
        }
        for raw in input.split(',') {
            let part = raw.trim();
            let err = |reason: &str| SelectorError {
                what: "field",
                input: part.to_string(),
                reason: reason.to_string(),
            };
            let (field, equal, value) = if let Some((f, v)) = part.split_once("!=") {
                (f, false, v)
            } else if let Some((f, v)) = part.split_once("==") {
                (f, true, v)
            } else if let Some((f, v)) = part.split_once('=') {
                (f, true, v)
            } else {
                return Err(err("expected field=value or field!=value"));
            };
            let field = match field.trim() {
                "metadata.name" => SelectableField::Name,
                "metadata.namespace" => SelectableField::Namespace,
                _ => {
                    return Err(err(
                        "only metadata.name and metadata.namespace can be selected",
                    ));
                }
            };
            requirements.push((field, equal, value.trim().to_string()));
        }
        Ok(Self { requirements })
    }

    /// True when it has no requirement.
    pub fn is_empty(&self) -> bool {
        self.requirements.is_empty()
    }

    /// The exact name this selector pins, if any (lets a store narrow its query).
    pub fn exact_name(&self) -> Option<&str> {
        self.requirements
            .iter()
            .find(|(f, eq, _)| *f == SelectableField::Name && *eq)
            .map(|(_, _, v)| v.as_str())
    }

    /// Whether an object's metadata satisfies every requirement.
    pub fn matches(&self, object: &Value) -> bool {
        self.requirements.iter().all(|(field, equal, value)| {
            let pointer = match field {
                SelectableField::Name => "/metadata/name",
                SelectableField::Namespace => "/metadata/namespace",
            };
            let actual = object
                .pointer(pointer)
                .and_then(Value::as_str)
                .unwrap_or("");
            (actual == value) == *equal
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn obj(labels: Value) -> Value {
        json!({"metadata": {"name": "web-1", "namespace": "demo", "labels": labels}})
    }

    #[test]
    fn label_selectors_match_like_kubernetes() {
        let o = obj(json!({"tier": "web", "env": "prod"}));
        let cases = [
            ("", true),
            ("tier=web", true),
            ("tier==web", true),
            ("tier!=web", false),
            ("tier!=db", true),
            ("missing!=x", true),
            ("tier in (web,db)", true),
            ("tier notin (web)", false),
            ("missing notin (web)", true),
            ("env", true),
            ("!env", false),
            ("!missing", true),
            ("tier=web,env=prod", true),
            ("tier=web,env=dev", false),
            ("tier in (db, cache),env", false),
        ];
        for (sel, want) in cases {
            let s = LabelSelector::parse(sel).expect(sel);
            assert_eq!(s.matches(&o), want, "{sel}");
        }
    }

    #[test]
    fn bad_label_selectors_name_the_requirement() {
        let e = LabelSelector::parse("tier in web").expect_err("no parens");
        assert_eq!(e.input, "tier in web");
        assert!(LabelSelector::parse("a=b,,c=d").is_err());
        assert!(LabelSelector::parse("a b=c").is_err());
    }

    #[test]
    fn field_selectors_allow_name_and_namespace_only() {
        let o = obj(json!({}));
        let s = FieldSelector::parse("metadata.name=web-1").expect("parse");
        assert!(s.matches(&o));
        assert_eq!(s.exact_name(), Some("web-1"));
        assert!(
            !FieldSelector::parse("metadata.namespace!=demo")
                .expect("p")
                .matches(&o)
        );
        let e = FieldSelector::parse("spec.cpus=2").expect_err("unsupported");
        assert!(e.to_string().contains("only metadata.name"), "{e}");
    }
}
