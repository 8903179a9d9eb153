//! The node's HTTP face: `GET /metrics` (Prometheus), `GET /nodeinfo.json`, `GET /bundle` (the
//! running slot as an update bundle, for neighbours), and for upgrades over the mesh
//! `GET /header/<manifest sha256>` (a release's signed header) and `GET /chunk/<sha256>` (one
//! chunk of either slot or of the fetch cache), and `POST /gateway/lease` (a tunnel to the
//! internet, when the node is a gateway: crate::gateway), on every address (the overlay too, so a
//! mesh operator can scrape any node and a neighbour can upgrade from it).
//!
//! It serves on meshos_common::http_face, which no one client can hold: a source holds a share
//! of the places, and when they are all taken the nodes of this node's mesh view keep a way in
//! for `/nodeinfo.json` and gateway leases. File reads, parsing, large pages and metrics run on
//! a few blocking threads.

use crate::held::Shelf;
use crate::meshview::View;
use crate::metrics::{self, Collectors};
use crate::radio;
use crate::router;
use crate::slot_bundle::SlotSource;
use crate::status::NodeState;
use bytes::Bytes;
use hyper::body::Incoming;
use hyper::header::{HeaderValue, CONTENT_DISPOSITION, CONTENT_LENGTH};
use hyper::{Method, Request, StatusCode};
use meshos_common::http_face::{self, reply, text, Conn, Handler, Limits, Reply, Replying};
use serde_json::json;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::Semaphore;

/// Bundle transfers at once (each holds a blocking thread); more are told to come back later.
const MAX_TRANSFERS: usize = 2;
/// How long a scrape's stations and router peers serve later scrapes (Prometheus scrapes every
/// 15 s or more).
const ASKED_WITHIN: Duration = Duration::from_secs(5);

/// The radios' stations and the router's peers (or why the router did not say).
type Scraped = (Vec<radio::Station>, Result<Vec<router::Peer>, String>);

/// What the face serves from.
struct Face {
    state: Arc<Mutex<NodeState>>,
    run_dir: PathBuf,
    bundle: Result<SlotSource, String>,
    shelf: Option<Mutex<Shelf>>,
    collectors: Mutex<Collectors>,
    /// The radios' stations and the router's peers, as the last scrape asked them.
    asked: metrics::Asked<Scraped>,
    /// The mesh as this node knows it (crate::meshview).
    mesh: Arc<Mutex<View>>,
    /// One permit per bundle transfer, held by its reading thread until it ends.
    transfers: Arc<Semaphore>,
    /// The leases this node gives as a gateway (crate::gateway).
    gateway: Arc<Mutex<crate::gateway::Served>>,
}

/// The mesh map: one page, its script and style inline (a mesh often has no internet), drawing
/// the mesh from `/mesh.json`.
const MAP: &str = include_str!("../assets/map.html");

pub fn spawn(
    port: u16,
    state: Arc<Mutex<NodeState>>,
    run_dir: PathBuf,
    bundle: Result<SlotSource, String>,
    shelf: Option<Shelf>,
    mesh: Arc<Mutex<View>>,
    gateway: Arc<Mutex<crate::gateway::Served>>,
) -> Result<(), String> {
    // [::] also takes IPv4 (Linux's bindv6only is 0).
    let listener = std::net::TcpListener::bind(("::", port)).map_err(|e| format!("metrics on port {port}: {e}"))?;
    serve_on(listener, Face::new(state, run_dir, bundle, shelf, mesh, gateway), Limits::default())
}

/// Two bundle transfers, and chunk reads and metrics beside them.
fn serve_on(listener: std::net::TcpListener, face: Face, limits: Limits) -> Result<(), String> {
    http_face::spawn(listener, face, limits, MAX_TRANSFERS + 2, "http")
}

impl Handler for Face {
    fn handle(self: Arc<Self>, req: Request<Incoming>, conn: &Conn) -> Replying {
        let (peer, reserved) = (conn.peer, conn.reserved);
        if req.uri().path() == "/bundle" {
            conn.long_transfer();
        }
        Box::pin(async move { respond(&self, req, peer, reserved).await })
    }

    fn known(&self, peer: std::net::IpAddr) -> bool {
        let v6 = match peer {
            std::net::IpAddr::V6(a) => a,
            std::net::IpAddr::V4(a) => a.to_ipv6_mapped(),
        };
        self.mesh.lock().is_ok_and(|v| v.knows(&v6))
    }

    fn log(&self, line: &str) {
        logln!("meshd: http: {line}");
    }
}

impl Face {
    fn new(
        state: Arc<Mutex<NodeState>>,
        run_dir: PathBuf,
        bundle: Result<SlotSource, String>,
        shelf: Option<Shelf>,
        mesh: Arc<Mutex<View>>,
        gateway: Arc<Mutex<crate::gateway::Served>>,
    ) -> Face {
        let (collectors, transfers) = (Mutex::new(Collectors::new()), Arc::new(Semaphore::new(MAX_TRANSFERS)));
        let asked = metrics::Asked::new(ASKED_WITHIN);
        Face { state, run_dir, bundle, shelf: shelf.map(Mutex::new), collectors, asked, mesh, transfers, gateway }
    }

    /// The nodes of the mesh view now, this node first.
    fn mesh_nodes(&self) -> Vec<crate::meshview::Node> {
        self.mesh.lock().map(|v| v.nodes(Instant::now())).unwrap_or_default()
    }
}

async fn respond(face: &Arc<Face>, req: Request<Incoming>, peer: std::net::SocketAddr, reserved: bool) -> Reply {
    let path = req.uri().path();
    if reserved && !matches!((req.method(), path), (&Method::GET, "/nodeinfo.json") | (&Method::POST, "/gateway/lease")) {
        return text(StatusCode::SERVICE_UNAVAILABLE, "busy: only nodeinfo and gateway leases are served now; try again in a minute\n".into());
    }
    if path == "/gateway/lease" && req.method() == Method::POST {
        return gateway_lease(face, peer).await;
    }
    if req.method() != Method::GET {
        return text(StatusCode::METHOD_NOT_ALLOWED, "only GET (and POST to /gateway/lease)\n".into());
    }
    if path == "/bundle" {
        return send_bundle(face).await;
    }
    if path.starts_with("/chunk/") || path.starts_with("/header/") {
        return send_held(face, path.to_string()).await;
    }
    let snapshot = face.state.lock().map(|s| s.clone()).unwrap_or_default();
    match path {
        "/metrics" => {
            let face = face.clone();
            // It asks the radios and the router, which may take a moment.
            let page = tokio::task::spawn_blocking(move || {
                let asked = face.asked.get(Instant::now(), || {
                    let mut stations = Vec::new();
                    for r in snapshot.radios.iter().filter(|r| r.role == "mesh" && r.error.is_none()) {
                        stations.extend(radio::stations(&r.interface).unwrap_or_default());
                    }
                    (stations, router::peers(&face.run_dir))
                });
                let mut c = face.collectors.lock().unwrap_or_else(|e| e.into_inner());
                let view = face.mesh.lock().map(|v| metrics::mesh_view(v.count(Instant::now()), v.refused())).unwrap_or_default();
                metrics::render(&snapshot, &asked.0, &asked.1, &mut c) + &view
            })
            .await;
            match page {
                Ok(page) => reply(StatusCode::OK, "text/plain; version=0.0.4; charset=utf-8", page.into()),
                Err(e) => text(StatusCode::INTERNAL_SERVER_ERROR, format!("metrics: {e}\n")),
            }
        }
        "/nodeinfo.json" => {
            let mut info = nodeinfo(&snapshot);
            let me = face.mesh_nodes().into_iter().next().filter(|me| me.address == snapshot.address);
            let (neighbours, bytes) = me.map(|me| (me.neighbours, me.link_bytes)).unwrap_or_default();
            let links: Vec<_> = neighbours.iter().zip(&bytes).map(|(peer, b)| json!({ "peer": peer, "bytes": b })).collect();
            info["neighbours"] = json!(neighbours);
            info["links"] = json!(links);
            reply(StatusCode::OK, "application/json", (info.to_string() + "\n").into())
        }
        "/map" => reply(StatusCode::OK, "text/html; charset=utf-8", Bytes::from_static(MAP.as_bytes())),
        // Up to a thousand nodes: made on a blocking thread.
        "/mesh.json" | "/sd.json" => {
            let (face, sd) = (face.clone(), path == "/sd.json");
            // A neighbour is not told again what it told this node (split horizon).
            let asker = match peer.ip() {
                std::net::IpAddr::V6(a) => Some(a.to_string()),
                std::net::IpAddr::V4(_) => None,
            };
            let page = tokio::task::spawn_blocking(move || match sd {
                true => crate::meshview::service_discovery(&face.mesh_nodes()).to_string() + "\n",
                false => face.mesh.lock().map(|v| v.page(Instant::now(), asker.as_deref())).unwrap_or_else(|_| "[]\n".into()),
            })
            .await;
            match page {
                Ok(page) => reply(StatusCode::OK, "application/json", page.into()),
                Err(e) => text(StatusCode::INTERNAL_SERVER_ERROR, format!("{path}: {e}\n")),
            }
        }
        "/" => reply(
            StatusCode::OK,
            "text/plain; charset=utf-8",
            format!(
                "{} (meshos {})\n/metrics\n/nodeinfo.json\n/map\n/mesh.json\n/sd.json\n/bundle\n/header/<sha256>\n/chunk/<sha256>\nPOST /gateway/lease\n",
                snapshot.name, snapshot.version
            )
            .into(),
        ),
        _ => text(StatusCode::NOT_FOUND, "not found; try /metrics, /nodeinfo.json, /map, /mesh.json, /sd.json or /bundle\n".into()),
    }
}

/// `POST /gateway/lease`: a lease and a tunnel for the node asking, known by the overlay
/// address the request came from (see crate::gateway).
async fn gateway_lease(face: &Arc<Face>, peer: std::net::SocketAddr) -> Reply {
    let client = match peer.ip() {
        std::net::IpAddr::V6(a) => a,
        std::net::IpAddr::V4(a) => a.to_ipv6_mapped(),
    };
    let served = face.gateway.clone();
    let known = face.mesh.lock().is_ok_and(|v| v.knows(&client));
    // It makes the tunnel with `ip`.
    match tokio::task::spawn_blocking(move || crate::gateway::serve_lease(&served, client, known)).await {
        Ok(Ok(lease)) => reply(StatusCode::OK, "application/json", (json!(lease).to_string() + "\n").into()),
        Ok(Err(crate::gateway::Refusal::NotAllowed(why))) => text(StatusCode::FORBIDDEN, why + "\n"),
        Ok(Err(crate::gateway::Refusal::Unavailable(why))) => text(StatusCode::SERVICE_UNAVAILABLE, why + "\n"),
        Err(e) => text(StatusCode::INTERNAL_SERVER_ERROR, format!("gateway: {e}\n")),
    }
}

/// A chunk (at most 64 KiB) or a release's header, read from where the node holds it and
/// checked against its name on the way (see crate::held).
async fn send_held(face: &Arc<Face>, path: String) -> Reply {
    if face.shelf.is_none() {
        return text(StatusCode::NOT_FOUND, "this node serves no chunks: it does not know its card\n".into());
    }
    let (sha, chunk) = match (path.strip_prefix("/chunk/"), path.strip_prefix("/header/")) {
        (Some(sha), _) => (sha.to_string(), true),
        (_, Some(sha)) => (sha.to_string(), false),
        _ => unreachable!("only /chunk/ and /header/ come here"),
    };
    if !meshos_common::chunks::is_sha256_hex(&sha) {
        return text(StatusCode::BAD_REQUEST, "a chunk or header is named by its sha256 in lower-case hex\n".into());
    }
    let face = face.clone();
    let read = tokio::task::spawn_blocking(move || {
        let shelf = face.shelf.as_ref().expect("checked above");
        let held = shelf.lock().unwrap_or_else(|e| e.into_inner()).current();
        if chunk {
            held.read(&sha)
        } else {
            held.header(&sha).map(<[u8]>::to_vec)
        }
    })
    .await;
    match read {
        Ok(Some(body)) => {
            if chunk {
                metrics::SERVED_CHUNKS.fetch_add(1, Ordering::Relaxed);
                metrics::SERVED_BYTES.fetch_add(body.len() as u64, Ordering::Relaxed);
            }
            reply(StatusCode::OK, "application/octet-stream", body.into())
        }
        Ok(None) => text(StatusCode::NOT_FOUND, "not held here\n".into()),
        Err(e) => text(StatusCode::INTERNAL_SERVER_ERROR, format!("reading: {e}\n")),
    }
}

/// `GET /bundle`: the running slot, opened (its header parsed) and read on a blocking thread
/// and streamed a piece at a time.
async fn send_bundle(face: &Arc<Face>) -> Reply {
    let source = match &face.bundle {
        Ok(s) => s.clone(),
        Err(why) => return text(StatusCode::NOT_FOUND, format!("this node serves no bundle: {why}\n")),
    };
    let Ok(permit) = face.transfers.clone().try_acquire_owned() else {
        return text(StatusCode::SERVICE_UNAVAILABLE, "busy sending the bundle to other nodes; try again in a minute\n".into());
    };
    let slot = source.slot;
    let served = match tokio::task::spawn_blocking(move || source.open()).await {
        Ok(Ok(s)) => s,
        Ok(Err(why)) => return text(StatusCode::INTERNAL_SERVER_ERROR, format!("not serving slot {slot}: {why}\n")),
        Err(e) => return text(StatusCode::INTERNAL_SERVER_ERROR, format!("not serving slot {slot}: {e}\n")),
    };
    let name = served.manifest.file_name();
    let disposition = HeaderValue::from_str(&format!("attachment; filename=\"{name}\""));
    let len = served.len;
    let mut r = http_face::stream(served.reader, move |sent, outcome| {
        let _permit = permit;
        match outcome {
            Ok(()) => logln!("meshd: sent {name} ({sent} bytes)"),
            Err(e) => logln!("meshd: sending {name}: ended after {sent} of {len} bytes: {e}"),
        }
    });
    r.headers_mut().insert(CONTENT_LENGTH, HeaderValue::from(len));
    if let Ok(v) = disposition {
        r.headers_mut().insert(CONTENT_DISPOSITION, v);
    }
    r
}

pub fn nodeinfo(s: &NodeState) -> serde_json::Value {
    let services: Vec<&str> = s.services.iter().filter(|x| x.running).map(|x| x.name.as_str()).collect();
    json!({
        "name": s.name, "address": s.address, "key": s.key, "version": s.version, "board": s.board, "slot": s.slot,
        "build_id": s.build_id, "router": s.router, "services": services,
        "metrics": s.metrics_port.map(|p| format!("http://[{}]:{p}/metrics", s.address)),
        "bundle": s.metrics_port.filter(|_| s.bundle.is_some()).map(|p| format!("http://[{}]:{p}/bundle", s.address)),
        "upgrade": { "phase": s.upgrade.phase, "releases": s.upgrade.releases, "failed": s.upgrade.failed, "holding": s.upgrade.holding },
        "gateway": {
            "offers": s.gateway.offer.as_ref().is_some_and(|o| o.uplink_up),
            "using": s.gateway.using.as_ref().map(|u| &u.address),
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::net::{SocketAddr, TcpStream};

    fn face(mesh: Arc<Mutex<View>>) -> Face {
        let state = NodeState { name: "test-node".into(), ..NodeState::default() };
        Face::new(Arc::new(Mutex::new(state)), PathBuf::from("/nonexistent"), Err("none here".into()), None, mesh, Arc::default())
    }

    fn serve(limits: Limits) -> SocketAddr {
        serve_knowing(limits, Arc::default())
    }

    fn serve_knowing(limits: Limits, mesh: Arc<Mutex<View>>) -> SocketAddr {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        serve_on(listener, face(mesh), limits).unwrap();
        addr
    }

    /// A connection to `addr` from `source` (any of loopback's 127.0.0.0/8).
    fn connect_from(source: &str, addr: SocketAddr) -> TcpStream {
        let rt = tokio::runtime::Builder::new_current_thread().enable_io().build().unwrap();
        rt.block_on(async {
            let socket = tokio::net::TcpSocket::new_v4().unwrap();
            socket.bind(format!("{source}:0").parse().unwrap()).unwrap();
            socket.connect(addr).await.unwrap().into_std().unwrap()
        })
    }

    fn get(addr: SocketAddr, path: &str) -> String {
        get_from("127.0.0.1", addr, path)
    }

    fn get_from(source: &str, addr: SocketAddr, path: &str) -> String {
        let mut s = connect_from(source, addr);
        s.set_nonblocking(false).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        // A refused connection is answered before its request arrives, and may be closed
        // before all of it does.
        let _ = write!(s, "GET {path} HTTP/1.1\r\nHost: node\r\n\r\n");
        let mut reply = Vec::new();
        let _ = s.read_to_end(&mut reply);
        String::from_utf8_lossy(&reply).into_owned()
    }

    /// Sends a request a byte at a time, `gap` apart, until the face closes the connection or
    /// `most` bytes have gone; returns how many went.
    fn trickle(addr: SocketAddr, gap: Duration, most: usize) -> usize {
        let mut s = TcpStream::connect(addr).unwrap();
        let line = b"GET /nodeinfo.json HTTP/1.1\r\nX-Slow: ".iter().chain(std::iter::repeat(&b'a'));
        for (sent, b) in line.take(most).enumerate() {
            if s.write_all(&[*b]).is_err() {
                return sent;
            }
            std::thread::sleep(gap);
            s.set_nonblocking(true).unwrap();
            let closed = match s.read(&mut [0u8; 512]) {
                Err(e) => e.kind() != std::io::ErrorKind::WouldBlock,
                // End of stream, or an error reply just before it.
                Ok(_) => true,
            };
            s.set_nonblocking(false).unwrap();
            if closed {
                return sent + 1;
            }
        }
        most
    }

    fn limits(headers: u64, window_ms: u64, min_bytes: u64) -> Limits {
        Limits {
            headers: Duration::from_secs(headers),
            crowded_headers: Duration::from_secs(headers),
            window: Duration::from_millis(window_ms),
            min_bytes,
            deadline: Duration::from_secs(120),
            long_deadline: Duration::from_secs(3600),
        }
    }

    #[test]
    fn serves_pages() {
        let addr = serve(Limits::default());
        let info = get(addr, "/nodeinfo.json");
        assert!(info.starts_with("HTTP/1.1 200"), "{info}");
        assert!(info.contains("\"name\":\"test-node\""), "{info}");
        assert!(get(addr, "/nope").starts_with("HTTP/1.1 404"));
        // No mesh view yet (its thread has not run): empty lists, not errors.
        assert!(get(addr, "/mesh.json").ends_with("\r\n\r\n[]\n"));
        assert!(get(addr, "/sd.json").ends_with("\r\n\r\n[]\n"));
        let map = get(addr, "/map");
        assert!(map.starts_with("HTTP/1.1 200") && map.contains("fetch(\"/mesh.json\""));
        // Self-contained: no script, style, font or image from anywhere.
        assert!(!map.contains("src=") && !map.contains("<link") && !map.contains("url(") && !map.contains("@import"));
        let bundle = get(addr, "/bundle");
        assert!(bundle.starts_with("HTTP/1.1 404") && bundle.contains("none here"), "{bundle}");
        assert!(get(addr, "/chunk/xyz").starts_with("HTTP/1.1 404"));
    }

    #[test]
    fn slow_headers_are_cut_off_while_others_are_served() {
        let addr = serve(limits(2, 60_000, 1));
        let slow: Vec<_> = (0..4).map(|_| std::thread::spawn(move || trickle(addr, Duration::from_millis(200), 100))).collect();
        std::thread::sleep(Duration::from_millis(300));
        let quick: Vec<_> = sources(3, 20).map(|s| std::thread::spawn(move || get_from(&s, addr, "/nodeinfo.json"))).collect();
        for q in quick {
            let reply = q.join().unwrap();
            assert!(reply.starts_with("HTTP/1.1 200"), "{reply}");
        }
        for s in slow {
            // Two seconds at five bytes a second, give or take the scheduler.
            let sent = s.join().unwrap();
            assert!(sent < 100, "cut off only after {sent} bytes");
        }
    }

    #[test]
    fn oversized_requests_are_refused() {
        let addr = serve(Limits::default());
        let mut s = TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        let long = "a".repeat(64 * 1024);
        // The face may close before taking all of it.
        let _ = write!(s, "GET /nodeinfo.json HTTP/1.1\r\nX-Long: {long}\r\n\r\n");
        let mut reply = String::new();
        let _ = s.read_to_string(&mut reply);
        assert!(reply.is_empty() || reply.starts_with("HTTP/1.1 431"), "{reply}");
        assert!(get(addr, "/nodeinfo.json").starts_with("HTTP/1.1 200"));
    }

    #[test]
    fn too_little_traffic_is_cut_off() {
        // Headers may take a minute, but 1 KiB must move every half second.
        let addr = serve(limits(60, 500, 1024));
        let sent = trickle(addr, Duration::from_millis(50), 200);
        assert!(sent < 200, "cut off only after {sent} bytes");
    }

    /// Opens a connection from each of `sources` that sends nothing, and lets the face take them.
    fn idle(addr: SocketAddr, sources: impl Iterator<Item = String>) -> Vec<TcpStream> {
        let held = sources.map(|source| connect_from(&source, addr)).collect();
        std::thread::sleep(Duration::from_millis(300));
        held
    }

    /// `n` addresses of loopback's 127.0.`net`.0/24.
    fn sources(net: u8, n: usize) -> impl Iterator<Item = String> {
        (0..n).map(move |i| format!("127.0.{net}.{}", i + 1))
    }

    #[test]
    fn one_source_cannot_lock_the_face() {
        let addr = serve(limits(60, 60_000, 1));
        // 40 idle connections from one address: it gets its share, the rest are told at once.
        let held = idle(addr, std::iter::repeat_n("127.0.0.66".to_string(), 40));
        let refused = get_from("127.0.0.66", addr, "/nodeinfo.json");
        assert!(refused.starts_with("HTTP/1.1 503") && refused.contains("your address holds too many"), "{refused}");
        let info = get_from("127.0.0.2", addr, "/nodeinfo.json");
        assert!(info.starts_with("HTTP/1.1 200") && info.contains("test-node"), "{info}");
        drop(held);
    }

    #[test]
    fn the_mesh_keeps_a_way_in_when_the_face_is_full() {
        let mesh = Arc::new(Mutex::new(View::default()));
        let me = crate::meshview::Node { address: "200::1".into(), neighbours: vec!["::ffff:127.0.0.9".into()], ..Default::default() };
        mesh.lock().unwrap().set_me(meshos_common::node_record::Signer::starting(meshos_common::node_record::Secret::Yggdrasil([1; 32]), 1).sign(me));
        let addr = serve_knowing(limits(60, 60_000, 1), mesh);
        // Many sources, each within its share, take every general place.
        let held = idle(addr, sources(1, meshos_common::http_face::admission::GENERAL));
        let stranger = get_from("127.0.0.2", addr, "/nodeinfo.json");
        assert!(stranger.starts_with("HTTP/1.1 503") && stranger.contains("as many requests as it can"), "{stranger}");
        // A neighbour gets its nodeinfo through a kept place, and only the mesh's short requests.
        let info = get_from("127.0.0.9", addr, "/nodeinfo.json");
        assert!(info.starts_with("HTTP/1.1 200") && info.contains("test-node"), "{info}");
        let map = get_from("127.0.0.9", addr, "/mesh.json");
        assert!(map.starts_with("HTTP/1.1 503") && map.contains("only nodeinfo and gateway leases"), "{map}");
        drop(held);
    }

    #[test]
    fn connections_past_the_limit_are_closed_and_places_come_back() {
        let addr = serve(limits(2, 60_000, 1));
        let held = idle(addr, sources(2, meshos_common::http_face::admission::GENERAL));
        let reply = get_from("127.0.0.3", addr, "/");
        assert!(reply.starts_with("HTTP/1.1 503"), "a connection past the limit was served: {reply}");
        // The held ones send nothing, so the header limit frees their places.
        std::thread::sleep(Duration::from_secs(3));
        assert!(get(addr, "/").starts_with("HTTP/1.1 200"));
        drop(held);
    }
}
