//! Scenarios: what happens to the lab's mesh, and what is measured while it does.
//!
//! `rollout`: every card starts with release N; the nodes the topology marks `updates` (or
//! the first node) find N+1 in their boot partition's `updates/`; meshd does the rest. The
//! lab watches until every node runs N+1 committed (or the time is up) and measures how long
//! that took, who was down together, what each node fetched, and meshd's memory. Nodes that
//! run a command instead of meshd take part in the mesh but not in these counts.

use crate::lab::{self, Lab};
use serde::Serialize;
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::time::{Duration, Instant};

pub struct Rollout {
    pub update: PathBuf,
    pub timeout: Duration,
    /// The `faults` scenario: lossy radio links (made so before the lab), a power cut in the
    /// middle of a fetch, an island cut off (crate::faults).
    pub faults: bool,
    /// What the faults' rogue offers once every node has committed (crate::faults).
    pub rogue_then: Option<PathBuf>,
}

#[derive(Debug, Serialize)]
pub struct Stranded {
    pub node: String,
    pub version: Option<String>,
    pub reason: String,
}

#[derive(Debug, Serialize)]
pub struct Report {
    pub scenario: &'static str,
    /// The nodes that ran a command instead of meshd (not counted in `nodes`).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub command_nodes: Vec<String>,
    /// What the `faults` scenario did, and when.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub faults: Option<crate::faults::FaultReport>,
    pub nodes: usize,
    pub links: usize,
    pub boot_time_s: u64,
    pub release: String,
    pub update: String,
    /// Making the cards and the network, before the nodes are powered on.
    pub seconds_to_set_up: f64,
    /// From power-on.
    pub seconds_to_all_up: Option<f64>,
    pub seconds_to_all_routed: Option<f64>,
    pub committed: usize,
    pub seconds_to_all_committed: Option<f64>,
    pub seconds_to_50_percent: Option<f64>,
    pub seconds_to_90_percent: Option<f64>,
    /// The most nodes down (rebooting, or not yet up again) at one moment after all were up.
    pub max_down_at_once: usize,
    /// Moments when two linked nodes were down together (each pair counted once per moment).
    pub neighbours_down_together: usize,
    pub neighbours_down_together_pairs: Vec<(String, String, f64)>,
    pub stranded: Vec<Stranded>,
    pub bundle_bytes: u64,
    pub bytes_fetched: BTreeMap<String, u64>,
    pub max_fetched_share: f64,
    pub meshd_peak_rss_kib: BTreeMap<String, u64>,
    pub meshd_peak_rss_kib_max: u64,
    pub reboots: u32,
    pub meshd_crashes: u32,
    pub lab_cpu_s: f64,
    pub lab_peak_rss_kib: u64,
    /// The host's memory in use (MemTotal - MemAvailable) at its peak, less what was in use
    /// before the lab started: what the whole lab (nodes, routers, kernel) took.
    pub host_memory_peak_kib: u64,
}

/// Who is down together: the most nodes down at one moment, and each moment two linked nodes
/// that run meshd were both down (a pair counted once per moment).
#[derive(Default)]
pub(crate) struct DownWatch {
    pub max_down: usize,
    pub together: Vec<(String, String, f64)>,
    before: BTreeSet<(usize, usize)>,
}

/// The check both rollouts and the broken scenario make: no two linked nodes down together.
pub(crate) fn together_check(pairs: &[(String, String, f64)]) -> Option<String> {
    pairs.first().map(|(a, b, t)| format!("linked nodes were down together {} time(s), first {a} and {b} at {t:.0} s", pairs.len()))
}

/// A summary's lines for the nodes that did not end where they should (ten at most).
pub(crate) fn stranded_lines(stranded: &[Stranded]) -> String {
    let mut out = String::new();
    for s in stranded.iter().take(10) {
        out += &format!("  stranded {} ({}): {}\n", s.node, s.version.as_deref().unwrap_or("down"), s.reason);
    }
    if stranded.len() > 10 {
        out += &format!("  stranded … and {} more (see report.json)\n", stranded.len() - 10);
    }
    out
}

impl DownWatch {
    pub fn observe(&mut self, lab: &Lab, down: &[bool], members: &[bool], t: f64) {
        self.max_down = self.max_down.max(down.iter().filter(|d| **d).count());
        let mut now_both = BTreeSet::new();
        for l in &lab.topology.links {
            if down[l.a] && down[l.b] && members[l.a] && members[l.b] {
                now_both.insert((l.a, l.b));
                if !self.before.contains(&(l.a, l.b)) {
                    self.together.push((lab.topology.nodes[l.a].id.clone(), lab.topology.nodes[l.b].id.clone(), t));
                }
            }
        }
        self.before = now_both;
    }
}

/// The first ten of `ids`, for a failed check's line.
pub(crate) fn first_ids(ids: &[String]) -> String {
    ids.iter().take(10).cloned().collect::<Vec<_>>().join(", ")
}

pub(crate) fn mem_used_kib() -> u64 {
    let text = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let get = |k: &str| text.lines().find(|l| l.starts_with(k)).and_then(|l| l.split_whitespace().nth(1)).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    get("MemTotal:").saturating_sub(get("MemAvailable:"))
}

fn own_usage() -> (f64, u64) {
    // SAFETY: getrusage fills the struct it is given.
    let mut u: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut u) };
    let secs = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    (secs(u.ru_utime) + secs(u.ru_stime), u.ru_maxrss as u64)
}

/// What one node says of itself, as far as the rollout goes.
#[derive(Default)]
struct Seen {
    version: Option<String>,
    committed: bool,
    note: Option<String>,
}

fn seen(status: Option<&Value>, update_version: &str) -> Seen {
    let Some(s) = status else { return Seen::default() };
    let version = s["version"].as_str().map(String::from);
    let committed = version.as_deref() == Some(update_version) && s["slots"]["marked_good"].as_bool() == Some(true);
    let note = s["upgrade"]["note"].as_str().map(String::from);
    Seen { version, committed, note }
}

pub fn rollout(lab: &mut Lab, plan: &Rollout) -> Result<Report, String> {
    // Only the header is read here; the file is closed before the rollout starts.
    let (update_version, update_sha, bundle_bytes) = {
        let file = std::fs::File::open(&plan.update).map_err(|e| format!("{}: {e}", plan.update.display()))?;
        let opened = meshos_common::bundle::open(file).map_err(|e| format!("{}: {e}", plan.update.display()))?;
        (opened.manifest.version.clone(), opened.manifest_sha256(), opened.total_size())
    };
    // The nodes that run meshd: the rollout's.
    let members: Vec<bool> = lab.nodes.iter().map(|n| n.command.is_none()).collect();
    let givers: Vec<usize> = match lab.topology.nodes.iter().enumerate().filter(|(i, n)| n.updates && members[*i]).map(|(i, _)| i).collect::<Vec<_>>() {
        v if v.is_empty() => vec![members.iter().position(|m| *m).ok_or("no node of this topology runs meshd")?],
        v => v,
    };
    for &i in &givers {
        lab.give_update(i, &plan.update)?;
    }
    eprintln!(
        "meshlab: rollout of {update_version} over {} nodes, starting from {}",
        members.iter().filter(|m| **m).count(),
        givers.iter().map(|&i| lab.topology.nodes[i].id.as_str()).collect::<Vec<_>>().join(", ")
    );
    let mut faults = plan.faults.then(|| crate::faults::Driver::new(crate::faults::choose(&lab.topology, &givers), lab, plan.rogue_then.clone()));
    if let Some(f) = &faults {
        lab.set_config(f.faults.victim, &crate::faults::victim_config(crate::lab::MESH_YAML))?;
        eprintln!(
            "meshlab: faults: radio links lose {:.0} %; node {} loses power while it fetches; island: {}",
            100.0 * crate::faults::RADIO_LOSS,
            f.report.victim,
            if f.report.island.is_empty() { "none (no part of this mesh hangs on one link)".to_string() } else { f.report.island.join(", ") }
        );
    }
    if plan.faults {
        // The liar answers with N's genuine header, for releases that are not N.
        let header = lab.work_dir().join("template/boot/a").join(meshos_common::bundle::SLOT_HEADER_FILE);
        let header = std::fs::read(&header).map_err(|e| format!("{}: {e}", header.display()))?;
        let board = lab.release.manifest.compatible.trim_start_matches("meshos-").to_string();
        crate::faults::arm_liar(lab, &board, (&update_version, &update_sha), &header)?;
    }
    if let Some(r) = lab.nodes.iter().find(|n| n.command.is_some() && n.id.starts_with("rogue")) {
        let beside: Vec<&str> = lab.neighbours[lab.nodes.iter().position(|n| n.id == r.id).expect("found")].iter().map(|&k| lab.nodes[k].id.as_str()).collect();
        eprintln!("meshlab: faults: node {} beside {} offers {update_version} with every chunk corrupted", r.id, beside.join(", "));
    }
    let baseline = mem_used_kib();
    let mut host_peak = 0;
    lab.power_on_all();
    let all = lab.nodes.len();
    let n = members.iter().filter(|m| **m).count();
    let (mut all_up, mut all_routed, mut all_committed) = (None, None, None);
    let mut committed_at: Vec<Option<f64>> = vec![None; all];
    let mut notes: Vec<Seen> = (0..all).map(|_| Seen::default()).collect();
    let mut routed = vec![false; all];
    let mut watch = DownWatch::default();
    let (mut last_look, mut last_print) = (Instant::now() - Duration::from_secs(60), Instant::now());
    let deadline = Instant::now() + plan.timeout;
    loop {
        if lab::stopped() {
            return Err("interrupted".into());
        }
        lab.tick();
        let t = lab.seconds();
        let down: Vec<bool> = lab.nodes.iter().map(|n| !n.is_up()).collect();
        if all_up.is_none() && !down.contains(&true) {
            all_up = Some(t);
        }
        if all_up.is_some() {
            watch.observe(lab, &down, &members, t);
        }
        if last_look.elapsed() >= Duration::from_secs(5) {
            last_look = Instant::now();
            host_peak = host_peak.max(mem_used_kib().saturating_sub(baseline));
            for (i, node) in lab.nodes.iter_mut().enumerate() {
                node.sample_memory();
                notes[i] = seen(node.status().as_ref(), &update_version);
                if notes[i].committed && committed_at[i].is_none() {
                    committed_at[i] = Some(t);
                }
                if !routed[i] && (lab.neighbours[i].is_empty() || !node.router_peers().is_empty()) {
                    routed[i] = true;
                }
            }
            if all_routed.is_none() && routed.iter().all(|r| *r) {
                all_routed = Some(t);
            }
        }
        let committed = committed_at.iter().filter(|c| c.is_some()).count();
        if let Some(f) = faults.as_mut() {
            let island = f.faults.cut.as_ref().map(|(_, c)| c.clone()).unwrap_or_default();
            let rest_committed = (0..all).filter(|k| members[*k] && !island.contains(k)).all(|k| committed_at[k].is_some());
            f.step(lab, all_up.is_some(), rest_committed)?;
        }
        if last_print.elapsed() >= Duration::from_secs(10) {
            last_print = Instant::now();
            let up = down.iter().zip(&members).filter(|(d, m)| !**d && **m).count();
            eprintln!(
                "meshlab: {:>5.0} s: {up}/{n} up, {}/{n} routed, {committed}/{n} committed {update_version}, {} down",
                t,
                routed.iter().zip(&members).filter(|(r, m)| **r && **m).count(),
                n - up
            );
        }
        if committed == n {
            all_committed.get_or_insert(t);
            if faults.as_mut().map_or(Ok(true), |f| f.after_commit(lab))? {
                break;
            }
        }
        if Instant::now() > deadline {
            eprintln!("meshlab: the rollout's {} s are up", plan.timeout.as_secs());
            break;
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    let mut times: Vec<f64> = committed_at.iter().flatten().copied().collect();
    times.sort_by(f64::total_cmp);
    let share = |p: f64| {
        let k = (p * n as f64).ceil() as usize;
        (k >= 1 && times.len() >= k).then(|| times[k - 1])
    };
    let mut bytes_fetched = BTreeMap::new();
    for node in lab.nodes.iter().filter(|n| n.command.is_none()) {
        let fetched = node.install_record().and_then(|r| r["transfer"]["fetched_bytes"].as_u64()).unwrap_or(0);
        bytes_fetched.insert(node.id.clone(), fetched);
    }
    let stranded = lab
        .nodes
        .iter()
        .enumerate()
        .filter(|(i, _)| members[*i] && committed_at[*i].is_none())
        .map(|(i, node)| {
            let record = node.install_record();
            let reason = notes[i].note.clone().or_else(|| record.as_ref().and_then(|r| r["error"].as_str().map(String::from))).unwrap_or_else(|| {
                if node.is_up() {
                    "meshd says nothing of an upgrade".into()
                } else {
                    "down".into()
                }
            });
            Stranded { node: node.id.clone(), version: notes[i].version.clone(), reason }
        })
        .collect();
    let (cpu, rss) = own_usage();
    let rss_by_node: BTreeMap<String, u64> = lab.nodes.iter().filter(|n| n.command.is_none()).map(|n| (n.id.clone(), n.peak_rss_kib)).collect();
    Ok(Report {
        scenario: if plan.faults { "faults" } else { "rollout" },
        command_nodes: lab.nodes.iter().filter(|n| n.command.is_some()).map(|n| n.id.clone()).collect(),
        faults: faults.map(|f| f.finish(lab)),
        nodes: n,
        links: lab.topology.links.len(),
        boot_time_s: lab.launch.boot_time.as_secs(),
        release: lab.release.manifest.version.clone(),
        update: update_version,
        seconds_to_set_up: lab.setup_s,
        seconds_to_all_up: all_up,
        seconds_to_all_routed: all_routed,
        committed: times.len(),
        seconds_to_all_committed: all_committed,
        seconds_to_50_percent: share(0.5),
        seconds_to_90_percent: share(0.9),
        max_down_at_once: watch.max_down,
        neighbours_down_together: watch.together.len(),
        neighbours_down_together_pairs: watch.together,
        stranded,
        bundle_bytes,
        max_fetched_share: bytes_fetched.values().map(|b| *b as f64 / bundle_bytes.max(1) as f64).fold(0.0, f64::max),
        bytes_fetched,
        meshd_peak_rss_kib_max: rss_by_node.values().copied().max().unwrap_or(0),
        meshd_peak_rss_kib: rss_by_node,
        reboots: lab.nodes.iter().filter(|n| n.command.is_none()).map(|n| n.boots.saturating_sub(1)).sum(),
        meshd_crashes: lab.nodes.iter().map(|n| n.crashes).sum(),
        lab_cpu_s: cpu,
        lab_peak_rss_kib: rss,
        host_memory_peak_kib: host_peak,
    })
}

/// What a node may fetch of a release over the mesh: the chunks it lacks, a small share
/// when the release is a small change (docs/upgrades.md).
pub const MAX_FETCHED_SHARE: f64 = 0.05;

impl Report {
    /// The rollout's checks (none on time): every node committed, no two linked nodes down
    /// at once, no node fetched more than [`MAX_FETCHED_SHARE`] of the bundle.
    pub fn failed_checks(&self) -> Vec<String> {
        let mut failed = Vec::new();
        if !self.stranded.is_empty() {
            failed.push(format!("{} of {} nodes did not commit {}", self.stranded.len(), self.nodes, self.update));
        }
        failed.extend(together_check(&self.neighbours_down_together_pairs));
        if let Some((node, bytes)) = self.bytes_fetched.iter().max_by_key(|(_, b)| **b).filter(|_| self.max_fetched_share > MAX_FETCHED_SHARE) {
            let pct = 100.0 * *bytes as f64 / self.bundle_bytes.max(1) as f64;
            failed.push(format!("node {node} fetched {bytes} bytes, {pct:.1} % of the bundle (at most {:.0} %)", 100.0 * MAX_FETCHED_SHARE));
        }
        // The rogue's neighbours committed (above) and threw its chunks away: at least one
        // asked it (meshd spreads a fetch over every neighbour that offers the release).
        if let Some(r) = self.faults.as_ref().and_then(|f| f.rogue.as_ref()).filter(|r| r.bad_chunks_rejected.values().all(|b| *b == 0)) {
            failed.push(format!("no neighbour of the rogue ({}) recorded a chunk of it thrown away", r.node));
        }
        if let Some(l) = self.faults.as_ref().and_then(|f| f.liar.as_ref()) {
            let silent: Vec<&str> = l.named_by.iter().filter(|(_, named)| !**named).map(|(k, _)| k.as_str()).collect();
            if !silent.is_empty() {
                failed.push(format!(
                    "the liar ({}) answered with another release's header, but its neighbour(s) {} did not name it",
                    l.node,
                    silent.join(", ")
                ));
            }
        }
        if let Some(r) = self.faults.as_ref().and_then(|f| f.rogue.as_ref()) {
            if let Some(v) = &r.then_offered {
                let not: Vec<&str> = r.refused_at_signature.iter().filter(|(_, ok)| !**ok).map(|(k, _)| k.as_str()).collect();
                if !not.is_empty() {
                    failed.push(format!(
                        "the rogue offered {v}, signed by too few keys, and its neighbour(s) {} did not refuse it at the signature",
                        not.join(", ")
                    ));
                }
                if !r.holding_then.is_empty() {
                    failed.push(format!("node(s) {} hold {v}, signed by too few keys, in a slot", r.holding_then.join(", ")));
                }
            }
        }
        failed
    }

    /// A few lines for a person.
    pub fn summary(&self) -> String {
        let secs = |s: Option<f64>| s.map_or("never".to_string(), |s| format!("{s:.0} s"));
        let mut out = format!(
            "rollout of {} over {} nodes ({} links, {} s boots)\n  up       set up in {:.0} s, then all up {}, routed {}\n  committed {}/{}: half at {}, 90 % at {}, all at {}\n  down     at most {} at once; linked nodes down together {} time(s)\n  fetched  at most {:.1} % of the {}-byte bundle per node\n  meshd    at most {} KiB resident; {} reboots, {} crashes\n  lab      {:.0} s of CPU, {} KiB itself; host memory in use grew by at most {} MiB\n",
            self.update,
            self.nodes,
            self.links,
            self.boot_time_s,
            self.seconds_to_set_up,
            secs(self.seconds_to_all_up),
            secs(self.seconds_to_all_routed),
            self.committed,
            self.nodes,
            secs(self.seconds_to_50_percent),
            secs(self.seconds_to_90_percent),
            secs(self.seconds_to_all_committed),
            self.max_down_at_once,
            self.neighbours_down_together,
            100.0 * self.max_fetched_share,
            self.bundle_bytes,
            self.meshd_peak_rss_kib_max,
            self.reboots,
            self.meshd_crashes,
            self.lab_cpu_s,
            self.lab_peak_rss_kib,
            self.host_memory_peak_kib / 1024,
        );
        if let Some(r) = self.faults.as_ref().and_then(|f| f.rogue.as_ref()) {
            let thrown: u64 = r.bad_chunks_rejected.values().sum();
            out += &format!("  rogue    {} ({}): its neighbours threw away {thrown} chunk(s) of it\n", r.node, r.address);
            if let Some(v) = &r.then_offered {
                let refused = r.refused_at_signature.values().filter(|ok| **ok).count();
                out += &format!(
                    "           then offered {v} (too few signatures): {refused}/{} neighbour(s) refused it at the signature, {} node(s) hold it\n",
                    r.refused_at_signature.len(),
                    r.holding_then.len()
                );
            }
        }
        if let Some(l) = self.faults.as_ref().and_then(|f| f.liar.as_ref()) {
            let named = l.named_by.values().filter(|n| **n).count();
            out += &format!(
                "  liar     {} ({}): announced 999 and answered with another release's header; named by {named}/{} neighbour(s)\n",
                l.node,
                l.address,
                l.named_by.len()
            );
        }
        out + &stranded_lines(&self.stranded)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report() -> Report {
        Report {
            scenario: "rollout",
            faults: None,
            command_nodes: Vec::new(),
            nodes: 3,
            links: 2,
            boot_time_s: 5,
            release: "1.0".into(),
            update: "1.1".into(),
            seconds_to_set_up: 3.0,
            seconds_to_all_up: Some(5.0),
            seconds_to_all_routed: Some(6.0),
            committed: 3,
            seconds_to_all_committed: Some(90.0),
            seconds_to_50_percent: Some(40.0),
            seconds_to_90_percent: Some(80.0),
            max_down_at_once: 1,
            neighbours_down_together: 0,
            neighbours_down_together_pairs: Vec::new(),
            stranded: Vec::new(),
            bundle_bytes: 1000,
            bytes_fetched: [("0".to_string(), 0), ("1".to_string(), 20), ("2".to_string(), 30)].into(),
            max_fetched_share: 0.03,
            meshd_peak_rss_kib: BTreeMap::new(),
            meshd_peak_rss_kib_max: 0,
            reboots: 3,
            meshd_crashes: 0,
            lab_cpu_s: 1.0,
            lab_peak_rss_kib: 1,
            host_memory_peak_kib: 1,
        }
    }

    #[test]
    fn a_rollout_passes_only_when_all_commit_none_down_together_and_fetches_stay_small() {
        assert!(report().failed_checks().is_empty());
        let mut r = report();
        r.stranded.push(Stranded { node: "2".into(), version: Some("1.0".into()), reason: "waiting to reboot".into() });
        r.neighbours_down_together_pairs.push(("0".into(), "1".into(), 12.0));
        r.neighbours_down_together = 1;
        r.bytes_fetched.insert("2".into(), 60);
        r.max_fetched_share = 0.06;
        assert_eq!(
            r.failed_checks(),
            [
                "1 of 3 nodes did not commit 1.1",
                "linked nodes were down together 1 time(s), first 0 and 1 at 12 s",
                "node 2 fetched 60 bytes, 6.0 % of the bundle (at most 5 %)"
            ]
        );
        assert!(r.summary().contains("stranded 2 (1.0): waiting to reboot"));
    }
}
