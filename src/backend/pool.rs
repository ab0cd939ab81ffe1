//! Keep-alive HTTP/1.1 connections to one plain-`http://` backend replica,
//! for invocation requests. Idle connections are kept per worker thread: a
//! connection's task runs on the worker that opened it, so a request never
//! wakes another core, and checking one out or in takes no lock.
//!
//! This is the invocation fast path; `https://` and h2c replicas, and
//! passthrough forwarding, use hyper-util's pooled client.

use std::cell::RefCell;
use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::uri::PathAndQuery;
use http::{Request, Response, Uri};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::client::conn::http1::{self, SendRequest};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

type Sender = SendRequest<Full<Bytes>>;

/// Idle connections a worker keeps per replica; more are closed.
const MAX_IDLE: usize = 1024;

/// How long opening a connection may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

thread_local! {
    /// Idle connections of this worker thread, by replica.
    static IDLE: RefCell<HashMap<usize, Vec<Sender>>> = RefCell::new(HashMap::new());
}

/// Gives each replica's idle list its own key.
static NEXT_ID: AtomicUsize = AtomicUsize::new(0);

/// Why a request did not get an answer.
#[derive(Debug, thiserror::Error)]
pub enum PoolError {
    /// No connection could be opened: nothing reached the replica.
    #[error("connecting to {authority}: {message}")]
    Connect { authority: String, message: String },
    /// The request was sent, or may have been, and no answer came.
    #[error("{0}")]
    Request(hyper::Error),
}

/// One plain-HTTP/1.1 replica.
pub struct Replica {
    id: usize,
    /// `host:port` to connect to.
    authority: String,
    host: HeaderValue,
    path: PathAndQuery,
}

impl Replica {
    /// The replica at `url`, when it is a plain `http://` URL.
    pub fn for_url(url: &Uri) -> Option<Replica> {
        if url.scheme_str() != Some("http") {
            return None;
        }
        let authority = url.authority()?;
        let port = authority.port_u16().unwrap_or(80);
        // Host is the URL's host and port as written, without any userinfo.
        let host = match authority.port() {
            Some(given) => HeaderValue::from_str(&format!("{}:{given}", authority.host())),
            None => HeaderValue::from_str(authority.host()),
        }
        .ok()?;
        let path = url
            .path_and_query()
            .cloned()
            .unwrap_or_else(|| PathAndQuery::from_static("/"));
        Some(Replica {
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
            authority: format!("{}:{port}", authority.host()),
            host,
            path,
        })
    }

    /// Sends `request` (its URI and `Host` are set here) on an idle
    /// connection, or a new one. A request that an idle connection closed
    /// under before sending it goes out once more on a new connection.
    pub async fn send(
        &self,
        mut request: Request<Full<Bytes>>,
    ) -> Result<(Response<Incoming>, Lease), PoolError> {
        *request.uri_mut() = Uri::from(self.path.clone());
        request
            .headers_mut()
            .insert(header::HOST, self.host.clone());
        if let Some(mut sender) = self.idle().await {
            match sender.try_send_request(request).await {
                Ok(response) => return Ok((response, self.lease(sender))),
                Err(mut failed) => match failed.take_message() {
                    // Never sent: the connection had closed. Try a new one.
                    Some(unsent) => request = unsent,
                    None => return Err(PoolError::Request(failed.into_error())),
                },
            }
        }
        let mut sender = self.connect().await?;
        match sender.send_request(request).await {
            Ok(response) => Ok((response, self.lease(sender))),
            Err(e) => Err(PoolError::Request(e)),
        }
    }

    /// An idle connection of this worker that is ready for a request.
    async fn idle(&self) -> Option<Sender> {
        loop {
            let mut sender = IDLE.with(|idle| idle.borrow_mut().get_mut(&self.id)?.pop())?;
            if sender.is_closed() {
                continue;
            }
            if sender.ready().await.is_ok() {
                return Some(sender);
            }
        }
    }

    async fn connect(&self) -> Result<Sender, PoolError> {
        let failed = |message: String| PoolError::Connect {
            authority: self.authority.clone(),
            message,
        };
        let stream = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(&self.authority))
            .await
            .map_err(|_| failed("timed out".to_owned()))?
            .map_err(|e| failed(e.to_string()))?;
        let _ = stream.set_nodelay(true);
        let (sender, connection) = http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| failed(e.to_string()))?;
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!(error = %e, "backend connection ended with an error");
            }
        });
        Ok(sender)
    }

    fn lease(&self, sender: Sender) -> Lease {
        Lease {
            replica: self.id,
            sender: Some(sender),
        }
    }
}

/// A connection lent to one request. Drop it once the answer's body has
/// been read: it goes back to the worker's idle connections (unless it
/// closed meanwhile; an answer not read to its end closes it).
pub struct Lease {
    replica: usize,
    sender: Option<Sender>,
}

impl Drop for Lease {
    fn drop(&mut self) {
        let Some(sender) = self.sender.take() else {
            return;
        };
        if sender.is_closed() {
            return;
        }
        // `try_with`: a thread being torn down keeps nothing.
        let _ = IDLE.try_with(|idle| {
            let mut idle = idle.borrow_mut();
            let list = idle.entry(self.replica).or_default();
            if list.len() < MAX_IDLE {
                list.push(sender);
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_plain_http_urls_get_a_replica_with_its_host_and_path() {
        let replica = |url: &str| Replica::for_url(&url.parse().unwrap());
        let plain = replica("http://127.0.0.1:9001/invoke?x=1").unwrap();
        assert_eq!(plain.authority, "127.0.0.1:9001");
        assert_eq!(plain.host, "127.0.0.1:9001");
        assert_eq!(plain.path.as_str(), "/invoke?x=1");
        let named = replica("http://user:secret@backend.internal/").unwrap();
        assert_eq!(named.authority, "backend.internal:80");
        assert_eq!(named.host, "backend.internal");
        let v6 = replica("http://[::1]:8080").unwrap();
        assert_eq!(v6.authority, "[::1]:8080");
        assert_eq!(v6.path.as_str(), "/");
        assert!(replica("https://127.0.0.1:9001/invoke").is_none());
    }
}
