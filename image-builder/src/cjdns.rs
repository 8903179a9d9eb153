//! cjdns's `cjdroute`, cross-compiled from the verified trees of `board-defs/sources/cjdns.yaml`.
//!
//! The project tree is built with its git dependencies replaced by the pinned trees (cargo
//! `[patch]`), so every registry crate stays at the version cjdns's own `Cargo.lock` names
//! (checked after the build). Its C parts are compiled by `node_build/make.js` (nodejs on the
//! host) and libsodium from sodiumoxide's bundled source, both with the cross compiler.
//! Reproducible: host paths are remapped out of the binary, the clock is fixed and symbols are
//! stripped. The binary is kept under a key of all its inputs, so a warm build reuses it.

use crate::meshd_build::linker_for;
use crate::source::{LockedSource, SourceSet};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

/// Changes when the way cjdns is built here changes (a new key for every cached binary).
const RECIPE: &str = "cjdns-build-4";

#[derive(Debug, thiserror::Error)]
pub enum CjdnsError {
    #[error("cannot run {tool}: {message}\nhint: make image installs the host tools (ci/setup-host.sh): nodejs, the cross gcc, 'rustup target add {target}'")]
    Tool { tool: String, target: String, message: String },
    #[error("cargo build of cjdns for {target} failed (exit {code:?}); its output is above\nhint: is the target installed? 'rustup target add {target}' (make image does it)")]
    Build { target: String, code: Option<i32> },
    #[error("building cjdns moved registry crates away from the versions its Cargo.lock names: {changed}\nhint: a source in board-defs/sources/cjdns.yaml does not match the commit cjdns pins")]
    LockDrift { changed: String },
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> CjdnsError + '_ {
    move |source| CjdnsError::Io { path: path.into(), source }
}

/// The first line `tool args` prints, or an error naming the tool.
fn version_of(tool: &str, args: &[&str], target: &str) -> Result<String, CjdnsError> {
    let tool_err = |message: String| CjdnsError::Tool { tool: tool.into(), target: target.into(), message };
    let out = Command::new(tool).args(args).output().map_err(|e| tool_err(e.to_string()))?;
    if !out.status.success() {
        return Err(tool_err(String::from_utf8_lossy(&out.stderr).trim().to_string()));
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// Returns `cjdroute` for `target`: kept in `kept_dir` under the key of its inputs, else built
/// under `work` (removed again once the binary is kept).
pub fn build(
    set: &SourceSet,
    trees: &BTreeMap<String, PathBuf>,
    locked: &[LockedSource],
    target: &str,
    work: &Path,
    kept_dir: &Path,
) -> Result<PathBuf, CjdnsError> {
    let gcc = linker_for(target).ok_or_else(|| CjdnsError::Tool {
        tool: "a C cross compiler".into(),
        target: target.into(),
        message: "none is known for this target".into(),
    })?;
    let rustc = version_of("rustc", &["-vV"], target)?;
    // node only runs node_build/make.js, which drives the C compiler: the flags it passes
    // (even the per-file "random" constants, drawn from a hash of a fixed seed and the file's
    // name) do not depend on node's version, so it is no input; the compilers are.
    let mut key = Sha256::new();
    for part in [RECIPE, target, &rustc, &version_of(gcc, &["--version"], target)?] {
        key.update(part.as_bytes());
        key.update([0]);
    }
    for l in locked {
        key.update(format!("{} {}\n", l.name, l.tree_sha256).as_bytes());
    }
    let key = hex::encode(key.finalize());
    let kept = kept_dir.join(&key[..24]).join("cjdroute");
    if kept.is_file() {
        eprintln!("cjdns: cjdroute for {target} is built already (inputs {})", &key[..12]);
        return Ok(kept);
    }

    // The trees: cjdns/, with its git dependencies in cjdns/deps/<name>/. Inside the workspace's
    // directory cargo hashes their paths relative to it into the crates' metadata, and so into
    // symbol names and code layout; outside it, absolute paths would make every build
    // directory give another binary.
    let dir = work.join(format!("cjdns-{target}"));
    if dir.exists() {
        std::fs::remove_dir_all(&dir).map_err(io(&dir))?;
    }
    std::fs::create_dir_all(&dir).map_err(io(&dir))?;
    let dir = dir.canonicalize().map_err(io(&dir))?;
    let main = &set.sources[0];
    let place = |name: &str| if name == main.name { dir.join(&main.name) } else { dir.join(&main.name).join("deps").join(name) };
    copy_tree(&trees[&main.name], &place(&main.name))?;
    std::fs::create_dir_all(place(&main.name).join("deps")).map_err(io(&dir))?;
    for s in set.sources.iter().skip(1).filter(|s| s.into.is_none()) {
        copy_tree(&trees[&s.name], &place(&s.name))?;
    }
    for s in &set.sources {
        if let Some(into) = &s.into {
            let (parent, rel) = into.split_once('/').expect("validated: <source>/<path>");
            let at = place(parent).join(rel);
            if at.exists() {
                std::fs::remove_dir_all(&at).map_err(io(&at))?;
            }
            copy_tree(&trees[&s.name], &at)?;
        }
    }
    let project = place(&main.name);
    let manifest = project.join("Cargo.toml");
    let mut text = std::fs::read_to_string(&manifest).map_err(io(&manifest))?;
    // The dependencies are workspaces of their own, not members of cjdns's.
    if !text.contains("\n[workspace]\n") && !text.starts_with("[workspace]\n") {
        return Err(CjdnsError::Io { path: manifest, source: std::io::Error::other("has no [workspace] table to exclude deps/ from") });
    }
    text = text.replacen("[workspace]\n", "[workspace]\nexclude = [\"deps\"]\n", 1);
    for s in set.sources.iter().skip(1).filter(|s| s.into.is_none()) {
        text.push_str(&format!("\n[patch.\"{}\"]\n", s.repository));
        for (name, path) in crates_in(&place(&s.name))? {
            text.push_str(&format!("{name} = {{ path = \"{}\" }}\n", path.display()));
        }
    }
    std::fs::write(&manifest, text).map_err(io(&manifest))?;
    if target.starts_with("arm") {
        fit_identity_to_32_bits(&project)?;
    }
    read_until_drained(&project)?;
    let lock_path = project.join("Cargo.lock");
    let locked_before = registry_crates(&std::fs::read_to_string(&lock_path).map_err(io(&lock_path))?);

    let sysroot = version_of("rustc", &["--print", "sysroot"], target)?;
    let commit = rustc.lines().find_map(|l| l.strip_prefix("commit-hash: ")).unwrap_or("unknown").to_string();
    let cargo_home = std::env::var("CARGO_HOME").map(PathBuf::from).unwrap_or_else(|_| PathBuf::from(std::env::var("HOME").unwrap_or_default()).join(".cargo"));
    let remaps = [
        (dir.display().to_string(), "/cjdns".to_string()),
        (cargo_home.display().to_string(), "/cargo".to_string()),
        (format!("{sysroot}/lib/rustlib/src/rust"), format!("/rustc/{commit}")),
    ];
    // Upstream's lints are upstream's: Rust 1.95 denies some of boringtun's older code.
    let mut rustflags = vec!["--cap-lints=allow".to_string(), "-Cstrip=symbols".to_string()];
    rustflags.extend(remaps.iter().map(|(from, to)| format!("--remap-path-prefix={from}={to}")));
    let mut cflags = remaps.iter().map(|(from, to)| format!("-ffile-prefix-map={from}={to}")).collect::<Vec<_>>();
    // util/ArchInfo.c tells 32-bit ARM's byte order apart before anything defines it (upstream
    // v22.1 fails with "unknown endian"); Endian.h takes a definition given, as its error says.
    if target.starts_with("arm") {
        cflags.push("-DEndian_LITTLE=1".into());
    }
    let cflags = cflags.join(" ");
    let ar = gcc.replace("-gcc", "-ar");
    let t = target.replace('-', "_");
    eprintln!("cjdns: building cjdroute {} for {target} (nodejs for its C parts; several minutes cold)", set.version);
    let status = Command::new("cargo")
        .current_dir(&project)
        .args(["build", "--release", "--target", target, "-p", "cjdns_sys", "--bin", "cjdroute", "--target-dir"])
        .arg(dir.join("target"))
        .env_remove("RUSTFLAGS")
        .env("CARGO_ENCODED_RUSTFLAGS", rustflags.join("\x1f"))
        .env(format!("CARGO_TARGET_{}_LINKER", t.to_uppercase()), gcc)
        .env(format!("CC_{t}"), gcc)
        .env(format!("AR_{t}"), &ar)
        .env(format!("CFLAGS_{t}"), &cflags)
        // node_build/make.js: the cross compiler, its flags, and that this is a cross build.
        .env("CC", gcc)
        .env("AR", &ar)
        .env("CFLAGS", &cflags)
        .env("CROSS", "1")
        .env("CJDNS_RELEASE_VERSION", format!("cjdns-v{}", set.version))
        .env("SOURCE_DATE_EPOCH", "0")
        .status()
        .map_err(|e| CjdnsError::Tool { tool: "cargo".into(), target: target.into(), message: e.to_string() })?;
    if !status.success() {
        return Err(CjdnsError::Build { target: target.into(), code: status.code() });
    }
    let locked_after = registry_crates(&std::fs::read_to_string(&lock_path).map_err(io(&lock_path))?);
    let changed: Vec<String> = locked_after.iter().filter(|(n, v)| locked_before.get(*n) != Some(v)).map(|(n, v)| format!("{n} {}", v.join(","))).collect();
    if !changed.is_empty() {
        return Err(CjdnsError::LockDrift { changed: changed.join(", ") });
    }
    let built = dir.join("target").join(target).join("release").join("cjdroute");
    let parent = kept.parent().expect("kept has a parent");
    std::fs::create_dir_all(parent).map_err(io(parent))?;
    let tmp = parent.join("cjdroute.tmp");
    std::fs::copy(&built, &tmp).map_err(io(&built))?;
    std::fs::rename(&tmp, &kept).map_err(io(&kept))?;
    // The build tree is large (about 1 GiB of objects); the binary is what is kept.
    let _ = std::fs::remove_dir_all(&dir);
    Ok(kept)
}

/// cjdns marks each checked structure with a per-file constant (`Identity_MAGIC`, a 64-bit
/// literal that node_build gives each C file) in a `uintptr_t` field. On a 32-bit target the
/// field keeps the constant's low half, the check compares it with all 64 bits, and the first
/// check aborts (`cjdroute --genconf` stops in crypto/random/RandomSeed.c). Cast to the field's
/// type, the constant is what is stored: the checks stay on and the structures keep the layout
/// cjdns's Rust bindings expect.
fn fit_identity_to_32_bits(project: &Path) -> Result<(), CjdnsError> {
    mend(
        &project.join("util/Identity.h"),
        "#define Identity_MAGIC CJDNS_RAND_U64_PER_FILE\n",
        "#define Identity_MAGIC ((uintptr_t) CJDNS_RAND_U64_PER_FILE)\n",
        "has no Identity_MAGIC definition to fit to 32 bits; this cjdns version needs the 32-bit step",
    )
}

/// v22.1's event loop calls cjdns's read callback once per readiness event (one packet) and
/// then clears tokio's edge-triggered readiness: whatever else is queued on the socket or TUN
/// waits for the next packet to arrive, seconds in a quiet mesh (round trips of 3-6 s between
/// two peers). Called back while `poll` says there is more to read, the queue drains at once.
fn read_until_drained(project: &Path) -> Result<(), CjdnsError> {
    const ONCE: &str = "                            let l = frc.lock();
                            unsafe { (l.0)(l.1); }
                            drop(l);
                            x.clear_ready();
";
    const DRAINED: &str = "                            loop {
                                if !active.load(Ordering::Relaxed) { break; }
                                let l = frc.lock();
                                unsafe { (l.0)(l.1); }
                                drop(l);
                                let mut p = libc::pollfd { fd: *x.get_inner(), events: libc::POLLIN, revents: 0 };
                                if unsafe { libc::poll(&mut p, 1, 0) } <= 0 { break; }
                            }
                            x.clear_ready();
";
    mend(
        &project.join("rust/cjdns_sys/src/rffi/event_loop/fd_readable.rs"),
        ONCE,
        DRAINED,
        "does not read once per readiness event as v22.1 does; this cjdns version needs the event-loop step",
    )
}

/// Replaces `from`, which `file` must hold exactly once, with `to`; else stops the build,
/// saying what is `missing` and where meshimg's step is.
fn mend(file: &Path, from: &str, to: &str, missing: &str) -> Result<(), CjdnsError> {
    let text = std::fs::read_to_string(file).map_err(io(file))?;
    if text.matches(from).count() != 1 {
        return Err(CjdnsError::Io { path: file.into(), source: std::io::Error::other(format!("{missing} of image-builder/src/cjdns.rs looked at again")) });
    }
    std::fs::write(file, text.replacen(from, to, 1)).map_err(io(file))
}

/// `cp -a`: modes and symbolic links as they are.
fn copy_tree(from: &Path, to: &Path) -> Result<(), CjdnsError> {
    let status = Command::new("cp").arg("-a").arg(from).arg(to).status().map_err(io(from))?;
    if !status.success() {
        return Err(CjdnsError::Io { path: from.into(), source: std::io::Error::other(format!("cp -a to {} failed", to.display())) });
    }
    Ok(())
}

/// Every crate in `tree` (a Cargo.toml with a `[package]`), by name, with its directory.
fn crates_in(tree: &Path) -> Result<BTreeMap<String, PathBuf>, CjdnsError> {
    let mut out = BTreeMap::new();
    let mut stack = vec![tree.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).map_err(io(&d))?.flatten() {
            let p = e.path();
            if p.is_dir() && !p.is_symlink() && e.file_name() != "target" {
                stack.push(p);
            } else if e.file_name() == "Cargo.toml" {
                let text = std::fs::read_to_string(&p).map_err(io(&p))?;
                if let Some(name) = toml::from_str::<toml::Value>(&text).ok().and_then(|v| v.get("package")?.get("name")?.as_str().map(String::from)) {
                    out.entry(name).or_insert(d.clone());
                }
            }
        }
    }
    Ok(out)
}

/// The registry crates of a Cargo.lock: name → versions.
fn registry_crates(lock: &str) -> BTreeMap<String, Vec<String>> {
    let mut out: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let Ok(v) = toml::from_str::<toml::Value>(lock) else { return out };
    for p in v.get("package").and_then(|p| p.as_array()).into_iter().flatten() {
        let registry = p.get("source").and_then(|s| s.as_str()).is_some_and(|s| s.starts_with("registry+"));
        if let (true, Some(n), Some(ver)) = (registry, p.get("name").and_then(|n| n.as_str()), p.get("version").and_then(|v| v.as_str())) {
            out.entry(n.to_string()).or_default().push(ver.to_string());
        }
    }
    for versions in out.values_mut() {
        versions.sort();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_source_is_mended_only_where_it_holds_the_code_once() {
        let d = tempfile::tempdir().unwrap();
        let f = d.path().join("x.rs");
        std::fs::write(&f, "a\nold\nb\n").unwrap();
        mend(&f, "old\n", "new\n", "no old; step").unwrap();
        assert_eq!(std::fs::read_to_string(&f).unwrap(), "a\nnew\nb\n");
        for text in ["a\n", "old\nold\n"] {
            std::fs::write(&f, text).unwrap();
            let e = mend(&f, "old\n", "new\n", "no old; step").unwrap_err().to_string();
            assert!(e.contains(&f.display().to_string()) && e.contains("step of image-builder/src/cjdns.rs"), "{e}");
            assert_eq!(std::fs::read_to_string(&f).unwrap(), text, "left as it was");
        }
    }

    #[test]
    fn registry_crates_are_read_by_name_with_every_version() {
        let lock = r#"
version = 3
[[package]]
name = "libc"
version = "0.2.150"
source = "registry+https://github.com/rust-lang/crates.io-index"
[[package]]
name = "libc"
version = "0.2.99"
source = "registry+https://github.com/rust-lang/crates.io-index"
[[package]]
name = "boringtun"
version = "0.3.0"
source = "git+https://github.com/cjdelisle/boringtun?rev=f288b2f4#f288b2f4"
[[package]]
name = "cjdns_sys"
version = "0.1.0"
"#;
        let c = registry_crates(lock);
        assert_eq!(c.len(), 1);
        assert_eq!(c["libc"], vec!["0.2.150", "0.2.99"]);
    }

    #[test]
    fn crates_are_found_by_their_package_names() {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(d.path().join("a/target/x")).unwrap();
        std::fs::write(d.path().join("Cargo.toml"), "[workspace]\nmembers = [\"a\"]\n").unwrap();
        std::fs::write(d.path().join("a/Cargo.toml"), "[package]\nname = \"alpha\"\nversion = \"1.0.0\"\n").unwrap();
        std::fs::write(d.path().join("a/target/x/Cargo.toml"), "[package]\nname = \"stale\"\n").unwrap();
        let c = crates_in(d.path()).unwrap();
        assert_eq!(c.keys().collect::<Vec<_>>(), vec!["alpha"]);
        assert_eq!(c["alpha"], d.path().join("a"));
    }
}
