//! The `monitoring` scenario: a monitoring host cabled to one node, as docs/monitoring.md tells
//! an operator to set one up. It runs Debian's Prometheus with the project's
//! `monitoring/prometheus.yml`, given only that node's overlay address: Prometheus must find
//! every node of the mesh through the node's `/sd.json` (the mesh view meshd keeps) and scrape
//! each one. Then a node switched off must raise `MeshNodeDown` (`monitoring/rules.yml`). The
//! lab measures how long the view took to name every node, Prometheus to scrape them all, and
//! the alert to fire. (The Grafana dashboard's queries are the QEMU mesh's check: some of its
//! panels are of radios and partitions, which lab nodes have not.)

use crate::lab::{self, Lab};
use crate::topology::{Link, Node, Router, Topology, VPN_KBIT};
use serde::Serialize;
use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

/// The address `monitoring/prometheus.yml` stands for the node an operator picks.
const PLACEHOLDER: &str = "200:1111:2222:3333:4444:5555:6666:7777";
/// How often the lab looks.
const EVERY: Duration = Duration::from_secs(5);

pub struct Monitoring {
    /// The operator's `prometheus.yml` (its `rules.yml` beside it).
    pub config: PathBuf,
    pub timeout: Duration,
}

#[derive(Debug, Serialize)]
pub struct Report {
    pub scenario: &'static str,
    pub nodes: usize,
    pub links: usize,
    pub monitor: String,
    pub cabled_to: String,
    pub seconds_to_set_up: f64,
    pub seconds_to_all_up: Option<f64>,
    pub seconds_to_all_routed: Option<f64>,
    /// Nodes named in the cabled node's `/sd.json`, at most, and when it first named them all.
    pub sd_targets: usize,
    pub seconds_to_sd_complete: Option<f64>,
    /// Targets Prometheus scraped with `up` 1, at most, and when it first scraped them all.
    pub scraped_up: usize,
    pub seconds_to_all_scraped: Option<f64>,
    /// Nodes Prometheus never scraped (by id).
    pub not_scraped: Vec<String>,
    /// The node switched off once all were scraped, and when `MeshNodeDown` fired for it
    /// (seconds after it went off; the rule waits a minute).
    pub switched_off: Option<String>,
    pub seconds_to_alert: Option<f64>,
    pub host_memory_peak_kib: u64,
}

/// Adds the monitoring host: a node that runs Prometheus once the lab has written its config,
/// cabled (a fast wired link) to the first node that runs meshd.
pub fn add_monitor(topology: &mut Topology) -> Result<(), String> {
    let cabled = topology.nodes.iter().position(|n| n.run.is_none()).ok_or("no node runs meshd")?;
    let mut id = "monitor".to_string();
    while topology.nodes.iter().any(|n| n.id == id) {
        id.push('x');
    }
    let wait_then_run = r#"until [ -s "$MESHLAB_DIR/prometheus/prometheus.yml" ]; do sleep 1; done; exec prometheus --config.file="$MESHLAB_DIR/prometheus/prometheus.yml" --storage.tsdb.path="$MESHLAB_DIR/prometheus/data" --web.listen-address=127.0.0.1:9090 > "$MESHLAB_DIR/prometheus.log" 2>&1"#;
    topology.nodes.push(Node { id, router: Router::Yggdrasil, updates: false, run: Some(wait_then_run.into()) });
    let monitor = topology.nodes.len() - 1;
    topology.links.push(Link { a: cabled, b: monitor, radio: false, rate_kbit: VPN_KBIT, loss_ab: 0.0, loss_ba: 0.0 });
    Ok(())
}

/// The operator's file for `address`, at a quicker pace for the lab.
fn prometheus_config(template: &str, address: &str) -> String {
    template.replace(PLACEHOLDER, address).replace("_interval: 30s", "_interval: 5s").replace("refresh_interval: 1m", "refresh_interval: 10s")
}

/// `curl` in a node's network namespace (its loopback is not the host's), with `args` before
/// the URL.
fn get_in(namespace: &str, url: &str, args: &[&str]) -> Option<serde_json::Value> {
    let out = Command::new("ip").args(["netns", "exec", namespace, "curl", "-sf", "-m", "5"]).args(args).arg(url).output().ok()?;
    out.status.success().then(|| serde_json::from_slice(&out.stdout).ok()).flatten()
}

/// A PromQL query's result vector, asked of the Prometheus in `namespace`.
fn query_in(namespace: &str, expr: &str) -> Vec<serde_json::Value> {
    let reply = get_in(namespace, "http://127.0.0.1:9090/api/v1/query", &["--data-urlencode", &format!("query={expr}")]);
    reply.and_then(|r| r["data"]["result"].as_array().cloned()).unwrap_or_default()
}

/// The overlay addresses `/sd.json` names (targets are `[address]:port`).
fn sd_addresses(sd: &serde_json::Value) -> BTreeSet<String> {
    sd.as_array()
        .into_iter()
        .flatten()
        .flat_map(|g| g["targets"].as_array().into_iter().flatten())
        .filter_map(|t| t.as_str()?.strip_prefix('[')?.split(']').next().map(String::from))
        .collect()
}

/// The instances Prometheus has up, by overlay address.
fn up_addresses(reply: &serde_json::Value) -> BTreeSet<String> {
    reply["data"]["result"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|r| r["value"][1] == "1")
        .filter_map(|r| r["metric"]["instance"].as_str()?.strip_prefix('[')?.split(']').next().map(String::from))
        .collect()
}

pub fn run(lab: &mut Lab, plan: &Monitoring) -> Result<Report, String> {
    let template = fs::read_to_string(&plan.config).map_err(|e| format!("{}: {e}", plan.config.display()))?;
    let rules = plan.config.with_file_name("rules.yml");
    let m = lab.nodes.iter().position(|n| n.command.is_some() && n.id.starts_with("monitor")).ok_or("no monitoring host in the lab")?;
    let cabled = lab.neighbours[m].first().copied().ok_or("the monitoring host has no link")?;
    let members: Vec<usize> = (0..lab.nodes.len()).filter(|&k| lab.nodes[k].command.is_none()).collect();
    eprintln!("meshlab: monitoring: Prometheus on {} finds the mesh through node {}'s /sd.json", lab.nodes[m].id, lab.nodes[cabled].id);
    let baseline = crate::scenario::mem_used_kib();
    let mut host_peak = 0;
    lab.power_on_all();
    let deadline = Instant::now() + plan.timeout;
    let (mut all_up, mut all_routed, mut sd_complete, mut all_scraped) = (None, None, None, None);
    let (mut sd_targets, mut scraped_up) = (0, 0);
    let mut scraped: BTreeSet<String> = BTreeSet::new();
    let mut addresses: Vec<Option<String>> = vec![None; lab.nodes.len()];
    let mut last_look = Instant::now() - EVERY;
    loop {
        if lab::stopped() {
            return Err("interrupted".into());
        }
        lab.tick();
        let t = lab.seconds();
        if last_look.elapsed() >= EVERY {
            last_look = Instant::now();
            host_peak = host_peak.max(crate::scenario::mem_used_kib().saturating_sub(baseline));
            for &k in &members {
                if addresses[k].is_none() {
                    addresses[k] = lab.nodes[k].status().and_then(|s| s["address"].as_str().map(String::from));
                }
            }
            if all_up.is_none() && members.iter().all(|&k| lab.nodes[k].is_up()) {
                all_up = Some(t);
            }
            if all_routed.is_none() && (0..lab.nodes.len()).all(|k| lab.neighbours[k].is_empty() || !lab.nodes[k].router_peers().is_empty()) {
                all_routed = Some(t);
                let address = addresses[cabled].clone().ok_or("the cabled node published no address")?;
                let dir = lab.nodes[m].dir.join("prometheus");
                fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
                if rules.is_file() {
                    fs::copy(&rules, dir.join("rules.yml")).map_err(|e| format!("{}: {e}", rules.display()))?;
                }
                write_atomically(&dir.join("prometheus.yml"), &prometheus_config(&template, &address))?;
            }
            let wanted: BTreeSet<String> = members.iter().filter_map(|&k| addresses[k].clone()).collect();
            if all_routed.is_some() {
                let named = get_in(&lab.nodes[cabled].namespace, "http://127.0.0.1:9100/sd.json", &[]).map(|sd| sd_addresses(&sd)).unwrap_or_default();
                sd_targets = sd_targets.max(named.intersection(&wanted).count());
                if sd_complete.is_none() && wanted.len() == members.len() && wanted.is_subset(&named) {
                    sd_complete = Some(t);
                }
                let query = "http://127.0.0.1:9090/api/v1/query?query=up%7Bjob%3D%22meshos%22%7D";
                scraped = get_in(&lab.nodes[m].namespace, query, &[]).map(|r| up_addresses(&r)).unwrap_or_default();
                scraped_up = scraped_up.max(scraped.intersection(&wanted).count());
                eprintln!(
                    "meshlab: {t:>5.0} s: /sd.json names {}/{} nodes, Prometheus scrapes {}/{} up",
                    named.intersection(&wanted).count(),
                    members.len(),
                    scraped.intersection(&wanted).count(),
                    members.len()
                );
                if wanted.len() == members.len() && wanted.is_subset(&scraped) {
                    all_scraped = Some(t);
                    break;
                }
            } else {
                let up = members.iter().filter(|&&k| lab.nodes[k].is_up()).count();
                eprintln!("meshlab: {t:>5.0} s: {up}/{} up", members.len());
            }
        }
        if Instant::now() > deadline {
            eprintln!("meshlab: the scenario's {} s are up", plan.timeout.as_secs());
            break;
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    let (switched_off, alert) = if all_scraped.is_some() { switch_one_off(lab, m, cabled, &members, &addresses)? } else { (None, None) };
    let not_scraped = members.iter().filter(|&&k| addresses[k].as_ref().is_none_or(|a| !scraped.contains(a))).map(|&k| lab.nodes[k].id.clone()).collect();
    Ok(Report {
        scenario: "monitoring",
        nodes: members.len(),
        links: lab.topology.links.len(),
        monitor: lab.nodes[m].id.clone(),
        cabled_to: lab.nodes[cabled].id.clone(),
        seconds_to_set_up: lab.setup_s,
        seconds_to_all_up: all_up,
        seconds_to_all_routed: all_routed,
        sd_targets,
        seconds_to_sd_complete: sd_complete,
        scraped_up,
        seconds_to_all_scraped: all_scraped,
        not_scraped,
        switched_off,
        seconds_to_alert: alert,
        host_memory_peak_kib: host_peak,
    })
}

/// Switches off the meshd node farthest down the list (not the one the host is cabled to) and
/// waits for `MeshNodeDown` to fire for it (three minutes at most).
fn switch_one_off(lab: &mut Lab, m: usize, cabled: usize, members: &[usize], addresses: &[Option<String>]) -> Result<(Option<String>, Option<f64>), String> {
    let Some(&k) = members.iter().rev().find(|&&k| k != cabled) else { return Ok((None, None)) };
    let instance = format!("[{}]:9100", addresses[k].as_deref().unwrap_or_default());
    lab.nodes[k].power_off();
    let off = Instant::now();
    eprintln!("meshlab: monitoring: node {} switched off; waiting for MeshNodeDown", lab.nodes[k].id);
    while off.elapsed() < Duration::from_secs(180) && !lab::stopped() {
        lab.tick();
        let firing = query_in(&lab.nodes[m].namespace, r#"ALERTS{alertname="MeshNodeDown",alertstate="firing"}"#);
        if firing.iter().any(|a| a["metric"]["instance"] == instance.as_str()) {
            return Ok((Some(lab.nodes[k].id.clone()), Some(off.elapsed().as_secs_f64())));
        }
        std::thread::sleep(EVERY);
    }
    Ok((Some(lab.nodes[k].id.clone()), None))
}

/// The command waits for the file to be non-empty: it must never see half of it.
fn write_atomically(path: &Path, text: &str) -> Result<(), String> {
    let partial = path.with_extension("partial");
    fs::write(&partial, text).and_then(|()| fs::rename(&partial, path)).map_err(|e| format!("{}: {e}", path.display()))
}

impl Report {
    /// The scenario's check: Prometheus, given one address, scraped every node.
    pub fn failed_checks(&self) -> Vec<String> {
        let mut failed = Vec::new();
        if !self.not_scraped.is_empty() {
            let some: Vec<&str> = self.not_scraped.iter().take(10).map(String::as_str).collect();
            failed.push(format!("Prometheus did not scrape {} of {} nodes: {}", self.not_scraped.len(), self.nodes, some.join(", ")));
        }
        if let (Some(node), None) = (&self.switched_off, self.seconds_to_alert) {
            failed.push(format!("node {node} was switched off but MeshNodeDown did not fire for it"));
        }
        failed
    }

    pub fn summary(&self) -> String {
        let secs = |s: Option<f64>| s.map_or("never".to_string(), |s| format!("{s:.0} s"));
        format!(
            "monitoring of {} nodes ({} links) from {} cabled to node {}\n  up       set up in {:.0} s, then all up {}, routed {}\n  sd.json  named {}/{} nodes; all {}\n  scraped  {}/{} up; all {}\n  alert    MeshNodeDown for node {}: {}\n  host memory in use grew by at most {} MiB\n",
            self.nodes,
            self.links,
            self.monitor,
            self.cabled_to,
            self.seconds_to_set_up,
            secs(self.seconds_to_all_up),
            secs(self.seconds_to_all_routed),
            self.sd_targets,
            self.nodes,
            secs(self.seconds_to_sd_complete),
            self.scraped_up,
            self.nodes,
            secs(self.seconds_to_all_scraped),
            self.switched_off.as_deref().unwrap_or("none"),
            self.seconds_to_alert.map_or("never".to_string(), |s| format!("{s:.0} s after it went off")),
            self.host_memory_peak_kib / 1024,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_operators_file_gets_the_address_and_a_quicker_pace() {
        let text = fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../monitoring/prometheus.yml")).unwrap();
        let c = prometheus_config(&text, "201:2::3");
        assert!(c.contains("http://[201:2::3]:9100/sd.json") && !c.contains(PLACEHOLDER), "{c}");
        assert!(c.contains("scrape_interval: 5s") && c.contains("refresh_interval: 10s"), "{c}");
    }

    #[test]
    fn targets_and_up_instances_are_read_by_address() {
        let sd = serde_json::json!([{"targets": ["[200::1]:9100"], "labels": {}}, {"targets": ["[201::2]:9100", "junk"]}]);
        assert_eq!(sd_addresses(&sd), ["200::1", "201::2"].map(String::from).into());
        let up = serde_json::json!({"data": {"result": [
            {"metric": {"instance": "[200::1]:9100"}, "value": [1.0, "1"]},
            {"metric": {"instance": "[201::2]:9100"}, "value": [1.0, "0"]}]}});
        assert_eq!(up_addresses(&up), ["200::1"].map(String::from).into());
    }

    #[test]
    fn the_monitor_is_cabled_to_the_first_meshd_node() {
        let mut t = Topology::parse(r#"{"nodes": [{"id": "laptop", "run": "sleep 1"}, {"id": 1}, {"id": 2}], "links": [{"source": 1, "target": 2}]}"#).unwrap();
        add_monitor(&mut t).unwrap();
        let m = t.nodes.len() - 1;
        assert_eq!((t.nodes[m].id.as_str(), t.neighbours()[m].clone()), ("monitor", vec![1]));
        assert!(t.nodes[m].run.as_deref().unwrap().contains("prometheus"));
    }
}
