//! Upgrades that spread through the mesh by themselves. Every node announces in
//! `/nodeinfo.json` the releases its slots hold and what its upgrade is doing; this agent reads
//! its overlay neighbours' announcements and, when one offers a newer release for this board,
//! installs it from them (crate::chunk_fetch: only the chunks it lacks, signature first).
//!
//! Then it reboots into it only when its neighbourhood allows, so the mesh is never cut in two
//! by an upgrade: not while a neighbour is rebooting, on trial, or silent (a neighbour seen in
//! the last minutes that does not answer may be rebooting). A node that wants to reboot first
//! says so (`rebooting`), waits a random while, and looks again: if a neighbour said the same,
//! the one with the lower overlay address goes first and the other waits. No coordinator, no
//! clock: only what each node announces.
//!
//! A release that failed its trial here (rolled back) or was refused (signature, board) is not
//! tried again; only a newer one is.

use crate::chunk_fetch;
use crate::held::Shelf;
use crate::router;
use crate::upgrade::{self, Step, Target};
use meshos_common::boot_state::Slot;
use meshos_common::bundle::{newer, ErrorKind};
use meshos_common::minisign::PublicKey;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// What the upgrade agent is doing, as announced to neighbours.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    /// Running a committed slot; nothing newer known.
    #[default]
    Idle,
    /// Fetching a release's chunks and writing the other slot.
    Fetching,
    /// A newer release waits in the other slot for the neighbourhood to allow a reboot.
    Staged,
    /// About to reboot into the staged release (neighbours hold back).
    Rebooting,
    /// Running a new slot that is not yet committed (neighbours hold back).
    Trial,
}

/// A release a slot holds, as announced.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Release {
    pub version: String,
    /// sha256 of its signed manifest: fetch its header at `/header/<manifest>`.
    pub manifest: String,
    pub slot: String,
    pub running: bool,
}

/// The agent's state, shared with the daemon (status, metrics, nodeinfo).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Rollout {
    pub phase: Phase,
    pub releases: Vec<Release>,
    /// Why it waits, or what went wrong last.
    pub note: Option<String>,
    /// The last install's record (kept on the data partition).
    pub last_install: Option<upgrade::Record>,
}

/// What the agent needs of the node.
pub struct Agent {
    pub boot_dir: PathBuf,
    pub state_dir: PathBuf,
    pub run_dir: PathBuf,
    pub disk: PathBuf,
    pub running: Slot,
    pub board: String,
    pub version: String,
    pub address: String,
    pub trusted: Vec<PublicKey>,
    pub required: usize,
    pub port: u16,
    pub auto: bool,
    pub fetch: chunk_fetch::Options,
    pub shared: Arc<Mutex<Rollout>>,
}

const LOOK_EVERY: Duration = Duration::from_secs(15);
/// A neighbour not seen among the router's peers for this long is gone, not rebooting.
const FORGET_AFTER: Duration = Duration::from_secs(600);

/// A neighbour's announcement, as far as the agent reads it.
#[derive(Debug, Clone, Default, Deserialize)]
struct Announced {
    #[serde(default)]
    board: String,
    #[serde(default)]
    upgrade: AnnouncedUpgrade,
}

#[derive(Debug, Clone, Default, Deserialize)]
struct AnnouncedUpgrade {
    #[serde(default)]
    phase: Phase,
    #[serde(default)]
    releases: Vec<Release>,
}

pub fn spawn(agent: Agent) -> Result<(), String> {
    std::thread::Builder::new().name("rollout".into()).stack_size(256 * 1024).spawn(move || agent.run()).map(|_| ()).map_err(|e| format!("rollout thread: {e}"))
}

impl Agent {
    fn run(self) {
        let mut shelf = Shelf::new(&self.boot_dir, &self.disk, &self.fetch.cache, false);
        let mut seen: BTreeMap<String, Instant> = BTreeMap::new();
        let mut members: BTreeMap<String, Instant> = BTreeMap::new();
        let http =
            ureq::Agent::config_builder().timeout_global(Some(Duration::from_secs(8))).user_agent(concat!("meshd/", env!("CARGO_PKG_VERSION"))).build().into();
        loop {
            let record = upgrade::read_record(&self.state_dir);
            let releases = self.releases(&mut shelf);
            let on_trial = record.as_ref().is_some_and(|r| r.step == Step::Installed && r.target.as_deref().and_then(Slot::parse) == Some(self.running));
            let staged = record.as_ref().is_some_and(|r| r.step == Step::Installed && r.target.as_deref().and_then(Slot::parse) == Some(self.running.other()));
            let phase = if on_trial {
                Phase::Trial
            } else if staged {
                Phase::Staged
            } else {
                Phase::Idle
            };
            self.publish(|r| {
                r.phase = if r.phase == Phase::Rebooting && staged { Phase::Rebooting } else { phase };
                r.releases = releases.clone();
                r.last_install = record.clone();
            });
            if let Some(r) = record.as_ref().filter(|r| r.step == Step::RolledBack) {
                self.refuse(r.manifest_sha256.as_deref(), "it failed its trial on this node and was rolled back");
            }
            let neighbours = self.neighbours(&mut seen);
            if !on_trial {
                let heard = only_nodes(self.listen(&http, &neighbours), &mut members);
                if staged && record.as_ref().is_some_and(|r| r.by_agent) {
                    self.reboot_when_allowed(&http, &neighbours, heard, &mut members);
                } else if staged {
                    self.publish(|r| r.note = Some(format!("slot {} was installed by hand and boots at the next reboot", self.running.other())));
                } else if self.auto {
                    self.look_for_newer(&heard, &releases);
                }
            }
            std::thread::sleep(LOOK_EVERY);
        }
    }

    fn publish(&self, f: impl FnOnce(&mut Rollout)) {
        if let Ok(mut r) = self.shared.lock() {
            f(&mut r);
        }
    }

    /// The releases the slots hold, as announced: not one refused here (a release that failed
    /// its trial on this node is not passed on from it).
    fn releases(&self, shelf: &mut Shelf) -> Vec<Release> {
        let refused = self.refused();
        shelf
            .current()
            .releases
            .iter()
            .filter(|r| !refused.contains(&r.manifest_sha256))
            .map(|r| Release { version: r.version.clone(), manifest: r.manifest_sha256.clone(), slot: r.slot.to_string(), running: r.slot == self.running })
            .collect()
    }

    /// The router's peers now, and those seen in the last minutes (which may be rebooting).
    fn neighbours(&self, seen: &mut BTreeMap<String, Instant>) -> Vec<String> {
        if let Ok(peers) = router::peers(&self.run_dir) {
            for p in peers.iter().filter(|p| p.up && !p.address.is_empty()) {
                seen.insert(p.address.clone(), Instant::now());
            }
        }
        seen.retain(|_, t| t.elapsed() < FORGET_AFTER);
        seen.keys().cloned().collect()
    }

    /// Each neighbour's announcement, or None when it does not answer.
    fn listen(&self, http: &ureq::Agent, neighbours: &[String]) -> BTreeMap<String, Option<Announced>> {
        neighbours
            .iter()
            .map(|a| {
                let url = format!("{}/nodeinfo.json", self.base(a));
                let got = chunk_fetch::get(http, &url, 1 << 20).ok().and_then(|b| serde_json::from_slice::<Announced>(&b).ok());
                (a.clone(), got)
            })
            .collect()
    }

    fn base(&self, address: &str) -> String {
        format!("http://[{address}]:{}", self.port)
    }

    fn refused(&self) -> BTreeSet<String> {
        std::fs::read(refused_path(&self.state_dir)).ok().and_then(|b| serde_json::from_slice(&b).ok()).unwrap_or_default()
    }

    fn refuse(&self, manifest: Option<&str>, why: &str) {
        let Some(m) = manifest else { return };
        let mut set = self.refused();
        if set.insert(m.to_string()) {
            eprintln!("meshd: upgrade: release {m} will not be installed again here: {why}");
            let p = refused_path(&self.state_dir);
            if let Err(e) = crate::durable::write(&p, &serde_json::to_vec(&set).expect("set serialises"), 0o644) {
                eprintln!("meshd: upgrade: {}: {e}", p.display());
            }
        }
    }

    /// Installs the newest release a neighbour offers, if it is newer than what runs here.
    fn look_for_newer(&self, heard: &BTreeMap<String, Option<Announced>>, ours: &[Release]) {
        if nix::sys::statvfs::statvfs(&self.boot_dir).is_ok_and(|v| v.flags().contains(nix::sys::statvfs::FsFlags::ST_RDONLY)) {
            self.publish(|r| {
                r.note = Some(format!("no installs: {} is read-only (the kernel found damage on it); the next boot repairs it", self.boot_dir.display()))
            });
            return;
        }
        let refused = self.refused();
        let mut best: Option<&Release> = None;
        for a in heard.values().flatten().filter(|a| a.board == self.board) {
            for r in &a.upgrade.releases {
                let better = newer(&r.version, &self.version) && !refused.contains(&r.manifest) && best.is_none_or(|b| newer(&r.version, &b.version));
                if better && !ours.iter().any(|o| o.manifest == r.manifest && !o.running) {
                    best = Some(r);
                }
            }
        }
        let Some(best) = best.cloned() else { return };
        let offering: Vec<String> = heard
            .iter()
            .filter(|(_, a)| a.as_ref().is_some_and(|a| a.upgrade.releases.iter().any(|r| r.manifest == best.manifest)))
            .map(|(addr, _)| self.base(addr))
            .collect();
        // Neighbours that served bad bytes of this release before are not asked again.
        let earlier = upgrade::read_record(&self.state_dir).filter(|r| r.manifest_sha256.as_deref() == Some(best.manifest.as_str()));
        let (offering, bad): (Vec<String>, Vec<String>) = offering.into_iter().partition(|p| !earlier.as_ref().is_some_and(|r| chunk_fetch::served_bad(r, p)));
        if offering.is_empty() {
            let why = format!("{} is offered only by neighbours that served bad bytes of it: {}", best.version, bad.join(", "));
            self.publish(|r| r.note = Some(why));
            return;
        }
        eprintln!("meshd: upgrade: {} offered by {} neighbour(s); fetching what this node lacks", best.version, offering.len());
        self.publish(|r| {
            r.phase = Phase::Fetching;
            r.note = None;
        });
        let header = match chunk_fetch::fetch_header(&offering, &best.manifest, &self.fetch.cache) {
            Ok(h) => h,
            Err(e) => {
                eprintln!("meshd: upgrade: {e}");
                self.publish(|r| r.note = Some(e));
                return;
            }
        };
        let node = Target {
            disk: &self.disk,
            running: self.running,
            compatible: format!("meshos-{}", self.board),
            version: self.version.clone(),
            trusted: &self.trusted,
            required: self.required,
            boot_dir: &self.boot_dir,
            state_dir: &self.state_dir,
        };
        match chunk_fetch::install(&header, &offering, &node, &self.fetch) {
            Ok(v) => eprintln!("meshd: upgrade: {v} staged in slot {}; rebooting into it when no neighbour is down", self.running.other()),
            Err(e) => {
                eprintln!("meshd: upgrade: {} from the mesh: {e}", best.version);
                // A release that cannot be trusted or does not fit stays refused; a transfer
                // that failed is tried again, going on from the chunks already fetched.
                if matches!(
                    e.kind,
                    ErrorKind::Signature
                        | ErrorKind::Incompatible
                        | ErrorKind::Malformed
                        | ErrorKind::TooLarge
                        | ErrorKind::NotNewer
                        | ErrorKind::PayloadMismatch
                ) {
                    self.refuse(Some(&best.manifest), &e.message);
                }
                self.publish(|r| r.note = Some(e.to_string()));
            }
        }
    }

    /// Reboots into the staged slot when no neighbour is down, rebooting or on trial.
    fn reboot_when_allowed(
        &self,
        http: &ureq::Agent,
        neighbours: &[String],
        heard: BTreeMap<String, Option<Announced>>,
        members: &mut BTreeMap<String, Instant>,
    ) {
        let busy = |heard: &BTreeMap<String, Option<Announced>>, announced: bool| holds_back(&self.address, heard, announced);
        if let Some(why) = busy(&heard, false) {
            self.publish(|r| {
                r.phase = Phase::Staged;
                r.note = Some(format!("waiting to reboot: {why}"));
            });
            return;
        }
        self.publish(|r| {
            r.phase = Phase::Rebooting;
            r.note = None;
        });
        // Long enough for neighbours to read it (they look every LOOK_EVERY), random so two
        // neighbours that said it at once look again at different times.
        std::thread::sleep(LOOK_EVERY + Duration::from_millis(random_below(15_000)));
        let heard = only_nodes(self.listen(http, neighbours), members);
        if let Some(why) = busy(&heard, true) {
            eprintln!("meshd: upgrade: not rebooting yet: {why}");
            self.publish(|r| {
                r.phase = Phase::Staged;
                r.note = Some(format!("waiting to reboot: {why}"));
            });
            return;
        }
        // For the health check of the new slot: it must find one of these again.
        let peers: Vec<String> = router::peers(&self.run_dir).map(|p| p.into_iter().filter(|p| p.up).map(|p| p.address).collect()).unwrap_or_default();
        if let Some(mut r) = upgrade::read_record(&self.state_dir) {
            r.neighbours = peers.clone();
            upgrade::save(&self.state_dir, &r);
        }
        eprintln!("meshd: upgrade: REBOOTING into slot {} (no neighbour is down; {} overlay peer(s) to find again)", self.running.other(), peers.len());
        if let Err(e) = crate::machine::current().reboot() {
            eprintln!("meshd: {e}");
        }
        loop {
            std::thread::sleep(Duration::from_secs(60));
        }
    }
}

/// Why a node that wants to reboot must wait, if it must: a neighbour silent (it may be down),
/// on trial, or rebooting. Once this node has itself `announced` that it reboots, a neighbour
/// that announced the same holds it back only when that neighbour's address is the lower one.
/// What the neighbours said, less the overlay peers that are no meshos node (a monitoring
/// machine, a laptop): a peer that has never answered `/nodeinfo.json` is not waited for, while
/// a node that answered within [`FORGET_AFTER`] and is silent now may be rebooting.
fn only_nodes(mut heard: BTreeMap<String, Option<Announced>>, members: &mut BTreeMap<String, Instant>) -> BTreeMap<String, Option<Announced>> {
    for (addr, a) in &heard {
        if a.is_some() {
            members.insert(addr.clone(), Instant::now());
        }
    }
    members.retain(|_, t| t.elapsed() < FORGET_AFTER);
    heard.retain(|addr, a| a.is_some() || members.contains_key(addr));
    heard
}

fn holds_back(me: &str, heard: &BTreeMap<String, Option<Announced>>, announced: bool) -> Option<String> {
    heard.iter().find_map(|(addr, a)| match a {
        None => Some(format!("{addr} does not answer (it may be rebooting)")),
        Some(a) if a.upgrade.phase == Phase::Trial => Some(format!("{addr} is on trial")),
        Some(a) if a.upgrade.phase == Phase::Rebooting && !(announced && me < addr.as_str()) => Some(format!("{addr} is rebooting")),
        _ => None,
    })
}

fn refused_path(state_dir: &Path) -> PathBuf {
    state_dir.join("refused-releases.json")
}

/// A random number below `n`, from the kernel.
fn random_below(n: u64) -> u64 {
    let mut b = [0u8; 8];
    // SAFETY: getrandom writes at most b.len() bytes into b.
    let got = unsafe { libc::getrandom(b.as_mut_ptr().cast(), b.len(), 0) };
    if got != b.len() as isize {
        return n / 2;
    }
    u64::from_le_bytes(b) % n.max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn heard(list: &[(&str, Option<Phase>)]) -> BTreeMap<String, Option<Announced>> {
        list.iter()
            .map(|(a, p)| (a.to_string(), p.map(|phase| Announced { board: "rpi3".into(), upgrade: AnnouncedUpgrade { phase, releases: vec![] } })))
            .collect()
    }

    #[test]
    fn at_most_one_node_of_a_neighbourhood_goes_down() {
        let quiet = heard(&[("200::b", Some(Phase::Idle)), ("200::c", Some(Phase::Staged)), ("200::d", Some(Phase::Fetching))]);
        assert_eq!(holds_back("200::a", &quiet, false), None);
        for (phase, why) in [(None, "does not answer"), (Some(Phase::Trial), "is on trial"), (Some(Phase::Rebooting), "is rebooting")] {
            let h = heard(&[("200::b", Some(Phase::Idle)), ("200::c", phase)]);
            assert!(holds_back("200::a", &h, false).unwrap().contains(why));
        }
        // Two neighbours said "rebooting" at once: the lower address goes, the other waits.
        let a_sees_b = heard(&[("200::b", Some(Phase::Rebooting))]);
        let b_sees_a = heard(&[("200::a", Some(Phase::Rebooting))]);
        assert_eq!(holds_back("200::a", &a_sees_b, true), None);
        assert!(holds_back("200::b", &b_sees_a, true).is_some());
        // A neighbour on trial holds back even the lower address.
        assert!(holds_back("200::a", &heard(&[("200::b", Some(Phase::Trial))]), true).is_some());
    }

    #[test]
    fn a_peer_that_never_answered_is_not_waited_for_but_a_silent_node_is() {
        let mut members = BTreeMap::new();
        // 200::m (a monitoring machine's router) never serves nodeinfo; 200::b does.
        let first = only_nodes(heard(&[("200::b", Some(Phase::Idle)), ("200::m", None)]), &mut members);
        assert_eq!(first.keys().collect::<Vec<_>>(), ["200::b"]);
        assert_eq!(holds_back("200::a", &first, false), None);
        // b goes quiet (rebooting): still waited for.
        let later = only_nodes(heard(&[("200::b", None), ("200::m", None)]), &mut members);
        assert!(holds_back("200::a", &later, false).unwrap().contains("200::b does not answer"));
    }

    #[test]
    fn announcements_read_from_nodeinfo() {
        let text = r#"{"name":"n","board":"rpi3","upgrade":{"phase":"rebooting","releases":[{"version":"1.2","manifest":"ab","slot":"b","running":false}]}}"#;
        let a: Announced = serde_json::from_str(text).unwrap();
        assert_eq!((a.upgrade.phase, a.upgrade.releases[0].version.as_str()), (Phase::Rebooting, "1.2"));
        // A node of an older meshd announces nothing: it is idle and offers nothing.
        let old: Announced = serde_json::from_str(r#"{"name":"n","board":"rpi3"}"#).unwrap();
        assert_eq!((old.upgrade.phase, old.upgrade.releases.len()), (Phase::Idle, 0));
    }
}
