//! A lab node: the files a board keeps on its card (meshd's `LabNode` reads them), the boot
//! loader that picks its slot from the boot state record with the boot script's own rule
//! (`meshos_common::boot_state::boot`), and its meshd: started in the node's network namespace
//! and in PID, mount and UTS namespaces of its own, so that its end takes its router with it
//! and nothing it does reaches the host.
//!
//! A node the topology gives a command (`run`) has no card: the lab starts its Yggdrasil, with
//! the config meshd would write, and the command beside it, in the same namespaces.

use crate::release::Roots;
use meshos_common::boot_state::{self, Slot};
use meshos_common::bundle::{self, SLOT_HEADER_FILE};
use std::fs::{self, File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// meshd's exit status for "reboot me" (node-firmware/src/machine.rs).
pub const REBOOT_STATUS: i32 = 100;
/// How long busybox init waits before it starts a crashed meshd again.
const RESPAWN_AFTER: Duration = Duration::from_secs(1);

pub enum Power {
    Off,
    /// The boot loader ran; meshd starts at `until` (the kernel's boot, in the lab a wait).
    Booting {
        until: Instant,
    },
    Running {
        child: Child,
        since: Instant,
    },
}

pub struct LabNode {
    pub id: String,
    pub namespace: String,
    pub dir: PathBuf,
    pub power: Power,
    pub boots: u32,
    /// meshd ends that were not a reboot (init starts it again).
    pub crashes: u32,
    /// The largest resident set meshd reached (VmHWM), over every start.
    pub peak_rss_kib: u64,
    /// The slot the boot loader chose last, and the version of the release it holds.
    pub slot: Option<Slot>,
    pub version: Option<String>,
    /// Boots into a release the scenario marked broken, and when the first was.
    pub broken_boots: u32,
    pub first_broken_boot: Option<Instant>,
    /// Whether that slot holds a release that starts (else the node resets after its boot
    /// time, and the next boot counts another attempt, as `panic=10` makes a board do).
    bootable: bool,
    /// Of the process in the node's namespace that stands for a board's init.
    meshd_pid: Option<i32>,
    /// The command this node runs instead of meshd, and its router's overlay address.
    pub command: Option<NodeCommand>,
}

/// A node that runs a command instead of meshd (a monitoring host, a laptop, a misbehaving
/// neighbour). The command gets `MESHLAB_NODE` (its id), `MESHLAB_ADDRESS` (its overlay
/// address) and `MESHLAB_DIR` (a directory of its own) in its environment.
#[derive(Debug, Clone)]
pub struct NodeCommand {
    pub line: String,
    pub address: String,
}

/// What the lab gives every node's meshd: the program, the directory with the routers, and
/// how long a boot takes.
pub struct Launch {
    pub meshd: PathBuf,
    pub path: String,
    pub boot_time: Duration,
    /// A release marked broken: its version, and a directory put first in meshd's PATH when a
    /// node boots it (its `yggdrasil` fails at once: a release whose router never starts).
    pub broken: Option<(String, PathBuf)>,
    /// The nodes (by id) on which that release works all the same: the canaries it proves
    /// itself on before it fails further on.
    pub works_on: Vec<String>,
}

impl LabNode {
    pub fn new(id: &str, namespace: String, dir: PathBuf) -> LabNode {
        LabNode {
            id: id.into(),
            namespace,
            dir,
            power: Power::Off,
            boots: 0,
            crashes: 0,
            peak_rss_kib: 0,
            slot: None,
            version: None,
            broken_boots: 0,
            first_broken_boot: None,
            bootable: false,
            meshd_pid: None,
            command: None,
        }
    }

    pub fn card(&self) -> PathBuf {
        self.dir.join("card")
    }

    /// The file of slot `slot`'s root partition (as meshd names partitions of a disk `card`).
    pub fn partition(&self, slot: Slot) -> PathBuf {
        self.dir.join(match slot {
            Slot::A => "card2",
            Slot::B => "card3",
        })
    }

    pub fn is_running(&self) -> bool {
        matches!(self.power, Power::Running { .. })
    }

    /// Up: meshd runs and has published its status this boot (a command node: its command runs).
    pub fn is_up(&self) -> bool {
        self.is_running() && (self.command.is_some() || self.dir.join("run/status.json").exists())
    }

    /// Powers the node on: the boot loader runs now, meshd after `boot_time`.
    pub fn power_on(&mut self, roots: &mut Roots, boot_time: Duration) {
        if self.command.is_some() {
            self.boots += 1;
            self.bootable = true;
        } else {
            self.boot(roots);
        }
        self.power = Power::Booting { until: Instant::now() + boot_time };
    }

    /// Cuts the power: meshd and everything in its namespace end at once.
    pub fn power_off(&mut self) {
        if let Power::Running { child, .. } = &mut self.power {
            let _ = child.kill();
            let _ = child.wait();
        }
        self.power = Power::Off;
        self.meshd_pid = None;
    }

    /// What U-Boot and our boot script do: count the attempt in the record on the card, pick
    /// the slot, "mount" its root (the files meshd reads from it) and pass the command line.
    /// The tmpfs of the last boot is gone.
    fn boot(&mut self, roots: &mut Roots) {
        self.boots += 1;
        let _ = fs::remove_dir_all(self.dir.join("run"));
        let _ = fs::remove_file(self.dir.join("root"));
        let slot = match self.count_attempt() {
            Ok(slot) => slot,
            Err(e) => {
                self.console(&format!("lab boot loader: {e}"));
                return;
            }
        };
        self.slot = Some(slot);
        let mounted = self.mount_root(slot, roots);
        self.bootable = mounted.is_ok();
        self.version = mounted.as_ref().ok().cloned();
        match mounted {
            Ok(version) => self.console(&format!("lab boot loader: booting slot {} ({version})", slot.lower())),
            // Like a slot whose kernel does not start: meshd will not come up, and the lab
            // resets the node after its health timeout so that the attempt counts.
            Err(e) => self.console(&format!("lab boot loader: slot {} does not boot: {e}", slot.lower())),
        }
        let cmdline = format!("meshos.slot={} meshos.disk={}\n", slot.lower(), self.disk_signature());
        if let Err(e) = fs::write(self.dir.join("cmdline"), cmdline) {
            self.console(&format!("lab boot loader: {e}"));
        }
    }

    fn disk_signature(&self) -> String {
        let h = meshos_common::chunks::sha256_hex(self.id.as_bytes());
        h[..8].to_string()
    }

    fn count_attempt(&self) -> Result<Slot, String> {
        let card = self.card();
        let f = OpenOptions::new().read(true).write(true).open(&card).map_err(|e| format!("{}: {e}", card.display()))?;
        let mut copies = [[0u8; boot_state::SIZE]; 2];
        for (i, sector) in boot_state::SECTORS.iter().enumerate() {
            f.read_exact_at(&mut copies[i], sector * 512).map_err(|e| format!("{}: {e}", card.display()))?;
        }
        let (slot, next, older) = boot_state::boot([&copies[0], &copies[1]]);
        f.write_all_at(&next.encode(), boot_state::SECTORS[older] * 512).and_then(|()| f.sync_data()).map_err(|e| format!("{}: {e}", card.display()))?;
        Ok(slot)
    }

    /// Links `root` to the files of the slot's root image; returns the release's version.
    fn mount_root(&self, slot: Slot, roots: &mut Roots) -> Result<String, String> {
        let header_path = self.dir.join("boot").join(slot.lower()).join(SLOT_HEADER_FILE);
        let header = fs::read(&header_path).map_err(|e| format!("{}: {e}", header_path.display()))?;
        let opened = bundle::open(&header[..]).map_err(|e| format!("{}: {e}", header_path.display()))?;
        let root = opened.manifest.images.iter().find(|i| i.name == "root").ok_or("its release has no root image")?;
        let tree = roots.extract(&root.sha256, &self.partition(slot))?;
        std::os::unix::fs::symlink(&tree, self.dir.join("root")).map_err(|e| format!("{}: {e}", self.dir.join("root").display()))?;
        Ok(opened.manifest.version)
    }

    /// Appends a line to the node's console log.
    pub fn console(&self, line: &str) {
        use std::io::Write;
        if let Ok(mut f) = OpenOptions::new().create(true).append(true).open(self.dir.join("console.log")) {
            let _ = writeln!(f, "{line}");
        }
    }

    /// Moves the node along: starts meshd when its boot is done, boots it again when meshd
    /// asked for a reboot, starts a crashed meshd again (as init does).
    pub fn tick(&mut self, launch: &Launch, roots: &mut Roots) {
        match &mut self.power {
            Power::Off => {}
            Power::Booting { until } if Instant::now() < *until => {}
            Power::Booting { .. } if !self.bootable => {
                self.boot(roots);
                self.power = Power::Booting { until: Instant::now() + launch.boot_time };
            }
            Power::Booting { .. } => match self.start(launch) {
                Ok(child) => {
                    if self.broken(launch).is_some() {
                        self.broken_boots += 1;
                        self.first_broken_boot.get_or_insert_with(Instant::now);
                    }
                    self.meshd_pid = None;
                    self.power = Power::Running { child, since: Instant::now() };
                }
                Err(e) => {
                    self.console(&format!("lab: starting meshd: {e}"));
                    self.power = Power::Booting { until: Instant::now() + launch.boot_time };
                }
            },
            Power::Running { child, since } => {
                let Ok(Some(status)) = child.try_wait() else { return };
                let ran = since.elapsed();
                self.meshd_pid = None;
                if status.code() == Some(REBOOT_STATUS) && self.command.is_none() {
                    self.boot(roots);
                    self.power = Power::Booting { until: Instant::now() + launch.boot_time };
                } else {
                    self.crashes += 1;
                    let what = if self.command.is_some() { "the command" } else { "meshd" };
                    self.console(&format!("lab: {what} ended ({status}) after {} s; init starts it again", ran.as_secs()));
                    self.power = Power::Booting { until: Instant::now() + RESPAWN_AFTER };
                }
            }
        }
    }

    /// The broken release, if this node's slot holds it.
    fn broken<'a>(&self, launch: &'a Launch) -> Option<&'a (String, PathBuf)> {
        launch.broken.as_ref().filter(|(v, _)| self.command.is_none() && self.version.as_ref() == Some(v) && !launch.works_on.contains(&self.id))
    }

    fn start(&self, launch: &Launch) -> Result<Child, String> {
        let console = OpenOptions::new().create(true).append(true).open(self.dir.join("console.log")).map_err(|e| format!("console.log: {e}"))?;
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.namespace, "unshare", "--pid", "--fork", "--kill-child", "--mount-proc", "--uts", "--"]);
        cmd.env_clear().env("PATH", &launch.path).env("LANG", "C.UTF-8");
        match &self.command {
            // meshd, with the node's own resolv.conf over the host's (its uplink's DHCP client
            // writes the file, as on a board): nothing it writes reaches the host.
            None => {
                cmd.args(["sh", "-c", r#"mount --bind "$0" /etc/resolv.conf && exec "$@""#]).arg(self.dir.join("resolv.conf"));
                cmd.arg(&launch.meshd).args(["run", "--lab"]).arg(&self.dir);
                if let Some((version, bin)) = self.broken(launch) {
                    self.console(&format!("lab: {version} is marked broken: its router does not start"));
                    cmd.env("PATH", format!("{}:{}", bin.display(), launch.path));
                }
            }
            // The router in the background, the command in the foreground as the namespace's
            // first process: its end ends the router too.
            Some(c) => {
                let script = r#"yggdrasil -useconffile "$MESHLAB_DIR/run/yggdrasil.conf" -loglevel warn & exec sh -c "$1""#;
                cmd.args(["sh", "-c", script, "sh", &c.line]);
                cmd.env("MESHLAB_NODE", &self.id).env("MESHLAB_ADDRESS", &c.address).env("MESHLAB_DIR", &self.dir);
            }
        }
        cmd.stdin(Stdio::null()).stdout(console.try_clone().map_err(|e| e.to_string())?).stderr(console);
        // If the lab dies (even by SIGKILL), unshare gets SIGKILL, and --kill-child passes it
        // to meshd, whose end takes every process of its PID namespace with it.
        crate::net::end_with_lab(&mut cmd);
        cmd.spawn().map_err(|e| format!("ip netns exec: {e}"))
    }

    /// Samples meshd's peak resident memory (VmHWM of the process unshare started).
    pub fn sample_memory(&mut self) {
        let Power::Running { child, .. } = &self.power else { return };
        if self.command.is_some() {
            return;
        }
        if self.meshd_pid.is_none() {
            let unshare = child.id();
            let children = fs::read_to_string(format!("/proc/{unshare}/task/{unshare}/children")).unwrap_or_default();
            self.meshd_pid = children.split_whitespace().next().and_then(|p| p.parse().ok());
        }
        let Some(pid) = self.meshd_pid else { return };
        let status = fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
        if let Some(kib) = status.lines().find(|l| l.starts_with("VmHWM:")).and_then(|l| l.split_whitespace().nth(1)).and_then(|v| v.parse::<u64>().ok()) {
            self.peak_rss_kib = self.peak_rss_kib.max(kib);
        }
    }

    /// The status meshd published last this boot.
    pub fn status(&self) -> Option<serde_json::Value> {
        let text = fs::read_to_string(self.dir.join("run/status.json")).ok()?;
        serde_json::from_str(&text).ok()
    }

    /// The versions of the releases in the node's slots, from their signed headers on the
    /// card (not from meshd's word).
    pub fn slot_versions(&self) -> Vec<String> {
        [Slot::A, Slot::B]
            .iter()
            .filter_map(|slot| fs::read(self.dir.join("boot").join(slot.lower()).join(SLOT_HEADER_FILE)).ok())
            .filter_map(|header| bundle::open(&header[..]).ok().map(|b| b.manifest.version))
            .collect()
    }

    /// meshd's record of its last install (on the data partition).
    pub fn install_record(&self) -> Option<serde_json::Value> {
        let text = fs::read_to_string(self.dir.join("data/upgrade.json")).ok()?;
        serde_json::from_str(&text).ok()
    }

    /// The overlay router's peers that are up, by overlay address (from Yggdrasil's admin
    /// socket in the node's run directory, which the host reaches as a file).
    pub fn router_peers(&self) -> Vec<String> {
        use std::io::{Read, Write};
        let socket = self.dir.join("run/yggdrasil.sock");
        let Ok(mut s) = std::os::unix::net::UnixStream::connect(&socket) else { return Vec::new() };
        let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
        if s.write_all(br#"{"request":"getpeers"}"#).is_err() {
            return Vec::new();
        }
        let mut reply = String::new();
        let _ = s.read_to_string(&mut reply);
        let v: serde_json::Value = serde_json::from_str(&reply).unwrap_or_default();
        v["response"]["peers"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|p| p["up"].as_bool().unwrap_or(false))
            .filter_map(|p| p["address"].as_str().map(String::from))
            .collect()
    }
}

/// Makes a node's card and boot partition: an empty boot state record (the first boot starts
/// slot A, as a fresh image does), slot A as laid out from the release, slot B empty.
pub fn make_card(node: &LabNode, template: &Path, partition_size: u64) -> Result<(), String> {
    let err = |p: &Path, e: std::io::Error| format!("{}: {e}", p.display());
    fs::create_dir_all(node.dir.join("data")).map_err(|e| err(&node.dir, e))?;
    let card = node.card();
    File::create(&card).and_then(|f| f.set_len(1 << 20)).map_err(|e| err(&card, e))?;
    let a = node.partition(Slot::A);
    fs::copy(template.join("card2"), &a).and_then(|_| OpenOptions::new().write(true).open(&a)?.set_len(partition_size)).map_err(|e| err(&a, e))?;
    let b = node.partition(Slot::B);
    File::create(&b).and_then(|f| f.set_len(partition_size)).map_err(|e| err(&b, e))?;
    File::create(node.dir.join("resolv.conf")).map_err(|e| err(&node.dir, e))?;
    copy_tree(&template.join("boot"), &node.dir.join("boot"))
}

/// Prepares a node that runs `line` instead of meshd: its Yggdrasil's config, as meshd writes
/// it on a lab node (multicast peering on the lab's links, the admin socket in `run/`), with
/// keys of its own; returns the node's overlay address.
pub fn make_command_node(node: &mut LabNode, line: &str) -> Result<(), String> {
    let run = node.dir.join("run");
    fs::create_dir_all(&run).map_err(|e| format!("{}: {e}", run.display()))?;
    let out = |args: &[&str]| -> Result<Vec<u8>, String> {
        let o = Command::new("yggdrasil").args(args).output().map_err(|e| format!("yggdrasil: {e} (is it installed? ci/setup-host.sh installs it)"))?;
        if o.status.success() {
            Ok(o.stdout)
        } else {
            Err(format!("yggdrasil {}: {}", args.join(" "), String::from_utf8_lossy(&o.stderr).trim()))
        }
    };
    let mut conf: serde_json::Value = serde_json::from_slice(&out(&["-genconf", "-json"])?).map_err(|e| format!("yggdrasil -genconf: {e}"))?;
    let socket = run.join("yggdrasil.sock");
    for (key, value) in [
        ("Peers", serde_json::json!([])),
        ("Listen", serde_json::json!([])),
        ("AdminListen", serde_json::json!(format!("unix://{}", socket.display()))),
        ("MulticastInterfaces", serde_json::json!([{"Regex": "^lab.*$", "Beacon": true, "Listen": true, "Port": 0, "Priority": 0, "Password": ""}])),
        ("IfName", serde_json::json!("ygg0")),
        ("NodeInfo", serde_json::json!({"name": format!("meshlab-{}", node.id)})),
    ] {
        conf[key] = value;
    }
    let path = run.join("yggdrasil.conf");
    fs::write(&path, conf.to_string()).map_err(|e| format!("{}: {e}", path.display()))?;
    let address = String::from_utf8_lossy(&out(&["-useconffile", &path.display().to_string(), "-address"])?).trim().to_string();
    node.command = Some(NodeCommand { line: line.to_string(), address });
    Ok(())
}

fn copy_tree(from: &Path, to: &Path) -> Result<(), String> {
    fs::create_dir_all(to).map_err(|e| format!("{}: {e}", to.display()))?;
    for entry in fs::read_dir(from).map_err(|e| format!("{}: {e}", from.display()))?.flatten() {
        let target = to.join(entry.file_name());
        if entry.path().is_dir() {
            copy_tree(&entry.path(), &target)?;
        } else {
            fs::copy(entry.path(), &target).map_err(|e| format!("{}: {e}", target.display()))?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use meshos_common::boot_state::BootState;

    fn record(card: &Path) -> BootState {
        let f = File::open(card).unwrap();
        let mut copies = [[0u8; boot_state::SIZE]; 2];
        for (i, s) in boot_state::SECTORS.iter().enumerate() {
            f.read_exact_at(&mut copies[i], s * 512).unwrap();
        }
        BootState::newest([&copies[0], &copies[1]]).unwrap().0
    }

    #[test]
    fn each_boot_counts_an_attempt_and_a_slot_without_a_release_does_not_start() {
        let dir = tempfile::tempdir().unwrap();
        let mut node = LabNode::new("7", "meshlab-7".into(), dir.path().to_path_buf());
        File::create(node.card()).unwrap().set_len(1 << 20).unwrap();
        let mut roots = Roots::new(dir.path().join("roots"));
        node.power_on(&mut roots, Duration::from_secs(20));
        assert_eq!((node.slot, node.bootable, node.boots), (Some(Slot::A), false, 1));
        assert_eq!(record(&node.card()), BootState { order: vec![Slot::A], a_left: 2, b_left: 0, seq: 1 });
        let cmdline = fs::read_to_string(dir.path().join("cmdline")).unwrap();
        assert!(cmdline.starts_with("meshos.slot=a meshos.disk="), "{cmdline}");
        let console = fs::read_to_string(dir.path().join("console.log")).unwrap();
        assert!(console.contains("slot a does not boot") && console.contains(SLOT_HEADER_FILE), "{console}");
        // The boot time passes: the node resets and the next boot counts another attempt.
        let launch = Launch { meshd: "/nonexistent".into(), path: String::new(), boot_time: Duration::ZERO, broken: None, works_on: Vec::new() };
        node.power = Power::Booting { until: Instant::now() };
        node.tick(&launch, &mut roots);
        assert_eq!((node.boots, record(&node.card()).a_left), (2, 1));
    }
}
