//! HTTP downloads with retries and resume. Plain http is fine for Debian mirrors: everything
//! fetched is checked against hashes from a signed `InRelease` or from the lock.

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::path::Path;
use std::time::Duration;

pub const ATTEMPTS: u32 = 4;

/// The unit of the retry backoff (default 500 ms; `MESHOS_RETRY_BACKOFF_MS` changes it).
pub fn backoff(attempt: u32) -> Duration {
    let unit = std::env::var("MESHOS_RETRY_BACKOFF_MS").ok().and_then(|v| v.parse().ok()).unwrap_or(500u64);
    Duration::from_millis(unit * u64::from(attempt * attempt))
}

#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    #[error("{url}: not found on the mirror (HTTP 404)")]
    NotFound { url: String },
    #[error("{url}: {message}")]
    Failed { url: String, message: String },
}

/// HTTPS trusts the host's certificate store, so a CA added there (a company's TLS-inspecting
/// proxy, say) works as it does for every other tool on the machine.
fn agent() -> ureq::Agent {
    use ureq::tls::{RootCerts, TlsConfig};
    ureq::Agent::config_builder()
        .tls_config(TlsConfig::builder().root_certs(RootCerts::PlatformVerifier).build())
        .timeout_connect(Some(Duration::from_secs(20)))
        .timeout_per_read(Some(Duration::from_secs(60)))
        .user_agent(concat!("meshimg/", env!("CARGO_PKG_VERSION")))
        .build()
        .into()
}

type Body = Box<dyn Read + Send + Sync + 'static>;

fn open(url: &str, from: u64) -> Result<(Body, bool), HttpError> {
    let mut req = agent().get(url);
    if from > 0 {
        req = req.header("Range", &format!("bytes={from}-"));
    }
    match req.call() {
        Ok(resp) => {
            let partial = resp.status() == 206;
            Ok((Box::new(resp.into_body().into_reader()), partial))
        }
        Err(ureq::Error::StatusCode(404)) => Err(HttpError::NotFound { url: url.into() }),
        Err(ureq::Error::StatusCode(code)) => {
            let reason = ureq::http::StatusCode::from_u16(code).ok().and_then(|c| c.canonical_reason()).unwrap_or("");
            Err(HttpError::Failed { url: url.into(), message: format!("HTTP {code} {reason}") })
        }
        Err(e) => Err(HttpError::Failed { url: url.into(), message: e.to_string() }),
    }
}

/// Retries `f` with backoff; a 404 is final (a retry will not make a file appear).
pub fn with_retries<T>(mut f: impl FnMut() -> Result<T, HttpError>) -> Result<T, HttpError> {
    let mut attempt = 1;
    loop {
        match f() {
            Ok(v) => return Ok(v),
            Err(e @ HttpError::NotFound { .. }) => return Err(e),
            Err(e) if attempt >= ATTEMPTS => return Err(e),
            Err(_) => {
                std::thread::sleep(backoff(attempt));
                attempt += 1;
            }
        }
    }
}

/// GETs a small file into memory (one attempt; callers decide on retries).
pub fn get(url: &str) -> Result<Vec<u8>, HttpError> {
    let (mut resp, _) = open(url, 0)?;
    let mut buf = Vec::new();
    resp.read_to_end(&mut buf).map_err(|e| HttpError::Failed { url: url.into(), message: e.to_string() })?;
    Ok(buf)
}

/// Appends the rest of `url` to `partial` (resuming where a previous attempt stopped),
/// calling `progress` with each chunk's length.
pub fn download_resuming(url: &str, partial: &Path, progress: &dyn Fn(u64)) -> Result<(), HttpError> {
    let have = std::fs::metadata(partial).map(|m| m.len()).unwrap_or(0);
    let (resp, resumed) = open(url, have)?;
    let io = |e: std::io::Error| HttpError::Failed { url: url.into(), message: format!("{}: {e}", partial.display()) };
    let mut out: File = if resumed {
        OpenOptions::new().append(true).open(partial).map_err(io)?
    } else {
        // The server ignored the range: start over.
        if have > 0 {
            progress(0u64.wrapping_sub(have));
        }
        File::create(partial).map_err(io)?
    };
    let mut reader = resp;
    let mut buf = vec![0u8; 256 * 1024];
    loop {
        let n = reader.read(&mut buf).map_err(|e| HttpError::Failed { url: url.into(), message: e.to_string() })?;
        if n == 0 {
            break;
        }
        out.write_all(&buf[..n]).map_err(io)?;
        progress(n as u64);
    }
    out.sync_all().map_err(io)
}
