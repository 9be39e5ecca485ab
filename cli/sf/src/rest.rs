//! HTTP calls to sf-api through the connected [`sf_client::SfClient`].
//!
//! Contract: [`Rest`] sends JSON requests on any sf-api path (Kubernetes-style
//! resource paths and the Shaken Fist routes alike) and turns every non-2xx answer
//! into [`RestError::Api`] carrying the HTTP code and the server's message (from a
//! Kubernetes `Status` or a Shaken Fist `{"error"}` body). [`Rest::watch`] reads a
//! watch stream line by line.

use std::ops::ControlFlow;

use http::{Method, Request, StatusCode};
use http_body_util::BodyExt;
use kube::client::Body;
use serde_json::Value;

/// Errors of talking to sf-api.
#[derive(Debug, thiserror::Error)]
pub enum RestError {
    /// The request never got an answer.
    #[error("{method} {path}: {source}")]
    Transport {
        /// The method.
        method: Method,
        /// The path.
        path: String,
        /// The transport error.
        #[source]
        source: Box<kube::Error>,
    },
    /// sf-api answered with an error.
    #[error("{message} (HTTP {code})")]
    Api {
        /// The HTTP status.
        code: u16,
        /// The `Status` reason (`NotFound`, `Conflict`, ...), if any.
        reason: String,
        /// The message.
        message: String,
    },
    /// The answer was not what was expected.
    #[error("{method} {path}: unreadable answer: {reason}")]
    Decode {
        /// The method.
        method: Method,
        /// The path.
        path: String,
        /// What was wrong.
        reason: String,
    },
}

impl RestError {
    /// The HTTP code of an API error.
    pub fn code(&self) -> Option<u16> {
        match self {
            RestError::Api { code, .. } => Some(*code),
            _ => None,
        }
    }

    /// Whether this is a 404.
    pub fn is_not_found(&self) -> bool {
        self.code() == Some(404)
    }
}

/// The content types `sf` sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ContentType {
    /// `application/json`
    Json,
    /// `application/merge-patch+json`
    MergePatch,
}

impl ContentType {
    fn as_str(self) -> &'static str {
        match self {
            ContentType::Json => "application/json",
            ContentType::MergePatch => "application/merge-patch+json",
        }
    }
}

/// A raw answer.
pub struct Answer {
    /// The HTTP status.
    pub status: StatusCode,
    /// The `Content-Type`, if any.
    pub content_type: Option<String>,
    /// The body.
    pub body: Vec<u8>,
}

/// The API caller.
#[derive(Clone)]
pub struct Rest {
    client: kube::Client,
}

/// Extracts the message of an error body.
pub fn error_from(code: u16, body: &[u8]) -> RestError {
    let parsed: Option<Value> = serde_json::from_slice(body).ok();
    let reason = parsed
        .as_ref()
        .and_then(|v| v.get("reason"))
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string();
    let message = parsed
        .as_ref()
        .and_then(|v| {
            v.get("message")
                .or_else(|| v.get("error"))
                .and_then(Value::as_str)
                .map(str::to_string)
        })
        .filter(|m| !m.is_empty())
        .unwrap_or_else(|| {
            let text = String::from_utf8_lossy(body).trim().to_string();
            if text.is_empty() {
                StatusCode::from_u16(code)
                    .ok()
                    .and_then(|s| s.canonical_reason().map(str::to_string))
                    .unwrap_or_else(|| format!("HTTP {code}"))
            } else {
                text
            }
        });
    RestError::Api {
        code,
        reason,
        message,
    }
}

impl Rest {
    /// Wraps a client.
    pub fn new(client: kube::Client) -> Self {
        Rest { client }
    }

    /// Sends a request and returns the raw answer, whatever its status.
    pub async fn send(
        &self,
        method: Method,
        path: &str,
        body: Option<(&Value, ContentType)>,
    ) -> Result<Answer, RestError> {
        let mut builder = Request::builder()
            .method(method.clone())
            .uri(path)
            .header(http::header::ACCEPT, "application/json");
        let bytes = match body {
            Some((value, ct)) => {
                builder = builder.header(http::header::CONTENT_TYPE, ct.as_str());
                serde_json::to_vec(value).map_err(|e| RestError::Decode {
                    method: method.clone(),
                    path: path.to_string(),
                    reason: e.to_string(),
                })?
            }
            None => Vec::new(),
        };
        let request = builder
            .body(Body::from(bytes))
            .map_err(|e| RestError::Decode {
                method: method.clone(),
                path: path.to_string(),
                reason: e.to_string(),
            })?;
        let response = self
            .client
            .send(request)
            .await
            .map_err(|source| RestError::Transport {
                method: method.clone(),
                path: path.to_string(),
                source: Box::new(source),
            })?;
        let status = response.status();
        let content_type = response
            .headers()
            .get(http::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let body = response
            .into_body()
            .collect()
            .await
            .map_err(|e| RestError::Decode {
                method: method.clone(),
                path: path.to_string(),
                reason: e.to_string(),
            })?
            .to_bytes()
            .to_vec();
        Ok(Answer {
            status,
            content_type,
            body,
        })
    }

    /// Sends a request; a 2xx answer's body as JSON (`null` when empty), else an error.
    pub async fn json(
        &self,
        method: Method,
        path: &str,
        body: Option<(&Value, ContentType)>,
    ) -> Result<Value, RestError> {
        let answer = self.send(method.clone(), path, body).await?;
        if !answer.status.is_success() {
            return Err(error_from(answer.status.as_u16(), &answer.body));
        }
        if answer.body.is_empty() {
            return Ok(Value::Null);
        }
        serde_json::from_slice(&answer.body).map_err(|e| RestError::Decode {
            method,
            path: path.to_string(),
            reason: e.to_string(),
        })
    }

    /// GET as JSON.
    pub async fn get(&self, path: &str) -> Result<Value, RestError> {
        self.json(Method::GET, path, None).await
    }

    /// GET as JSON; `None` on 404.
    pub async fn get_opt(&self, path: &str) -> Result<Option<Value>, RestError> {
        match self.get(path).await {
            Ok(v) => Ok(Some(v)),
            Err(e) if e.is_not_found() => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// POST JSON.
    pub async fn post(&self, path: &str, body: &Value) -> Result<Value, RestError> {
        self.json(Method::POST, path, Some((body, ContentType::Json)))
            .await
    }

    /// PATCH with a JSON merge patch.
    pub async fn merge_patch(&self, path: &str, patch: &Value) -> Result<Value, RestError> {
        self.json(Method::PATCH, path, Some((patch, ContentType::MergePatch)))
            .await
    }

    /// DELETE; `Ok(false)` when the object did not exist.
    pub async fn delete(&self, path: &str) -> Result<bool, RestError> {
        let body = serde_json::json!({});
        match self
            .json(Method::DELETE, path, Some((&body, ContentType::Json)))
            .await
        {
            Ok(_) => Ok(true),
            Err(e) if e.is_not_found() => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Opens a watch (`path` with its query) and calls `on_event` with each JSON line
    /// until the stream ends (`Ok(true)`) or `on_event` breaks (`Ok(false)`).
    pub async fn watch(
        &self,
        path: &str,
        mut on_event: impl FnMut(Value) -> ControlFlow<()>,
    ) -> Result<bool, RestError> {
        let request = Request::get(path)
            .header(http::header::ACCEPT, "application/json")
            .body(Body::empty())
            .map_err(|e| RestError::Decode {
                method: Method::GET,
                path: path.to_string(),
                reason: e.to_string(),
            })?;
        let response = self
            .client
            .send(request)
            .await
            .map_err(|source| RestError::Transport {
                method: Method::GET,
                path: path.to_string(),
                source: Box::new(source),
            })?;
        let status = response.status();
        let mut body = response.into_body();
        if !status.is_success() {
            let bytes = body
                .collect()
                .await
                .map(|c| c.to_bytes().to_vec())
                .unwrap_or_default();
            return Err(error_from(status.as_u16(), &bytes));
        }
        let mut buffer: Vec<u8> = Vec::new();
        loop {
            let frame = match body.frame().await {
                None => return Ok(true),
                Some(Ok(frame)) => frame,
                Some(Err(e)) => {
                    return Err(RestError::Decode {
                        method: Method::GET,
                        path: path.to_string(),
                        reason: e.to_string(),
                    });
                }
            };
            let Ok(data) = frame.into_data() else {
                continue;
            };
            buffer.extend_from_slice(&data);
            while let Some(pos) = buffer.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = buffer.drain(..=pos).collect();
                let line = &line[..line.len() - 1];
                if line.iter().all(u8::is_ascii_whitespace) {
                    continue;
                }
                let event: Value = serde_json::from_slice(line).map_err(|e| RestError::Decode {
                    method: Method::GET,
                    path: path.to_string(),
                    reason: e.to_string(),
                })?;
                if on_event(event).is_break() {
                    return Ok(false);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_messages_come_from_status_or_error_bodies() {
        let e = error_from(
            404,
            br#"{"kind":"Status","status":"Failure","reason":"NotFound","message":"instances \"x\" not found","code":404}"#,
        );
        assert!(e.is_not_found());
        assert_eq!(e.to_string(), "instances \"x\" not found (HTTP 404)");
        let e = error_from(401, br#"{"error":"wrong key","status":401}"#);
        assert_eq!(e.to_string(), "wrong key (HTTP 401)");
        let e = error_from(502, b"");
        assert_eq!(e.to_string(), "Bad Gateway (HTTP 502)");
    }
}
