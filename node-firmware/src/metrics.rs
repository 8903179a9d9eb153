//! Prometheus text exposition: node metrics under node_exporter's names where they overlap
//! (memory, load, filesystems, network, temperature, boot time, cpu), mesh metrics from the
//! 802.11s station dump, router peers, config errors and meshd's build info.

use crate::radio::Station;
use crate::router::Peer;
use crate::status::NodeState;
use std::fmt::Write;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use sysinfo::{Components, Disks, Networks, System};

/// Chunks and bytes sent to neighbours for their upgrades since meshd started (the HTTP face
/// counts them as it serves).
pub static SERVED_CHUNKS: AtomicU64 = AtomicU64::new(0);
pub static SERVED_BYTES: AtomicU64 = AtomicU64::new(0);

/// What a scrape asks of the radios and the router (a fork of `iw` per radio, a query to the
/// router), kept for a few seconds: a client asking for /metrics many times a second makes no
/// more forks than one scrape does, and scrapes at the same moment wait for one answer.
pub struct Asked<T> {
    within: Duration,
    held: Mutex<Option<(Instant, Arc<T>)>>,
}

impl<T> Asked<T> {
    pub fn new(within: Duration) -> Asked<T> {
        Asked { within, held: Mutex::new(None) }
    }

    /// The answer asked within the last `within` of `now`, else `ask()`'s, kept.
    pub fn get(&self, now: Instant, ask: impl FnOnce() -> T) -> Arc<T> {
        let mut held = self.held.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((_, answer)) = held.as_ref().filter(|(at, _)| now.saturating_duration_since(*at) < self.within) {
            return answer.clone();
        }
        let answer = Arc::new(ask());
        *held = Some((now, answer.clone()));
        answer
    }
}

/// The host-side collectors, kept between scrapes (sysinfo works on differences).
pub struct Collectors {
    system: Option<System>,
    disks: Option<Disks>,
    networks: Option<Networks>,
    components: Option<Components>,
}

impl Collectors {
    pub fn new() -> Collectors {
        Collectors { system: System::new().ok(), disks: Disks::new().ok(), networks: Networks::new().ok(), components: Components::new().ok() }
    }
}

/// One exposition: `# HELP`/`# TYPE` once per family, then samples.
struct Exposition {
    out: String,
    family: String,
}

impl Exposition {
    fn family(&mut self, name: &str, kind: &str, help: &str) {
        if self.family != name {
            let _ = writeln!(self.out, "# HELP {name} {help}\n# TYPE {name} {kind}");
            self.family = name.to_string();
        }
    }

    fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: impl std::fmt::Display) {
        self.out.push_str(name);
        if !labels.is_empty() {
            self.out.push('{');
            for (i, (k, v)) in labels.iter().enumerate() {
                if i > 0 {
                    self.out.push(',');
                }
                let _ = write!(self.out, "{k}=\"{}\"", escape(v));
            }
            self.out.push('}');
        }
        let _ = writeln!(self.out, " {value}");
    }

    fn one(&mut self, name: &str, kind: &str, help: &str, labels: &[(&str, &str)], value: impl std::fmt::Display) {
        self.family(name, kind, help);
        self.sample(name, labels, value);
    }
}

fn escape(v: &str) -> String {
    v.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

/// Renders every metric. `stations` and `peers` are asked live by the caller.
pub fn render(state: &NodeState, stations: &[Station], peers: &Result<Vec<Peer>, String>, c: &mut Collectors) -> String {
    let mut e = Exposition { out: String::with_capacity(8192), family: String::new() };
    let labels = [("version", state.version.as_str()), ("board", state.board.as_str()), ("slot", state.slot.as_str()), ("build_id", state.build_id.as_str())];
    e.one("meshd_build_info", "gauge", "meshd and image build, value 1.", &labels, 1);
    node(&mut e, c);
    mesh(&mut e, state, stations);
    router(&mut e, state, peers);
    gateway(&mut e, &state.gateway);
    e.family("meshd_service_up", "gauge", "1 when the supervised service runs.");
    for s in &state.services {
        e.sample("meshd_service_up", &[("service", &s.name)], u8::from(s.running));
    }
    e.family("meshd_service_restarts_total", "counter", "Restarts of the supervised service since meshd started.");
    for s in &state.services {
        e.sample("meshd_service_restarts_total", &[("service", &s.name)], s.restarts);
    }
    if !state.boot_fs.result.is_empty() {
        e.one(
            "meshd_boot_fs_check",
            "gauge",
            "1 for what the check of the boot partition at boot found: clean, repaired, failed or unchecked.",
            &[("result", &state.boot_fs.result)],
            1,
        );
    }
    e.one("meshd_random_wait_seconds", "gauge", "Seconds meshd waited at start for the kernel's random numbers.", &[], state.random.waited_s);
    e.one("meshd_random_seeded", "gauge", "1 when this start credited the seed saved on the data partition.", &[], u8::from(state.random.seeded));
    let sl = &state.slots;
    if sl.error.is_none() && !sl.running.is_empty() {
        e.family("meshd_boot_attempts_left", "gauge", "Boot attempts U-Boot has left for the slot.");
        e.sample("meshd_boot_attempts_left", &[("slot", "A")], sl.a_left);
        e.sample("meshd_boot_attempts_left", &[("slot", "B")], sl.b_left);
        e.one(
            "meshd_slot_marked_good",
            "gauge",
            "1 once this boot passed its health check and was marked good.",
            &[("slot", &sl.running)],
            u8::from(sl.marked_good),
        );
        e.one(
            "meshd_rollback",
            "gauge",
            "1 when this boot is a rollback: the preferred slot ran out of attempts.",
            &[("from", sl.rolled_back_from.as_deref().unwrap_or(""))],
            u8::from(sl.rolled_back_from.is_some()),
        );
    }
    upgrade(&mut e, state);
    e.one("meshd_trusted_keys", "gauge", "Signing keys this image accepts upgrade bundles from (0: no upgrades).", &[], state.trusted_keys.len());
    e.one(
        "meshd_config_errors",
        "gauge",
        "1 when mesh.yaml is invalid and the node runs on its last good config or the defaults.",
        &[],
        u8::from(state.config_error.is_some()),
    );
    if let Some(err) = &state.config_error {
        let line = err.line.map(|l| l.to_string()).unwrap_or_default();
        let l = [("file", err.file.as_str()), ("line", line.as_str()), ("key", err.key.as_str()), ("message", err.message.as_str())];
        e.one("meshd_config_error", "gauge", "What is wrong with mesh.yaml.", &l, 1);
    }
    if let Some(kb) = crate::node::rss_kib() {
        e.one("process_resident_memory_bytes", "gauge", "meshd's resident memory.", &[], kb * 1024);
    }
    e.out
}

/// Upgrades over the mesh: the agent's phase, the last install's transfer (kept on the data
/// partition, so it is still there after the reboot into the new slot) and what this node
/// served to its neighbours.
fn upgrade(e: &mut Exposition, state: &NodeState) {
    use std::sync::atomic::Ordering;
    let u = &state.upgrade;
    let phase = serde_json::to_value(u.phase).ok().and_then(|v| v.as_str().map(String::from)).unwrap_or_default();
    e.one("meshd_upgrade_phase", "gauge", "What the upgrade agent does (idle, fetching, staged, rebooting, trial), value 1.", &[("phase", &phase)], 1);
    if let Some(r) = &u.last_install {
        let step = serde_json::to_value(r.step).ok().and_then(|v| v.as_str().map(String::from)).unwrap_or_default();
        let version = r.version.clone().unwrap_or_default();
        let kind = r.error_kind.clone().unwrap_or_default();
        e.one(
            "meshd_upgrade_last_install",
            "gauge",
            "The last install's step and version, value 1.",
            &[("step", &step), ("version", &version), ("error_kind", &kind)],
            1,
        );
        if let Some(t) = &r.transfer {
            e.one(
                "meshd_upgrade_bundle_bytes",
                "gauge",
                "Size of the whole bundle of the last release installed over the mesh.",
                &[("version", &version)],
                t.bundle_bytes,
            );
            e.one("meshd_upgrade_needed_bytes", "gauge", "Chunk bytes of that release the running slot lacked.", &[("version", &version)], t.needed_bytes);
            e.one("meshd_upgrade_reused_bytes", "gauge", "Chunk bytes of that release found in the running slot.", &[("version", &version)], t.reused_bytes);
            e.one(
                "meshd_upgrade_fetched_bytes",
                "gauge",
                "Bytes received from neighbours for that release, over all attempts, header and bad chunks included.",
                &[("version", &version)],
                t.fetched_bytes,
            );
            e.one(
                "meshd_upgrade_fetch_attempts",
                "gauge",
                "Attempts the fetch took (more than 1: resumed after a power cut or a lost link).",
                &[("version", &version)],
                t.attempts,
            );
            e.family("meshd_upgrade_peer_bytes", "gauge", "Chunk bytes each neighbour served for that release.");
            for (peer, tally) in &t.peers {
                e.sample("meshd_upgrade_peer_bytes", &[("peer", peer)], tally.bytes);
            }
            e.family("meshd_upgrade_peer_bad_chunks", "gauge", "Chunks a neighbour served with bytes that did not match the signed manifest.");
            for (peer, tally) in &t.peers {
                e.sample("meshd_upgrade_peer_bad_chunks", &[("peer", peer)], tally.bad_chunks);
            }
        }
    }
    if !u.false_claims.is_empty() {
        e.family("meshd_upgrade_false_claims", "gauge", "Neighbours that lately answered for a release with something that was not it, value 1.");
        for peer in u.false_claims.keys() {
            e.sample("meshd_upgrade_false_claims", &[("peer", peer)], 1);
        }
    }
    e.one("meshd_upgrade_releases_held", "gauge", "Releases this node holds because other nodes report they failed their trial.", &[], u.holding.len());
    e.one("meshd_upgrade_failed_trials", "gauge", "Releases that failed their trial on this node and were rolled back (the newest kept).", &[], u.failed.len());
    e.one(
        "meshd_upgrade_served_chunks_total",
        "counter",
        "Chunks served to neighbours' upgrades since meshd started.",
        &[],
        SERVED_CHUNKS.load(Ordering::Relaxed),
    );
    e.one(
        "meshd_upgrade_served_bytes_total",
        "counter",
        "Chunk bytes served to neighbours' upgrades since meshd started.",
        &[],
        SERVED_BYTES.load(Ordering::Relaxed),
    );
}

fn node(e: &mut Exposition, c: &mut Collectors) {
    if let Some(sys) = &mut c.system {
        sys.refresh_memory();
        e.one("node_memory_MemTotal_bytes", "gauge", "Memory information field MemTotal_bytes.", &[], sys.total_memory());
        e.one("node_memory_MemFree_bytes", "gauge", "Memory information field MemFree_bytes.", &[], sys.free_memory());
        e.one("node_memory_MemAvailable_bytes", "gauge", "Memory information field MemAvailable_bytes.", &[], sys.available_memory());
    }
    if let Ok(load) = System::load_average() {
        e.one("node_load1", "gauge", "1m load average.", &[], load.one);
        e.one("node_load5", "gauge", "5m load average.", &[], load.five);
        e.one("node_load15", "gauge", "15m load average.", &[], load.fifteen);
    }
    if let Ok(boot) = System::boot_time() {
        e.one("node_boot_time_seconds", "gauge", "Node boot time, in unixtime.", &[], boot);
    }
    if let Ok(up) = System::uptime() {
        e.one("node_uptime_seconds", "gauge", "Seconds since boot.", &[], up);
    }
    cpu_seconds(e);
    if let Some(disks) = &mut c.disks {
        disks.refresh(true);
        e.family("node_filesystem_size_bytes", "gauge", "Filesystem size in bytes.");
        let list: Vec<_> = disks
            .iter()
            .map(|d| {
                (
                    d.name().to_string_lossy().into_owned(),
                    d.file_system().to_string_lossy().into_owned(),
                    d.mount_point().display().to_string(),
                    d.total_space(),
                    d.available_space(),
                )
            })
            .collect();
        for (dev, fs, mp, size, _) in &list {
            e.sample("node_filesystem_size_bytes", &[("device", dev), ("fstype", fs), ("mountpoint", mp)], size);
        }
        e.family("node_filesystem_avail_bytes", "gauge", "Filesystem space available to non-root users in bytes.");
        for (dev, fs, mp, _, avail) in &list {
            e.sample("node_filesystem_avail_bytes", &[("device", dev), ("fstype", fs), ("mountpoint", mp)], avail);
        }
    }
    if let Some(nets) = &mut c.networks {
        nets.refresh(true);
        let mut list: Vec<_> = nets
            .iter()
            .map(|(n, d)| {
                (n.to_string_lossy().into_owned(), d.total_received(), d.total_transmitted(), d.total_packets_received(), d.total_packets_transmitted())
            })
            .collect();
        list.sort();
        let families = [
            ("node_network_receive_bytes_total", "Network device statistic receive_bytes."),
            ("node_network_transmit_bytes_total", "Network device statistic transmit_bytes."),
            ("node_network_receive_packets_total", "Network device statistic receive_packets."),
            ("node_network_transmit_packets_total", "Network device statistic transmit_packets."),
        ];
        for (i, (name, help)) in families.iter().enumerate() {
            e.family(name, "counter", help);
            for (dev, rb, tb, rp, tp) in &list {
                e.sample(name, &[("device", dev)], [rb, tb, rp, tp][i]);
            }
        }
    }
    if let Some(comps) = &mut c.components {
        comps.refresh(true);
        e.family("node_hwmon_temp_celsius", "gauge", "Hardware monitor for temperature (input).");
        for comp in comps.iter() {
            if let Some(t) = comp.temperature().filter(|t| t.is_finite()) {
                e.sample("node_hwmon_temp_celsius", &[("sensor", comp.label())], t);
            }
        }
    }
}

/// node_exporter's cpu counter, from /proc/stat (USER_HZ is 100 on every Linux we build for).
fn cpu_seconds(e: &mut Exposition) {
    let Ok(stat) = std::fs::read_to_string("/proc/stat") else { return };
    e.family("node_cpu_seconds_total", "counter", "Seconds the CPUs spent in each mode.");
    const MODES: [&str; 8] = ["user", "nice", "system", "idle", "iowait", "irq", "softirq", "steal"];
    for line in stat.lines().filter(|l| l.starts_with("cpu") && !l.starts_with("cpu ")) {
        let mut fields = line.split_whitespace();
        let cpu = fields.next().unwrap_or("cpu").trim_start_matches("cpu").to_string();
        for (mode, ticks) in MODES.iter().zip(fields) {
            let secs = ticks.parse::<u64>().unwrap_or(0) as f64 / 100.0;
            e.sample("node_cpu_seconds_total", &[("cpu", &cpu), ("mode", mode)], secs);
        }
    }
}

fn mesh(e: &mut Exposition, state: &NodeState, stations: &[Station]) {
    e.family("meshd_radio_up", "gauge", "1 when meshd set the radio up in its role; 0 with the error when it could not.");
    for r in &state.radios {
        let err = r.error.as_deref().unwrap_or("");
        e.sample(
            "meshd_radio_up",
            &[("phy", &r.phy), ("driver", &r.driver), ("role", &r.role), ("interface", &r.interface), ("error", err)],
            u8::from(r.error.is_none()),
        );
    }
    e.family("meshd_mesh_peers", "gauge", "802.11s stations with an established peer link.");
    for r in state.radios.iter().filter(|r| r.role == "mesh" && r.error.is_none()) {
        let n = stations.iter().filter(|s| s.interface == r.interface && s.plink.as_deref() == Some("ESTAB")).count();
        e.sample("meshd_mesh_peers", &[("interface", &r.interface)], n);
    }
    let per_station: [(&str, &str, &str); 5] = [
        ("meshd_mesh_station_signal_dbm", "gauge", "Signal of the last frame from the station."),
        ("meshd_mesh_station_tx_bitrate_bits_per_second", "gauge", "Bitrate of the last frame sent to the station."),
        ("meshd_mesh_station_receive_bytes_total", "counter", "Bytes received from the station."),
        ("meshd_mesh_station_transmit_bytes_total", "counter", "Bytes sent to the station."),
        ("meshd_mesh_station_plink", "gauge", "Peer link state of the station, value 1."),
    ];
    for (name, kind, help) in per_station {
        e.family(name, kind, help);
        for s in stations {
            let l = [("interface", s.interface.as_str()), ("station", s.mac.as_str())];
            match name {
                "meshd_mesh_station_signal_dbm" => {
                    if let Some(v) = s.signal_dbm {
                        e.sample(name, &l, v);
                    }
                }
                "meshd_mesh_station_tx_bitrate_bits_per_second" => {
                    if let Some(v) = s.tx_bitrate_mbps {
                        e.sample(name, &l, v * 1e6);
                    }
                }
                "meshd_mesh_station_receive_bytes_total" => e.sample(name, &l, s.rx_bytes),
                "meshd_mesh_station_transmit_bytes_total" => e.sample(name, &l, s.tx_bytes),
                _ => e.sample(name, &[l[0], l[1], ("state", s.plink.as_deref().unwrap_or("unknown"))], 1),
            }
        }
    }
}

fn router(e: &mut Exposition, state: &NodeState, peers: &Result<Vec<Peer>, String>) {
    let r = [("router", state.router.as_str())];
    e.one("meshd_router_up", "gauge", "1 when the router answers on its admin socket.", &r, u8::from(peers.is_ok()));
    let Ok(peers) = peers else { return };
    // Two neighbours that find each other at once keep both connections: count nodes, and
    // sum their connections' bytes per node.
    let mut by_node: std::collections::BTreeMap<&str, (u64, u64)> = std::collections::BTreeMap::new();
    for p in peers.iter().filter(|p| p.up) {
        let t = by_node.entry(p.address.as_str()).or_default();
        (t.0, t.1) = (t.0 + p.rx_bytes, t.1 + p.tx_bytes);
    }
    e.one("meshd_router_peers", "gauge", "Overlay peers (nodes) with a connection up.", &r, by_node.len());
    e.one("meshd_router_links", "gauge", "Overlay connections up.", &r, peers.iter().filter(|p| p.up).count());
    for (name, help) in [
        ("meshd_router_peer_receive_bytes_total", "Bytes received from the overlay peer."),
        ("meshd_router_peer_transmit_bytes_total", "Bytes sent to the overlay peer."),
    ] {
        e.family(name, "counter", help);
        for (address, (rx, tx)) in &by_node {
            let v = if name.contains("receive") { rx } else { tx };
            e.sample(name, &[("router", &state.router), ("peer", address)], v);
        }
    }
}

/// The mesh view (crate::meshview): how many nodes it holds, and the records each neighbour
/// passed on that did not check out (another node's address under its own key, a changed word,
/// junk): what a hostile neighbour shows up as.
pub fn mesh_view(nodes: usize, refused: &std::collections::BTreeMap<String, u64>) -> String {
    let mut e = Exposition { out: String::new(), family: String::new() };
    e.one("meshd_mesh_view_nodes", "gauge", "Nodes in this node's mesh view, itself included.", &[], nodes);
    e.family("meshd_mesh_view_refused_total", "counter", "Records a neighbour passed on that failed their check, since meshd started.");
    for (peer, n) in refused {
        e.sample("meshd_mesh_view_refused_total", &[("peer", peer)], n);
    }
    e.out
}

/// Internet access (crate::gateway): the node's offer, the gateway it uses, refusals.
fn gateway(e: &mut Exposition, g: &crate::gateway::Report) {
    if let Some(o) = &g.offer {
        e.one(
            "meshd_gateway_offer_up",
            "gauge",
            "1 while this node offers internet access: its uplink's router answers.",
            &[("uplink", &o.uplink)],
            u8::from(o.uplink_up),
        );
        e.one("meshd_gateway_clients", "gauge", "Nodes holding a lease (a tunnel) from this gateway.", &[], o.clients);
        e.one("meshd_gateway_served_receive_bytes_total", "counter", "Bytes received through this gateway's tunnels.", &[], o.rx_bytes);
        e.one("meshd_gateway_served_transmit_bytes_total", "counter", "Bytes sent through this gateway's tunnels.", &[], o.tx_bytes);
    }
    e.one("meshd_gateway_switches_total", "counter", "Gateways this node took since meshd started (the first included).", &[], g.switches);
    if let Some(u) = &g.using {
        let l = [("gateway", u.address.as_str()), ("name", u.name.as_str())];
        e.one("meshd_gateway_in_use", "gauge", "The gateway this node's internet traffic goes through now, value 1.", &l, 1);
        e.one("meshd_gateway_healthy", "gauge", "1 while the last check through the tunnel to the gateway's uplink passed.", &l, u8::from(u.healthy));
        e.one("meshd_gateway_hops", "gauge", "Overlay hops to the gateway in use (0: unknown).", &l, u.hops);
        e.one("meshd_gateway_receive_bytes_total", "counter", "Bytes received from the gateway through the tunnel.", &l, u.rx_bytes);
        e.one("meshd_gateway_transmit_bytes_total", "counter", "Bytes sent to the gateway through the tunnel.", &l, u.tx_bytes);
    }
    e.family("meshd_gateway_refused", "gauge", "A gateway that refused this node a lease, with its reason, value 1.");
    for r in &g.refused {
        e.sample("meshd_gateway_refused", &[("gateway", &r.address), ("name", &r.name), ("reason", &r.reason)], 1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scrapes_close_together_ask_the_radios_once() {
        let asked = Asked::new(Duration::from_secs(5));
        let t0 = Instant::now();
        let mut forks = 0;
        for i in 0..100 {
            asked.get(t0 + Duration::from_millis(i * 10), || forks += 1);
        }
        assert_eq!(forks, 1, "a hundred scrapes in a second");
        asked.get(t0 + Duration::from_secs(6), || forks += 1);
        assert_eq!(forks, 2, "a scrape after the answer went stale asks again");
    }
    use crate::status::{ConfigErrorDoc, RadioState, ServiceDoc};

    #[test]
    fn exposition_has_each_family_once_and_escapes_labels() {
        let state = NodeState {
            version: "1.2".into(),
            router: "yggdrasil".into(),
            radios: vec![RadioState {
                phy: "phy0".into(),
                driver: "mac80211_hwsim".into(),
                usb: None,
                mac: "m".into(),
                role: "mesh".into(),
                interface: "mesh0".into(),
                error: None,
            }],
            services: vec![ServiceDoc { name: "yggdrasil".into(), running: true, restarts: 2, last_exit: None }],
            config_error: Some(ConfigErrorDoc {
                file: "/boot/mesh.yaml".into(),
                line: Some(4),
                key: "mesh.freq".into(),
                message: "unknown field `freq`, expected \"id\"".into(),
                text: String::new(),
            }),
            ..NodeState::default()
        };
        let st = vec![Station {
            interface: "mesh0".into(),
            mac: "02:00:00:00:01:00".into(),
            signal_dbm: Some(-30),
            tx_bitrate_mbps: Some(54.0),
            rx_bytes: 10,
            tx_bytes: 20,
            plink: Some("ESTAB".into()),
        }];
        let link = Peer {
            key: "k".into(),
            address: "200::2".into(),
            remote: "tls://[fe80::2%eth1]:1".into(),
            up: true,
            rx_bytes: 5,
            tx_bytes: 6,
            uptime_seconds: 1.0,
        };
        let peers = Ok(vec![link.clone(), Peer { remote: "tls://[fe80::2%eth1]:2".into(), ..link }]);
        let text = render(&state, &st, &peers, &mut Collectors::new());
        for want in [
            "meshd_mesh_peers{interface=\"mesh0\"} 1\n",
            "meshd_mesh_station_signal_dbm{interface=\"mesh0\",station=\"02:00:00:00:01:00\"} -30\n",
            "meshd_mesh_station_tx_bitrate_bits_per_second{interface=\"mesh0\",station=\"02:00:00:00:01:00\"} 54000000\n",
            "meshd_mesh_station_plink{interface=\"mesh0\",station=\"02:00:00:00:01:00\",state=\"ESTAB\"} 1\n",
            "meshd_router_peers{router=\"yggdrasil\"} 1\n",
            "meshd_router_links{router=\"yggdrasil\"} 2\n",
            "meshd_router_peer_receive_bytes_total{router=\"yggdrasil\",peer=\"200::2\"} 10\n",
            "meshd_service_restarts_total{service=\"yggdrasil\"} 2\n",
            "meshd_config_errors 1\n",
            "key=\"mesh.freq\",message=\"unknown field `freq`, expected \\\"id\\\"\"} 1\n",
            "node_memory_MemTotal_bytes ",
            "node_cpu_seconds_total{cpu=\"0\",mode=\"idle\"} ",
        ] {
            assert!(text.contains(want), "missing {want:?} in\n{text}");
        }
        let mut seen = std::collections::BTreeSet::new();
        for line in text.lines().filter(|l| l.starts_with("# TYPE ")) {
            assert!(seen.insert(line.to_string()), "{line} twice");
        }
    }
}
