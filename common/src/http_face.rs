//! An HTTP face no one client can hold, for whatever offers releases to the mesh: a node's
//! meshd and `meshimg serve`. hyper serves on a one-thread tokio runtime (many neighbours at
//! once for little memory); file reads and other slow work go to a few blocking threads.
//!
//! A source holds a share of the places and the mesh's own nodes keep a way in
//! ([`admission`]); the request's headers must arrive within [`Limits::headers`]
//! ([`Limits::crowded_headers`] when the face is crowded or the place a kept one); every
//! connection must move at least [`Limits::min_bytes`] in each [`Limits::window`] and end within
//! its deadline; a request longer than [`MAX_REQUEST`] is refused. One request per connection
//! (`Connection: close`), as every client of these faces makes them.

pub mod admission;

use admission::{Place, Places};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::{Body, Frame, Incoming};
use hyper::header::{HeaderValue, CONTENT_TYPE};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use std::future::Future;
use std::io::Read;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::mpsc;

/// A request's line and headers; a longer one is refused (431). The clients here send 100 bytes.
pub const MAX_REQUEST: usize = 16 * 1024;

/// What a connection must do to keep its place.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// The whole request line and headers within this ...
    pub headers: Duration,
    /// ... or this, when the face is crowded or the place is a kept one ([`admission`]).
    pub crowded_headers: Duration,
    /// At least `min_bytes` moved, either way, in every window of this length.
    pub window: Duration,
    pub min_bytes: u64,
    /// A connection ends within this: anything but a long transfer (a chunk of at most 64 KiB,
    /// a header, a page) ...
    pub deadline: Duration,
    /// ... and a long transfer (a whole bundle), which over a slow mesh link takes a while.
    pub long_deadline: Duration,
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
            long_deadline: Duration::from_secs(3600),
        }
    }
}

pub type Reply = Response<Box<dyn Body<Data = Bytes, Error = std::io::Error> + Send + Unpin>>;
pub type Replying = Pin<Box<dyn Future<Output = Reply> + Send>>;

/// One connection as its handler sees it.
pub struct Conn {
    pub peer: SocketAddr,
    /// On a kept place ([`admission`]): only the mesh's short requests should be served.
    pub reserved: bool,
    long: Arc<AtomicBool>,
}

impl Conn {
    /// This connection carries a long transfer: it gets [`Limits::long_deadline`].
    pub fn long_transfer(&self) {
        self.long.store(true, Ordering::Relaxed);
    }
}

/// What a face serves.
pub trait Handler: Send + Sync + 'static {
    fn handle(self: Arc<Self>, req: Request<Incoming>, conn: &Conn) -> Replying;
    /// Whether `peer` is a node of the mesh this face serves (asked only when every general
    /// place is taken, for a kept one).
    fn known(&self, _peer: IpAddr) -> bool {
        false
    }
    /// What the face has to say (a dropped connection, an error of its own), one line.
    fn log(&self, line: &str) {
        use std::io::Write;
        // In one write, so that nothing else cuts into the line.
        let _ = std::io::stderr().lock().write_all(format!("http: {line}\n").as_bytes());
    }
}

/// Serves `handler` on `listener` from a thread of its own, named `name`, with `blocking`
/// threads for the handler's slow work.
pub fn spawn<H: Handler>(listener: std::net::TcpListener, handler: H, limits: Limits, blocking: usize, name: &str) -> Result<(), String> {
    listener.set_nonblocking(true).map_err(|e| format!("{name}: {e}"))?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .enable_time()
        .max_blocking_threads(blocking.max(1))
        .thread_stack_size(256 * 1024)
        .thread_name(format!("{name}-io"))
        .build()
        .map_err(|e| format!("{name} runtime: {e}"))?;
    std::thread::Builder::new()
        .name(name.into())
        .stack_size(256 * 1024)
        .spawn(move || runtime.block_on(accept(listener, Arc::new(handler), limits)))
        .map_err(|e| format!("{name} thread: {e}"))?;
    Ok(())
}

async fn accept<H: Handler>(listener: std::net::TcpListener, handler: Arc<H>, limits: Limits) {
    let listener = match tokio::net::TcpListener::from_std(listener) {
        Ok(l) => l,
        Err(e) => return handler.log(&e.to_string()),
    };
    let places = Arc::new(Places::default());
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                // Out of descriptors, most likely: let some connections end first.
                handler.log(&e.to_string());
                tokio::time::sleep(Duration::from_millis(500)).await;
                continue;
            }
        };
        let place = match places.admit(peer.ip(), |ip| handler.known(ip)) {
            Ok(place) => place,
            Err(refused) => {
                // Told in one write without reading its request, then closed: costing nothing.
                let _ = stream.try_write(refused.reply());
                continue;
            }
        };
        let handler = handler.clone();
        tokio::spawn(async move {
            if let Err(why) = connection(stream, peer, handler.clone(), limits, &place).await {
                handler.log(&format!("{peer}: {why}"));
            }
        });
    }
}

/// Serves one connection, dropping it when it moves too little or lasts too long.
async fn connection<H: Handler>(stream: tokio::net::TcpStream, peer: SocketAddr, handler: Arc<H>, limits: Limits, place: &Place) -> Result<(), String> {
    let moved = Arc::new(AtomicU64::new(0));
    let long = Arc::new(AtomicBool::new(false));
    let io = TokioIo::new(Metered { inner: stream, moved: moved.clone() });
    let conn = Arc::new(Conn { peer, reserved: place.reserved, long: long.clone() });
    let service = hyper::service::service_fn(move |req| {
        let (handler, conn) = (handler.clone(), conn.clone());
        async move { Ok::<_, std::convert::Infallible>(handler.handle(req, &conn).await) }
    });
    let headers = if place.crowded || place.reserved { limits.crowded_headers } else { limits.headers };
    let served = hyper::server::conn::http1::Builder::new()
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
            let deadline = if long.load(Ordering::Relaxed) { limits.long_deadline } else { limits.deadline };
            if start.elapsed() >= deadline {
                return format!("dropped: still open after {} s", deadline.as_secs());
            }
        }
    };
    tokio::select! {
        done = served => done.map_err(|e| e.to_string()),
        why = watch => Err(why),
    }
}

pub fn reply(status: StatusCode, kind: &'static str, body: Bytes) -> Reply {
    let mut r = Response::new(Box::new(Full::new(body).map_err(|never: std::convert::Infallible| -> std::io::Error { match never {} })) as _);
    *r.status_mut() = status;
    r.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static(kind));
    r
}

pub fn text(status: StatusCode, body: String) -> Reply {
    reply(status, "text/plain; charset=utf-8", body.into())
}

/// A body read from `reader` on a blocking thread and sent a 64 KiB piece at a time, two
/// pieces ahead of the client at most: a transfer costs 128 KiB however slow the client.
/// `done` is told how it ended (the bytes sent, or why not all).
pub fn stream(mut reader: impl Read + Send + 'static, done: impl FnOnce(u64, Result<(), String>) + Send + 'static) -> Reply {
    let (tx, rx) = mpsc::channel(2);
    tokio::task::spawn_blocking(move || {
        let mut sent = 0u64;
        let outcome = loop {
            let mut buf = vec![0u8; 64 * 1024];
            match reader.read(&mut buf) {
                Ok(0) => break Ok(()),
                Ok(n) => {
                    buf.truncate(n);
                    sent += n as u64;
                    // The client went away (or was dropped for being too slow).
                    if tx.blocking_send(Ok(Bytes::from(buf))).is_err() {
                        break Err("the client went away".to_string());
                    }
                }
                Err(e) => {
                    let _ = tx.blocking_send(Err(std::io::Error::new(e.kind(), e.to_string())));
                    break Err(e.to_string());
                }
            }
        };
        done(sent, outcome);
    });
    let mut r = reply(StatusCode::OK, "application/octet-stream", Bytes::new());
    *r.body_mut() = Box::new(Pieces { rx });
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
