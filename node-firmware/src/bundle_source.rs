//! Where a bundle comes from: a file, or an http(s) URL streamed straight into the installer
//! (TLS by rustls, with Mozilla's roots or the CA certificates a mesh names). Nothing is kept
//! on the node but the slot being written: the bundle's own signature and hashes, not the
//! transport, decide whether it is installed.

use std::fs::File;
use std::io::{BufReader, Read};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// A bundle's location, as given to `meshd upgrade install`.
#[derive(Debug, Clone)]
pub enum Source {
    File(PathBuf),
    Url { url: String, ca: Option<PathBuf> },
}

/// An opened source: its bytes and, when known, their number (a file's size, an HTTP
/// Content-Length), so a short one is refused before anything is written.
pub struct Opened {
    pub reader: Box<dyn Read>,
    pub len: Option<u64>,
}

impl Source {
    pub fn parse(s: &str, ca: Option<PathBuf>) -> Result<Source, String> {
        if s.starts_with("http://") || s.starts_with("https://") {
            Ok(Source::Url { url: s.to_string(), ca })
        } else if s.contains("://") {
            Err(format!("{s}: only http:// and https:// URLs (or a file) can be installed from"))
        } else if ca.is_some() {
            Err("--ca applies to https:// URLs only".into())
        } else {
            Ok(Source::File(PathBuf::from(s)))
        }
    }

    pub fn open(&self) -> Result<Opened, String> {
        match self {
            Source::File(p) => {
                let f = File::open(p).map_err(|e| format!("{}: {e}", p.display()))?;
                let len = f.metadata().ok().map(|m| m.len());
                Ok(Opened { reader: Box::new(BufReader::with_capacity(1 << 20, f)), len })
            }
            Source::Url { url, ca } => get(url, ca.as_deref()),
        }
    }
}

impl std::fmt::Display for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Source::File(p) => write!(f, "{}", p.display()),
            Source::Url { url, .. } => f.write_str(url),
        }
    }
}

/// How long a stalled transfer may sit before the install fails (a mesh link can be slow, but
/// not silent for this long).
const STALLED_AFTER: Duration = Duration::from_secs(60);

fn get(url: &str, ca: Option<&Path>) -> Result<Opened, String> {
    use ureq::tls::{parse_pem, PemItem, RootCerts, TlsConfig};
    let mut tls = TlsConfig::builder();
    if let Some(ca) = ca {
        let pem = std::fs::read(ca).map_err(|e| format!("{}: {e}", ca.display()))?;
        let certs: Vec<_> = parse_pem(&pem).filter_map(|item| if let Ok(PemItem::Certificate(c)) = item { Some(c) } else { None }).collect();
        if certs.is_empty() {
            return Err(format!("{}: no PEM certificate in it", ca.display()));
        }
        tls = tls.root_certs(RootCerts::new_with_certs(&certs));
    }
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .tls_config(tls.build())
        .timeout_connect(Some(Duration::from_secs(30)))
        .timeout_recv_response(Some(STALLED_AFTER))
        .timeout_per_read(Some(STALLED_AFTER))
        .user_agent(concat!("meshd/", env!("CARGO_PKG_VERSION")))
        .build()
        .into();
    let response = agent.get(url).call().map_err(|e| format!("{url}: {e}"))?;
    let len = response.headers().get("content-length").and_then(|v| v.to_str().ok()).and_then(|v| v.parse().ok());
    Ok(Opened { reader: Box::new(response.into_body().into_reader()), len })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::net::TcpListener;

    #[test]
    fn sources_are_files_or_http_urls() {
        assert!(matches!(Source::parse("/boot/x.bundle", None), Ok(Source::File(_))));
        assert!(matches!(Source::parse("https://n/x.bundle", Some("ca.pem".into())), Ok(Source::Url { ca: Some(_), .. })));
        assert!(Source::parse("ftp://n/x.bundle", None).unwrap_err().contains("only http"));
        assert!(Source::parse("x.bundle", Some("ca.pem".into())).is_err());
    }

    /// A real HTTP exchange on loopback: the body and its length come through; a 404 is an
    /// error naming the URL.
    #[test]
    fn streams_a_body_and_reports_http_errors() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        std::thread::spawn(move || {
            for (n, conn) in listener.incoming().take(2).enumerate() {
                let mut conn = conn.unwrap();
                let mut buf = [0u8; 1024];
                let _ = conn.read(&mut buf);
                let reply: &[u8] = if n == 0 {
                    b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nConnection: close\r\n\r\nhello"
                } else {
                    b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                };
                conn.write_all(reply).unwrap();
            }
        });
        let url = format!("http://127.0.0.1:{port}/a.bundle");
        let mut opened = Source::parse(&url, None).unwrap().open().unwrap();
        assert_eq!(opened.len, Some(5));
        let mut body = String::new();
        opened.reader.read_to_string(&mut body).unwrap();
        assert_eq!(body, "hello");
        let err = Source::parse(&url, None).unwrap().open().err().unwrap();
        assert!(err.contains(&url) && err.contains("404"), "{err}");
    }
}
