//! Namespaces and their API keys (authentication data; DESIGN invariant 8).
//!
//! Contract:
//! - A namespace is a `namespaces` row AND a cluster-scoped Namespace resource, created
//!   and deleted together in one transaction; a name taken by either is
//!   [`StoreError::AlreadyExists`].
//! - Creating a namespaced object (resources, operations, IPAM leases) needs its
//!   namespace's row and holds it shared to COMMIT ([`hold_namespaces`]); a missing
//!   namespace is [`StoreError::NotFound`] of kind Namespace.
//! - `system` (the admin namespace) cannot be deleted. A namespace that still holds
//!   objects other than IPAMLeases and finished ClusterOperations cannot be deleted
//!   ([`StoreError::Conflict`], naming how many of each kind). Delete takes the row
//!   exclusively before counting, so no create can commit into a namespace being
//!   deleted. Leftover IPAMLeases (addresses resting in a deletion halo) and finished
//!   operations (complete, error, abort: history the purge would remove after an hour)
//!   go with it, each with a DELETED change, as do its keys (foreign-key cascade). The
//!   Namespace object is removed outright. Of the Blobs it owns (`spec.ownerNamespace`)
//!   those on no node (screenshots) go, bytes and all; those with files on nodes pass
//!   to `system` (the blob controller removes the files once unused), so a later
//!   namespace of the same name sees none of them.
//! - Keys are stored as hashes only (the caller hashes). Every put, new or
//!   replacing, gets a new nonce: tokens carry the nonce, so rotating a key revokes
//!   the tokens issued under it. Keys are not resources: no revision.
//! - Lock order: the `namespaces` row, then `cluster_operations` rows, then
//!   `resources` rows, then the revision counter (see [`super`]).

use chrono::{DateTime, Utc};
use sea_orm::sqlx::{self, Row};
use serde_json::{Value, json};
use sf_schema::namespace::SYSTEM_NAMESPACE;

use super::blobs::delete_blob_data;
use super::queue::{remove_unlinked, unfinished_operations_in, unlink_finished_operations_in};
use super::resources::{
    Deleted, ObjectKey, insert_object, lock_row, prepare_new, remove_object, replace_object,
};
use super::{Store, StoreError, Stored, Tx, allocate_revisions};

const NAMESPACE_KIND: &str = "Namespace";
const KEY_KIND: &str = "NamespaceKey";

/// A namespace key as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyRecord {
    /// The namespace.
    pub namespace: String,
    /// The key's name.
    pub key_name: String,
    /// The key's password hash.
    pub key_hash: String,
    /// Changes on every put; carried in issued tokens.
    pub nonce: String,
    /// When this version of the key was stored.
    pub created_at: DateTime<Utc>,
}

fn namespace_key(name: &str) -> ObjectKey {
    ObjectKey::new(NAMESPACE_KIND, "", name)
}

fn check_namespace_name(name: &str) -> Result<(), StoreError> {
    if !sf_schema::validation::is_dns_label(name) {
        return Err(StoreError::Invalid(format!(
            "namespace name {name:?} must be a DNS label: 1 to 63 lowercase letters, digits and '-', starting and ending with a letter or digit"
        )));
    }
    Ok(())
}

fn check_key_name(key_name: &str) -> Result<(), StoreError> {
    if key_name.is_empty() || key_name.len() > 63 || !key_name.bytes().all(|b| b.is_ascii_graphic())
    {
        return Err(StoreError::Invalid(format!(
            "key name {key_name:?} must be 1 to 63 printable ASCII characters"
        )));
    }
    Ok(())
}

fn namespace_not_found(name: &str) -> StoreError {
    StoreError::NotFound {
        kind: NAMESPACE_KIND.into(),
        namespace: String::new(),
        name: name.into(),
    }
}

fn key_from_row(r: &sqlx::mysql::MySqlRow) -> Result<KeyRecord, StoreError> {
    let col = |e: sqlx::Error| StoreError::Corrupt(format!("namespace_keys: {e}"));
    Ok(KeyRecord {
        namespace: r.try_get("namespace").map_err(col)?,
        key_name: r.try_get("key_name").map_err(col)?,
        key_hash: r.try_get("key_hash").map_err(col)?,
        nonce: r.try_get("nonce").map_err(col)?,
        created_at: r.try_get("created_at").map_err(col)?,
    })
}

/// Conflict naming how many objects of each kind keep namespace `name` from being
/// deleted: everything but IPAMLeases and finished ClusterOperations.
async fn namespace_blockers(tx: &mut Tx, name: &str) -> Result<(), StoreError> {
    let mut blockers: Vec<(String, i64)> = sqlx::query_as(
        "SELECT kind, COUNT(*) FROM resources WHERE namespace = ? \
         AND kind NOT IN ('IPAMLease', 'ClusterOperation') GROUP BY kind ORDER BY kind",
    )
    .bind(name)
    .fetch_all(&mut **tx)
    .await
    .map_err(StoreError::query("count namespace objects"))?;
    let unfinished = unfinished_operations_in(tx, name).await?;
    if unfinished > 0 {
        blockers.push((
            "unfinished ClusterOperation".into(),
            i64::try_from(unfinished).unwrap_or(i64::MAX),
        ));
    }
    if blockers.is_empty() {
        return Ok(());
    }
    let list: Vec<String> = blockers
        .iter()
        .map(|(kind, n)| format!("{n} {kind}"))
        .collect();
    Err(StoreError::Conflict {
        kind: NAMESPACE_KIND.into(),
        namespace: String::new(),
        name: name.into(),
        reason: format!(
            "namespace {name} still holds {}: delete them first",
            list.join(", ")
        ),
    })
}

/// Locks the namespace's row; false if there is none.
async fn lock_namespace_row(tx: &mut Tx, name: &str) -> Result<bool, StoreError> {
    let row: Option<String> =
        sqlx::query_scalar("SELECT name FROM namespaces WHERE name = ? FOR UPDATE")
            .bind(name)
            .fetch_optional(&mut **tx)
            .await
            .map_err(StoreError::query("lock namespace"))?;
    Ok(row.is_some())
}

/// Holds the namespaces of objects a transaction creates: a shared lock on each
/// `namespaces` row to COMMIT, so [`Store::delete_namespace`] (which takes the row
/// exclusively before counting what the namespace holds) cannot remove a namespace
/// between this check and the new object's commit. Empty names (cluster-scoped
/// objects) are skipped. [`StoreError::NotFound`] of kind Namespace names the first
/// namespace that has no row, as Kubernetes and Shaken Fist answer a create in an
/// unknown namespace. Taken first: namespaces come before every other lock.
pub(crate) async fn hold_namespaces<'a>(
    tx: &mut Tx,
    names: impl IntoIterator<Item = &'a str>,
) -> Result<(), StoreError> {
    let wanted: std::collections::BTreeSet<&str> =
        names.into_iter().filter(|n| !n.is_empty()).collect();
    if wanted.is_empty() {
        return Ok(());
    }
    let text = format!(
        "SELECT name FROM namespaces FORCE INDEX (PRIMARY) WHERE name IN ({}) LOCK IN SHARE MODE",
        vec!["?"; wanted.len()].join(", ")
    );
    let mut q = sqlx::query_scalar::<_, String>(sqlx::AssertSqlSafe(text));
    for name in &wanted {
        q = q.bind(*name);
    }
    let held: Vec<String> = q
        .fetch_all(&mut **tx)
        .await
        .map_err(StoreError::query("hold namespaces"))?;
    match wanted.iter().find(|n| !held.iter().any(|h| h == *n)) {
        Some(missing) => Err(namespace_not_found(missing)),
        None => Ok(()),
    }
}

/// Whether namespace `name` exists ('' always does: cluster scope). For dry runs,
/// which lock nothing.
pub(crate) async fn namespace_present(store: &Store, name: &str) -> Result<bool, StoreError> {
    if name.is_empty() {
        return Ok(true);
    }
    namespace_exists(store, name).await
}

async fn namespace_exists(store: &Store, name: &str) -> Result<bool, StoreError> {
    let row: Option<String> = sqlx::query_scalar("SELECT name FROM namespaces WHERE name = ?")
        .bind(name)
        .fetch_optional(store.pool())
        .await
        .map_err(StoreError::query("read namespace"))?;
    Ok(row.is_some())
}

impl Store {
    /// Creates namespace `name`: its row and its Namespace object, in one transaction.
    pub async fn create_namespace(&self, name: &str) -> Result<Stored, StoreError> {
        check_namespace_name(name)?;
        let key = namespace_key(name);
        let already = || StoreError::AlreadyExists {
            kind: NAMESPACE_KIND.into(),
            namespace: String::new(),
            name: name.into(),
        };
        self.with_retry("create namespace", || async {
            let mut object = namespace_object(name);
            let (_, uid) = prepare_new(&mut object)?;
            let mut tx = self.begin("create namespace").await?;
            if lock_row(&mut tx, &key).await?.is_some() {
                return Err(already());
            }
            let inserted =
                sqlx::query("INSERT INTO namespaces (name, uid, created_at) VALUES (?, ?, NOW(6))")
                    .bind(name)
                    .bind(&uid)
                    .execute(&mut *tx)
                    .await
                    .map_err(StoreError::query("create namespace"));
            match inserted {
                Err(e) if e.is_duplicate_key() => return Err(already()),
                other => other?,
            };
            let revision = allocate_revisions(&mut tx, 1).await?;
            insert_object(&mut tx, revision, &key, &uid, &mut object).await?;
            self.commit(tx, "create namespace").await?;
            Ok(Stored {
                object,
                resource_version: revision,
                changed: true,
            })
        })
        .await
    }

    /// Deletes namespace `name` with its keys, its leftover IPAMLeases and its
    /// Namespace object (see the module contract). `revision` is 0 when there was no
    /// Namespace object to remove.
    pub async fn delete_namespace(&self, name: &str) -> Result<Deleted, StoreError> {
        if name == SYSTEM_NAMESPACE {
            return Err(StoreError::Invalid(format!(
                "the {SYSTEM_NAMESPACE} namespace is the admin namespace and cannot be deleted"
            )));
        }
        check_namespace_name(name)?;
        let key = namespace_key(name);
        // Finished operations go with the namespace. When nothing blocks the delete, most
        // go first, in short transactions of their own (a busy namespace keeps an hour
        // of them, and the counter must not be held that long); the delete below takes
        // what finished meanwhile. A refused delete removes nothing.
        let mut tx = self.begin("delete namespace").await?;
        let blocked = namespace_blockers(&mut tx, name).await;
        tx.rollback()
            .await
            .map_err(StoreError::query("delete namespace"))?;
        blocked?;
        self.purge_finished_operations_of(name).await?;
        self.with_retry("delete namespace", || async {
            let mut tx = self.begin("delete namespace").await?;
            let has_row = lock_namespace_row(&mut tx, name).await?;
            // Creates hold this row shared to COMMIT (hold_namespaces), so with it held
            // exclusively nothing new can appear in the namespace: the counts stay true.
            namespace_blockers(&mut tx, name).await?;
            // Finished operations are history of the namespace's objects: they go with it.
            let finished = unlink_finished_operations_in(&mut tx, name).await?;
            let leases: Vec<String> = sqlx::query_scalar(
                "SELECT name FROM resources WHERE kind = 'IPAMLease' AND namespace = ? ORDER BY name",
            )
            .bind(name)
            .fetch_all(&mut *tx)
            .await
            .map_err(StoreError::query("list namespace leases"))?;
            let mut lease_rows = Vec::with_capacity(leases.len());
            for lease in &leases {
                if let Some(row) = lock_row(&mut tx, &ObjectKey::new("IPAMLease", name, lease)).await? {
                    lease_rows.push(row);
                }
            }
            // Blobs are cluster scoped but belong to a namespace (`spec.ownerNamespace`,
            // which decides who may read them): none may pass to a later namespace
            // of the same name.
            let blob_names: Vec<String> = sqlx::query_scalar(
                "SELECT name FROM resources WHERE kind = 'Blob' AND namespace = '' \
                 AND JSON_VALUE(object, '$.spec.ownerNamespace') = ? ORDER BY name",
            )
            .bind(name)
            .fetch_all(&mut *tx)
            .await
            .map_err(StoreError::query("list namespace blobs"))?;
            let mut blob_rows = Vec::with_capacity(blob_names.len());
            for blob in &blob_names {
                if let Some(row) = lock_row(&mut tx, &ObjectKey::new("Blob", "", blob)).await? {
                    let on_nodes = row
                        .object
                        .pointer("/status/nodes")
                        .and_then(Value::as_array)
                        .is_some_and(|n| !n.is_empty());
                    if !on_nodes {
                        // A screenshot: its bytes are in MariaDB and go now.
                        delete_blob_data(&mut tx, &row.uid).await?;
                    }
                    blob_rows.push((row, on_nodes));
                }
            }
            let ns_row = lock_row(&mut tx, &key).await?;
            if !has_row && ns_row.is_none() {
                return Err(namespace_not_found(name));
            }
            // Own rows before the counter: the keys go by cascade.
            sqlx::query("DELETE FROM namespaces WHERE name = ?")
                .bind(name)
                .execute(&mut *tx)
                .await
                .map_err(StoreError::query("delete namespace"))?;
            // A namesake made later must not read the old objects' final states.
            sqlx::query("DELETE FROM tombstones WHERE namespace = ?")
                .bind(name)
                .execute(&mut *tx)
                .await
                .map_err(StoreError::query("delete namespace"))?;
            remove_unlinked(&mut tx, &finished).await?;
            for row in &lease_rows {
                let revision = allocate_revisions(&mut tx, 1).await?;
                let mut object = row.object.clone();
                remove_object(&mut tx, revision, row, &mut object).await?;
            }
            for (row, on_nodes) in &blob_rows {
                let revision = allocate_revisions(&mut tx, 1).await?;
                let mut object = row.object.clone();
                if *on_nodes {
                    // Files on nodes: the blob controller still removes them once
                    // nothing uses them. Only `system` may see it from now on.
                    object["spec"]["ownerNamespace"] = json!(SYSTEM_NAMESPACE);
                    replace_object(&mut tx, revision, row, &mut object, row.generation + 1)
                        .await?;
                } else {
                    remove_object(&mut tx, revision, row, &mut object).await?;
                }
            }
            let deleted = match ns_row {
                Some(row) => {
                    let revision = allocate_revisions(&mut tx, 1).await?;
                    let mut object = row.object.clone();
                    remove_object(&mut tx, revision, &row, &mut object).await?;
                    Deleted {
                        object,
                        removed: true,
                        revision,
                    }
                }
                None => Deleted {
                    object: json!({"apiVersion": "shakenfist.io/v1alpha1", "kind": NAMESPACE_KIND, "metadata": {"name": name}}),
                    removed: true,
                    revision: 0,
                },
            };
            self.commit(tx, "delete namespace").await?;
            Ok(deleted)
        })
        .await
    }

    /// Gives every namespace that holds objects (or has a Namespace object) but no
    /// `namespaces` row its row, and its Namespace object when missing, so creates in it
    /// work (they need the row since objects go only into namespaces that exist).
    /// Names that are not DNS labels are skipped with a warning. Idempotent; `sf-ctl
    /// ensure-mariadb-schema` runs it. Returns the names adopted.
    pub async fn adopt_orphan_namespaces(&self) -> Result<Vec<String>, StoreError> {
        let names: Vec<String> = sqlx::query_scalar(
            "SELECT DISTINCT r.namespace FROM resources r WHERE r.namespace <> '' \
             AND NOT EXISTS (SELECT 1 FROM namespaces n WHERE n.name = r.namespace) \
             UNION SELECT r.name FROM resources r WHERE r.kind = 'Namespace' \
             AND r.namespace = '' AND NOT EXISTS (SELECT 1 FROM namespaces n WHERE n.name = r.name) \
             ORDER BY 1",
        )
        .fetch_all(&self.pool)
        .await
        .map_err(StoreError::query("find namespaces without a row"))?;
        let mut adopted = Vec::new();
        for name in names {
            if check_namespace_name(&name).is_err() {
                tracing::warn!(namespace = %name, "objects live in a namespace whose name is not a DNS label: not adopted");
                continue;
            }
            if self.adopt_namespace(&name).await? {
                adopted.push(name);
            }
        }
        Ok(adopted)
    }

    async fn adopt_namespace(&self, name: &str) -> Result<bool, StoreError> {
        let key = namespace_key(name);
        self.with_retry("adopt namespace", || async {
            let mut tx = self.begin("adopt namespace").await?;
            if lock_namespace_row(&mut tx, name).await? {
                return Ok(false);
            }
            let existing = lock_row(&mut tx, &key).await?;
            let mut object = namespace_object(name);
            let uid = match &existing {
                Some(row) => row.uid.clone(),
                None => prepare_new(&mut object)?.1,
            };
            sqlx::query("INSERT INTO namespaces (name, uid, created_at) VALUES (?, ?, NOW(6))")
                .bind(name)
                .bind(&uid)
                .execute(&mut *tx)
                .await
                .map_err(StoreError::query("adopt namespace"))?;
            if existing.is_none() {
                let revision = allocate_revisions(&mut tx, 1).await?;
                insert_object(&mut tx, revision, &key, &uid, &mut object).await?;
            }
            self.commit(tx, "adopt namespace").await?;
            Ok(true)
        })
        .await
    }

    /// Stores key `key_name` of `namespace` (new or replacing) with a new nonce.
    pub async fn put_key(
        &self,
        namespace: &str,
        key_name: &str,
        key_hash: &str,
    ) -> Result<KeyRecord, StoreError> {
        check_namespace_name(namespace).map_err(|_| namespace_not_found(namespace))?;
        check_key_name(key_name)?;
        if key_hash.is_empty() || key_hash.len() > 255 || !key_hash.is_ascii() {
            return Err(StoreError::Invalid(
                "a key hash must be 1 to 255 ASCII characters".into(),
            ));
        }
        self.with_retry("put key", || async {
            let nonce = uuid::Uuid::new_v4().to_string();
            let mut tx = self.begin("put key").await?;
            let res = sqlx::query(
                "INSERT INTO namespace_keys (namespace, key_name, key_hash, nonce, created_at) \
                 VALUES (?, ?, ?, ?, NOW(6)) ON DUPLICATE KEY UPDATE \
                 key_hash = VALUES(key_hash), nonce = VALUES(nonce), created_at = VALUES(created_at)",
            )
            .bind(namespace)
            .bind(key_name)
            .bind(key_hash)
            .bind(&nonce)
            .execute(&mut *tx)
            .await
            .map_err(StoreError::query("put key"));
            match res {
                // 1452: no parent row (the namespace does not exist).
                Err(StoreError::Query { source, .. })
                    if super::mariadb_error_number(&source) == Some(1452) =>
                {
                    return Err(namespace_not_found(namespace));
                }
                other => other?,
            };
            let row = sqlx::query(
                "SELECT namespace, key_name, key_hash, nonce, created_at FROM namespace_keys \
                 WHERE namespace = ? AND key_name = ?",
            )
            .bind(namespace)
            .bind(key_name)
            .fetch_one(&mut *tx)
            .await
            .map_err(StoreError::query("put key"))?;
            let record = key_from_row(&row)?;
            tx.commit().await.map_err(StoreError::query("put key"))?;
            Ok(record)
        })
        .await
    }

    /// Key `key_name` of `namespace`.
    pub async fn get_key(&self, namespace: &str, key_name: &str) -> Result<KeyRecord, StoreError> {
        let row = sqlx::query(
            "SELECT namespace, key_name, key_hash, nonce, created_at FROM namespace_keys \
             WHERE namespace = ? AND key_name = ?",
        )
        .bind(namespace)
        .bind(key_name)
        .fetch_optional(self.pool())
        .await
        .map_err(StoreError::query("get key"))?
        .ok_or_else(|| StoreError::NotFound {
            kind: KEY_KIND.into(),
            namespace: namespace.into(),
            name: key_name.into(),
        })?;
        key_from_row(&row)
    }

    /// Every key of `namespace` (hashes included: callers are trusted daemons), by name.
    pub async fn list_keys(&self, namespace: &str) -> Result<Vec<KeyRecord>, StoreError> {
        let rows = sqlx::query(
            "SELECT namespace, key_name, key_hash, nonce, created_at FROM namespace_keys \
             WHERE namespace = ? ORDER BY key_name",
        )
        .bind(namespace)
        .fetch_all(self.pool())
        .await
        .map_err(StoreError::query("list keys"))?;
        if rows.is_empty() && !namespace_exists(self, namespace).await? {
            return Err(namespace_not_found(namespace));
        }
        rows.iter().map(key_from_row).collect()
    }

    /// Deletes key `key_name` of `namespace`.
    pub async fn delete_key(&self, namespace: &str, key_name: &str) -> Result<(), StoreError> {
        let deleted =
            sqlx::query("DELETE FROM namespace_keys WHERE namespace = ? AND key_name = ?")
                .bind(namespace)
                .bind(key_name)
                .execute(self.pool())
                .await
                .map_err(StoreError::query("delete key"))?;
        if deleted.rows_affected() == 0 {
            return Err(StoreError::NotFound {
                kind: KEY_KIND.into(),
                namespace: namespace.into(),
                name: key_name.into(),
            });
        }
        Ok(())
    }
}

/// The Namespace object of `name` as [`Store::create_namespace`] writes it (before
/// uid, timestamps and versions).
fn namespace_object(name: &str) -> Value {
    json!({
        "apiVersion": "shakenfist.io/v1alpha1",
        "kind": NAMESPACE_KIND,
        "metadata": {"name": name},
        "spec": {"trust": []},
        "status": {"state": "created"},
    })
}
