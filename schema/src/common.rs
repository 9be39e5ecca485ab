//! Building blocks shared by every kind: [`Condition`], [`ObjectRef`], the
//! [`StringEnum`] contract and the `string_enum!` macro that implements it.
//!
//! Contract:
//! - A string enum deserializes from ANY string: unknown values land in its
//!   `Other(String)` variant so that validation (not serde) reports every bad value
//!   with its field path. Its JSON schema still lists only the known values, so a
//!   Kubernetes apiserver holding the generated CRD rejects them too.
//! - [`set_condition`] is pure: it never reads the clock; the caller passes `now`.
//! - Nothing here does I/O.

use chrono::{DateTime, Utc};
use schemars::{JsonSchema, Schema, SchemaGenerator, json_schema};
use serde::{Deserialize, Serialize};

/// Behaviour shared by every enum made by `string_enum!`; validation uses it to
/// report unknown values in one uniform message.
pub trait StringEnum {
    /// What the value names in an error message, e.g. `disk bus`.
    const WHAT: &'static str;
    /// Every value this version knows, in documentation order.
    fn known_values() -> &'static [&'static str];
    /// The wire form of this value (the original text for an unknown value).
    fn wire(&self) -> &str;
    /// False for a value this version does not know.
    fn is_known_value(&self) -> bool;
}

/// Defines a string enum: the known variants plus `Other(String)`, serialized as a
/// plain string. Generates `Display`, `FromStr` (infallible), `parse`, `known`,
/// `is_known`, `as_str`, conversions from and to `String`, [`StringEnum`], a
/// `JsonSchema` of `{"type": "string", "enum": [known values]}` and, when
/// `default = Variant` is given, `Default`.
///
/// ```text
/// string_enum! {
///     /// Doc for the enum.
///     pub enum DiskBus: "disk bus", default = Virtio {
///         /// Doc for the variant.
///         Virtio => "virtio",
///         Sata => "sata",
///     }
/// }
/// ```
macro_rules! string_enum {
    (
        $(#[$meta:meta])*
        $vis:vis enum $name:ident : $what:literal $(, default = $default:ident)? {
            $( $(#[$vmeta:meta])* $variant:ident => $value:literal ),+ $(,)?
        }
    ) => {
        $(#[$meta])*
        #[derive(Clone, Debug, PartialEq, Eq, Hash, ::serde::Serialize, ::serde::Deserialize)]
        #[serde(from = "String", into = "String")]
        $vis enum $name {
            $( $(#[$vmeta])* $variant, )+
            /// A value this version does not know (kept verbatim); validation rejects it.
            Other(String),
        }

        impl $name {
            /// What the value names in an error message.
            pub const WHAT: &'static str = $what;

            /// Every value this version knows, in documentation order.
            pub fn known() -> &'static [&'static str] {
                &[$($value),+]
            }

            /// Parses a wire value; unknown text becomes `Other`.
            pub fn parse(value: &str) -> Self {
                match value {
                    $( $value => Self::$variant, )+
                    other => Self::Other(other.to_owned()),
                }
            }

            /// The wire form of this value (the original text for `Other`).
            pub fn as_str(&self) -> &str {
                match self {
                    $( Self::$variant => $value, )+
                    Self::Other(other) => other.as_str(),
                }
            }

            /// False for `Other`.
            pub fn is_known(&self) -> bool {
                !matches!(self, Self::Other(_))
            }
        }

        impl ::std::convert::From<String> for $name {
            fn from(value: String) -> Self {
                match value.as_str() {
                    $( $value => Self::$variant, )+
                    _ => Self::Other(value),
                }
            }
        }

        impl ::std::convert::From<&str> for $name {
            fn from(value: &str) -> Self {
                Self::parse(value)
            }
        }

        impl ::std::convert::From<$name> for String {
            fn from(value: $name) -> String {
                match value {
                    $name::Other(other) => other,
                    known => known.as_str().to_owned(),
                }
            }
        }

        impl ::std::fmt::Display for $name {
            fn fmt(&self, f: &mut ::std::fmt::Formatter<'_>) -> ::std::fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl ::std::str::FromStr for $name {
            type Err = ::std::convert::Infallible;
            fn from_str(value: &str) -> Result<Self, Self::Err> {
                Ok(Self::parse(value))
            }
        }

        impl $crate::common::StringEnum for $name {
            const WHAT: &'static str = $what;
            fn known_values() -> &'static [&'static str] {
                Self::known()
            }
            fn wire(&self) -> &str {
                self.as_str()
            }
            fn is_known_value(&self) -> bool {
                self.is_known()
            }
        }

        impl ::schemars::JsonSchema for $name {
            fn schema_name() -> ::std::borrow::Cow<'static, str> {
                stringify!($name).into()
            }
            fn inline_schema() -> bool {
                true
            }
            fn json_schema(_: &mut ::schemars::SchemaGenerator) -> ::schemars::Schema {
                ::schemars::json_schema!({ "type": "string", "enum": Self::known() })
            }
        }

        $(
            impl ::std::default::Default for $name {
                fn default() -> Self {
                    Self::$default
                }
            }
        )?
    };
}

pub(crate) use string_enum;

string_enum! {
    /// The status of a [`Condition`], as in Kubernetes.
    pub enum ConditionStatus: "condition status", default = Unknown {
        /// The condition holds.
        True => "True",
        /// The condition does not hold.
        False => "False",
        /// Not known yet.
        Unknown => "Unknown",
    }
}

string_enum! {
    /// The lifecycle state shared by Network, NetworkInterface, Artifact, Blob and
    /// Namespace (shakenfist.md §2, "Other object states").
    pub enum ResourceState: "state", default = Initial {
        /// Accepted, nothing done yet.
        Initial => "initial",
        /// Exists and is usable.
        Created => "created",
        /// Deletion started; waiting for its parts to go.
        DeleteWait => "delete_wait",
        /// Deleted (kept until hard delete).
        Deleted => "deleted",
        /// Failed; see the conditions.
        Error => "error",
    }
}

/// A Kubernetes-shaped condition (`status.conditions[]`), keyed by `type`.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Condition {
    /// The condition type, PascalCase (`Ready`, `Scheduled`, ...).
    #[serde(rename = "type")]
    pub type_: String,
    /// `True`, `False` or `Unknown`.
    pub status: ConditionStatus,
    /// Why, in CamelCase (`Running`, `NoCapacity`, ...).
    pub reason: String,
    /// Human-readable detail; may be empty.
    #[serde(default)]
    pub message: String,
    /// When `status` last changed.
    pub last_transition_time: DateTime<Utc>,
    /// The `metadata.generation` this condition was computed from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
}

/// Finds the condition of `type_`.
pub fn find_condition<'a>(conditions: &'a [Condition], type_: &str) -> Option<&'a Condition> {
    conditions.iter().find(|c| c.type_ == type_)
}

/// Inserts or replaces the condition with `new.type_`. `lastTransitionTime` is kept
/// from the existing condition when `status` is unchanged and set to `now` otherwise
/// (the value in `new` is ignored). Returns whether `conditions` changed, so a
/// reconcile that changes nothing can skip its write. Pure: reads no clock.
pub fn set_condition(
    conditions: &mut Vec<Condition>,
    mut new: Condition,
    now: DateTime<Utc>,
) -> bool {
    match conditions.iter_mut().find(|c| c.type_ == new.type_) {
        Some(existing) => {
            new.last_transition_time = if existing.status == new.status {
                existing.last_transition_time
            } else {
                now
            };
            if *existing == new {
                false
            } else {
                *existing = new;
                true
            }
        }
        None => {
            new.last_transition_time = now;
            conditions.push(new);
            true
        }
    }
}

/// A reference to another object (operation targets, lease owners).
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq, Eq, Hash, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ObjectRef {
    /// The kind, e.g. `Instance`.
    pub kind: String,
    /// `metadata.name` of the object.
    pub name: String,
    /// Its namespace; absent for cluster-scoped objects (and the floating network).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    /// `metadata.uid` of the object, so a re-created namesake is not confused with it.
    pub uid: String,
}

/// Schema of a required free-form `serde_json::Value` object field: structural,
/// thanks to `x-kubernetes-preserve-unknown-fields`.
pub(crate) fn preserve_unknown_object(_: &mut SchemaGenerator) -> Schema {
    json_schema!({ "type": "object", "x-kubernetes-preserve-unknown-fields": true })
}

/// Schema of an optional free-form `Option<serde_json::Value>` object field.
pub(crate) fn optional_preserve_unknown_object(_: &mut SchemaGenerator) -> Schema {
    json_schema!({
        "type": "object",
        "nullable": true,
        "x-kubernetes-preserve-unknown-fields": true,
    })
}

/// Schema of an `Option<E>` field for a string enum `E`: the known values and
/// `nullable`, without the `null` enum member schemars would add (kept out so every
/// `enum` lists strings only).
pub(crate) fn optional_string_enum<E: StringEnum>(_: &mut SchemaGenerator) -> Schema {
    json_schema!({ "type": "string", "enum": E::known_values(), "nullable": true })
}

/// An empty JSON object, the default of free-form object fields.
pub(crate) fn empty_object() -> serde_json::Value {
    serde_json::Value::Object(serde_json::Map::new())
}

/// `true`, for `#[serde(default = ...)]`.
pub(crate) fn default_true() -> bool {
    true
}

/// 64-bit FNV-1a of `bytes` from `basis`.
pub fn fnv1a(bytes: &[u8], basis: u64) -> u64 {
    let mut hash = basis;
    for b in bytes {
        hash ^= u64::from(*b);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    hash
}

/// A UUID (version 8, "custom") derived from `seed`: the same seed always gives the
/// same UUID, so work re-planned or re-run after a crash names the same object (the
/// artifact plan names a fetch's blob from `<artifact uid>/<operation name>`, the
/// agent a snapshot's from `<operation uid>/<device>`).
pub fn derived_uuid(seed: &str) -> String {
    let a = fnv1a(seed.as_bytes(), 0xcbf2_9ce4_8422_2325);
    let b = fnv1a(seed.as_bytes(), 0x6c62_272e_07bb_0142);
    let mut bytes = [0u8; 16];
    bytes[..8].copy_from_slice(&a.to_be_bytes());
    bytes[8..].copy_from_slice(&b.to_be_bytes());
    bytes[6] = (bytes[6] & 0x0f) | 0x80;
    bytes[8] = (bytes[8] & 0x3f) | 0x80;
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &hex[..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..]
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    string_enum! {
        /// Test enum.
        pub enum Colour: "colour", default = Red {
            /// Red.
            Red => "red",
            /// Green.
            Green => "green",
        }
    }

    fn at(secs: i64) -> DateTime<Utc> {
        Utc.timestamp_opt(secs, 0)
            .single()
            .expect("valid timestamp")
    }

    fn ready(status: ConditionStatus, reason: &str) -> Condition {
        Condition {
            type_: "Ready".into(),
            status,
            reason: reason.into(),
            message: String::new(),
            last_transition_time: at(0),
            observed_generation: Some(1),
        }
    }

    #[test]
    fn string_enum_round_trips_known_and_unknown_values() {
        let green: Colour = serde_json::from_str("\"green\"").unwrap();
        assert_eq!(green, Colour::Green);
        let odd: Colour = serde_json::from_str("\"mauve\"").unwrap();
        assert_eq!(odd, Colour::Other("mauve".into()));
        assert!(!odd.is_known());
        assert!(green.is_known());
        assert_eq!(serde_json::to_string(&odd).unwrap(), "\"mauve\"");
        assert_eq!(serde_json::to_string(&Colour::Red).unwrap(), "\"red\"");
        assert_eq!(Colour::default(), Colour::Red);
        assert_eq!(Colour::known(), &["red", "green"]);
        assert_eq!(Colour::WHAT, "colour");
        assert_eq!("green".parse::<Colour>().unwrap(), Colour::Green);
        assert_eq!(Colour::Green.to_string(), "green");
        assert_eq!(String::from(Colour::Other("x".into())), "x");
    }

    #[test]
    fn string_enum_schema_lists_known_values() {
        let schema = schemars::schema_for!(Colour);
        let value = schema.as_value();
        assert_eq!(value["type"], "string");
        assert_eq!(value["enum"], serde_json::json!(["red", "green"]));
    }

    #[test]
    fn set_condition_adds_with_now() {
        let mut conditions = Vec::new();
        assert!(set_condition(
            &mut conditions,
            ready(ConditionStatus::True, "Running"),
            at(10)
        ));
        assert_eq!(conditions.len(), 1);
        assert_eq!(conditions[0].last_transition_time, at(10));
    }

    #[test]
    fn set_condition_keeps_transition_time_when_status_unchanged() {
        let mut conditions = Vec::new();
        set_condition(
            &mut conditions,
            ready(ConditionStatus::True, "Running"),
            at(10),
        );
        let changed = set_condition(
            &mut conditions,
            ready(ConditionStatus::True, "StillRunning"),
            at(20),
        );
        assert!(changed, "the reason changed");
        assert_eq!(conditions[0].last_transition_time, at(10));
        assert_eq!(conditions[0].reason, "StillRunning");
        let unchanged = set_condition(
            &mut conditions,
            ready(ConditionStatus::True, "StillRunning"),
            at(30),
        );
        assert!(!unchanged, "an identical condition is no change");
        assert_eq!(conditions[0].last_transition_time, at(10));
    }

    #[test]
    fn set_condition_moves_transition_time_when_status_changes() {
        let mut conditions = Vec::new();
        set_condition(
            &mut conditions,
            ready(ConditionStatus::True, "Running"),
            at(10),
        );
        assert!(set_condition(
            &mut conditions,
            ready(ConditionStatus::False, "Crashed"),
            at(20)
        ));
        assert_eq!(conditions.len(), 1);
        assert_eq!(conditions[0].last_transition_time, at(20));
        assert_eq!(conditions[0].status, ConditionStatus::False);
        assert_eq!(
            find_condition(&conditions, "Ready").map(|c| c.reason.as_str()),
            Some("Crashed")
        );
        assert!(find_condition(&conditions, "Scheduled").is_none());
    }
}
