//! The MariaDB compatibility check that every start runs (DESIGN invariant 10).
//!
//! Contract: [`gather`] reads the server facts with plain queries (I/O); [`evaluate`] is
//! a pure function from those facts to every failed check, each naming what was found
//! and how to fix it. The character-set checks read `@@character_set_server`,
//! `@@collation_server` and the database's own default from
//! `information_schema.SCHEMATA`, never the connection character set (the driver always
//! sets that to utf8mb4, so checking it could never fail).

use std::fmt;

use sea_orm::{ConnectionTrait, DatabaseConnection, DbErr, Statement};

/// The oldest MariaDB release Shaken Fist supports.
pub const MINIMUM_VERSION: (u32, u32, u32) = (10, 6, 0);

/// What the server says about itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerFacts {
    /// `SELECT VERSION()`, e.g. `10.11.19-MariaDB-0+deb12u1`.
    pub version: String,
    /// `@@version_comment`, e.g. `Debian 12` or `MySQL Community Server - GPL`.
    pub version_comment: String,
    /// `@@default_storage_engine`.
    pub default_engine: String,
    /// `@@character_set_server`.
    pub charset_server: String,
    /// `@@collation_server`.
    pub collation_server: String,
    /// The database's name (`DATABASE()`).
    pub database: String,
    /// The database's default character set (information_schema.SCHEMATA).
    pub database_charset: String,
    /// The database's default collation (information_schema.SCHEMATA).
    pub database_collation: String,
    /// `@@innodb_snapshot_isolation` where the server has it (MariaDB ≥ 11.6).
    pub snapshot_isolation: Option<String>,
}

/// One failed check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckFailure {
    /// What was checked, e.g. `server`, `version`, `storage engine`.
    pub check: &'static str,
    /// What was found.
    pub found: String,
    /// What is required.
    pub expected: String,
    /// How to fix it.
    pub fix: String,
}

/// Every failed check of one server; displays as a multi-line message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Incompatible {
    /// Where the server is (host:port/database) for the message.
    pub target: String,
    /// The failures.
    pub failures: Vec<CheckFailure>,
}

impl fmt::Display for Incompatible {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "MariaDB at {} is not compatible with Shaken Fist ({} problem{}):",
            self.target,
            self.failures.len(),
            if self.failures.len() == 1 { "" } else { "s" }
        )?;
        for (i, c) in self.failures.iter().enumerate() {
            writeln!(
                f,
                "  {}. {}: found {}; expected {}.",
                i + 1,
                c.check,
                c.found,
                c.expected
            )?;
            write!(f, "     Fix: {}", c.fix)?;
            if i + 1 < self.failures.len() {
                writeln!(f)?;
            }
        }
        Ok(())
    }
}

/// Errors of the compatibility check.
#[derive(Debug, thiserror::Error)]
pub enum CompatError {
    /// A query for the server facts failed.
    #[error("cannot read the MariaDB server settings: {0}")]
    Gather(#[source] DbErr),
    /// The server is not compatible.
    #[error("{0}")]
    Incompatible(Incompatible),
}

/// Parses the leading `major.minor.patch` of a version string.
pub fn parse_version(version: &str) -> Option<(u32, u32, u32)> {
    let numeric: String = version
        .chars()
        .take_while(|c| c.is_ascii_digit() || *c == '.')
        .collect();
    let mut parts = numeric.split('.').map(|p| p.parse::<u32>().ok());
    Some((
        parts.next()??,
        parts.next()??,
        parts.next().flatten().unwrap_or(0),
    ))
}

/// Every failed check for `facts` (empty when compatible). Pure.
pub fn evaluate(facts: &ServerFacts) -> Vec<CheckFailure> {
    let mut out = Vec::new();
    let is_mariadb = facts.version.contains("MariaDB") || facts.version_comment.contains("MariaDB");
    if !is_mariadb {
        out.push(CheckFailure {
            check: "server",
            found: format!("'{}' ({})", facts.version, facts.version_comment),
            expected: "MariaDB (MySQL is not supported)".into(),
            fix: "point SHAKENFIST_MARIADB_HOST at a MariaDB server, e.g. `apt-get install mariadb-server`".into(),
        });
    }
    let (maj, min, pat) = MINIMUM_VERSION;
    // A MySQL version number says nothing about MariaDB compatibility.
    match parse_version(&facts.version) {
        _ if !is_mariadb => {}
        Some(v) if v >= MINIMUM_VERSION => {}
        found => out.push(CheckFailure {
            check: "version",
            found: match found {
                Some((a, b, c)) => format!("{a}.{b}.{c}"),
                None => format!("unparseable '{}'", facts.version),
            },
            expected: format!("MariaDB {maj}.{min}.{pat} or newer"),
            fix: "upgrade MariaDB to a supported release (10.11 LTS or newer is recommended)"
                .into(),
        }),
    }
    if !facts.default_engine.eq_ignore_ascii_case("InnoDB") {
        out.push(CheckFailure {
            check: "default storage engine (@@default_storage_engine)",
            found: facts.default_engine.clone(),
            expected: "InnoDB".into(),
            fix: "set `default-storage-engine = InnoDB` under [mariadbd] (see examples/mariadb-tuning.cnf) and restart MariaDB".into(),
        });
    }
    if !facts.charset_server.eq_ignore_ascii_case("utf8mb4") {
        out.push(CheckFailure {
            check: "server character set (@@character_set_server)",
            found: facts.charset_server.clone(),
            expected: "utf8mb4".into(),
            fix: "set `character-set-server = utf8mb4` under [mariadbd] and restart MariaDB".into(),
        });
    }
    if !facts
        .collation_server
        .to_ascii_lowercase()
        .starts_with("utf8mb4_")
    {
        out.push(CheckFailure {
            check: "server collation (@@collation_server)",
            found: facts.collation_server.clone(),
            expected: "a utf8mb4_* collation".into(),
            fix: "set `collation-server = utf8mb4_unicode_ci` under [mariadbd] and restart MariaDB"
                .into(),
        });
    }
    if !facts.database_charset.eq_ignore_ascii_case("utf8mb4")
        || !facts
            .database_collation
            .to_ascii_lowercase()
            .starts_with("utf8mb4_")
    {
        out.push(CheckFailure {
            check: "database default character set (information_schema.SCHEMATA)",
            found: format!(
                "database '{}' is {} / {}",
                facts.database, facts.database_charset, facts.database_collation
            ),
            expected: "utf8mb4 with a utf8mb4_* collation".into(),
            fix: format!(
                "run `ALTER DATABASE `{}` CHARACTER SET utf8mb4 COLLATE utf8mb4_unicode_ci` (tools/bootstrap-mariadb.sql creates it this way)",
                facts.database
            ),
        });
    }
    out
}

/// Warnings that do not stop a start but that an operator should see.
pub fn warnings(facts: &ServerFacts) -> Vec<String> {
    let mut out = Vec::new();
    if facts
        .snapshot_isolation
        .as_deref()
        .is_some_and(|v| v.eq_ignore_ascii_case("ON") || v == "1")
    {
        out.push(
            "innodb_snapshot_isolation is ON: concurrent writers may see error 1020, which Shaken Fist retries; \
             set innodb_snapshot_isolation=OFF (see examples/mariadb-tuning.cnf) to avoid the retries"
                .to_string(),
        );
    }
    out
}

async fn scalar(db: &DatabaseConnection, sql: &str) -> Result<Option<String>, DbErr> {
    let row = db
        .query_one_raw(Statement::from_string(db.get_database_backend(), sql))
        .await?;
    match row {
        Some(r) => r.try_get_by_index::<Option<String>>(0),
        None => Ok(None),
    }
}

/// Reads the facts [`evaluate`] needs.
pub async fn gather(db: &DatabaseConnection) -> Result<ServerFacts, CompatError> {
    let get = |sql: &'static str| async move {
        scalar(db, sql)
            .await
            .map(|v| v.unwrap_or_default())
            .map_err(CompatError::Gather)
    };
    let database = get("SELECT DATABASE()").await?;
    let row = db
        .query_one_raw(Statement::from_sql_and_values(
            db.get_database_backend(),
            "SELECT DEFAULT_CHARACTER_SET_NAME, DEFAULT_COLLATION_NAME \
             FROM information_schema.SCHEMATA WHERE SCHEMA_NAME = ?",
            [database.clone().into()],
        ))
        .await
        .map_err(CompatError::Gather)?;
    let (database_charset, database_collation) = match row {
        Some(r) => (
            r.try_get_by_index::<String>(0)
                .map_err(CompatError::Gather)?,
            r.try_get_by_index::<String>(1)
                .map_err(CompatError::Gather)?,
        ),
        None => (String::new(), String::new()),
    };
    let snapshot_isolation = scalar(
        db,
        "SELECT VARIABLE_VALUE FROM information_schema.GLOBAL_VARIABLES \
         WHERE VARIABLE_NAME = 'INNODB_SNAPSHOT_ISOLATION'",
    )
    .await
    .map_err(CompatError::Gather)?;
    Ok(ServerFacts {
        version: get("SELECT VERSION()").await?,
        version_comment: get("SELECT @@version_comment").await?,
        default_engine: get("SELECT @@default_storage_engine").await?,
        charset_server: get("SELECT @@character_set_server").await?,
        collation_server: get("SELECT @@collation_server").await?,
        database,
        database_charset,
        database_collation,
        snapshot_isolation,
    })
}

/// Gathers and evaluates; `target` names the server in the error message.
pub async fn check(db: &DatabaseConnection, target: &str) -> Result<ServerFacts, CompatError> {
    let facts = gather(db).await?;
    let failures = evaluate(&facts);
    if failures.is_empty() {
        Ok(facts)
    } else {
        Err(CompatError::Incompatible(Incompatible {
            target: target.to_string(),
            failures,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn good() -> ServerFacts {
        ServerFacts {
            version: "10.11.19-MariaDB-0+deb12u1".into(),
            version_comment: "Debian 12".into(),
            default_engine: "InnoDB".into(),
            charset_server: "utf8mb4".into(),
            collation_server: "utf8mb4_unicode_ci".into(),
            database: "shakenfist".into(),
            database_charset: "utf8mb4".into(),
            database_collation: "utf8mb4_general_ci".into(),
            snapshot_isolation: None,
        }
    }

    #[test]
    fn a_good_server_passes() {
        assert_eq!(evaluate(&good()), vec![]);
    }

    #[test]
    fn mysql_is_refused() {
        let facts = ServerFacts {
            version: "8.0.36".into(),
            version_comment: "MySQL Community Server - GPL".into(),
            ..good()
        };
        let failures = evaluate(&facts);
        assert_eq!(failures.len(), 1, "{failures:?}");
        assert_eq!(failures[0].check, "server");
    }

    #[test]
    fn old_mariadb_is_refused() {
        let facts = ServerFacts {
            version: "10.5.23-MariaDB".into(),
            ..good()
        };
        let failures = evaluate(&facts);
        assert_eq!(failures.len(), 1);
        assert_eq!(failures[0].check, "version");
        assert_eq!(failures[0].found, "10.5.23");
    }

    #[test]
    fn exactly_10_6_0_passes() {
        let facts = ServerFacts {
            version: "10.6.0-MariaDB".into(),
            ..good()
        };
        assert!(evaluate(&facts).is_empty());
    }

    #[test]
    fn every_failure_is_listed_with_a_fix() {
        let facts = ServerFacts {
            default_engine: "MyISAM".into(),
            charset_server: "latin1".into(),
            collation_server: "latin1_swedish_ci".into(),
            database_charset: "latin1".into(),
            database_collation: "latin1_swedish_ci".into(),
            ..good()
        };
        let failures = evaluate(&facts);
        assert_eq!(failures.len(), 4, "{failures:?}");
        let msg = Incompatible {
            target: "h:1/db".into(),
            failures,
        }
        .to_string();
        assert!(msg.contains("4 problems"), "{msg}");
        assert!(msg.contains("found MyISAM; expected InnoDB"), "{msg}");
        assert!(msg.contains("found latin1; expected utf8mb4"), "{msg}");
        assert_eq!(msg.matches("Fix:").count(), 4, "{msg}");
    }

    #[test]
    fn versions_parse() {
        assert_eq!(
            parse_version("10.11.19-MariaDB-0+deb12u1"),
            Some((10, 11, 19))
        );
        assert_eq!(parse_version("11.4"), Some((11, 4, 0)));
        assert_eq!(parse_version("garbage"), None);
    }

    #[test]
    fn snapshot_isolation_on_warns() {
        let facts = ServerFacts {
            snapshot_isolation: Some("ON".into()),
            ..good()
        };
        assert_eq!(warnings(&facts).len(), 1);
        assert!(warnings(&good()).is_empty());
    }
}
