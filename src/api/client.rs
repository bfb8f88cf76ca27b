//! A small blocking HTTP/1.1 client for the CLI (`rtgt target ...`): `http://` or `https://`
//! (trusting a given CA) to the management API, one request per connection.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

/// A response: status code and body.
#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub body: String,
}

impl Reply {
    pub fn ok(&self) -> bool {
        (200..300).contains(&self.status)
    }

    /// The `error` field of a JSON error body, or the body itself.
    pub fn error_message(&self) -> String {
        serde_json::from_str::<serde_json::Value>(&self.body)
            .ok()
            .and_then(|v| v["error"].as_str().map(str::to_string))
            .unwrap_or_else(|| self.body.trim().to_string())
    }
}

/// Where the API is and how to authenticate.
pub struct Client {
    host_port: String,
    token: Option<String>,
    /// For `https://`: the TLS configuration (the CA to trust), set by [`Client::trusting`].
    https: bool,
    tls: Option<std::sync::Arc<rustls::ClientConfig>>,
}

impl Client {
    /// `url` is `http://host:port` or `https://host:port` (a trailing slash is fine).
    pub fn new(url: &str, token: Option<String>) -> Result<Client, String> {
        let (https, rest) = match (url.strip_prefix("http://"), url.strip_prefix("https://")) {
            (Some(rest), _) => (false, rest),
            (None, Some(rest)) => (true, rest),
            _ => return Err(format!("--api: {url:?} must start with http:// or https://")),
        };
        let host_port = rest.trim_end_matches('/').to_string();
        if host_port.is_empty() || host_port.contains('/') {
            return Err(format!("--api: {url:?} must be http(s)://host:port"));
        }
        Ok(Client { host_port, token, https, tls: None })
    }

    /// Trusts the certificates in `ca` (PEM) for `https://`.
    pub fn trusting(mut self, ca: &std::path::Path) -> Result<Client, String> {
        self.tls = Some(super::tls::client_config(ca)?);
        Ok(self)
    }

    fn scheme(&self) -> &str {
        if self.https { "https" } else { "http" }
    }

    pub fn request(&self, method: &str, path: &str, body: Option<&serde_json::Value>) -> Result<Reply, String> {
        let unreachable =
            |e: std::io::Error| format!("cannot reach the rtgt API at {}://{}: {e}", self.scheme(), self.host_port);
        let tcp = TcpStream::connect(&self.host_port).map_err(unreachable)?;
        tcp.set_read_timeout(Some(Duration::from_secs(120))).map_err(unreachable)?;
        let mut stream: Box<dyn ReadWrite> = match (self.https, &self.tls) {
            (false, _) => Box::new(tcp),
            (true, None) => {
                return Err("--api https://…: give the CA to trust with --api-ca FILE (or $RTGT_API_CA)".into());
            }
            (true, Some(config)) => {
                let host = self.host_port.rsplit_once(':').map_or(self.host_port.as_str(), |(h, _)| h);
                let host = host.trim_start_matches('[').trim_end_matches(']').to_string();
                let name = rustls::pki_types::ServerName::try_from(host).map_err(|e| format!("--api: {e}"))?;
                let conn = rustls::ClientConnection::new(config.clone(), name).map_err(|e| e.to_string())?;
                Box::new(rustls::StreamOwned::new(conn, tcp))
            }
        };
        let payload = body.map(|b| b.to_string()).unwrap_or_default();
        let mut req = format!("{method} {path} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n", self.host_port);
        if let Some(t) = &self.token {
            req.push_str(&format!("Authorization: Bearer {t}\r\n"));
        }
        if body.is_some() {
            req.push_str("Content-Type: application/json\r\n");
        }
        req.push_str(&format!("Content-Length: {}\r\n\r\n{payload}", payload.len()));
        stream.write_all(req.as_bytes()).map_err(unreachable)?;
        let mut raw = Vec::new();
        match stream.read_to_end(&mut raw) {
            Ok(_) => {}
            // A TLS peer that closed without close_notify, after the whole response.
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof && !raw.is_empty() => {}
            Err(e) => return Err(unreachable(e)),
        }
        parse_response(&raw)
    }
}

trait ReadWrite: Read + Write {}
impl<T: Read + Write> ReadWrite for T {}

fn parse_response(raw: &[u8]) -> Result<Reply, String> {
    let split = raw.windows(4).position(|w| w == b"\r\n\r\n").ok_or("malformed HTTP response from the API")?;
    let head = String::from_utf8_lossy(&raw[..split]);
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|s| s.parse().ok())
        .ok_or("malformed HTTP status line from the API")?;
    let chunked = lines.any(|l| {
        let l = l.to_ascii_lowercase();
        l.starts_with("transfer-encoding:") && l.contains("chunked")
    });
    let body = &raw[split + 4..];
    let body = if chunked { dechunk(body)? } else { body.to_vec() };
    Ok(Reply { status, body: String::from_utf8_lossy(&body).into_owned() })
}

fn dechunk(mut body: &[u8]) -> Result<Vec<u8>, String> {
    let mut out = Vec::new();
    loop {
        let eol = body.windows(2).position(|w| w == b"\r\n").ok_or("malformed chunked body")?;
        let size_text = String::from_utf8_lossy(&body[..eol]);
        let size = usize::from_str_radix(size_text.split(';').next().unwrap_or("").trim(), 16)
            .map_err(|_| "malformed chunk size")?;
        body = &body[eol + 2..];
        if size == 0 {
            return Ok(out);
        }
        if body.len() < size + 2 {
            return Err("truncated chunked body".into());
        }
        out.extend_from_slice(&body[..size]);
        body = &body[size + 2..];
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn responses_parse_plain_and_chunked() {
        let r = parse_response(b"HTTP/1.1 404 Not Found\r\ncontent-length: 17\r\n\r\n{\"error\":\"nope\"}\n")
            .expect("plain");
        assert_eq!(r.status, 404);
        assert_eq!(r.error_message(), "nope");
        let r =
            parse_response(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n")
                .expect("chunked");
        assert_eq!((r.status, r.body.as_str()), (200, "abcde"));
        assert!(parse_response(b"garbage").is_err());
        assert!(Client::new("ftp://x:1", None).is_err());
        assert!(Client::new("https://x:1", None).unwrap().request("GET", "/", None).is_err(), "https needs a CA");
        assert!(Client::new("http://127.0.0.1:3261/", None).is_ok());
    }
}
