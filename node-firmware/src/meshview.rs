//! The mesh as this node knows it, for monitoring and for choosing gateways: every node it has
//! heard of, with its overlay neighbours. Each node serves its view at `/mesh.json` and reads
//! its overlay neighbours' views every [`EVERY`]. Every entry is a record its node signed with
//! the key its address comes from (crate::record), so a neighbour can pass words on but not
//! write them: of each node the view keeps the highest sequence number it has checked. A node
//! whose latest word is [`MAX_AGE`] old is dropped (its age counted from when this node first
//! heard that word, or earlier if the relay says so: nodes have no clocks they agree on), and
//! the view never holds more than [`MAX_NODES`]: when full, it drops first what only one
//! neighbour vouches for, from the neighbour that alone vouches for the most, so one neighbour
//! flooding the view with nodes of its own keys pushes out its own inventions, not the nodes
//! others vouch for too. `/mesh.json` serves the best-vouched entries first and always fits in
//! what a neighbour reads; `/sd.json` gives the same nodes as Prometheus HTTP service discovery,
//! so a Prometheus that reaches one node finds them all.

pub use meshos_common::node_record::Node;
use meshos_common::node_record::{Entry, Refused};
use std::collections::BTreeMap;
use std::net::Ipv6Addr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub const EVERY: Duration = Duration::from_secs(30);
pub const MAX_AGE: Duration = Duration::from_secs(600);
pub const MAX_NODES: usize = 1024;
/// A neighbour's `/mesh.json` larger than this is not read, and this node's is never larger.
pub const MAX_BODY: usize = 1 << 20;

/// A node's latest checked record.
#[derive(Debug)]
struct Held {
    node: Node,
    entry: Entry,
    /// When the node said it (estimated: when first heard, less the age the relay gave).
    said: Instant,
    /// The neighbours that passed it on (at most [`MAX_TOLD_BY`]).
    told: Vec<String>,
}

#[derive(Debug, Default)]
pub struct View {
    me: Option<Held>,
    known: BTreeMap<String, Held>,
    /// Records each neighbour passed on that failed their check (for metrics).
    refused: BTreeMap<String, u64>,
    /// The last sequence number of nodes dropped from the view (full, or silent too long), so
    /// that a relay cannot bring the same word back as new: at most [`MAX_NODES`], oldest
    /// forgotten first.
    dropped: BTreeMap<String, u64>,
    dropped_order: std::collections::VecDeque<String>,
}

/// Neighbours remembered per node as having told of it.
const MAX_TOLD_BY: usize = 4;

impl View {
    /// This node's own record, signed.
    pub fn set_me(&mut self, entry: Entry) {
        let Ok(node) = meshos_common::node_record::read(&entry) else { return };
        self.known.remove(&node.address);
        self.refused.retain(|n, _| node.neighbours.contains(n));
        self.me = Some(Held { node, entry, said: Instant::now(), told: Vec::new() });
    }

    /// Takes from neighbour `from`'s view the records that check out and are newer than what
    /// this node holds, and notes that `from` told of each node.
    pub fn learn(&mut self, from: &str, entries: Vec<Entry>, now: Instant) {
        let me = self.me.as_ref().map(|m| m.node.address.clone());
        for e in entries {
            let age = Duration::from_secs(e.age_s);
            let Some(said) = now.checked_sub(age).filter(|_| age < MAX_AGE) else { continue };
            let mut node = match meshos_common::node_record::read(&e) {
                Ok(n) if n.plausible() => n,
                Ok(_) => {
                    self.refuse(from, Refused::Malformed("implausible".into()));
                    continue;
                }
                Err(why) => {
                    self.refuse(from, why);
                    continue;
                }
            };
            // One spelling of each address, so that a node is one entry however it is written.
            let address = node.address.parse::<Ipv6Addr>().expect("plausible").to_string();
            if Some(&address) == me.as_ref() {
                continue;
            }
            if self.dropped.get(&address).is_some_and(|&seq| seq >= node.seq) {
                continue;
            }
            match self.known.get_mut(&address) {
                // The word held: only who passed it on is news.
                Some(h) if h.node.seq == node.seq && h.entry.sig == e.sig && h.entry.record.get() == e.record.get() => {
                    if !h.told.iter().any(|t| t == from) && h.told.len() < MAX_TOLD_BY {
                        h.told.push(from.to_string());
                    }
                    continue;
                }
                // Older, or another word under the same number: the held word stands.
                Some(h) if h.node.seq >= node.seq => continue,
                _ => {}
            }
            if let Err(why) = meshos_common::node_record::verify(&e, &node) {
                self.refuse(from, why);
                continue;
            }
            node.address = address.clone();
            let entry = Entry { age_s: 0, ..e };
            let told = self.known.remove(&address).map(|h| h.told).unwrap_or_default();
            let mut held = Held { node, entry, said, told };
            if !held.told.iter().any(|t| t == from) && held.told.len() < MAX_TOLD_BY {
                held.told.push(from.to_string());
            }
            self.known.insert(address, held);
        }
        let silent: Vec<String> = self.known.iter().filter(|(_, h)| now.duration_since(h.said) >= MAX_AGE).map(|(a, _)| a.clone()).collect();
        for address in silent {
            self.drop_node(address);
        }
        while self.known.len() > MAX_NODES - 1 {
            let excess = self.known.len() - (MAX_NODES - 1);
            for address in self.to_drop(excess) {
                self.drop_node(address);
            }
        }
    }

    fn drop_node(&mut self, address: String) {
        let Some(h) = self.known.remove(&address) else { return };
        if self.dropped.insert(address.clone(), h.node.seq).is_none() {
            self.dropped_order.push_back(address);
        }
        while self.dropped_order.len() > MAX_NODES {
            if let Some(old) = self.dropped_order.pop_front() {
                self.dropped.remove(&old);
            }
        }
    }

    /// The nodes this node reaches through the neighbour lists of the view, from its own.
    fn linked(&self) -> std::collections::BTreeSet<&str> {
        let Some(me) = &self.me else { return Default::default() };
        let mut seen = std::collections::BTreeSet::from([me.node.address.as_str()]);
        let mut queue = vec![&me.node];
        while let Some(at) = queue.pop() {
            for n in &at.neighbours {
                if let Some((a, h)) = self.known.get_key_value(n.as_str()) {
                    if seen.insert(a.as_str()) {
                        queue.push(&h.node);
                    }
                }
            }
        }
        seen
    }

    fn refuse(&mut self, from: &str, _why: Refused) {
        *self.refused.entry(from.to_string()).or_default() += 1;
    }

    /// Records each neighbour passed on that did not check out, since this node last started.
    pub fn refused(&self) -> &BTreeMap<String, u64> {
        &self.refused
    }

    /// Up to `n` entries to drop from a full view. Of the nodes no neighbour list links to this
    /// node (a real node is some node's neighbour; an invented one is not, unless its inventor
    /// links it to itself), or of all when every one is linked: those of the neighbour that
    /// alone told of the most of them, the oldest first (once it no longer alone tells of the
    /// most, the next call picks again); when every one was told of by two or more, the oldest.
    fn to_drop(&self, n: usize) -> Vec<String> {
        let linked = self.linked();
        let unlinked: Vec<(&String, &Held)> = self.known.iter().filter(|(a, _)| !linked.contains(a.as_str())).collect();
        let pool = if unlinked.is_empty() { self.known.iter().collect() } else { unlinked };
        let mut sole: BTreeMap<&str, usize> = BTreeMap::new();
        for (_, h) in &pool {
            if let [only] = h.told.as_slice() {
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
        let mut candidates: Vec<(&String, Instant)> =
            pool.into_iter().filter(|(_, h)| flooder.is_none_or(|(o, _)| matches!(h.told.as_slice(), [t] if t == o))).map(|(a, h)| (a, h.said)).collect();
        candidates.sort_by_key(|(_, said)| *said);
        candidates.into_iter().take(n.max(1)).map(|(a, _)| a.clone()).collect()
    }

    /// Whether `address` is a node of this view or one of this node's neighbours.
    pub fn knows(&self, address: &Ipv6Addr) -> bool {
        let neighbour = |m: &Held| m.node.neighbours.iter().any(|n| n.parse::<Ipv6Addr>().ok().as_ref() == Some(address));
        self.known.contains_key(&address.to_string()) || self.me.as_ref().is_some_and(neighbour)
    }

    /// How many nodes [`View::nodes`] gives, without copying them.
    pub fn count(&self, now: Instant) -> usize {
        self.me.iter().count() + self.known.values().filter(|h| now.duration_since(h.said) < MAX_AGE).count()
    }

    /// This node first, then every other it knows.
    pub fn nodes(&self, now: Instant) -> Vec<Node> {
        self.held(now).into_iter().map(|h| h.node.clone()).collect()
    }

    /// This node first, then the others, best vouched for first (told by more neighbours, then
    /// heard more recently).
    fn held(&self, now: Instant) -> Vec<&Held> {
        let mut others: Vec<&Held> = self.known.values().filter(|h| now.duration_since(h.said) < MAX_AGE).collect();
        others.sort_by_key(|h| (std::cmp::Reverse(h.told.len()), std::cmp::Reverse(h.said)));
        self.me.iter().chain(others).collect()
    }

    /// The releases that nodes of this view say failed their trial on them (their signed
    /// records' `failed`), each with who says so and through which of this node's neighbours
    /// each sayer is reached. Only nodes the neighbour lists link to this node count: a node
    /// one neighbour invents, however many, is reached through that neighbour alone.
    pub fn trial_failures(&self, now: Instant) -> BTreeMap<String, TrialReports> {
        let nodes = self.held(now);
        let Some(me) = nodes.first().filter(|_| self.me.is_some()) else { return BTreeMap::new() };
        let through = first_hops(&nodes.iter().map(|h| &h.node).collect::<Vec<_>>(), &me.node.address);
        let mut out: BTreeMap<String, TrialReports> = BTreeMap::new();
        for h in &nodes[1..] {
            let Some(hop) = through.get(h.node.address.as_str()) else { continue };
            for f in &h.node.failed {
                let r = out.entry(f.manifest.clone()).or_default();
                r.by.push((h.node.name.clone(), f.kind.clone()));
                r.through.insert(hop.to_string());
            }
        }
        out
    }

    /// `/mesh.json`: the signed entries with their ages, as many as fit in [`MAX_BODY`], but for
    /// those `asker` (a neighbour's overlay address) told this node of: echoed back, they would
    /// count as another neighbour's word for them.
    pub fn page(&self, now: Instant, asker: Option<&str>) -> String {
        let mut page = String::from("[");
        for h in self.held(now).into_iter().filter(|h| asker.is_none_or(|a| !h.told.iter().any(|t| t == a))) {
            let entry = Entry { age_s: now.duration_since(h.said).as_secs(), ..h.entry.clone() };
            let text = serde_json::to_string(&entry).expect("an entry serialises");
            // Room for the comma, the closing bracket and the newline.
            if page.len() + text.len() + 3 > MAX_BODY {
                break;
            }
            if page.len() > 1 {
                page.push(',');
            }
            page.push_str(&text);
        }
        page + "]\n"
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

/// Who says a release failed its trial (name and kind of failure, each), and the neighbours of
/// the asking node through which they are reached.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct TrialReports {
    pub by: Vec<(String, String)>,
    pub through: std::collections::BTreeSet<String>,
}

/// For every node `from` reaches through the neighbour lists: the neighbour of `from` on its
/// shortest path (the first found, by the lists' order), a neighbour being its own.
fn first_hops<'a>(nodes: &[&'a Node], from: &str) -> BTreeMap<&'a str, &'a str> {
    let links: BTreeMap<&str, &'a [String]> = nodes.iter().map(|n| (n.address.as_str(), n.neighbours.as_slice())).collect();
    let mut first: BTreeMap<&'a str, &'a str> = BTreeMap::new();
    let mut queue = std::collections::VecDeque::new();
    for n in links.get(from).copied().unwrap_or_default() {
        if n != from && !first.contains_key(n.as_str()) {
            first.insert(n.as_str(), n.as_str());
            queue.push_back(n.as_str());
        }
    }
    while let Some(at) = queue.pop_front() {
        let hop = first[at];
        for next in links.get(at).copied().unwrap_or_default() {
            if next != from && !first.contains_key(next.as_str()) {
                first.insert(next.as_str(), hop);
                queue.push_back(next.as_str());
            }
        }
    }
    first
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
/// neighbours included), and `signer` signs it.
pub fn spawn(view: Arc<Mutex<View>>, mut signer: meshos_common::node_record::Signer, me: impl Fn() -> Option<Node> + Send + 'static) -> Result<(), String> {
    let http = crate::chunk_fetch::agent();
    let run = move || loop {
        if let Some(me) = me() {
            let neighbours = me.neighbours.clone();
            let port = me.metrics_port;
            let entry = signer.sign(me);
            if let Ok(mut v) = view.lock() {
                v.set_me(entry);
            }
            for n in neighbours {
                let Some(port) = port else { break };
                let url = format!("http://[{n}]:{port}/mesh.json");
                let got = crate::chunk_fetch::get_within(&http, &url, MAX_BODY as u64, Duration::from_secs(5))
                    .ok()
                    .and_then(|b| serde_json::from_slice::<Vec<Entry>>(&b).ok());
                if let (Some(entries), Ok(mut v)) = (got, view.lock()) {
                    v.learn(&n, entries, Instant::now());
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
    use meshos_common::node_record::{Secret, Signer};

    /// Test node `i`: its key, and so its address.
    fn key(i: u16) -> Signer {
        let mut seed = [0x5au8; 32];
        seed[..2].copy_from_slice(&i.to_le_bytes());
        Signer::starting(Secret::Yggdrasil(seed), 1)
    }

    fn address(i: u16) -> String {
        key(i).yggdrasil_address()
    }

    fn node(i: u16, neighbours: &[u16]) -> Node {
        Node {
            address: address(i),
            name: format!("n{i}"),
            version: "0.1.0".into(),
            board: "rpi3".into(),
            slot: "a".into(),
            metrics_port: Some(9100),
            neighbours: neighbours.iter().map(|n| address(*n)).collect(),
            uptime_s: 60,
            ..Default::default()
        }
    }

    /// Node `i`'s record, signed, as a relay `age_s` late gives it.
    fn said(i: u16, age_s: u64, neighbours: &[u16]) -> Entry {
        Entry { age_s, ..key(i).sign(node(i, neighbours)) }
    }

    fn names(v: &View, now: Instant) -> Vec<String> {
        v.nodes(now).into_iter().map(|n| n.name).collect()
    }

    #[test]
    fn only_signed_overlay_records_enter_the_view() {
        let now = Instant::now() + Duration::from_secs(3600);
        let mut view = View::default();
        view.set_me(said(1, 0, &[9]));
        // A record pointing at ::1, one with port 0, and a neighbour's record for another
        // node's address under its own key: none taken, each counted against the neighbour.
        let pointing = Node { neighbours: vec!["::1".into()], ..node(2, &[]) };
        let port0 = Node { metrics_port: Some(0), ..node(3, &[]) };
        let forged = Node { address: address(4), ..node(5, &[]) };
        let bad = [key(2).sign(pointing), key(3).sign(port0), key(5).sign(forged)];
        view.learn("200::9", bad.to_vec(), now);
        assert_eq!(names(&view, now), ["n1"]);
        assert_eq!(view.refused().get("200::9"), Some(&3));
        // A real record with one word changed on the way: refused too.
        let mut e = said(6, 0, &[]);
        e.record = serde_json::value::RawValue::from_string(e.record.get().replace("\"gateway\":false", "\"gateway\":true")).unwrap();
        view.learn("200::9", vec![e, said(7, 0, &[])], now);
        assert_eq!(names(&view, now), ["n1", "n7"]);
        // Known however it is spelt; this node's neighbours are known before their word arrives.
        let knows = |a: &str| view.knows(&a.parse().unwrap());
        assert!(knows(&address(7)) && knows(&address(9)));
        assert!(!knows(&address(6)) && !knows("::1"));
        assert_eq!(service_discovery(&view.nodes(now)).as_array().unwrap().len(), 2);
    }

    #[test]
    fn hops_follow_the_neighbour_lists() {
        // 1 - 2 - 3 - 4, and 5 known but unlinked.
        let nodes = [node(1, &[2]), node(2, &[1, 3]), node(3, &[2, 4]), node(4, &[3]), node(5, &[])];
        let h = hops(&nodes, &address(1));
        assert_eq!((h[&address(1)], h[&address(3)], h[&address(4)], h.get(&address(5))), (0, 2, 3, None));
        let mut gw = nodes.to_vec();
        gw[2].gateway = true;
        gw[3].gateway = true;
        gw[4].gateway = true;
        let c = crate::gateway::candidates(&gw, &[]);
        let got: Vec<_> = c.iter().map(|c| (c.address.to_string(), c.hops)).collect();
        let mut want = vec![(address(3), Some(2)), (address(4), Some(3)), (address(5), None)];
        want.sort_by_key(|(a, h)| (h.unwrap_or(usize::MAX), a.parse::<Ipv6Addr>().unwrap()));
        assert_eq!(got, want);
        // Pinned gateways: only those.
        let trusted = [address(4).parse().unwrap()];
        assert_eq!(crate::gateway::candidates(&gw, &trusted).iter().map(|c| c.address).collect::<Vec<_>>(), trusted);
    }

    #[test]
    fn the_newest_word_on_each_node_wins_and_old_words_expire() {
        let now = Instant::now() + Duration::from_secs(3600);
        let mut v = View::default();
        v.set_me(said(1, 0, &[2]));
        let mut three = key(3);
        let older = three.sign(node(3, &[2]));
        let newer = three.sign(node(3, &[2, 4]));
        v.learn(&address(2), vec![said(2, 0, &[1, 3]), Entry { age_s: 40, ..newer.clone() }], now);
        // Another neighbour passes on 3's older word, as if just said: the newer stays.
        v.learn(&address(4), vec![Entry { age_s: 0, ..older }], now);
        let got = v.nodes(now);
        assert_eq!(got.iter().map(|n| n.name.as_str()).collect::<Vec<_>>(), ["n1", "n2", "n3"]);
        assert_eq!(got[2].neighbours.len(), 2);
        // Its age is counted from when it was first heard: passing it on again later as
        // fresh does not keep it.
        v.learn(&address(2), vec![Entry { age_s: 0, ..newer }], now + MAX_AGE - Duration::from_secs(39));
        assert_eq!(v.nodes(now + MAX_AGE - Duration::from_secs(39)).len(), 2);
        // A word that old is not taken.
        let later = now + MAX_AGE;
        v.learn(&address(2), vec![said(5, MAX_AGE.as_secs(), &[])], later);
        assert_eq!(v.nodes(later).len(), 1);
    }

    #[test]
    fn what_a_neighbour_says_is_bounded_and_checked() {
        let now = Instant::now() + Duration::from_secs(3600);
        let mut v = View::default();
        v.set_me(said(1, 0, &[]));
        // It cannot speak for this node, not even with this node's own older word.
        v.learn(&address(2), vec![said(1, 0, &[7])], now);
        assert_eq!(names(&v, now), ["n1"]);
        assert!(v.nodes(now)[0].neighbours.is_empty());
        // A flood keeps the view at MAX_NODES, the freshest kept.
        v.learn(&address(2), (2..3000).map(|i| said(i, (i % 500).into(), &[])).collect(), now);
        let got = v.nodes(now);
        assert_eq!((got.len(), v.count(now)), (MAX_NODES, MAX_NODES));
        let page = v.page(now, None);
        assert!(page.len() <= MAX_BODY);
        let entries: Vec<Entry> = serde_json::from_str(&page).unwrap();
        assert!(entries[1..].iter().all(|e| e.age_s < 500));
    }

    #[test]
    fn a_flooding_neighbour_pushes_out_its_own_inventions() {
        let now = Instant::now() + Duration::from_secs(3600);
        let mut v = View::default();
        v.set_me(said(1, 0, &[2, 3, 9]));
        // Two honest neighbours tell of the same 300 real nodes (older words than the flood's).
        let real: Vec<Entry> = (10..310).map(|i| said(i, 60, &[])).collect();
        v.learn("200::2", real.clone(), now);
        v.learn("200::3", real.clone(), now);
        // The third invents 2,000 nodes, all signed by keys of its own, said this very second.
        v.learn("200::9", (0x1000..0x1000 + 2000).map(|i| said(i, 0, &[])).collect(), now);
        let got: Vec<String> = v.nodes(now).into_iter().map(|n| n.address).collect();
        assert_eq!(got.len(), MAX_NODES);
        assert!((10..310).all(|i| got.contains(&address(i))), "a real node was pushed out");
        // A node only one honest neighbour tells of stays too: the flooder's go first.
        v.learn("200::2", vec![said(5000, 30, &[])], now);
        v.learn("200::9", (0x3000..0x3000 + 100).map(|i| said(i, 0, &[])).collect(), now);
        assert!(v.nodes(now).iter().any(|n| n.address == address(5000)));
        // The best vouched for come first in what this node serves.
        let page: Vec<Entry> = serde_json::from_str(&v.page(now, None)).unwrap();
        let first = meshos_common::node_record::read(&page[1]).unwrap();
        assert!((10..310).any(|i| first.address == address(i)));
        // Not echoed back to the neighbour that told of them: echoes would count as another
        // neighbour's word for the flood.
        let to_flooder: Vec<Entry> = serde_json::from_str(&v.page(now, Some("200::9"))).unwrap();
        let flood: Vec<String> = (0x1000..0x1000 + 2000).chain(0x3000..0x3000 + 100).filter(|&i| i != 5000).map(address).collect();
        assert!(to_flooder.iter().all(|e| !flood.contains(&meshos_common::node_record::read(e).unwrap().address)));
        assert!(to_flooder.len() > 300);
    }

    /// Node `i`'s record saying `manifests` failed their trial on it.
    fn failed(i: u16, neighbours: &[u16], manifests: &[&str]) -> Entry {
        let failed = manifests.iter().map(|m| meshos_common::node_record::FailedTrial { manifest: m.repeat(64), kind: "router_down".into() }).collect();
        key(i).sign(Node { failed, ..node(i, neighbours) })
    }

    #[test]
    fn trial_failures_count_by_the_neighbour_they_come_through() {
        let now = Instant::now() + Duration::from_secs(3600);
        let mut v = View::default();
        // 1 has neighbours 2 and 3; 4 lies behind 2, 5 behind 3; 6 and 7 behind 4 (a liar's
        // inventions, linked to it); 8 is linked to no one.
        v.set_me(said(1, 0, &[2, 3]));
        let records = vec![
            said(2, 0, &[1, 4]),
            said(3, 0, &[1, 5]),
            failed(4, &[2, 6, 7], &["a", "b"]),
            failed(5, &[3], &["a"]),
            failed(6, &[4], &["b", "c"]),
            failed(7, &[4], &["b"]),
            failed(8, &[], &["d"]),
        ];
        v.learn(&address(2), records, now);
        let r = v.trial_failures(now);
        let through = |m: &str| r[&m.repeat(64)].through.iter().cloned().collect::<Vec<_>>();
        // "a": from 4 (through 2) and from 5 (through 3).
        assert_eq!(through("a").len(), 2);
        // "b" three times, all behind neighbour 2: one way in, however many say it.
        assert_eq!((r[&"b".repeat(64)].by.len(), through("b")), (3, vec![address(2)]));
        assert_eq!(through("c"), vec![address(2)]);
        // A node no neighbour list links to counts for nothing.
        assert!(!r.contains_key(&"d".repeat(64)));
    }

    #[test]
    fn a_node_with_one_neighbour_keeps_the_real_mesh_under_a_flood() {
        let now = Instant::now() + Duration::from_secs(3600);
        let mut v = View::default();
        v.set_me(said(1, 0, &[2]));
        // A line 1 - 2 - … - 20 behind the one neighbour, the far end's words older, and a
        // flood of fresher inventions passed on by the same neighbour.
        let line: Vec<Entry> = (2..=20).map(|i| said(i, 25 * u64::from(i), &[i - 1, i + 1])).collect();
        let fakes: Vec<Entry> = (0x1000..0x1000 + 1100).map(|i| said(i, 0, &[])).collect();
        let real = |v: &View| (2..=20).filter(|&i| v.knows(&address(i).parse().unwrap())).count();
        v.learn("200::2", [line.clone(), fakes.clone()].concat(), now);
        assert_eq!((real(&v), v.nodes(now).len()), (19, MAX_NODES));
        // Passed on again as if just said, the dropped inventions do not come back as new.
        let later = now + Duration::from_secs(30);
        v.learn("200::2", fakes.iter().map(|e| Entry { age_s: 0, ..e.clone() }).collect(), later);
        assert_eq!(real(&v), 19);
        let dropped_back = (0x1000..0x1000 + 1100).filter(|&i| v.knows(&address(i).parse().unwrap())).count();
        assert_eq!(dropped_back, MAX_NODES - 20);
    }

    #[test]
    fn the_page_fits_what_neighbours_read() {
        let now = Instant::now();
        let mut v = View::default();
        v.set_me(said(1, 0, &[]));
        // 1,000 nodes each saying all they may: 64 neighbours, 16 long alerts.
        let big = |i: u16| {
            let n = Node {
                neighbours: (0..64).map(|k| format!("200:{i:x}:{k:x}::1")).collect(),
                link_bytes: vec![u64::MAX; 64],
                alerts: vec!["x".repeat(200); 16],
                ..node(i, &[])
            };
            key(i).sign(n)
        };
        v.learn("200::2", (2..1000).map(big).collect(), now);
        assert!(v.nodes(now).len() > 900);
        let page = v.page(now, None);
        assert!(page.len() <= MAX_BODY && page.ends_with("]\n"), "{}", page.len());
        let entries: Vec<Entry> = serde_json::from_str(&page).unwrap();
        assert!(entries.len() > 100 && entries.len() < 1000, "{}", entries.len());
        // What a neighbour reads of it checks out.
        let mut other = View::default();
        other.set_me(said(5000, 0, &[]));
        other.learn("200::1", entries.clone(), now);
        assert_eq!(other.nodes(now).len(), entries.len() + 1);
        assert!(other.refused().is_empty());
    }

    #[test]
    fn service_discovery_lists_every_node_that_serves_metrics() {
        let quiet = Node { metrics_port: None, ..node(3, &[]) };
        let sd = service_discovery(&[node(1, &[]), node(2, &[]), quiet]);
        assert_eq!(
            sd,
            serde_json::json!([
                {"targets": [format!("[{}]:9100", address(1))], "labels": {"meshos_node": "n1", "meshos_board": "rpi3", "meshos_version": "0.1.0"}},
                {"targets": [format!("[{}]:9100", address(2))], "labels": {"meshos_node": "n2", "meshos_board": "rpi3", "meshos_version": "0.1.0"}},
            ])
        );
    }
}
