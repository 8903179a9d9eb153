//! Community access: the people on a node's Wi-Fi reach the internet through gateway nodes.
//!
//! A node with `gateway.offer` and an uplink (a wired DHCP network with a default route) is a
//! gateway. It checks its uplink every [`EVERY`] (a ping of the uplink's router), says in the
//! mesh view (crate::meshview) whether it offers, and hands each node that asks — `POST
//! /gateway/lease` on its metrics port, over the overlay, so the asker is known by its
//! key-derived address — an address in 100.64.0.0/10 and an IPv4 tunnel between their overlay
//! addresses (`ip6tnl` on a board; crate::machine makes it). It leases to the nodes of its own
//! mesh view (or of `gateway.allow`), not to any address of a global overlay. What comes out of
//! the tunnels may only leave by the uplink, masqueraded onto it, and only for the internet:
//! never for the uplink's own networks (its owner's router and LAN) but a ping of its router,
//! unless `gateway.allowLan`.
//!
//! Every other node (`gateway.use: auto`) takes a lease from the live gateway the fewest
//! overlay hops away (counted in the mesh view's links), checks it ([`check_lease`]: a lease
//! can route nothing but the tunnel's own addresses), and sends IPv4 from its access point
//! clients and itself into its tunnel, `gw0`, by policy routing, masqueraded onto its lease.
//! Every [`EVERY`] it checks that the tunnel passes traffic: bytes came out of it since the
//! last check, or else a ping of the gateway's uplink router through it is answered. It renews
//! its lease every [`RENEW`]. [`FAILURES`] failed checks in a row, a gateway that refuses or
//! stops offering, or no answer to renewals until the lease nears its end, and it takes the
//! next gateway. A busy tunnel is not given up because a ping waited behind its traffic, nor
//! for one renewal lost on a loaded path.
//!
//! Only IPv4 enters a tunnel: the overlay (IPv6), the radio links and the wired peering
//! (link-local IPv6) cannot. Traffic that has a route of its own (the access point's and
//! wired networks), the router's IPv4 peers, and replies to connections made to the node
//! (ssh, metrics, upgrades from a LAN) never use the tunnel either, so a broken gateway cannot
//! cut a node off from its operators.

use crate::command;
use crate::config::{Gateway as Settings, GatewayUse, Wired};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::{Ipv4Addr, Ipv6Addr, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub const EVERY: Duration = Duration::from_secs(5);
/// Failed checks in a row after which a gateway is given up.
pub const FAILURES: u32 = 2;
/// A client renews its lease this often; a gateway forgets a lease not renewed for [`LEASE`].
pub const RENEW: Duration = Duration::from_secs(30);
pub const LEASE: Duration = Duration::from_secs(120);
/// A new tunnel must pass traffic within this long (the overlay may first have to find the path
/// to a gateway it never talked to), else the next gateway is tried.
const FIRST_TRAFFIC: Duration = Duration::from_secs(20);
/// A lease request's whole exchange; the first one to a gateway may wait for its path.
const ASK_FOR: Duration = Duration::from_secs(15);
/// A gateway nearer than the one in use (by at least a hop) and live in the mesh view for this
/// long is moved to: nearer is better, but not at the first sight of it.
const NEARER_FOR: Duration = Duration::from_secs(60);
/// For this long after start, gateways whose distance the mesh view does not know yet wait.
const UNKNOWN_HOPS_FOR: Duration = Duration::from_secs(90);
/// A gateway given up is not tried again for this long (one that refused, for [`REFUSED_FOR`]).
const FAILED_FOR: Duration = Duration::from_secs(60);
const REFUSED_FOR: Duration = Duration::from_secs(300);
/// A gateway whose lease failed its check ([`check_lease`]) is not tried again for this long.
const BAD_LEASE_FOR: Duration = Duration::from_secs(3600);
/// Tunnels one gateway serves at once.
pub const MAX_LEASES: usize = 1000;
/// New leases (new tunnels) a gateway hands out at once, and how often one more becomes
/// possible: a whole mesh's nodes lease within minutes of a gateway's offer, while a neighbour
/// with a thousand keys of its own takes the pool only over hours (and the allow list stops it).
const NEW_LEASES_AT_ONCE: u32 = 64;
const NEW_LEASE_EVERY: Duration = Duration::from_secs(3);

/// The gateway's end of every tunnel, and the DNS server its clients ask.
pub const INNER: Ipv4Addr = Ipv4Addr::new(100, 64, 0, 1);
/// The client's tunnel, and the routing table and rule priorities it uses.
pub const TUNNEL: &str = "gw0";
const TABLE: &str = "4242";
const RULES: [u32; 4] = [1000, 1001, 1002, 1003];
/// Marks connections made to this node from outside the tunnel, so that their replies leave
/// by the main table ("MP").
const REPLY_MARK: &str = "0x4d50";
/// Tunnels on the gateway are named this and the lease's number.
const SERVED_PREFIX: &str = "gwc";
/// Large enough for a full Ethernet frame from a client, so nothing is fragmented on the way in.
const TUNNEL_MTU: &str = "1500";

/// What the gateway hands out.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Lease {
    /// The client's end of the tunnel.
    pub address: Ipv4Addr,
    /// The gateway's end, and its DNS server.
    pub gateway: Ipv4Addr,
    /// What the client pings through the tunnel to know that traffic passes: the router of
    /// the gateway's uplink.
    pub check: Ipv4Addr,
    pub lease_s: u64,
}

/// A refusal, in words the refused node shows in its status.
#[derive(Debug, Clone, PartialEq)]
pub enum Refusal {
    /// Not on the gateway's `gateway.allow` list (HTTP 403).
    NotAllowed(String),
    /// Not a gateway now, or full (HTTP 503).
    Unavailable(String),
}

/// What `meshd status` and the metrics show.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Report {
    /// This node's own offer (None: it does not offer).
    pub offer: Option<OfferReport>,
    /// The gateway this node uses now.
    pub using: Option<UsingReport>,
    /// Gateways that refused this node lately, with their reason.
    pub refused: Vec<RefusedReport>,
    /// Gateway changes since meshd started (the first choice included).
    pub switches: u64,
    /// Why this node uses no gateway, when it wants one.
    pub note: Option<String>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct OfferReport {
    /// The uplink interface (empty: none found).
    pub uplink: String,
    pub uplink_up: bool,
    pub clients: usize,
    /// Bytes through all tunnels, from and to the clients.
    pub rx_bytes: u64,
    pub tx_bytes: u64,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct UsingReport {
    pub name: String,
    pub address: String,
    /// Overlay hops to it in the mesh view (0: unknown).
    pub hops: usize,
    pub lease: String,
    pub healthy: bool,
    pub since_s: u64,
    /// Bytes through the tunnel, from and to the gateway.
    pub rx_bytes: u64,
    pub tx_bytes: u64,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct RefusedReport {
    pub name: String,
    pub address: String,
    pub reason: String,
}

/// A gateway as the mesh view tells of it.
#[derive(Debug, Clone, PartialEq)]
pub struct Candidate {
    pub address: Ipv6Addr,
    pub name: String,
    pub hops: Option<usize>,
}

/// The served side: leases by client, and the uplink as last checked.
#[derive(Debug, Default)]
pub struct Served {
    offering: bool,
    me: Option<Ipv6Addr>,
    allow: Vec<Ipv6Addr>,
    uplink: Option<Uplink>,
    /// Client overlay address → lease number and when it was last renewed.
    leases: BTreeMap<Ipv6Addr, (u32, Instant)>,
    /// New leases that may be handed out now ([`NEW_LEASES_AT_ONCE`] at most), as of when.
    new_leases: Option<(u32, Instant)>,
}

#[derive(Debug, Clone, PartialEq)]
struct Uplink {
    interface: String,
    router: Ipv4Addr,
    up: bool,
    /// The networks of the uplink's own addresses (the owner's LAN).
    networks: Vec<Net>,
}

/// An IPv4 network: its address and prefix length.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Net(pub Ipv4Addr, pub u8);

impl Net {
    pub fn contains(&self, a: Ipv4Addr) -> bool {
        let mask = mask(self.1);
        u32::from(a) & mask == u32::from(self.0) & mask
    }

    /// `10.1.2.3/24` (the network of an address) or `10.1.2.0` (a host).
    fn parse(text: &str) -> Option<Net> {
        let (a, len) = text.split_once('/').unwrap_or((text, "32"));
        let (a, len): (Ipv4Addr, u8) = (a.parse().ok()?, len.parse().ok().filter(|l| *l <= 32)?);
        Some(Net(Ipv4Addr::from(u32::from(a) & mask(len)), len))
    }
}

/// The netmask of a prefix length (0..=32), as a number.
fn mask(len: u8) -> u32 {
    u32::MAX.checked_shl(32 - u32::from(len.min(32))).unwrap_or(0)
}

impl std::fmt::Display for Net {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.0, self.1)
    }
}

/// Where tunnels' addresses come from: the shared address space (RFC 6598).
const LEASES: Net = Net(Ipv4Addr::new(100, 64, 0, 0), 10);

/// What a gateway's clients may not reach through its uplink: private, link-local and shared
/// networks (RFC 1918, 3927, 6598), besides the uplink's own.
const LAN: [Net; 5] = [
    Net(Ipv4Addr::new(10, 0, 0, 0), 8),
    Net(Ipv4Addr::new(172, 16, 0, 0), 12),
    Net(Ipv4Addr::new(192, 168, 0, 0), 16),
    Net(Ipv4Addr::new(169, 254, 0, 0), 16),
    LEASES,
];

/// The tunnel address of lease `n` (2 and up; 100.64.0.1 is the gateway's).
fn lease_address(n: u32) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(Ipv4Addr::new(100, 64, 0, 0)) + n)
}

impl Served {
    /// `POST /gateway/lease` from `client`, which this node's mesh view holds or not (`known`):
    /// the same lease again when it has one.
    pub fn lease(&mut self, client: Ipv6Addr, known: bool, now: Instant) -> Result<(Lease, Option<u32>), Refusal> {
        let (Some(router), true) = (self.uplink.as_ref().filter(|u| u.up).map(|u| u.router), self.offering) else {
            return Err(Refusal::Unavailable("this node offers no internet access now".into()));
        };
        if !is_node_address(&client) {
            return Err(Refusal::NotAllowed(format!("{client} is not a node's overlay address; leases are given to nodes, over the mesh")));
        }
        if !self.allow.is_empty() && !self.allow.contains(&client) {
            return Err(Refusal::NotAllowed(format!("{client} is not in this gateway's gateway.allow")));
        }
        let fresh = !self.leases.contains_key(&client);
        // A node of another mesh (the global overlay reaches any) gets nothing; one of this
        // mesh whose word has not reached this node yet asks again soon.
        if self.allow.is_empty() && fresh && !known {
            return Err(Refusal::Unavailable(format!("{client} is not in this gateway's mesh view (yet): it leases to the nodes of its own mesh")));
        }
        let n = match self.leases.get(&client) {
            Some((n, _)) => *n,
            None if self.leases.len() >= MAX_LEASES => return Err(Refusal::Unavailable(format!("this gateway serves {MAX_LEASES} nodes already"))),
            None => {
                self.take_new_lease(now)?;
                (2..).find(|n| !self.leases.values().any(|(m, _)| m == n)).expect("fewer than MAX_LEASES taken")
            }
        };
        self.leases.insert(client, (n, now));
        let lease = Lease { address: lease_address(n), gateway: INNER, check: router, lease_s: LEASE.as_secs() };
        Ok((lease, fresh.then_some(n)))
    }

    /// One of the new leases that may be handed out now, or how long until there is one.
    fn take_new_lease(&mut self, now: Instant) -> Result<(), Refusal> {
        let (left, since) = self.new_leases.unwrap_or((NEW_LEASES_AT_ONCE, now));
        let earned = (now.saturating_duration_since(since).as_secs() / NEW_LEASE_EVERY.as_secs()) as u32;
        let left = (left + earned).min(NEW_LEASES_AT_ONCE);
        // Time not yet turned into a lease is kept.
        let since = if left == NEW_LEASES_AT_ONCE { now } else { since + NEW_LEASE_EVERY * earned };
        if left == 0 {
            self.new_leases = Some((0, since));
            return Err(Refusal::Unavailable(format!("this gateway hands out at most one new lease every {} s now", NEW_LEASE_EVERY.as_secs())));
        }
        self.new_leases = Some((left - 1, since));
        Ok(())
    }

    /// Leases not renewed in time, removed.
    fn expire(&mut self, now: Instant) -> Vec<u32> {
        let old: Vec<Ipv6Addr> = self.leases.iter().filter(|(_, (_, t))| now.duration_since(*t) > LEASE).map(|(a, _)| *a).collect();
        old.iter().filter_map(|a| self.leases.remove(a)).map(|(n, _)| n).collect()
    }
}

/// A node's own overlay address: Yggdrasil's 200::/8 (its key's; the overlay checks that a
/// packet's source belongs to the key that sent it) or cjdns's fc00::/8. Not the 300::/8
/// prefixes nodes route to their Wi-Fi clients: a phone asks its node, not a gateway.
pub fn is_node_address(a: &Ipv6Addr) -> bool {
    matches!(a.octets()[0], 0x02 | 0xfc)
}

/// Gives a client its lease and, the first time, its tunnel. Called by the HTTP face.
pub fn serve_lease(served: &Mutex<Served>, client: Ipv6Addr, known: bool) -> Result<Lease, Refusal> {
    let (lease, new, me) = {
        let mut s = served.lock().map_err(|_| Refusal::Unavailable("gateway state poisoned".into()))?;
        let (lease, new) = s.lease(client, known, Instant::now())?;
        (lease, new, s.me)
    };
    if let (Some(n), Some(me)) = (new, me) {
        if let Err(e) = open_served_tunnel(n, me, client, lease.address) {
            logln!("meshd: gateway: tunnel to {client}: {e}");
            if let Ok(mut s) = served.lock() {
                s.leases.remove(&client);
            }
            return Err(Refusal::Unavailable(format!("the gateway could not make the tunnel: {e}")));
        }
        logln!("meshd: gateway: {client} leased {} through {SERVED_PREFIX}{n}", lease.address);
    }
    Ok(lease)
}

fn open_served_tunnel(n: u32, me: Ipv6Addr, client: Ipv6Addr, address: Ipv4Addr) -> Result<(), String> {
    let name = format!("{SERVED_PREFIX}{n}");
    let _ = command::run("ip", &["link", "del", &name]);
    crate::machine::current().add_tunnel(&name, me, client, address)?;
    command::run("ip", &["link", "set", &name, "mtu", TUNNEL_MTU, "up"])?;
    command::run("ip", &["addr", "add", &INNER.to_string(), "peer", &format!("{address}/32"), "dev", &name])?;
    // Strict reverse path: a client can only send from its own lease.
    sysctl(&format!("net/ipv4/conf/{name}/rp_filter"), "1")
}

/// Writes a kernel setting under /proc/sys (`net/ipv4/ip_forward`); the error names the file.
pub fn sysctl(key: &str, value: &str) -> Result<(), String> {
    let path = Path::new("/proc/sys").join(key);
    std::fs::write(&path, value).map_err(|e| format!("{}: {e}", path.display()))
}

/// What the agent needs from the rest of meshd.
pub struct Agent {
    pub settings: Settings,
    pub wired: Wired,
    /// The router's IPv4 peers (`tls://192.0.2.1:443`), which must never enter the tunnel.
    pub peers: Vec<String>,
    pub me: Ipv6Addr,
    pub port: u16,
    pub run_dir: PathBuf,
    pub served: Arc<Mutex<Served>>,
    pub report: Arc<Mutex<Report>>,
    /// The gateways the mesh view knows, nearest first.
    pub candidates: Box<dyn Fn() -> Vec<Candidate> + Send>,
}

/// Where the node's dnsmasq instances (crate::access_point's, and the gateway's DNS) keep
/// their leases and read the name servers to forward to: theirs, as they run as nobody.
pub fn dns_dir(run_dir: &Path) -> PathBuf {
    run_dir.join("dns")
}

/// The name servers dnsmasq forwards to, written for the node's role: the gateway's through the
/// tunnel, a gateway's own uplink's, or none.
pub fn upstream_path(run_dir: &Path) -> PathBuf {
    dns_dir(run_dir).join("resolv.upstream")
}

/// Makes [`dns_dir`], dnsmasq's once it drops to nobody; the run directory above it becomes
/// passable (not listable) for that. The files there that hold secrets are the owner's alone.
pub fn prepare_dns_dir(run_dir: &Path) -> Result<(), String> {
    use std::os::unix::fs::PermissionsExt;
    let dir = dns_dir(run_dir);
    let err = |p: &Path, e: std::io::Error| format!("{}: {e}", p.display());
    std::fs::create_dir_all(&dir).map_err(|e| err(&dir, e))?;
    std::fs::set_permissions(run_dir, std::fs::Permissions::from_mode(0o711)).map_err(|e| err(run_dir, e))?;
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).map_err(|e| err(&dir, e))?;
    std::os::unix::fs::chown(&dir, Some(NOBODY), Some(NOBODY)).map_err(|e| err(&dir, e))?;
    let upstream = upstream_path(run_dir);
    if !upstream.exists() {
        crate::durable::write(&upstream, b"", 0o644).map_err(|e| err(&upstream, e))?;
    }
    Ok(())
}

/// nobody and nogroup, as the image's /etc/passwd and /etc/group give them.
const NOBODY: u32 = 65534;

/// A gateway's DNS server for the nodes it serves, on its end of their tunnels ([`INNER`]),
/// forwarding to the name servers of its uplink.
pub fn dns_service(run_dir: &Path) -> Result<crate::supervisor::Service, String> {
    prepare_dns_dir(run_dir)?;
    let conf = run_dir.join("dnsmasq-gateway.conf");
    let text = format!(
        "# Written by meshd; changes here are lost.\nlisten-address={INNER}\nbind-dynamic\nno-hosts\nresolv-file={}\npid-file=\nuser=nobody\ngroup=nogroup\nlog-facility=-\n",
        upstream_path(run_dir).display()
    );
    crate::durable::write(&conf, text.as_bytes(), 0o644).map_err(|e| format!("{}: {e}", conf.display()))?;
    let args = vec!["--keep-in-foreground".into(), format!("--conf-file={}", conf.display())];
    Ok(crate::supervisor::Service::new("dnsmasq-gateway", "dnsmasq", args, run_dir))
}

struct Using {
    candidate: Candidate,
    lease: Lease,
    since: Instant,
    renewed: Instant,
    failures: u32,
    /// The tunnel's received bytes at the last check.
    rx: u64,
}

pub fn spawn(agent: Agent) -> Result<(), String> {
    std::thread::Builder::new().name("gateway".into()).stack_size(256 * 1024).spawn(move || agent.run()).map(|_| ()).map_err(|e| format!("gateway thread: {e}"))
}

impl Agent {
    /// Every [`EVERY`]: the uplink, the leases served, the gateway used, then the firewall,
    /// DNS and the report as the role now is.
    fn run(self) {
        // Tunnels a meshd before this one left behind.
        for name in interfaces().into_iter().filter(|n| n.starts_with(SERVED_PREFIX) || n == TUNNEL) {
            let _ = command::run("ip", &["link", "del", &name]);
        }
        if let Err(e) = prepare_dns_dir(&self.run_dir) {
            logln!("meshd: gateway: {e}");
        }
        let _ = crate::durable::write(&upstream_path(&self.run_dir), b"", 0o644);
        let mut watch = UplinkWatch::default();
        let mut client = Client::new();
        let mut ruleset = String::new();
        loop {
            let now = Instant::now();
            let uplink = watch.check(&self.wired, self.settings.offer);
            let offering = self.settings.offer && uplink.is_some();
            self.serve(uplink.as_ref(), offering, now);
            let wants = self.settings.use_gateways == GatewayUse::Auto && !self.settings.offer;
            let note = if wants { client.tick(&self, now) } else { client.stop() };
            let using = client.using.is_some();

            // The firewall and DNS follow the role.
            let internet = if offering { uplink.as_ref().map(|u| u.interface.clone()) } else { using.then(|| TUNNEL.to_string()) };
            let lan = uplink.as_ref().filter(|_| offering && !self.settings.allow_lan);
            let wanted = nft_ruleset(internet.as_deref(), offering, using, lan.map(|u| (u.router, u.networks.as_slice())));
            if wanted != ruleset {
                // Tried once per change of role, so a node without nft says so once.
                if let Err(e) = apply_ruleset(&self.run_dir, &wanted) {
                    logln!("meshd: gateway: {e}");
                }
                ruleset = wanted;
            }
            if internet.is_some() {
                let _ = sysctl("net/ipv4/ip_forward", "1");
            }
            let upstream = if using {
                format!("nameserver {INNER}\n")
            } else if offering {
                system_name_servers()
            } else {
                String::new()
            };
            let path = upstream_path(&self.run_dir);
            if std::fs::read_to_string(&path).ok().as_deref() != Some(upstream.as_str()) {
                let _ = crate::durable::write(&path, upstream.as_bytes(), 0o644);
            }

            let report = Report {
                offer: self.settings.offer.then(|| self.offer_report(uplink.as_ref())),
                using: client.using_report(now),
                refused: client.refused.values().cloned().collect(),
                switches: client.switches,
                note,
            };
            if let Ok(mut r) = self.report.lock() {
                *r = report;
            }
            std::thread::sleep(EVERY.saturating_sub(now.elapsed()));
        }
    }

    /// The served side: what the HTTP face leases from, and the tunnels of expired leases gone.
    fn serve(&self, uplink: Option<&Uplink>, offering: bool, now: Instant) {
        let expired = match self.served.lock() {
            Ok(mut s) => {
                s.offering = self.settings.offer;
                s.me = Some(self.me);
                s.allow = self.settings.allow.iter().filter_map(|e| crate::identity::node_address(e)).collect();
                s.uplink = uplink.cloned();
                if offering {
                    s.expire(now)
                } else {
                    std::mem::take(&mut s.leases).into_values().map(|(n, _)| n).collect()
                }
            }
            Err(_) => Vec::new(),
        };
        for n in expired {
            let _ = command::run("ip", &["link", "del", &format!("{SERVED_PREFIX}{n}")]);
        }
    }

    fn offer_report(&self, uplink: Option<&Uplink>) -> OfferReport {
        let leases = self.served.lock().map(|s| s.leases.values().map(|(n, _)| *n).collect::<Vec<_>>()).unwrap_or_default();
        let (rx, tx) = leases.iter().map(|n| counters(&format!("{SERVED_PREFIX}{n}"))).fold((0, 0), |a, b| (a.0 + b.0, a.1 + b.1));
        OfferReport {
            uplink: uplink.map(|u| u.interface.clone()).unwrap_or_default(),
            uplink_up: uplink.is_some_and(|u| u.up),
            clients: leases.len(),
            rx_bytes: rx,
            tx_bytes: tx,
        }
    }
}

/// A gateway's uplink, pinged every round; down after [`FAILURES`] misses in a row.
#[derive(Default)]
struct UplinkWatch {
    failures: u32,
    was: Option<Uplink>,
    /// The uplink's networks, read once for its interface and router (a new DHCP lease on
    /// another network comes with another router).
    networks: Option<((String, Ipv4Addr), Vec<Net>)>,
}

impl UplinkWatch {
    fn check(&mut self, wired: &Wired, offer: bool) -> Option<Uplink> {
        let uplink = find_uplink(wired).map(|(interface, router)| {
            self.failures = if ping(&interface, router) { 0 } else { self.failures + 1 };
            let key = (interface.clone(), router);
            if self.networks.as_ref().is_none_or(|(k, _)| *k != key) {
                let read = command::run("ip", &["-4", "-o", "addr", "show", "dev", &interface]).map(|t| parse_networks(&t)).unwrap_or_default();
                self.networks = Some((key, read));
            }
            let networks = self.networks.as_ref().map(|(_, n)| n.clone()).unwrap_or_default();
            Uplink { interface, router, up: self.failures < FAILURES, networks }
        });
        if offer && uplink != self.was {
            match &uplink {
                Some(u) if u.up => logln!("meshd: gateway: offering internet access through {} (its router {} answers)", u.interface, u.router),
                Some(u) => logln!("meshd: gateway: uplink {} down: its router {} does not answer; offering nothing", u.interface, u.router),
                None => logln!("meshd: gateway: no uplink (no default route on a wired.dhcp interface); offering nothing"),
            }
            self.was = uplink.clone();
        }
        uplink
    }
}

/// Why a node leaves its gateway: it failed (not tried again for [`FAILED_FOR`]), or a nearer
/// one is live.
enum Leave {
    Failed(String),
    Nearer(String),
}

/// The using side: the gateway in use, the ones given up for a while, the refusals.
struct Client {
    http: ureq::Agent,
    using: Option<Using>,
    avoid: BTreeMap<Ipv6Addr, Instant>,
    refused: BTreeMap<Ipv6Addr, RefusedReport>,
    nearer_since: Option<(Ipv6Addr, Instant)>,
    switches: u64,
    started: Instant,
}

impl Client {
    fn new() -> Client {
        let http = ureq::Agent::config_builder()
            .timeout_global(Some(ASK_FOR))
            .max_redirects(0)
            .http_status_as_error(false)
            .user_agent(concat!("meshd/", env!("CARGO_PKG_VERSION")))
            .build()
            .into();
        Client { http, using: None, avoid: BTreeMap::new(), refused: BTreeMap::new(), nearer_since: None, switches: 0, started: Instant::now() }
    }

    /// Checks the gateway in use (leaving it when it fails, or for one nearer), else takes the
    /// nearest that gives a lease. Returns why none is used, when none is.
    fn tick(&mut self, agent: &Agent, now: Instant) -> Option<String> {
        self.avoid.retain(|_, until| *until > now);
        if let Some(leave) = self.check(agent, now) {
            let u = self.using.take().expect("checked one");
            let why = match leave {
                Leave::Failed(why) => {
                    self.avoid.insert(u.candidate.address, now + FAILED_FOR);
                    why
                }
                Leave::Nearer(why) => why,
            };
            logln!("meshd: gateway: leaving {} ({}): {why}", u.candidate.name, u.candidate.address);
            close_tunnel();
        }
        if self.using.is_none() {
            self.choose(agent, now);
        }
        let using = self.using.as_ref().map(|u| u.candidate.address);
        let avoid = &self.avoid;
        self.refused.retain(|a, _| avoid.contains_key(a) || using != Some(*a));
        match (&self.using, self.refused.is_empty()) {
            (Some(_), _) => None,
            (None, true) => Some("no live gateway in the mesh view".into()),
            (None, false) => Some("every gateway in reach refused this node".into()),
        }
    }

    /// Why to leave the gateway in use, if at all.
    fn check(&mut self, agent: &Agent, now: Instant) -> Option<Leave> {
        let u = self.using.as_mut()?;
        let passed = counters(TUNNEL).0 > u.rx || ping(TUNNEL, u.lease.check);
        // (read after the ping, so that its own answer is not taken for traffic next time)
        u.rx = counters(TUNNEL).0;
        if passed {
            u.failures = 0;
        } else {
            u.failures += 1;
            if u.failures >= FAILURES {
                return Some(Leave::Failed(format!("{} checks in a row passed no traffic", u.failures)));
            }
        }
        if now.duration_since(u.renewed) >= RENEW {
            // The next gateway's path is kept known to the overlay (finding it can take
            // seconds), so that moving there is quick.
            let candidates = (agent.candidates)();
            if let Some(next) = candidates.iter().find(|c| c.address != u.candidate.address && c.address != agent.me && !self.avoid.contains_key(&c.address)) {
                let url = format!("http://[{}]:{}/nodeinfo.json", next.address, agent.port);
                let _ = self.http.get(&url).config().timeout_global(Some(Duration::from_secs(3))).build().call();
            }
            match request_lease(&self.http, &u.candidate.address, agent.port) {
                Ok(Ok(l)) if l == u.lease => u.renewed = now,
                Ok(Ok(_)) => return Some(Leave::Failed("it changed the lease".into())),
                // Unanswered: tried again at the next check, while the gateway still holds the
                // lease for a while after the last renewal.
                Err(e) if now.duration_since(u.renewed) + RENEW < LEASE => {
                    logln!("meshd: gateway: renewing with {} unanswered, trying again: {e}", u.candidate.name);
                }
                Err(e) => return Some(Leave::Failed(format!("renewing: {e}"))),
                Ok(Err(r)) => {
                    if let Refusal::NotAllowed(reason) = &r {
                        self.refused.insert(u.candidate.address, refused_report(&u.candidate, reason));
                    }
                    return Some(Leave::Failed(format!("renewing: {}", refusal_text(&r))));
                }
            }
        }
        let Some(nearer) = nearer_gateway(&(agent.candidates)(), &u.candidate, &self.avoid, now) else {
            self.nearer_since = None;
            return None;
        };
        match self.nearer_since {
            Some((a, since)) if a == nearer.address && now.duration_since(since) >= NEARER_FOR => {
                self.nearer_since = None;
                let by = u.candidate.hops.unwrap_or(0).saturating_sub(nearer.hops.unwrap_or(0));
                Some(Leave::Nearer(format!("{} is {by} hops nearer", nearer.name)))
            }
            Some((a, _)) if a == nearer.address => None,
            _ => {
                self.nearer_since = Some((nearer.address, now));
                None
            }
        }
    }

    /// Leases from the nearest gateway that gives one and whose tunnel passes traffic.
    fn choose(&mut self, agent: &Agent, now: Instant) {
        let mut candidates: Vec<Candidate> =
            (agent.candidates)().into_iter().filter(|c| c.address != agent.me && !self.avoid.contains_key(&c.address)).collect();
        // Right after start the view may know gateways before the links to them: wait a
        // little for their distances rather than take a far one for good.
        if self.started.elapsed() < UNKNOWN_HOPS_FOR && candidates.iter().any(|c| c.hops.is_none()) {
            candidates.retain(|c| c.hops.is_some());
        }
        for c in candidates {
            let mut bad_lease = false;
            let leased = request_lease(&self.http, &c.address, agent.port).unwrap_or_else(|e| Err(Refusal::Unavailable(e))).and_then(|lease| {
                check_lease(&lease, &router_peer_addresses(&agent.peers), &local_networks()).map_err(|e| {
                    bad_lease = true;
                    Refusal::Unavailable(e)
                })?;
                open_tunnel(agent.me, &c, &lease, &agent.peers).map_err(Refusal::Unavailable)?;
                first_traffic(&lease)?;
                Ok(lease)
            });
            match leased {
                Ok(lease) => {
                    let hops = c.hops.map_or("?".into(), |h| h.to_string());
                    logln!("meshd: gateway: using {} ({}), {hops} overlay hops away, lease {}", c.name, c.address, lease.address);
                    self.refused.remove(&c.address);
                    self.switches += 1;
                    self.using = Some(Using { candidate: c, lease, since: now, renewed: now, failures: 0, rx: counters(TUNNEL).0 });
                    return;
                }
                Err(r) => {
                    logln!("meshd: gateway: {} ({}) gives no lease: {}", c.name, c.address, refusal_text(&r));
                    let until = match &r {
                        Refusal::NotAllowed(reason) => {
                            self.refused.insert(c.address, refused_report(&c, reason));
                            now + REFUSED_FOR
                        }
                        // A lease no node may apply is a lie or a broken gateway, not a busy
                        // one: not tried again, even as a nearer one, for long.
                        Refusal::Unavailable(_) if bad_lease => now + BAD_LEASE_FOR,
                        Refusal::Unavailable(_) => now + FAILED_FOR,
                    };
                    self.avoid.insert(c.address, until);
                    close_tunnel();
                }
            }
        }
    }

    /// No gateway wanted (the node offers one, or `gateway.use: off`).
    fn stop(&mut self) -> Option<String> {
        if self.using.take().is_some() {
            close_tunnel();
        }
        None
    }

    fn using_report(&self, now: Instant) -> Option<UsingReport> {
        let u = self.using.as_ref()?;
        let (rx, tx) = counters(TUNNEL);
        Some(UsingReport {
            name: u.candidate.name.clone(),
            address: u.candidate.address.to_string(),
            hops: u.candidate.hops.unwrap_or(0),
            lease: u.lease.address.to_string(),
            healthy: u.failures == 0,
            since_s: now.duration_since(u.since).as_secs(),
            rx_bytes: rx,
            tx_bytes: tx,
        })
    }
}

/// Whether a new tunnel passes traffic to the gateway's uplink within [`FIRST_TRAFFIC`].
fn first_traffic(lease: &Lease) -> Result<(), Refusal> {
    let start = Instant::now();
    while start.elapsed() < FIRST_TRAFFIC {
        if ping(TUNNEL, lease.check) {
            return Ok(());
        }
        std::thread::sleep(Duration::from_secs(1));
    }
    Err(Refusal::Unavailable(format!("the tunnel passed no traffic to {} in {} s", lease.check, FIRST_TRAFFIC.as_secs())))
}

/// The nearest live gateway at least a hop nearer than `current` (whose distance is taken anew
/// from the same view; one the view cannot place counts as farthest), if any. A gateway avoided
/// after a failure counts again once its time is up: while a gateway is in use nothing else
/// clears the list, and a node that fled a rebooting gateway to a farther one must come back.
fn nearer_gateway(candidates: &[Candidate], current: &Candidate, avoid: &BTreeMap<Ipv6Addr, Instant>, now: Instant) -> Option<Candidate> {
    let avoided = |a: &Ipv6Addr| avoid.get(a).is_some_and(|until| *until > now);
    let current_hops = candidates.iter().find(|c| c.address == current.address).and_then(|c| c.hops).or(current.hops).unwrap_or(usize::MAX);
    candidates.iter().find(|c| c.address != current.address && !avoided(&c.address) && c.hops.is_some_and(|h| h < current_hops)).cloned()
}

fn refused_report(c: &Candidate, reason: &str) -> RefusedReport {
    RefusedReport { name: c.name.clone(), address: c.address.to_string(), reason: reason.to_string() }
}

fn refusal_text(r: &Refusal) -> &str {
    match r {
        Refusal::NotAllowed(s) | Refusal::Unavailable(s) => s,
    }
}

/// Asks `gateway` for a lease over the overlay: its answer, or (Err) why there was none.
fn request_lease(http: &ureq::Agent, gateway: &Ipv6Addr, port: u16) -> Result<Result<Lease, Refusal>, String> {
    let url = format!("http://[{gateway}]:{port}/gateway/lease");
    let mut resp = http.post(&url).send_empty().map_err(|e| format!("{url}: {e}"))?;
    let status = resp.status().as_u16();
    let body = resp.body_mut().with_config().limit(4096).read_to_string().map_err(|e| format!("{url}: {e}"))?;
    Ok(match status {
        200 => serde_json::from_str(&body).map_err(|e| Refusal::Unavailable(format!("{url}: not a lease: {e}"))),
        403 => Err(Refusal::NotAllowed(body.trim().to_string())),
        _ => Err(Refusal::Unavailable(format!("{url}: HTTP {status}: {}", body.trim()))),
    })
}

/// Whether a gateway's lease may be applied: its addresses become a route through the tunnel,
/// so they must be the tunnel's own (in [`LEASES`], the gateway's end [`INNER`]), and neither
/// the router's IPv4 peers nor a network this node already reaches (`local`) may be taken over.
pub fn check_lease(lease: &Lease, peers: &[Ipv4Addr], local: &[Net]) -> Result<(), String> {
    let a = lease.address;
    if lease.gateway != INNER {
        return Err(format!("the lease names {} as the gateway's end of the tunnel, not {INNER}", lease.gateway));
    }
    let edge = [LEASES.0, Ipv4Addr::from(u32::from(LEASES.0) | !mask(LEASES.1))];
    if !LEASES.contains(a) || a == INNER || edge.contains(&a) {
        return Err(format!("the lease's address {a} is not a tunnel address (in {LEASES}, not {INNER})"));
    }
    if peers.contains(&a) {
        return Err(format!("the lease's address {a} is one of the router's peers"));
    }
    if let Some(net) = local.iter().find(|n| n.contains(a) || n.contains(INNER)) {
        return Err(format!("the lease's tunnel ({a}, {INNER}) lies in {net}, a network this node already reaches"));
    }
    let c = lease.check;
    if c.is_loopback() || c.is_multicast() || c.is_broadcast() || c.is_unspecified() {
        return Err(format!("the lease's check address {c} is not a router's"));
    }
    Ok(())
}

/// The networks this node reaches by routes of its own (main table; not the tunnel's).
fn local_networks() -> Vec<Net> {
    let routes = command::run("ip", &["-4", "route", "show", "table", "main"]).unwrap_or_default();
    parse_routes(&routes)
}

fn parse_routes(text: &str) -> Vec<Net> {
    text.lines()
        .filter(|l| !l.split_whitespace().collect::<Vec<_>>().windows(2).any(|w| w == ["dev", TUNNEL]))
        .filter_map(|l| Net::parse(l.split_whitespace().next()?))
        .collect()
}

/// The networks of `ip -4 -o addr show`'s addresses.
fn parse_networks(text: &str) -> Vec<Net> {
    text.lines()
        .filter_map(|l| {
            let words: Vec<&str> = l.split_whitespace().collect();
            let i = words.iter().position(|w| *w == "inet")?;
            Net::parse(words.get(i + 1)?)
        })
        .collect()
}

/// The client's tunnel and the policy routing that sends IPv4 into it.
fn open_tunnel(me: Ipv6Addr, gateway: &Candidate, lease: &Lease, peers: &[String]) -> Result<(), String> {
    close_tunnel();
    crate::machine::current().add_tunnel(TUNNEL, me, gateway.address, lease.address)?;
    command::run("ip", &["link", "set", TUNNEL, "mtu", TUNNEL_MTU, "up"])?;
    command::run("ip", &["addr", "add", &lease.address.to_string(), "peer", &format!("{}/32", lease.gateway), "dev", TUNNEL])?;
    command::run("ip", &["route", "replace", "default", "dev", TUNNEL, "table", TABLE])?;
    let [replies, peer_rule, own_routes, tunnel] = RULES.map(|p| p.to_string());
    command::run("ip", &["rule", "add", "pref", &replies, "fwmark", REPLY_MARK, "lookup", "main"])?;
    for peer in router_peer_addresses(peers) {
        command::run("ip", &["rule", "add", "pref", &peer_rule, "to", &peer.to_string(), "lookup", "main"])?;
    }
    command::run("ip", &["rule", "add", "pref", &own_routes, "lookup", "main", "suppress_prefixlength", "0"])?;
    command::run("ip", &["rule", "add", "pref", &tunnel, "lookup", TABLE])?;
    Ok(())
}

fn close_tunnel() {
    for pref in RULES {
        while command::run("ip", &["rule", "del", "pref", &pref.to_string()]).is_ok() {}
    }
    let _ = command::run("ip", &["route", "flush", "table", TABLE]);
    let _ = command::run("ip", &["link", "del", TUNNEL]);
}

/// The IPv4 addresses of the router's peers over the internet.
fn router_peer_addresses(peers: &[String]) -> Vec<Ipv4Addr> {
    let mut out = Vec::new();
    for p in peers {
        let Some((_, rest)) = p.split_once("://") else { continue };
        let host_port = rest.rsplit_once('@').map_or(rest, |(_, h)| h).split(['?', '/']).next().unwrap_or_default();
        if let Ok(addrs) = host_port.to_socket_addrs() {
            out.extend(addrs.filter_map(|a| match a.ip() {
                std::net::IpAddr::V4(v4) => Some(v4),
                std::net::IpAddr::V6(_) => None,
            }));
        }
    }
    out.sort();
    out.dedup();
    out
}

/// The nftables table meshd owns, whole: the access points' clients reach by IPv4 only the
/// internet (`internet`: the uplink or the tunnel), a gateway's tunnels only its uplink, and
/// what leaves by `internet` is masqueraded. On a gateway that keeps its owner's LAN (`lan`:
/// the uplink's router and networks), nothing forwarded reaches the LAN but a ping of the
/// router (a client's check of its tunnel). On a node using a gateway, connections made to
/// the node from elsewhere are marked so that their replies keep to the main table.
pub fn nft_ruleset(internet: Option<&str>, gateway: bool, client: bool, lan: Option<(Ipv4Addr, &[Net])>) -> String {
    let mut forward = String::new();
    let mut nat = String::new();
    let mut extra = String::new();
    match internet {
        Some(out) => {
            if let Some((router, own)) = lan {
                let nets: Vec<String> = LAN.iter().chain(own).map(Net::to_string).collect();
                let _ = writeln!(forward, "    oifname \"{out}\" ip daddr {router} icmp type echo-request accept");
                let _ = writeln!(forward, "    oifname \"{out}\" ip daddr {{ {} }} drop", nets.join(", "));
            }
            let _ = writeln!(forward, "    iifname \"ap*\" oifname != \"{out}\" drop");
            let _ = writeln!(nat, "    oifname \"{out}\" masquerade");
        }
        None => forward.push_str("    iifname \"ap*\" drop\n"),
    }
    if gateway {
        let out = internet.unwrap_or("none");
        let _ = writeln!(forward, "    iifname \"{SERVED_PREFIX}*\" oifname != \"{out}\" drop");
    }
    if client {
        let _ = write!(
            extra,
            "  chain input {{\n    type filter hook input priority filter; policy accept;\n    ct state new iifname != \"{TUNNEL}\" ct mark set {REPLY_MARK}\n  }}\n\
  chain output {{\n    type route hook output priority mangle; policy accept;\n    ct mark {REPLY_MARK} meta mark set {REPLY_MARK}\n  }}\n"
        );
    }
    format!(
        "# Written by meshd (crate::gateway); replaced whole whenever the node's role changes.\n\
table ip meshos\ndelete table ip meshos\ntable ip meshos {{\n\
  chain forward {{\n    type filter hook forward priority filter; policy accept;\n{forward}  }}\n\
  chain postrouting {{\n    type nat hook postrouting priority srcnat; policy accept;\n{nat}  }}\n{extra}}}\n"
    )
}

fn apply_ruleset(run_dir: &Path, ruleset: &str) -> Result<(), String> {
    let path = run_dir.join("meshos.nft");
    crate::durable::write(&path, ruleset.as_bytes(), 0o644).map_err(|e| format!("{}: {e}", path.display()))?;
    command::run("nft", &["-f", &path.display().to_string()]).map(|_| ())
}

/// The default route's interface and router, when the interface is one mesh.yaml's
/// `wired.dhcp` names (a gateway's own tunnel is never an uplink).
fn find_uplink(wired: &Wired) -> Option<(String, Ipv4Addr)> {
    let routes = command::run("ip", &["-4", "route", "show", "default", "table", "main"]).ok()?;
    parse_default_routes(&routes).into_iter().find(|(dev, _)| Wired::matches(&wired.dhcp, dev))
}

fn parse_default_routes(text: &str) -> Vec<(String, Ipv4Addr)> {
    text.lines()
        .filter_map(|l| {
            let words: Vec<&str> = l.split_whitespace().collect();
            let after = |w: &str| words.iter().position(|x| *x == w).and_then(|i| words.get(i + 1)).copied();
            Some((after("dev")?.to_string(), after("via")?.parse().ok()?))
        })
        .collect()
}

/// One ping out of `interface`, answered within 2 s.
fn ping(interface: &str, to: Ipv4Addr) -> bool {
    command::run("ping", &["-c", "1", "-W", "2", "-I", interface, &to.to_string()]).is_ok()
}

/// The name servers the node's own DHCP lease gave (the gateway's upstream).
fn system_name_servers() -> String {
    let text = std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default();
    text.lines().filter(|l| l.starts_with("nameserver ")).map(|l| format!("{l}\n")).collect()
}

fn interfaces() -> Vec<String> {
    std::fs::read_dir("/sys/class/net").map(|d| d.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect()).unwrap_or_default()
}

/// Bytes received and sent on `interface`.
fn counters(interface: &str) -> (u64, u64) {
    let read =
        |what: &str| std::fs::read_to_string(format!("/sys/class/net/{interface}/statistics/{what}")).ok().and_then(|t| t.trim().parse().ok()).unwrap_or(0);
    (read("rx_bytes"), read("tx_bytes"))
}

/// The gateways in `nodes` (this node first, as the mesh view gives them; each offer signed by
/// its gateway, crate::record), nearest first: by overlay hops through the nodes' neighbour
/// lists, then by address so every node breaks a tie the same way. With `trusted` (mesh.yaml's
/// `gateway.trusted`), only those.
pub fn candidates(nodes: &[crate::meshview::Node], trusted: &[Ipv6Addr]) -> Vec<Candidate> {
    let Some(me) = nodes.first() else { return Vec::new() };
    let hops = crate::meshview::hops(nodes, &me.address);
    let pinned = |n: &crate::meshview::Node| trusted.is_empty() || n.address.parse().is_ok_and(|a| trusted.contains(&a));
    let mut out: Vec<Candidate> = nodes
        .iter()
        .skip(1)
        .filter(|n| n.gateway && pinned(n))
        .filter_map(|n| Some(Candidate { address: n.address.parse().ok()?, name: n.name.clone(), hops: hops.get(&n.address).copied() }))
        .collect();
    out.sort_by_key(|c| (c.hops.unwrap_or(usize::MAX), c.address));
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::node_address;

    fn a(s: &str) -> Ipv6Addr {
        s.parse().unwrap()
    }

    fn served(allow: &[&str]) -> Served {
        Served {
            offering: true,
            me: Some(a("200::c")),
            allow: allow.iter().map(|e| node_address(e).unwrap()).collect(),
            uplink: Some(Uplink { interface: "eth3".into(), router: Ipv4Addr::new(198, 51, 100, 1), up: true, networks: vec![] }),
            leases: BTreeMap::new(),
            new_leases: None,
        }
    }

    #[test]
    fn new_leases_come_at_a_bounded_rate() {
        let mut s = served(&[]);
        let t = Instant::now();
        let client = |i: u32| Ipv6Addr::from(u128::from(a("200::")) + u128::from(i));
        // A neighbour with a thousand keys of its own: the first 64 at once, then one every 3 s.
        for i in 0..NEW_LEASES_AT_ONCE {
            s.lease(client(i), true, t).unwrap();
        }
        match s.lease(client(1000), true, t) {
            Err(Refusal::Unavailable(why)) => assert!(why.contains("one new lease every 3 s"), "{why}"),
            other => panic!("{other:?}"),
        }
        // Renewals are not new leases.
        assert!(s.lease(client(0), true, t + Duration::from_secs(1)).is_ok());
        assert!(s.lease(client(1000), true, t + Duration::from_secs(3)).is_ok());
        assert!(s.lease(client(1001), true, t + Duration::from_secs(4)).is_err());
        assert!(s.lease(client(1001), true, t + Duration::from_secs(6)).is_ok());
        // Quiet for long enough, the whole allowance is back, and no more.
        let later = t + Duration::from_secs(3600);
        assert!((2000..2064).all(|i| s.lease(client(i), true, later).is_ok()));
        assert!(s.lease(client(3000), true, later).is_err());
    }

    #[test]
    fn leases_are_stable_unique_and_expire() {
        let mut s = served(&[]);
        let t = Instant::now();
        let (l1, new1) = s.lease(a("200::a"), true, t).unwrap();
        let (l2, _) = s.lease(a("201:1::b"), true, t).unwrap();
        assert_eq!((l1.address, new1, l2.address), (Ipv4Addr::new(100, 64, 0, 2), Some(2), Ipv4Addr::new(100, 64, 0, 3)));
        assert_eq!((l1.gateway, l1.check), (INNER, Ipv4Addr::new(198, 51, 100, 1)));
        // Renewing gives the same lease and no new tunnel.
        assert_eq!(s.lease(a("200::a"), true, t + RENEW).unwrap(), (l1.clone(), None));
        assert_eq!(s.expire(t + LEASE + Duration::from_secs(1)), vec![3]);
        // The freed number is handed out again.
        assert_eq!(s.lease(a("200::d"), true, t + LEASE).unwrap().0.address, Ipv4Addr::new(100, 64, 0, 3));
        assert_eq!(lease_address(258), Ipv4Addr::new(100, 64, 1, 2));
    }

    #[test]
    fn refusals_say_why() {
        // Only B's key (its address 200:...), given as a key.
        let key = "9d01fe7e0ba2a9a1e5d2b7e8df83e6c3b2a86e8d1b4a6e5f2c3d4e5f6a7b8c9d";
        let b = node_address(key).unwrap();
        assert!(is_node_address(&b) && !is_node_address(&a("300:1::5")));
        let mut s = served(&[key]);
        let t = Instant::now();
        assert!(s.lease(b, true, t).is_ok());
        match s.lease(a("200::a"), true, t) {
            Err(Refusal::NotAllowed(why)) => assert!(why.contains("gateway.allow"), "{why}"),
            other => panic!("{other:?}"),
        }
        // Not a node's overlay address: neither a LAN host nor a phone in a node's prefix.
        assert!(matches!(served(&[]).lease(a("fe80::1"), true, t), Err(Refusal::NotAllowed(_))));
        assert!(matches!(served(&[]).lease(a("300:1::5"), true, t), Err(Refusal::NotAllowed(_))));
        let mut down = served(&[]);
        down.uplink.as_mut().unwrap().up = false;
        assert!(matches!(down.lease(a("200::a"), true, t), Err(Refusal::Unavailable(_))));
        assert!(node_address("beef").is_none() && node_address(&"g".repeat(64)).is_none());
    }

    #[test]
    fn leases_go_to_the_nodes_of_the_mesh_view() {
        let t = Instant::now();
        let mut s = served(&[]);
        match s.lease(a("200::77"), false, t) {
            Err(Refusal::Unavailable(why)) => assert!(why.contains("not in this gateway's mesh view"), "{why}"),
            other => panic!("{other:?}"),
        }
        assert!(s.leases.is_empty());
        // Known now; its renewals count even if the view loses it for a while.
        let (lease, _) = s.lease(a("200::77"), true, t).unwrap();
        assert_eq!(s.lease(a("200::77"), false, t + RENEW).unwrap(), (lease, None));
        // An allow list decides by itself.
        let key = "9d01fe7e0ba2a9a1e5d2b7e8df83e6c3b2a86e8d1b4a6e5f2c3d4e5f6a7b8c9d";
        assert!(served(&[key]).lease(node_address(key).unwrap(), false, t).is_ok());
    }

    #[test]
    fn a_lease_routes_nothing_but_its_tunnel() {
        let good = Lease { address: Ipv4Addr::new(100, 64, 0, 9), gateway: INNER, check: Ipv4Addr::new(198, 51, 100, 1), lease_s: 120 };
        let peers = [Ipv4Addr::new(192, 0, 2, 1)];
        let local = parse_routes("default via 10.0.2.2 dev eth0\n10.0.2.0/24 dev eth0 proto kernel scope link src 10.0.2.15\n100.64.0.1 dev gw0 proto kernel scope link src 100.64.0.3\n10.41.0.0/24 dev ap0 scope link\n");
        assert_eq!(local, [Net(Ipv4Addr::new(10, 0, 2, 0), 24), Net(Ipv4Addr::new(10, 41, 0, 0), 24)]);
        assert_eq!(check_lease(&good, &peers, &local), Ok(()));
        let with = |f: &dyn Fn(&mut Lease)| {
            let mut l = good.clone();
            f(&mut l);
            check_lease(&l, &peers, &local).unwrap_err()
        };
        // A gateway that would route the router's peer, the LAN's DNS server or this node's own
        // networks through itself.
        assert!(with(&|l| l.gateway = Ipv4Addr::new(192, 0, 2, 1)).contains("gateway's end"));
        assert!(with(&|l| l.gateway = Ipv4Addr::new(10, 0, 2, 3)).contains("gateway's end"));
        assert!(with(&|l| l.address = Ipv4Addr::new(192, 0, 2, 1)).contains("not a tunnel address"));
        assert!(with(&|l| l.address = INNER).contains("not a tunnel address"));
        assert!(with(&|l| l.address = Ipv4Addr::new(100, 127, 255, 255)).contains("not a tunnel address"));
        assert!(with(&|l| l.check = Ipv4Addr::new(127, 0, 0, 1)).contains("check address"));
        let cgnat = [Net(Ipv4Addr::new(100, 64, 0, 0), 16)];
        assert!(check_lease(&good, &peers, &cgnat).unwrap_err().contains("already reaches"));
        assert!(check_lease(&good, &[Ipv4Addr::new(100, 64, 0, 9)], &local).unwrap_err().contains("router's peers"));
    }

    #[test]
    fn the_uplink_is_a_default_route_on_a_dhcp_interface() {
        let routes = "default via 198.51.100.1 dev eth3 \ndefault dev gw0 scope link\ndefault via 10.0.2.2 dev usb0 metric 5\n";
        assert_eq!(parse_default_routes(routes), [("eth3".into(), Ipv4Addr::new(198, 51, 100, 1)), ("usb0".into(), Ipv4Addr::new(10, 0, 2, 2))]);
        let wired = Wired { peering: vec![], dhcp: vec!["eth*".into()] };
        let addrs = "3: eth3    inet 198.51.100.57/24 brd 198.51.100.255 scope global dynamic eth3\\       valid_lft 3599sec\n3: eth3    inet 10.9.8.7/8 scope global eth3\n";
        assert_eq!(parse_networks(addrs), [Net(Ipv4Addr::new(198, 51, 100, 0), 24), Net(Ipv4Addr::new(10, 0, 0, 0), 8)]);
        assert!(Wired::matches(&wired.dhcp, "eth3") && !Wired::matches(&wired.dhcp, "usb0"));
    }

    #[test]
    fn rulesets_keep_clients_to_the_internet() {
        let uplink = [Net(Ipv4Addr::new(198, 51, 100, 0), 24)];
        let gw = nft_ruleset(Some("eth3"), true, false, Some((Ipv4Addr::new(198, 51, 100, 1), &uplink)));
        for want in [
            "iifname \"ap*\" oifname != \"eth3\" drop",
            "iifname \"gwc*\" oifname != \"eth3\" drop",
            "oifname \"eth3\" masquerade",
            "oifname \"eth3\" ip daddr 198.51.100.1 icmp type echo-request accept\n    oifname \"eth3\" ip daddr { 10.0.0.0/8, 172.16.0.0/12, 192.168.0.0/16, 169.254.0.0/16, 100.64.0.0/10, 198.51.100.0/24 } drop",
        ] {
            assert!(gw.contains(want), "{want} missing:\n{gw}");
        }
        assert!(!gw.contains("ct mark"));
        // gateway.allowLan: the LAN is the owner's to open.
        assert!(!nft_ruleset(Some("eth3"), true, false, None).contains("daddr"));
        let client = nft_ruleset(Some(TUNNEL), false, true, None);
        assert!(client.contains("oifname \"gw0\" masquerade") && client.contains("ct mark set 0x4d50"), "{client}");
        let none = nft_ruleset(None, false, false, None);
        assert!(none.contains("iifname \"ap*\" drop") && !none.contains("masquerade"), "{none}");
        assert!(none.starts_with("# Written by meshd") && none.contains("delete table ip meshos\n"));
    }

    #[test]
    fn a_nearer_gateway_is_one_at_least_a_hop_nearer() {
        let c = |last: &str, hops: Option<usize>| Candidate { address: a(&format!("200::{last}")), name: last.into(), hops };
        let current = c("d", Some(3));
        let view = [c("c", Some(2)), c("d", Some(3)), c("e", None)];
        let now = Instant::now();
        assert_eq!(nearer_gateway(&view, &current, &BTreeMap::new(), now), Some(c("c", Some(2))));
        // Not one that is avoided, nor one as far; the current's distance is taken anew.
        let avoided = BTreeMap::from([(a("200::c"), now + Duration::from_secs(60))]);
        assert_eq!(nearer_gateway(&view, &current, &avoided, now), None);
        assert_eq!(nearer_gateway(&[c("c", Some(2)), c("d", Some(2))], &current, &BTreeMap::new(), now), None);
        // Once the avoidance is over, the nearer one counts again.
        assert_eq!(nearer_gateway(&view, &current, &avoided, now + Duration::from_secs(61)), Some(c("c", Some(2))));
        // A gateway taken before the view could place it is left for one it can.
        assert_eq!(nearer_gateway(&[c("c", Some(2)), c("d", None)], &c("d", None), &BTreeMap::new(), now), Some(c("c", Some(2))));
    }

    #[test]
    fn router_peers_resolve_to_their_ipv4_addresses() {
        let peers = ["tls://192.0.2.1:443".to_string(), "tcp://u:p@198.51.100.7:9001?key=x".into(), "tls://[2001:db8::1]:443".into()];
        assert_eq!(router_peer_addresses(&peers), [Ipv4Addr::new(192, 0, 2, 1), Ipv4Addr::new(198, 51, 100, 7)]);
    }
}
