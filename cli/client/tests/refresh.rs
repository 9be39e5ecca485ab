//! Token refresh against a small token-issuing HTTP server on 127.0.0.1 that
//! behaves like sf-api's `/auth` (short-lived tokens, 401 once expired or revoked).
//! The same scenario against the real sf-api lives in `cli/sf/tests`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::{get, post};
use serde_json::{Value, json};
use sf_client::{ClientError, Credentials, connect};

const KEY: &str = "the-key";

#[derive(Default)]
struct Issuer {
    /// token → expiry
    tokens: HashMap<String, Instant>,
    issued: u64,
    lifetime_secs: u64,
    /// Requests answered 401.
    rejected: u64,
}

type Shared = Arc<Mutex<Issuer>>;

async fn auth(State(s): State<Shared>, Json(body): Json<Value>) -> (StatusCode, Json<Value>) {
    if body["key"] != KEY || body["namespace"] != "system" {
        return (
            StatusCode::UNAUTHORIZED,
            Json(json!({"error": "wrong key", "status": 401})),
        );
    }
    let mut issuer = s.lock().expect("lock");
    issuer.issued += 1;
    let token = format!("token-{}", issuer.issued);
    let lifetime = issuer.lifetime_secs;
    issuer.tokens.insert(
        token.clone(),
        Instant::now() + Duration::from_secs(lifetime),
    );
    (
        StatusCode::OK,
        Json(json!({"access_token": token, "token_type": "Bearer", "expires_in": lifetime})),
    )
}

async fn protected(State(s): State<Shared>, headers: HeaderMap) -> (StatusCode, Json<Value>) {
    let mut issuer = s.lock().expect("lock");
    let token = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or_default()
        .to_string();
    let valid = issuer
        .tokens
        .get(&token)
        .is_some_and(|expiry| Instant::now() < *expiry);
    if valid {
        (StatusCode::OK, Json(json!({"ok": true})))
    } else {
        issuer.rejected += 1;
        (
            StatusCode::UNAUTHORIZED,
            Json(
                json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "Unauthorized", "code": 401, "message": "token expired"}),
            ),
        )
    }
}

async fn serve(lifetime_secs: u64) -> (String, Shared) {
    let state: Shared = Arc::new(Mutex::new(Issuer {
        lifetime_secs,
        ..Issuer::default()
    }));
    let app = axum::Router::new()
        .route("/auth", post(auth))
        .route("/protected", get(protected).post(protected))
        .with_state(state.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let url = format!("http://{}", listener.local_addr().expect("addr"));
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    (url, state)
}

async fn get_protected(client: &kube::Client) -> Value {
    let request = http::Request::get("/protected")
        .body(Vec::new())
        .expect("request");
    client
        .request::<Value>(request)
        .await
        .expect("protected GET")
}

#[tokio::test]
async fn runs_across_three_expiries_without_an_error() {
    let (url, state) = serve(2).await;
    let client = connect(Credentials {
        url,
        namespace: "system".into(),
        key: Some(KEY.into()),
        token: None,
    })
    .await
    .expect("connect");
    let kube = client.kube();
    let start = Instant::now();
    let mut requests = 0;
    // 7 s with 2 s tokens: at least three expiries.
    while start.elapsed() < Duration::from_secs(7) {
        assert_eq!(get_protected(&kube).await["ok"], true);
        requests += 1;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let issuer = state.lock().expect("lock");
    assert!(requests > 30, "only {requests} requests");
    assert!(issuer.issued >= 4, "issued only {} tokens", issuer.issued);
    assert_eq!(issuer.rejected, 0, "no request should have met a 401");
    assert!(client.authentications() >= 4);
}

#[tokio::test]
async fn a_401_reauthenticates_and_retries_once() {
    let (url, state) = serve(60).await;
    let client = connect(Credentials {
        url,
        namespace: "system".into(),
        key: Some(KEY.into()),
        token: None,
    })
    .await
    .expect("connect");
    let kube = client.kube();
    assert_eq!(get_protected(&kube).await["ok"], true);
    // Revoke every token: the next request meets a 401, re-authenticates, retries.
    state.lock().expect("lock").tokens.clear();
    let request = http::Request::post("/protected")
        .header("content-type", "application/json")
        .body(b"{\"x\":1}".to_vec())
        .expect("request");
    let answer: Value = kube.request(request).await.expect("retried POST");
    assert_eq!(answer["ok"], true);
    let issuer = state.lock().expect("lock");
    assert_eq!(issuer.rejected, 1);
    assert_eq!(issuer.issued, 2);
}

#[tokio::test]
async fn a_wrong_key_is_refused_with_the_servers_message() {
    let (url, _state) = serve(60).await;
    let err = connect(Credentials {
        url,
        namespace: "system".into(),
        key: Some("wrong".into()),
        token: None,
    })
    .await
    .expect_err("wrong key");
    match err {
        ClientError::AuthRefused {
            status, message, ..
        } => {
            assert_eq!(status, 401);
            assert_eq!(message, "wrong key");
        }
        other => panic!("unexpected error {other}"),
    }
}
