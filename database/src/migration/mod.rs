//! Schema migrations and per-table versions (DESIGN invariant 10).
//!
//! Contract: [`ensure_schema`] (behind `sf-ctl ensure-mariadb-schema`) is the only code
//! that creates or alters tables. Each migration records the version it leaves every
//! table at in `schema_versions`; [`check_schema_versions`] compares that table with
//! [`expected_versions`] (the versions this build was written for) and is what
//! sf-database runs before it serves. Migrations are append-only: a released migration
//! is never edited, a change is a new `mNNNN_*` module that bumps the tables it touches.

mod m0001_initial;
mod m0002_blob_data;
mod m0003_fewer_queue_indexes;
mod m0004_tombstones;

use std::collections::BTreeMap;
use std::fmt;

use sea_orm::{ConnectionTrait, DatabaseConnection, DbErr, Statement};
use sea_orm_migration::{MigrationTrait, MigratorTrait};

/// A table and the schema version of it that a migration produces.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TableVersion {
    /// The table.
    pub table: &'static str,
    /// Its version.
    pub version: u32,
}

impl TableVersion {
    /// A table at a version.
    pub const fn new(table: &'static str, version: u32) -> Self {
        Self { table, version }
    }
}

/// The migrator: every migration, oldest first.
pub struct Migrator;

impl MigratorTrait for Migrator {
    fn migrations() -> Vec<Box<dyn MigrationTrait>> {
        vec![
            Box::new(m0001_initial::Migration),
            Box::new(m0002_blob_data::Migration),
            Box::new(m0003_fewer_queue_indexes::Migration),
            Box::new(m0004_tombstones::Migration),
        ]
    }
}

/// The version of every table this build expects: the last version any migration
/// records for it.
pub fn expected_versions() -> BTreeMap<&'static str, u32> {
    let mut out = BTreeMap::new();
    for tv in m0001_initial::TABLES
        .iter()
        .chain(m0002_blob_data::TABLES)
        .chain(m0003_fewer_queue_indexes::TABLES)
        .chain(m0004_tombstones::TABLES)
    {
        out.insert(tv.table, tv.version);
    }
    out
}

/// Records `tables` in `schema_versions` (insert or update).
async fn record_versions<C: ConnectionTrait>(db: &C, tables: &[TableVersion]) -> Result<(), DbErr> {
    for tv in tables {
        db.execute_raw(Statement::from_sql_and_values(
            db.get_database_backend(),
            "INSERT INTO schema_versions (table_name, version, updated_at) VALUES (?, ?, NOW(6)) \
             ON DUPLICATE KEY UPDATE version = VALUES(version), updated_at = VALUES(updated_at)",
            [tv.table.into(), tv.version.into()],
        ))
        .await?;
    }
    Ok(())
}

/// What [`ensure_schema`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EnsureReport {
    /// Migrations applied by this run, oldest first (empty when already up to date).
    pub applied: Vec<String>,
    /// The table versions after the run.
    pub versions: BTreeMap<String, u32>,
}

impl fmt::Display for EnsureReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.applied.is_empty() {
            writeln!(f, "schema is up to date; nothing to do")?;
        } else {
            for m in &self.applied {
                writeln!(f, "applied migration {m}")?;
            }
        }
        writeln!(f, "table versions:")?;
        for (table, version) in &self.versions {
            writeln!(f, "  {table:<24} {version}")?;
        }
        Ok(())
    }
}

/// Errors of the schema tooling.
#[derive(Debug, thiserror::Error)]
pub enum SchemaError {
    /// Listing pending migrations failed.
    #[error("cannot read the applied migrations: {0}")]
    ReadMigrations(#[source] DbErr),
    /// Applying the migrations failed.
    #[error("applying migration(s) {pending} failed: {source}")]
    Migrate {
        /// The migrations that were pending.
        pending: String,
        /// Why.
        #[source]
        source: DbErr,
    },
    /// Reading `schema_versions` failed.
    #[error("cannot read schema_versions: {0}")]
    ReadVersions(#[source] DbErr),
    /// The stored versions differ from this build's.
    #[error("{0}")]
    Mismatch(VersionMismatch),
}

/// Applies every pending migration and reports what was done. Idempotent.
pub async fn ensure_schema(db: &DatabaseConnection) -> Result<EnsureReport, SchemaError> {
    let pending: Vec<String> = Migrator::get_pending_migrations(db)
        .await
        .map_err(SchemaError::ReadMigrations)?
        .iter()
        .map(|m| m.name().to_string())
        .collect();
    if !pending.is_empty() {
        Migrator::up(db, None)
            .await
            .map_err(|source| SchemaError::Migrate {
                pending: pending.join(", "),
                source,
            })?;
    }
    let versions = read_versions(db).await?;
    Ok(EnsureReport {
        applied: pending,
        versions,
    })
}

/// Reads `schema_versions` (empty when the table does not exist yet).
pub async fn read_versions(db: &DatabaseConnection) -> Result<BTreeMap<String, u32>, SchemaError> {
    let exists = db
        .query_one_raw(Statement::from_string(
            db.get_database_backend(),
            "SELECT COUNT(*) AS n FROM information_schema.TABLES \
             WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME = 'schema_versions'",
        ))
        .await
        .map_err(SchemaError::ReadVersions)?
        .map(|row| row.try_get::<i64>("", "n"))
        .transpose()
        .map_err(SchemaError::ReadVersions)?
        .unwrap_or(0);
    if exists == 0 {
        return Ok(BTreeMap::new());
    }
    let rows = db
        .query_all_raw(Statement::from_string(
            db.get_database_backend(),
            "SELECT table_name, version FROM schema_versions ORDER BY table_name",
        ))
        .await
        .map_err(SchemaError::ReadVersions)?;
    let mut out = BTreeMap::new();
    for row in rows {
        let table: String = row
            .try_get("", "table_name")
            .map_err(SchemaError::ReadVersions)?;
        let version: u32 = row
            .try_get("", "version")
            .map_err(SchemaError::ReadVersions)?;
        out.insert(table, version);
    }
    Ok(out)
}

/// How the stored schema differs from the one this build expects.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct VersionMismatch {
    /// Tables this build needs that are not recorded at all.
    pub missing: Vec<(String, u32)>,
    /// Tables at an older version than this build expects.
    pub older: Vec<(String, u32, u32)>,
    /// Tables at a newer version than this build knows (a newer release migrated them).
    pub newer: Vec<(String, u32, u32)>,
}

impl VersionMismatch {
    /// True when nothing differs.
    pub fn is_empty(&self) -> bool {
        self.missing.is_empty() && self.older.is_empty() && self.newer.is_empty()
    }
}

impl fmt::Display for VersionMismatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "the MariaDB schema does not match this version of Shaken Fist:"
        )?;
        for (table, want) in &self.missing {
            writeln!(
                f,
                "  - table {table}: not created (expected version {want})"
            )?;
        }
        for (table, found, want) in &self.older {
            writeln!(f, "  - table {table}: version {found}, expected {want}")?;
        }
        for (table, found, want) in &self.newer {
            writeln!(
                f,
                "  - table {table}: version {found} is NEWER than this build's {want}"
            )?;
        }
        if !self.missing.is_empty() || !self.older.is_empty() {
            writeln!(
                f,
                "Fix: run `sf-ctl ensure-mariadb-schema` with this release (it creates and migrates tables), then start again."
            )?;
        }
        if !self.newer.is_empty() {
            write!(
                f,
                "Fix: the database was migrated by a newer release; run that release's daemons (schema downgrades are not supported)."
            )?;
        }
        Ok(())
    }
}

/// Compares stored table versions with the expected ones (pure).
pub fn compare_versions(
    stored: &BTreeMap<String, u32>,
    expected: &BTreeMap<&'static str, u32>,
) -> VersionMismatch {
    let mut out = VersionMismatch::default();
    for (table, want) in expected {
        match stored.get(*table) {
            None => out.missing.push((table.to_string(), *want)),
            Some(found) if found < want => out.older.push((table.to_string(), *found, *want)),
            Some(found) if found > want => out.newer.push((table.to_string(), *found, *want)),
            Some(_) => {}
        }
    }
    out
}

/// Fails with a multi-line [`SchemaError::Mismatch`] unless every table is at the
/// version this build expects.
pub async fn check_schema_versions(db: &DatabaseConnection) -> Result<(), SchemaError> {
    let stored = read_versions(db).await?;
    let mismatch = compare_versions(&stored, &expected_versions());
    if mismatch.is_empty() {
        Ok(())
    } else {
        Err(SchemaError::Mismatch(mismatch))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compare_names_every_kind_of_difference() {
        let mut expected = BTreeMap::new();
        expected.insert("a", 2);
        expected.insert("b", 1);
        expected.insert("c", 1);
        expected.insert("d", 3);
        let mut stored = BTreeMap::new();
        stored.insert("a".to_string(), 1);
        stored.insert("c".to_string(), 2);
        stored.insert("d".to_string(), 3);
        let m = compare_versions(&stored, &expected);
        assert_eq!(m.missing, vec![("b".to_string(), 1)]);
        assert_eq!(m.older, vec![("a".to_string(), 1, 2)]);
        assert_eq!(m.newer, vec![("c".to_string(), 2, 1)]);
        let text = m.to_string();
        assert!(text.contains("table b: not created"), "{text}");
        assert!(text.contains("sf-ctl ensure-mariadb-schema"), "{text}");
        assert!(text.contains("NEWER"), "{text}");
        assert!(text.lines().count() >= 5, "multi-line: {text}");
    }

    #[test]
    fn expected_versions_cover_every_table_once() {
        let v = expected_versions();
        // Migration 3 only changes tables migration 1 made.
        assert_eq!(
            v.len(),
            m0001_initial::TABLES.len()
                + m0002_blob_data::TABLES.len()
                + m0004_tombstones::TABLES.len()
        );
        assert!(v.contains_key("schema_versions"));
        assert_eq!(
            v.get("work_queue"),
            Some(&2),
            "the last migration's version wins"
        );
        assert_eq!(v.get("cluster_operations"), Some(&2));
    }
}
