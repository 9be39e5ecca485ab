//! Blob bytes against a real private MariaDB.

mod common;

use serde_json::json;
use sf_database::store::blobs::MAX_BLOB_DATA;
use sf_database::{Store, StoreError};

/// Creates a screenshot-like Blob `name` of namespace demo; returns its uid.
async fn screenshot_blob(store: &Store, name: &str) -> String {
    let blob = store
        .create(
            json!({
                "apiVersion": "shakenfist.io/v1alpha1", "kind": "Blob",
                "metadata": {"name": name},
                "spec": {"ownerNamespace": "demo", "mimeType": "image/png"}
            }),
            false,
        )
        .await
        .expect("create blob");
    blob.object["metadata"]["uid"]
        .as_str()
        .expect("uid")
        .to_owned()
}

#[tokio::test]
async fn bytes_round_trip_replace_and_need_their_blob() {
    let (_db, store) = common::store().await;
    let png = b"\x89PNG\r\n\x1a\nfake".to_vec();
    let err = store
        .put_blob_data("00000000-0000-4000-8000-000000000001", "image/png", &png)
        .await
        .expect_err("no Blob resource");
    assert!(matches!(err, StoreError::NotFound { .. }), "{err}");

    let uid = screenshot_blob(&store, "shot-1").await;
    let before = store.current_revision().await.expect("revision");
    let (size, sha) = store
        .put_blob_data(&uid, "image/png", &png)
        .await
        .expect("put");
    assert_eq!(size, png.len() as u64);
    assert_eq!(sha.len(), 64);
    assert_eq!(
        store.current_revision().await.expect("revision"),
        before,
        "blob bytes are not a resource write"
    );
    let got = store
        .get_blob_data(&uid)
        .await
        .expect("get")
        .expect("stored");
    assert_eq!(got.data, png);
    assert_eq!(got.mime_type, "image/png");
    assert_eq!(got.sha256, sha);

    // A retried upload replaces the bytes.
    store
        .put_blob_data(&uid, "image/png", b"second")
        .await
        .expect("replace");
    let got = store
        .get_blob_data(&uid)
        .await
        .expect("get")
        .expect("stored");
    assert_eq!(got.data, b"second");

    assert!(
        store
            .get_blob_data("00000000-0000-4000-8000-000000000002")
            .await
            .expect("get")
            .is_none()
    );
    let too_big = vec![0u8; MAX_BLOB_DATA + 1];
    let err = store
        .put_blob_data(&uid, "image/png", &too_big)
        .await
        .expect_err("too big");
    assert!(matches!(err, StoreError::Invalid(_)), "{err}");
}

#[tokio::test]
async fn deleting_a_blob_deletes_its_bytes() {
    let (_db, store) = common::store().await;
    let uid = screenshot_blob(&store, "shot-2").await;
    store
        .put_blob_data(&uid, "image/png", b"pixels")
        .await
        .expect("put");
    let key = sf_database::store::ObjectKey::new("Blob", "", "shot-2");
    let deleted = store
        .delete(&key, Default::default(), false)
        .await
        .expect("delete");
    assert!(deleted.removed);
    assert_eq!(store.get_blob_data(&uid).await.expect("get"), None);
    let rows: i64 = sea_orm::sqlx::query_scalar("SELECT COUNT(*) FROM blob_data")
        .fetch_one(store.pool())
        .await
        .expect("count");
    assert_eq!(rows, 0, "no bytes left behind");
    let err = store
        .put_blob_data(&uid, "image/png", b"late")
        .await
        .expect_err("the Blob is gone");
    assert!(matches!(err, StoreError::NotFound { .. }), "{err}");
}
