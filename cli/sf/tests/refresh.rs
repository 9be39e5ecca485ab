//! sf-client against the real sf-api with 5-second tokens: a key-based client keeps
//! working across three expiries; a token-only client stops working after one.

mod common;

use std::time::{Duration, Instant};

use common::{SYSTEM_KEY, start_with};
use sf_client::{Credentials, connect};

async fn list_instances(client: &kube::Client) -> Result<serde_json::Value, kube::Error> {
    let request = http::Request::get("/apis/shakenfist.io/v1alpha1/namespaces/demo/instances")
        .body(Vec::new())
        .expect("request");
    client.request::<serde_json::Value>(request).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sf_client_runs_across_three_token_expiries() {
    let env = start_with(&["--api-token-duration=5"]).await;
    let client = connect(Credentials {
        url: env.url.clone(),
        namespace: "system".into(),
        key: Some(SYSTEM_KEY.into()),
        token: None,
    })
    .await
    .expect("connect with the system key");
    let kube = client.kube();
    let first_token = client.token();

    // A client holding only the first token, to show expiry is real.
    let token_only = connect(Credentials {
        url: env.url.clone(),
        namespace: "system".into(),
        key: None,
        token: Some(first_token.clone()),
    })
    .await
    .expect("connect with a token");

    let start = Instant::now();
    let mut requests = 0u32;
    while start.elapsed() < Duration::from_secs(16) {
        let list = list_instances(&kube)
            .await
            .unwrap_or_else(|e| panic!("request {requests} at {:?}: {e}", start.elapsed()));
        assert_eq!(list["kind"], "InstanceList");
        requests += 1;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(requests >= 50, "only {requests} requests");
    assert!(
        client.authentications() >= 4,
        "re-authenticated only {} times",
        client.authentications()
    );
    assert_ne!(client.token(), first_token);

    let err = list_instances(&token_only.kube())
        .await
        .expect_err("the first token has expired");
    match err {
        kube::Error::Api(status) => assert_eq!(status.code, 401, "{status:?}"),
        other => panic!("expected a 401, got {other}"),
    }
}
