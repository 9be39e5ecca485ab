//! Resources: create, get, list, compare-and-swap update, status update, merge, delete.
//!
//! Contract (Kubernetes semantics, see research/k8s-api.md §4):
//! - create assigns uid, generation 1, creationTimestamp and resourceVersion; a
//!   namespaced object needs its namespace (NotFound of kind Namespace otherwise) and
//!   holds it shared to COMMIT, so a namespace delete cannot slip in between;
//! - update replaces metadata (labels, annotations, finalizers, ownerReferences) and
//!   every top-level field but `status`; `generation` bumps only when those fields
//!   change; status updates replace only `status` and never bump generation;
//! - a write naming a stale resourceVersion is [`StoreError::Conflict`]; a write
//!   without one is applied to the row it locked (the CAS cannot lose);
//! - a write that changes nothing returns the stored object, keeps its
//!   resourceVersion and writes no revision (no hot loops);
//! - delete sets deletionTimestamp (and bumps generation) while finalizers remain; the
//!   row goes, with a DELETED change, once they are empty, including when an update
//!   removes the last finalizer of an object being deleted; a removed Instance or
//!   Network leaves a tombstone (its final state, by uid, [`Store::get_deleted`])
//!   until `CompactChangeLog` purges it with the same retention as the change log, or
//!   its namespace is deleted;
//! - the building blocks (`lock_row`, `insert_object`, `replace_object`,
//!   `remove_object`) are shared with the queue and IPAM so their resource writes
//!   follow the same rules inside their own transactions.

use sea_orm::sqlx::{self, Row};
use serde_json::{Map, Value, json};

use super::namespaces::{hold_namespaces, namespace_present};
use super::{Store, StoreError, Tx, allocate_revisions, parse_json, rfc3339};
use sf_schema::selector::{FieldSelector, LabelSelector};

/// Where an object lives.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ObjectKey {
    /// Kind, e.g. `Instance`.
    pub kind: String,
    /// Namespace; '' for cluster-scoped kinds.
    pub namespace: String,
    /// Name.
    pub name: String,
}

impl ObjectKey {
    /// A key.
    pub fn new(
        kind: impl Into<String>,
        namespace: impl Into<String>,
        name: impl Into<String>,
    ) -> Self {
        Self {
            kind: kind.into(),
            namespace: namespace.into(),
            name: name.into(),
        }
    }

    /// The key of an object's JSON (`kind`, `metadata.namespace`, `metadata.name`).
    pub fn of(object: &Value) -> Result<Self, StoreError> {
        let kind = object
            .get("kind")
            .and_then(Value::as_str)
            .filter(|k| !k.is_empty())
            .ok_or_else(|| StoreError::Invalid("kind is required".into()))?;
        let name = object
            .pointer("/metadata/name")
            .and_then(Value::as_str)
            .filter(|n| !n.is_empty())
            .ok_or_else(|| StoreError::Invalid("metadata.name is required".into()))?;
        let namespace = object
            .pointer("/metadata/namespace")
            .and_then(Value::as_str)
            .unwrap_or("");
        Ok(Self::new(kind, namespace, name))
    }

    pub(crate) fn not_found(&self) -> StoreError {
        StoreError::NotFound {
            kind: self.kind.clone(),
            namespace: self.namespace.clone(),
            name: self.name.clone(),
        }
    }

    pub(crate) fn conflict(&self, reason: impl Into<String>) -> StoreError {
        StoreError::Conflict {
            kind: self.kind.clone(),
            namespace: self.namespace.clone(),
            name: self.name.clone(),
            reason: reason.into(),
        }
    }
}

/// An object as stored, with its resourceVersion.
#[derive(Debug, Clone, PartialEq)]
pub struct Stored {
    /// The whole object JSON.
    pub object: Value,
    /// Its resourceVersion (the revision of its last change).
    pub resource_version: u64,
    /// False when a write changed nothing.
    pub changed: bool,
}

/// A locked row, read inside a transaction.
#[derive(Debug, Clone)]
pub(crate) struct Row0 {
    pub key: ObjectKey,
    pub uid: String,
    pub resource_version: u64,
    pub generation: i64,
    pub object: Value,
}

/// What a delete did.
#[derive(Debug, Clone, PartialEq)]
pub struct Deleted {
    /// The object (with deletionTimestamp if finalizers hold it; its final state if gone).
    pub object: Value,
    /// True when the row is gone.
    pub removed: bool,
    /// The revision of this change (the stored one if nothing changed).
    pub revision: u64,
}

/// Preconditions of a write.
#[derive(Debug, Clone, Copy, Default)]
pub struct Preconditions<'a> {
    /// resourceVersion the caller last saw.
    pub resource_version: Option<u64>,
    /// uid the caller expects.
    pub uid: Option<&'a str>,
}

/// Which part of an object an update replaces.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpdateScope {
    /// Metadata and spec (every top-level field but status).
    Main,
    /// Status only.
    Status,
}

/// The metadata fields a caller may change on update.
const MUTABLE_METADATA: [&str; 4] = ["labels", "annotations", "finalizers", "ownerReferences"];

fn metadata_mut(object: &mut Value) -> Result<&mut Map<String, Value>, StoreError> {
    if !object.get("metadata").is_some_and(Value::is_object) {
        object
            .as_object_mut()
            .ok_or_else(|| StoreError::Invalid("an object must be a JSON object".into()))?
            .insert("metadata".into(), json!({}));
    }
    object
        .get_mut("metadata")
        .and_then(Value::as_object_mut)
        .ok_or_else(|| StoreError::Invalid("metadata must be an object".into()))
}

fn finalizers_empty(object: &Value) -> bool {
    object
        .pointer("/metadata/finalizers")
        .and_then(Value::as_array)
        .is_none_or(Vec::is_empty)
}

fn has_deletion_timestamp(object: &Value) -> bool {
    object
        .pointer("/metadata/deletionTimestamp")
        .is_some_and(|v| !v.is_null())
}

/// The top-level fields that make up "spec" for generation purposes.
fn spec_part(object: &Value) -> Map<String, Value> {
    object
        .as_object()
        .map(|m| {
            m.iter()
                .filter(|(k, _)| {
                    !matches!(k.as_str(), "apiVersion" | "kind" | "metadata" | "status")
                })
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect()
        })
        .unwrap_or_default()
}

/// The deepest nesting of arrays and objects a stored object may have: what MariaDB's
/// JSON columns accept (their `JSON_VALID` check refuses 32 levels or more, which
/// would otherwise surface as an opaque constraint failure after the revision was
/// taken). Well under serde_json's 128, so whatever is stored also parses back.
pub const MAX_OBJECT_DEPTH: usize = 31;

/// [`StoreError::Invalid`] when `object` nests deeper than [`MAX_OBJECT_DEPTH`].
fn check_depth(object: &Value) -> Result<(), StoreError> {
    let mut stack: Vec<(&Value, usize)> = vec![(object, 1)];
    while let Some((value, depth)) = stack.pop() {
        if !(value.is_array() || value.is_object()) {
            continue;
        }
        if depth > MAX_OBJECT_DEPTH {
            return Err(StoreError::Invalid(format!(
                "the object nests arrays and objects deeper than {MAX_OBJECT_DEPTH} levels"
            )));
        }
        match value {
            Value::Array(items) => stack.extend(items.iter().map(|c| (c, depth + 1))),
            Value::Object(map) => stack.extend(map.values().map(|c| (c, depth + 1))),
            _ => {}
        }
    }
    Ok(())
}

/// Sets the versions of an object about to be written, after checking it can be read
/// back ([`check_depth`]): every resource write passes here.
fn set_versions(object: &mut Value, revision: u64, generation: i64) -> Result<(), StoreError> {
    check_depth(object)?;
    let meta = metadata_mut(object)?;
    meta.insert("resourceVersion".into(), json!(revision.to_string()));
    meta.insert("generation".into(), json!(generation));
    Ok(())
}

fn check_preconditions(row: &Row0, pre: &Preconditions<'_>) -> Result<(), StoreError> {
    if let Some(rv) = pre.resource_version
        && rv != row.resource_version
    {
        return Err(row.key.conflict(format!(
            "the object has been modified; please apply your changes to the latest version and try again (resourceVersion {rv} is stale, current is {})",
            row.resource_version
        )));
    }
    if let Some(uid) = pre.uid
        && !uid.is_empty()
        && uid != row.uid
    {
        return Err(row.key.conflict(format!(
            "Precondition failed: UID in precondition: {uid}, UID in object meta: {}",
            row.uid
        )));
    }
    Ok(())
}

/// Reads and locks a row (`FOR UPDATE`).
pub(crate) async fn lock_row(tx: &mut Tx, key: &ObjectKey) -> Result<Option<Row0>, StoreError> {
    let row = sqlx::query(
        "SELECT uid, resource_version, generation, object FROM resources \
         WHERE kind = ? AND namespace = ? AND name = ? FOR UPDATE",
    )
    .bind(&key.kind)
    .bind(&key.namespace)
    .bind(&key.name)
    .fetch_optional(&mut **tx)
    .await
    .map_err(StoreError::query("lock resource"))?;
    row.map(|r| decode_row(key.clone(), &r)).transpose()
}

fn decode_row(key: ObjectKey, r: &sqlx::mysql::MySqlRow) -> Result<Row0, StoreError> {
    let text: String = r
        .try_get("object")
        .map_err(|e| StoreError::Corrupt(format!("resources.object: {e}")))?;
    Ok(Row0 {
        key,
        uid: r
            .try_get("uid")
            .map_err(|e| StoreError::Corrupt(format!("resources.uid: {e}")))?,
        resource_version: r
            .try_get("resource_version")
            .map_err(|e| StoreError::Corrupt(format!("resources.resource_version: {e}")))?,
        generation: r
            .try_get("generation")
            .map_err(|e| StoreError::Corrupt(format!("resources.generation: {e}")))?,
        object: parse_json(&text, "resources.object")?,
    })
}

/// One change-log row to append.
pub(crate) struct ChangeRow {
    revision: u64,
    event_type: &'static str,
    key: ObjectKey,
    uid: String,
    object: String,
    prev: Option<String>,
}

/// Rows per multi-row statement: well under MariaDB's placeholder and packet limits.
const ROWS_PER_STATEMENT: usize = 200;

/// Appends change-log rows with one multi-row INSERT per [`ROWS_PER_STATEMENT`]: the
/// fewer round trips under the revision counter's lock, the more writes per second.
pub(crate) async fn append_changes(tx: &mut Tx, rows: &[ChangeRow]) -> Result<(), StoreError> {
    for chunk in rows.chunks(ROWS_PER_STATEMENT) {
        let mut sql = String::from(
            "INSERT INTO change_log (revision, event_type, kind, namespace, name, uid, object, prev_object, created_at) VALUES ",
        );
        sql.push_str(&vec!["(?, ?, ?, ?, ?, ?, ?, ?, NOW(6))"; chunk.len()].join(", "));
        // Built from constant fragments only; values are bound.
        let mut q = sqlx::query(sqlx::AssertSqlSafe(sql));
        for r in chunk {
            q = q
                .bind(r.revision)
                .bind(r.event_type)
                .bind(&r.key.kind)
                .bind(&r.key.namespace)
                .bind(&r.key.name)
                .bind(&r.uid)
                .bind(&r.object)
                .bind(&r.prev);
        }
        q.execute(&mut **tx)
            .await
            .map_err(StoreError::query("append change"))?;
    }
    Ok(())
}

async fn append_change(
    tx: &mut Tx,
    revision: u64,
    event_type: &'static str,
    key: &ObjectKey,
    uid: &str,
    object: &Value,
    prev: Option<&str>,
) -> Result<(), StoreError> {
    append_changes(
        tx,
        &[ChangeRow {
            revision,
            event_type,
            key: key.clone(),
            uid: uid.to_owned(),
            object: object.to_string(),
            prev: prev.map(str::to_owned),
        }],
    )
    .await
}

/// A new object for [`insert_objects`]: its key, uid (from [`prepare_new`]) and body.
pub(crate) struct NewObject {
    /// Where it goes.
    pub key: ObjectKey,
    /// Its uid.
    pub uid: String,
    /// The prepared object; versions are set by the insert.
    pub object: Value,
}

/// Inserts prepared objects at consecutive revisions from `first_revision` (the caller
/// allocated them, last), with multi-row statements.
pub(crate) async fn insert_objects(
    tx: &mut Tx,
    first_revision: u64,
    items: &mut [NewObject],
) -> Result<(), StoreError> {
    let changes = insert_objects_log_later(tx, first_revision, items).await?;
    append_changes(tx, &changes).await
}

/// [`insert_objects`] without the change log: returns the change-log rows, which the
/// caller MUST append ([`append_changes`]) in the same transaction, so that several
/// writes of one transaction log in one statement.
pub(crate) async fn insert_objects_log_later(
    tx: &mut Tx,
    first_revision: u64,
    items: &mut [NewObject],
) -> Result<Vec<ChangeRow>, StoreError> {
    let mut texts = Vec::with_capacity(items.len());
    for (revision, item) in (first_revision..).zip(items.iter_mut()) {
        set_versions(&mut item.object, revision, 1)?;
        texts.push(item.object.to_string());
    }
    let indexed: Vec<(u64, &NewObject, &String)> = (first_revision..)
        .zip(items.iter())
        .zip(texts.iter())
        .map(|((r, i), t)| (r, i, t))
        .collect();
    for chunk in indexed.chunks(ROWS_PER_STATEMENT) {
        let mut sql = String::from(
            "INSERT INTO resources (uid, kind, namespace, name, resource_version, generation, created_at, object) VALUES ",
        );
        sql.push_str(&vec!["(?, ?, ?, ?, ?, 1, NOW(6), ?)"; chunk.len()].join(", "));
        // Built from constant fragments only; values are bound.
        let mut q = sqlx::query(sqlx::AssertSqlSafe(sql));
        for (revision, item, text) in chunk {
            q = q
                .bind(&item.uid)
                .bind(&item.key.kind)
                .bind(&item.key.namespace)
                .bind(&item.key.name)
                .bind(*revision)
                .bind(*text);
        }
        let res = q
            .execute(&mut **tx)
            .await
            .map_err(StoreError::query("insert resource"));
        match res {
            Err(e) if e.is_duplicate_key() => {
                let key = chunk
                    .first()
                    .map(|(_, i, _)| i.key.clone())
                    .unwrap_or_else(|| ObjectKey::new("", "", ""));
                return Err(if chunk.len() == 1 {
                    StoreError::AlreadyExists {
                        kind: key.kind,
                        namespace: key.namespace,
                        name: key.name,
                    }
                } else {
                    StoreError::Conflict {
                        kind: key.kind,
                        namespace: key.namespace,
                        name: key.name,
                        reason: "an object of this batch already exists".into(),
                    }
                });
            }
            Err(e) => return Err(e),
            Ok(_) => {}
        }
    }
    Ok(indexed
        .iter()
        .map(|(revision, item, text)| ChangeRow {
            revision: *revision,
            event_type: "ADDED",
            key: item.key.clone(),
            uid: item.uid.clone(),
            object: (*text).clone(),
            prev: None,
        })
        .collect())
}

/// A replacement for [`replace_objects`]: the locked row, the new body, its generation.
pub(crate) struct Replacement<'a> {
    /// The locked row.
    pub row: &'a Row0,
    /// The new object; versions are set by the write.
    pub object: Value,
    /// Its generation.
    pub generation: i64,
}

/// Writes replacements at consecutive revisions from `first_revision`, with one
/// multi-row upsert per chunk (the rows exist and are locked by the caller).
pub(crate) async fn replace_objects(
    tx: &mut Tx,
    first_revision: u64,
    items: &mut [Replacement<'_>],
) -> Result<(), StoreError> {
    let changes = replace_objects_log_later(tx, first_revision, items).await?;
    append_changes(tx, &changes).await
}

/// [`replace_objects`] without the change log: returns the change-log rows, which the
/// caller MUST append ([`append_changes`]) in the same transaction.
pub(crate) async fn replace_objects_log_later(
    tx: &mut Tx,
    first_revision: u64,
    items: &mut [Replacement<'_>],
) -> Result<Vec<ChangeRow>, StoreError> {
    let mut texts = Vec::with_capacity(items.len());
    for (revision, item) in (first_revision..).zip(items.iter_mut()) {
        set_versions(&mut item.object, revision, item.generation)?;
        texts.push(item.object.to_string());
    }
    let indexed: Vec<(u64, &Replacement<'_>, &String)> = (first_revision..)
        .zip(items.iter())
        .zip(texts.iter())
        .map(|((r, i), t)| (r, i, t))
        .collect();
    for chunk in indexed.chunks(ROWS_PER_STATEMENT) {
        let mut sql = String::from(
            "INSERT INTO resources (uid, kind, namespace, name, resource_version, generation, created_at, object, deletion_timestamp) VALUES ",
        );
        sql.push_str(
            &vec!["(?, ?, ?, ?, ?, ?, NOW(6), ?, IF(?, NOW(6), NULL))"; chunk.len()].join(", "),
        );
        sql.push_str(
            " ON DUPLICATE KEY UPDATE resource_version = VALUES(resource_version), generation = VALUES(generation), \
             object = VALUES(object), \
             deletion_timestamp = IF(VALUES(deletion_timestamp) IS NULL, NULL, COALESCE(deletion_timestamp, VALUES(deletion_timestamp)))",
        );
        // Built from constant fragments only; values are bound.
        let mut q = sqlx::query(sqlx::AssertSqlSafe(sql));
        for (revision, item, text) in chunk {
            q = q
                .bind(&item.row.uid)
                .bind(&item.row.key.kind)
                .bind(&item.row.key.namespace)
                .bind(&item.row.key.name)
                .bind(*revision)
                .bind(item.generation)
                .bind(*text)
                .bind(has_deletion_timestamp(&item.object));
        }
        q.execute(&mut **tx)
            .await
            .map_err(StoreError::query("update resource"))?;
    }
    Ok(indexed
        .iter()
        .map(|(revision, item, text)| ChangeRow {
            revision: *revision,
            event_type: "MODIFIED",
            key: item.row.key.clone(),
            uid: item.row.uid.clone(),
            object: (*text).clone(),
            prev: selector_prev(&item.row.object, &item.object),
        })
        .collect())
}

/// Prepares a new object for insertion: uid, timestamps, generation 1. Returns its key
/// and uid. Pure apart from the clock and uid generator.
pub(crate) fn prepare_new(object: &mut Value) -> Result<(ObjectKey, String), StoreError> {
    let key = ObjectKey::of(object)?;
    let uid = uuid::Uuid::new_v4().to_string();
    let meta = metadata_mut(object)?;
    meta.insert("uid".into(), json!(uid));
    meta.insert(
        "creationTimestamp".into(),
        json!(rfc3339(chrono::Utc::now())),
    );
    meta.remove("deletionTimestamp");
    meta.remove("resourceVersion");
    if key.namespace.is_empty() {
        meta.remove("namespace");
    }
    meta.insert("generation".into(), json!(1));
    Ok((key, uid))
}

/// Inserts a prepared object at `revision` (the caller allocated it, last).
pub(crate) async fn insert_object(
    tx: &mut Tx,
    revision: u64,
    key: &ObjectKey,
    uid: &str,
    object: &mut Value,
) -> Result<(), StoreError> {
    let mut items = [NewObject {
        key: key.clone(),
        uid: uid.to_string(),
        object: std::mem::take(object),
    }];
    let result = insert_objects(tx, revision, &mut items).await;
    let [item] = items;
    *object = item.object;
    result
}

/// Writes `object` over the locked `row` at `revision`.
pub(crate) async fn replace_object(
    tx: &mut Tx,
    revision: u64,
    row: &Row0,
    object: &mut Value,
    generation: i64,
) -> Result<(), StoreError> {
    let mut items = [Replacement {
        row,
        object: std::mem::take(object),
        generation,
    }];
    let result = replace_objects(tx, revision, &mut items).await;
    let [item] = items;
    *object = item.object;
    result
}

/// The kinds whose removed objects keep a tombstone (their final state, by uid) for
/// the change log's retention: those Shaken Fist v0.8 clients poll by uuid after a
/// delete.
pub const TOMBSTONE_KINDS: &[&str] = &["Instance", "Network"];

/// Removes the locked `row` at `revision`; `object` is its final state (kept as a
/// tombstone for the [`TOMBSTONE_KINDS`]).
pub(crate) async fn remove_object(
    tx: &mut Tx,
    revision: u64,
    row: &Row0,
    object: &mut Value,
) -> Result<(), StoreError> {
    set_versions(
        object,
        revision,
        row.generation.max(json_generation(object)),
    )?;
    sqlx::query("DELETE FROM resources WHERE uid = ?")
        .bind(&row.uid)
        .execute(&mut **tx)
        .await
        .map_err(StoreError::query("delete resource"))?;
    if TOMBSTONE_KINDS.contains(&row.key.kind.as_str()) {
        sqlx::query(
            "REPLACE INTO tombstones (uid, kind, namespace, resource_version, object, deleted_at) \
             VALUES (?, ?, ?, ?, ?, NOW(6))",
        )
        .bind(&row.uid)
        .bind(&row.key.kind)
        .bind(&row.key.namespace)
        .bind(revision)
        .bind(object.to_string())
        .execute(&mut **tx)
        .await
        .map_err(StoreError::query("record tombstone"))?;
    }
    append_change(
        tx,
        revision,
        "DELETED",
        &row.key,
        &row.uid,
        object,
        selector_prev(&row.object, object).as_deref(),
    )
    .await
}

/// The previous object for the change log, only when the change moved the object
/// across label selectors (its labels changed: name and namespace never do). Watchers
/// read an absent previous object as "matched before exactly as now"; leaving it out
/// of every other change keeps each write to one copy of the object in the log.
fn selector_prev(stored: &Value, next: &Value) -> Option<String> {
    let labels = |o: &Value| o.pointer("/metadata/labels").cloned();
    (labels(stored) != labels(next)).then(|| stored.to_string())
}

fn json_generation(object: &Value) -> i64 {
    object
        .pointer("/metadata/generation")
        .and_then(Value::as_i64)
        .unwrap_or(1)
}

/// Computes the object an update produces from the stored one. Pure.
pub(crate) fn merge_update(
    stored: &Value,
    input: &Value,
    scope: UpdateScope,
) -> Result<Value, StoreError> {
    let mut out = stored.clone();
    match scope {
        UpdateScope::Main => {
            let input_meta = input.get("metadata").and_then(Value::as_object);
            let meta = metadata_mut(&mut out)?;
            for field in MUTABLE_METADATA {
                match input_meta.and_then(|m| m.get(field)) {
                    Some(v) if !v.is_null() => {
                        meta.insert(field.into(), v.clone());
                    }
                    _ => {
                        meta.remove(field);
                    }
                }
            }
            let out_map = out
                .as_object_mut()
                .ok_or_else(|| StoreError::Corrupt("stored object is not a JSON object".into()))?;
            out_map
                .retain(|k, _| matches!(k.as_str(), "apiVersion" | "kind" | "metadata" | "status"));
            for (k, v) in spec_part(input) {
                out_map.insert(k, v);
            }
        }
        UpdateScope::Status => {
            let out_map = out
                .as_object_mut()
                .ok_or_else(|| StoreError::Corrupt("stored object is not a JSON object".into()))?;
            match input.get("status") {
                Some(v) if !v.is_null() => {
                    out_map.insert("status".into(), v.clone());
                }
                _ => {
                    out_map.remove("status");
                }
            }
        }
    }
    Ok(out)
}

/// The outcome of applying a computed object to a locked row: writes nothing when
/// nothing changed, removes the row when an object being deleted lost its last
/// finalizer, else replaces it; bumps generation when the spec part changed.
pub(crate) async fn apply_change(
    tx: &mut Tx,
    row: &Row0,
    mut next: Value,
    dry_run: bool,
) -> Result<Option<Stored>, StoreError> {
    if next == row.object {
        return Ok(None);
    }
    let generation = if spec_part(&next) != spec_part(&row.object) {
        row.generation + 1
    } else {
        row.generation
    };
    let remove = has_deletion_timestamp(&next) && finalizers_empty(&next);
    if dry_run {
        set_versions(&mut next, row.resource_version, generation)?;
        return Ok(Some(Stored {
            object: next,
            resource_version: row.resource_version,
            changed: true,
        }));
    }
    let revision = allocate_revisions(tx, 1).await?;
    if remove {
        remove_object(tx, revision, row, &mut next).await?;
    } else {
        replace_object(tx, revision, row, &mut next, generation).await?;
    }
    Ok(Some(Stored {
        object: next,
        resource_version: revision,
        changed: true,
    }))
}

fn unchanged(row: Row0) -> Stored {
    Stored {
        object: row.object,
        resource_version: row.resource_version,
        changed: false,
    }
}

/// The floating network's well-known uid (DESIGN: Resources).
pub use sf_schema::network::FLOATING_NETWORK_UID;
/// The floating network's name.
pub const FLOATING_NETWORK_NAME: &str = "floating";

impl Store {
    /// Creates an object (see the module contract).
    pub async fn create(&self, object: Value, dry_run: bool) -> Result<Stored, StoreError> {
        self.create_with(object, dry_run, None).await
    }

    /// Creates the floating network (no namespace, the well-known uid
    /// [`FLOATING_NETWORK_UID`], `netblock`, no DHCP/NAT/DNS) unless a Network with
    /// that uid or name already exists. Returns the new object, or `None` when it
    /// existed. Idempotent; `sf-ctl ensure-mariadb-schema` calls it.
    pub async fn ensure_floating_network(
        &self,
        netblock: &str,
    ) -> Result<Option<Stored>, StoreError> {
        if self
            .get_by_uid("Network", FLOATING_NETWORK_UID)
            .await
            .is_ok()
            || self
                .get(&ObjectKey::new("Network", "", FLOATING_NETWORK_NAME))
                .await
                .is_ok()
        {
            return Ok(None);
        }
        let object = json!({
            "apiVersion": "shakenfist.io/v1alpha1",
            "kind": "Network",
            "metadata": {"name": FLOATING_NETWORK_NAME},
            "spec": {"netblock": netblock, "provideDhcp": false, "provideNat": false, "provideDns": false},
        });
        match self
            .create_with(object, false, Some(FLOATING_NETWORK_UID))
            .await
        {
            Ok(stored) => Ok(Some(stored)),
            Err(StoreError::AlreadyExists { .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    async fn create_with(
        &self,
        object: Value,
        dry_run: bool,
        fixed_uid: Option<&str>,
    ) -> Result<Stored, StoreError> {
        self.with_retry("create resource", || async {
            let mut object = object.clone();
            let (key, mut uid) = prepare_new(&mut object)?;
            if let Some(fixed) = fixed_uid {
                uid = fixed.to_owned();
                metadata_mut(&mut object)?.insert("uid".into(), json!(uid));
            }
            if dry_run {
                set_versions(&mut object, 0, 1)?;
                if !namespace_present(self, &key.namespace).await? {
                    return Err(StoreError::NotFound {
                        kind: "Namespace".into(),
                        namespace: String::new(),
                        name: key.namespace,
                    });
                }
                if self.get(&key).await.is_ok() {
                    return Err(StoreError::AlreadyExists {
                        kind: key.kind,
                        namespace: key.namespace,
                        name: key.name,
                    });
                }
                return Ok(Stored {
                    object,
                    resource_version: 0,
                    changed: true,
                });
            }
            let mut tx = self.begin("create resource").await?;
            // The namespace first (it must exist, and stay until COMMIT), then the
            // name's row lock (duplicate check), then the counter.
            hold_namespaces(&mut tx, [key.namespace.as_str()]).await?;
            let exists = lock_row(&mut tx, &key).await?;
            if exists.is_some() {
                return Err(StoreError::AlreadyExists {
                    kind: key.kind,
                    namespace: key.namespace,
                    name: key.name,
                });
            }
            let revision = allocate_revisions(&mut tx, 1).await?;
            insert_object(&mut tx, revision, &key, &uid, &mut object).await?;
            self.commit(tx, "create resource").await?;
            Ok(Stored {
                object,
                resource_version: revision,
                changed: true,
            })
        })
        .await
    }

    /// Reads one object.
    pub async fn get(&self, key: &ObjectKey) -> Result<Stored, StoreError> {
        let row = sqlx::query(
            "SELECT resource_version, object FROM resources WHERE kind = ? AND namespace = ? AND name = ?",
        )
        .bind(&key.kind)
        .bind(&key.namespace)
        .bind(&key.name)
        .fetch_optional(&self.pool)
        .await
        .map_err(StoreError::query("get resource"))?
        .ok_or_else(|| key.not_found())?;
        stored_from_row(&row)
    }

    /// Reads one object of `kind` by uid.
    pub async fn get_by_uid(&self, kind: &str, uid: &str) -> Result<Stored, StoreError> {
        self.one_by_uid(
            "SELECT resource_version, object FROM resources WHERE uid = ? AND kind = ?",
            "get resource by uid",
            kind,
            uid,
        )
        .await
    }

    /// The row `sql` (binding uid, then kind) reads, as a Stored; NotFound when none.
    async fn one_by_uid(
        &self,
        sql: &'static str,
        action: &'static str,
        kind: &str,
        uid: &str,
    ) -> Result<Stored, StoreError> {
        let row = sqlx::query(sql)
            .bind(uid)
            .bind(kind)
            .fetch_optional(&self.pool)
            .await
            .map_err(StoreError::query(action))?
            .ok_or_else(|| StoreError::NotFound {
                kind: kind.to_string(),
                namespace: String::new(),
                name: uid.to_string(),
            })?;
        stored_from_row(&row)
    }

    /// The final state of the removed object `uid` of `kind` while its tombstone is
    /// kept ([`TOMBSTONE_KINDS`]; NotFound otherwise).
    pub async fn get_deleted(&self, kind: &str, uid: &str) -> Result<Stored, StoreError> {
        self.one_by_uid(
            "SELECT resource_version, object FROM tombstones WHERE uid = ? AND kind = ?",
            "get tombstone",
            kind,
            uid,
        )
        .await
    }

    /// Deletes the tombstones older than `keep_for`; returns how many.
    pub async fn purge_tombstones(&self, keep_for: std::time::Duration) -> Result<u64, StoreError> {
        let Some(cutoff) = chrono::Duration::from_std(keep_for)
            .ok()
            .and_then(|d| chrono::Utc::now().checked_sub_signed(d))
        else {
            return Ok(0); // Longer than time itself: nothing is that old.
        };
        let mut deleted = 0;
        loop {
            let n = sqlx::query("DELETE FROM tombstones WHERE deleted_at < ? LIMIT 5000")
                .bind(cutoff.naive_utc())
                .execute(&self.pool)
                .await
                .map_err(StoreError::query("purge tombstones"))?
                .rows_affected();
            deleted += n;
            if n < 5000 {
                return Ok(deleted);
            }
        }
    }

    /// Lists objects of `kind` (in `namespace`, or all when `None`) matching the
    /// selectors, with the revision of the same snapshot. One statement, so one read
    /// view: the revision and the rows agree.
    pub async fn list(
        &self,
        kind: &str,
        namespace: Option<&str>,
        labels: &LabelSelector,
        fields: &FieldSelector,
    ) -> Result<(Vec<Value>, u64), StoreError> {
        let (texts, revision) = self.list_raw(kind, namespace, labels, fields).await?;
        let items = texts
            .iter()
            .map(|t| parse_json(t, "resources.object"))
            .collect::<Result<_, _>>()?;
        Ok((items, revision))
    }

    /// [`Store::list`] as the stored JSON texts, for callers that only pass them on
    /// (the gateway's ListResources): an object is parsed only when a selector must
    /// be evaluated on it, so an unfiltered list of 10,000 objects costs no JSON work.
    pub async fn list_raw(
        &self,
        kind: &str,
        namespace: Option<&str>,
        labels: &LabelSelector,
        fields: &FieldSelector,
    ) -> Result<(Vec<String>, u64), StoreError> {
        // SQL narrows by namespace and an exact name; any selector is still checked
        // here in full.
        let filter = !labels.is_empty() || !fields.is_empty();
        let mut sql = String::from(
            "SELECT c.revision, r.object FROM revision_counter c \
             LEFT JOIN resources r ON r.kind = ?",
        );
        if namespace.is_some() {
            sql.push_str(" AND r.namespace = ?");
        }
        if fields.exact_name().is_some() {
            sql.push_str(" AND r.name = ?");
        }
        sql.push_str(" WHERE c.id = 1 ORDER BY r.namespace, r.name");
        // Built from constant fragments only; values are bound.
        let mut q = sqlx::query(sqlx::AssertSqlSafe(sql)).bind(kind);
        if let Some(ns) = namespace {
            q = q.bind(ns);
        }
        if let Some(name) = fields.exact_name() {
            q = q.bind(name);
        }
        let rows = q
            .fetch_all(&self.pool)
            .await
            .map_err(StoreError::query("list resources"))?;
        let mut revision = 0;
        let mut items = Vec::with_capacity(rows.len());
        for row in &rows {
            revision = row
                .try_get::<u64, _>(0)
                .map_err(|e| StoreError::Corrupt(format!("revision_counter: {e}")))?;
            let text: Option<String> = row
                .try_get(1)
                .map_err(|e| StoreError::Corrupt(format!("resources.object: {e}")))?;
            if let Some(text) = text {
                if filter {
                    let object = parse_json(&text, "resources.object")?;
                    if !(labels.matches(&object) && fields.matches(&object)) {
                        continue;
                    }
                }
                items.push(text);
            }
        }
        if rows.is_empty() {
            return Err(StoreError::Corrupt(
                "revision_counter has no row 1: run `sf-ctl ensure-mariadb-schema`".into(),
            ));
        }
        Ok((items, revision))
    }

    /// Replaces metadata and spec (or status, by `scope`) of the object `input` names.
    pub async fn update(
        &self,
        input: Value,
        scope: UpdateScope,
        pre: Preconditions<'_>,
        dry_run: bool,
    ) -> Result<Stored, StoreError> {
        let key = ObjectKey::of(&input)?;
        let pre = Preconditions {
            uid: pre
                .uid
                .or_else(|| input.pointer("/metadata/uid").and_then(Value::as_str)),
            ..pre
        };
        let op = match scope {
            UpdateScope::Main => "update resource",
            UpdateScope::Status => "update status",
        };
        self.with_retry(op, || async {
            let mut tx = self.begin(op).await?;
            let row = lock_row(&mut tx, &key)
                .await?
                .ok_or_else(|| key.not_found())?;
            check_preconditions(&row, &pre)?;
            let next = merge_update(&row.object, &input, scope)?;
            match apply_change(&mut tx, &row, next, dry_run).await? {
                None => Ok(unchanged(row)),
                Some(stored) => {
                    if !dry_run {
                        self.commit(tx, op).await?;
                    }
                    Ok(stored)
                }
            }
        })
        .await
    }

    /// Applies an RFC 7386 merge patch to `status` of `key`; the CAS is the row lock, so
    /// it cannot lose (the agent's path for observed facts).
    pub async fn merge_status(&self, key: &ObjectKey, patch: &Value) -> Result<Stored, StoreError> {
        self.with_retry("merge status", || async {
            let mut tx = self.begin("merge status").await?;
            let row = lock_row(&mut tx, key)
                .await?
                .ok_or_else(|| key.not_found())?;
            let mut next = row.object.clone();
            let status = next
                .as_object_mut()
                .ok_or_else(|| StoreError::Corrupt("stored object is not a JSON object".into()))?
                .entry("status")
                .or_insert_with(|| json!({}));
            json_patch::merge(status, patch);
            match apply_change(&mut tx, &row, next, false).await? {
                None => Ok(unchanged(row)),
                Some(stored) => {
                    self.commit(tx, "merge status").await?;
                    Ok(stored)
                }
            }
        })
        .await
    }

    /// Deletes `key` (see the module contract).
    pub async fn delete(
        &self,
        key: &ObjectKey,
        pre: Preconditions<'_>,
        dry_run: bool,
    ) -> Result<Deleted, StoreError> {
        self.with_retry("delete resource", || async {
            let mut tx = self.begin("delete resource").await?;
            let row = lock_row(&mut tx, key)
                .await?
                .ok_or_else(|| key.not_found())?;
            check_preconditions(&row, &pre)?;
            let mut object = row.object.clone();
            if !finalizers_empty(&object) {
                if has_deletion_timestamp(&object) {
                    return Ok(Deleted {
                        object,
                        removed: false,
                        revision: row.resource_version,
                    });
                }
                metadata_mut(&mut object)?.insert(
                    "deletionTimestamp".into(),
                    json!(rfc3339(chrono::Utc::now())),
                );
                if dry_run {
                    return Ok(Deleted {
                        object,
                        removed: false,
                        revision: row.resource_version,
                    });
                }
                let revision = allocate_revisions(&mut tx, 1).await?;
                replace_object(&mut tx, revision, &row, &mut object, row.generation + 1).await?;
                self.commit(tx, "delete resource").await?;
                return Ok(Deleted {
                    object,
                    removed: false,
                    revision,
                });
            }
            if dry_run {
                return Ok(Deleted {
                    object,
                    removed: true,
                    revision: row.resource_version,
                });
            }
            if key.kind == "Blob" {
                // A screenshot's bytes go with their Blob.
                super::blobs::delete_blob_data(&mut tx, &row.uid).await?;
            }
            let revision = allocate_revisions(&mut tx, 1).await?;
            remove_object(&mut tx, revision, &row, &mut object).await?;
            self.commit(tx, "delete resource").await?;
            Ok(Deleted {
                object,
                removed: true,
                revision,
            })
        })
        .await
    }

    /// The newest revision.
    pub async fn current_revision(&self) -> Result<u64, StoreError> {
        sqlx::query_scalar::<_, u64>("SELECT revision FROM revision_counter WHERE id = 1")
            .fetch_one(&self.pool)
            .await
            .map_err(StoreError::query("read revision"))
    }
}

fn stored_from_row(row: &sqlx::mysql::MySqlRow) -> Result<Stored, StoreError> {
    let text: String = row
        .try_get("object")
        .map_err(|e| StoreError::Corrupt(format!("resources.object: {e}")))?;
    Ok(Stored {
        object: parse_json(&text, "resources.object")?,
        resource_version: row
            .try_get("resource_version")
            .map_err(|e| StoreError::Corrupt(format!("resources.resource_version: {e}")))?,
        changed: false,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn main_updates_keep_status_and_identity_and_replace_spec_and_labels() {
        let stored = json!({
            "apiVersion": "shakenfist.io/v1alpha1", "kind": "Instance",
            "metadata": {"name": "a", "uid": "u1", "labels": {"x": "1"}, "finalizers": ["f"], "generation": 1},
            "spec": {"cpus": 1}, "status": {"state": "created"}
        });
        let input = json!({
            "apiVersion": "shakenfist.io/v1alpha1", "kind": "Instance",
            "metadata": {"name": "a", "uid": "evil", "labels": {"y": "2"}},
            "spec": {"cpus": 2}, "status": {"state": "hacked"}
        });
        let out = merge_update(&stored, &input, UpdateScope::Main).expect("merge");
        assert_eq!(out["spec"]["cpus"], 2);
        assert_eq!(out["status"]["state"], "created");
        assert_eq!(out["metadata"]["uid"], "u1");
        assert_eq!(out["metadata"]["labels"], json!({"y": "2"}));
        assert!(out["metadata"].get("finalizers").is_none());
    }

    #[test]
    fn status_updates_touch_only_status() {
        let stored = json!({"kind": "Instance", "metadata": {"name": "a", "labels": {"x": "1"}}, "spec": {"cpus": 1}});
        let input = json!({"kind": "Instance", "metadata": {"name": "a"}, "spec": {"cpus": 9}, "status": {"state": "created"}});
        let out = merge_update(&stored, &input, UpdateScope::Status).expect("merge");
        assert_eq!(out["spec"]["cpus"], 1);
        assert_eq!(out["metadata"]["labels"]["x"], "1");
        assert_eq!(out["status"]["state"], "created");
    }

    #[test]
    fn keys_need_kind_and_name() {
        assert!(ObjectKey::of(&json!({"metadata": {"name": "a"}})).is_err());
        assert!(ObjectKey::of(&json!({"kind": "X", "metadata": {}})).is_err());
        let k = ObjectKey::of(&json!({"kind": "X", "metadata": {"name": "a"}})).expect("key");
        assert_eq!(k.namespace, "");
    }
}
