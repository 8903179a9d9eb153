//! The `faults` scenario's troubles, laid over a rollout: radio links that lose 10 % of what
//! they carry, a node that loses power in the middle of its fetch, an island cut off from the
//! mesh while the release spreads, which rejoins once the rest has committed, and a rogue
//! neighbour of the best-linked node that offers the new release with every chunk corrupted;
//! once every node has committed, the rogue may offer a next release signed by too few keys,
//! which its neighbours must refuse at the signature.

use crate::lab::Lab;
use crate::net;
use crate::topology::{Link, Node, Router, Topology, WIFI_KBIT};
use serde::Serialize;
use std::collections::{BTreeMap, VecDeque};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// What every radio link loses at least.
pub const RADIO_LOSS: f64 = 0.10;
/// The victim's fetch is rate-limited so that it lasts long enough to be cut.
const VICTIM_RATE_KBIT: u64 = 400;
/// How long the victim fetches before its power goes, and how long it stays off.
const CUT_AFTER: Duration = Duration::from_secs(3);
const OFF_FOR: Duration = Duration::from_secs(15);
/// The island rejoins once every other node committed, or after this long at the latest.
const ISLAND_AWAY_AT_MOST: Duration = Duration::from_secs(900);
/// How long the rogue's neighbours have to refuse the release it offers last.
const REFUSE_WITHIN: Duration = Duration::from_secs(300);

pub struct Faults {
    pub victim: usize,
    /// The link cut off the island (by index), and the island's nodes.
    pub cut: Option<(usize, Vec<usize>)>,
}

#[derive(Debug, Default, Serialize)]
pub struct FaultReport {
    pub radio_loss: f64,
    pub victim: String,
    pub victim_power_cut_at_s: Option<f64>,
    pub victim_powered_on_at_s: Option<f64>,
    pub island: Vec<String>,
    pub island_cut_at_s: Option<f64>,
    pub island_rejoined_at_s: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rogue: Option<RogueReport>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub liar: Option<LiarReport>,
}

#[derive(Debug, Default, Serialize)]
pub struct LiarReport {
    pub node: String,
    pub address: String,
    /// Whether each of its neighbours named it for a false claim (in its status, while the
    /// rollout ran).
    pub named_by: BTreeMap<String, bool>,
}

#[derive(Debug, Default, Serialize)]
pub struct RogueReport {
    pub node: String,
    pub address: String,
    /// Chunks each neighbour of the rogue asked it for and threw away (their bytes did not
    /// match the signed manifest), from the neighbour's record of its install.
    pub bad_chunks_rejected: BTreeMap<String, u64>,
    /// The release it offered once every node had committed (signed by too few keys): which
    /// of its neighbours refused it at the signature, and the nodes holding it in a slot.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub then_offered: Option<String>,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub refused_at_signature: BTreeMap<String, bool>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub holding_then: Vec<String>,
}

/// Adds the rogue: a node that runs a plain web server over `files` (a release as `meshimg
/// export` lays it out, its chunks corrupted) on meshd's port, linked by radio to the node
/// with the most neighbours. It serves `www` in its directory, a link to `files` until
/// [`Driver::after_commit`] points it elsewhere.
pub fn add_rogue(topology: &mut Topology, files: &Path) -> Result<(), String> {
    let files = files.canonicalize().map_err(|e| format!("{}: {e}", files.display()))?;
    let serve = format!("ln -sfn '{}' \"$MESHLAB_DIR/www\" && {SERVE_WWW}", files.display());
    add_beside_hub(topology, "rogue", serve)
}

/// Adds the liar beside the hub: the lab's hostile program (crate::hostile; a web server over
/// `www` in its directory, which [`arm_liar`] fills once the lab is made, holding idle
/// connections to the hub all along).
pub fn add_liar(topology: &mut Topology) -> Result<(), String> {
    add_beside_hub(topology, "liar", crate::hostile::RUN_ATTACK.into())
}

/// A plain web server over the node's `www`, on meshd's port.
const SERVE_WWW: &str = "exec python3 -m http.server --bind :: --directory \"$MESHLAB_DIR/www\" 9100";

/// Adds a node named `name` (or so, made unique) running `command`, linked by radio to the
/// node with the most neighbours.
pub(crate) fn add_beside_hub(topology: &mut Topology, name: &str, command: String) -> Result<(), String> {
    let nb = topology.neighbours();
    let hub = (0..topology.nodes.len())
        .filter(|&k| topology.nodes[k].run.is_none())
        .max_by_key(|&k| (nb[k].len(), std::cmp::Reverse(k)))
        .ok_or("no node runs meshd")?;
    let mut id = name.to_string();
    while topology.nodes.iter().any(|n| n.id == id) {
        id.push('x');
    }
    topology.nodes.push(Node { id, router: Router::Yggdrasil, updates: false, run: Some(command) });
    let node = topology.nodes.len() - 1;
    topology.links.push(Link { a: hub, b: node, radio: true, rate_kbit: WIFI_KBIT, loss_ab: RADIO_LOSS, loss_ba: RADIO_LOSS });
    Ok(())
}

/// Writes what the liar serves: an announcement of version 999 (a manifest sha no release
/// has) and of `update` (the rollout's new release: its version and genuine manifest sha), on
/// `board`, and for both, under `/header/<sha>`, `other_header`: another release's genuine
/// header.
pub fn arm_liar(lab: &Lab, board: &str, update: (&str, &str), other_header: &[u8]) -> Result<(), String> {
    let Some(l) = liar_of(lab) else { return Ok(()) };
    let www = lab.nodes[l].dir.join("www");
    let fake = meshos_common::chunks::sha256_hex(b"meshlab: a release no one built");
    let release =
        |version: &str, manifest: &str, slot: &str| serde_json::json!({"version": version, "manifest": manifest, "slot": slot, "running": slot == "a"});
    let nodeinfo = serde_json::json!({
        "name": "meshlab-liar", "board": board, "version": "999",
        "upgrade": {"phase": "idle", "releases": [release("999", &fake, "a"), release(update.0, update.1, "b")]},
    });
    let err = |e: std::io::Error| format!("{}: {e}", www.display());
    std::fs::create_dir_all(www.join("header")).map_err(err)?;
    std::fs::write(www.join("nodeinfo.json"), nodeinfo.to_string()).map_err(err)?;
    for sha in [fake.as_str(), update.1] {
        std::fs::write(www.join("header").join(sha), other_header).map_err(err)?;
    }
    crate::hostile::write_attack(&lab.nodes[l].dir)
}

/// Raises every radio link's loss to at least [`RADIO_LOSS`].
pub fn lossy(topology: &mut Topology) {
    for l in topology.links.iter_mut().filter(|l| l.radio) {
        l.loss_ab = l.loss_ab.max(RADIO_LOSS);
        l.loss_ba = l.loss_ba.max(RADIO_LOSS);
    }
}

fn distances(neighbours: &[Vec<usize>], from: &[usize], without: Option<usize>, topology: &Topology) -> Vec<Option<usize>> {
    let mut d = vec![None; neighbours.len()];
    let mut todo: VecDeque<usize> = from.iter().copied().collect();
    for &f in from {
        d[f] = Some(0);
    }
    while let Some(n) = todo.pop_front() {
        for &m in &neighbours[n] {
            let cut = without.is_some_and(|i| {
                let l = &topology.links[i];
                (l.a, l.b) == (n, m) || (l.a, l.b) == (m, n)
            });
            if !cut && d[m].is_none() {
                d[m] = Some(d[n].expect("set") + 1);
                todo.push_back(m);
            }
        }
    }
    d
}

/// Picks the island (the largest part, at most half the mesh, that one link joins to the
/// rest, away from the nodes that start the rollout) and the victim (a node farthest from
/// them, outside the island).
pub fn choose(topology: &Topology, givers: &[usize]) -> Faults {
    let nb = topology.neighbours();
    let n = topology.nodes.len();
    let mut cut: Option<(usize, Vec<usize>)> = None;
    for i in 0..topology.links.len() {
        let d = distances(&nb, givers, Some(i), topology);
        let island: Vec<usize> = (0..n).filter(|&k| d[k].is_none()).collect();
        let all = distances(&nb, givers, None, topology);
        let joined_before = island.iter().all(|&k| all[k].is_some());
        let all_meshd = island.iter().all(|&k| topology.nodes[k].run.is_none());
        if joined_before && all_meshd && !island.is_empty() && island.len() * 2 <= n && cut.as_ref().is_none_or(|(_, c)| island.len() > c.len()) {
            cut = Some((i, island));
        }
    }
    let d = distances(&nb, givers, None, topology);
    let in_island = |k: usize| cut.as_ref().is_some_and(|(_, c)| c.contains(&k));
    let victim = (0..n)
        .filter(|&k| !in_island(k) && !givers.contains(&k) && topology.nodes[k].run.is_none())
        .max_by_key(|&k| (d[k].unwrap_or(0), std::cmp::Reverse(k)))
        .unwrap_or(0);
    Faults { victim, cut }
}

/// The victim's mesh.yaml: the lab's, with its fetch slowed.
pub fn victim_config(base: &str) -> String {
    format!("{base}upgrade:\n  rateLimitKbit: {VICTIM_RATE_KBIT}\n")
}

/// Carries the faults out as the rollout goes; called every step of the lab's loop.
pub struct Driver {
    pub faults: Faults,
    pub report: FaultReport,
    fetching_since: Option<Instant>,
    off_until: Option<Instant>,
    cut_at: Option<Instant>,
    done_cutting_power: bool,
    /// What the rogue offers once every node has committed, and since when it does.
    then: Option<PathBuf>,
    then_since: Option<Instant>,
}

impl Driver {
    pub fn new(faults: Faults, lab: &Lab, then: Option<PathBuf>) -> Driver {
        let ids = |v: &[usize]| v.iter().map(|&k| lab.topology.nodes[k].id.clone()).collect::<Vec<_>>();
        let report = FaultReport {
            radio_loss: RADIO_LOSS,
            victim: lab.topology.nodes[faults.victim].id.clone(),
            island: faults.cut.as_ref().map(|(_, c)| ids(c)).unwrap_or_default(),
            ..FaultReport::default()
        };
        let liar = liar_of(lab).map(|l| LiarReport {
            node: lab.nodes[l].id.clone(),
            address: lab.nodes[l].command.as_ref().map(|c| c.address.clone()).unwrap_or_default(),
            named_by: lab.neighbours[l].iter().map(|&k| (lab.nodes[k].id.clone(), false)).collect(),
        });
        let report = FaultReport { liar, ..report };
        Driver { faults, report, fetching_since: None, off_until: None, cut_at: None, done_cutting_power: false, then, then_since: None }
    }

    /// The report, with what the rogue's neighbours recorded of it.
    pub fn finish(mut self, lab: &Lab) -> FaultReport {
        if self.report.rogue.is_none() {
            self.report.rogue = rogue_of(lab).map(|r| rogue_report(lab, r));
        }
        self.report
    }

    /// Once every node has committed: whether the scenario is done. With a release for the
    /// rogue to offer then, it first records what the rogue's neighbours found of its chunks
    /// (their install records are about to change), points the rogue's `www` at the release,
    /// and waits until each neighbour refused it at the signature (or [`REFUSE_WITHIN`]).
    pub fn after_commit(&mut self, lab: &Lab) -> Result<bool, String> {
        let (Some(dir), Some(r)) = (self.then.clone(), rogue_of(lab)) else { return Ok(true) };
        let Some(since) = self.then_since else {
            let mut report = rogue_report(lab, r);
            let nodeinfo = dir.join("nodeinfo.json");
            let info: serde_json::Value = std::fs::read(&nodeinfo)
                .ok()
                .and_then(|b| serde_json::from_slice(&b).ok())
                .ok_or_else(|| format!("{}: no release's nodeinfo", nodeinfo.display()))?;
            let version = info["version"].as_str().ok_or_else(|| format!("{}: no version", nodeinfo.display()))?.to_string();
            let www = lab.nodes[r].dir.join("www");
            let next = lab.nodes[r].dir.join("www.next");
            let _ = std::fs::remove_file(&next);
            std::os::unix::fs::symlink(&dir, &next).and_then(|()| std::fs::rename(&next, &www)).map_err(|e| format!("{}: {e}", www.display()))?;
            eprintln!("meshlab: faults: every node committed; the rogue now offers {version}, signed by too few keys");
            report.then_offered = Some(version);
            self.report.rogue = Some(report);
            self.then_since = Some(Instant::now());
            return Ok(false);
        };
        let report = self.report.rogue.as_mut().expect("recorded when the rogue was switched");
        let version = report.then_offered.clone().unwrap_or_default();
        report.refused_at_signature = lab.neighbours[r]
            .iter()
            .map(|&k| {
                let record = lab.nodes[k].install_record().unwrap_or_default();
                (lab.nodes[k].id.clone(), record["version"] == version.as_str() && record["error_kind"] == "signature")
            })
            .collect();
        report.holding_then = lab.nodes.iter().filter(|n| n.slot_versions().contains(&version)).map(|n| n.id.clone()).collect();
        Ok(report.refused_at_signature.values().all(|&r| r) || since.elapsed() > REFUSE_WITHIN)
    }

    /// `all_up`: every node is up (the island is cut only then); `rest_committed`: every node
    /// outside the island runs the new release committed.
    pub fn step(&mut self, lab: &mut Lab, all_up: bool, rest_committed: bool) -> Result<(), String> {
        let t = lab.seconds();
        // The liar's neighbours name it while they run (a reboot forgets it): looked for now.
        if let (Some(liar), Some(l)) = (self.report.liar.as_mut(), liar_of(lab)) {
            for &k in &lab.neighbours[l] {
                let named = || {
                    let status = lab.nodes[k].status();
                    status.is_some_and(|s| s["upgrade"]["false_claims"].as_object().is_some_and(|m| m.keys().any(|u| u.contains(&liar.address))))
                };
                let entry = liar.named_by.entry(lab.nodes[k].id.clone()).or_default();
                if !*entry && named() {
                    *entry = true;
                    eprintln!("meshlab: faults: node {} names the liar for a false claim", lab.nodes[k].id);
                }
            }
        }
        if let Some((link, _)) = &self.faults.cut {
            let link = &lab.topology.links[*link];
            if all_up && self.report.island_cut_at_s.is_none() {
                net::cut_link(&lab.topology, link)?;
                self.report.island_cut_at_s = Some(t);
                self.cut_at = Some(Instant::now());
                eprintln!("meshlab: faults: the island {} is cut off", self.report.island.join(", "));
            } else if self.report.island_rejoined_at_s.is_none() && self.cut_at.is_some_and(|c| rest_committed || c.elapsed() > ISLAND_AWAY_AT_MOST) {
                net::mend_link(&lab.topology, link)?;
                self.report.island_rejoined_at_s = Some(t);
                eprintln!("meshlab: faults: the island rejoins the mesh");
            }
        }
        let victim = &mut lab.nodes[self.faults.victim];
        if let Some(until) = self.off_until {
            if Instant::now() >= until {
                self.off_until = None;
                victim.power_on(&mut lab.roots, lab.launch.boot_time);
                self.report.victim_powered_on_at_s = Some(t);
                eprintln!("meshlab: faults: node {} has power again", victim.id);
            }
        } else if !self.done_cutting_power {
            let fetching = victim.status().is_some_and(|s| s["upgrade"]["phase"] == "fetching");
            match (fetching, self.fetching_since) {
                (true, None) => self.fetching_since = Some(Instant::now()),
                (true, Some(since)) if since.elapsed() >= CUT_AFTER => {
                    victim.power_off();
                    self.done_cutting_power = true;
                    self.off_until = Some(Instant::now() + OFF_FOR);
                    self.report.victim_power_cut_at_s = Some(t);
                    eprintln!("meshlab: faults: node {} loses power in the middle of its fetch", victim.id);
                }
                (false, _) => self.fetching_since = None,
                _ => {}
            }
        }
        Ok(())
    }
}

fn rogue_of(lab: &Lab) -> Option<usize> {
    lab.nodes.iter().position(|n| n.command.is_some() && n.id.starts_with("rogue"))
}

fn liar_of(lab: &Lab) -> Option<usize> {
    lab.nodes.iter().position(|n| n.command.is_some() && n.id.starts_with("liar"))
}

/// What the rogue's neighbours recorded of its chunks.
fn rogue_report(lab: &Lab, r: usize) -> RogueReport {
    let rogue = &lab.nodes[r];
    let address = rogue.command.as_ref().map(|c| c.address.clone()).unwrap_or_default();
    let url = format!("http://[{address}]:9100");
    let bad_chunks_rejected = lab.neighbours[r]
        .iter()
        .map(|&k| {
            let record = lab.nodes[k].install_record();
            let bad = record.as_ref().and_then(|r| r["transfer"]["peers"][&url]["bad_chunks"].as_u64()).unwrap_or(0);
            (lab.nodes[k].id.clone(), bad)
        })
        .collect();
    RogueReport { node: rogue.id.clone(), address, bad_chunks_rejected, ..RogueReport::default() }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_island_is_the_part_behind_one_link_and_the_victim_is_far_from_the_start() {
        let t = Topology::load(&std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("topologies/small.json")).unwrap();
        let f = choose(&t, &[0]);
        let (link, island) = f.cut.unwrap();
        assert_eq!(island, vec![11, 12, 13, 14, 15]);
        assert_eq!((t.links[link].a.min(t.links[link].b), t.links[link].a.max(t.links[link].b)), (10, 11));
        // Nodes 6, 7 and 8 are six hops from node 0 (through the hub); the first is taken.
        assert_eq!(f.victim, 6);
    }

    #[test]
    fn the_rogue_stands_beside_the_hub_and_changes_neither_island_nor_victim() {
        let mut t = Topology::load(&std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("topologies/small.json")).unwrap();
        let files = tempfile::tempdir().unwrap();
        add_rogue(&mut t, files.path()).unwrap();
        let rogue = t.nodes.len() - 1;
        assert_eq!(t.nodes[rogue].id, "rogue");
        let run = t.nodes[rogue].run.as_deref().unwrap();
        assert!(run.contains("http.server") && run.contains(&files.path().canonicalize().unwrap().display().to_string()), "{run}");
        assert_eq!(t.neighbours()[rogue], vec![10]);
        let f = choose(&t, &[0]);
        assert_eq!((f.cut.unwrap().1, f.victim), (vec![11, 12, 13, 14, 15], 6));
        assert!(add_rogue(&mut t, &files.path().join("missing")).is_err());
        // The liar beside the hub too: still the same island and victim.
        add_liar(&mut t).unwrap();
        let liar = t.nodes.len() - 1;
        assert_eq!((t.nodes[liar].id.as_str(), t.neighbours()[liar].clone()), ("liar", vec![10]));
        let f = choose(&t, &[0]);
        assert_eq!((f.cut.unwrap().1, f.victim), (vec![11, 12, 13, 14, 15], 6));
    }
}
