//! Integration tests against a tiny Debian-style archive the tests generate: a signed
//! InRelease (test key made here), a Packages index and small .debs, served on 127.0.0.1.
//! They drive the real `meshimg` binary and check its error texts.

use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::path::PathBuf;
use std::process::Command;
use std::sync::{Arc, Mutex};

/// An OpenPGP signing key made by the stock `gpg` in a home directory of its own, as an archive
/// signs its releases; its agent is stopped when the key is dropped.
struct Key {
    home: tempfile::TempDir,
    fingerprint: String,
}

impl Key {
    fn new(name: &str) -> Key {
        // A short path: gpg-agent's socket lives in the home directory.
        let home = tempfile::Builder::new().prefix("gpg.").tempdir_in("/tmp").unwrap();
        let mut key = Key { home, fingerprint: String::new() };
        key.gpg(&["--quick-gen-key", &format!("{name} <test@meshos.invalid>"), "ed25519", "sign", "never"], b"");
        let listing = String::from_utf8(key.gpg(&["--with-colons", "--list-keys"], b"")).unwrap();
        key.fingerprint = listing.lines().find_map(|l| l.strip_prefix("fpr:")).unwrap().trim_matches(':').to_string();
        key
    }

    fn gpg(&self, args: &[&str], input: &[u8]) -> Vec<u8> {
        let mut child = Command::new("gpg")
            .arg("--homedir")
            .arg(self.home.path())
            .args(["--batch", "--quiet", "--pinentry-mode", "loopback", "--passphrase", ""])
            .args(args)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("gpg (Debian: gpg and gpg-agent) signs the test archive");
        child.stdin.take().unwrap().write_all(input).unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(out.status.success(), "gpg {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        out.stdout
    }

    /// The public key, as a binary keyring (the form debian-archive-keyring ships).
    fn keyring(&self) -> Vec<u8> {
        self.gpg(&["--export", &self.fingerprint], b"")
    }

    fn clearsign(&self, text: &str) -> Vec<u8> {
        self.gpg(&["--clearsign", "--local-user", &self.fingerprint, "--digest-algo", "SHA256"], text.as_bytes())
    }
}

impl Drop for Key {
    fn drop(&mut self) {
        let _ = Command::new("gpgconf").arg("--homedir").arg(self.home.path()).args(["--kill", "gpg-agent"]).status();
    }
}

fn sha256(d: &[u8]) -> String {
    hex::encode(Sha256::digest(d))
}

fn xz(d: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    liblzma::read::XzEncoder::new(d, 6).read_to_end(&mut out).unwrap();
    out
}

fn ar_member(out: &mut Vec<u8>, name: &str, data: &[u8]) {
    out.extend_from_slice(format!("{name:<16}{:<12}{:<6}{:<6}{:<8}{:<10}`\n", 0, 0, 0, "100644", data.len()).as_bytes());
    out.extend_from_slice(data);
    if data.len() % 2 == 1 {
        out.push(b'\n');
    }
}

fn deb(files: &[(&str, &[u8])]) -> Vec<u8> {
    let mut tar = tar::Builder::new(Vec::new());
    for (path, data) in files {
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_mtime(1_600_000_000);
        h.set_cksum();
        tar.append_data(&mut h, format!("./{path}"), *data).unwrap();
    }
    let data_tar = tar.into_inner().unwrap();
    let mut out = b"!<arch>\n".to_vec();
    ar_member(&mut out, "debian-binary", b"2.0\n");
    ar_member(&mut out, "data.tar.xz", &xz(&data_tar));
    out
}

/// A served archive: files under `root`, plus per-path overrides (tampering, truncation).
struct Archive {
    root: tempfile::TempDir,
    url: String,
    overrides: Arc<Mutex<BTreeMap<String, Vec<u8>>>>,
    key: Key,
}

struct Pkg {
    name: &'static str,
    version: &'static str,
    depends: &'static str,
    provides: &'static str,
    files: Vec<(&'static str, &'static [u8])>,
}

fn pkg(name: &'static str, depends: &'static str) -> Pkg {
    Pkg { name, version: "1.0-1", depends, provides: "", files: vec![("usr/share/meshos-test/name", name.as_bytes())] }
}

impl Archive {
    fn new(pkgs: &[Pkg]) -> Archive {
        let root = tempfile::tempdir().unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let overrides: Arc<Mutex<BTreeMap<String, Vec<u8>>>> = Arc::default();
        let (dir, ov) = (root.path().to_path_buf(), overrides.clone());
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut s) = stream else { continue };
                let mut r = BufReader::new(s.try_clone().unwrap());
                let mut line = String::new();
                r.read_line(&mut line).unwrap();
                let path = line.split_whitespace().nth(1).unwrap_or("/").trim_start_matches('/').to_string();
                let mut from = 0usize;
                loop {
                    let mut h = String::new();
                    if r.read_line(&mut h).unwrap_or(0) == 0 || h == "\r\n" {
                        break;
                    }
                    if let Some(v) = h.to_ascii_lowercase().strip_prefix("range: bytes=") {
                        from = v.trim().trim_end_matches('-').parse().unwrap_or(0);
                    }
                }
                let body = ov.lock().unwrap().get(&path).cloned().or_else(|| std::fs::read(dir.join(&path)).ok());
                let _ = match body {
                    Some(b) if from > 0 && from <= b.len() => {
                        let part = &b[from..];
                        s.write_all(format!("HTTP/1.1 206 Partial Content\r\nContent-Length: {}\r\nConnection: close\r\n\r\n", part.len()).as_bytes())
                            .and_then(|_| s.write_all(part))
                    }
                    Some(b) => s
                        .write_all(format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n", b.len()).as_bytes())
                        .and_then(|_| s.write_all(&b)),
                    None => s.write_all(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"),
                };
            }
        });
        let a = Archive { root, url, overrides, key: Key::new("meshos test archive") };
        let mut index = String::new();
        for p in pkgs {
            let data = deb(&p.files);
            let pool = format!("pool/main/{}_{}_arm64.deb", p.name, p.version);
            a.write(&pool, &data);
            index.push_str(&format!(
                "Package: {}\nVersion: {}\nArchitecture: arm64\nFilename: {pool}\nSize: {}\nSHA256: {}\n",
                p.name,
                p.version,
                data.len(),
                sha256(&data)
            ));
            if !p.depends.is_empty() {
                index.push_str(&format!("Depends: {}\n", p.depends));
            }
            if !p.provides.is_empty() {
                index.push_str(&format!("Provides: {}\n", p.provides));
            }
            index.push('\n');
        }
        let packages = xz(index.as_bytes());
        a.write("dists/test/main/binary-arm64/Packages.xz", &packages);
        let release = format!(
            "Origin: meshos-test\nSuite: test\nCodename: test\nDate: Sat, 21 Nov 2026 09:15:44 UTC\nArchitectures: arm64\nComponents: main\nSHA256:\n {} {} main/binary-arm64/Packages.xz\n",
            sha256(&packages),
            packages.len()
        );
        a.sign_release(&release, &a.key);
        a
    }

    fn write(&self, rel: &str, data: &[u8]) {
        let p = self.root.path().join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, data).unwrap();
    }

    fn sign_release(&self, text: &str, key: &Key) {
        self.write("dists/test/InRelease", &key.clearsign(text));
    }
}

/// A project checkout with one board, `test`, using `archive`.
struct Project {
    dir: tempfile::TempDir,
    cache: PathBuf,
}

impl Project {
    fn new(archive: &Archive, packages: &[&str], extra_yaml: &str) -> Project {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("board-defs")).unwrap();
        let keyring = dir.path().join("test-archive.gpg");
        std::fs::write(&keyring, archive.key.keyring()).unwrap();
        let yaml = format!(
            "apiVersion: meshos/v1
name: test
description: test board
arch: arm64
rustTarget: aarch64-unknown-linux-musl
debian:
  suite: test
  components: [main]
  mirror: {url}
  keyring: {keyring}
  trustedKeys: [{fpr}]
packages: [{packages}]
initramfsBusybox: bb-static
kernel: {{ package: linux-image-test, dtbs: [], cmdline: console=ttyAMA0, modules: [], initramfsModules: [] }}
firmware: {{ packages: [] }}
boot:
  packages: []
  files: []
  addresses: {{ kernelGz: '0x8000000', kernel: '0x200000', fdt: '0x5f00000', ramdisk: '0x6000000' }}
disk: {{ bootMib: 16, rootSlotMib: 32, dataMib: 8 }}
qemu: {{ binary: qemu-system-aarch64, machine: virt, memory: 512M, serials: 1 }}
{extra_yaml}",
            url = archive.url,
            keyring = keyring.display(),
            fpr = archive.key.fingerprint,
            packages = packages.join(", "),
        );
        std::fs::write(dir.path().join("board-defs/test.yaml"), yaml).unwrap();
        let cache = dir.path().join("cache");
        Project { dir, cache }
    }

    fn meshimg(&self, args: &[&str]) -> (i32, String) {
        let out = Command::new(env!("CARGO_BIN_EXE_meshimg"))
            .arg("--root")
            .arg(self.dir.path())
            .args(args)
            .env("MESHOS_CACHE", &self.cache)
            .env("MESHOS_RETRY_BACKOFF_MS", "1")
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stderr).into_owned() + &String::from_utf8_lossy(&out.stdout);
        (out.status.code().unwrap_or(-1), text)
    }

    fn lock_text(&self) -> Option<String> {
        std::fs::read_to_string(self.dir.path().join("board-defs/test.lock")).ok()
    }
}

fn base() -> Vec<Pkg> {
    vec![
        pkg("app", "libc (>= 1.0), mta | exim"),
        pkg("libc", "libgcc"),
        pkg("libgcc", "libc"),
        Pkg { provides: "mta", ..pkg("postfix", "") },
        pkg("bb-static", ""),
        pkg("linux-image-test", "linux-image-1-test, initramfs-tools"),
        pkg("linux-image-1-test", "kmod"),
    ]
}

#[test]
fn lock_resolves_dependencies_from_a_verified_archive() {
    let a = Archive::new(&base());
    let p = Project::new(&a, &["app"], "");
    let (code, out) = p.meshimg(&["lock", "test"]);
    assert_eq!(code, 0, "{out}");
    let lock = p.lock_text().unwrap();
    for name in ["app", "libc", "libgcc", "postfix", "bb-static", "linux-image-test", "linux-image-1-test"] {
        assert!(lock.contains(&format!("name = \"{name}\"")), "{name} missing from\n{lock}");
    }
    // The kernel metapackage is followed to its image only, not to its tooling.
    assert!(!lock.contains("initramfs-tools") && !lock.contains("kmod"));
    assert!(lock.contains("source_date_epoch = 1795252544"));
}

#[test]
fn fetch_checks_hashes_and_replaces_damaged_cache_entries() {
    let a = Archive::new(&base());
    let p = Project::new(&a, &["app"], "");
    assert_eq!(p.meshimg(&["lock", "test"]).0, 0);
    let board = meshimg::board::Board::load(&p.dir.path().join("board-defs/test.yaml")).unwrap();
    let lock_path = p.dir.path().join("board-defs/test.lock");
    let lock = meshimg::lock::Lock::load(&lock_path, &board, &p.dir.path().join("board-defs/test.yaml")).unwrap();
    let cache = meshimg::package_cache::Cache::new(p.cache.clone());
    let all: Vec<_> = lock.packages.iter().collect();
    assert!(cache.ensure(&lock, &lock_path, &all).unwrap() > 0);
    assert_eq!(cache.ensure(&lock, &lock_path, &all).unwrap(), 0, "second run is offline");

    // A tampered cached file is noticed, discarded and fetched again.
    let app = lock.by_name("app").unwrap();
    std::fs::write(cache.path_of(&app.sha256), b"tampered").unwrap();
    assert_eq!(cache.ensure(&lock, &lock_path, &[app]).unwrap(), app.size);
    assert_eq!(meshimg::package_cache::file_sha256(&cache.path_of(&app.sha256)).unwrap(), app.sha256);

    // A mirror serving other bytes is refused with the lock, package and both hashes named.
    std::fs::remove_file(cache.path_of(&app.sha256)).unwrap();
    let mut evil = std::fs::read(a.root.path().join(&app.path)).unwrap();
    evil[10] ^= 0xff;
    a.overrides.lock().unwrap().insert(app.path.clone(), evil.clone());
    let e = cache.ensure(&lock, &lock_path, &[app]).unwrap_err().to_string();
    assert!(e.contains(&format!("test.lock: app 1.0-1 has sha256 {} but the download has {}", app.sha256, sha256(&evil))), "{e}");
    assert!(e.contains("hint: run 'meshimg lock test'"), "{e}");
    assert!(!cache.path_of(&app.sha256).exists(), "a bad download never enters the cache");

    // A truncated download is reported as such, and resumed on the next run.
    let good = std::fs::read(a.root.path().join(&app.path)).unwrap();
    a.overrides.lock().unwrap().insert(app.path.clone(), good[..good.len() / 2].to_vec());
    let e = cache.ensure(&lock, &lock_path, &[app]).unwrap_err().to_string();
    assert!(e.contains(&format!("should be {} bytes but the download has {}", app.size, good.len() / 2)), "{e}");
    a.overrides.lock().unwrap().insert(app.path.clone(), good.clone());
    assert_eq!(cache.ensure(&lock, &lock_path, &[app]).unwrap(), app.size);
    assert_eq!(meshimg::package_cache::file_sha256(&cache.path_of(&app.sha256)).unwrap(), app.sha256);
}

#[test]
fn a_bad_signature_is_refused_and_the_old_lock_kept() {
    let a = Archive::new(&base());
    let p = Project::new(&a, &["app"], "");
    assert_eq!(p.meshimg(&["lock", "test"]).0, 0);
    let before = p.lock_text().unwrap();
    let signed = std::fs::read_to_string(a.root.path().join("dists/test/InRelease")).unwrap();
    let text = signed.split("-----BEGIN PGP SIGNATURE-----").next().unwrap();
    let body: String = text.lines().skip(3).collect::<Vec<_>>().join("\n");
    let refused = |what: &str, expect: &str| {
        let (code, out) = p.meshimg(&["lock", "test"]);
        assert_eq!(code, 4, "{what}: {out}");
        assert!(out.contains("dists/test/InRelease: BAD SIGNATURE: no signature verifies against a trusted key"), "{what}: {out}");
        assert!(out.contains(expect), "{what}: {out}");
        assert_eq!(p.lock_text().unwrap(), before, "{what}: nothing was changed");
    };
    // Signed by a key the keyring does not hold.
    let stranger = Key::new("a stranger");
    a.sign_release(&format!("{body}\n"), &stranger);
    refused("another key", &format!("signed by key {}, which is not in ", &stranger.fingerprint[24..]));
    // The archive's own key, but the text changed after it was signed.
    std::fs::write(a.root.path().join("dists/test/InRelease"), signed.replacen("Date: Sat, 21 Nov", "Date: Sun, 22 Nov", 1)).unwrap();
    refused("a changed text", &format!("the signature by key {} does not match the text", &a.key.fingerprint[24..]));
    // A key in the keyring that the board file does not pin.
    let mut keyring = a.key.keyring();
    keyring.extend(stranger.keyring());
    std::fs::write(p.dir.path().join("test-archive.gpg"), keyring).unwrap();
    a.sign_release(&format!("{body}\n"), &stranger);
    refused("an unpinned key", &format!("signed by key {}, which the board file does not trust", stranger.fingerprint));
}

#[test]
fn an_index_that_does_not_match_the_release_is_never_used() {
    let a = Archive::new(&base());
    let p = Project::new(&a, &["app"], "");
    a.write("dists/test/main/binary-arm64/Packages.xz", &xz(b"Package: app\nVersion: 9\n"));
    let (code, out) = p.meshimg(&["lock", "test"]);
    assert_eq!(code, 4, "{out}");
    assert!(out.contains("main/binary-arm64/Packages.xz: index does not match InRelease after 4 attempts"), "{out}");
    assert!(out.contains("(the mirror may be mid-sync); nothing was changed; retry later"), "{out}");
    assert!(p.lock_text().is_none());
}

#[test]
fn a_missing_package_names_who_wanted_it() {
    let mut pkgs = base();
    pkgs.push(pkg("tool", "libnothere"));
    let a = Archive::new(&pkgs);
    let p = Project::new(&a, &["app", "tool"], "");
    let (code, out) = p.meshimg(&["lock", "test"]);
    assert_ne!(code, 0);
    assert!(out.contains("package 'libnothere' (wanted by tool) is not in the archive for arm64"), "{out}");
    let p = Project::new(&a, &["nope"], "");
    assert!(p.meshimg(&["lock", "test"]).1.contains("package 'nope' is not in the archive for arm64"));
}

#[test]
fn unknown_board_keys_name_the_file_line_and_key() {
    let a = Archive::new(&base());
    let p = Project::new(&a, &["app"], "colour: blue\n");
    let (code, out) = p.meshimg(&["lock", "test"]);
    assert_eq!(code, 3, "{out}");
    let file = p.dir.path().join("board-defs/test.yaml");
    assert!(out.contains(&format!("error: {}: line 22: unknown field `colour`", file.display())), "{out}");
}

#[test]
fn a_stale_lock_is_refused_by_builds() {
    let a = Archive::new(&base());
    let p = Project::new(&a, &["app"], "");
    assert_eq!(p.meshimg(&["lock", "test"]).0, 0);
    let board = p.dir.path().join("board-defs/test.yaml");
    let text = std::fs::read_to_string(&board).unwrap().replace("packages: [app]", "packages: [app, libc]");
    std::fs::write(&board, text).unwrap();
    let (code, out) = p.meshimg(&["plan", "test"]);
    assert_eq!(code, 3, "{out}");
    assert!(out.contains("test.lock is stale:") && out.contains("hint: run 'meshimg lock test'"), "{out}");
}
