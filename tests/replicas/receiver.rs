//! A plain HTTP/1.1 webhook receiver on 127.0.0.1 that answers 200 to
//! everything and keeps every request, so a test can wait for the n-th
//! delivery and count deliveries per call.

use std::convert::Infallible;
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use serde_json::Value;
use tokio::sync::watch;

/// One request the receiver got.
#[derive(Clone, Debug)]
pub struct Delivery {
    pub headers: http::HeaderMap,
    pub body: Bytes,
}

impl Delivery {
    pub fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_else(|| panic!("a delivery has a {name} header: {:?}", self.headers))
    }

    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "a delivery's body is JSON ({e}): {}",
                String::from_utf8_lossy(&self.body)
            )
        })
    }

    /// The Standard Webhooks check: HMAC-SHA256 over
    /// `{id}.{timestamp}.{body}` keyed with the base64-decoded secret; one
    /// of the space-separated `v1,<base64>` signatures must match.
    pub fn signed_with(&self, secret: &str) -> bool {
        let key = BASE64
            .decode(secret.strip_prefix("whsec_").unwrap_or(secret))
            .expect("the secret is base64");
        let key = aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA256, &key);
        let mut signed = format!(
            "{}.{}.",
            self.header("webhook-id"),
            self.header("webhook-timestamp")
        )
        .into_bytes();
        signed.extend_from_slice(&self.body);
        self.header("webhook-signature").split(' ').any(|sig| {
            sig.strip_prefix("v1,")
                .and_then(|b64| BASE64.decode(b64).ok())
                .is_some_and(|tag| aws_lc_rs::hmac::verify(&key, &signed, &tag).is_ok())
        })
    }
}

pub struct Receiver {
    port: u16,
    got: watch::Receiver<Vec<Delivery>>,
}

impl Receiver {
    pub async fn start() -> Receiver {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the receiver");
        let port = listener
            .local_addr()
            .expect("the receiver's address")
            .port();
        let (log, got) = watch::channel(Vec::new());
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let log = log.clone();
                let service =
                    hyper::service::service_fn(move |req: http::Request<hyper::body::Incoming>| {
                        let log = log.clone();
                        async move {
                            let (parts, body) = req.into_parts();
                            let body = body
                                .collect()
                                .await
                                .map(|b| b.to_bytes())
                                .unwrap_or_default();
                            log.send_modify(|got| {
                                got.push(Delivery {
                                    headers: parts.headers,
                                    body,
                                })
                            });
                            let resp = http::Response::new(Full::new(Bytes::from_static(b"{}")));
                            Ok::<_, Infallible>(resp)
                        }
                    });
                tokio::spawn(async move {
                    let io = hyper_util::rt::TokioIo::new(stream);
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(io, service)
                        .await;
                });
            }
        });
        Receiver { port, got }
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}/hook", self.port)
    }

    pub fn deliveries(&self) -> Vec<Delivery> {
        self.got.borrow().clone()
    }

    /// Waits until at least `count` requests came, or `within` passes:
    /// whether they came.
    pub async fn wait_for(&self, count: usize, within: Duration) -> bool {
        let mut got = self.got.clone();
        tokio::time::timeout(within, got.wait_for(|d| d.len() >= count))
            .await
            .is_ok_and(|r| r.is_ok())
    }
}
