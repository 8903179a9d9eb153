//! The mesh as this node knows it, for monitoring: every node it has heard of, with its overlay
//! neighbours. Each node serves its view at `/mesh.json` and reads its overlay neighbours'
//! views every [`EVERY`], keeping of each node the freshest word (an age in seconds, not a
//! time: nodes have no clocks they agree on). A node not heard of for [`MAX_AGE`] is dropped,
//! and the view never holds more than [`MAX_NODES`]: when full, it drops first what only one
//! neighbour vouches for, from the neighbour that alone vouches for the most, so one neighbour
//! flooding the view with nodes of its own invention pushes out its own inventions, not the
//! nodes others vouch for too. `/sd.json` gives the same nodes as
//! Prometheus HTTP service discovery, so a Prometheus that reaches one node finds them all.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::net::Ipv6Addr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub const EVERY: Duration = Duration::from_secs(30);
pub const MAX_AGE: Duration = Duration::from_secs(600);
pub const MAX_NODES: usize = 1024;
/// A neighbour's `/mesh.json` larger than this is not read.
const MAX_BODY: u64 = 1 << 20;

/// One node, as it last described itself.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Node {
    pub address: String,
    pub name: String,
    pub version: String,
    pub board: String,
    pub slot: String,
    /// Where its metrics are served (None: turned off).
    pub metrics_port: Option<u16>,
    /// Its overlay neighbours, by address.
    #[serde(default)]
    pub neighbours: Vec<String>,
    /// Bytes moved with each neighbour (same order), for shading links.
    #[serde(default)]
    pub link_bytes: Vec<u64>,
    #[serde(default)]
    pub uptime_s: u64,
    /// What is wrong on the node, in words (a config error, a rollback, a radio down…).
    #[serde(default)]
    pub alerts: Vec<String>,
    /// Seconds since the node itself said this (0 for the node serving the view).
    #[serde(default)]
    pub age_s: u64,
    /// It offers internet access now (crate::gateway): its uplink answers.
    #[serde(default)]
    pub gateway: bool,
}

impl Node {
    /// What a view takes from outside: an overlay address, short text, a bounded list. The
    /// addresses end up as Prometheus targets (`/sd.json`) and as gateways to tunnel to, so only
    /// a node's overlay address passes: never loopback, link-local, a LAN's or a mapped IPv4.
    fn plausible(&self) -> bool {
        let short = |s: &str| s.len() <= 128 && !s.contains(['\n', '\r']);
        is_overlay(&self.address)
            && self.metrics_port != Some(0)
            && [&self.name, &self.version, &self.board, &self.slot].iter().all(|s| short(s))
            && self.neighbours.len() <= 64
            && self.neighbours.iter().all(|n| is_overlay(n))
            && self.link_bytes.len() <= self.neighbours.len()
            && self.alerts.len() <= 16
            && self.alerts.iter().all(|a| a.len() <= 256)
    }
}

/// Whether `address` is a node's address on an overlay: Yggdrasil's 200::/8 (300::/8 holds the
/// nodes' client prefixes, not nodes) or cjdns's fc00::/8.
fn is_overlay(address: &str) -> bool {
    address.parse::<Ipv6Addr>().is_ok_and(|a| matches!(a.octets()[0], 0x02 | 0xfc))
}

#[derive(Debug, Default)]
pub struct View {
    me: Option<Node>,
    /// Address → the node, when it said it (estimated: when heard less its age), and the
    /// neighbours that told of it (at most [`MAX_TOLD_BY`]).
    known: BTreeMap<String, (Node, Instant, Vec<String>)>,
}

/// Neighbours remembered per node as having told of it.
const MAX_TOLD_BY: usize = 4;

impl View {
    pub fn set_me(&mut self, me: Node) {
        self.known.remove(&me.address);
        self.me = Some(me);
    }

    /// Takes from neighbour `from`'s view what is fresher than what this node knows, and
    /// notes that `from` told of each node.
    pub fn learn(&mut self, from: &str, nodes: Vec<Node>, now: Instant) {
        let me = self.me.as_ref().map(|m| m.address.clone());
        for mut n in nodes.into_iter().filter(Node::plausible) {
            // One spelling of each address, so that a node is one entry however it is written.
            n.address = n.address.parse::<Ipv6Addr>().expect("plausible").to_string();
            let age = Duration::from_secs(n.age_s);
            let Some(said) = now.checked_sub(age).filter(|_| age < MAX_AGE) else { continue };
            if Some(&n.address) == me.as_ref() {
                continue;
            }
            let entry = self.known.entry(n.address.clone()).or_insert_with(|| (n.clone(), said, Vec::new()));
            if entry.1 < said {
                (entry.0, entry.1) = (n, said);
            }
            if !entry.2.iter().any(|t| t == from) && entry.2.len() < MAX_TOLD_BY {
                entry.2.push(from.to_string());
            }
        }
        self.known.retain(|_, (_, said, _)| now.duration_since(*said) < MAX_AGE);
        while self.known.len() > MAX_NODES - 1 {
            let excess = self.known.len() - (MAX_NODES - 1);
            for address in self.to_drop(excess) {
                self.known.remove(&address);
            }
        }
    }

    /// Up to `n` entries to drop from a full view: of the neighbour that alone told of the most
    /// nodes, the oldest of those (once it no longer alone tells of the most, the next call
    /// picks again); when every node was told of by two or more, the oldest.
    fn to_drop(&self, n: usize) -> Vec<String> {
        let mut sole: BTreeMap<&str, usize> = BTreeMap::new();
        for (_, _, told) in self.known.values() {
            if let [only] = told.as_slice() {
                *sole.entry(only.as_str()).or_default() += 1;
            }
        }
        let mut counts: Vec<usize> = sole.values().copied().collect();
        counts.sort_unstable_by(|a, b| b.cmp(a));
        let flooder = sole.into_iter().max_by_key(|(_, c)| *c);
        // Down to the next neighbour's count at most, so that the choice stays fair.
        let n = match (flooder, counts.get(1)) {
            (Some((_, most)), Some(next)) => n.min(most - next + 1),
            _ => n,
        };
        let mut candidates: Vec<(&String, Instant)> = self
            .known
            .iter()
            .filter(|(_, (_, _, told))| flooder.is_none_or(|(o, _)| matches!(told.as_slice(), [t] if t == o)))
            .map(|(a, (_, said, _))| (a, *said))
            .collect();
        candidates.sort_by_key(|(_, said)| *said);
        candidates.into_iter().take(n.max(1)).map(|(a, _)| a.clone()).collect()
    }

    /// Whether `address` is a node of this view or one of this node's neighbours.
    pub fn knows(&self, address: &Ipv6Addr) -> bool {
        let neighbour = |m: &Node| m.neighbours.iter().any(|n| n.parse::<Ipv6Addr>().ok().as_ref() == Some(address));
        self.known.contains_key(&address.to_string()) || self.me.as_ref().is_some_and(neighbour)
    }

    /// This node first, then every other it knows, each with its age now.
    pub fn nodes(&self, now: Instant) -> Vec<Node> {
        let others = self
            .known
            .values()
            .filter(|(_, said, _)| now.duration_since(*said) < MAX_AGE)
            .map(|(n, said, _)| Node { age_s: now.duration_since(*said).as_secs(), ..n.clone() });
        self.me.iter().cloned().chain(others).collect()
    }
}

/// Overlay hops from `from` to every node it can reach through the nodes' neighbour lists.
pub fn hops(nodes: &[Node], from: &str) -> BTreeMap<String, usize> {
    let links: BTreeMap<&str, &[String]> = nodes.iter().map(|n| (n.address.as_str(), n.neighbours.as_slice())).collect();
    let mut dist = BTreeMap::from([(from.to_string(), 0)]);
    let mut queue = std::collections::VecDeque::from([from.to_string()]);
    while let Some(at) = queue.pop_front() {
        let d = dist[&at];
        for next in links.get(at.as_str()).copied().unwrap_or_default() {
            if !dist.contains_key(next) {
                dist.insert(next.clone(), d + 1);
                queue.push_back(next.clone());
            }
        }
    }
    dist
}

/// Prometheus HTTP service discovery: one target group a node that serves metrics.
pub fn service_discovery(nodes: &[Node]) -> serde_json::Value {
    let groups: Vec<serde_json::Value> = nodes
        .iter()
        .filter_map(|n| {
            let port = n.metrics_port?;
            Some(serde_json::json!({
                "targets": [format!("[{}]:{port}", n.address)],
                "labels": { "meshos_node": n.name, "meshos_board": n.board, "meshos_version": n.version },
            }))
        })
        .collect();
    serde_json::Value::Array(groups)
}

/// Reads the overlay neighbours' views every [`EVERY`]; `me` says what this node is now (its
/// neighbours included).
pub fn spawn(view: Arc<Mutex<View>>, me: impl Fn() -> Option<Node> + Send + 'static) -> Result<(), String> {
    let http = crate::chunk_fetch::agent();
    let run = move || loop {
        if let Some(me) = me() {
            let neighbours = me.neighbours.clone();
            let port = me.metrics_port;
            if let Ok(mut v) = view.lock() {
                v.set_me(me);
            }
            for n in neighbours {
                let Some(port) = port else { break };
                let url = format!("http://[{n}]:{port}/mesh.json");
                let got = crate::chunk_fetch::get_within(&http, &url, MAX_BODY, Duration::from_secs(5))
                    .ok()
                    .and_then(|b| serde_json::from_slice::<Vec<Node>>(&b).ok());
                if let (Some(nodes), Ok(mut v)) = (got, view.lock()) {
                    v.learn(&n, nodes, Instant::now());
                }
            }
        }
        std::thread::sleep(EVERY);
    };
    std::thread::Builder::new().name("meshview".into()).stack_size(128 * 1024).spawn(run).map(|_| ()).map_err(|e| format!("mesh view thread: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(last: u16, age_s: u64, neighbours: &[u16]) -> Node {
        Node {
            address: format!("200::{last:x}"),
            name: format!("n{last}"),
            version: "0.1.0".into(),
            board: "rpi3".into(),
            slot: "a".into(),
            metrics_port: Some(9100),
            neighbours: neighbours.iter().map(|n| format!("200::{n:x}")).collect(),
            link_bytes: vec![],
            uptime_s: 60,
            alerts: vec![],
            age_s,
            gateway: false,
        }
    }

    #[test]
    fn only_overlay_addresses_enter_the_view() {
        let mut view = View::default();
        let named = |address: &str| Node { address: address.into(), ..node(1, 0, &[]) };
        let bad = ["::1", "::ffff:169.254.169.254", "fe80::1", "fd00::1", "2001:db8::1", "300::1", "not an address"];
        view.learn("200::99", bad.iter().map(|a| named(a)).collect(), Instant::now());
        assert!(view.known.is_empty(), "{:?}", view.known.keys());
        let mut pointing = node(2, 0, &[]);
        pointing.neighbours = vec!["::1".into()];
        let mut port0 = node(3, 0, &[]);
        port0.metrics_port = Some(0);
        view.learn("200::99", vec![pointing, port0, named("fc12:0::01"), node(4, 0, &[5])], Instant::now());
        assert_eq!(view.known.keys().collect::<Vec<_>>(), ["200::4", "fc12::1"]);
        // Known however it is spelt; this node's neighbours are known before their word arrives.
        view.set_me(node(1, 0, &[9]));
        let knows = |a: &str| view.knows(&a.parse().unwrap());
        assert!(knows("fc12::0:1") && knows("200::4") && knows("200::9"));
        assert!(!knows("200::5") && !knows("::1"));
    }

    #[test]
    fn hops_follow_the_neighbour_lists() {
        // 1 - 2 - 3 - 4, and 5 known but unlinked.
        let nodes = [node(1, 0, &[2]), node(2, 0, &[1, 3]), node(3, 0, &[2, 4]), node(4, 0, &[3]), node(5, 0, &[])];
        let h = hops(&nodes, "200::1");
        assert_eq!((h["200::1"], h["200::3"], h["200::4"], h.get("200::5")), (0, 2, 3, None));
        let mut gw = nodes.to_vec();
        gw[2].gateway = true;
        gw[3].gateway = true;
        gw[4].gateway = true;
        let c = crate::gateway::candidates(&gw);
        let got: Vec<_> = c.iter().map(|c| (c.address.to_string(), c.hops)).collect();
        assert_eq!(got, [("200::3".to_string(), Some(2)), ("200::4".into(), Some(3)), ("200::5".into(), None)]);
    }

    #[test]
    fn the_freshest_word_on_each_node_wins_and_old_words_expire() {
        let now = Instant::now() + Duration::from_secs(3600);
        let mut v = View::default();
        v.set_me(node(1, 0, &[2]));
        v.learn("200::2", vec![node(2, 0, &[1, 3]), node(3, 40, &[2])], now);
        // Another neighbour heard of 3 more recently, with other neighbours; and of 2 earlier.
        v.learn("200::3", vec![node(3, 10, &[2, 4]), node(2, 30, &[])], now);
        let got = v.nodes(now);
        assert_eq!(got.iter().map(|n| n.name.as_str()).collect::<Vec<_>>(), ["n1", "n2", "n3"]);
        assert_eq!(got[1].neighbours, ["200::1", "200::3"]);
        assert_eq!((got[2].neighbours.len(), got[2].age_s), (2, 10));
        // Ten minutes without a word: gone; a word that old is not taken.
        let later = now + MAX_AGE;
        v.learn("200::2", vec![node(5, MAX_AGE.as_secs(), &[])], later);
        assert_eq!(v.nodes(later).len(), 1);
    }

    #[test]
    fn what_a_neighbour_says_is_bounded_and_checked() {
        let now = Instant::now() + Duration::from_secs(3600);
        let mut v = View::default();
        v.set_me(node(1, 0, &[]));
        // It cannot speak for this node, nor pass off junk.
        let mut bad = node(9, 0, &[]);
        bad.address = "not an address".into();
        let mut long = node(10, 0, &[]);
        long.name = "x".repeat(500);
        v.learn("200::2", vec![node(1, 0, &[7]), bad, long], now);
        assert_eq!(v.nodes(now), [node(1, 0, &[])]);
        // A flood keeps the view at MAX_NODES, the freshest kept.
        v.learn("200::2", (2..3000).map(|i| node(i, (i % 500).into(), &[])).collect(), now);
        let got = v.nodes(now);
        assert_eq!(got.len(), MAX_NODES);
        assert!(got.iter().all(|n| n.age_s < 500));
    }

    #[test]
    fn a_flooding_neighbour_pushes_out_its_own_inventions() {
        let now = Instant::now() + Duration::from_secs(3600);
        let mut v = View::default();
        v.set_me(node(1, 0, &[2, 3, 9]));
        // Two honest neighbours tell of the same 300 real nodes (older words than the flood's).
        let real: Vec<Node> = (10..310).map(|i| node(i, 60, &[])).collect();
        v.learn("200::2", real.clone(), now);
        v.learn("200::3", real.clone(), now);
        // The third invents 2,000 nodes, all said this very second.
        v.learn("200::9", (0x1000..0x1000 + 2000).map(|i| node(i, 0, &[])).collect(), now);
        let got = v.nodes(now);
        assert_eq!(got.len(), MAX_NODES);
        assert!(real.iter().all(|r| got.iter().any(|n| n.address == r.address)), "a real node was pushed out");
        // A node only one honest neighbour tells of stays too: the flooder's go first.
        v.learn("200::2", vec![node(5000, 30, &[])], now);
        v.learn("200::9", (0x3000..0x3000 + 100).map(|i| node(i, 0, &[])).collect(), now);
        assert!(v.nodes(now).iter().any(|n| n.address == "200::1388"));
    }

    #[test]
    fn service_discovery_lists_every_node_that_serves_metrics() {
        let mut quiet = node(3, 0, &[]);
        quiet.metrics_port = None;
        let sd = service_discovery(&[node(1, 0, &[]), node(2, 5, &[]), quiet]);
        assert_eq!(
            sd,
            serde_json::json!([
                {"targets": ["[200::1]:9100"], "labels": {"meshos_node": "n1", "meshos_board": "rpi3", "meshos_version": "0.1.0"}},
                {"targets": ["[200::2]:9100"], "labels": {"meshos_node": "n2", "meshos_board": "rpi3", "meshos_version": "0.1.0"}},
            ])
        );
    }
}
