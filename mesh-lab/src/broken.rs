//! The `broken` scenario: a bad build reaches the mesh. N+1 is marked broken (its router never
//! starts, as on a board whose image lacks it) and put in the `updates/` of the nodes the
//! topology marks (or the first); meshd does the rest. What must hold: every node ends where
//! it began, on N marked good, with no two linked nodes down together; what the lab measures
//! is how far the bad release walked before the mesh stopped it: which nodes booted it and how
//! often, and when the mesh was quiet again.
//!
//! `bad-release`: the same release works on the node it is put on (the node with the most
//! neighbours: its canary, where it proves itself) and fails on every other. Its neighbours take
//! it from the canary; the first to roll it back reports it in its signed record, and every
//! node holds it from then on: no node boots it once the report had time to reach it, none
//! beyond the canary's neighbours boots it at all, and all but the canary end on N again.

use crate::lab::{self, Lab};
use crate::scenario::{stranded_lines, together_check, DownWatch, Stranded};
use serde::Serialize;
use std::path::PathBuf;
use std::time::{Duration, Instant};

pub struct Broken {
    pub update: PathBuf,
    pub timeout: Duration,
    /// `bad-release`: the release works on its canary and fails further on.
    pub canaries_pass: bool,
}

/// How long a rollback takes to reach the nodes around it as a report, with room for a loaded
/// host: the rollout agent's round (15 s) to announce it, a record signed every 30 s and read
/// every 30 s over two hops, a round to act, and the lab's own boot time.
const REPORT_WITHIN: Duration = Duration::from_secs(180);

/// The mesh counts as quiet again once every node has run N, marked good and doing nothing of
/// an upgrade, for this long (a round of meshd's rollout agent and its neighbours' answers).
const QUIET: Duration = Duration::from_secs(120);
/// The trial's health check on every node: meshd's default is 180 s; the lab shortens it so
/// that three attempts of a broken release take minutes, not a quarter of an hour.
const HEALTH_TIMEOUT_S: u64 = 30;

/// Nodes a bad release may reach the trial of, at most (the nodes it was put on).
const MAX_TRIED: usize = 3;

#[derive(Debug, Serialize)]
pub struct Report {
    pub scenario: &'static str,
    pub nodes: usize,
    pub links: usize,
    pub boot_time_s: u64,
    pub health_timeout_s: u64,
    pub release: String,
    /// The release marked broken, and how.
    pub broken: String,
    pub broken_how: &'static str,
    /// The nodes it was put on, and whether it works there (`bad-release`).
    pub canaries: Vec<String>,
    pub canaries_pass: bool,
    /// When a node's install record first said it rolled the release back (from power-on),
    /// and the nodes that booted it for the first time more than [`REPORT_WITHIN`] after.
    pub first_rollback_s: Option<f64>,
    pub tried_after_report: Vec<String>,
    /// Nodes that hold the release at the end because others report it failed.
    pub holding_at_end: Vec<String>,
    pub seconds_to_set_up: f64,
    /// Nodes that booted the broken release, with how many boots each.
    pub tried: Vec<(String, u32)>,
    /// Nodes whose cards hold the broken release in a slot at the end (from the slots'
    /// headers), and those whose last install record says the node went back to its old slot.
    pub installed: Vec<String>,
    pub rolled_back: Vec<String>,
    /// When every node was last back on N, marked good and quiet (from power-on).
    pub seconds_to_quiet: Option<f64>,
    pub max_down_at_once: usize,
    pub neighbours_down_together: usize,
    pub neighbours_down_together_pairs: Vec<(String, String, f64)>,
    /// Nodes not on N marked good at the end, with what they say.
    pub stranded: Vec<Stranded>,
    /// The canaries and their neighbours: the only nodes a bad release may reach.
    pub neighbours_of_canaries: Vec<String>,
}

pub fn run(lab: &mut Lab, plan: &Broken) -> Result<Report, String> {
    let broken = {
        let file = std::fs::File::open(&plan.update).map_err(|e| format!("{}: {e}", plan.update.display()))?;
        meshos_common::bundle::open(file).map_err(|e| format!("{}: {e}", plan.update.display()))?.manifest.version
    };
    let release = lab.release.manifest.version.clone();
    let members: Vec<bool> = lab.nodes.iter().map(|n| n.command.is_none()).collect();
    let givers: Vec<usize> = match (0..lab.nodes.len()).filter(|&i| lab.topology.nodes[i].updates && members[i]).collect::<Vec<_>>() {
        _ if plan.canaries_pass => {
            vec![(0..lab.nodes.len())
                .filter(|&i| members[i])
                .max_by_key(|&i| (lab.neighbours[i].len(), std::cmp::Reverse(i)))
                .ok_or("no node of this topology runs meshd")?]
        }
        v if v.is_empty() => vec![members.iter().position(|m| *m).ok_or("no node of this topology runs meshd")?],
        v => v,
    };
    lab.mark_broken(&broken, if plan.canaries_pass { &givers } else { &[] })?;
    // Where each node ends: the canaries of a bad release on it, every other node on N.
    let want: Vec<String> = (0..lab.nodes.len()).map(|i| if plan.canaries_pass && givers.contains(&i) { broken.clone() } else { release.clone() }).collect();
    let config = format!("{}upgrade:\n  healthTimeout: {HEALTH_TIMEOUT_S}\n", lab::MESH_YAML);
    for i in (0..lab.nodes.len()).filter(|&i| members[i]) {
        lab.set_config(i, &config)?;
    }
    for &i in &givers {
        lab.give_update(i, &plan.update)?;
    }
    let n = members.iter().filter(|m| **m).count();
    let canaries: Vec<String> = givers.iter().map(|&i| lab.nodes[i].id.clone()).collect();
    let works = if plan.canaries_pass { format!(", which works on {} and nowhere else", canaries.join(", ")) } else { String::new() };
    eprintln!("meshlab: broken: {broken} (its router never starts{works}) from {} over {n} nodes; each starts on {release}", canaries.join(", "));
    let mut first_rollback_s: Option<f64> = None;
    lab.power_on_all();
    let deadline = Instant::now() + plan.timeout;
    let mut watch = DownWatch::default();
    let (mut all_up, mut quiet_since, mut last_look, mut last_print) = (false, None::<f64>, Instant::now() - Duration::from_secs(5), Instant::now());
    let mut settled = vec![false; lab.nodes.len()];
    loop {
        if lab::stopped() {
            return Err("interrupted".into());
        }
        lab.tick();
        let t = lab.seconds();
        let down: Vec<bool> = lab.nodes.iter().map(|n| !n.is_up()).collect();
        all_up |= !down.contains(&true);
        if all_up {
            watch.observe(lab, &down, &members, t);
        }
        if last_look.elapsed() >= Duration::from_secs(5) {
            last_look = Instant::now();
            for (i, node) in lab.nodes.iter().enumerate().filter(|(i, _)| members[*i]) {
                let s = node.status();
                // Idle, or holding the release it staged because others report it failed.
                let done = |u: &serde_json::Value| u["phase"] == "idle" || (u["phase"] == "staged" && u["holding"].as_object().is_some_and(|h| !h.is_empty()));
                settled[i] =
                    node.is_up() && s.as_ref().is_some_and(|s| s["version"] == want[i].as_str() && s["slots"]["marked_good"] == true && done(&s["upgrade"]));
                if first_rollback_s.is_none() && node.install_record().is_some_and(|r| r["step"] == "rolled_back") {
                    first_rollback_s = Some(t);
                }
            }
            // A bad release is quiet once it failed somewhere; a broken one, once its canaries tried it.
            let givers_tried = if plan.canaries_pass { first_rollback_s.is_some() } else { givers.iter().all(|&i| lab.nodes[i].broken_boots > 0) };
            let quiet = givers_tried && (0..lab.nodes.len()).filter(|&i| members[i]).all(|i| settled[i]);
            quiet_since = if quiet { quiet_since.or(Some(t)) } else { None };
        }
        if last_print.elapsed() >= Duration::from_secs(10) {
            last_print = Instant::now();
            let tried = lab.nodes.iter().filter(|n| n.broken_boots > 0).count();
            let on_it = lab.nodes.iter().filter(|n| n.is_running() && n.version.as_deref() == Some(broken.as_str())).count();
            let back = (0..lab.nodes.len()).filter(|&i| members[i] && settled[i]).count();
            eprintln!("meshlab: {t:>5.0} s: {tried}/{n} booted {broken} broken, {on_it} run it now, {back}/{n} where they should end, marked good and idle");
        }
        if quiet_since.is_some_and(|since| t - since >= QUIET.as_secs_f64()) {
            break;
        }
        if Instant::now() > deadline {
            eprintln!("meshlab: the scenario's {} s are up", plan.timeout.as_secs());
            break;
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    let stranded = (0..lab.nodes.len())
        .filter(|&i| members[i] && !settled[i])
        .map(|i| {
            let s = lab.nodes[i].status();
            let version = s.as_ref().and_then(|s| s["version"].as_str().map(String::from));
            let reason = s.as_ref().and_then(|s| s["upgrade"]["note"].as_str().map(String::from)).unwrap_or_else(|| {
                if lab.nodes[i].is_up() {
                    format!("not on {} marked good and idle", want[i])
                } else {
                    "down".into()
                }
            });
            Stranded { node: lab.nodes[i].id.clone(), version, reason }
        })
        .collect();
    let installed = lab.nodes.iter().filter(|n| n.command.is_none() && n.slot_versions().contains(&broken)).map(|n| n.id.clone()).collect();
    let now = lab.seconds();
    let tried_after_report = lab
        .nodes
        .iter()
        .filter(|n| {
            let first = n.first_broken_boot.map(|b| now - b.elapsed().as_secs_f64());
            first.zip(first_rollback_s).is_some_and(|(b, r)| b > r + REPORT_WITHIN.as_secs_f64())
        })
        .map(|n| n.id.clone())
        .collect();
    let holding_at_end = (0..lab.nodes.len())
        .filter(|&i| members[i] && lab.nodes[i].status().is_some_and(|s| s["upgrade"]["holding"].as_object().is_some_and(|h| !h.is_empty())))
        .map(|i| lab.nodes[i].id.clone())
        .collect();
    let neighbours_of_canaries: Vec<String> =
        givers.iter().flat_map(|&g| lab.neighbours[g].iter().copied().chain([g])).map(|k| lab.nodes[k].id.clone()).collect();
    let rolled_back =
        lab.nodes.iter().filter(|n| n.command.is_none() && n.install_record().is_some_and(|r| r["step"] == "rolled_back")).map(|n| n.id.clone()).collect();
    Ok(Report {
        scenario: "broken",
        nodes: n,
        links: lab.topology.links.len(),
        boot_time_s: lab.launch.boot_time.as_secs(),
        health_timeout_s: HEALTH_TIMEOUT_S,
        release,
        broken,
        broken_how: "its router never starts",
        canaries,
        canaries_pass: plan.canaries_pass,
        first_rollback_s,
        tried_after_report,
        holding_at_end,
        neighbours_of_canaries,
        seconds_to_set_up: lab.setup_s,
        tried: lab.nodes.iter().filter(|n| n.broken_boots > 0).map(|n| (n.id.clone(), n.broken_boots)).collect(),
        installed,
        rolled_back,
        seconds_to_quiet: quiet_since,
        max_down_at_once: watch.max_down,
        neighbours_down_together: watch.together.len(),
        neighbours_down_together_pairs: watch.together,
        stranded,
    })
}

impl Report {
    /// Every node back where it began, no two linked nodes down together.
    pub fn failed_checks(&self) -> Vec<String> {
        let mut failed = Vec::new();
        if !self.stranded.is_empty() {
            failed.push(format!("{} of {} nodes are not where they should end, marked good", self.stranded.len(), self.nodes));
        }
        failed.extend(together_check(&self.neighbours_down_together_pairs));
        if self.canaries_pass {
            if self.rolled_back.is_empty() {
                failed.push("the bad release was rolled back nowhere: the scenario never saw it fail".into());
            }
            if !self.tried_after_report.is_empty() {
                failed.push(format!(
                    "{} node(s) booted the bad release more than {} s after the first rollback: {}",
                    self.tried_after_report.len(),
                    REPORT_WITHIN.as_secs(),
                    crate::scenario::first_ids(&self.tried_after_report)
                ));
            }
            let beyond: Vec<String> = self.tried.iter().map(|(id, _)| id.clone()).filter(|id| !self.neighbours_of_canaries.contains(id)).collect();
            if !beyond.is_empty() {
                failed.push(format!("the bad release reached nodes beyond its canaries' neighbours: {}", crate::scenario::first_ids(&beyond)));
            }
        } else if self.tried.len() > MAX_TRIED {
            failed.push(format!(
                "the broken release was tried on {} nodes (at most {MAX_TRIED}): a release must spread only from nodes where it passed its trial",
                self.tried.len()
            ));
        }
        failed
    }

    pub fn summary(&self) -> String {
        let boots: u32 = self.tried.iter().map(|(_, b)| b).sum();
        let works = if self.canaries_pass { format!(", working on {} only", self.canaries.join(", ")) } else { String::new() };
        let reports = match self.first_rollback_s {
            Some(s) => format!(
                "  reports  first rollback at {s:.0} s; booted it later than {} s after: {}; holding it at the end: {}\n",
                REPORT_WITHIN.as_secs(),
                self.tried_after_report.len(),
                self.holding_at_end.len()
            ),
            None => String::new(),
        };
        let out = format!(
            "broken release {} ({}{works}) over {} nodes ({} links, {} s boots, {} s health checks)\n  spread   {} node(s) booted it broken, {boots} boots in all; {} hold it in a slot; {} rolled back\n{reports}  quiet    every node where it should end, marked good {}\n  down     at most {} at once; linked nodes down together {} time(s)\n",
            self.broken,
            self.broken_how,
            self.nodes,
            self.links,
            self.boot_time_s,
            self.health_timeout_s,
            self.tried.len(),
            self.installed.len(),
            self.rolled_back.len(),
            self.seconds_to_quiet.map_or("never".to_string(), |s| format!("at {s:.0} s")),
            self.max_down_at_once,
            self.neighbours_down_together,
        );
        out + &stranded_lines(&self.stranded)
    }
}
