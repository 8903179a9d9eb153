//! Kernel modules: the dependency closure of a board's driver list, and nothing else.
//!
//! Debian's kernel packages ship no `modules.dep`, so the host's `depmod` computes it over the
//! whole module tree; the kept modules are then decompressed (busybox's insmod and the kernel
//! both take plain `.ko`) and `depmod` runs again so the node's own indexes match what it has.

use crate::board::normalize_module;
use crate::tree::{Kind, Node, Tree};
use std::collections::{BTreeMap, BTreeSet};
use std::io::Read;
use std::path::Path;
use std::process::Command;

#[derive(Debug, thiserror::Error)]
pub enum KmodError {
    #[error("the kernel package has no modules directory (usr/lib/modules/<version>)")]
    NoKernel,
    #[error("kernel {kver} has no module or built-in driver '{name}'\nhint: check {field} in {board_file} (module names as `modinfo` shows them)")]
    Unknown { kver: String, name: String, field: &'static str, board_file: String },
    #[error("depmod failed: {0}\nhint: depmod comes with Debian's kmod package ('make image' installs it)")]
    Depmod(String),
    #[error("{path}: {message}")]
    Module { path: String, message: String },
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

pub struct Module {
    pub name: String,
    /// Path under `lib/modules/<kver>/`, ending in `.ko`.
    pub rel_path: String,
    pub data: Vec<u8>,
    pub firmware: Vec<String>,
    /// Only one of several providers of a soft dependency (crc32c: generic or CPU-specific):
    /// failing to load it on a CPU that lacks the feature is expected.
    pub optional: bool,
}

pub struct Selection {
    pub kver: String,
    /// The closure, by name.
    pub modules: BTreeMap<String, Module>,
    /// Requested drivers that are built into the kernel.
    pub builtin: Vec<String>,
    /// `modules.*` index files for the kept set, by file name.
    pub indexes: BTreeMap<String, Vec<u8>>,
    deps: BTreeMap<String, Vec<String>>,
}

pub fn kernel_version(kernel: &Tree) -> Result<String, KmodError> {
    kernel
        .iter()
        .filter_map(|(p, n)| (matches!(n.kind, Kind::Dir)).then_some(p))
        .filter_map(|p| p.strip_prefix("usr/lib/modules/"))
        .find(|rest| !rest.contains('/'))
        .map(String::from)
        .ok_or(KmodError::NoKernel)
}

/// The indexes `depmod` computes over every module a kernel package ships.
const FULL_INDEXES: [&str; 3] = ["modules.dep", "modules.alias", "modules.softdep"];

/// Where the full indexes of one kernel are kept between builds: `kernel_id` names the kernel
/// package's contents (its sha256), and the host's depmod version is part of the key too.
pub struct IndexCache<'a> {
    pub dir: &'a Path,
    pub kernel_id: &'a str,
}

/// `depmod` over everything the package ships (about 5 s: it reads every compressed module),
/// or its earlier result from `cache`. Returns the texts of [`FULL_INDEXES`], in that order.
fn full_indexes(kernel: &Tree, kver: &str, work: &Path, cache: &IndexCache) -> Result<[String; 3], KmodError> {
    let cached = cache.dir.join(format!("{}-{}", cache.kernel_id, depmod_version()?));
    let read: Result<Vec<String>, _> = FULL_INDEXES.iter().map(|f| std::fs::read_to_string(cached.join(f))).collect();
    if let Ok(texts) = read {
        return Ok(texts.try_into().expect("three indexes"));
    }
    let src = format!("usr/lib/modules/{kver}");
    let full = work.join("depmod-full");
    let moddir = full.join("lib/modules").join(kver);
    for (path, node) in kernel.under(&src) {
        if let Kind::File(data) = &node.kind {
            let out = moddir.join(&path[src.len() + 1..]);
            std::fs::create_dir_all(out.parent().expect("parent"))?;
            std::fs::write(out, data.as_slice())?;
        }
    }
    depmod(&full, kver)?;
    let mut texts = Vec::new();
    for f in FULL_INDEXES {
        texts.push(std::fs::read_to_string(moddir.join(f))?);
    }
    std::fs::remove_dir_all(&full)?;
    if let Err(e) = store(&cached, &texts) {
        eprintln!("build: note: could not keep the module indexes in {}: {e}", cached.display());
    }
    Ok(texts.try_into().expect("three indexes"))
}

/// Written beside, then renamed into place: a cut build leaves no half entry.
fn store(dir: &Path, texts: &[String]) -> std::io::Result<()> {
    let tmp = dir.with_extension("partial");
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(&tmp)?;
    for (f, text) in FULL_INDEXES.iter().zip(texts) {
        std::fs::write(tmp.join(f), text)?;
    }
    if std::fs::rename(&tmp, dir).is_err() {
        // Another build filled it first.
        std::fs::remove_dir_all(&tmp)?;
    }
    Ok(())
}

fn depmod_version() -> Result<String, KmodError> {
    let out = depmod_command().arg("-V").output().map_err(|e| KmodError::Depmod(e.to_string()))?;
    let text = String::from_utf8_lossy(&out.stdout);
    Ok(text.split_whitespace().find(|w| w.chars().all(|c| c.is_ascii_digit() || c == '.')).unwrap_or("unknown").to_string())
}

/// Selects the closure of `wanted` from the kernel package tree. `work` is a scratch directory.
pub fn select(kernel: &Tree, wanted: &[String], board_file: &str, work: &Path, cache: &IndexCache) -> Result<Selection, KmodError> {
    let kver = kernel_version(kernel)?;
    let src = format!("usr/lib/modules/{kver}");
    let package_text = |f: &str| match kernel.get(&format!("{src}/{f}")) {
        Some(Node { kind: Kind::File(d), .. }) => String::from_utf8_lossy(d).into_owned(),
        _ => String::new(),
    };
    // 1. depmod over everything the package ships.
    let [dep_text, alias_text, softdep_text] = full_indexes(kernel, &kver, work, cache)?;
    let mut path_of: BTreeMap<String, String> = BTreeMap::new();
    let mut deps: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for line in dep_text.lines() {
        let Some((path, rest)) = line.split_once(':') else { continue };
        let name = module_name(path);
        deps.insert(name.clone(), rest.split_whitespace().map(module_name).collect());
        path_of.insert(name, path.to_string());
    }
    // Soft dependencies (ext4 → crc32c) name aliases; they are needed as much as hard ones.
    let mut aliases: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for line in alias_text.lines() {
        if let Some(["alias", alias, module]) = line.split_whitespace().collect::<Vec<_>>().get(..3) {
            aliases.entry(alias.to_string()).or_default().push(normalize_module(module));
        }
    }
    let hard_deps = deps.clone();
    let mut alternatives = BTreeSet::new();
    for line in softdep_text.lines() {
        let mut words = line.split_whitespace();
        let (Some("softdep"), Some(module)) = (words.next(), words.next()) else { continue };
        let module = normalize_module(module);
        for w in words.filter(|w| !w.ends_with(':')) {
            let targets: Vec<String> =
                aliases.get(w).cloned().unwrap_or_else(|| vec![normalize_module(w)]).into_iter().filter(|t| path_of.contains_key(t) && *t != module).collect();
            if targets.len() > 1 {
                alternatives.extend(targets.iter().cloned());
            }
            deps.entry(module.clone()).or_default().extend(targets);
        }
    }
    let builtins: BTreeSet<String> = package_text("modules.builtin").lines().map(module_name).collect();

    // 2. The closure.
    let mut closure = BTreeSet::new();
    let mut builtin = Vec::new();
    for w in wanted {
        let name = normalize_module(w);
        if path_of.contains_key(&name) {
            let mut stack = vec![name];
            while let Some(m) = stack.pop() {
                if closure.insert(m.clone()) {
                    stack.extend(deps.get(&m).into_iter().flatten().cloned());
                }
            }
        } else if builtins.contains(&name) {
            builtin.push(name);
        } else {
            return Err(KmodError::Unknown { kver, name: w.clone(), field: "kernel.modules", board_file: board_file.into() });
        }
    }

    // Alternatives nothing needs for certain (no hard dependency, not asked for) are optional.
    let wanted_names: BTreeSet<String> = wanted.iter().map(|w| normalize_module(w)).collect();
    let required: BTreeSet<&String> = closure.iter().filter_map(|m| hard_deps.get(m)).flatten().chain(wanted_names.iter()).collect();
    let optional: BTreeSet<String> = alternatives.into_iter().filter(|m| !required.contains(m)).collect();

    // 3. Decompress the kept modules and read what firmware each asks for.
    let mut modules = BTreeMap::new();
    for name in &closure {
        let packed = &path_of[name];
        let node =
            kernel.get(&format!("{src}/{packed}")).ok_or_else(|| KmodError::Module { path: packed.clone(), message: "listed by depmod but missing".into() })?;
        let Kind::File(raw) = &node.kind else { continue };
        let data = decompress(packed, raw)?;
        let firmware = modinfo(&data, "firmware").map_err(|message| KmodError::Module { path: packed.clone(), message })?;
        let rel_path = packed.trim_end_matches(".xz").trim_end_matches(".zst").trim_end_matches(".gz").to_string();
        modules.insert(name.clone(), Module { name: name.clone(), rel_path, data, firmware, optional: optional.contains(name) });
    }

    // 4. depmod over the kept set, for the node's own indexes.
    let kept = work.join("depmod-kept");
    let keptdir = kept.join("lib/modules").join(&kver);
    std::fs::create_dir_all(&keptdir)?;
    for m in modules.values() {
        let out = keptdir.join(&m.rel_path);
        std::fs::create_dir_all(out.parent().expect("parent"))?;
        std::fs::write(out, &m.data)?;
    }
    for f in ["modules.builtin", "modules.builtin.modinfo"] {
        if let Some(Node { kind: Kind::File(d), .. }) = kernel.get(&format!("{src}/{f}")) {
            std::fs::write(keptdir.join(f), d.as_slice())?;
        }
    }
    let kept_order: String =
        package_text("modules.order").lines().filter(|l| closure.contains(&module_name(l))).map(|l| format!("{}\n", l.trim_end_matches(".xz"))).collect();
    std::fs::write(keptdir.join("modules.order"), kept_order)?;
    depmod(&kept, &kver)?;
    let mut indexes = BTreeMap::new();
    for e in std::fs::read_dir(&keptdir)? {
        let e = e?;
        let name = e.file_name().to_string_lossy().into_owned();
        if name.starts_with("modules.") {
            indexes.insert(name, std::fs::read(e.path())?);
        }
    }
    let deps = deps.into_iter().filter(|(k, _)| closure.contains(k)).collect();
    Ok(Selection { kver, modules, builtin, indexes, deps })
}

impl Selection {
    /// `names` and their dependencies, dependencies first: the order insmod needs.
    pub fn load_order(&self, names: &[String], board_file: &str) -> Result<Vec<&Module>, KmodError> {
        let mut out: Vec<&Module> = Vec::new();
        let mut seen = BTreeSet::new();
        fn visit<'a>(s: &'a Selection, name: &str, seen: &mut BTreeSet<String>, out: &mut Vec<&'a Module>) {
            if !seen.insert(name.to_string()) {
                return;
            }
            for d in s.deps.get(name).into_iter().flatten() {
                visit(s, d, seen, out);
            }
            if let Some(m) = s.modules.get(name) {
                out.push(m);
            }
        }
        for n in names {
            let name = normalize_module(n);
            if !self.modules.contains_key(&name) && !self.builtin.contains(&name) {
                return Err(KmodError::Unknown {
                    kver: self.kver.clone(),
                    name: n.clone(),
                    field: "kernel.initramfsModules (each must also be in kernel.modules)",
                    board_file: board_file.into(),
                });
            }
            visit(self, &name, &mut seen, &mut out);
        }
        Ok(out)
    }
}

fn depmod_command() -> Command {
    let mut c = Command::new("depmod");
    c.env("PATH", format!("{}:/usr/sbin:/sbin", std::env::var("PATH").unwrap_or_default()));
    c
}

fn depmod(base: &Path, kver: &str) -> Result<(), KmodError> {
    let out = depmod_command().arg("-b").arg(base).arg(kver).output().map_err(|e| KmodError::Depmod(e.to_string()))?;
    if !out.status.success() {
        return Err(KmodError::Depmod(String::from_utf8_lossy(&out.stderr).into_owned()));
    }
    Ok(())
}

/// "kernel/drivers/net/foo-bar.ko.xz" → "foo_bar"
pub fn module_name(path: &str) -> String {
    let file = path.trim().rsplit('/').next().unwrap_or(path);
    normalize_module(file.split(".ko").next().unwrap_or(file))
}

fn decompress(path: &str, raw: &[u8]) -> Result<Vec<u8>, KmodError> {
    let mut out = Vec::new();
    let err = |e: std::io::Error| KmodError::Module { path: path.into(), message: e.to_string() };
    if path.ends_with(".xz") {
        liblzma::read::XzDecoder::new(raw).read_to_end(&mut out).map_err(err)?;
    } else if path.ends_with(".gz") {
        flate2::read::GzDecoder::new(raw).read_to_end(&mut out).map_err(err)?;
    } else if path.ends_with(".ko") {
        out = raw.to_vec();
    } else {
        return Err(KmodError::Module { path: path.into(), message: "unsupported module compression".into() });
    }
    Ok(out)
}

/// Values of `key` in a module's `.modinfo` section.
pub fn modinfo(elf: &[u8], key: &str) -> Result<Vec<String>, String> {
    use object::{Object, ObjectSection};
    let file = object::File::parse(elf).map_err(|e| format!("not an ELF module: {e}"))?;
    let Some(section) = file.section_by_name(".modinfo") else { return Ok(Vec::new()) };
    let data = section.data().map_err(|e| e.to_string())?;
    let prefix = format!("{key}=");
    Ok(data.split(|b| *b == 0).filter_map(|s| std::str::from_utf8(s).ok()).filter_map(|s| s.strip_prefix(&prefix)).map(String::from).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_from_paths() {
        assert_eq!(module_name("kernel/drivers/mmc/host/sdhci-iproc.ko.xz"), "sdhci_iproc");
        assert_eq!(module_name("kernel/fs/ext4/ext4.ko\n"), "ext4");
    }
}
