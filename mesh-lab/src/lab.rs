//! A running lab: the topology's nodes with their cards, their namespaces and links, and
//! their meshd. Dropping it (at the end, on an error, on Ctrl-C) powers every node off and
//! removes everything the lab made but the report and the console logs.

use crate::net;
use crate::node::{self, LabNode, Launch};
use crate::release::{self, Roots};
use crate::topology::{Router, Topology};
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

pub struct Options {
    pub meshd: PathBuf,
    /// The release every card starts with (slot A).
    pub release: PathBuf,
    pub boot_time: Duration,
    /// Where the report and logs go; the nodes' files are in `<out>/work` while the lab runs.
    pub out: PathBuf,
}

pub struct Lab {
    pub topology: Topology,
    pub nodes: Vec<LabNode>,
    pub neighbours: Vec<Vec<usize>>,
    pub launch: Launch,
    pub roots: Roots,
    pub release: release::Laid,
    pub started: Instant,
    /// Seconds from the lab's start until its nodes could be powered on (cards, network).
    pub setup_s: f64,
    out: PathBuf,
    work: PathBuf,
    /// Dropped last: the namespaces are gone before another lab may start.
    _machine: net::MachineLock,
}

static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    STOP.store(true, Ordering::SeqCst);
}

/// Whether Ctrl-C (or SIGTERM, SIGHUP) asked the lab to stop.
pub fn stopped() -> bool {
    STOP.load(Ordering::SeqCst)
}

fn catch_signals() {
    for sig in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP] {
        // SAFETY: the handler only stores to an atomic.
        unsafe { libc::signal(sig, on_signal as *const () as libc::sighandler_t) };
    }
}

/// What every lab node's mesh.yaml says: the lab's links are wired peering links.
pub const MESH_YAML: &str = "apiVersion: meshos/v1\nmesh:\n  id: meshlab\nwired:\n  peering: [\"lab*\"]\n  dhcp: []\n";

impl Lab {
    /// Lays out the cards and makes the network; the nodes are still off.
    pub fn create(topology: Topology, opts: &Options) -> Result<Lab, String> {
        // SAFETY: geteuid only reads the process's user id.
        if unsafe { libc::geteuid() } != 0 {
            return Err("the lab makes network namespaces and must run as root (sudo make lab …)".into());
        }
        if let Some(n) = topology.nodes.iter().find(|n| n.router == Router::Cjdns) {
            return Err(format!("node {} asks for router: cjdns; the lab runs Yggdrasil nodes so far", n.id));
        }
        if !opts.meshd.is_file() {
            return Err(format!("{}: no meshd built for this machine; run 'cargo build --release -p meshd'", opts.meshd.display()));
        }
        let begun = Instant::now();
        let machine = net::lock_machine()?;
        catch_signals();
        let (spaces, killed) = net::clean();
        if spaces > 0 {
            eprintln!("meshlab: removed {spaces} namespace(s) and {killed} process(es) left by an earlier run");
        }
        let work = opts.out.join("work");
        let _ = fs::remove_dir_all(&work);
        fs::create_dir_all(work.join("nodes")).map_err(|e| format!("{}: {e}", work.display()))?;
        // Absolute: a node's root is a symbolic link into it.
        let work = work.canonicalize().map_err(|e| format!("{}: {e}", work.display()))?;
        let template = work.join("template");
        let release = release::lay_out(&opts.release, &template)?;
        // Room for a release twice this size, as a card's partitions leave room to grow.
        let partition_size = (release.root_size * 2).div_ceil(1 << 20) << 20;
        let started = Instant::now();
        let neighbours = topology.neighbours();
        let mut nodes = Vec::new();
        for n in &topology.nodes {
            let mut node = LabNode::new(&n.id, net::namespace(&n.id), work.join("nodes").join(&n.id));
            if let Some(line) = &n.run {
                node::make_command_node(&mut node, line).map_err(|e| format!("node {}: {e}", n.id))?;
            } else {
                node::make_card(&node, &template, partition_size)?;
                fs::write(node.dir.join("boot/mesh.yaml"), MESH_YAML).map_err(|e| format!("{}: {e}", node.dir.display()))?;
            }
            nodes.push(node);
            if stopped() {
                return Err("interrupted".into());
            }
        }
        eprintln!(
            "meshlab: {} cards laid out with {} ({} s)",
            nodes.iter().filter(|n| n.command.is_none()).count(),
            release.manifest.version,
            started.elapsed().as_secs()
        );
        let meshd = opts.meshd.canonicalize().map_err(|e| format!("{}: {e}", opts.meshd.display()))?;
        let launch = Launch { meshd, path: node_path(&work)?, boot_time: opts.boot_time, broken: None, works_on: Vec::new() };
        let mut lab = Lab {
            topology,
            nodes,
            neighbours,
            launch,
            roots: Roots::new(work.join("roots")),
            release,
            started,
            setup_s: 0.0,
            out: opts.out.clone(),
            work,
            _machine: machine,
        };
        // From here on, Drop removes what is made.
        net::create_namespaces(&lab.topology)?;
        let total = lab.topology.links.len();
        net::create_links(&lab.topology, |done| {
            if done % 100 == 0 || done == total {
                eprintln!("meshlab: links {done}/{total}");
            }
        })?;
        lab.started = Instant::now();
        lab.setup_s = begun.elapsed().as_secs_f64();
        Ok(lab)
    }

    /// Puts `bundle` in node `i`'s `updates/` (a person with a card reader would).
    pub fn give_update(&self, i: usize, bundle: &Path) -> Result<(), String> {
        let dir = self.nodes[i].dir.join("boot/updates");
        fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        let name = bundle.file_name().ok_or("the update has no file name")?;
        fs::copy(bundle, dir.join(name)).map(drop).map_err(|e| format!("{}: {e}", dir.display()))
    }

    /// Marks release `version` broken but on the nodes `works_on`: a node that boots it finds a
    /// `yggdrasil` that fails at once, as a release whose router never starts would have it.
    pub fn mark_broken(&mut self, version: &str, works_on: &[usize]) -> Result<(), String> {
        use std::os::unix::fs::PermissionsExt;
        let bin = self.work.join("broken-bin");
        let router = bin.join("yggdrasil");
        fs::create_dir_all(&bin)
            .and_then(|()| {
                fs::write(&router, "#!/bin/sh\necho \"yggdrasil: this release is marked broken (meshlab): its router does not start\" >&2\nexit 1\n")
            })
            .and_then(|()| fs::set_permissions(&router, fs::Permissions::from_mode(0o755)))
            .map_err(|e| format!("{}: {e}", router.display()))?;
        self.launch.broken = Some((version.to_string(), bin));
        self.launch.works_on = works_on.iter().map(|&i| self.nodes[i].id.clone()).collect();
        Ok(())
    }

    /// Switches node `i` off and on again (its boot takes the lab's boot time).
    pub fn power_cycle(&mut self, i: usize) {
        self.nodes[i].power_off();
        self.nodes[i].power_on(&mut self.roots, self.launch.boot_time);
    }

    /// Where the nodes' files are while the lab runs (removed with it).
    pub fn work_dir(&self) -> &Path {
        &self.work
    }

    /// Replaces node `i`'s mesh.yaml (before it is powered on).
    pub fn set_config(&self, i: usize, text: &str) -> Result<(), String> {
        let path = self.nodes[i].dir.join("boot/mesh.yaml");
        fs::write(&path, text).map_err(|e| format!("{}: {e}", path.display()))
    }

    /// Powers every node on at once; the first boot takes no boot time (the lab waited for
    /// the cards).
    pub fn power_on_all(&mut self) {
        for n in &mut self.nodes {
            n.power_on(&mut self.roots, Duration::ZERO);
        }
    }

    /// One step of every node's life (boot, start, reboot).
    pub fn tick(&mut self) {
        for n in &mut self.nodes {
            n.tick(&self.launch, &mut self.roots);
        }
    }

    pub fn seconds(&self) -> f64 {
        self.started.elapsed().as_secs_f64()
    }
}

/// The PATH of every node's meshd: the host's tools, and before them the lab's `bin/` with
/// `udhcpc` (busybox's, as on the boards) when the host has busybox.
fn node_path(work: &Path) -> Result<String, String> {
    const HOST: &str = "/usr/sbin:/usr/bin:/sbin:/bin";
    let Some(busybox) = HOST.split(':').map(|d| Path::new(d).join("busybox")).find(|p| p.is_file()) else { return Ok(HOST.into()) };
    let bin = work.join("bin");
    fs::create_dir_all(&bin).and_then(|()| std::os::unix::fs::symlink(&busybox, bin.join("udhcpc"))).map_err(|e| format!("{}: {e}", bin.display()))?;
    Ok(format!("{}:{HOST}", bin.display()))
}

/// Whether the nodes have a DHCP client for their uplinks.
pub fn has_dhcp_client(launch: &Launch) -> bool {
    launch.path.split(':').any(|d| Path::new(d).join("udhcpc").exists())
}

impl Drop for Lab {
    fn drop(&mut self) {
        for n in &mut self.nodes {
            n.power_off();
        }
        let (spaces, _) = net::clean();
        let logs = self.out.join("logs");
        let _ = fs::remove_dir_all(&logs);
        let _ = fs::create_dir_all(&logs);
        for n in &self.nodes {
            let _ = fs::rename(n.dir.join("console.log"), logs.join(format!("{}.log", n.id)));
        }
        let _ = fs::remove_dir_all(&self.work);
        eprintln!("meshlab: removed {spaces} namespaces and the nodes' cards; console logs in {}", logs.display());
    }
}
