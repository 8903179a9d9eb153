//! The `hostile` scenario: a mesh with gateways (as in `gateways`) and one hostile neighbour
//! beside the hub, which attacks from the start what faces the mesh (node-firmware's meshview,
//! gateway and HTTP face; docs/monitoring.md and docs/community-access.md):
//! - it floods the mesh view with [`FAKES`] nodes, each signed by a key of its own (as many as
//!   fit in what a neighbour reads);
//! - it rewrites the real gateways' records (their offer withdrawn, itself their neighbour),
//!   once under their signatures and once signed by its own key;
//! - it offers itself as a gateway in its own (genuine) record and answers lease requests with
//!   a lease no node may apply (an address outside the tunnels' range);
//! - it holds [`HELD`] idle connections open to each neighbour's HTTP face.
//!
//! Every meshd node must still reach the internet through a real gateway and never through it,
//! keep every real node in its view with the real gateways' offers as they made them, and the
//! hub must keep answering its other neighbours' `/nodeinfo.json` (what upgrades and gateway
//! leases need); the hub's metrics must show the records it refused from the attacker.

use crate::gateways::{self, Internet};
use crate::lab::{self, Lab};
use meshos_common::node_record::{self, Entry, Node, Secret, Signer};
use serde::Serialize;
use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::process::Command;
use std::time::{Duration, Instant};

/// Fake nodes the attacker serves: about 700 bytes each, so that its `/mesh.json` stays under
/// what a neighbour reads (1 MiB) and the flood is read whole.
const FAKES: u16 = 1300;
/// Idle connections the attacker holds open to each neighbour.
const HELD: usize = 40;
/// How long every node is watched once all are online through a gateway.
const HOLD: Duration = Duration::from_secs(90);
const STEP: Duration = Duration::from_secs(300);
/// How long the views may take, once every node is online, to hold every real node: a record
/// crosses a hop per neighbour read (every 30 s), so eight reads and some.
const VIEWS_WITHIN: Duration = Duration::from_secs(300);

/// A hostile neighbour's program (the lab's `run:` for the hostile node, and for the faults
/// scenario's liar): a web server over the node's `www` (what the lab writes there), which
/// answers every lease request with a lease no node may apply, and holds [`HELD`] idle
/// connections open to each of its router's peers (from its Yggdrasil admin socket), opening
/// new ones as the peers close them.
const ATTACK: &str = r#"import json, os, socket, threading, time
from functools import partial
from http.server import ThreadingHTTPServer, SimpleHTTPRequestHandler
home = os.environ["MESHLAB_DIR"]

class Face(SimpleHTTPRequestHandler):
    def do_POST(self):
        # A lease whose address lies outside the tunnels' range: a node must refuse it.
        body = json.dumps({"address": "192.168.1.2", "gateway": "100.64.0.1", "check": "192.168.1.1", "lease_s": 120}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass

class Server(ThreadingHTTPServer):
    address_family = socket.AF_INET6
    daemon_threads = True

def peers():
    try:
        s = socket.socket(socket.AF_UNIX)
        s.settimeout(2)
        s.connect(os.path.join(home, "run", "yggdrasil.sock"))
        s.sendall(b'{"request":"getpeers"}')
        reply = b""
        while True:
            chunk = s.recv(65536)
            if not chunk:
                break
            reply += chunk
        s.close()
    except OSError:
        return []
    try:
        return [p["address"] for p in json.loads(reply)["response"]["peers"] if p.get("up")]
    except (ValueError, KeyError, TypeError):
        return []

def hold():
    held = {}
    while True:
        for t in peers():
            alive = []
            for s in held.get(t, []):
                try:
                    if s.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT) == b"":
                        s.close()
                        continue
                except BlockingIOError:
                    pass
                except OSError:
                    s.close()
                    continue
                alive.append(s)
            while len(alive) < HELD:
                try:
                    alive.append(socket.create_connection((t, 9100), timeout=3))
                except OSError:
                    break
            held[t] = alive
        time.sleep(1)

threading.Thread(target=hold, daemon=True).start()
Server(("::", 9100), partial(Face, directory=os.path.join(home, "www"))).serve_forever()
"#;

/// How a hostile node runs: once the lab has written its program.
pub(crate) const RUN_ATTACK: &str =
    r#"mkdir -p "$MESHLAB_DIR/www"; until [ -s "$MESHLAB_DIR/attack.py" ]; do sleep 1; done; exec python3 "$MESHLAB_DIR/attack.py""#;

/// Writes the hostile program into the node directory `dir` (the node then starts it).
pub(crate) fn write_attack(dir: &std::path::Path) -> Result<(), String> {
    let path = dir.join("attack.py");
    fs::write(&path, ATTACK.replace("HELD", &HELD.to_string())).map_err(|e| format!("{}: {e}", path.display()))
}

pub struct Hostile {
    pub timeout: Duration,
}

#[derive(Debug, Default, Serialize)]
pub struct Report {
    pub scenario: &'static str,
    pub nodes: usize,
    pub links: usize,
    pub gateways: [String; 2],
    /// The attacker, the hub it sits beside, and the fake nodes it served.
    pub hostile: String,
    pub hub: String,
    pub fakes_served: usize,
    pub seconds_to_set_up: f64,
    pub seconds_to_all_up: Option<f64>,
    /// Every other meshd node reached the internet through a real gateway.
    pub seconds_to_all_online: Option<f64>,
    pub never_online: Vec<String>,
    /// Nodes seen using the attacker as their gateway at any look (none should).
    pub used_hostile: Vec<String>,
    /// Nodes that moved off a real gateway during the watch.
    pub switched: Vec<String>,
    /// When every meshd node's view first held every real node (at most [`VIEWS_WITHIN`]
    /// after all were online); the nodes whose view lacked a real node at the last look; and
    /// those whose view held a real gateway's offer other than it made it, at any look.
    pub seconds_to_views_complete: Option<f64>,
    pub views_missing_real: BTreeMap<String, Vec<String>>,
    pub views_with_forged_offer: Vec<String>,
    /// Fake nodes in the views at the end: the most any node held, and the hub's.
    pub fakes_in_views_max: usize,
    /// Records the hub refused from the attacker (its `meshd_mesh_view_refused_total`).
    pub hub_refused_from_hostile: u64,
    /// The hub's `/nodeinfo.json`, asked by another neighbour during the watch: answered of
    /// asked.
    pub hub_answered: (usize, usize),
    pub meshd_peak_rss_kib: BTreeMap<String, u64>,
    pub host_memory_peak_kib: u64,
}

/// Adds the attacker beside the hub.
pub fn add_hostile(topology: &mut crate::topology::Topology) -> Result<(), String> {
    crate::faults::add_beside_hub(topology, "hostile", RUN_ATTACK.into())
}

/// The attacker's key, from the router config the lab wrote for it.
fn hostile_signer(lab: &Lab, k: usize) -> Result<Signer, String> {
    let path = lab.nodes[k].dir.join("run/yggdrasil.conf");
    let conf: serde_json::Value =
        fs::read_to_string(&path).ok().and_then(|t| serde_json::from_str(&t).ok()).ok_or_else(|| format!("{}: no JSON", path.display()))?;
    let seed = conf["PrivateKey"]
        .as_str()
        .and_then(meshos_common::chunks::unhex)
        .and_then(|k| k.get(..32).and_then(|s| <[u8; 32]>::try_from(s).ok()))
        .ok_or_else(|| format!("{}: no PrivateKey", path.display()))?;
    Ok(Signer::starting(Secret::Yggdrasil(seed), 1))
}

fn record(name: &str, address: String) -> Node {
    Node { address, name: name.into(), version: "0.1.0".into(), board: "qemu-arm64".into(), slot: "a".into(), metrics_port: Some(9100), ..Default::default() }
}

/// A node's `/mesh.json`, asked in its namespace.
fn mesh_json(lab: &Lab, k: usize) -> Option<Vec<Entry>> {
    let out = Command::new("ip").args(["netns", "exec", &lab.nodes[k].namespace, "curl", "-sf", "-m", "5", "http://[::1]:9100/mesh.json"]).output().ok()?;
    out.status.success().then(|| serde_json::from_slice(&out.stdout).ok()).flatten()
}

/// What the attacker serves: its own record (a gateway, the fakes its neighbours), the real
/// gateways' records rewritten, then the fakes.
fn page(me: &mut Signer, fakes: &[Entry], real_gateways: &[Entry]) -> String {
    let mut own = record("hostile", me.yggdrasil_address());
    own.gateway = true;
    let mut entries = vec![me.sign(own)];
    for e in real_gateways {
        let Ok(mut n) = node_record::read(e) else { continue };
        // Withdrawn, the attacker their neighbour, and newer than what the nodes hold: under
        // the gateway's own signature, and signed by the attacker's key.
        (n.gateway, n.neighbours, n.seq) = (false, vec![me.yggdrasil_address()], n.seq + 1000);
        let text = serde_json::to_string(&n).expect("a node serialises");
        entries.push(Entry { record: serde_json::value::RawValue::from_string(text).expect("JSON"), ..e.clone() });
        entries.push(me.sign(n));
    }
    let mut text = serde_json::to_string(&entries).expect("entries serialise");
    text.pop();
    for f in fakes {
        text.push(',');
        text.push_str(&serde_json::to_string(f).expect("an entry serialises"));
    }
    text + "]"
}

fn metric(lab: &Lab, k: usize, name: &str, peer: &str) -> u64 {
    let out = Command::new("ip").args(["netns", "exec", &lab.nodes[k].namespace, "curl", "-sf", "-m", "5", "http://[::1]:9100/metrics"]).output();
    let text = out.map(|o| String::from_utf8_lossy(&o.stdout).into_owned()).unwrap_or_default();
    let prefix = format!("{name}{{peer=\"{peer}\"}} ");
    text.lines().find_map(|l| l.strip_prefix(&prefix)).and_then(|v| v.trim().parse().ok()).unwrap_or(0)
}

pub fn run(lab: &mut Lab, plan: &Hostile) -> Result<Report, String> {
    if !lab::has_dhcp_client(&lab.launch) {
        return Err("the gateways' uplinks take their addresses with busybox's udhcpc (ci/setup-host.sh installs it)".into());
    }
    let h = lab.nodes.iter().position(|n| n.command.is_some() && n.id.starts_with("hostile")).ok_or("no hostile node in the lab")?;
    let hub = lab.neighbours[h].first().copied().ok_or("the hostile node has no link")?;
    let (g1, g2) = gateways::choose(&lab.topology)?;
    let members: Vec<usize> = (0..lab.nodes.len()).filter(|&k| lab.nodes[k].command.is_none()).collect();
    let clients: Vec<usize> = members.iter().copied().filter(|&k| k != g1 && k != g2).collect();
    let ids: Vec<String> = lab.nodes.iter().map(|n| n.id.clone()).collect();
    let id = |k: usize| ids[k].clone();
    let mut report = Report {
        scenario: "hostile",
        nodes: members.len(),
        links: lab.topology.links.len(),
        gateways: [id(g1), id(g2)],
        hostile: id(h),
        hub: id(hub),
        fakes_served: FAKES.into(),
        seconds_to_set_up: lab.setup_s,
        ..Report::default()
    };
    for g in [g1, g2] {
        lab.set_config(g, &gateways::gateway_config(&[]))?;
    }
    let internet = Internet::start(lab, &[g1, g2], &lab.work_dir().join("internet"))?;

    // The attacker's program and its page (fakes signed by keys of its own).
    let dir = lab.nodes[h].dir.join("www");
    let write = |name: &str, text: &str| fs::write(dir.join(name), text).map_err(|e| format!("{}: {e}", dir.join(name).display()));
    fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let mut me = hostile_signer(lab, h)?;
    let fakes: Vec<Entry> = (0..FAKES)
        .map(|i| {
            let mut seed = [0xa7u8; 32];
            seed[..2].copy_from_slice(&i.to_le_bytes());
            let mut s = Signer::starting(Secret::Yggdrasil(seed), 1);
            let address = s.yggdrasil_address();
            s.sign(record(&format!("fake-{i}"), address))
        })
        .collect();
    let fake_addresses: BTreeSet<String> = fakes.iter().filter_map(|e| node_record::read(e).ok()).map(|n| n.address).collect();
    write("mesh.json", &page(&mut me, &fakes, &[]))?;
    write_attack(&lab.nodes[h].dir)?;
    eprintln!(
        "meshlab: hostile: node {} beside hub {} floods {FAKES} fake nodes, forges the gateways' records, offers itself as gateway and holds {HELD} connections to the hub; gateways {} and {}",
        id(h),
        id(hub),
        id(g1),
        id(g2)
    );
    let deadline = Instant::now() + plan.timeout;
    let limit = || STEP.min(deadline.saturating_duration_since(Instant::now()));
    let baseline = crate::scenario::mem_used_kib();
    let mut host_peak = 0;
    lab.power_on_all();

    report.seconds_to_all_up = gateways::wait(lab, limit(), &mut host_peak, baseline, |lab| members.iter().all(|&k| lab.nodes[k].is_up()))?;
    let addresses: BTreeMap<usize, String> = members.iter().filter_map(|&k| gateways::address(lab, k).map(|a| (k, a))).collect();
    let hub_address = addresses.get(&hub).cloned().unwrap_or_default();
    let real_gateways: BTreeSet<String> = [g1, g2].iter().filter_map(|k| addresses.get(k).cloned()).collect();
    let hostile_address = me.yggdrasil_address();
    // Forges the gateways' records as they are now (their offers appear once their uplinks
    // are up), every half minute.
    let mut forged_at = Instant::now() - Duration::from_secs(30);
    let mut forge = |lab: &Lab, me: &mut Signer| {
        if forged_at.elapsed() < Duration::from_secs(30) {
            return;
        }
        forged_at = Instant::now();
        let held = mesh_json(lab, hub).unwrap_or_default();
        let real: Vec<Entry> = held.into_iter().filter(|e| node_record::read(e).is_ok_and(|n| real_gateways.contains(&n.address))).collect();
        let _ = fs::write(dir.join("mesh.json"), page(me, &fakes, &real));
    };

    // 1. Every node online through a real gateway.
    let mut online: BTreeSet<usize> = BTreeSet::new();
    let mut used_hostile: BTreeSet<usize> = BTreeSet::new();
    let t = lab.seconds();
    let all_online = gateways::wait(lab, limit(), &mut host_peak, baseline, |lab| {
        forge(lab, &mut me);
        let using: Vec<(usize, Option<String>)> = clients.iter().map(|&k| (k, gateways::using(lab, k))).collect();
        used_hostile.extend(using.iter().filter(|(_, g)| g.as_deref() == Some(hostile_address.as_str())).map(|(k, _)| *k));
        let through_real: Vec<usize> =
            using.iter().filter(|(k, g)| !online.contains(k) && g.as_ref().is_some_and(|g| real_gateways.contains(g))).map(|(k, _)| *k).collect();
        let reached = gateways::reach_internet(lab, &through_real);
        online.extend(through_real.iter().zip(reached).filter(|(_, r)| *r).map(|(k, _)| *k));
        eprintln!("meshlab: {:>5.0} s: {}/{} nodes reach the internet through a real gateway", lab.seconds(), online.len(), clients.len());
        online.len() == clients.len()
    })?;
    report.seconds_to_all_online = all_online.map(|s| s + t);
    report.never_online = clients.iter().filter(|k| !online.contains(k)).map(|&k| id(k)).collect();

    // 2. The watch: nobody moves to the attacker, the hub keeps answering its neighbours.
    let first: BTreeMap<usize, Option<String>> = clients.iter().map(|&k| (k, gateways::using(lab, k))).collect();
    let mut switched: BTreeSet<usize> = BTreeSet::new();
    let asker = lab.neighbours[hub].iter().copied().find(|&k| k != h && lab.nodes[k].command.is_none());
    let (mut answered, mut asked) = (0, 0);
    gateways::wait(lab, HOLD.min(limit()), &mut host_peak, baseline, |lab| {
        forge(lab, &mut me);
        for &k in &clients {
            let now = gateways::using(lab, k);
            if now.as_deref() == Some(hostile_address.as_str()) {
                used_hostile.insert(k);
            }
            if now != first[&k] {
                switched.insert(k);
            }
        }
        if let Some(a) = asker {
            let url = format!("http://[{hub_address}]:9100/nodeinfo.json");
            let ok =
                Command::new("ip").args(["netns", "exec", &lab.nodes[a].namespace, "curl", "-sf", "-m", "5", &url]).output().is_ok_and(|o| o.status.success());
            (answered, asked) = (answered + usize::from(ok), asked + 1);
        }
        false
    })?;
    report.hub_answered = (answered, asked);
    report.used_hostile = used_hostile.iter().map(|&k| id(k)).collect();
    report.switched = switched.iter().map(|&k| id(k)).collect();

    // 3. The views, until each holds every real node (a record crosses one hop per neighbour
    // read, every half minute, so the far side of the mesh comes last): each read is checked
    // for forged offers against the gateways' own latest words, read after it (a gateway's
    // sequence only grows, so no genuine record of it in a view read before is ahead of them).
    let t = lab.seconds();
    let complete = gateways::wait(lab, VIEWS_WITHIN.min(limit()), &mut host_peak, baseline, |lab| {
        forge(lab, &mut me);
        report.views_missing_real.clear();
        let mut views: Vec<(usize, Vec<Node>)> = Vec::new();
        for &k in &members {
            match mesh_json(lab, k) {
                Some(entries) => views.push((k, entries.iter().filter_map(|e| node_record::read(e).ok()).collect())),
                None => {
                    report.views_missing_real.insert(id(k), vec!["(no /mesh.json)".into()]);
                }
            }
        }
        let own_seq: BTreeMap<String, u64> =
            [g1, g2].iter().filter_map(|&g| mesh_json(lab, g)?.first().and_then(|e| node_record::read(e).ok())).map(|n| (n.address, n.seq)).collect();
        for (k, nodes) in views {
            let held: BTreeSet<&str> = nodes.iter().map(|n| n.address.as_str()).collect();
            let missing: Vec<String> = addresses.iter().filter(|(_, a)| !held.contains(a.as_str())).map(|(&m, _)| id(m)).collect();
            if !missing.is_empty() {
                report.views_missing_real.insert(id(k), missing);
            }
            // What only a forgery says: the attacker as a gateway's neighbour, or a sequence
            // number ahead of the gateway's own (a gateway may withdraw its offer, truly).
            let forged = |n: &Node| n.neighbours.contains(&hostile_address) || own_seq.get(&n.address).is_some_and(|&s| n.seq > s);
            if nodes.iter().any(|n| real_gateways.contains(&n.address) && forged(n)) && !report.views_with_forged_offer.contains(&id(k)) {
                report.views_with_forged_offer.push(id(k));
            }
            report.fakes_in_views_max = report.fakes_in_views_max.max(nodes.iter().filter(|n| fake_addresses.contains(&n.address)).count());
        }
        eprintln!("meshlab: {:>5.0} s: {}/{} views hold every real node", lab.seconds(), members.len() - report.views_missing_real.len(), members.len());
        report.views_missing_real.is_empty()
    })?;
    report.seconds_to_views_complete = complete.map(|s| s + t);
    report.hub_refused_from_hostile = metric(lab, hub, "meshd_mesh_view_refused_total", &hostile_address);
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
            failed.push(format!("{} node(s) never reached the internet through a real gateway: {}", self.never_online.len(), some(&self.never_online)));
        }
        if !self.used_hostile.is_empty() {
            failed.push(format!("{} node(s) used the hostile node as their gateway: {}", self.used_hostile.len(), some(&self.used_hostile)));
        }
        if !self.views_missing_real.is_empty() {
            let v: Vec<String> = self.views_missing_real.iter().map(|(k, m)| format!("{k} (lacks {})", m.join(" "))).collect();
            failed.push(format!("real nodes still missing, {} s after all were online, from the views of: {}", VIEWS_WITHIN.as_secs(), some(&v)));
        }
        if !self.views_with_forged_offer.is_empty() {
            failed.push(format!("a real gateway's offer forged in the views of: {}", some(&self.views_with_forged_offer)));
        }
        if self.hub_refused_from_hostile == 0 {
            failed.push(format!("hub {}'s metrics show no record refused from the hostile node", self.hub));
        }
        if self.hub_answered.1 == 0 || self.hub_answered.0 < self.hub_answered.1 {
            failed.push(format!(
                "hub {} answered {} of {} /nodeinfo.json requests from a neighbour while it was held",
                self.hub, self.hub_answered.0, self.hub_answered.1
            ));
        }
        failed
    }

    pub fn summary(&self) -> String {
        let secs = |s: Option<f64>| s.map_or("never".to_string(), |s| format!("{s:.0} s"));
        let rss = self.meshd_peak_rss_kib.values().max().copied().unwrap_or(0);
        format!(
            "hostile node {} beside hub {} ({} nodes, {} links; gateways {} and {})\n  online   every node through a real gateway {}; through the hostile node: {}; moved during the watch: {}\n  views    every real node in every view {}; views lacking one at the end: {}; forged offers: {}; fakes held at most {} of {}\n  hub      refused {} records from it; answered {} of {} nodeinfo requests while held\n  memory   meshd at most {rss} KiB; host memory in use grew by at most {} MiB\n",
            self.hostile,
            self.hub,
            self.nodes,
            self.links,
            self.gateways[0],
            self.gateways[1],
            secs(self.seconds_to_all_online),
            self.used_hostile.len(),
            self.switched.len(),
            secs(self.seconds_to_views_complete),
            self.views_missing_real.len(),
            self.views_with_forged_offer.len(),
            self.fakes_in_views_max,
            self.fakes_served,
            self.hub_refused_from_hostile,
            self.hub_answered.0,
            self.hub_answered.1,
            self.host_memory_peak_kib / 1024,
        )
    }
}
