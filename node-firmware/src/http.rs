//! The node's small HTTP face: `GET /metrics` (Prometheus) and `GET /nodeinfo.json`, on every
//! address (the overlay too, so a mesh operator can scrape any node). One thread, one request
//! at a time, short timeouts: a slow or hostile client cannot pile up memory.

use crate::metrics::{self, Collectors};
use crate::radio;
use crate::router;
use crate::status::NodeState;
use serde_json::json;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

pub fn spawn(port: u16, state: Arc<Mutex<NodeState>>, run_dir: PathBuf) -> Result<(), String> {
    // [::] also takes IPv4 (Linux's bindv6only is 0).
    let listener = TcpListener::bind(("::", port)).map_err(|e| format!("metrics on port {port}: {e}"))?;
    std::thread::Builder::new()
        .name("http".into())
        .stack_size(128 * 1024)
        .spawn(move || {
            let mut collectors = Collectors::new();
            for stream in listener.incoming().flatten() {
                if let Err(e) = serve(stream, &state, &run_dir, &mut collectors) {
                    eprintln!("meshd: http: {e}");
                }
            }
        })
        .map_err(|e| format!("http thread: {e}"))?;
    Ok(())
}

fn serve(mut stream: TcpStream, state: &Mutex<NodeState>, run_dir: &std::path::Path, c: &mut Collectors) -> std::io::Result<()> {
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
        ("GET", "/") => ("200 OK", "text/plain; charset=utf-8", format!("{} (meshos {})\n/metrics\n/nodeinfo.json\n", snapshot.name, snapshot.version)),
        ("GET", _) => ("404 Not Found", "text/plain", "not found; try /metrics or /nodeinfo.json\n".into()),
        _ => ("405 Method Not Allowed", "text/plain", "only GET\n".into()),
    };
    write!(stream, "HTTP/1.0 {status}\r\nContent-Type: {kind}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}", body.len())?;
    stream.flush()
}

pub fn nodeinfo(s: &NodeState) -> serde_json::Value {
    let services: Vec<&str> = s.services.iter().filter(|x| x.running).map(|x| x.name.as_str()).collect();
    json!({
        "name": s.name, "address": s.address, "version": s.version, "board": s.board, "slot": s.slot,
        "build_id": s.build_id, "router": s.router, "services": services,
        "metrics": s.metrics_port.map(|p| format!("http://[{}]:{p}/metrics", s.address)),
    })
}

/// A request's line and headers, at most: enough for any real client.
const MAX_REQUEST: u64 = 16 * 1024;
