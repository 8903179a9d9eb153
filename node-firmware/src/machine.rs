//! The machine meshd runs on: a real board, or a node of the mesh lab (many meshd side by side
//! on one host, each in its own network namespace). Everything meshd does that reaches beyond
//! its own directories and network namespace (the root of the running slot, the card, the
//! kernel command line, the hostname, the kernel's entropy pool, kernel modules, the watchdog,
//! the radios, the reboot) goes through here, so a lab node never changes the host it runs on.

use crate::radio::{self, Radio};
use meshos_common::cmdline;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

/// The process exit status by which a lab node asks the lab for a reboot (EX_TEMPFAIL's
/// neighbour in sysexits.h is taken; this one is free).
pub const LAB_REBOOT_STATUS: i32 = 100;

pub trait Machine: Send + Sync {
    /// The running slot's root file system (`/` on a board).
    fn root(&self) -> &Path;
    /// The kernel command line the boot loader gave this boot.
    fn cmdline(&self) -> Result<String, String>;
    /// The card the node booted from.
    fn boot_disk(&self, cmdline: &str) -> Result<PathBuf, String>;
    /// Whether the data partition is mounted (a health check of the boot).
    fn data_mounted(&self) -> bool;
    fn set_hostname(&self, name: &str);
    /// Whether a saved seed may be credited to the kernel's entropy pool.
    fn may_credit_entropy(&self) -> bool;
    fn load_module(&self, name: &str) -> Result<(), String>;
    /// The hardware watchdog meshd arms, if the machine has one.
    fn watchdog(&self) -> Option<&Path>;
    fn radios(&self) -> Vec<Radio>;
    /// Makes `name`, a gateway tunnel carrying IPv4 between overlay addresses `local` and
    /// `remote`, for the lease of `lease` (both ends know it; crate::gateway).
    fn add_tunnel(&self, name: &str, local: Ipv6Addr, remote: Ipv6Addr, lease: Ipv4Addr) -> Result<(), String>;
    /// Hands the node back to its boot loader. On a board, init takes the system down while
    /// this returns; a lab node's meshd ends here.
    fn reboot(&self) -> Result<(), String>;
}

static CURRENT: OnceLock<Box<dyn Machine>> = OnceLock::new();

/// The machine this meshd runs on: a board unless [`use_lab`] said otherwise at start.
pub fn current() -> &'static dyn Machine {
    CURRENT.get_or_init(|| Box::new(Board)).as_ref()
}

/// Makes this process a lab node whose files are in `dir` (see [`LabNode`]); once, at start.
pub fn use_lab(dir: &Path) -> Result<(), String> {
    let node = LabNode::new(dir)?;
    CURRENT.set(Box::new(node)).map_err(|_| "the machine was chosen twice".to_string())
}

/// A meshos board (or the virtual board in QEMU), booted by U-Boot and our boot script.
pub struct Board;

const WATCHDOG: &str = "/dev/watchdog";

impl Machine for Board {
    fn root(&self) -> &Path {
        Path::new("/")
    }

    fn cmdline(&self) -> Result<String, String> {
        std::fs::read_to_string("/proc/cmdline").map_err(|e| format!("/proc/cmdline: {e}"))
    }

    fn boot_disk(&self, cmdline: &str) -> Result<PathBuf, String> {
        crate::slots::boot_disk(cmdline)
    }

    fn data_mounted(&self) -> bool {
        std::fs::read_to_string("/proc/mounts").unwrap_or_default().lines().any(|l| l.split_whitespace().nth(1) == Some("/data"))
    }

    fn set_hostname(&self, name: &str) {
        let _ = std::fs::write("/proc/sys/kernel/hostname", name);
        let _ = std::fs::write("/etc/hostname", format!("{name}\n"));
    }

    fn may_credit_entropy(&self) -> bool {
        true
    }

    fn load_module(&self, name: &str) -> Result<(), String> {
        crate::command::run("modprobe", &[name]).map(drop)
    }

    fn watchdog(&self) -> Option<&Path> {
        Some(Path::new(WATCHDOG))
    }

    fn radios(&self) -> Vec<Radio> {
        radio::scan()
    }

    /// IPv4 in IPv6 (`ip6tnl`, mode `ipip6`): 40 bytes a packet.
    fn add_tunnel(&self, name: &str, local: Ipv6Addr, remote: Ipv6Addr, _: Ipv4Addr) -> Result<(), String> {
        let _ = self.load_module("ip6_tunnel");
        let (local, remote) = (local.to_string(), remote.to_string());
        crate::command::run("ip", &["-6", "tunnel", "add", name, "mode", "ipip6", "local", &local, "remote", &remote, "encaplimit", "none"]).map(drop)
    }

    fn reboot(&self) -> Result<(), String> {
        crate::watchdog::reboot()
    }
}

/// A node of the mesh lab. Its directory holds what a board keeps on its card and in memory:
/// - `card`, `card2`, `card3`: the card's first MiB (the boot state record) and the root
///   slots A and B, as the partition names of a disk `card` follow;
/// - `boot/`, `data/`, `run/`: meshd's directories (the boot partition, its state, its tmpfs);
/// - `cmdline`: what the lab's boot loader passed this boot (`meshos.slot=`, `meshos.disk=`);
/// - `root/`: the files of the running slot's root that meshd reads (os-release, the trusted
///   keys), taken from the slot by the lab's boot loader.
///
/// A lab node has no radios, watchdog, hostname or entropy pool of its own and loads no
/// module; its reboot ends meshd with [`LAB_REBOOT_STATUS`], and the lab boots it again. Its
/// gateway tunnels are VXLAN, which the lab's hosts have built in, where boards use `ip6tnl`,
/// a module those kernels lack (docs/lab.md).
pub struct LabNode {
    dir: PathBuf,
    root: PathBuf,
}

impl LabNode {
    fn new(dir: &Path) -> Result<LabNode, String> {
        let dir = dir.canonicalize().map_err(|e| format!("lab node {}: {e}", dir.display()))?;
        for needed in ["card", "cmdline", "root/etc/os-release"] {
            if !dir.join(needed).exists() {
                return Err(format!("lab node {}: no {needed} (the lab's boot loader makes it; start lab nodes with meshlab)", dir.display()));
            }
        }
        Ok(LabNode { root: dir.join("root"), dir })
    }
}

impl Machine for LabNode {
    fn root(&self) -> &Path {
        &self.root
    }

    fn cmdline(&self) -> Result<String, String> {
        let path = self.dir.join("cmdline");
        std::fs::read_to_string(&path).map_err(|e| format!("{}: {e}", path.display()))
    }

    fn boot_disk(&self, cmdline_text: &str) -> Result<PathBuf, String> {
        cmdline::value(cmdline_text, cmdline::DISK_KEY).ok_or("no meshos.disk= on the lab node's command line")?;
        Ok(self.dir.join("card"))
    }

    fn data_mounted(&self) -> bool {
        self.dir.join("data").is_dir()
    }

    fn set_hostname(&self, _: &str) {}

    fn may_credit_entropy(&self) -> bool {
        false
    }

    fn load_module(&self, name: &str) -> Result<(), String> {
        Err(format!("a lab node loads no kernel module ({name}); load it on the host before starting the lab"))
    }

    fn watchdog(&self) -> Option<&Path> {
        None
    }

    fn radios(&self) -> Vec<Radio> {
        Vec::new()
    }

    /// IPv4 over Ethernet in UDP (VXLAN) to the same addresses. Where a board's tunnel takes
    /// any packet routed into it, an Ethernet one asks for the next hop by ARP: each end answers
    /// for every address it routes elsewhere (proxy ARP), so a node's default route into the
    /// tunnel reaches the gateway as it does on a board. The lease's address numbers the tunnel
    /// (its VNI), so that each of a gateway's tunnels has its own.
    fn add_tunnel(&self, name: &str, local: Ipv6Addr, remote: Ipv6Addr, lease: Ipv4Addr) -> Result<(), String> {
        let vni = (u32::from(lease) & 0x00ff_ffff).to_string();
        let (local, remote) = (local.to_string(), remote.to_string());
        crate::command::run("ip", &["link", "add", name, "type", "vxlan", "id", &vni, "local", &local, "remote", &remote, "dstport", "4789"])?;
        crate::gateway::sysctl(&format!("net/ipv4/conf/{name}/proxy_arp"), "1")
    }

    fn reboot(&self) -> Result<(), String> {
        logln!("meshd: lab node: rebooting (the lab boots the node again)");
        std::process::exit(LAB_REBOOT_STATUS)
    }
}

/// A path of the running slot's root file system: `/etc/os-release` is `<root>/etc/os-release`.
pub fn in_root(absolute: &str) -> PathBuf {
    current().root().join(absolute.trim_start_matches('/'))
}
