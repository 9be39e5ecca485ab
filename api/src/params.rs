//! Query parameters of the resource endpoints, as kube-rs and kubectl send them.
//!
//! Contract: [`Params::parse`] reads a raw query string, tolerating empty pairs
//! (`?&limit=500`, a bare `?`) and repeated keys (the last wins, except `dryRun`, any of
//! which may be `All`). Booleans follow Go's `strconv.ParseBool`. Values that cannot be
//! honoured are a [`ParamError`] (400): an unknown `dryRun` or `fieldValidation` value,
//! a non-numeric `timeoutSeconds`. Paging (`limit`, `continue`), `pretty`,
//! `fieldManager`, `force`, `propagationPolicy` and `gracePeriodSeconds` are accepted and
//! ignored: lists are always complete.

use std::time::Duration;

/// A query parameter that cannot be honoured.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParamError {
    /// The value is not valid for the parameter.
    #[error("{name}: Invalid value: \"{value}\": {why}")]
    Invalid {
        /// Parameter name.
        name: &'static str,
        /// The value sent.
        value: String,
        /// Why.
        why: &'static str,
    },
}

/// How unknown fields in a body are treated (`fieldValidation`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum FieldValidation {
    /// Drop them silently.
    Ignore,
    /// Drop them and say so in a `Warning` header (the server default).
    #[default]
    Warn,
    /// Refuse the request (400).
    Strict,
}

/// The parsed parameters.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Params {
    /// `watch=true`.
    pub watch: bool,
    /// `resourceVersion`.
    pub resource_version: Option<String>,
    /// `labelSelector`.
    pub label_selector: String,
    /// `fieldSelector`.
    pub field_selector: String,
    /// `allowWatchBookmarks=true`.
    pub allow_watch_bookmarks: bool,
    /// `sendInitialEvents`, when given.
    pub send_initial_events: Option<bool>,
    /// `timeoutSeconds`.
    pub timeout: Option<Duration>,
    /// `dryRun=All`.
    pub dry_run: bool,
    /// `fieldValidation`.
    pub field_validation: FieldValidation,
}

/// Go's `strconv.ParseBool`; the empty value is false.
fn parse_bool(name: &'static str, value: &str) -> Result<bool, ParamError> {
    match value {
        "1" | "t" | "T" | "true" | "TRUE" | "True" => Ok(true),
        "" | "0" | "f" | "F" | "false" | "FALSE" | "False" => Ok(false),
        _ => Err(ParamError::Invalid {
            name,
            value: value.to_string(),
            why: "must be a boolean",
        }),
    }
}

impl Params {
    /// Parses a raw query string (without the `?`).
    pub fn parse(query: Option<&str>) -> Result<Self, ParamError> {
        let mut params = Params::default();
        let Some(query) = query else {
            return Ok(params);
        };
        for (key, value) in form_urlencoded::parse(query.as_bytes()) {
            match key.as_ref() {
                "" => {}
                "watch" => params.watch = parse_bool("watch", &value)?,
                "resourceVersion" => params.resource_version = Some(value.into_owned()),
                "labelSelector" => params.label_selector = value.into_owned(),
                "fieldSelector" => params.field_selector = value.into_owned(),
                "allowWatchBookmarks" => {
                    params.allow_watch_bookmarks = parse_bool("allowWatchBookmarks", &value)?;
                }
                "sendInitialEvents" => {
                    params.send_initial_events = Some(parse_bool("sendInitialEvents", &value)?);
                }
                "timeoutSeconds" => {
                    let seconds: u64 = value.parse().map_err(|_| ParamError::Invalid {
                        name: "timeoutSeconds",
                        value: value.to_string(),
                        why: "must be a non-negative integer",
                    })?;
                    params.timeout = Some(Duration::from_secs(seconds));
                }
                "dryRun" => match value.as_ref() {
                    "All" => params.dry_run = true,
                    "" => {}
                    other => {
                        return Err(ParamError::Invalid {
                            name: "dryRun",
                            value: other.to_string(),
                            why: "supported values: \"All\"",
                        });
                    }
                },
                "fieldValidation" => {
                    params.field_validation = match value.to_ascii_lowercase().as_str() {
                        "ignore" => FieldValidation::Ignore,
                        "" | "warn" => FieldValidation::Warn,
                        "strict" => FieldValidation::Strict,
                        _ => {
                            return Err(ParamError::Invalid {
                                name: "fieldValidation",
                                value: value.to_string(),
                                why: "supported values: \"Ignore\", \"Warn\", \"Strict\"",
                            });
                        }
                    };
                }
                // Accepted and ignored (see the module contract).
                _ => {}
            }
        }
        Ok(params)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_pairs_and_bare_queries_are_fine() {
        assert_eq!(Params::parse(Some("")).unwrap(), Params::default());
        assert_eq!(Params::parse(None).unwrap(), Params::default());
        let p = Params::parse(Some("&limit=500")).unwrap();
        assert_eq!(p, Params::default());
        let p = Params::parse(Some("&&watch=true&&resourceVersion=12&")).unwrap();
        assert!(p.watch);
        assert_eq!(p.resource_version.as_deref(), Some("12"));
    }

    #[test]
    fn kube_watch_query() {
        let p = Params::parse(Some(
            "&watch=true&timeoutSeconds=290&allowWatchBookmarks=true&resourceVersion=7&labelSelector=tier%3Dweb&fieldSelector=metadata.name%3Da",
        ))
        .unwrap();
        assert!(p.watch && p.allow_watch_bookmarks);
        assert_eq!(p.timeout, Some(Duration::from_secs(290)));
        assert_eq!(p.label_selector, "tier=web");
        assert_eq!(p.field_selector, "metadata.name=a");
        assert!(Params::parse(Some("watch=1")).unwrap().watch);
    }

    #[test]
    fn bad_values_are_refused() {
        assert!(Params::parse(Some("dryRun=Some")).is_err());
        assert!(Params::parse(Some("watch=yes")).is_err());
        assert!(Params::parse(Some("timeoutSeconds=-1")).is_err());
        assert!(Params::parse(Some("fieldValidation=Loose")).is_err());
        assert!(Params::parse(Some("dryRun=All")).unwrap().dry_run);
        assert_eq!(
            Params::parse(Some("fieldValidation=Strict"))
                .unwrap()
                .field_validation,
            FieldValidation::Strict
        );
    }
}
