//! The `gateways` scenario: the mesh's way to the internet (node-firmware's gateway.rs). The two
//! meshd nodes farthest apart become gateways, each with an uplink to a simulated internet (a
//! namespace with a router that gives DHCP and DNS, and a web server at `www.internet.test`);
//! every other node takes a lease from its nearest gateway and must reach the web server by
//! name, asking the gateway's DNS through its tunnel, and must not reach a host on the
//! gateways' own LAN (the owner's NAS, beside the router). Then the second gateway is switched on
//! again with a `gateway.allow` list that leaves out one node, the first gateway's uplink is
//! cut, and every node must move to the second gateway but the one left out, which must say
//! that it was refused, and why.
//!
//! A lab node's tunnels are VXLAN where a board's are `ip6tnl` (node-firmware's machine.rs):
//! everything else (the choice, leases, failover, allow list, DNS, NAT) is meshd's own code.

use crate::lab::{self, Lab, MESH_YAML};
use crate::net;
use crate::topology::Topology;
use serde::Serialize;
use std::collections::BTreeMap;
use std::fs;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How often the lab looks, and how long each step may take at most.
const EVERY: Duration = Duration::from_secs(5);
const STEP: Duration = Duration::from_secs(300);
/// The simulated internet: its router (DHCP and DNS for the uplinks), its web server and page.
const ROUTER: &str = "198.51.100.1";
const WEB: &str = "203.0.113.80";
const WEB_NAME: &str = "www.internet.test";
const PAGE: &str = "meshos simulated internet";
/// A host on the gateways' uplink network, as an owner's NAS is: no node may reach it through
/// a gateway (node-firmware's gateway.rs keeps the LAN closed).
const NAS: &str = "198.51.100.20";
/// A gateway's end of every tunnel, and its DNS server (node-firmware's `gateway::INNER`).
const GATEWAY_END: &str = "100.64.0.1";
/// A gateway's uplink, in its namespace: its mesh.yaml has DHCP on it.
const UPLINK: &str = "uplink";

pub struct Gateways {
    pub timeout: Duration,
}

#[derive(Debug, Default, Serialize)]
pub struct Report {
    pub scenario: &'static str,
    pub nodes: usize,
    pub links: usize,
    /// The gateways (by id): the first one's uplink is cut.
    pub gateways: [String; 2],
    pub seconds_to_set_up: f64,
    pub seconds_to_all_up: Option<f64>,
    /// Every other node reached the web server by name through a gateway, and how many took
    /// which gateway first.
    pub seconds_to_all_online: Option<f64>,
    pub first_gateway: BTreeMap<String, usize>,
    pub never_online: Vec<String>,
    /// Nodes that reached the NAS on a gateway's LAN through their gateway (none should).
    pub reached_lan: Vec<String>,
    /// The node the second gateway's allow list leaves out, and how long that gateway took to
    /// offer again after it was switched on with the list.
    pub left_out: String,
    pub seconds_to_reoffer: Option<f64>,
    /// After the first gateway's uplink was cut: how long until every node but the one left
    /// out reached the web server through the second gateway, and those that did not.
    pub seconds_to_failover: Option<f64>,
    pub not_moved: Vec<String>,
    pub cut_gateway_withdrew: bool,
    /// What the node left out said (its status's refusal), if it said so.
    pub left_out_refusal: Option<String>,
    pub left_out_reached_internet: bool,
    pub meshd_peak_rss_kib: BTreeMap<String, u64>,
    pub host_memory_peak_kib: u64,
}

/// The two meshd nodes farthest apart (the first found of the pairs at that distance).
pub fn choose(topology: &Topology) -> Result<(usize, usize), String> {
    let members: Vec<usize> = (0..topology.nodes.len()).filter(|&k| topology.nodes[k].run.is_none()).collect();
    let mut best: Option<(usize, usize, usize)> = None;
    for &a in &members {
        let hops = topology.hops_from(a);
        for &b in members.iter().filter(|&&b| b > a) {
            if let Some(d) = hops[b] {
                if best.is_none_or(|(bd, _, _)| d > bd) {
                    best = Some((d, a, b));
                }
            }
        }
    }
    best.map(|(_, a, b)| (a, b)).ok_or_else(|| "the gateways scenario needs two linked nodes that run meshd".into())
}

/// The node the second gateway will leave out: of those nearer the first, the farthest from
/// the second (the one that needs the second gateway most once the first is gone).
fn left_out(topology: &Topology, g: (usize, usize), clients: &[usize]) -> usize {
    let (h1, h2) = (topology.hops_from(g.0), topology.hops_from(g.1));
    let far = |k: usize| h2[k].unwrap_or(0);
    let nearer_first: Vec<usize> = clients.iter().copied().filter(|&k| h1[k] < h2[k]).collect();
    let pool = if nearer_first.is_empty() { clients } else { &nearer_first };
    pool.iter().copied().max_by_key(|&k| (far(k), std::cmp::Reverse(k))).expect("at least one client")
}

/// A gateway's mesh.yaml: the lab's, with DHCP on its uplink, offering, allowing `allow`
/// (everyone when empty).
pub(crate) fn gateway_config(allow: &[String]) -> String {
    let mut text = MESH_YAML.replace("  dhcp: []", &format!("  dhcp: [\"{UPLINK}\"]"));
    text.push_str("gateway:\n  offer: true\n");
    if !allow.is_empty() {
        text.push_str("  allow:\n");
        for a in allow {
            text.push_str(&format!("    - \"{a}\"\n"));
        }
    }
    text
}

/// The simulated internet: a namespace cabled to each gateway's uplink through a bridge, with
/// dnsmasq (DHCP and DNS) and a web server. Its processes end with it.
pub(crate) struct Internet {
    namespace: String,
    ports: Vec<String>,
    children: Vec<Child>,
}

impl Internet {
    pub(crate) fn start(lab: &Lab, gateways: &[usize], dir: &Path) -> Result<Internet, String> {
        let mut name = "internet".to_string();
        while lab.topology.nodes.iter().any(|n| n.id == name) {
            name.push('x');
        }
        let ns = net::namespace(&name);
        net::run("ip", &["netns", "add", &ns])?;
        let mut internet = Internet { namespace: ns.clone(), ports: Vec::new(), children: Vec::new() };
        let ip = |args: &[&str]| net::run("ip", &[&["-n", ns.as_str()], args].concat()).map(drop);
        ip(&["link", "set", "lo", "up"])?;
        ip(&["addr", "add", &format!("{WEB}/32"), "dev", "lo"])?;
        ip(&["link", "add", "br0", "address", "02:00:00:00:0b:01", "type", "bridge"])?;
        ip(&["addr", "add", &format!("{ROUTER}/24"), "dev", "br0"])?;
        ip(&["addr", "add", &format!("{NAS}/24"), "dev", "br0"])?;
        ip(&["link", "set", "br0", "up"])?;
        for (k, &g) in gateways.iter().enumerate() {
            let port = format!("port{k}");
            net::run("ip", &["link", "add", UPLINK, "netns", &lab.nodes[g].namespace, "type", "veth", "peer", "name", &port, "netns", &ns])?;
            ip(&["link", "set", &port, "master", "br0", "up"])?;
            internet.ports.push(port);
        }
        let www = dir.join("www");
        fs::create_dir_all(&www).and_then(|()| fs::write(www.join("index.html"), format!("{PAGE}\n"))).map_err(|e| format!("{}: {e}", www.display()))?;
        let leases = dir.join("leases").display().to_string();
        let dnsmasq = [
            "dnsmasq",
            "--keep-in-foreground",
            "--no-resolv",
            "--no-hosts",
            "--interface=br0",
            "--bind-interfaces",
            "--dhcp-range=198.51.100.50,198.51.100.99,1h",
            &format!("--dhcp-option=option:router,{ROUTER}"),
            &format!("--dhcp-option=option:dns-server,{ROUTER}"),
            &format!("--address=/{WEB_NAME}/{WEB}"),
            &format!("--dhcp-leasefile={leases}"),
            "--pid-file=",
            "--user=root",
            "--log-facility=-",
        ];
        internet.spawn(&dnsmasq, &dir.join("dnsmasq.log"))?;
        let www = www.display().to_string();
        internet.spawn(&["python3", "-m", "http.server", "--bind", WEB, "--directory", &www, "80"], &dir.join("http.log"))?;
        internet.spawn(&["python3", "-m", "http.server", "--bind", NAS, "--directory", &www, "80"], &dir.join("nas.log"))?;
        Ok(internet)
    }

    fn spawn(&mut self, args: &[&str], log: &Path) -> Result<(), String> {
        let out = fs::File::create(log).map_err(|e| format!("{}: {e}", log.display()))?;
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.namespace]).args(args).stdin(Stdio::null()).stdout(out.try_clone().map_err(|e| e.to_string())?).stderr(out);
        net::end_with_lab(&mut cmd);
        self.children.push(cmd.spawn().map_err(|e| format!("{}: {e}", args[0]))?);
        Ok(())
    }

    /// Cuts gateway `k`'s uplink at the internet's side, as a pulled cable would.
    fn cut(&self, k: usize) -> Result<(), String> {
        net::run("ip", &["-n", &self.namespace, "link", "set", &self.ports[k], "down"]).map(drop)
    }
}

impl Drop for Internet {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Which of `nodes` reach the web server by name: its address from the DNS server at their
/// gateway's end of the tunnel (busybox's nslookup), then the page. Asked of all at once, each
/// within a few seconds.
pub(crate) fn reach_internet(lab: &Lab, nodes: &[usize]) -> Vec<bool> {
    let script = format!(
        "a=$(timeout 4 busybox nslookup {WEB_NAME} {GATEWAY_END} | sed -n '/^Name:/,$ s/^Address: *//p' | head -1) && [ -n \"$a\" ] && \
         curl -sf -m 5 --resolve {WEB_NAME}:80:$a http://{WEB_NAME}/ | grep -q '{PAGE}'"
    );
    probe(lab, nodes, &script)
}

/// Which of `nodes` reach the NAS on the gateways' LAN (the same page as the web server's).
fn reach_lan(lab: &Lab, nodes: &[usize]) -> Vec<bool> {
    probe(lab, nodes, &format!("curl -sf -m 5 http://{NAS}/ | grep -q '{PAGE}'"))
}

/// Which of `nodes` run `script` (sh) with success, asked of all at once.
fn probe(lab: &Lab, nodes: &[usize], script: &str) -> Vec<bool> {
    let probes: Vec<Option<Child>> = nodes
        .iter()
        .map(|&k| {
            Command::new("ip").args(["netns", "exec", &lab.nodes[k].namespace, "sh", "-c", script]).stdout(Stdio::null()).stderr(Stdio::null()).spawn().ok()
        })
        .collect();
    probes.into_iter().map(|p| p.and_then(|mut c| c.wait().ok()).is_some_and(|s| s.success())).collect()
}

/// The node's gateway report, from the status its meshd published.
fn gateway_of(lab: &Lab, k: usize) -> serde_json::Value {
    lab.nodes[k].status().map(|s| s["gateway"].clone()).unwrap_or_default()
}

pub(crate) fn using(lab: &Lab, k: usize) -> Option<String> {
    gateway_of(lab, k)["using"]["address"].as_str().map(String::from)
}

pub(crate) fn address(lab: &Lab, k: usize) -> Option<String> {
    lab.nodes[k].status().and_then(|s| s["address"].as_str().map(String::from))
}

/// Ticks the lab until `done` (asked every [`EVERY`]) holds or `limit` passes; the seconds it
/// took, if it held.
pub(crate) fn wait(lab: &mut Lab, limit: Duration, host_peak: &mut u64, baseline: u64, mut done: impl FnMut(&mut Lab) -> bool) -> Result<Option<f64>, String> {
    let start = Instant::now();
    let mut last = start - EVERY;
    loop {
        if lab::stopped() {
            return Err("interrupted".into());
        }
        lab.tick();
        if last.elapsed() >= EVERY {
            last = Instant::now();
            lab.nodes.iter_mut().for_each(|n| n.sample_memory());
            *host_peak = (*host_peak).max(crate::scenario::mem_used_kib().saturating_sub(baseline));
            if done(lab) {
                return Ok(Some(start.elapsed().as_secs_f64()));
            }
        }
        if start.elapsed() > limit {
            return Ok(None);
        }
        std::thread::sleep(Duration::from_millis(250));
    }
}

pub fn run(lab: &mut Lab, plan: &Gateways) -> Result<Report, String> {
    if !lab::has_dhcp_client(&lab.launch) {
        return Err(
            "the gateways' uplinks take their addresses with busybox's udhcpc, as on the boards, and busybox is not installed (ci/setup-host.sh installs it)"
                .into(),
        );
    }
    let (g1, g2) = choose(&lab.topology)?;
    let members: Vec<usize> = (0..lab.nodes.len()).filter(|&k| lab.nodes[k].command.is_none()).collect();
    let clients: Vec<usize> = members.iter().copied().filter(|&k| k != g1 && k != g2).collect();
    if clients.is_empty() {
        return Err("the gateways scenario needs a node besides its two gateways".into());
    }
    let out = left_out(&lab.topology, (g1, g2), &clients);
    let ids: Vec<String> = lab.nodes.iter().map(|n| n.id.clone()).collect();
    let id = |k: usize| ids[k].clone();
    let mut report = Report {
        scenario: "gateways",
        nodes: members.len(),
        links: lab.topology.links.len(),
        gateways: [id(g1), id(g2)],
        seconds_to_set_up: lab.setup_s,
        left_out: id(out),
        ..Report::default()
    };
    for g in [g1, g2] {
        lab.set_config(g, &gateway_config(&[]))?;
    }
    let internet = Internet::start(lab, &[g1, g2], &lab.work_dir().join("internet"))?;
    eprintln!("meshlab: gateways: nodes {} and {} have uplinks to the simulated internet", id(g1), id(g2));
    let deadline = Instant::now() + plan.timeout;
    let limit = || STEP.min(deadline.saturating_duration_since(Instant::now()));
    let baseline = crate::scenario::mem_used_kib();
    let mut host_peak = 0;
    lab.power_on_all();

    // 1. Every node reaches the internet through its nearest gateway.
    report.seconds_to_all_up = wait(lab, limit(), &mut host_peak, baseline, |lab| members.iter().all(|&k| lab.nodes[k].is_up()))?;
    let addresses: BTreeMap<String, usize> = members.iter().filter_map(|&k| address(lab, k).map(|a| (a, k))).collect();
    let mut online: BTreeMap<usize, String> = BTreeMap::new();
    let t = lab.seconds();
    let all_online = wait(lab, limit(), &mut host_peak, baseline, |lab| {
        let leased: Vec<(usize, String)> = clients.iter().filter(|k| !online.contains_key(k)).filter_map(|&k| using(lab, k).map(|g| (k, g))).collect();
        let reached = reach_internet(lab, &leased.iter().map(|(k, _)| *k).collect::<Vec<_>>());
        for ((k, g), _) in leased.into_iter().zip(reached).filter(|(_, r)| *r) {
            online.insert(k, addresses.get(&g).map_or(g, |&i| lab.nodes[i].id.clone()));
        }
        eprintln!("meshlab: {:>5.0} s: {}/{} nodes reach the internet through a gateway", lab.seconds(), online.len(), clients.len());
        online.len() == clients.len()
    })?;
    report.seconds_to_all_online = all_online.map(|s| s + t);
    for g in online.values() {
        *report.first_gateway.entry(g.clone()).or_default() += 1;
    }
    report.never_online = clients.iter().filter(|k| !online.contains_key(k)).map(|&k| id(k)).collect();
    // Online, but only to the internet: the gateways' own LAN stays closed.
    let lan = reach_lan(lab, &clients);
    report.reached_lan = clients.iter().zip(lan).filter(|(_, r)| *r).map(|(&k, _)| id(k)).collect();
    eprintln!("meshlab: {:>5.0} s: {} nodes reach the NAS on a gateway's LAN (none should)", lab.seconds(), report.reached_lan.len());

    // 2. The second gateway, switched on again allowing every node but one.
    let allow: Vec<String> = clients.iter().filter(|&&k| k != out).filter_map(|&k| address(lab, k)).collect();
    lab.set_config(g2, &gateway_config(&allow))?;
    lab.power_cycle(g2);
    eprintln!("meshlab: gateways: node {} switched on again, allowing every node but {}", id(g2), id(out));
    let offers = |lab: &Lab, k: usize| gateway_of(lab, k)["offer"]["uplink_up"].as_bool() == Some(true);
    report.seconds_to_reoffer = wait(lab, limit(), &mut host_peak, baseline, |lab| lab.nodes[g2].is_up() && offers(lab, g2))?;
    // Its nodes went to the other gateway while it was off; every node is to be back online
    // before the cut, so that the failover is one move.
    let back = wait(lab, limit(), &mut host_peak, baseline, |lab| {
        let n = reach_internet(lab, &clients).into_iter().filter(|&r| r).count();
        eprintln!("meshlab: {:>5.0} s: {n}/{} nodes reach the internet again", lab.seconds(), clients.len());
        n == clients.len()
    })?;
    if back.is_none() {
        eprintln!("meshlab: gateways: not every node reached the internet again; cutting anyway");
    }

    // 3. The first gateway's uplink cut: everyone allowed moves to the second; the one left
    // out is refused and says so.
    internet.cut(0)?;
    eprintln!("meshlab: gateways: node {}'s uplink cut", id(g1));
    let g2_address = address(lab, g2).unwrap_or_default();
    let mut moved: BTreeMap<usize, bool> = BTreeMap::new();
    report.seconds_to_failover = wait(lab, limit(), &mut host_peak, baseline, |lab| {
        let waiting: Vec<usize> = clients.iter().copied().filter(|&k| k != out && !moved.get(&k).copied().unwrap_or(false)).collect();
        let there: Vec<usize> = waiting.iter().copied().filter(|&k| using(lab, k).as_deref() == Some(g2_address.as_str())).collect();
        let reached = reach_internet(lab, &there);
        for k in waiting {
            moved.insert(k, there.iter().zip(&reached).any(|(&t, &r)| t == k && r));
        }
        let done = moved.values().filter(|&&m| m).count();
        eprintln!("meshlab: {:>5.0} s: {done}/{} nodes reach the internet through node {}", lab.seconds(), clients.len() - 1, lab.nodes[g2].id);
        done == clients.len() - 1
    })?;
    report.not_moved = moved.iter().filter(|(_, &m)| !m).map(|(&k, _)| id(k)).collect();
    let refusal = |lab: &Lab| -> Option<String> {
        let g = gateway_of(lab, out);
        let refused = g["refused"]
            .as_array()?
            .iter()
            .find(|r| r["address"] == g2_address.as_str() && r["reason"].as_str().is_some_and(|s| s.contains("gateway.allow")))?
            .clone();
        g["using"].is_null().then(|| refused["reason"].as_str().map(String::from)).flatten()
    };
    wait(lab, limit(), &mut host_peak, baseline, |lab| refusal(lab).is_some() && !offers(lab, g1))?;
    report.left_out_refusal = refusal(lab);
    report.cut_gateway_withdrew = !offers(lab, g1);
    report.left_out_reached_internet = reach_internet(lab, &[out])[0];
    report.meshd_peak_rss_kib = members.iter().map(|&k| (id(k), lab.nodes[k].peak_rss_kib)).collect();
    report.host_memory_peak_kib = host_peak;
    drop(internet);
    Ok(report)
}

impl Report {
    pub fn failed_checks(&self) -> Vec<String> {
        let mut failed = Vec::new();
        let some = crate::scenario::first_ids;
        if self.seconds_to_all_online.is_none() {
            failed.push(format!("{} node(s) never reached the internet through a gateway: {}", self.never_online.len(), some(&self.never_online)));
        }
        if !self.reached_lan.is_empty() {
            failed.push(format!("{} node(s) reached the NAS on a gateway's own LAN through it: {}", self.reached_lan.len(), some(&self.reached_lan)));
        }
        if self.seconds_to_reoffer.is_none() {
            failed.push(format!("gateway {} did not offer again after it was switched on with its allow list", self.gateways[1]));
        }
        if self.seconds_to_failover.is_none() {
            failed.push(format!(
                "{} node(s) did not move to gateway {} when {}'s uplink was cut: {}",
                self.not_moved.len(),
                self.gateways[1],
                self.gateways[0],
                some(&self.not_moved)
            ));
        }
        if !self.cut_gateway_withdrew {
            failed.push(format!("gateway {} still offers with its uplink cut", self.gateways[0]));
        }
        if self.left_out_refusal.is_none() {
            failed.push(format!("node {}, left out of {}'s gateway.allow, does not say it was refused", self.left_out, self.gateways[1]));
        }
        if self.left_out_reached_internet {
            failed.push(format!("node {}, left out of the only gateway's gateway.allow, still reaches the internet", self.left_out));
        }
        failed
    }

    pub fn summary(&self) -> String {
        let secs = |s: Option<f64>| s.map_or("never".to_string(), |s| format!("{s:.0} s"));
        let first: Vec<String> = self.first_gateway.iter().map(|(g, n)| format!("{n} through {g}")).collect();
        let rss = self.meshd_peak_rss_kib.values().max().copied().unwrap_or(0);
        let gw_rss: Vec<String> = self.gateways.iter().map(|g| format!("{g} {} KiB", self.meshd_peak_rss_kib.get(g).copied().unwrap_or(0))).collect();
        format!(
            "gateways {} and {} for {} nodes ({} links)\n  up       set up in {:.0} s, then all up {}\n  online   every node through a gateway {} ({}); {} reached the gateways' LAN\n  allow    {} switched on again leaving out node {}: offering again {}\n  failover {}'s uplink cut: all moved to {} {}; {} says: {}\n  memory   meshd at most {rss} KiB (gateways: {}); host memory in use grew by at most {} MiB\n",
            self.gateways[0],
            self.gateways[1],
            self.nodes,
            self.links,
            self.seconds_to_set_up,
            secs(self.seconds_to_all_up),
            secs(self.seconds_to_all_online),
            first.join(", "),
            self.reached_lan.len(),
            self.gateways[1],
            self.left_out,
            secs(self.seconds_to_reoffer),
            self.gateways[0],
            self.gateways[1],
            secs(self.seconds_to_failover),
            self.left_out,
            self.left_out_refusal.as_deref().unwrap_or("nothing"),
            gw_rss.join(", "),
            self.host_memory_peak_kib / 1024,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_gateways_are_the_ends_of_a_line_and_the_left_out_node_needs_the_second_most() {
        let t = Topology::parse(&crate::topology::generate::line(6).to_string()).unwrap();
        let (a, b) = choose(&t).unwrap();
        assert_eq!((a, b), (0, 5));
        assert_eq!(left_out(&t, (a, b), &[1, 2, 3, 4]), 1);
    }

    #[test]
    fn a_gateways_config_has_its_uplink_and_allow_list() {
        let c = gateway_config(&["200::1".into()]);
        assert!(c.contains("dhcp: [\"uplink\"]") && c.contains("peering: [\"lab*\"]"), "{c}");
        assert!(c.contains("gateway:\n  offer: true\n  allow:\n    - \"200::1\"\n"), "{c}");
        assert!(!gateway_config(&[]).contains("allow"));
    }
}
