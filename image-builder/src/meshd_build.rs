//! Cross-compiles `meshd` for the board's Rust target, reproducibly: `--locked`, release, and
//! every host path (checkout, cargo home, target dir, std sources) remapped out of the binary.

use std::path::{Path, PathBuf};
use std::process::Command;

#[derive(Debug, thiserror::Error)]
pub enum FirmwareError {
    #[error("cargo build of meshd for {target} failed (exit {code:?})\nhint: is the target installed? 'rustup target add {target}' (make image does it)")]
    Build { target: String, code: Option<i32> },
    #[error("cannot run {tool}: {source}")]
    Tool { tool: String, source: std::io::Error },
    #[error("{path}: {message}\nhint: the SBOM lists meshd's crates from it; restore it with 'git checkout Cargo.lock'")]
    CargoLock { path: String, message: String },
}

/// The C cross toolchain a Rust target links with (Debian's gcc cross packages).
pub fn linker_for(target: &str) -> Option<&'static str> {
    match target {
        "aarch64-unknown-linux-musl" | "aarch64-unknown-linux-gnu" => Some("aarch64-linux-gnu-gcc"),
        "armv7-unknown-linux-gnueabihf" | "armv7-unknown-linux-musleabihf" => Some("arm-linux-gnueabihf-gcc"),
        _ => None,
    }
}

fn output(tool: &str, args: &[&str]) -> Result<String, FirmwareError> {
    let out = Command::new(tool).args(args).output().map_err(|source| FirmwareError::Tool { tool: tool.into(), source })?;
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// Builds meshd and returns the binary's path.
pub fn build(root: &Path, target: &str, target_dir: &Path) -> Result<PathBuf, FirmwareError> {
    let root = root.canonicalize().map_err(|source| FirmwareError::Tool { tool: "canonicalize".into(), source })?;
    std::fs::create_dir_all(target_dir).map_err(|source| FirmwareError::Tool { tool: "mkdir".into(), source })?;
    let target_dir = target_dir.canonicalize().map_err(|source| FirmwareError::Tool { tool: "canonicalize".into(), source })?;
    let sysroot = output("rustc", &["--print", "sysroot"])?;
    let commit = output("rustc", &["-vV"])?.lines().find_map(|l| l.strip_prefix("commit-hash: ")).unwrap_or("unknown").to_string();
    let cargo_home = std::env::var("CARGO_HOME").map(PathBuf::from).unwrap_or_else(|_| PathBuf::from(std::env::var("HOME").unwrap_or_default()).join(".cargo"));
    let remaps = [
        (target_dir.display().to_string(), "/target".to_string()),
        (root.display().to_string(), "/src".to_string()),
        (cargo_home.display().to_string(), "/cargo".to_string()),
        (format!("{sysroot}/lib/rustlib/src/rust"), format!("/rustc/{commit}")),
    ];
    let flags: Vec<String> = remaps.iter().map(|(from, to)| format!("\"--remap-path-prefix={from}={to}\"")).collect();
    let mut cmd = Command::new("cargo");
    cmd.current_dir(&root)
        .args(["build", "--locked", "--release", "-p", "meshd", "--target", target])
        .arg("--target-dir")
        .arg(&target_dir)
        .arg("--config")
        .arg(format!("target.'cfg(all())'.rustflags=[{}]", flags.join(",")))
        .env_remove("RUSTFLAGS")
        .env("SOURCE_DATE_EPOCH", "0");
    if let Some(linker) = linker_for(target) {
        let var = target.to_uppercase().replace('-', "_");
        cmd.env(format!("CARGO_TARGET_{var}_LINKER"), linker).env(format!("CC_{}", target.replace('-', "_")), linker);
        let remap_c = remaps.iter().map(|(f, t)| format!("-ffile-prefix-map={f}={t}")).collect::<Vec<_>>().join(" ");
        cmd.env(format!("CFLAGS_{}", target.replace('-', "_")), remap_c);
    }
    let status = cmd.status().map_err(|source| FirmwareError::Tool { tool: "cargo".into(), source })?;
    if !status.success() {
        return Err(FirmwareError::Build { target: target.into(), code: status.code() });
    }
    Ok(target_dir.join(target).join("release").join("meshd"))
}

/// meshd's crates (name, version, registry checksum) from Cargo.lock, for the SBOM.
pub fn crates(root: &Path) -> Result<Vec<(String, String, Option<String>)>, FirmwareError> {
    #[derive(serde::Deserialize)]
    struct LockFile {
        package: Vec<Pkg>,
    }
    #[derive(serde::Deserialize)]
    struct Pkg {
        name: String,
        version: String,
        checksum: Option<String>,
        #[serde(default)]
        dependencies: Vec<String>,
    }
    let path = root.join("Cargo.lock");
    let err = |message: String| FirmwareError::CargoLock { path: path.display().to_string(), message };
    let text = std::fs::read_to_string(&path).map_err(|e| err(e.to_string()))?;
    let lock = toml::from_str::<LockFile>(&text).map_err(|e| err(e.to_string()))?;
    let mut out = std::collections::BTreeMap::new();
    let mut stack = vec!["meshd".to_string()];
    while let Some(dep) = stack.pop() {
        let name = dep.split(' ').next().unwrap_or(&dep);
        let version = dep.split(' ').nth(1);
        let Some(p) = lock.package.iter().find(|p| p.name == name && version.is_none_or(|v| v == p.version)) else { continue };
        if out.insert((p.name.clone(), p.version.clone()), p.checksum.clone()).is_none() {
            stack.extend(p.dependencies.iter().cloned());
        }
    }
    if out.is_empty() {
        return Err(err("has no package named meshd".into()));
    }
    Ok(out.into_iter().map(|((n, v), c)| (n, v, c)).collect())
}
