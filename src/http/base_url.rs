//! The gateway's base URL as the client addressed it, for the absolute
//! URLs an answer carries (a spawned call's `status_url`): trusted
//! headers only, and only well-formed authorities.

use axum::extract::Request;
use http::{HeaderMap, header};

use super::admission::PlainListener;

/// `scheme://host[:port]` for the URLs a spawn answers with. On the TLS
/// listener it is `https` and the authority the client addressed
/// (`:authority` or `Host`) when that is a well-formed `host[:port]`;
/// `X-Forwarded-*` are ignored there, since any client can send them. Only
/// on `http_listen` (behind a TLS-terminating load balancer) do
/// `X-Forwarded-Proto` (`http` or `https`) and `X-Forwarded-Host` (a
/// well-formed `host[:port]`) count, each as one value. Anything else
/// falls back to `https` and `localhost`.
pub fn external_base(request: &Request) -> String {
    let headers = request.headers();
    let behind_proxy = request.extensions().get::<PlainListener>().is_some();
    let forwarded = |name| behind_proxy.then(|| single_value(headers, name)).flatten();
    let scheme = match forwarded("x-forwarded-proto") {
        Some(proto) if proto.eq_ignore_ascii_case("http") => "http",
        _ => "https",
    };
    let host = forwarded("x-forwarded-host")
        .filter(|host| is_authority(host))
        .or_else(|| request.uri().authority().map(|a| a.as_str()))
        .filter(|host| is_authority(host))
        .or_else(|| single_value(headers, header::HOST.as_str()))
        .filter(|host| is_authority(host))
        .unwrap_or("localhost");
    format!("{scheme}://{host}")
}

/// A header's value when it is sent once, as text (no lists).
fn single_value<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    let mut values = headers.get_all(name).iter();
    let value = values.next()?;
    values
        .next()
        .is_none()
        .then(|| value.to_str().ok())
        .flatten()
}

/// A `host[:port]` as a client or load balancer writes it: a DNS name or
/// IPv4 address (letters, digits, `-`, `.`) or a bracketed IPv6 address,
/// and an optional port. No userinfo, no percent-encoding, no spaces.
fn is_authority(text: &str) -> bool {
    let (host_ok, port) = match text.strip_prefix('[') {
        Some(rest) => match rest.split_once(']') {
            Some((ip, port)) => (ip.parse::<std::net::Ipv6Addr>().is_ok(), port),
            None => return false,
        },
        None => {
            let (host, port) = text.split_at(text.find(':').unwrap_or(text.len()));
            let name = |b: u8| b.is_ascii_alphanumeric() || b == b'-' || b == b'.';
            let ok = !host.is_empty() && host.len() <= 253 && host.bytes().all(name);
            (ok, port)
        }
    };
    let port_ok = port.is_empty()
        || port.strip_prefix(':').is_some_and(|digits| {
            digits.len() <= 5
                && digits.bytes().all(|b| b.is_ascii_digit())
                && digits.parse::<u16>().is_ok()
        });
    host_ok && port_ok
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::Body;

    fn request(uri: &str, headers: &[(&str, &str)], plain: bool) -> Request {
        let mut builder = http::Request::get(uri);
        for (name, value) in headers {
            builder = builder.header(*name, *value);
        }
        let mut request = builder.body(Body::empty()).unwrap();
        if plain {
            request.extensions_mut().insert(PlainListener);
        }
        request
    }

    #[test]
    fn the_tls_listener_ignores_forwarded_headers() {
        let forged = [
            ("host", "gw.example:8443"),
            ("x-forwarded-proto", "http"),
            ("x-forwarded-host", "evil.example"),
        ];
        assert_eq!(
            external_base(&request("/x/y/spawn", &forged, false)),
            "https://gw.example:8443"
        );
        // HTTP/2: the :authority.
        assert_eq!(
            external_base(&request("https://[::1]:8443/x/y", &[], false)),
            "https://[::1]:8443"
        );
        for bad in [
            "evil.example/x?",
            "a@b",
            "a b",
            "x:99999",
            "x:",
            "[zz]",
            "a_b.example",
        ] {
            let got = external_base(&request("/x", &[("host", bad)], false));
            assert_eq!(got, "https://localhost", "Host {bad:?}");
        }
    }

    #[test]
    fn the_plain_listener_takes_a_load_balancers_headers() {
        let lb = [
            ("host", "10.0.0.5:8080"),
            ("x-forwarded-proto", "http"),
            ("x-forwarded-host", "api.example.com"),
        ];
        assert_eq!(
            external_base(&request("/x", &lb, true)),
            "http://api.example.com"
        );
        let https = [("host", "10.0.0.5:8080"), ("x-forwarded-proto", "HTTPS")];
        assert_eq!(
            external_base(&request("/x", &https, true)),
            "https://10.0.0.5:8080"
        );
        // Malformed or listed values count as absent.
        let odd = [
            ("host", "api.example.com"),
            ("x-forwarded-proto", "javascript"),
            ("x-forwarded-host", "a.example, b.example"),
        ];
        assert_eq!(
            external_base(&request("/x", &odd, true)),
            "https://api.example.com"
        );
        let twice = [
            ("x-forwarded-proto", "http"),
            ("x-forwarded-proto", "https"),
            ("host", "api.example.com"),
        ];
        assert_eq!(
            external_base(&request("/x", &twice, true)),
            "https://api.example.com"
        );
    }

    #[test]
    fn authorities_are_host_and_port_only() {
        for good in [
            "localhost",
            "a.example:443",
            "127.0.0.1:8443",
            "[::1]",
            "[2001:db8::1]:80",
        ] {
            assert!(is_authority(good), "{good}");
        }
        for bad in [
            "", ":80", "a:b", "[::1", "[::1]x", "u@h", "h/p", "h%2e", "h:123456", "h:",
        ] {
            assert!(!is_authority(bad), "{bad}");
        }
    }
}
