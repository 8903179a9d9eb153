//! The node's HTTP face: `GET /metrics` (Prometheus), `GET /nodeinfo.json`, `GET /bundle` (the
//! running slot as an update bundle, for neighbours), and for upgrades over the mesh
//! `GET /header/<manifest sha256>` (a release's signed header) and `GET /chunk/<sha256>` (one
//! chunk of either slot or of the fetch cache), and `POST /gateway/lease` (a tunnel to the
//! internet, when the node is a gateway: crate::gateway), on every address (the overlay too, so a mesh
//! operator can scrape any node and a neighbour can upgrade from it).
//!
//! hyper on a one-thread tokio runtime serves many neighbours at once; file reads, parsing,
//! large pages and metrics run on a few blocking threads. No client can hold the face: a source
//! holds a share of the places and the mesh's own nodes keep a way in (crate::admission), the
//! request's headers must arrive within [`Limits::headers`] ([`Limits::crowded_headers`] when
//! the face is crowded), every connection must move at least [`Limits::min_bytes`] in each
//! [`Limits::window`] and end within its deadline, and a request longer than [`MAX_REQUEST`] is
//! refused. One request per connection (`Connection: close`), as every client here makes them.

use crate::admission::{Place, Places};
use crate::held::Shelf;
use crate::meshview::View;
use crate::metrics::{self, Collectors};
use crate::radio;
use crate::router;
use crate::slot_bundle::SlotSource;
use crate::status::NodeState;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::{Body, Frame, Incoming};
use hyper::header::{HeaderValue, CONTENT_DISPOSITION, CONTENT_LENGTH, CONTENT_TYPE};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use serde_json::json;
use std::io::Read;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::{mpsc, Semaphore};

/// A request's line and headers; a longer one is refused (431). The clients here send 100 bytes.
const MAX_REQUEST: usize = 16 * 1024;
/// Bundle transfers at once (each holds a blocking thread); more are told to come back later.
const MAX_TRANSFERS: usize = 2;
/// How long a scrape's stations and router peers serve later scrapes (Prometheus scrapes every
/// 15 s or more).
const ASKED_WITHIN: Duration = Duration::from_secs(5);

/// What a connection must do to keep its place.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// The whole request line and headers within this ...
    pub headers: Duration,
    /// ... or this, when the face is crowded or the place is a kept one (crate::admission).
    pub crowded_headers: Duration,
    /// At least `min_bytes` moved, either way, in every window of this length.
    pub window: Duration,
    pub min_bytes: u64,
    /// A connection ends within this: anything but a bundle (at most 64 KiB of chunk, a header
    /// or a page of metrics) ...
    pub deadline: Duration,
    /// ... and a whole bundle, which over a slow mesh link takes a while.
    pub bundle_deadline: Duration,
}

impl Default for Limits {
    fn default() -> Limits {
        // 16 KiB per 20 s is 0.8 KiB/s: a link that slow serves nobody, and a client sending a
        // byte every few seconds is cut off after 10.
        Limits {
            headers: Duration::from_secs(10),
            crowded_headers: Duration::from_secs(2),
            window: Duration::from_secs(20),
            min_bytes: 16 * 1024,
            deadline: Duration::from_secs(120),
            bundle_deadline: Duration::from_secs(3600),
        }
    }
}

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

type Reply = Response<Box<dyn Body<Data = Bytes, Error = std::io::Error> + Send + Unpin>>;

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

fn serve_on(listener: std::net::TcpListener, face: Face, limits: Limits) -> Result<(), String> {
    listener.set_nonblocking(true).map_err(|e| format!("http: {e}"))?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .enable_time()
        // Two bundle transfers, and chunk reads and metrics beside them.
        .max_blocking_threads(MAX_TRANSFERS + 2)
        .thread_stack_size(256 * 1024)
        .thread_name("http-io")
        .build()
        .map_err(|e| format!("http runtime: {e}"))?;
    std::thread::Builder::new()
        .name("http".into())
        .stack_size(256 * 1024)
        .spawn(move || runtime.block_on(accept(listener, Arc::new(face), limits)))
        .map_err(|e| format!("http thread: {e}"))?;
    Ok(())
}

async fn accept(listener: std::net::TcpListener, face: Arc<Face>, limits: Limits) {
    let listener = match tokio::net::TcpListener::from_std(listener) {
        Ok(l) => l,
        Err(e) => return logln!("meshd: http: {e}"),
    };
    let places = Arc::new(Places::default());
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                // Out of descriptors, most likely: let some connections end first.
                logln!("meshd: http: {e}");
                tokio::time::sleep(Duration::from_millis(500)).await;
                continue;
            }
        };
        let known = |ip: std::net::IpAddr| {
            let v6 = match ip {
                std::net::IpAddr::V6(a) => a,
                std::net::IpAddr::V4(a) => a.to_ipv6_mapped(),
            };
            face.mesh.lock().is_ok_and(|v| v.knows(&v6))
        };
        let place = match places.admit(peer.ip(), known) {
            Ok(place) => place,
            Err(refused) => {
                // Told in one write without reading its request, then closed: costing nothing.
                let _ = stream.try_write(refused.reply());
                continue;
            }
        };
        let face = face.clone();
        tokio::spawn(async move {
            if let Err(why) = connection(stream, peer, face, limits, &place).await {
                logln!("meshd: http: {peer}: {why}");
            }
        });
    }
}

/// Serves one connection, dropping it when it moves too little or lasts too long.
async fn connection(stream: tokio::net::TcpStream, peer: std::net::SocketAddr, face: Arc<Face>, limits: Limits, place: &Place) -> Result<(), String> {
    let moved = Arc::new(AtomicU64::new(0));
    let bundle = Arc::new(AtomicBool::new(false));
    let io = TokioIo::new(Metered { inner: stream, moved: moved.clone() });
    let (marks, reserved) = (bundle.clone(), place.reserved);
    let service = hyper::service::service_fn(move |req| {
        let (face, marks) = (face.clone(), marks.clone());
        async move { Ok::<_, std::convert::Infallible>(respond(&face, req, peer, &marks, reserved).await) }
    });
    let headers = if place.crowded || place.reserved { limits.crowded_headers } else { limits.headers };
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(headers)
        .max_buf_size(MAX_REQUEST)
        .keep_alive(false)
        .serve_connection(io, service);
    let watch = async {
        let start = Instant::now();
        let mut before = 0;
        loop {
            tokio::time::sleep(limits.window).await;
            let now = moved.load(Ordering::Relaxed);
            if now - before < limits.min_bytes {
                return format!("dropped: {} bytes in {} s, under the minimum of {}", now - before, limits.window.as_secs_f32(), limits.min_bytes);
            }
            before = now;
            let deadline = if bundle.load(Ordering::Relaxed) { limits.bundle_deadline } else { limits.deadline };
            if start.elapsed() >= deadline {
                return format!("dropped: still open after {} s", deadline.as_secs());
            }
        }
    };
    tokio::select! {
        done = conn => done.map_err(|e| e.to_string()),
        why = watch => Err(why),
    }
}

async fn respond(face: &Arc<Face>, req: Request<Incoming>, peer: std::net::SocketAddr, bundle: &AtomicBool, reserved: bool) -> Reply {
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
        bundle.store(true, Ordering::Relaxed);
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
                metrics::render(&snapshot, &asked.0, &asked.1, &mut c)
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
            let page = tokio::task::spawn_blocking(move || {
                let nodes = face.mesh_nodes();
                let page = if sd { crate::meshview::service_discovery(&nodes) } else { json!(nodes) };
                page.to_string() + "\n"
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

fn reply(status: StatusCode, kind: &'static str, body: Bytes) -> Reply {
    let mut r = Response::new(Box::new(Full::new(body).map_err(|never: std::convert::Infallible| -> std::io::Error { match never {} })) as _);
    *r.status_mut() = status;
    r.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static(kind));
    r
}

fn text(status: StatusCode, body: String) -> Reply {
    reply(status, "text/plain; charset=utf-8", body.into())
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
    // Two pieces in flight: a transfer costs 128 KiB at most, however slow the neighbour.
    let (tx, rx) = mpsc::channel(2);
    tokio::task::spawn_blocking(move || {
        let _permit = permit;
        let mut reader = served.reader;
        let mut sent = 0u64;
        let outcome = loop {
            let mut buf = vec![0u8; 64 * 1024];
            match reader.read(&mut buf) {
                Ok(0) => break Ok(()),
                Ok(n) => {
                    buf.truncate(n);
                    sent += n as u64;
                    // The neighbour went away (or was dropped for being too slow).
                    if tx.blocking_send(Ok(Bytes::from(buf))).is_err() {
                        break Err("the neighbour went away".to_string());
                    }
                }
                Err(e) => {
                    let _ = tx.blocking_send(Err(std::io::Error::new(e.kind(), e.to_string())));
                    break Err(e.to_string());
                }
            }
        };
        match outcome {
            Ok(()) => logln!("meshd: sent {name} ({sent} bytes)"),
            Err(e) => logln!("meshd: sending {name}: ended after {sent} of {len} bytes: {e}"),
        }
    });
    let mut r = reply(StatusCode::OK, "application/octet-stream", Bytes::new());
    *r.body_mut() = Box::new(Pieces { rx });
    r.headers_mut().insert(CONTENT_LENGTH, HeaderValue::from(len));
    if let Ok(v) = disposition {
        r.headers_mut().insert(CONTENT_DISPOSITION, v);
    }
    r
}

/// A body fed a piece at a time from a blocking reader.
struct Pieces {
    rx: mpsc::Receiver<std::io::Result<Bytes>>,
}

impl Body for Pieces {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, std::io::Error>>> {
        self.rx.poll_recv(cx).map(|piece| piece.map(|r| r.map(Frame::data)))
    }
}

/// A connection that counts the bytes it moves, both ways.
struct Metered {
    inner: tokio::net::TcpStream,
    moved: Arc<AtomicU64>,
}

impl AsyncRead for Metered {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        self.moved.fetch_add((buf.filled().len() - before) as u64, Ordering::Relaxed);
        r
    }
}

impl AsyncWrite for Metered {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = r {
            self.moved.fetch_add(n as u64, Ordering::Relaxed);
        }
        r
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

pub fn nodeinfo(s: &NodeState) -> serde_json::Value {
    let services: Vec<&str> = s.services.iter().filter(|x| x.running).map(|x| x.name.as_str()).collect();
    json!({
        "name": s.name, "address": s.address, "key": s.key, "version": s.version, "board": s.board, "slot": s.slot,
        "build_id": s.build_id, "router": s.router, "services": services,
        "metrics": s.metrics_port.map(|p| format!("http://[{}]:{p}/metrics", s.address)),
        "bundle": s.metrics_port.filter(|_| s.bundle.is_some()).map(|p| format!("http://[{}]:{p}/bundle", s.address)),
        "upgrade": { "phase": s.upgrade.phase, "releases": s.upgrade.releases },
        "gateway": {
            "offers": s.gateway.offer.as_ref().is_some_and(|o| o.uplink_up),
            "using": s.gateway.using.as_ref().map(|u| &u.address),
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
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
            bundle_deadline: Duration::from_secs(3600),
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
        mesh.lock().unwrap().set_me(me);
        let addr = serve_knowing(limits(60, 60_000, 1), mesh);
        // Many sources, each within its share, take every general place.
        let held = idle(addr, sources(1, crate::admission::GENERAL));
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
    fn refusals_are_whole_http_replies() {
        for r in [crate::admission::Refused::Source, crate::admission::Refused::Full] {
            let text = std::str::from_utf8(r.reply()).unwrap();
            let (head, body) = text.split_once("\r\n\r\n").unwrap();
            assert!(head.contains(&format!("Content-Length: {}", body.len())), "{text:?}");
        }
    }

    #[test]
    fn connections_past_the_limit_are_closed_and_places_come_back() {
        let addr = serve(limits(2, 60_000, 1));
        let held = idle(addr, sources(2, crate::admission::GENERAL));
        let reply = get_from("127.0.0.3", addr, "/");
        assert!(reply.starts_with("HTTP/1.1 503"), "a connection past the limit was served: {reply}");
        // The held ones send nothing, so the header limit frees their places.
        std::thread::sleep(Duration::from_secs(3));
        assert!(get(addr, "/").starts_with("HTTP/1.1 200"));
        drop(held);
    }
}
