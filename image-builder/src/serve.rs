//! `meshimg serve BUNDLE` (and `meshimg export`, the same as files): a machine joined to the mesh (a laptop peered with a node's router)
//! offers a release the way a node does, so the mesh takes it from there: `/nodeinfo.json`
//! announcing it, `/header/<manifest sha256>`, `/chunk/<sha256>` read from the bundle where the
//! manifest places it, and `/bundle` whole. Nodes check every byte against the signed manifest;
//! the server vouches for nothing.

use anyhow::Context;
use meshos_common::bundle;
use std::collections::HashMap;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

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
pub fn serve(offer: &Offer, listen: &str) -> anyhow::Result<()> {
    let server = tiny_http::Server::http(listen).map_err(|e| anyhow::anyhow!("listening on {listen}: {e}"))?;
    eprintln!("serve: {} (release {}, {} chunks) on http://{listen}/nodeinfo.json", offer.name, offer.manifest_sha256, offer.chunk_count());
    std::thread::scope(|scope| {
        for _ in 0..4 {
            scope.spawn(|| {
                for request in server.incoming_requests() {
                    let url = request.url().split('?').next().unwrap_or("").to_string();
                    let peer = request.remote_addr().map(|a| a.to_string()).unwrap_or_default();
                    let result = if request.method() != &tiny_http::Method::Get {
                        request.respond(tiny_http::Response::from_string("only GET\n").with_status_code(405))
                    } else if url == "/bundle" {
                        match File::open(&offer.path) {
                            Ok(f) => request.respond(tiny_http::Response::from_file(f)),
                            Err(e) => request.respond(tiny_http::Response::from_string(format!("{e}\n")).with_status_code(500)),
                        }
                    } else {
                        match offer.get(&url) {
                            Ok(Some(body)) => {
                                eprintln!("serve: {peer} {url} ({} bytes)", body.len());
                                request.respond(tiny_http::Response::from_data(body))
                            }
                            Ok(None) => request.respond(tiny_http::Response::from_string("not held here\n").with_status_code(404)),
                            Err(e) => request.respond(tiny_http::Response::from_string(format!("{e:#}\n")).with_status_code(500)),
                        }
                    };
                    if let Err(e) = result {
                        eprintln!("serve: {peer} {url}: {e}");
                    }
                }
            });
        }
    });
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use meshos_common::minisign::SecretKey;

    #[test]
    fn a_bundle_is_offered_as_a_node_offers_its_release() {
        let dir = std::env::temp_dir().join(format!("meshimg-serve-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let key = SecretKey::generate().unwrap();
        let root: Vec<u8> = (0..200_000u32).map(|i| (i.wrapping_mul(2654435761) >> 11) as u8).collect();
        let images = vec![("root".to_string(), root.clone()), ("boot/vmlinuz".to_string(), b"kernel".to_vec())];
        let path = dir.join("meshos-rpi3-2.0.bundle");
        let header = crate::update_bundle::header("meshos-rpi3", "2.0", "b", &images, Some(&key), 0).unwrap();
        crate::update_bundle::write(&path, &header, &images).unwrap();
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
}
