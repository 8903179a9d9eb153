//! The node's small HTTP face: `GET /metrics` (Prometheus), `GET /nodeinfo.json`,
//! `GET /bundle` (the running slot as an update bundle, for neighbours), and for upgrades over
//! the mesh `GET /header/<manifest sha256>` (a release's signed header) and
//! `GET /chunk/<sha256>` (one chunk of either slot or of the fetch cache), on every address (the
//! overlay too, so a mesh operator can scrape any node and a neighbour can upgrade from it).
//! One thread, one request at a time, short timeouts: a slow or hostile client cannot pile up
//! memory. A bundle transfer gets a thread of its own, at most [`MAX_TRANSFERS`] at once.

use crate::metrics::{self, Collectors};
use crate::radio;
use crate::router;
use crate::held::Shelf;
use crate::slot_bundle::{Served, SlotSource};
use crate::status::NodeState;
use serde_json::json;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Chunks and bytes sent to neighbours for their upgrades since meshd started.
pub static SERVED_CHUNKS: AtomicU64 = AtomicU64::new(0);
pub static SERVED_BYTES: AtomicU64 = AtomicU64::new(0);

pub fn spawn(port: u16, state: Arc<Mutex<NodeState>>, run_dir: PathBuf, bundle: Result<SlotSource, String>, mut shelf: Option<Shelf>) -> Result<(), String> {
    // [::] also takes IPv4 (Linux's bindv6only is 0).
    let listener = TcpListener::bind(("::", port)).map_err(|e| format!("metrics on port {port}: {e}"))?;
    std::thread::Builder::new()
        .name("http".into())
        .stack_size(128 * 1024)
        .spawn(move || {
            let mut collectors = Collectors::new();
            let transfers = Arc::new(AtomicUsize::new(0));
            for stream in listener.incoming().flatten() {
                if let Err(e) = serve(stream, &state, &run_dir, &mut collectors, &bundle, &transfers, shelf.as_mut()) {
                    eprintln!("meshd: http: {e}");
                }
            }
        })
        .map_err(|e| format!("http thread: {e}"))?;
    Ok(())
}

fn serve(mut stream: TcpStream, state: &Mutex<NodeState>, run_dir: &std::path::Path, c: &mut Collectors, bundle: &Result<SlotSource, String>, transfers: &Arc<AtomicUsize>, shelf: Option<&mut Shelf>) -> std::io::Result<()> {
    stream.set_read_timeout(Some(Duration::from_secs(3)))?;
    stream.set_write_timeout(Some(Duration::from_secs(3)))?;
    let mut request_line = String::new();
    let mut reader = BufReader::new(Read::take(&stream, MAX_REQUEST));
    reader.read_line(&mut request_line)?;
    // Drain the headers (bounded) so the client sees a clean close.
    let mut header = String::new();
    for _ in 0..64 {
        header.clear();
        if reader.read_line(&mut header)? == 0 || header == "\r\n" || header == "\n" {
            break;
        }
    }
    let mut parts = request_line.split_whitespace();
    let (method, path) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    if method == "GET" && path == "/bundle" {
        return send_bundle(stream, bundle, transfers);
    }
    if method == "GET" && (path.starts_with("/chunk/") || path.starts_with("/header/")) {
        return send_held(stream, path, shelf);
    }
    let snapshot = state.lock().map(|s| s.clone()).unwrap_or_default();
    let (status, kind, body) = match (method, path.split('?').next().unwrap_or("")) {
        ("GET", "/metrics") => {
            let mut stations = Vec::new();
            for r in snapshot.radios.iter().filter(|r| r.role == "mesh" && r.error.is_none()) {
                stations.extend(radio::stations(&r.interface).unwrap_or_default());
            }
            let peers = router::peers(run_dir);
            ("200 OK", "text/plain; version=0.0.4; charset=utf-8", metrics::render(&snapshot, &stations, &peers, c))
        }
        ("GET", "/nodeinfo.json") => ("200 OK", "application/json", nodeinfo(&snapshot).to_string() + "\n"),
        ("GET", "/") => ("200 OK", "text/plain; charset=utf-8", format!("{} (meshos {})\n/metrics\n/nodeinfo.json\n/bundle\n/header/<sha256>\n/chunk/<sha256>\n", snapshot.name, snapshot.version)),
        ("GET", _) => ("404 Not Found", "text/plain", "not found; try /metrics, /nodeinfo.json or /bundle\n".into()),
        _ => ("405 Method Not Allowed", "text/plain", "only GET\n".into()),
    };
    respond(&mut stream, status, kind, &body)
}

/// A chunk (at most 64 KiB) or a release's header, read from where the node holds it and
/// checked against its name on the way (see crate::held).
fn send_held(mut stream: TcpStream, path: &str, shelf: Option<&mut Shelf>) -> std::io::Result<()> {
    let Some(shelf) = shelf else {
        return respond(&mut stream, "404 Not Found", "text/plain", "this node serves no chunks: it does not know its card\n");
    };
    let held = shelf.current();
    let (body, chunk) = match (path.strip_prefix("/chunk/"), path.strip_prefix("/header/")) {
        (Some(sha), _) if meshos_common::chunks::is_sha256_hex(sha) => (held.read(sha), true),
        (_, Some(sha)) if meshos_common::chunks::is_sha256_hex(sha) => (held.header(sha).map(<[u8]>::to_vec), false),
        _ => return respond(&mut stream, "400 Bad Request", "text/plain", "a chunk or header is named by its sha256 in lower-case hex\n"),
    };
    let Some(body) = body else {
        return respond(&mut stream, "404 Not Found", "text/plain", "not held here\n");
    };
    // A slow mesh link takes a while over 64 KiB; a silent one is dropped.
    stream.set_write_timeout(Some(Duration::from_secs(30)))?;
    write!(stream, "HTTP/1.0 200 OK\r\nContent-Type: application/octet-stream\r\nContent-Length: {}\r\nConnection: close\r\n\r\n", body.len())?;
    stream.write_all(&body)?;
    stream.flush()?;
    if chunk {
        SERVED_CHUNKS.fetch_add(1, Ordering::Relaxed);
        SERVED_BYTES.fetch_add(body.len() as u64, Ordering::Relaxed);
    }
    Ok(())
}

fn respond(stream: &mut TcpStream, status: &str, kind: &str, body: &str) -> std::io::Result<()> {
    write!(stream, "HTTP/1.0 {status}\r\nContent-Type: {kind}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}", body.len())?;
    stream.flush()
}

/// Bundle transfers at once; more are told to come back later.
const MAX_TRANSFERS: usize = 2;
/// A neighbour that takes nothing for this long is dropped (a mesh link can be slow, not silent).
const TRANSFER_STALLED_AFTER: Duration = Duration::from_secs(60);

/// `GET /bundle`: the running slot, streamed from a thread of its own.
fn send_bundle(mut stream: TcpStream, bundle: &Result<SlotSource, String>, transfers: &Arc<AtomicUsize>) -> std::io::Result<()> {
    let source = match bundle {
        Ok(s) => s.clone(),
        Err(why) => return respond(&mut stream, "404 Not Found", "text/plain", &format!("this node serves no bundle: {why}\n")),
    };
    if transfers.fetch_add(1, Ordering::SeqCst) >= MAX_TRANSFERS {
        transfers.fetch_sub(1, Ordering::SeqCst);
        return respond(&mut stream, "503 Service Unavailable", "text/plain", "busy sending the bundle to other nodes; try again in a minute\n");
    }
    let count = transfers.clone();
    let spawned = std::thread::Builder::new().name("bundle".into()).stack_size(128 * 1024).spawn(move || {
        let peer = stream.peer_addr().map(|a| a.to_string()).unwrap_or_default();
        match transfer(&mut stream, &source) {
            Ok((name, len)) => eprintln!("meshd: sent {name} ({len} bytes) to {peer}"),
            Err(e) => eprintln!("meshd: sending the bundle to {peer}: {e}"),
        }
        count.fetch_sub(1, Ordering::SeqCst);
    });
    if let Err(e) = spawned {
        transfers.fetch_sub(1, Ordering::SeqCst);
        return Err(e);
    }
    Ok(())
}

/// Sends the bundle; returns its name and length, or what went wrong.
fn transfer(stream: &mut TcpStream, source: &SlotSource) -> Result<(String, u64), String> {
    let mut served = match source.open() {
        Ok(s) => s,
        Err(why) => {
            let _ = respond(stream, "500 Internal Server Error", "text/plain", &format!("{why}\n"));
            return Err(format!("not serving slot {}: {why}", source.slot));
        }
    };
    // Most often the neighbour refused the bundle after reading its header (not newer, say).
    send(stream, &mut served).map_err(|e| format!("ended early: {e}"))
}

fn send(stream: &mut TcpStream, served: &mut Served) -> std::io::Result<(String, u64)> {
    stream.set_write_timeout(Some(TRANSFER_STALLED_AFTER))?;
    let name = served.manifest.file_name();
    write!(
        stream,
        "HTTP/1.0 200 OK\r\nContent-Type: application/octet-stream\r\nContent-Length: {}\r\nContent-Disposition: attachment; filename=\"{name}\"\r\nConnection: close\r\n\r\n",
        served.len
    )?;
    let mut buf = vec![0u8; 64 * 1024];
    let mut sent = 0u64;
    loop {
        let n = served.reader.read(&mut buf)?;
        if n == 0 {
            break;
        }
        stream.write_all(&buf[..n])?;
        sent += n as u64;
    }
    stream.flush()?;
    Ok((name, sent))
}

pub fn nodeinfo(s: &NodeState) -> serde_json::Value {
    let services: Vec<&str> = s.services.iter().filter(|x| x.running).map(|x| x.name.as_str()).collect();
    json!({
        "name": s.name, "address": s.address, "version": s.version, "board": s.board, "slot": s.slot,
        "build_id": s.build_id, "router": s.router, "services": services,
        "metrics": s.metrics_port.map(|p| format!("http://[{}]:{p}/metrics", s.address)),
        "bundle": s.metrics_port.filter(|_| s.bundle.is_some()).map(|p| format!("http://[{}]:{p}/bundle", s.address)),
        "upgrade": { "phase": s.upgrade.phase, "releases": s.upgrade.releases },
    })
}

/// A request's line and headers, at most: enough for any real client.
const MAX_REQUEST: u64 = 16 * 1024;
