//! The mesh to emulate: nodes and links, read from meshnet-lab's JSON format (so the community
//! graphs published with it load as they are), from a live node's `/mesh.json`, or generated.

use serde::Deserialize;
use serde_json::{json, Value};
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// What runs on a node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Router {
    Yggdrasil,
    Cjdns,
}

#[derive(Debug, Clone)]
pub struct Node {
    /// As the file names it; the node's namespace is `meshlab-<id>`.
    pub id: String,
    pub router: Router,
    /// Given the scenario's new release in its boot partition's `updates/`.
    pub updates: bool,
    /// A command run instead of meshd (its router still runs).
    pub run: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// A radio link (802.11s between two nodes; `other` in Freifunk's maps is taken as one).
    Wifi,
    /// A tunnel over the internet.
    Vpn,
}

#[derive(Debug, Clone)]
pub struct Link {
    pub a: usize,
    pub b: usize,
    /// A radio link (not an internet tunnel).
    pub radio: bool,
    /// Each direction's rate in kbit/s.
    pub rate_kbit: u64,
    /// Share of packets lost from a to b and from b to a (0 to 1).
    pub loss_ab: f64,
    pub loss_ba: f64,
}

#[derive(Debug, Clone, Default)]
pub struct Topology {
    pub nodes: Vec<Node>,
    pub links: Vec<Link>,
}

/// A radio link's rate when the file gives none: what a busy 802.11n link between two
/// rooftops carries, a few Mbit/s.
pub const WIFI_KBIT: u64 = 5_000;
/// An internet tunnel's.
pub const VPN_KBIT: u64 = 50_000;
/// A radio link's loss from its link quality is capped here: batman-adv's TQ also counts hop
/// penalties and asymmetry, and the map's 0.01 marks links batman scarcely used, not links
/// that drop 99 % of what they carry.
pub const MAX_TQ_LOSS: f64 = 0.2;

#[derive(Deserialize)]
struct RawFile {
    nodes: Vec<RawNode>,
    #[serde(default)]
    links: Vec<RawLink>,
}

#[derive(Deserialize)]
struct RawNode {
    id: Value,
    #[serde(default)]
    router: Option<String>,
    #[serde(default)]
    updates: bool,
    #[serde(default)]
    run: Option<String>,
}

#[derive(Deserialize)]
struct RawLink {
    source: Value,
    target: Value,
    #[serde(rename = "type", default)]
    kind: Option<String>,
    /// Mbit/s as a number, or tc's way ("5mbit", "800kbit").
    #[serde(default)]
    rate: Option<Value>,
    /// Per cent, as meshnet-lab hands it to netem.
    #[serde(default)]
    loss: Option<f64>,
    #[serde(default)]
    source_tq: Option<f64>,
    #[serde(default)]
    target_tq: Option<f64>,
}

fn id_text(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

/// `5mbit`, `800kbit`, `1gbit` or a number of Mbit/s, in kbit/s.
fn parse_rate(v: &Value) -> Result<u64, String> {
    if let Some(mbit) = v.as_f64() {
        return Ok((mbit * 1000.0).round() as u64);
    }
    let text = v.as_str().ok_or_else(|| format!("rate {v} is neither a number of Mbit/s nor a text like \"5mbit\""))?.to_ascii_lowercase();
    let (number, scale) = [("gbit", 1_000_000.0), ("mbit", 1000.0), ("kbit", 1.0)]
        .iter()
        .find_map(|(unit, scale)| text.strip_suffix(unit).map(|n| (n.trim().to_string(), *scale)))
        .ok_or_else(|| format!("rate \"{text}\": say kbit, mbit or gbit"))?;
    let n: f64 = number.parse().map_err(|_| format!("rate \"{text}\" is no number"))?;
    Ok((n * scale).round() as u64)
}

impl Topology {
    pub fn load(path: &Path) -> Result<Topology, String> {
        let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
        Topology::parse(&text).map_err(|e| format!("{}: {e}", path.display()))
    }

    /// meshnet-lab's format; keys it does not know are ignored, as meshnet-lab does.
    pub fn parse(text: &str) -> Result<Topology, String> {
        let raw: RawFile = serde_json::from_str(text).map_err(|e| format!("not a topology (nodes and links): {e}"))?;
        let mut index = BTreeMap::new();
        let mut nodes = Vec::new();
        for (i, n) in raw.nodes.into_iter().enumerate() {
            let id = id_text(&n.id).ok_or_else(|| format!("node {i}: id {} is neither a number nor a text", n.id))?;
            if id.is_empty() || id.len() > 40 || !id.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_') {
                return Err(format!("node {i}: id '{id}' must be 1 to 40 letters, digits, - or _ (it names the node's namespace)"));
            }
            let router = match n.router.as_deref() {
                None | Some("yggdrasil") => Router::Yggdrasil,
                Some("cjdns") => Router::Cjdns,
                Some(other) => return Err(format!("node {id}: router '{other}': yggdrasil or cjdns")),
            };
            if index.insert(id.clone(), nodes.len()).is_some() {
                return Err(format!("node id '{id}' appears twice"));
            }
            nodes.push(Node { id, router, updates: n.updates, run: n.run });
        }
        let mut seen = BTreeSet::new();
        let mut links = Vec::new();
        for (i, l) in raw.links.into_iter().enumerate() {
            let end = |v: &Value| id_text(v).and_then(|id| index.get(&id).copied()).ok_or_else(|| format!("link {i}: no node {v}"));
            let (a, b) = (end(&l.source)?, end(&l.target)?);
            // A node needs no link to itself, and one link between two nodes is one veth.
            if a == b || !seen.insert((a.min(b), a.max(b))) {
                continue;
            }
            let kind = match l.kind.as_deref() {
                Some("vpn") => Kind::Vpn,
                _ => Kind::Wifi,
            };
            let rate_kbit = match &l.rate {
                Some(r) => parse_rate(r).map_err(|e| format!("link {i}: {e}"))?,
                None if kind == Kind::Vpn => VPN_KBIT,
                None => WIFI_KBIT,
            };
            let from_tq = |tq: Option<f64>| match (kind, tq) {
                (Kind::Wifi, Some(tq)) => (1.0 - tq.clamp(0.0, 1.0)).min(MAX_TQ_LOSS),
                _ => 0.0,
            };
            let (loss_ab, loss_ba) = match l.loss {
                Some(pct) if (0.0..=100.0).contains(&pct) => (pct / 100.0, pct / 100.0),
                Some(pct) => return Err(format!("link {i}: loss {pct} is not a percentage")),
                // The quality a node measured of what it receives: target_tq is a to b.
                None => (from_tq(l.target_tq), from_tq(l.source_tq)),
            };
            links.push(Link { a, b, radio: kind == Kind::Wifi, rate_kbit, loss_ab, loss_ba });
        }
        if nodes.is_empty() {
            return Err("the topology has no nodes".into());
        }
        Ok(Topology { nodes, links })
    }

    /// The mesh as a live node sees it: its `/mesh.json` (every node it heard of, with its
    /// overlay neighbours). Nodes are numbered in address order; links are radio links.
    pub fn from_mesh_json(text: &str) -> Result<Topology, String> {
        let entries: Vec<Value> = serde_json::from_str(text).map_err(|e| format!("not a /mesh.json (a list of nodes): {e}"))?;
        // Each entry is a node's signed record (older releases served the records bare).
        let nodes: Vec<&Value> = entries.iter().map(|e| e.get("record").unwrap_or(e)).collect();
        let mut addresses: Vec<String> = nodes.iter().filter_map(|n| n["address"].as_str().map(String::from)).collect();
        addresses.sort();
        addresses.dedup();
        let index: BTreeMap<&str, usize> = addresses.iter().enumerate().map(|(i, a)| (a.as_str(), i)).collect();
        let mut pairs = BTreeSet::new();
        for n in nodes {
            let Some(&a) = n["address"].as_str().and_then(|a| index.get(a)) else { continue };
            for nb in n["neighbours"].as_array().into_iter().flatten().filter_map(Value::as_str) {
                if let Some(&b) = index.get(nb) {
                    if a != b {
                        pairs.insert((a.min(b), a.max(b)));
                    }
                }
            }
        }
        let out = json!({
            "nodes": addresses.iter().enumerate().map(|(i, a)| json!({"id": i, "name": a})).collect::<Vec<_>>(),
            "links": pairs.iter().map(|(a, b)| json!({"source": a, "target": b, "type": "wifi"})).collect::<Vec<_>>(),
        });
        Topology::parse(&out.to_string())
    }

    /// Indexes of each node's neighbours.
    pub fn neighbours(&self) -> Vec<Vec<usize>> {
        let mut out = vec![Vec::new(); self.nodes.len()];
        for l in &self.links {
            out[l.a].push(l.b);
            out[l.b].push(l.a);
        }
        out
    }

    /// The connected parts of the graph, each as its nodes' indexes.
    /// Hops from node `start` to each node (None: not reachable).
    pub fn hops_from(&self, start: usize) -> Vec<Option<usize>> {
        let nb = self.neighbours();
        let mut hops = vec![None; self.nodes.len()];
        hops[start] = Some(0);
        let mut todo = std::collections::VecDeque::from([start]);
        while let Some(n) = todo.pop_front() {
            for &m in &nb[n] {
                if hops[m].is_none() {
                    hops[m] = hops[n].map(|h| h + 1);
                    todo.push_back(m);
                }
            }
        }
        hops
    }

    pub fn components(&self) -> Vec<Vec<usize>> {
        let nb = self.neighbours();
        let mut seen = vec![false; self.nodes.len()];
        let mut parts = Vec::new();
        for start in 0..self.nodes.len() {
            if seen[start] {
                continue;
            }
            seen[start] = true;
            let (mut part, mut todo) = (Vec::new(), vec![start]);
            while let Some(n) = todo.pop() {
                part.push(n);
                for &m in &nb[n] {
                    if !seen[m] {
                        seen[m] = true;
                        todo.push(m);
                    }
                }
            }
            parts.push(part);
        }
        parts
    }
}

/// Generated graphs in meshnet-lab's format.
pub mod generate {
    use serde_json::{json, Value};

    fn file(n: usize, links: &[(usize, usize)]) -> Value {
        json!({
            "nodes": (0..n).map(|i| json!({"id": i})).collect::<Vec<_>>(),
            "links": links.iter().map(|(a, b)| json!({"source": a, "target": b, "type": "wifi"})).collect::<Vec<_>>(),
        })
    }

    pub fn line(n: usize) -> Value {
        file(n, &(1..n).map(|i| (i - 1, i)).collect::<Vec<_>>())
    }

    pub fn ring(n: usize) -> Value {
        let mut links: Vec<_> = (1..n).map(|i| (i - 1, i)).collect();
        if n > 2 {
            links.push((n - 1, 0));
        }
        file(n, &links)
    }

    /// `w` by `h` nodes, each linked to the one right of it and the one below it.
    pub fn grid(w: usize, h: usize) -> Value {
        let mut links = Vec::new();
        for y in 0..h {
            for x in 0..w {
                let i = y * w + x;
                if x + 1 < w {
                    links.push((i, i + 1));
                }
                if y + 1 < h {
                    links.push((i, i + w));
                }
            }
        }
        file(w * h, &links)
    }

    /// `n` nodes at random places in a unit square, linked when closer than `radius`: how
    /// rooftop nodes of a city mesh see each other. The same seed gives the same graph.
    pub fn random_geometric(n: usize, radius: f64, seed: u64) -> Value {
        let mut state = seed;
        // splitmix64: small, and the same on every machine.
        let mut next = || {
            state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = state;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            (z ^ (z >> 31)) as f64 / u64::MAX as f64
        };
        let points: Vec<(f64, f64)> = (0..n).map(|_| (next(), next())).collect();
        let mut links = Vec::new();
        for i in 0..n {
            for j in i + 1..n {
                let (dx, dy) = (points[i].0 - points[j].0, points[i].1 - points[j].1);
                if (dx * dx + dy * dy).sqrt() < radius {
                    links.push((i, j));
                }
            }
        }
        file(n, &links)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_meshnet_lab_files_and_ignores_unknown_keys() {
        let text = r#"{"nodes": [{"id": 0, "name": "a", "x": 1}, {"id": 1}, {"id": "gw", "router": "cjdns", "updates": true}],
            "links": [{"source": 0, "target": 1, "type": "wifi", "source_tq": 0.9, "target_tq": 0.5, "quality": 3},
                      {"source": 1, "target": 0}, {"source": 1, "target": "gw", "type": "vpn"},
                      {"source": 0, "target": "gw", "rate": "800kbit", "loss": 10}]}"#;
        let t = Topology::parse(text).unwrap();
        assert_eq!(t.nodes.len(), 3);
        assert_eq!((t.nodes[2].router, t.nodes[2].updates), (Router::Cjdns, true));
        assert_eq!(t.links.len(), 3, "the second 0-1 link is the same link");
        let l = &t.links[0];
        assert_eq!(l.rate_kbit, WIFI_KBIT);
        assert!((l.loss_ab - 0.2).abs() < 1e-9 && (l.loss_ba - 0.1).abs() < 1e-9, "{l:?}");
        assert_eq!((t.links[1].rate_kbit, t.links[1].loss_ab), (VPN_KBIT, 0.0));
        assert_eq!((t.links[2].rate_kbit, t.links[2].loss_ba), (800, 0.1));
    }

    #[test]
    fn errors_name_the_node_or_link() {
        assert_eq!(Topology::parse(r#"{"nodes":[{"id":0}],"links":[{"source":0,"target":7}]}"#).unwrap_err(), "link 0: no node 7");
        assert!(Topology::parse(r#"{"nodes":[{"id":"a b"}]}"#).unwrap_err().contains("node 0: id 'a b'"));
        assert!(Topology::parse(r#"{"nodes":[{"id":0},{"id":0}]}"#).unwrap_err().contains("twice"));
        assert!(Topology::parse(r#"{"nodes":[{"id":0},{"id":1}],"links":[{"source":0,"target":1,"rate":"fast"}]}"#).unwrap_err().contains("link 0: rate"));
    }

    #[test]
    fn the_freifunk_graph_is_one_mesh() {
        let t = Topology::load(&Path::new(env!("CARGO_MANIFEST_DIR")).join("topologies/freifunk-ulm.json")).unwrap();
        assert_eq!((t.nodes.len(), t.links.len(), t.components().len()), (217, 447, 1));
        assert_eq!(t.neighbours().iter().map(Vec::len).max(), Some(78));
    }

    #[test]
    fn generated_graphs_have_their_shape() {
        let parse = |v: serde_json::Value| Topology::parse(&v.to_string()).unwrap();
        assert_eq!(parse(generate::line(5)).links.len(), 4);
        assert_eq!(parse(generate::ring(5)).links.len(), 5);
        assert_eq!(parse(generate::grid(3, 4)).links.len(), 2 * 4 + 3 * 3);
        let a = generate::random_geometric(50, 0.25, 7);
        assert_eq!(a, generate::random_geometric(50, 0.25, 7), "the same seed, the same graph");
        assert_ne!(a, generate::random_geometric(50, 0.25, 8));
    }

    #[test]
    fn a_live_mesh_view_becomes_a_topology() {
        let text = r#"[{"address":"200::1","neighbours":["200::2"]},{"address":"200::2","neighbours":["200::1","200::3"]},
                       {"address":"200::3","neighbours":["200::9"]}]"#;
        let t = Topology::from_mesh_json(text).unwrap();
        assert_eq!((t.nodes.len(), t.links.len()), (3, 2), "a neighbour it does not list as a node is no node");
        // As nodes serve it now: each record with its signature and age.
        let signed = r#"[{"record":{"address":"200::1","neighbours":["200::2"]},"sig":"00","age_s":0},
                         {"record":{"address":"200::2","neighbours":["200::1"]},"sig":"00","age_s":3}]"#;
        let t = Topology::from_mesh_json(signed).unwrap();
        assert_eq!((t.nodes.len(), t.links.len()), (2, 1));
    }

    #[test]
    fn a_real_nodes_mesh_json_loads() {
        // What node 3 of the small lab served at /mesh.json a minute after power-on.
        let t = Topology::from_mesh_json(include_str!("testdata/mesh-view.json")).unwrap();
        assert_eq!((t.nodes.len(), t.links.len(), t.components().len()), (3, 2, 1));
    }
}
