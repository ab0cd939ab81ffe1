//! The `[server]` and `[store]` tables: addresses, TLS files, limits and
//! timeouts, and where spawned calls are kept.

use super::*;

impl Context {
    pub(super) fn server(&self, raw: &RawServer) -> Result<ServerConfig, ConfigError> {
        let addr = |key: &str, text: &str| -> Result<SocketAddr, ConfigError> {
            text.parse().map_err(|_| {
                self.invalid(
                    key,
                    format!(
                        "'{text}' is not a socket address like \"127.0.0.1:8443\" or \"[::1]:8443\""
                    ),
                )
            })
        };
        let listen = match &raw.listen {
            None => vec![addr("server.listen", "127.0.0.1:8443")?],
            Some(RawListen::One(text)) => vec![addr("server.listen", text)?],
            Some(RawListen::Many(list)) => {
                let mut addrs = Vec::with_capacity(list.len());
                for text in list {
                    let parsed = addr("server.listen", text)?;
                    if addrs.contains(&parsed) {
                        return Err(
                            self.invalid("server.listen", format!("{parsed} is listed twice"))
                        );
                    }
                    addrs.push(parsed);
                }
                if addrs.is_empty() {
                    return Err(self.invalid("server.listen", "needs at least one address"));
                }
                addrs
            }
        };
        let http_listen = match &raw.http_listen {
            Some(text) => Some(addr("server.http_listen", text)?),
            None => None,
        };
        let tls = match (&raw.tls_cert, &raw.tls_key) {
            (Some(cert), Some(key)) => TlsSource::Files {
                cert: self.resolve(cert),
                key: self.resolve(key),
            },
            (None, None) => TlsSource::Dev {
                dir: self.base_dir.join("certs"),
            },
            (Some(_), None) => {
                return Err(self.invalid(
                    "server.tls_key",
                    "tls_cert is set, so tls_key is needed too",
                ));
            }
            (None, Some(_)) => {
                return Err(self.invalid(
                    "server.tls_cert",
                    "tls_key is set, so tls_cert is needed too",
                ));
            }
        };
        let client_ca = raw.client_ca.as_deref().map(|path| self.resolve(path));
        if let Some(path) = &client_ca {
            if !path.is_file() {
                return Err(self.invalid(
                    "server.client_ca",
                    format!("{} is not a readable file", path.display()),
                ));
            }
        }
        let max_header_bytes = self.size(
            "server.max_header_bytes",
            raw.max_header_bytes.as_deref(),
            16 << 10,
        )?;
        if !(8192..=1 << 20).contains(&max_header_bytes) {
            return Err(self.invalid("server.max_header_bytes", "must be between 8KiB and 1MiB"));
        }
        let max_json_depth = raw.max_json_depth.unwrap_or(128);
        if !(1..=1024).contains(&max_json_depth) {
            return Err(self.invalid("server.max_json_depth", "must be between 1 and 1024"));
        }
        let positive = |key: &str, value: Option<u32>, default: u32| -> Result<u32, ConfigError> {
            match value.unwrap_or(default) {
                0 => Err(self.invalid(key, "must be at least 1")),
                n => Ok(n),
            }
        };
        let http1_engine = match raw.http1_engine.as_deref().unwrap_or("fngate") {
            "hyper" => Http1Engine::Hyper,
            "fngate" => Http1Engine::Fngate,
            other => {
                return Err(self.invalid(
                    "server.http1_engine",
                    format!("'{other}' is not an HTTP/1.1 engine: use \"hyper\" or \"fngate\""),
                ));
            }
        };
        Ok(ServerConfig {
            listen,
            http_listen,
            tls,
            client_ca,
            max_body: self.size("server.max_body", raw.max_body.as_deref(), 16 << 20)?,
            max_result: self.size("server.max_result", raw.max_result.as_deref(), 64 << 20)?,
            sync_wait: self.duration(
                "server.sync_wait",
                raw.sync_wait.as_deref(),
                Duration::from_secs(150),
            )?,
            handshake_timeout: self.duration(
                "server.handshake_timeout",
                raw.handshake_timeout.as_deref(),
                Duration::from_secs(10),
            )?,
            header_read_timeout: self.duration(
                "server.header_read_timeout",
                raw.header_read_timeout.as_deref(),
                Duration::from_secs(10),
            )?,
            idle_timeout: self.duration(
                "server.idle_timeout",
                raw.idle_timeout.as_deref(),
                Duration::from_secs(60),
            )?,
            max_header_bytes: max_header_bytes as usize,
            max_connections: positive("server.max_connections", raw.max_connections, 10_000)?
                as usize,
            h2_max_streams: positive("server.h2_max_streams", raw.h2_max_streams, 128)?,
            h2_max_pending_resets: positive(
                "server.h2_max_pending_resets",
                raw.h2_max_pending_resets,
                20,
            )?,
            shutdown_grace: self.duration(
                "server.shutdown_grace",
                raw.shutdown_grace.as_deref(),
                Duration::from_secs(30),
            )?,
            max_json_depth: max_json_depth as usize,
            workers: match raw.workers {
                None => std::thread::available_parallelism().map_or(1, |n| n.get()),
                Some(n @ 1..=1024) => n as usize,
                Some(_) => return Err(self.invalid("server.workers", "must be between 1 and 1024")),
            },
            session_resumption: raw.session_resumption.unwrap_or(true),
            body_read_timeout: self.duration(
                "server.body_read_timeout",
                raw.body_read_timeout.as_deref(),
                Duration::from_secs(10),
            )?,
            body_min_rate: self.size("server.body_min_rate", raw.body_min_rate.as_deref(), 1024)?,
            result_buffer_per_connection: self.size(
                "server.result_buffer_per_connection",
                raw.result_buffer_per_connection.as_deref(),
                32 << 20,
            )?,
            result_buffer_total: self.size(
                "server.result_buffer_total",
                raw.result_buffer_total.as_deref(),
                1 << 30,
            )?,
            max_map_inputs: positive("server.max_map_inputs", raw.max_map_inputs, 25_000)? as usize,
            max_call_depth: match raw.max_call_depth {
                None => 8,
                Some(n @ 1..=64) => n,
                Some(_) => {
                    return Err(self.invalid("server.max_call_depth", "must be between 1 and 64"));
                }
            },
            http1_engine,
        })
    }

    pub(super) fn store(&self, raw: Option<&RawStore>) -> Result<StoreConfig, ConfigError> {
        let kind = match raw.and_then(|s| s.kind.as_deref()).unwrap_or("embedded") {
            "embedded" => StoreKind::Embedded,
            "redis" => StoreKind::Redis,
            other => {
                return Err(self.invalid(
                    "store.kind",
                    format!("'{other}' is not a store kind: use \"embedded\" or \"redis\""),
                ));
            }
        };
        let url = raw.and_then(|s| s.url.clone());
        if kind == StoreKind::Redis && url.is_none() {
            return Err(self.invalid(
                "store.url",
                "the redis store needs a url like \"redis://127.0.0.1:6379\"",
            ));
        }
        let max_pending = raw.and_then(|s| s.max_pending).unwrap_or(1_000_000);
        if max_pending == 0 {
            return Err(self.invalid("store.max_pending", "must be at least 1"));
        }
        let prefix = raw
            .and_then(|s| s.prefix.clone())
            .unwrap_or_else(|| "fngate:".to_owned());
        if prefix.is_empty() || prefix.len() > 64 || !prefix.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(self.invalid(
                "store.prefix",
                "must be 1 to 64 visible ASCII characters, like \"fngate:\"",
            ));
        }
        let claim_timeout = self.duration(
            "store.claim_timeout",
            raw.and_then(|s| s.claim_timeout.as_deref()),
            Duration::from_secs(30),
        )?;
        if claim_timeout < Duration::from_secs(1) {
            return Err(self.invalid("store.claim_timeout", "must be at least 1s"));
        }
        Ok(StoreConfig {
            kind,
            path: self.resolve(
                raw.and_then(|s| s.path.as_deref())
                    .unwrap_or("data/calls.db"),
            ),
            url,
            prefix,
            claim_timeout,
            result_ttl: self.duration(
                "store.result_ttl",
                raw.and_then(|s| s.result_ttl.as_deref()),
                Duration::from_secs(7 * 86_400),
            )?,
            max_pending,
            max_wait: self.duration(
                "store.max_wait",
                raw.and_then(|s| s.max_wait.as_deref()),
                Duration::from_secs(60),
            )?,
        })
    }
}
