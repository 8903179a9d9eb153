//! `meshimg`: the command line over the `meshimg` library. Parses arguments, prints, maps errors
//! to the exit codes documented in `--help`.

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use meshimg::{board, build, lock, package_cache, plan, qemu, signing, source, update_bundle};
use std::path::PathBuf;
use std::process::ExitCode;

const EXIT_CODES: &str = "Exit codes:
  0  success
  1  the build or a command failed
  2  bad usage
  3  a board file or lock is invalid or stale
  4  integrity: a signature, hash or size did not verify
  5  the network or the mirror failed";

#[derive(Parser)]
#[command(name = "meshimg", version, about = "Builds signed, reproducible meshos SD images", after_help = EXIT_CODES, max_term_width = 80)]
struct Cli {
    /// Project root holding board-defs/ and overlays/.
    #[arg(long, global = true, default_value = ".", env = "MESHOS_ROOT")]
    root: PathBuf,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// List the boards in board-defs/.
    Boards,
    /// Resolve a board's packages from the signed archive and write board-defs/<board>.lock.
    Lock {
        board: String,
        /// Package and source cache (default: $MESHOS_CACHE or ~/.cache/meshos).
        #[arg(long, env = "MESHOS_CACHE")]
        cache: Option<PathBuf>,
        #[command(flatten)]
        sources: SourcesArg,
        /// Accept a release older than the one the current lock was made from (going back on
        /// purpose, e.g. to a snapshot mirror); without it an older release is refused as a replay.
        #[arg(long)]
        allow_older: bool,
    },
    /// Show what a build would do (partitions, packages, boot files) without doing it.
    Plan {
        board: String,
        /// Print the plan as JSON.
        #[arg(long)]
        json: bool,
        #[arg(long, default_value = "out")]
        out: PathBuf,
        #[command(flatten)]
        keys: ImageArgs,
    },
    /// Build the board's image from its lock into <out>/<board>/.
    Build {
        board: String,
        /// Output directory.
        #[arg(long, default_value = "out")]
        out: PathBuf,
        /// Package cache (default: $MESHOS_CACHE or ~/.cache/meshos).
        #[arg(long, env = "MESHOS_CACHE")]
        cache: Option<PathBuf>,
        /// Print the build report as JSON on stdout.
        #[arg(long)]
        json: bool,
        /// Only the update bundle, its signature, SBOM and report: no SD image (for a release
        /// that reaches its nodes as an upgrade; quicker, the image's compression is skipped).
        #[arg(long)]
        bundle_only: bool,
        #[command(flatten)]
        keys: ImageArgs,
        #[command(flatten)]
        sources: SourcesArg,
    },
    /// Make an Ed25519 signing key pair (minisign format): the secret key at OUTPUT, the
    /// public key at OUTPUT.pub. The passphrase comes from MESHOS_SIGN_PASSPHRASE or the
    /// terminal.
    Keygen {
        #[arg(long, short)]
        output: PathBuf,
        /// No passphrase (for CI keys that live in a secret store).
        #[arg(long)]
        unencrypted: bool,
        /// Replace an existing key.
        #[arg(long)]
        force: bool,
    },
    /// Sign FILE into FILE.minisig (what build does for the image). A .bundle's manifest gets
    /// the signature too, beside any it has: how a site's maintainers reach k of n.
    Sign {
        file: PathBuf,
        #[arg(long, env = "MESHOS_SIGN_KEY", value_name = "KEY")]
        sign_key: PathBuf,
    },
    /// Check FILE against FILE.minisig with a trusted public key.
    Verify {
        file: PathBuf,
        /// Public key (repeatable); default: every board-defs/keys/*.pub.
        #[arg(long = "pubkey", short = 'p')]
        pubkeys: Vec<PathBuf>,
        /// Signature file (default: FILE.minisig).
        #[arg(long)]
        sig: Option<PathBuf>,
    },
    /// What a node running OLD fetches to install NEW over the mesh: the chunks of NEW's
    /// manifest that OLD's lacks, as bytes and as a share of NEW's whole bundle.
    Delta {
        old: PathBuf,
        new: PathBuf,
        /// Print the figures as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Lay BUNDLE out in DIR the way a node serves a release to its neighbours
    /// (nodeinfo.json, header/<sha256>, chunk/<sha256>), for a static web server on a
    /// machine joined to the mesh.
    Export { bundle: PathBuf, dir: PathBuf },
    /// Offer BUNDLE to the mesh from this machine, as a node offers a release: nodes whose
    /// router peers with this machine's find it in its /nodeinfo.json and take it from there.
    Serve {
        bundle: PathBuf,
        /// Address and port to listen on (nodes look for neighbours' releases on port 9100).
        #[arg(long, default_value = "[::]:9100")]
        listen: String,
    },
    /// Boot a built image in the board's QEMU machine, serial console on this terminal.
    Qemu {
        board: String,
        /// Image to boot (default: the one `build` made in <out>/<board>/).
        #[arg(long)]
        image: Option<PathBuf>,
        #[arg(long, default_value = "out")]
        out: PathBuf,
        /// Forward a loopback host port to the node: HOSTPORT:GUESTPORT (repeatable).
        #[arg(long = "forward", value_name = "HOSTPORT:GUESTPORT")]
        forwards: Vec<String>,
        /// Ethernet link to another VM over UDP on 127.0.0.1: LOCALPORT:REMOTEPORT
        /// (repeatable; the other VM gives the same ports reversed).
        #[arg(long = "link", value_name = "LOCALPORT:REMOTEPORT")]
        links: Vec<String>,
        /// Put a file on this boot's copy of the FAT partition: NAME=PATH (repeatable),
        /// e.g. --boot-file mesh.yaml=north.yaml or conf.d/50-site.tar.gz=site.tar.gz.
        #[arg(long = "boot-file", value_name = "NAME=PATH")]
        boot_files: Vec<String>,
        /// Boot test: stop once the node prints 'meshos ready', fail after this many seconds.
        #[arg(long, value_name = "SECONDS")]
        expect_ready: Option<u64>,
        /// Also write the console to this file.
        #[arg(long)]
        log: Option<PathBuf>,
        /// Keep the node's SD card in this file across runs: made from the image the first
        /// time, used as it is after (--boot-file still puts files on it). Stopping QEMU is
        /// then a power cut, and the next run boots what the card holds.
        #[arg(long, value_name = "FILE")]
        card: Option<PathBuf>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            for cause in e.chain().skip(1) {
                eprintln!(" -> {cause}");
            }
            ExitCode::from(exit_code(&e))
        }
    }
}

fn exit_code(e: &anyhow::Error) -> u8 {
    use meshimg::debian::release::ReleaseError;
    for cause in e.chain() {
        if cause.is::<board::BoardError>() {
            return 3;
        }
        if let Some(l) = cause.downcast_ref::<lock::LockError>() {
            return match l {
                lock::LockError::Release(r) => release_code(r),
                _ => 3,
            };
        }
        if let Some(r) = cause.downcast_ref::<ReleaseError>() {
            return release_code(r);
        }
        if let Some(e) = cause.downcast_ref::<signing::SigningError>() {
            use signing::SigningError::*;
            return match e {
                Verify { .. } | Untrusted { .. } => 4,
                _ => 1,
            };
        }
        if let Some(b) = cause.downcast_ref::<meshos_common::bundle::BundleError>() {
            return if b.kind() == meshos_common::bundle::ErrorKind::Io { 1 } else { 4 };
        }
        if let Some(s) = cause.downcast_ref::<source::SourceError>() {
            use source::SourceError::*;
            return match s {
                TreeMismatch { .. } | Unpack { .. } => 4,
                Fetch { .. } => 5,
                NotLocked { .. } | Invalid { .. } => 3,
                Read { .. } | Io { .. } => 1,
            };
        }
        if let Some(f) = cause.downcast_ref::<meshimg::package_cache::FetchError>() {
            use meshimg::package_cache::FetchError::*;
            return match f {
                HashMismatch { .. } | SizeMismatch { .. } => 4,
                Gone { .. } | Http { .. } => 5,
                Io { .. } => 1,
            };
        }
    }
    1
}

fn release_code(r: &meshimg::debian::release::ReleaseError) -> u8 {
    use meshimg::debian::release::ReleaseError::*;
    match r {
        BadSignature { .. } | IndexMismatch { .. } | NotSigned { .. } | WrongSuite { .. } => 4,
        Http(_) => 5,
        _ => 3,
    }
}

/// Where upstream sources (board-defs/sources/) are looked for before GitHub.
#[derive(clap::Args)]
struct SourcesArg {
    /// A directory of source tarballs (or of directories of them), searched before GitHub:
    /// for machines with no route to it. Each tarball is checked against the lock.
    #[arg(long = "sources", env = "MESHOS_SOURCES", value_name = "DIR")]
    dir: Option<PathBuf>,
}

/// What goes into an image beyond the board: version, signing, trusted keys, extra overlays
/// (shared by `plan` and `build`).
#[derive(clap::Args)]
struct ImageArgs {
    /// Secret key to sign the image with (its public key, KEY.pub, is also trusted by the image).
    #[arg(long, env = "MESHOS_SIGN_KEY", value_name = "KEY")]
    sign_key: Option<PathBuf>,
    /// Also trust this public key (repeatable), beyond board-defs/keys/*.pub.
    #[arg(long = "trust-key", value_name = "PUB")]
    trust_keys: Vec<PathBuf>,
    /// The image's version (default: meshimg's own). Nodes install only newer versions.
    #[arg(long, env = "MESHOS_IMAGE_VERSION", value_name = "VERSION", value_parser = parse_version)]
    image_version: Option<String>,
    /// Lay this directory's files into the root filesystem after overlays/common and
    /// overlays/<board> (repeatable): a site's own files.
    #[arg(long = "overlay", value_name = "DIR")]
    overlays: Vec<PathBuf>,
    /// How many of the trusted keys must have signed a bundle for the image's nodes to install
    /// it (a community's k of n; add signatures with `meshimg sign BUNDLE`).
    #[arg(long, env = "MESHOS_SIGNATURES_REQUIRED", value_name = "K", default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..))]
    signatures_required: u16,
}

fn parse_version(v: &str) -> Result<String, String> {
    let ok = !v.is_empty() && v.starts_with(|c: char| c.is_ascii_digit()) && v.chars().all(|c| c.is_ascii_alphanumeric() || ".-+~".contains(c));
    if ok {
        Ok(v.to_string())
    } else {
        Err(format!("'{v}' is not a version like 1.2.0 (digits first, then letters, digits and . - + ~)"))
    }
}

impl ImageArgs {
    /// The public keys the image will trust.
    fn trusted(&self, root: &std::path::Path) -> Result<Vec<meshos_common::minisign::PublicKey>> {
        let mut extra = self.trust_keys.clone();
        if let Some(k) = &self.sign_key {
            signing::public_of(k)?;
            extra.push(signing::public_path(k));
        }
        Ok(signing::trusted_keys(root, &extra)?)
    }
}

fn load(root: &std::path::Path, name: &str, out: &std::path::Path, keys: &ImageArgs) -> Result<(board::Board, lock::Lock, plan::Plan, PathBuf)> {
    let board_path = board::board_path(root, name);
    let text =
        std::fs::read_to_string(&board_path).with_context(|| format!("{}: cannot read (boards: {})", board_path.display(), board::list(root).join(", ")))?;
    let b = board::Board::parse_file(&text, &board_path)?;
    let lock_path = lock::lock_path(root, name);
    let l = lock::Lock::load(&lock_path, &b, &board_path)?;
    let trusted = keys.trusted(root)?;
    let required = usize::from(keys.signatures_required);
    if required > trusted.len().max(1) {
        anyhow::bail!(
            "--signatures-required {required}, but the image would trust {} key(s); add keys with --trust-key or to {}",
            trusted.len(),
            signing::KEYS_DIR
        );
    }
    let trusted = signing::Trust { keys: trusted, required };
    let version = keys.image_version.as_deref().unwrap_or(plan::VERSION);
    for dir in &keys.overlays {
        if !dir.is_dir() {
            anyhow::bail!("--overlay {}: no such directory", dir.display());
        }
    }
    let p = plan::Plan::new(root, out, &b, &text, &l, &trusted, version, &keys.overlays).context("reading the overlays")?;
    Ok((b, l, p, lock_path))
}

fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Boards => {
            for name in board::list(&cli.root) {
                let b = board::Board::load(&board::board_path(&cli.root, &name))?;
                println!("{:<16} {:<6} {}", b.name, b.arch, b.description);
            }
            Ok(())
        }
        Command::Lock { board: name, cache, sources, allow_older } => {
            let board_path = board::board_path(&cli.root, &name);
            let b = board::Board::load(&board_path)?;
            let log = |m: &str| eprintln!("lock: {m}");
            let path = lock::lock_path(&cli.root, &name);
            let not_before = if allow_older { None } else { lock::NotBefore::read(&path, &b.debian.suite) };
            let mut new = lock::resolve(&b, not_before.as_ref(), &log).with_context(|| format!("locking {}", board_path.display()))?;
            if let Some(set) = &b.cjdns_sources {
                let cache = cache.unwrap_or_else(package_cache::cache_dir);
                new.sources =
                    source::Sources::new(&cache, sources.dir).lock(set, &log).with_context(|| format!("locking {}'s sources", board_path.display()))?;
            }
            lock::write(&path, &new)?;
            let total: u64 = new.packages.iter().map(|p| p.size).sum();
            eprintln!(
                "lock: wrote {} ({} packages, {:.1} MiB, {} {})",
                path.display(),
                new.packages.len(),
                total as f64 / 1048576.0,
                new.suite,
                new.release_date
            );
            Ok(())
        }
        Command::Plan { board: name, json, out, keys } => {
            let (_, _, p, _) = load(&cli.root, &name, &out, &keys)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&p)?);
            } else {
                println!("meshos {} for {} (inputs {})", p.version, p.board, &p.input_id[..16]);
                println!("kernel command line: {}", p.cmdline);
                println!("partitions:");
                for part in &p.layout.partitions {
                    println!("  {:<6} type 0x{:02x}  at {:>5} MiB  {:>5} MiB", part.name, part.kind, part.offset >> 20, part.size >> 20);
                }
                println!("packages: {}", p.packages.iter().map(|x| format!("{} {}", x.name, x.version)).collect::<Vec<_>>().join(", "));
                println!("boot files: {}", p.boot_files.iter().map(|f| f.to.as_str()).collect::<Vec<_>>().join(", "));
                println!("slot a: {}", p.slot_files.join(", "));
                println!("trusted keys: {}", if p.trusted_keys.is_empty() { "none (no upgrades)".to_string() } else { p.trusted_keys.join(", ") });
                println!("output: {}", p.outputs.img_xz.display());
            }
            Ok(())
        }
        Command::Build { board: name, out, cache, json, bundle_only, keys, sources } => {
            let (_, l, p, lock_path) = load(&cli.root, &name, &out, &keys)?;
            let sign_key = keys.sign_key.as_deref().map(signing::open_secret).transpose()?;
            if sign_key.is_none() {
                eprintln!("build: WARNING: unsigned build (no --sign-key or MESHOS_SIGN_KEY): fine for development, not for publishing");
            }
            if p.trusted_keys.is_empty() {
                eprintln!(
                    "build: WARNING: the image trusts no signing key, so its nodes will accept no upgrade bundle; add a .pub to {} or pass --trust-key",
                    signing::KEYS_DIR
                );
            }
            let opts = build::Options {
                root: cli.root.clone(),
                lock_path,
                cache: cache.unwrap_or_else(package_cache::cache_dir),
                firmware_target_dir: cli.root.join("target").join("node-firmware"),
                sign_key,
                sources: sources.dir,
                bundle_only,
            };
            let report = build::build(&l, &p, &opts)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&report.json)?);
            } else {
                let total = report.json["total_seconds"].as_f64().unwrap_or(0.0);
                let signed = report.json["signed_by"].is_string();
                eprintln!("build: done in {total:.1} s");
                match &report.img_xz {
                    Some((img_xz, sha256)) => {
                        let xz = report.json["sizes"]["img_xz"].as_u64().unwrap_or(0);
                        println!("{}  ({:.1} MiB, sha256 {sha256})", img_xz.display(), xz as f64 / 1048576.0);
                        let sig = if signed { ".img.xz.minisig, .bundle.minisig, " } else { "" };
                        println!(
                            "also in {}: .img, .img.xz.sha256, update .bundle, {sig}SBOM (.cdx.json), build report (.build-report.json)",
                            p.outputs.dir.display()
                        );
                    }
                    None => {
                        let bundle = report.json["sizes"]["bundle"].as_u64().unwrap_or(0);
                        println!("{}  ({:.1} MiB; no SD image: --bundle-only)", p.outputs.bundle.display(), bundle as f64 / 1048576.0);
                        let sig = if signed { ".bundle.minisig, " } else { "" };
                        println!("also in {}: {sig}SBOM (.cdx.json), build report (.build-report.json)", p.outputs.dir.display());
                    }
                }
            }
            Ok(())
        }
        Command::Keygen { output, unencrypted, force } => {
            let public = signing::keygen(&output, unencrypted, force)?;
            eprintln!(
                "keygen: wrote {} (secret{}) and {}",
                output.display(),
                if unencrypted { ", UNENCRYPTED" } else { ", encrypted" },
                signing::public_path(&output).display()
            );
            println!("{}", public.id());
            Ok(())
        }
        Command::Sign { file, sign_key } => {
            let key = signing::open_secret(&sign_key)?;
            let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs() as i64).unwrap_or(0);
            if file.extension().is_some_and(|e| e == "bundle") {
                let signers = update_bundle::add_signature(&file, &key, now)?;
                eprintln!("sign: {}: manifest signed by {} key(s): {}", file.display(), signers.len(), signers.join(", "));
            }
            let sig = signing::sign_file(&file, &key, now)?;
            println!("{}", sig.display());
            Ok(())
        }
        Command::Verify { file, pubkeys, sig } => {
            let keys = if pubkeys.is_empty() {
                signing::trusted_keys(&cli.root, &[])?
            } else {
                pubkeys.iter().map(|p| signing::read_public(p)).collect::<Result<Vec<_>, _>>()?
            };
            let sig = sig.unwrap_or_else(|| signing::signature_path(&file));
            let (key, comment) = signing::verify_file(&file, &sig, &keys)?;
            println!("{}: signature good, key {}", file.display(), key.id());
            println!("trusted comment: {comment}");
            if file.extension().is_some_and(|e| e == "bundle") {
                // What a node checks: the manifest's own signature, then every payload byte.
                let f = std::fs::File::open(&file).with_context(|| file.display().to_string())?;
                let b = meshos_common::bundle::open(std::io::BufReader::new(f)).with_context(|| file.display().to_string())?;
                let signers = b.verify(&keys, 1).with_context(|| format!("{}: manifest", file.display()))?.join(", ");
                let (compatible, version, images) = (b.manifest.compatible.clone(), b.manifest.version.clone(), b.manifest.images.len());
                b.stream(|_| Ok(())).with_context(|| file.display().to_string())?;
                println!("bundle: {compatible} {version}, manifest signed by {signers}, {images} images match their hashes");
            }
            Ok(())
        }
        Command::Delta { old, new, json } => {
            let d = update_bundle::Delta::between(&old, &new)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&d)?);
            } else {
                println!("{d}");
            }
            Ok(())
        }
        Command::Serve { bundle, listen } => {
            let offer = meshimg::serve::Offer::open(&bundle)?;
            meshimg::serve::serve(offer, &listen)
        }
        Command::Export { bundle, dir } => {
            let offer = meshimg::serve::Offer::open(&bundle)?;
            let n = offer.export(&dir)?;
            println!("{}: release {}, {n} chunks", dir.display(), offer.manifest_sha256());
            Ok(())
        }
        Command::Qemu { board: name, image, out, forwards, links, boot_files, expect_ready, log, card } => {
            let b = board::Board::load(&board::board_path(&cli.root, &name))?;
            let image = image.unwrap_or_else(|| out.join(&name).join(format!("meshos-{name}-{}.img", plan::VERSION)));
            let work = std::env::temp_dir().join(format!("meshimg-qemu-{}", std::process::id()));
            let opts = qemu::Options {
                image,
                forwards,
                links,
                boot_files,
                expect_ready: expect_ready.map(std::time::Duration::from_secs),
                log,
                card,
                work: work.clone(),
            };
            let booted = qemu::boot(&b, &opts);
            let _ = std::fs::remove_dir_all(&work);
            let booted = booted?;
            if let Some(r) = booted.ready {
                eprintln!("qemu: {} ready after {:.1} s (version {}, slot {})", r.board, booted.seconds, r.version, r.slot);
            }
            Ok(())
        }
    }
}
