//! `meshimg serve BUNDLE` (and `meshimg export`, the same as files): a machine joined to the mesh (a laptop peered with a node's router)
//! offers a release the way a node does, so the mesh takes it from there: `/nodeinfo.json`
//! announcing it, `/header/<manifest sha256>`, `/chunk/<sha256>` read from the bundle where the
//! manifest places it, and `/bundle` whole. Nodes check every byte against the signed manifest;
//! the server vouches for nothing. It serves on the nodes' own HTTP face
//! (meshos_common::http_face), so no one client can stall it.

use anyhow::Context;
use hyper::body::Incoming;
use hyper::header::{HeaderValue, CONTENT_LENGTH};
use hyper::{Method, Request, StatusCode};
use meshos_common::bundle;
use meshos_common::http_face::{self, reply, text, Conn, Handler, Limits, Reply, Replying};
use std::collections::HashMap;
use std::fs::File;
use std::io::Read;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// A bundle indexed for serving.
pub struct Offer {
    path: PathBuf,
    header: Vec<u8>,
    manifest_sha256: String,
    nodeinfo: String,
    /// chunk sha256 → (offset in the bundle file, size)
    chunks: HashMap<String, (u64, u32)>,
    pub name: String,
    pub version: String,
    pub bundle_bytes: u64,
}

impl Offer {
    pub fn open(path: &Path) -> anyhow::Result<Offer> {
        let f = File::open(path).with_context(|| path.display().to_string())?;
        let len = f.metadata().with_context(|| path.display().to_string())?.len();
        let opened = bundle::open(std::io::BufReader::new(f)).with_context(|| path.display().to_string())?;
        anyhow::ensure!(opened.is_signed(), "{}: the bundle is unsigned, and nodes install only signed bundles", path.display());
        anyhow::ensure!(len >= opened.total_size(), "{}: {len} bytes, but its header describes {}: the file is cut short", path.display(), opened.total_size());
        let header = opened.header();
        let manifest_sha256 = opened.manifest_sha256();
        let m = &opened.manifest;
        let mut chunks = HashMap::new();
        let mut at = header.len() as u64;
        for c in m.images.iter().flat_map(|i| i.chunks.iter()) {
            chunks.entry(c.sha256.clone()).or_insert((at, c.size));
            at += u64::from(c.size);
        }
        let board = m.compatible.strip_prefix("meshos-").unwrap_or(&m.compatible);
        let nodeinfo = serde_json::json!({
            "name": format!("meshimg serve {}", m.file_name()), "version": m.version, "board": board,
            "upgrade": { "phase": "idle", "releases": [{ "version": m.version, "manifest": manifest_sha256, "slot": "a", "running": true }] },
        })
        .to_string()
            + "\n";
        Ok(Offer {
            path: path.into(),
            header,
            manifest_sha256,
            nodeinfo,
            chunks,
            name: m.file_name(),
            version: m.version.clone(),
            bundle_bytes: opened.total_size(),
        })
    }

    /// Lays the release out in `dir` the way it is served (`nodeinfo.json`, `header/<sha256>`,
    /// `chunk/<sha256>`), for any static web server; returns the number of chunks written.
    pub fn export(&self, dir: &Path) -> anyhow::Result<usize> {
        let write = |rel: String, data: &[u8]| -> anyhow::Result<()> {
            let path = dir.join(&rel);
            std::fs::create_dir_all(path.parent().expect("under dir")).with_context(|| dir.display().to_string())?;
            std::fs::write(&path, data).with_context(|| path.display().to_string())
        };
        write("nodeinfo.json".into(), self.nodeinfo.as_bytes())?;
        write(format!("header/{}", self.manifest_sha256), &self.header)?;
        for sha in self.chunks.keys() {
            let data = self.get(&format!("/chunk/{sha}"))?.expect("a chunk of the index");
            write(format!("chunk/{sha}"), &data)?;
        }
        Ok(self.chunks.len())
    }

    pub fn manifest_sha256(&self) -> &str {
        &self.manifest_sha256
    }

    pub fn chunk_count(&self) -> usize {
        self.chunks.len()
    }

    /// The response to a GET of `path`: status and body (None: 404).
    pub fn get(&self, path: &str) -> anyhow::Result<Option<Vec<u8>>> {
        if path == "/nodeinfo.json" {
            return Ok(Some(self.nodeinfo.clone().into_bytes()));
        }
        if let Some(sha) = path.strip_prefix("/header/") {
            return Ok((sha == self.manifest_sha256).then(|| self.header.clone()));
        }
        if let Some(&(offset, size)) = path.strip_prefix("/chunk/").and_then(|sha| self.chunks.get(sha)) {
            let mut buf = vec![0u8; size as usize];
            File::open(&self.path).and_then(|f| f.read_exact_at(&mut buf, offset)).with_context(|| self.path.display().to_string())?;
            return Ok(Some(buf));
        }
        Ok(None)
    }
}

/// Serves `offer` on `listen` until the process is stopped; one line per request on stderr.
/// It serves as a node does (meshos_common::http_face): no one client can hold it.
pub fn serve(offer: Offer, listen: &str) -> anyhow::Result<()> {
    let listener = std::net::TcpListener::bind(listen).with_context(|| format!("listening on {listen}"))?;
    eprintln!("serve: {} (release {}, {} chunks) on http://{listen}/nodeinfo.json", offer.name, offer.manifest_sha256, offer.chunk_count());
    spawn(listener, offer)?;
    loop {
        std::thread::park();
    }
}

/// Whole bundles sent at once (each holds a blocking thread); more are told to come back.
const MAX_TRANSFERS: usize = 2;

struct Served {
    offer: Offer,
    transfers: Arc<tokio::sync::Semaphore>,
}

fn spawn(listener: std::net::TcpListener, offer: Offer) -> anyhow::Result<()> {
    let served = Served { offer, transfers: Arc::new(tokio::sync::Semaphore::new(MAX_TRANSFERS)) };
    // The transfers, and chunk reads beside them.
    http_face::spawn(listener, served, Limits::default(), MAX_TRANSFERS + 2, "serve").map_err(|e| anyhow::anyhow!(e))
}

impl Handler for Served {
    fn handle(self: Arc<Self>, req: Request<Incoming>, conn: &Conn) -> Replying {
        let path = req.uri().path().to_string();
        let peer = conn.peer;
        if req.method() != Method::GET {
            return Box::pin(std::future::ready(text(StatusCode::METHOD_NOT_ALLOWED, "only GET\n".into())));
        }
        if path == "/bundle" {
            conn.long_transfer();
            return Box::pin(std::future::ready(self.send_bundle(peer)));
        }
        Box::pin(async move {
            let served = self.clone();
            let url = path.clone();
            match tokio::task::spawn_blocking(move || served.offer.get(&url)).await {
                Ok(Ok(Some(body))) => {
                    self.log(&format!("{peer} {path} ({} bytes)", body.len()));
                    reply(StatusCode::OK, "application/octet-stream", body.into())
                }
                Ok(Ok(None)) => text(StatusCode::NOT_FOUND, "not held here\n".into()),
                Ok(Err(e)) => text(StatusCode::INTERNAL_SERVER_ERROR, format!("{e:#}\n")),
                Err(e) => text(StatusCode::INTERNAL_SERVER_ERROR, format!("{e}\n")),
            }
        })
    }

    fn log(&self, line: &str) {
        use std::io::Write;
        let _ = std::io::stderr().lock().write_all(format!("serve: {line}\n").as_bytes());
    }
}

impl Served {
    fn send_bundle(self: &Arc<Self>, peer: std::net::SocketAddr) -> Reply {
        let Ok(permit) = self.transfers.clone().try_acquire_owned() else {
            return text(StatusCode::SERVICE_UNAVAILABLE, "busy sending the bundle to others; try again in a minute\n".into());
        };
        let file = match File::open(&self.offer.path) {
            Ok(f) => f,
            Err(e) => return text(StatusCode::INTERNAL_SERVER_ERROR, format!("{}: {e}\n", self.offer.path.display())),
        };
        let (me, len) = (self.clone(), self.offer.bundle_bytes);
        let mut r = http_face::stream(file.take(len), move |sent, outcome| {
            let _permit = permit;
            match outcome {
                Ok(()) => me.log(&format!("{peer} /bundle ({sent} bytes)")),
                Err(e) => me.log(&format!("{peer} /bundle: ended after {sent} of {len} bytes: {e}")),
            }
        });
        r.headers_mut().insert(CONTENT_LENGTH, HeaderValue::from(len));
        r
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use meshos_common::minisign::SecretKey;

    /// A signed two-image bundle in `dir`, its root `size` bytes: its path, header and root.
    fn bundle(dir: &Path, size: u32) -> (PathBuf, Vec<u8>, Vec<u8>) {
        std::fs::create_dir_all(dir).unwrap();
        let key = SecretKey::generate().unwrap();
        let root: Vec<u8> = (0..size).map(|i| (i.wrapping_mul(2654435761) >> 11) as u8).collect();
        let images = vec![("root".to_string(), root.clone()), ("boot/vmlinuz".to_string(), b"kernel".to_vec())];
        let path = dir.join("meshos-rpi3-2.0.bundle");
        let header = crate::update_bundle::header("meshos-rpi3", "2.0", "b", &images, Some(&key), 0).unwrap();
        crate::update_bundle::write(&path, &header, &images).unwrap();
        (path, header, root)
    }

    #[test]
    fn a_bundle_is_offered_as_a_node_offers_its_release() {
        let dir = std::env::temp_dir().join(format!("meshimg-serve-{}", std::process::id()));
        let (path, header, root) = bundle(&dir, 200_000);
        let offer = Offer::open(&path).unwrap();
        let info: serde_json::Value = serde_json::from_slice(&offer.get("/nodeinfo.json").unwrap().unwrap()).unwrap();
        assert_eq!((info["board"].as_str(), info["upgrade"]["releases"][0]["manifest"].as_str()), (Some("rpi3"), Some(offer.manifest_sha256())));
        assert_eq!(offer.get(&format!("/header/{}", offer.manifest_sha256())).unwrap().unwrap(), header);
        let m = bundle::open(&header[..]).unwrap().manifest;
        let second = &m.images[0].chunks[1];
        let at = m.images[0].chunks[0].size as usize;
        assert_eq!(offer.get(&format!("/chunk/{}", second.sha256)).unwrap().unwrap(), root[at..at + second.size as usize]);
        assert_eq!(offer.get(&format!("/chunk/{}", m.images[1].chunks[0].sha256)).unwrap().unwrap(), b"kernel");
        assert!(offer.get("/chunk/00").unwrap().is_none() && offer.get("/header/00").unwrap().is_none());
        let out = dir.join("export");
        assert_eq!(offer.export(&out).unwrap(), offer.chunk_count());
        assert_eq!(std::fs::read(out.join("chunk").join(&second.sha256)).unwrap(), root[at..at + second.size as usize]);
        assert_eq!(std::fs::read(out.join("header").join(offer.manifest_sha256())).unwrap(), header);
        // An unsigned or cut bundle is not offered.
        std::fs::write(&path, &std::fs::read(&path).unwrap()[..1000]).unwrap();
        assert!(format!("{:#}", Offer::open(&path).err().unwrap()).contains("cut short"));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// A connection to `addr` from `source` (any of loopback's 127.0.0.0/8).
    fn connect_from(source: &str, addr: std::net::SocketAddr) -> std::net::TcpStream {
        let rt = tokio::runtime::Builder::new_current_thread().enable_io().build().unwrap();
        let s = rt.block_on(async {
            let socket = tokio::net::TcpSocket::new_v4().unwrap();
            socket.bind(format!("{source}:0").parse().unwrap()).unwrap();
            socket.connect(addr).await.unwrap().into_std().unwrap()
        });
        s.set_nonblocking(false).unwrap();
        s.set_read_timeout(Some(std::time::Duration::from_secs(30))).unwrap();
        s
    }

    fn get_from(source: &str, addr: std::net::SocketAddr, path: &str) -> Vec<u8> {
        use std::io::Write;
        let mut s = connect_from(source, addr);
        let _ = write!(s, "GET {path} HTTP/1.1\r\nHost: serve\r\n\r\n");
        let mut reply = Vec::new();
        let _ = s.read_to_end(&mut reply);
        reply
    }

    #[test]
    fn no_one_client_stalls_the_server() {
        let dir = std::env::temp_dir().join(format!("meshimg-serve-stall-{}", std::process::id()));
        // Larger than what the sockets' buffers take, so a client that stops reading holds it.
        let (path, _, _) = bundle(&dir, 32 << 20);
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        spawn(listener, Offer::open(&path).unwrap()).unwrap();
        // One address opens 40 connections and sends nothing; two more read the bundle and
        // stop reading.
        let idle: Vec<_> = (0..40).map(|_| connect_from("127.0.0.66", addr)).collect();
        let stalled: Vec<_> = (0..2)
            .map(|i| {
                use std::io::Write;
                let mut s = connect_from(&format!("127.0.0.7{i}"), addr);
                write!(s, "GET /bundle HTTP/1.1\r\nHost: serve\r\n\r\n").unwrap();
                s
            })
            .collect();
        std::thread::sleep(std::time::Duration::from_millis(300));
        // Others are served all the same: the release's nodeinfo and a whole bundle.
        let info = String::from_utf8(get_from("127.0.0.2", addr, "/nodeinfo.json")).unwrap();
        assert!(info.starts_with("HTTP/1.1 200") && info.contains("meshos-rpi3-2.0"), "{info}");
        let busy = String::from_utf8_lossy(&get_from("127.0.0.3", addr, "/bundle")).into_owned();
        assert!(busy.starts_with("HTTP/1.1 503"), "{}", &busy[..busy.len().min(200)]);
        drop(stalled);
        std::thread::sleep(std::time::Duration::from_millis(300));
        let whole = get_from("127.0.0.3", addr, "/bundle");
        let len = std::fs::metadata(&path).unwrap().len() as usize;
        assert!(whole.starts_with(b"HTTP/1.1 200") && whole.ends_with(&std::fs::read(&path).unwrap()) && whole.len() > len);
        drop(idle);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
