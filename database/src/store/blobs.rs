//! The bytes of small blobs (screenshots), kept beside their Blob resource.
//!
//! Contract:
//! - [`Store::put_blob_data`] stores the bytes of an existing Blob resource (looked up
//!   by uid; a missing Blob is [`StoreError::NotFound`]), at most [`MAX_BLOB_DATA`]
//!   bytes ([`StoreError::Invalid`] above). Putting again replaces the bytes: the call
//!   is idempotent for a retried upload. Returns the size and the SHA-256.
//! - [`Store::get_blob_data`] returns the bytes and MIME type, or `None`.
//! - Blob data is not a resource: no revision, no change-log entry. Large blobs
//!   (artifact images) live on the nodes' disks and are never stored here.
//! - The bytes go with their Blob: deleting the Blob resource deletes them in the same
//!   transaction ([`delete_blob_data`]), and a put holds the Blob's row shared until
//!   it commits, so bytes are never left behind a Blob deleted meanwhile.

use sea_orm::sqlx::{self, Row};
use sha2::{Digest, Sha256};

use super::{Store, StoreError, Tx};

/// The largest blob whose bytes MariaDB keeps (16 MiB).
pub const MAX_BLOB_DATA: usize = 16 * 1024 * 1024;

/// A blob's bytes as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlobData {
    /// The bytes.
    pub data: Vec<u8>,
    /// Their MIME type.
    pub mime_type: String,
    /// Lower-case hex SHA-256 of `data`.
    pub sha256: String,
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Deletes the bytes of the Blob with `uid`, inside the transaction that removes the
/// Blob (before the revision counter: the row is the Blob's own).
pub(crate) async fn delete_blob_data(tx: &mut Tx, uid: &str) -> Result<(), StoreError> {
    sqlx::query("DELETE FROM blob_data WHERE uid = ?")
        .bind(uid)
        .execute(&mut **tx)
        .await
        .map_err(StoreError::query("delete blob data"))?;
    Ok(())
}

impl Store {
    /// Stores (or replaces) the bytes of the Blob resource with `uid`.
    pub async fn put_blob_data(
        &self,
        uid: &str,
        mime_type: &str,
        data: &[u8],
    ) -> Result<(u64, String), StoreError> {
        if data.len() > MAX_BLOB_DATA {
            return Err(StoreError::Invalid(format!(
                "blob data of {} bytes is larger than the {MAX_BLOB_DATA} bytes kept in the database",
                data.len()
            )));
        }
        if mime_type.is_empty() || mime_type.len() > 255 || !mime_type.is_ascii() {
            return Err(StoreError::Invalid(
                "a blob's MIME type must be 1 to 255 ASCII characters".into(),
            ));
        }
        let sha256 = hex(&Sha256::digest(data));
        let mut tx = self.begin("put blob data").await?;
        let exists = sqlx::query(
            "SELECT 1 FROM resources FORCE INDEX (ux_resources_uid) \
             WHERE uid = ? AND kind = 'Blob' LOCK IN SHARE MODE",
        )
        .bind(uid)
        .fetch_optional(&mut *tx)
        .await
        .map_err(StoreError::query("put blob data"))?;
        if exists.is_none() {
            return Err(StoreError::NotFound {
                kind: "Blob".into(),
                namespace: String::new(),
                name: uid.to_owned(),
            });
        }
        sqlx::query(
            "INSERT INTO blob_data (uid, mime_type, size, sha256, data, created_at) \
             VALUES (?, ?, ?, ?, ?, NOW(6)) ON DUPLICATE KEY UPDATE mime_type = VALUES(mime_type), \
             size = VALUES(size), sha256 = VALUES(sha256), data = VALUES(data)",
        )
        .bind(uid)
        .bind(mime_type)
        .bind(data.len() as u64)
        .bind(&sha256)
        .bind(data)
        .execute(&mut *tx)
        .await
        .map_err(StoreError::query("put blob data"))?;
        self.commit(tx, "put blob data").await?;
        Ok((data.len() as u64, sha256))
    }

    /// The bytes of the Blob with `uid`, if stored.
    pub async fn get_blob_data(&self, uid: &str) -> Result<Option<BlobData>, StoreError> {
        let row = sqlx::query("SELECT data, mime_type, sha256 FROM blob_data WHERE uid = ?")
            .bind(uid)
            .fetch_optional(self.pool())
            .await
            .map_err(StoreError::query("get blob data"))?;
        row.map(|row| {
            Ok(BlobData {
                data: row
                    .try_get("data")
                    .map_err(|e| StoreError::Corrupt(format!("blob_data.data: {e}")))?,
                mime_type: row
                    .try_get("mime_type")
                    .map_err(|e| StoreError::Corrupt(format!("blob_data.mime_type: {e}")))?,
                sha256: row
                    .try_get("sha256")
                    .map_err(|e| StoreError::Corrupt(format!("blob_data.sha256: {e}")))?,
            })
        })
        .transpose()
    }
}
