//! Installing a release from neighbours: its signed header first, checked like any bundle's,
//! then only the chunks the node does not hold, from every neighbour that offers the release,
//! several at once, each checked against the signed manifest before it is kept.
//!
//! Fetched chunks go to a cache on the data partition under their sha256, so an install cut
//! short (a power cut, a lost link) goes on where it stopped: what is in the cache and still
//! matches its name is not fetched again. Only when every chunk is at hand is the target slot
//! marked bad and written, from the running slot and the cache, then checked whole.

use crate::held::Held;
use crate::upgrade::{self, InstallError, Record, SlotWriter, Step, Target, Transfer};
use meshos_common::boot_state::Slot;
use meshos_common::bundle::{self, BundleError, ErrorKind, MAX_CHUNK};
use meshos_common::chunks::{self, Chunk};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How a node fetches.
#[derive(Debug, Clone)]
pub struct Options {
    pub parallel: usize,
    /// Bytes per second over all workers; None: as fast as the links go.
    pub rate: Option<u64>,
    pub cache: PathBuf,
}

/// Where the fetched chunks of an install wait for the slot to be written.
pub fn cache_dir(state_dir: &Path) -> PathBuf {
    state_dir.join("chunks")
}

/// Chunk requests in flight to one neighbour at most, however many workers fetch: a node's HTTP
/// face gives one source a share of its places (meshos_common::http_face::admission), and a fetch stays well inside it.
pub const PER_NEIGHBOUR: usize = 6;

/// A neighbour's whole answer to a chunk request (at most [`MAX_CHUNK`], 64 KiB) must come
/// within this long, about 1 KiB/s: one that trickles holds no fetch for long.
const CHUNK_WITHIN: Duration = Duration::from_secs(60);
/// And to a header request (a header is about 0.5 % of its bundle: 190 KB for 40 MB).
const HEADER_WITHIN: Duration = Duration::from_secs(120);

/// A release's header and where it came from.
#[derive(Debug)]
pub struct Header {
    pub origin: String,
    pub bytes: Vec<u8>,
    /// Over the mesh (false: the copy an earlier attempt kept).
    pub fetched: bool,
}

/// The header of a release (by its manifest's sha256): the copy kept in the cache by an
/// install cut short, else from the first neighbour whose answer holds that very manifest. A
/// neighbour that answers with anything else is named in `false_claims` with what it did:
/// its word failed, not the release. The header is only bytes until [`install`] checks its
/// signatures.
pub fn fetch_header(peers: &[String], manifest_sha256: &str, cache: &Path, false_claims: &mut Vec<(String, String)>) -> Result<Header, String> {
    let kept = cache.join(format!("header-{manifest_sha256}"));
    if let Ok(bytes) = std::fs::read(&kept) {
        if holds_manifest(&bytes, manifest_sha256) {
            return Ok(Header { origin: kept.display().to_string(), bytes, fetched: false });
        }
        let _ = std::fs::remove_file(&kept);
    }
    let agent = agent();
    let mut errors = Vec::new();
    for p in peers {
        let url = format!("{p}/header/{manifest_sha256}");
        match get_within(&agent, &url, 16 << 20, HEADER_WITHIN) {
            Ok(bytes) if holds_manifest(&bytes, manifest_sha256) => return Ok(Header { origin: url, bytes, fetched: true }),
            Ok(bytes) => {
                let what = format!("{url}: {} bytes that are not the header of that release", bytes.len());
                false_claims.push((p.clone(), what.clone()));
                errors.push(what);
            }
            Err(e) => errors.push(e),
        }
    }
    Err(format!("no neighbour served the header of release {manifest_sha256}: {}", errors.join("; ")))
}

/// Whether `bytes` are a bundle header whose manifest hashes to `manifest_sha256`.
fn holds_manifest(bytes: &[u8], manifest_sha256: &str) -> bool {
    bundle::open(bytes).is_ok_and(|opened| opened.manifest_sha256() == manifest_sha256)
}

/// Installs the release whose signed header this is, its chunks from `peers`. The install
/// lock is held to check the release and to write the slot, not while chunks come over the mesh:
/// a neighbour that trickles holds up this agent, not `meshd upgrade install` or `updates/`. An
/// install by hand that runs meanwhile wins: the fetch stops at its next chunk, and the slot is
/// left to it.
pub fn install(header: &Header, peers: &[String], node: &Target, opts: &Options) -> Result<String, InstallError> {
    let mut record = Record { by_agent: true, ..Record::new(header.origin.clone()) };
    let opened = bundle::open(&header.bytes[..]).map_err(|e| InstallError::new(Step::Verify, e.kind(), format!("{}: {e}", header.origin)))?;
    let prepared = {
        let _lock = upgrade::lock(node.state_dir)?;
        upgrade::refuse_on_trial(node)?;
        match prepare(header, &opened, node, opts, &mut record) {
            Ok(p) => p,
            Err(e) => {
                let result = Err(e);
                upgrade::conclude(node, &mut record, &result);
                return result;
            }
        }
    };
    let fetched = fetch_all(&prepared.needed, peers, opts, node.state_dir, &mut record);
    let _lock = upgrade::lock(node.state_dir)?;
    if !still_ours(node.state_dir, &record) {
        return Err(InstallError { step: Step::Fetch, kind: ErrorKind::Busy, message: TAKEN_OVER.into() });
    }
    let result = fetched.and_then(|()| write(header, &opened, prepared.target, node, opts, &mut record));
    if result.is_ok() {
        // The slot holds them now; a later install starts from an empty cache.
        let _ = std::fs::remove_dir_all(&opts.cache);
    }
    upgrade::conclude(node, &mut record, &result);
    result
}

const TAKEN_OVER: &str = "an install by hand (meshd upgrade install, updates/) ran while the chunks came: it has the slot";

/// What [`prepare`] found: the slot to write and the chunks to fetch.
struct Prepared<'a> {
    target: Slot,
    needed: Vec<&'a Chunk>,
}

/// Whether the install record is still this install's (no install by hand took over).
fn still_ours(state_dir: &Path, record: &Record) -> bool {
    upgrade::read_record(state_dir).is_some_and(|r| r.step == Step::Fetch && r.by_agent && r.manifest_sha256 == record.manifest_sha256)
}

/// Under the install lock: checks the release against the node, and what it needs.
fn prepare<'a>(fetched: &Header, opened: &'a bundle::Opened<&[u8]>, node: &Target, opts: &Options, record: &mut Record) -> Result<Prepared<'a>, InstallError> {
    let (header, origin) = (&fetched.bytes[..], fetched.origin.as_str());
    let bundle_err = |step: Step| move |e: BundleError| InstallError::new(step, e.kind(), format!("{origin}: {e}"));
    // Named before the signature is checked, so a refusal says which release it refused.
    record.version = Some(opened.manifest.version.clone());
    record.manifest_sha256 = Some(opened.manifest_sha256());
    opened.verify(node.trusted, node.required).map_err(bundle_err(Step::Verify))?;
    let target = upgrade::check(opened, node, false, record, origin)?;
    let manifest = &opened.manifest;
    let sha = opened.manifest_sha256();

    // Going on with an install of the same release cut short: its tallies carry over.
    let earlier = upgrade::read_record(node.state_dir).filter(|r| r.manifest_sha256.as_deref() == Some(sha.as_str())).and_then(|r| r.transfer);
    let mut transfer = earlier.clone().unwrap_or_default();
    transfer.attempts += 1;
    transfer.bundle_bytes = opened.total_size();
    transfer.header_bytes = header.len() as u64;
    std::fs::create_dir_all(&opts.cache).map_err(|e| InstallError {
        step: Step::Write,
        kind: ErrorKind::Io,
        message: format!("{}: {e}", opts.cache.display()),
    })?;
    prune(&opts.cache, manifest, &sha);
    // Kept (signature checked) so an install cut short does not fetch it again.
    keep(&opts.cache, &format!("header-{sha}"), header).map_err(|message| InstallError { step: Step::Fetch, kind: ErrorKind::Io, message })?;
    if fetched.fetched {
        transfer.fetched_bytes += header.len() as u64;
    }
    let held = Held::scan(node.boot_dir, node.disk, &[node.running], Some(&opts.cache), true);
    let all = manifest.missing_chunks(&[]);
    let needed: Vec<&Chunk> = all.iter().copied().filter(|c| held.read(&c.sha256).is_none()).collect();
    transfer.reused_bytes = all.iter().filter(|c| held.in_slot(&c.sha256)).map(|c| u64::from(c.size)).sum();
    transfer.needed_bytes = all.iter().filter(|c| !held.in_slot(&c.sha256)).map(|c| u64::from(c.size)).sum();
    let to_fetch: u64 = needed.iter().map(|c| u64::from(c.size)).sum();
    logln!(
        "meshd: upgrade: {} {}: {} of {} chunks to fetch ({to_fetch} bytes; {} bytes found in slot {})",
        manifest.compatible,
        manifest.version,
        needed.len(),
        all.len(),
        transfer.reused_bytes,
        node.running,
    );
    record.step = Step::Fetch;
    record.transfer = Some(transfer);
    upgrade::save(node.state_dir, record);
    Ok(Prepared { target, needed })
}

/// Under the install lock again, the chunks all here: the slot written and marked.
fn write(fetched: &Header, opened: &bundle::Opened<&[u8]>, target: Slot, node: &Target, opts: &Options, record: &mut Record) -> Result<String, InstallError> {
    let (header, origin) = (&fetched.bytes[..], fetched.origin.as_str());
    let bundle_err = |step: Step| move |e: BundleError| InstallError::new(step, e.kind(), format!("{origin}: {e}"));
    let manifest = &opened.manifest;
    upgrade::mark_target_bad(node, target, manifest, record)?;
    let mut writer = SlotWriter::open(node, target)?;
    // Re-scanned: the cache now holds what was fetched.
    let held = Held::scan(node.boot_dir, node.disk, &[node.running], Some(&opts.cache), true);
    manifest
        .assemble(
            |image, i, _, buf| {
                let c = &image.chunks[i];
                let data = held
                    .read(&c.sha256)
                    .ok_or_else(|| BundleError::Truncated(format!("chunk {} of image {} is no longer on the node", c.sha256, image.name)))?;
                buf.copy_from_slice(&data);
                Ok(())
            },
            |event| writer.event(event),
        )
        .map_err(bundle_err(Step::Write))?;
    let version = manifest.version.clone();
    upgrade::finish(node, target, header, &version, record)?;
    Ok(version)
}

/// Fetches `needed` into the cache: `opts.parallel` workers (at most [`PER_NEIGHBOUR`] a
/// neighbour), each chunk from the neighbours in turn (a different first one per chunk,
/// spreading the load; a worker waits while its neighbour has [`PER_NEIGHBOUR`] requests in
/// flight), a bad or failed chunk asked of the next neighbour; a chunk no neighbour serves after
/// three rounds fails the install.
fn fetch_all(needed: &[&Chunk], peers: &[String], opts: &Options, state_dir: &Path, record: &mut Record) -> Result<(), InstallError> {
    if needed.is_empty() {
        return Ok(());
    }
    if peers.is_empty() {
        return Err(InstallError {
            step: Step::Fetch,
            kind: ErrorKind::Fetch,
            message: format!("{} chunks are missing and no neighbour offers them", needed.len()),
        });
    }
    let agent = agent();
    let next = AtomicUsize::new(0);
    let shared = Mutex::new((record.clone(), None::<String>, 0usize));
    let pace = opts.rate.map(|r| Pace { rate: r.max(1), next_free: Mutex::new(Instant::now()) });
    let in_flight = InFlight::default();
    std::thread::scope(|scope| {
        // So many that a worker always finds a neighbour with room.
        for _ in 0..opts.parallel.min(needed.len()).min(PER_NEIGHBOUR * peers.len()) {
            scope.spawn(|| loop {
                let i = next.fetch_add(1, Ordering::SeqCst);
                let Some(chunk) = needed.get(i) else { return };
                if shared.lock().map(|s| s.1.is_some()).unwrap_or(true) {
                    return;
                }
                let outcome = fetch_one(&agent, chunk, i, peers, opts, pace.as_ref(), &shared, &in_flight);
                let mut s = shared.lock().expect("fetch tallies");
                match outcome {
                    Ok(()) => {
                        s.2 += 1;
                        // The tallies go to the card with each chunk: after a power cut the
                        // count of bytes fetched goes on from every chunk kept.
                        if !save_progress(state_dir, &s.0) {
                            s.1.get_or_insert(TAKEN_OVER.into());
                        }
                    }
                    Err(e) => {
                        s.1.get_or_insert(e);
                    }
                }
            });
        }
    });
    let (r, error, _) = shared.into_inner().expect("fetch tallies");
    *record = r;
    save_progress(state_dir, record);
    match error {
        Some(message) if message == TAKEN_OVER => Err(InstallError { step: Step::Fetch, kind: ErrorKind::Busy, message }),
        Some(message) => Err(InstallError { step: Step::Fetch, kind: ErrorKind::Fetch, message }),
        None => Ok(()),
    }
}

/// Saves the fetch's tallies while no other install runs; false once an install by hand has
/// taken the record (and the slot) over.
fn save_progress(state_dir: &Path, record: &Record) -> bool {
    let Ok(_lock) = upgrade::lock(state_dir) else { return true };
    if !still_ours(state_dir, record) {
        return false;
    }
    upgrade::save(state_dir, record);
    true
}

type Shared = Mutex<(Record, Option<String>, usize)>;

/// Requests in flight, by neighbour.
#[derive(Default)]
struct InFlight(Mutex<std::collections::HashMap<String, usize>>);

impl InFlight {
    /// Counts a request to `peer` until the returned guard is dropped, unless it has
    /// [`PER_NEIGHBOUR`] already.
    fn take<'a>(&'a self, peer: &'a str) -> Option<impl Drop + 'a> {
        struct Taken<'a>(&'a InFlight, &'a str);
        impl Drop for Taken<'_> {
            fn drop(&mut self) {
                let mut m = self.0 .0.lock().unwrap_or_else(|e| e.into_inner());
                if let Some(n) = m.get_mut(self.1) {
                    *n -= 1;
                }
            }
        }
        let mut m = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let n = m.entry(peer.to_string()).or_default();
        if *n >= PER_NEIGHBOUR {
            return None;
        }
        *n += 1;
        Some(Taken(self, peer))
    }

    /// [`InFlight::take`], waiting for a place as long as it takes: the requests that hold
    /// them end within their deadline.
    fn wait<'a>(&'a self, peer: &'a str) -> impl Drop + 'a {
        loop {
            if let Some(taken) = self.take(peer) {
                return taken;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

#[allow(clippy::too_many_arguments)]
fn fetch_one(
    agent: &ureq::Agent,
    chunk: &Chunk,
    i: usize,
    peers: &[String],
    opts: &Options,
    pace: Option<&Pace>,
    shared: &Shared,
    in_flight: &InFlight,
) -> Result<(), String> {
    let mut why = Vec::new();
    // A neighbour that served bad bytes once is asked no more in this install.
    let all_bad = || shared.lock().map(|s| peers.iter().all(|p| served_bad(&s.0, p))).unwrap_or(true);
    for round in 0..3u64 {
        if all_bad() {
            return Err(format!("chunk {}: every neighbour offering it served bad bytes ({})", chunk.sha256, peers.join(", ")));
        }
        if round > 0 {
            std::thread::sleep(Duration::from_secs(5 * round));
        }
        for k in 0..peers.len() {
            let peer = &peers[(i + k) % peers.len()];
            if shared.lock().map(|s| served_bad(&s.0, peer)).unwrap_or(true) {
                continue;
            }
            let taken = in_flight.wait(peer);
            if let Some(p) = pace {
                p.take(u64::from(chunk.size));
            }
            let got = get_within(agent, &format!("{peer}/chunk/{}", chunk.sha256), MAX_CHUNK as u64, CHUNK_WITHIN);
            drop(taken);
            let mut s = shared.lock().expect("fetch tallies");
            let transfer = s.0.transfer.get_or_insert_with(Transfer::default);
            let tally = transfer.peers.entry(peer.clone()).or_default();
            match got {
                Ok(data) => {
                    transfer.fetched_bytes += data.len() as u64;
                    let tally = transfer.peers.get_mut(peer).expect("just made");
                    if data.len() as u64 != u64::from(chunk.size) || chunks::sha256_hex(&data) != chunk.sha256 {
                        tally.bad_chunks += 1;
                        logln!(
                            "meshd: upgrade: {peer} served chunk {} with bytes that do not match the signed manifest; asking another neighbour",
                            chunk.sha256
                        );
                        why.push(format!("{peer}: bad bytes"));
                        continue;
                    }
                    tally.chunks += 1;
                    tally.bytes += data.len() as u64;
                    drop(s);
                    return keep(&opts.cache, &chunk.sha256, &data);
                }
                Err(e) => {
                    tally.failures += 1;
                    why.push(e);
                }
            }
        }
    }
    Err(format!("chunk {}: no neighbour served it ({})", chunk.sha256, why.join("; ")))
}

/// Drops from the cache what this release does not use (what an install of another release
/// left behind), so the cache never holds more than one release's new chunks.
fn prune(cache: &Path, manifest: &bundle::Manifest, sha: &str) {
    let wanted: std::collections::HashSet<String> =
        manifest.images.iter().flat_map(|i| i.chunks.iter()).map(|c| c.sha256.clone()).chain([format!("header-{sha}")]).collect();
    let Ok(entries) = std::fs::read_dir(cache) else { return };
    for e in entries.flatten() {
        if !wanted.contains(&*e.file_name().to_string_lossy()) {
            let _ = std::fs::remove_file(e.path());
        }
    }
}

/// Whether `peer` served bytes that did not match the signed manifest in this install (or an
/// earlier attempt at the same release): it is asked no more.
pub fn served_bad(record: &Record, peer: &str) -> bool {
    record.transfer.as_ref().and_then(|t| t.peers.get(peer)).is_some_and(|t| t.bad_chunks > 0)
}

/// Puts a checked chunk in the cache, on the card before it counts as held: after a power cut
/// the install goes on from here and fetches at most the chunks that were in flight.
fn keep(cache: &Path, sha256: &str, data: &[u8]) -> Result<(), String> {
    use std::io::Write;
    let path = cache.join(sha256);
    let tmp = path.with_extension("part");
    std::fs::File::create(&tmp)
        .and_then(|mut f| f.write_all(data).and_then(|()| f.sync_all()))
        .and_then(|()| std::fs::rename(&tmp, &path))
        .map_err(|e| format!("{}: {e}", path.display()))
}

/// A shared pace for all workers: each transfer takes its bytes' time at `rate` bytes/s.
struct Pace {
    rate: u64,
    next_free: Mutex<Instant>,
}

impl Pace {
    fn take(&self, bytes: u64) {
        let start = {
            let mut next = self.next_free.lock().expect("pace");
            let start = (*next).max(Instant::now());
            *next = start + Duration::from_secs_f64(bytes as f64 / self.rate as f64);
            start
        };
        if let Some(wait) = start.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
    }
}

/// Requests to neighbours: plain HTTP over the overlay (the bytes are checked against the
/// signed manifest, not trusted for their transport), short timeouts, and no redirects (a
/// neighbour must not send a node's requests to its LAN or to itself).
pub fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .timeout_connect(Some(Duration::from_secs(10)))
        .timeout_recv_response(Some(Duration::from_secs(30)))
        .timeout_per_read(Some(Duration::from_secs(30)))
        .max_redirects(0)
        .http_status_as_error(true)
        .user_agent(concat!("meshd/", env!("CARGO_PKG_VERSION")))
        .build()
        .into()
}

/// A GET whose body may be at most `limit` bytes, all of it within `within`.
pub fn get_within(agent: &ureq::Agent, url: &str, limit: u64, within: Duration) -> Result<Vec<u8>, String> {
    let response = agent.get(url).config().timeout_global(Some(within)).build().call().map_err(|e| format!("{url}: {e}"))?;
    if response.status().is_redirection() {
        return Err(format!("{url}: HTTP {} (a neighbour's redirect is not followed)", response.status().as_u16()));
    }
    let mut body = Vec::new();
    response.into_body().into_reader().take(limit + 1).read_to_end(&mut body).map_err(|e| format!("{url}: {e}"))?;
    if body.len() as u64 > limit {
        return Err(format!("{url}: more than {limit} bytes"));
    }
    Ok(body)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;
    use std::io::Write;
    use std::net::TcpListener;

    /// A neighbour on loopback serving `chunks` at /chunk/<sha256>, every one corrupted when
    /// `corrupt`; returns its base URL.
    fn neighbour(chunks: HashMap<String, Vec<u8>>, corrupt: bool) -> String {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        std::thread::spawn(move || {
            for conn in listener.incoming().flatten() {
                let mut conn = conn;
                let mut buf = [0u8; 2048];
                let n = conn.read(&mut buf).unwrap_or(0);
                let line = String::from_utf8_lossy(&buf[..n]).lines().next().unwrap_or("").to_string();
                let sha = line.split_whitespace().nth(1).unwrap_or("").trim_start_matches("/chunk/").to_string();
                let _ = match chunks.get(&sha) {
                    Some(data) => {
                        let mut data = data.clone();
                        if corrupt {
                            data[0] ^= 1;
                        }
                        conn.write_all(format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n", data.len()).as_bytes())
                            .and_then(|()| conn.write_all(&data))
                    }
                    None => conn.write_all(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"),
                };
            }
        });
        base
    }

    /// A neighbour on loopback answering every request with `answer(path)`: a status, extra
    /// header lines and a body, the body a byte every half second when `trickle`.
    fn server(answer: impl Fn(&str) -> (&'static str, String, Vec<u8>, bool) + Send + 'static) -> String {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        std::thread::spawn(move || {
            for mut conn in listener.incoming().flatten() {
                let mut buf = [0u8; 2048];
                let n = conn.read(&mut buf).unwrap_or(0);
                let line = String::from_utf8_lossy(&buf[..n]).lines().next().unwrap_or("").to_string();
                let (status, extra, body, trickle) = answer(line.split_whitespace().nth(1).unwrap_or(""));
                let head = format!("HTTP/1.1 {status}\r\nContent-Length: {}\r\n{extra}Connection: close\r\n\r\n", body.len());
                let _ = conn.write_all(head.as_bytes());
                if trickle {
                    std::thread::spawn(move || {
                        for b in body {
                            std::thread::sleep(Duration::from_millis(500));
                            if conn.write_all(&[b]).is_err() {
                                return;
                            }
                        }
                    });
                } else {
                    let _ = conn.write_all(&body);
                }
            }
        });
        base
    }

    /// An unsigned header of a release `version` (its manifest's sha256 beside it).
    fn header_of(version: &str) -> (Vec<u8>, String) {
        let m = bundle::Manifest {
            format: bundle::FORMAT,
            compatible: "meshos-test".into(),
            version: version.into(),
            build_id: "t".into(),
            images: vec![bundle::image_entry("root", b"root")],
        };
        let json = serde_json::to_vec(&m).unwrap();
        (bundle::header(&json, None), chunks::sha256_hex(&json))
    }

    /// The record of an agent's install fetching its chunks, saved.
    fn fetching(state_dir: &Path) -> Record {
        let r = Record { step: Step::Fetch, by_agent: true, manifest_sha256: Some("m".into()), ..Record::new("test".into()) };
        upgrade::save(state_dir, &r);
        r
    }

    #[test]
    fn chunks_come_without_the_install_lock_and_an_install_by_hand_takes_over() {
        let dir = tempfile::tempdir().unwrap();
        let data = b"abcd".to_vec();
        let chunk = Chunk { size: 4, sha256: chunks::sha256_hex(&data) };
        // A byte every half second: two seconds for the chunk.
        let trickler = server(move |_| ("200 OK", String::new(), data.clone(), true));
        let opts = Options { parallel: 1, rate: None, cache: dir.path().join("cache") };
        std::fs::create_dir_all(&opts.cache).unwrap();
        let mut record = fetching(dir.path());
        let fetch = std::thread::scope(|scope| {
            let fetch = scope.spawn(|| fetch_all(&[&chunk], std::slice::from_ref(&trickler), &opts, dir.path(), &mut record));
            std::thread::sleep(Duration::from_millis(500));
            // meshd upgrade install, meanwhile: not busy, and its record is its own.
            let lock = upgrade::lock(dir.path()).expect("the fetch holds no install lock");
            upgrade::save(dir.path(), &Record { step: Step::Installed, ..Record::new("by hand".into()) });
            drop(lock);
            fetch.join().unwrap()
        });
        let e = fetch.unwrap_err();
        assert!(e.message.contains("install by hand") && e.kind == ErrorKind::Busy, "{e}");
        assert_eq!(upgrade::read_record(dir.path()).unwrap().source, "by hand");
    }

    #[test]
    fn a_neighbour_has_a_bounded_number_of_requests_in_flight() {
        let in_flight = InFlight::default();
        let taken: Vec<_> = (0..PER_NEIGHBOUR).map(|_| in_flight.take("http://[200::1]:9100").unwrap()).collect();
        assert!(in_flight.take("http://[200::1]:9100").is_none());
        assert!(in_flight.take("http://[200::2]:9100").is_some());
        drop(taken);
        assert!(in_flight.take("http://[200::1]:9100").is_some());
    }

    #[test]
    fn a_header_is_taken_only_if_it_holds_the_release_asked_for_and_a_liar_is_named() {
        let cache = tempfile::tempdir().unwrap();
        let ((genuine, sha), (other, _)) = (header_of("1.1"), header_of("999"));
        let liar = server(move |_| ("200 OK", String::new(), other.clone(), false));
        let honest = server(move |_| ("200 OK", String::new(), genuine.clone(), false));
        let mut claims = Vec::new();
        let h = fetch_header(&[liar.clone(), honest.clone()], &sha, cache.path(), &mut claims).unwrap();
        assert_eq!(h.origin, format!("{honest}/header/{sha}"));
        assert_eq!(claims.len(), 1, "{claims:?}");
        assert!(claims[0].0 == liar && claims[0].1.contains("not the header of that release"), "{claims:?}");
        // The liar alone: no header, and it is named again.
        let mut claims = Vec::new();
        let e = fetch_header(std::slice::from_ref(&liar), &sha, cache.path(), &mut claims).unwrap_err();
        assert!(e.contains(&liar) && claims.len() == 1, "{e}");
        // A kept copy that is not the release is thrown away, not used.
        std::fs::write(cache.path().join(format!("header-{sha}")), b"not a header").unwrap();
        let e = fetch_header(std::slice::from_ref(&liar), &sha, cache.path(), &mut Vec::new()).unwrap_err();
        assert!(e.contains("no neighbour served") && !cache.path().join(format!("header-{sha}")).exists(), "{e}");
    }

    #[test]
    fn a_trickling_neighbour_is_given_up_at_the_deadline_and_a_redirect_is_not_followed() {
        let trickler = server(|_| ("200 OK", String::new(), vec![7u8; 1000], true));
        let started = Instant::now();
        let e = get_within(&agent(), &format!("{trickler}/chunk/x"), 1000, Duration::from_secs(2)).unwrap_err();
        assert!(started.elapsed() < Duration::from_secs(6), "{:?}: {e}", started.elapsed());
        // A neighbour that redirects to a service on the node itself: not asked.
        let asked = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = asked.clone();
        let inside = server(move |_| {
            flag.store(true, Ordering::SeqCst);
            ("200 OK", String::new(), b"secret".to_vec(), false)
        });
        let redirector = server(move |_| ("302 Found", format!("Location: {inside}/admin\r\n"), Vec::new(), false));
        let e = get_within(&agent(), &format!("{redirector}/header/x"), 1000, Duration::from_secs(5)).unwrap_err();
        assert!(e.contains("302") && !asked.load(Ordering::SeqCst), "{e}");
    }

    #[test]
    fn bad_bytes_are_refused_their_server_named_and_the_chunks_fetched_elsewhere() {
        let dir = std::env::temp_dir().join(format!("meshd-chunk-fetch-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("cache")).unwrap();
        let data: Vec<Vec<u8>> = (0..12u8).map(|i| vec![i; 5000 + usize::from(i)]).collect();
        let chunks: Vec<Chunk> = data.iter().map(|d| Chunk { size: d.len() as u32, sha256: chunks::sha256_hex(d) }).collect();
        let served: HashMap<String, Vec<u8>> = chunks.iter().zip(&data).map(|(c, d)| (c.sha256.clone(), d.clone())).collect();
        let rogue = neighbour(served.clone(), true);
        let good = neighbour(served, false);
        // One chunk is already in the cache (an earlier attempt): it is not fetched again.
        let needed: Vec<&Chunk> = chunks[1..].iter().collect();
        let opts = Options { parallel: 3, rate: None, cache: dir.join("cache") };
        let mut record = fetching(&dir);
        fetch_all(&needed, &[rogue.clone(), good.clone()], &opts, &dir, &mut record).unwrap();
        for (c, d) in chunks[1..].iter().zip(&data[1..]) {
            assert_eq!(std::fs::read(dir.join("cache").join(&c.sha256)).unwrap(), *d);
        }
        let t = record.transfer.unwrap();
        assert!(t.peers[&rogue].bad_chunks >= 1 && t.peers[&rogue].chunks == 0, "{t:?}");
        assert_eq!(t.peers[&good].chunks, 11);
        // Every byte received counts, the bad ones too.
        assert!(
            t.fetched_bytes >= t.peers[&good].bytes + 5000 * t.peers[&rogue].bad_chunks
                && t.fetched_bytes <= t.peers[&good].bytes + 5011 * t.peers[&rogue].bad_chunks,
            "{t:?}"
        );
        assert!(served_bad(&Record { transfer: Some(t.clone()), ..Record::new("x".into()) }, &rogue));

        // More workers than the good neighbour's share: those beyond it wait for a place, and
        // none gives up for it.
        let opts16 = Options { parallel: 16, rate: None, cache: dir.join("cache16") };
        std::fs::create_dir_all(&opts16.cache).unwrap();
        let all: Vec<&Chunk> = chunks.iter().collect();
        fetch_all(&all, &[rogue.clone(), good.clone()], &opts16, &dir, &mut fetching(&dir)).unwrap();
        assert!(chunks.iter().all(|c| opts16.cache.join(&c.sha256).exists()));

        // Only the rogue offers it: the install stops at once, naming it.
        let err = fetch_all(&[&chunks[0]], std::slice::from_ref(&rogue), &opts, &dir, &mut fetching(&dir)).unwrap_err();
        assert!(err.message.contains("every neighbour offering it served bad bytes") && err.message.contains(&rogue), "{}", err.message);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
