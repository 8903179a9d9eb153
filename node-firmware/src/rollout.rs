//! Upgrades that spread through the mesh by themselves. Every node announces in
//! `/nodeinfo.json` the releases its slots hold and what its upgrade is doing; this agent reads
//! its overlay neighbours' announcements and, when one runs a newer release for this board past
//! its trial, installs it from the neighbours that hold it (crate::chunk_fetch: only the chunks
//! it lacks, signature first). A release spreads only from nodes where it proved itself: one
//! that fails its trial stops at the nodes it was put on (`updates/`, by hand).
//!
//! Then it reboots into it only when its neighbourhood allows, so that no two neighbours are
//! down at once for an upgrade (nodes two hops apart may be; docs/upgrades.md): not while a
//! neighbour is rebooting, on trial, or silent (a neighbour seen in the last minutes that does
//! not answer may be rebooting), and for each neighbour only so long ([`hold_limit`]): one
//! that holds back longer is stuck, or lying. A node that wants to reboot first
//! says so (`rebooting`), waits a random while, and looks again: if a neighbour said the same,
//! the one with the lower overlay address goes first and the other waits. No coordinator, no
//! clock: only what each node announces.
//!
//! What a neighbour announces is a claim; a release's signed header is the proof. A header is
//! taken only if its manifest hashes to the sha it was asked for, and only then are its
//! signatures and board checked; a neighbour that answers with anything else is named (in
//! status and metrics), not the release. Candidates are tried newest first by what they
//! announce, so one liar costs a round, not the upgrade; a release whose header nobody served
//! is not asked for again for [`UNSERVED_FOR`]. A release that failed its trial here (rolled
//! back) or that this node verified and found wanting (signature, board, size, not newer) is
//! not tried again; that list is bounded ([`MAX_REFUSED`]) and never holds a neighbour's word.
//!
//! A release that fails its trial here is announced as failed, in the node's signed record of
//! the mesh view and in `/nodeinfo.json` ([`failed_trials`]); a node that hears of it holds
//! that release (no install, no reboot into it), for as long as the reports come through two of
//! its neighbours or more, or for [`HOLD_FOR`] when they all come through one ([`hold`]).

use crate::chunk_fetch;
use crate::held::Shelf;
use crate::meshview::{TrialReports, View};
use crate::router;
use crate::upgrade::{self, Step, Target};
use meshos_common::boot_state::Slot;
use meshos_common::bundle::{newer, ErrorKind};
use meshos_common::minisign::PublicKey;
use meshos_common::node_record::{FailedTrial, MAX_FAILED};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
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
    /// Neighbours whose word did not hold lately (the URL they are asked at, and what they
    /// did): a header for a release that was not it.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub false_claims: BTreeMap<String, String>,
    /// Releases that failed their trial here (rolled back), the newest last: announced in this
    /// node's signed record, so that other nodes hold them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub failed: Vec<FailedTrial>,
    /// Releases this node holds because other nodes report they failed their trial (by
    /// manifest), and why.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub holding: BTreeMap<String, String>,
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
    /// `upgrade.healthTimeout`: how long a trial may take, from which how long a neighbour
    /// may hold this node back ([`hold_limit`]).
    pub health_timeout: Duration,
    pub fetch: chunk_fetch::Options,
    pub shared: Arc<Mutex<Rollout>>,
    /// The mesh view, for the trial failures other nodes report.
    pub view: Arc<Mutex<View>>,
}

const LOOK_EVERY: Duration = Duration::from_secs(15);
/// A neighbour not seen among the router's peers for this long is gone, not rebooting.
const FORGET_AFTER: Duration = Duration::from_secs(600);
/// A release whose header no neighbour served is not asked for again for this long.
const UNSERVED_FOR: Duration = Duration::from_secs(600);
/// Releases remembered as refused, and neighbours remembered for false claims, at most.
const MAX_REFUSED: usize = 32;
const MAX_FALSE_CLAIMS: usize = 16;
/// Releases read from one neighbour's announcement (a node's two slots hold two), and
/// candidates tried in one round, at most.
const MAX_ANNOUNCED: usize = 4;
const MAX_CANDIDATES: usize = 8;
/// The longest version string taken from an announcement.
const MAX_VERSION_LEN: usize = 32;
/// How long a release is held when the nodes that report it failed their trial are all reached
/// through one neighbour (a liar there, or its inventions, hold a release this long at most);
/// reports through two neighbours or more hold it as long as they stand.
const HOLD_FOR: Duration = Duration::from_secs(12 * 3600);
/// Releases remembered with when a failure report of them was first heard, at most.
const MAX_HELD: usize = 64;

/// What the agent remembers between rounds of what neighbours said.
#[derive(Default)]
struct Memory {
    /// Releases (by manifest sha) whose header no neighbour served, and when.
    unserved: BTreeMap<String, Instant>,
    false_claims: BTreeMap<String, String>,
    /// Since when each neighbour has held reboots back the way it does now.
    holding: BTreeMap<String, (Holding, Instant)>,
    /// When a failure report of each release was first heard (kept when the reports go, so
    /// that one reporter coming and going holds a release no longer than [`HOLD_FOR`] in all).
    reported_since: BTreeMap<String, Instant>,
}

/// How a neighbour holds back a node's reboot: it does not answer (it may be rebooting), it is
/// on trial, or it announced that it reboots.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Holding {
    Silent,
    Trial,
    Rebooting,
}

/// A board's boot, from power-on to meshd (raspi3b's slowest, with its card read at 1 MiB/s,
/// takes about 100 s).
const BOOT_ALLOWANCE: Duration = Duration::from_secs(120);

/// How long one neighbour may hold this node back in one way: a trial takes at most three
/// boots, each with its health check, after which the boot loader rolls back. A neighbour
/// holding longer is stuck, or lying, and no longer counts as down.
fn hold_limit(health_timeout: Duration) -> Duration {
    (health_timeout + BOOT_ALLOWANCE) * 3
}

/// A neighbour's announcement, as far as the agent reads it.
#[derive(Debug, Clone, Default, Deserialize)]
struct Announced {
    #[serde(default)]
    name: String,
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
    /// Releases that failed their trial on it.
    #[serde(default)]
    failed: Vec<FailedTrial>,
}

pub fn spawn(agent: Agent) -> Result<(), String> {
    std::thread::Builder::new().name("rollout".into()).stack_size(256 * 1024).spawn(move || agent.run()).map(|_| ()).map_err(|e| format!("rollout thread: {e}"))
}

impl Agent {
    fn run(self) {
        let mut shelf = Shelf::new(&self.boot_dir, &self.disk, &self.fetch.cache, false);
        let mut seen: BTreeMap<String, Instant> = BTreeMap::new();
        let mut members: BTreeMap<String, Instant> = BTreeMap::new();
        let mut memory = Memory::default();
        let http = chunk_fetch::agent();
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
                self.note_failed(r);
            }
            self.publish(|r| {
                r.failed = failed_trials(&self.state_dir);
                r.holding.clear();
            });
            let neighbours = self.neighbours(&mut seen);
            if !on_trial {
                let heard = only_nodes(self.listen(&http, &neighbours), &mut members);
                track(&mut memory.holding, &heard, Instant::now());
                let reports = self.reports(&heard);
                let staged_manifest = record.as_ref().filter(|_| staged).and_then(|r| r.manifest_sha256.as_deref());
                let staged_held = staged_manifest.and_then(|m| hold(m, &reports, &mut memory.reported_since, Instant::now()));
                self.publish(|r| r.holding = staged_manifest.zip(staged_held.clone()).map(|(m, why)| (m.to_string(), why)).into_iter().collect());
                if let Some(why) = staged_held.filter(|_| record.as_ref().is_some_and(|r| r.by_agent)) {
                    // Not booted: something newer that no node reports failed may take its slot.
                    self.publish(|r| r.note = Some(format!("not rebooting into slot {}: its release {why}", self.running.other())));
                    if self.auto {
                        self.look_for_newer(&heard, &releases, &reports, &mut memory);
                    }
                } else if staged && record.as_ref().is_some_and(|r| r.by_agent) {
                    self.reboot_when_allowed(&http, &neighbours, heard, staged_manifest, &mut members, &mut memory);
                } else if staged {
                    self.publish(|r| r.note = Some(format!("slot {} was installed by hand and boots at the next reboot", self.running.other())));
                } else if self.auto {
                    self.look_for_newer(&heard, &releases, &reports, &mut memory);
                }
            }
            std::thread::sleep(LOOK_EVERY);
        }
    }

    /// The trial failures reported in the mesh view, and those the neighbours announce (fresher:
    /// a neighbour that just rolled a release back says so before its record has spread).
    fn reports(&self, heard: &BTreeMap<String, Option<Announced>>) -> BTreeMap<String, TrialReports> {
        let view = self.view.lock().map(|v| v.trial_failures(Instant::now())).unwrap_or_default();
        with_neighbours(view, heard)
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
                let got = chunk_fetch::get_within(http, &url, 1 << 20, Duration::from_secs(8)).ok().and_then(|b| serde_json::from_slice::<Announced>(&b).ok());
                (a.clone(), got)
            })
            .collect()
    }

    fn base(&self, address: &str) -> String {
        format!("http://[{address}]:{}", self.port)
    }

    /// The releases refused here, oldest first.
    fn refused(&self) -> Vec<String> {
        let list: Vec<String> = std::fs::read(refused_path(&self.state_dir)).ok().and_then(|b| serde_json::from_slice(&b).ok()).unwrap_or_default();
        list.into_iter().filter(|m| meshos_common::chunks::is_sha256_hex(m)).collect()
    }

    /// Refuses a release this node verified and found wanting (by its manifest's sha); the
    /// list keeps the newest [`MAX_REFUSED`].
    fn refuse(&self, manifest: Option<&str>, why: &str) {
        let Some(list) = manifest.and_then(|m| with_refusal(self.refused(), m)) else { return };
        logln!("meshd: upgrade: release {} will not be installed again here: {why}", manifest.unwrap_or_default());
        let p = refused_path(&self.state_dir);
        if let Err(e) = crate::durable::write(&p, &serde_json::to_vec(&list).expect("a list serialises"), 0o644) {
            logln!("meshd: upgrade: {}: {e}", p.display());
        }
    }

    /// Announces a release that failed its trial here (from the install record the rollback
    /// left), with the kind of its last failed attempt.
    fn note_failed(&self, r: &upgrade::Record) {
        let Some(manifest) = r.manifest_sha256.clone() else { return };
        let kind = r.trial_failure.clone().unwrap_or_else(|| "did_not_boot".into());
        if let Some(list) = with_failure(failed_trials(&self.state_dir), FailedTrial { manifest, kind }) {
            let p = failed_path(&self.state_dir);
            if let Err(e) = crate::durable::write(&p, &serde_json::to_vec(&list).expect("a list serialises"), 0o644) {
                logln!("meshd: upgrade: {}: {e}", p.display());
            }
        }
    }

    /// Installs the newest release a neighbour offers that is newer than what runs here and
    /// proves to be what it was announced as; a candidate that does not is passed over for
    /// the next.
    fn look_for_newer(&self, heard: &BTreeMap<String, Option<Announced>>, ours: &[Release], reports: &BTreeMap<String, TrialReports>, memory: &mut Memory) {
        if nix::sys::statvfs::statvfs(&self.boot_dir).is_ok_and(|v| v.flags().contains(nix::sys::statvfs::FsFlags::ST_RDONLY)) {
            self.publish(|r| {
                r.note = Some(format!("no installs: {} is read-only (the kernel found damage on it); the next boot repairs it", self.boot_dir.display()))
            });
            return;
        }
        let now = Instant::now();
        memory.unserved.retain(|_, at| now.duration_since(*at) < UNSERVED_FOR);
        let skip: Vec<String> = self.refused().into_iter().chain(memory.unserved.keys().cloned()).collect();
        let mut notes = Vec::new();
        let mut holding = BTreeMap::new();
        for (best, offering) in candidates(heard, &self.board, &self.version, &skip, ours) {
            if let Some(why) = hold(&best.manifest, reports, &mut memory.reported_since, now) {
                notes.push(format!("holding {}: it {why}", best.version));
                holding.insert(best.manifest.clone(), why);
                continue;
            }
            let offering: Vec<String> = offering.iter().map(|a| self.base(a)).collect();
            // Neighbours that served bad bytes of this release before are not asked again.
            let earlier = upgrade::read_record(&self.state_dir).filter(|r| r.manifest_sha256.as_deref() == Some(best.manifest.as_str()));
            let (offering, bad): (Vec<String>, Vec<String>) =
                offering.into_iter().partition(|p| !earlier.as_ref().is_some_and(|r| chunk_fetch::served_bad(r, p)));
            if offering.is_empty() {
                notes.push(format!("{} is offered only by neighbours that served bad bytes of it: {}", best.version, bad.join(", ")));
                continue;
            }
            logln!("meshd: upgrade: {} offered by {} neighbour(s); fetching what this node lacks", best.version, offering.len());
            self.publish(|r| {
                r.phase = Phase::Fetching;
                r.note = None;
            });
            let mut claims = Vec::new();
            let header = chunk_fetch::fetch_header(&offering, &best.manifest, &self.fetch.cache, &mut claims);
            // A neighbour that answered for this release with something else is not asked
            // for its chunks either.
            let offering: Vec<String> = offering.into_iter().filter(|p| !claims.iter().any(|(liar, _)| liar == p)).collect();
            for (peer, what) in claims {
                logln!("meshd: upgrade: false claim by a neighbour: {what}");
                memory.false_claims.insert(peer, what);
                while memory.false_claims.len() > MAX_FALSE_CLAIMS {
                    memory.false_claims.pop_first();
                }
            }
            self.publish(|r| r.false_claims = memory.false_claims.clone());
            let header = match header {
                Ok(h) => h,
                Err(e) => {
                    logln!("meshd: upgrade: {e}");
                    memory.unserved.insert(best.manifest.clone(), now);
                    notes.push(e);
                    continue;
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
                Ok(v) => {
                    logln!("meshd: upgrade: {v} staged in slot {}; rebooting into it when no neighbour is down", self.running.other());
                    return;
                }
                Err(e) => {
                    logln!("meshd: upgrade: {} from the mesh: {e}", best.version);
                    let verdict =
                        matches!(e.kind, ErrorKind::Signature | ErrorKind::Incompatible | ErrorKind::Malformed | ErrorKind::TooLarge | ErrorKind::NotNewer);
                    // The release itself, its header proven to be it, cannot be trusted or
                    // does not fit: refused, and the next candidate is tried. A transfer that
                    // failed (chunks that did not come or did not match) is tried again next
                    // round, going on from the chunks already fetched.
                    self.publish(|r| r.note = Some(e.to_string()));
                    if !verdict {
                        return;
                    }
                    self.refuse(Some(&best.manifest), &e.message);
                    notes.push(e.to_string());
                }
            }
        }
        self.publish(|r| r.holding.extend(holding));
        if !notes.is_empty() {
            self.publish(|r| {
                r.phase = Phase::Idle;
                r.note = Some(notes.join("; "));
            });
        }
    }

    /// Reboots into the staged slot when no neighbour is down, rebooting or on trial.
    fn reboot_when_allowed(
        &self,
        http: &ureq::Agent,
        neighbours: &[String],
        heard: BTreeMap<String, Option<Announced>>,
        staged: Option<&str>,
        members: &mut BTreeMap<String, Instant>,
        memory: &mut Memory,
    ) {
        let limit = hold_limit(self.health_timeout);
        let busy = |heard: &BTreeMap<String, Option<Announced>>, announced: bool, memory: &Memory| {
            holds_back(&self.address, heard, announced, &past_limit(&memory.holding, limit, Instant::now()))
        };
        if let Some(why) = busy(&heard, false, memory) {
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
        track(&mut memory.holding, &heard, Instant::now());
        // A neighbour that rolled the release back while this node waited holds it too.
        if let Some(why) = staged.and_then(|m| hold(m, &self.reports(&heard), &mut memory.reported_since, Instant::now())) {
            logln!("meshd: upgrade: not rebooting into slot {}: its release {why}", self.running.other());
            self.publish(|r| {
                r.phase = Phase::Staged;
                r.note = Some(format!("not rebooting into slot {}: its release {why}", self.running.other()));
            });
            return;
        }
        if let Some(why) = busy(&heard, true, memory) {
            logln!("meshd: upgrade: not rebooting yet: {why}");
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
        logln!("meshd: upgrade: REBOOTING into slot {} (no neighbour is down; {} overlay peer(s) to find again)", self.running.other(), peers.len());
        if let Err(e) = crate::machine::current().reboot() {
            logln!("meshd: {e}");
        }
        loop {
            std::thread::sleep(Duration::from_secs(60));
        }
    }
}

/// `list` with `manifest` refused too, the oldest dropped beyond [`MAX_REFUSED`]; None when
/// there is nothing to write (refused already, or not a manifest's sha256).
fn with_refusal(mut list: Vec<String>, manifest: &str) -> Option<Vec<String>> {
    if !meshos_common::chunks::is_sha256_hex(manifest) || list.iter().any(|r| r == manifest) {
        return None;
    }
    list.push(manifest.to_string());
    let excess = list.len().saturating_sub(MAX_REFUSED);
    list.drain(..excess);
    Some(list)
}

/// Whether an announced release has the form of one: a manifest sha256 and a short version of
/// the characters versions have. Anything else is not read further (it would become a path,
/// a URL and a file's content).
fn plausible(r: &Release) -> bool {
    meshos_common::chunks::is_sha256_hex(&r.manifest)
        && !r.version.is_empty()
        && r.version.len() <= MAX_VERSION_LEN
        && r.version.bytes().all(|b| b.is_ascii_alphanumeric() || b".+~_-".contains(&b))
}

/// The releases for `board` neighbours announce newer than `version`, newest first by what
/// they announce (a claim, proven only by the header), at most [`MAX_CANDIDATES`], each with
/// the neighbours that hold it; none in `skip` (refused, or whose header nobody served
/// lately), nor the one this node holds staged. A release is a candidate only once a
/// neighbour runs it past its trial: a release spreads from the nodes where it proved itself,
/// so a bad one stops where it was put (the canaries: nodes given it in `updates/` or by hand).
fn candidates(heard: &BTreeMap<String, Option<Announced>>, board: &str, version: &str, skip: &[String], ours: &[Release]) -> Vec<(Release, Vec<String>)> {
    let mut found: BTreeMap<String, (Release, Vec<String>, bool)> = BTreeMap::new();
    for (addr, a) in heard.iter().filter_map(|(addr, a)| a.as_ref().map(|a| (addr, a))).filter(|(_, a)| a.board == board) {
        for r in a.upgrade.releases.iter().take(MAX_ANNOUNCED).filter(|r| plausible(r)) {
            let wanted = newer(&r.version, version) && !skip.contains(&r.manifest) && !ours.iter().any(|o| o.manifest == r.manifest && !o.running);
            if wanted {
                let entry = found.entry(r.manifest.clone()).or_insert_with(|| (r.clone(), Vec::new(), false));
                entry.1.push(addr.clone());
                entry.2 |= r.running && a.upgrade.phase != Phase::Trial;
            }
        }
    }
    let mut list: Vec<(Release, Vec<String>)> = found.into_values().filter(|(_, _, proven)| *proven).map(|(r, by, _)| (r, by)).collect();
    list.sort_by(|a, b| match (newer(&a.0.version, &b.0.version), newer(&b.0.version, &a.0.version)) {
        (true, _) => std::cmp::Ordering::Less,
        (_, true) => std::cmp::Ordering::Greater,
        _ => b.1.len().cmp(&a.1.len()),
    });
    list.truncate(MAX_CANDIDATES);
    list
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

/// A neighbour in `past` has held back longer than [`hold_limit`] and does not count.
fn holds_back(me: &str, heard: &BTreeMap<String, Option<Announced>>, announced: bool, past: &[String]) -> Option<String> {
    heard.iter().filter(|(addr, _)| !past.contains(addr)).find_map(|(addr, a)| match a {
        None => Some(format!("{addr} does not answer (it may be rebooting)")),
        Some(a) if a.upgrade.phase == Phase::Trial => Some(format!("{addr} is on trial")),
        Some(a) if a.upgrade.phase == Phase::Rebooting && !(announced && me < addr.as_str()) => Some(format!("{addr} is rebooting")),
        _ => None,
    })
}

fn holding(a: &Option<Announced>) -> Option<Holding> {
    match a.as_ref().map(|a| a.upgrade.phase) {
        None => Some(Holding::Silent),
        Some(Phase::Trial) => Some(Holding::Trial),
        Some(Phase::Rebooting) => Some(Holding::Rebooting),
        Some(_) => None,
    }
}

/// Notes since when each neighbour heard holds back the way it does now; one that changed
/// its way, or holds back no more, starts again.
fn track(since: &mut BTreeMap<String, (Holding, Instant)>, heard: &BTreeMap<String, Option<Announced>>, now: Instant) {
    since.retain(|addr, (h, _)| heard.get(addr).and_then(holding) == Some(*h));
    for (addr, a) in heard {
        if let Some(h) = holding(a) {
            since.entry(addr.clone()).or_insert((h, now));
        }
    }
}

/// The neighbours that have held back one way for longer than `limit`.
fn past_limit(since: &BTreeMap<String, (Holding, Instant)>, limit: Duration, now: Instant) -> Vec<String> {
    since.iter().filter(|(_, (_, at))| now.duration_since(*at) > limit).map(|(addr, _)| addr.clone()).collect()
}

fn refused_path(state_dir: &Path) -> PathBuf {
    state_dir.join("refused-releases.json")
}

fn failed_path(state_dir: &Path) -> PathBuf {
    state_dir.join("failed-trials.json")
}

/// The trial failures this node announces, read from its data partition (what is not
/// plausible is dropped: the file is the node's own, but a card may be damaged).
pub fn failed_trials(state_dir: &Path) -> Vec<FailedTrial> {
    let list: Vec<FailedTrial> = std::fs::read(failed_path(state_dir)).ok().and_then(|b| serde_json::from_slice(&b).ok()).unwrap_or_default();
    list.into_iter().filter(FailedTrial::plausible).collect()
}

/// `list` with `failure` added, the oldest dropped beyond [`MAX_FAILED`]; None when it is
/// there already.
fn with_failure(mut list: Vec<FailedTrial>, failure: FailedTrial) -> Option<Vec<FailedTrial>> {
    if !failure.plausible() || list.iter().any(|f| f.manifest == failure.manifest) {
        return None;
    }
    list.push(failure);
    let excess = list.len().saturating_sub(MAX_FAILED);
    list.drain(..excess);
    Some(list)
}

/// `reports` with the trial failures the neighbours announce in `heard` (each neighbour reached
/// through itself; at most [`MAX_FAILED`] each, well-formed).
fn with_neighbours(mut reports: BTreeMap<String, TrialReports>, heard: &BTreeMap<String, Option<Announced>>) -> BTreeMap<String, TrialReports> {
    for (addr, a) in heard.iter().filter_map(|(addr, a)| a.as_ref().map(|a| (addr, a))) {
        let name = if a.name.is_empty() || a.name.len() > 64 { addr.clone() } else { a.name.clone() };
        for f in a.upgrade.failed.iter().take(MAX_FAILED).filter(|f| f.plausible()) {
            let r = reports.entry(f.manifest.clone()).or_default();
            if !r.by.iter().any(|(n, _)| *n == name) {
                r.by.push((name.clone(), f.kind.clone()));
            }
            r.through.insert(addr.clone());
        }
    }
    reports
}

/// Whether to hold `manifest`, and why, from the failure reports of the view: held as long as
/// nodes reached through two of this node's neighbours or more report it, or for [`HOLD_FOR`]
/// from its first report when all come through one (a liar there, or what it invents). `since`
/// notes first reports of the releases asked about, at most [`MAX_HELD`] (the oldest
/// forgotten; only candidates are asked about, so a flood of reports does not push one out).
fn hold(manifest: &str, reports: &BTreeMap<String, TrialReports>, since: &mut BTreeMap<String, Instant>, now: Instant) -> Option<String> {
    let r = reports.get(manifest)?;
    let first = *since.entry(manifest.to_string()).or_insert(now);
    while since.len() > MAX_HELD {
        let Some(oldest) = since.iter().min_by_key(|(_, t)| **t).map(|(m, _)| m.clone()) else { break };
        since.remove(&oldest);
    }
    let by: Vec<String> = r.by.iter().take(3).map(|(name, kind)| format!("{name} ({kind})")).collect();
    let more = if r.by.len() > 3 { format!(" and {} more", r.by.len() - 3) } else { String::new() };
    if r.through.len() >= 2 {
        return Some(format!("failed its trial on {}{more}, reached through {} neighbours", by.join(", "), r.through.len()));
    }
    let left = HOLD_FOR.checked_sub(now.duration_since(first))?;
    Some(format!(
        "failed its trial on {}{more}, all reached through one neighbour: held {} min more unless a node reached through another says so too",
        by.join(", "),
        left.as_secs().div_ceil(60)
    ))
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
            .map(|(a, p)| {
                (
                    a.to_string(),
                    p.map(|phase| Announced { board: "rpi3".into(), upgrade: AnnouncedUpgrade { phase, ..Default::default() }, ..Default::default() }),
                )
            })
            .collect()
    }

    fn reports(by: &[(&str, &str)]) -> TrialReports {
        TrialReports {
            by: by.iter().map(|(name, _)| (name.to_string(), "router_down".into())).collect(),
            through: by.iter().map(|(_, hop)| hop.to_string()).collect(),
        }
    }

    #[test]
    fn a_release_others_report_failed_is_held_by_one_way_in_for_a_while_by_two_for_good() {
        let (one, two, quiet) = ("a".repeat(64), "b".repeat(64), "c".repeat(64));
        let all = BTreeMap::from([
            (one.clone(), reports(&[("liar", "200::2"), ("its-invention", "200::2")])),
            (two.clone(), reports(&[("x", "200::2"), ("y", "200::3")])),
        ]);
        let mut since = BTreeMap::new();
        let t0 = Instant::now();
        assert!(hold(&one, &all, &mut since, t0).unwrap().contains("held 720 min more"));
        assert!(hold(&two, &all, &mut since, t0).unwrap().contains("reached through 2 neighbours"));
        assert_eq!(hold(&quiet, &all, &mut since, t0), None);
        // Past HOLD_FOR, one way in holds no more; two still do.
        let later = t0 + HOLD_FOR + Duration::from_secs(1);
        assert_eq!(hold(&one, &all, &mut since, later), None);
        assert!(hold(&two, &all, &mut since, later).is_some());
        // A reporter that went quiet and came back does not start the hold again.
        let gone = BTreeMap::new();
        assert_eq!(hold(&one, &gone, &mut since, later), None);
        assert_eq!(hold(&one, &all, &mut since, later + Duration::from_secs(60)), None);
        // The first reports kept are bounded, the oldest forgotten.
        for i in 0..2 * MAX_HELD {
            let m = format!("{i:064x}");
            let r = BTreeMap::from([(m.clone(), reports(&[("z", "200::2")]))]);
            hold(&m, &r, &mut since, later + Duration::from_secs(i as u64));
        }
        assert_eq!(since.len(), MAX_HELD);
    }

    #[test]
    fn a_neighbour_that_just_rolled_back_is_heard_before_its_record_spreads() {
        let sha = "d".repeat(64);
        let said = |name: &str, manifest: &str| {
            let failed = vec![FailedTrial { manifest: manifest.into(), kind: "router_down".into() }];
            Some(Announced { name: name.into(), board: "rpi3".into(), upgrade: AnnouncedUpgrade { failed, ..Default::default() } })
        };
        let heard = BTreeMap::from([("200::b".to_string(), said("b", &sha)), ("200::c".to_string(), said("c", "not a sha")), ("200::d".to_string(), None)]);
        // Nothing in the view yet: the neighbour alone holds it, through itself.
        let r = with_neighbours(BTreeMap::new(), &heard);
        assert_eq!((r.len(), r[&sha].by.clone(), r[&sha].through.len()), (1, vec![("b".to_string(), "router_down".to_string())], 1));
        // With the view's report of the same node (through b) and one through e: two ways in.
        let view = BTreeMap::from([(sha.clone(), reports(&[("b", "200::b"), ("f", "200::e")]))]);
        let r = with_neighbours(view, &heard);
        assert_eq!((r[&sha].by.len(), r[&sha].through.len()), (2, 2));
    }

    #[test]
    fn the_trial_failures_a_node_announces_are_few_and_well_formed() {
        let failure = |i: usize| FailedTrial { manifest: format!("{i:064x}"), kind: "router_down".into() };
        let mut list = Vec::new();
        for i in 0..MAX_FAILED + 3 {
            list = with_failure(list, failure(i)).unwrap();
        }
        assert_eq!((list.len(), list[0].manifest.clone()), (MAX_FAILED, failure(3).manifest));
        assert_eq!(with_failure(list.clone(), failure(MAX_FAILED + 2)), None);
        assert_eq!(with_failure(list, FailedTrial { manifest: "../x".into(), kind: "router_down".into() }), None);
    }

    #[test]
    fn at_most_one_node_of_a_neighbourhood_goes_down() {
        let quiet = heard(&[("200::b", Some(Phase::Idle)), ("200::c", Some(Phase::Staged)), ("200::d", Some(Phase::Fetching))]);
        assert_eq!(holds_back("200::a", &quiet, false, &[]), None);
        for (phase, why) in [(None, "does not answer"), (Some(Phase::Trial), "is on trial"), (Some(Phase::Rebooting), "is rebooting")] {
            let h = heard(&[("200::b", Some(Phase::Idle)), ("200::c", phase)]);
            assert!(holds_back("200::a", &h, false, &[]).unwrap().contains(why));
        }
        // Two neighbours said "rebooting" at once: the lower address goes, the other waits.
        let a_sees_b = heard(&[("200::b", Some(Phase::Rebooting))]);
        let b_sees_a = heard(&[("200::a", Some(Phase::Rebooting))]);
        assert_eq!(holds_back("200::a", &a_sees_b, true, &[]), None);
        assert!(holds_back("200::b", &b_sees_a, true, &[]).is_some());
        // A neighbour on trial holds back even the lower address.
        assert!(holds_back("200::a", &heard(&[("200::b", Some(Phase::Trial))]), true, &[]).is_some());
    }

    #[test]
    fn a_peer_that_never_answered_is_not_waited_for_but_a_silent_node_is() {
        let mut members = BTreeMap::new();
        // 200::m (a monitoring machine's router) never serves nodeinfo; 200::b does.
        let first = only_nodes(heard(&[("200::b", Some(Phase::Idle)), ("200::m", None)]), &mut members);
        assert_eq!(first.keys().collect::<Vec<_>>(), ["200::b"]);
        assert_eq!(holds_back("200::a", &first, false, &[]), None);
        // b goes quiet (rebooting): still waited for.
        let later = only_nodes(heard(&[("200::b", None), ("200::m", None)]), &mut members);
        assert!(holds_back("200::a", &later, false, &[]).unwrap().contains("200::b does not answer"));
    }

    fn offering(releases: &[(&str, &str)]) -> Option<Announced> {
        let releases = releases.iter().map(|(v, m)| Release { version: v.to_string(), manifest: m.to_string(), slot: "a".into(), running: true }).collect();
        Some(Announced { board: "rpi3".into(), upgrade: AnnouncedUpgrade { phase: Phase::Idle, releases, ..Default::default() }, ..Default::default() })
    }

    #[test]
    fn a_liars_999_costs_a_round_and_the_honest_release_comes_next() {
        let (fake, honest) = ("f".repeat(64), "a".repeat(64));
        let heard: BTreeMap<String, Option<Announced>> = [
            ("200::b".to_string(), offering(&[("1.1", &honest)])),
            ("200::c".to_string(), offering(&[("1.1", &honest)])),
            ("200::e".to_string(), offering(&[("999", &fake)])),
        ]
        .into();
        let list = candidates(&heard, "rpi3", "1.0", &[], &[]);
        let names: Vec<(&str, usize)> = list.iter().map(|(r, by)| (r.version.as_str(), by.len())).collect();
        assert_eq!(names, [("999", 1), ("1.1", 2)]);
        // 999's header did not come (or was not it): it is skipped, 1.1 is next.
        let list = candidates(&heard, "rpi3", "1.0", std::slice::from_ref(&fake), &[]);
        assert_eq!(list.len(), 1);
        assert_eq!((list[0].0.version.as_str(), list[0].1.clone()), ("1.1", vec!["200::b".to_string(), "200::c".to_string()]));
    }

    #[test]
    fn a_release_spreads_only_from_a_node_where_it_passed_its_trial() {
        let m = "a".repeat(64);
        let staged = Release { version: "1.1".into(), manifest: m.clone(), slot: "b".into(), running: false };
        let running = Release { running: true, ..staged.clone() };
        let says = |phase, r: &Release| {
            Some(Announced { board: "rpi3".into(), upgrade: AnnouncedUpgrade { phase, releases: vec![r.clone()], ..Default::default() }, ..Default::default() })
        };
        // The canary holds it staged, then runs it on trial: nobody takes it yet.
        for a in [says(Phase::Staged, &staged), says(Phase::Rebooting, &staged), says(Phase::Trial, &running)] {
            let heard: BTreeMap<String, Option<Announced>> = [("200::b".to_string(), a)].into();
            assert!(candidates(&heard, "rpi3", "1.0", &[], &[]).is_empty());
        }
        // It committed: its neighbours take it, from every neighbour that holds it.
        let heard: BTreeMap<String, Option<Announced>> =
            [("200::b".to_string(), says(Phase::Idle, &running)), ("200::c".to_string(), says(Phase::Staged, &staged))].into();
        let list = candidates(&heard, "rpi3", "1.0", &[], &[]);
        assert_eq!(list.len(), 1);
        assert_eq!(list[0].1, ["200::b", "200::c"]);
    }

    #[test]
    fn announced_strings_of_the_wrong_form_are_not_read() {
        let long = "a".repeat(60_000);
        let bad = [
            ("1.1", long.as_str()),
            ("1.1", "../../etc/passwd"),
            ("1.1", &"A".repeat(64)),
            (long.as_str(), &"b".repeat(64)),
            ("1.1/../x", &"c".repeat(64)),
            ("", &"d".repeat(64)),
        ];
        for (v, m) in bad {
            let heard: BTreeMap<String, Option<Announced>> = [("200::b".to_string(), offering(&[(v, m)]))].into();
            assert!(candidates(&heard, "rpi3", "1.0", &[], &[]).is_empty(), "{} {}", &v[..v.len().min(20)], &m[..m.len().min(20)]);
        }
        // A neighbour announcing many releases is read for its first few only.
        let many: Vec<(String, String)> = (0..50).map(|i| (format!("2.{i}"), format!("{i:064x}"))).collect();
        let many: Vec<(&str, &str)> = many.iter().map(|(v, m)| (v.as_str(), m.as_str())).collect();
        let heard: BTreeMap<String, Option<Announced>> = [("200::b".to_string(), offering(&many))].into();
        assert_eq!(candidates(&heard, "rpi3", "1.0", &[], &[]).len(), MAX_ANNOUNCED);
    }

    #[test]
    fn a_neighbour_stuck_in_trial_or_silent_holds_back_only_so_long() {
        let limit = hold_limit(Duration::from_secs(180));
        assert_eq!(limit, Duration::from_secs(900));
        let t0 = Instant::now();
        let mut since = BTreeMap::new();
        let stuck = heard(&[("200::b", Some(Phase::Trial)), ("200::c", None), ("200::d", Some(Phase::Idle))]);
        track(&mut since, &stuck, t0);
        assert!(past_limit(&since, limit, t0 + limit / 2).is_empty());
        assert!(holds_back("200::a", &stuck, false, &past_limit(&since, limit, t0 + limit / 2)).is_some());
        // Still the same a quarter of an hour later: b and c no longer count; d never did.
        track(&mut since, &stuck, t0 + limit);
        let past = past_limit(&since, limit, t0 + limit + Duration::from_secs(1));
        assert_eq!(past, ["200::b", "200::c"]);
        assert_eq!(holds_back("200::a", &stuck, false, &past), None);
        // b commits and goes on trial again later (another release): its count starts again.
        track(&mut since, &heard(&[("200::b", Some(Phase::Idle)), ("200::c", None)]), t0 + limit * 2);
        track(&mut since, &heard(&[("200::b", Some(Phase::Trial)), ("200::c", None)]), t0 + limit * 3);
        assert_eq!(past_limit(&since, limit, t0 + limit * 3 + Duration::from_secs(1)), ["200::c"]);
    }

    #[test]
    fn the_refusal_list_stays_bounded_and_keeps_the_newest() {
        let mut list = Vec::new();
        for i in 0..100 {
            list = with_refusal(list, &format!("{i:064x}")).unwrap();
        }
        assert_eq!(list.len(), MAX_REFUSED);
        assert_eq!((list[0].clone(), list[MAX_REFUSED - 1].clone()), (format!("{:064x}", 100 - MAX_REFUSED), format!("{:064x}", 99)));
        assert_eq!(with_refusal(list.clone(), &format!("{:064x}", 99)), None);
        assert_eq!(with_refusal(list, &"x".repeat(60_000)), None);
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
