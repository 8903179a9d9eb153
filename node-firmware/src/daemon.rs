//! `meshd run`: the node's life. Reads the config, makes or loads the identity, starts the
//! router, ssh and metrics, then every few seconds finds radios (new, gone, replugged), sets
//! them up in their role, keeps the services running and publishes the status.

use crate::config::{self, Config, Role, Wired};
use crate::held::Shelf;
use crate::identity::Identity;
use crate::node::Node;
use crate::radio::{self, Radio};
use crate::slot_bundle::SlotSource;
use crate::status::{self, NodeState, RadioState};
use crate::supervisor::Service;
use crate::watchdog::{self, Watchdog};
use crate::{access_point, command, http, router, slots};
use meshos_common::boot_state::Slot;
use meshos_common::bundle::ErrorKind;
use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Where a node keeps things. The defaults are the image's layout; a second meshd (say, one
/// driving a radio moved into another network namespace) gets its own.
pub struct Dirs {
    /// The FAT partition: mesh.yaml, conf.d/, ap-passphrase.txt.
    pub boot: PathBuf,
    /// On the data partition: identity, last good config.
    pub state: PathBuf,
    /// tmpfs: generated configs, status.json, service logs, sockets.
    pub run: PathBuf,
}

impl Default for Dirs {
    fn default() -> Dirs {
        Dirs { boot: "/boot".into(), state: "/data/meshd".into(), run: "/run/meshd".into() }
    }
}

const SCAN_EVERY: Duration = Duration::from_secs(2);
const WATCHDOG: &str = "/dev/watchdog";
const RETRY_RADIO_AFTER: Duration = Duration::from_secs(20);

/// A radio meshd has dealt with, and when to try again if that failed.
struct Managed {
    radio: Radio,
    role: Role,
    result: Result<String, String>,
    retry_at: Option<Instant>,
    services: Vec<Service>,
}

pub fn run(dirs: &Dirs) -> Result<(), String> {
    // What meshd and the services it starts create is theirs alone unless made otherwise:
    // keys, configs with passphrases, logs with addresses.
    // SAFETY: umask only sets the process's file mode mask.
    unsafe { libc::umask(0o077) };
    let node = Node::detect()?;
    for d in [&dirs.state, &dirs.run] {
        fs::create_dir_all(d).map_err(|e| format!("{}: {e}", d.display()))?;
    }
    let loaded = config::load(&dirs.boot.join("mesh.yaml"), &dirs.state);
    if let Some(e) = &loaded.error {
        eprintln!("meshd: config error: {e}");
        eprintln!("meshd: running with {}; fix the file and restart the node", loaded.source);
    }
    let cfg = loaded.config;
    apply_conf_d(&dirs.boot.join("conf.d"));

    // First, so that a boot that installs and reboots also leaves a seed for the next.
    let random = crate::entropy::start(&dirs.state);
    install_pending_updates(dirs);

    let timeout = Duration::from_secs(cfg.upgrade.health_timeout);
    let boot_fs = crate::boot_check::read(Path::new(crate::boot_check::LOG));
    match boot_fs.result.as_str() {
        "clean" => {}
        "repaired" => eprintln!("meshd: boot partition repaired at boot: {}", boot_fs.changes.join(" ")),
        other => eprintln!("meshd: boot partition check {other}: {} (see {})", boot_fs.changes.join(" "), crate::boot_check::LOG),
    }
    let id = Identity::load_or_create(&dirs.state, &cfg.mesh.id).map_err(|e| cannot_start(e, &node, dirs, timeout))?;
    id.apply_hostname();
    // cjdns has an address of its own, from its own keys.
    let address = router::overlay_address(&cfg, &id, &dirs.state).unwrap_or_else(|e| {
        eprintln!("meshd: router: {e}");
        id.address
    });
    eprintln!("meshd: {} overlay address {address}", id.hostname);

    // Read once: the ids go to status and metrics, the keys to the upgrade agent.
    let trusted = trusted_public_keys(Path::new(TRUSTED_KEYS_DIR));
    let mut state = NodeState {
        name: id.hostname.clone(),
        address: address.to_string(),
        key: id.public_key().to_string(),
        version: node.release.version.clone(),
        board: node.release.board.clone(),
        slot: node.slot.clone(),
        build_id: node.release.build_id.clone(),
        router: format!("{:?}", cfg.router).to_lowercase(),
        config_source: loaded.source.clone(),
        config_error: loaded.error.as_ref().map(Into::into),
        metrics_port: cfg.metrics.enabled.then_some(cfg.metrics.port),
        trusted_keys: trusted.iter().map(meshos_common::minisign::PublicKey::id).collect(),
        random,
        boot_fs,
        ..NodeState::default()
    };
    if state.trusted_keys.is_empty() {
        eprintln!("meshd: this image trusts no signing key: it will accept no upgrade");
    }

    let mut services: Vec<Service> = Vec::new();
    match start_router(&cfg, &id, dirs) {
        Ok(s) => services.push(s),
        Err(e) => eprintln!("meshd: router: {e}"),
    }
    match start_ssh(&cfg, dirs) {
        Ok(Some(s)) => services.push(s),
        Ok(None) => eprintln!("meshd: ssh off: mesh.yaml lists no ssh.authorizedKeys"),
        Err(e) => eprintln!("meshd: ssh: {e}"),
    }
    let bundle = served_slot(&node, dirs);
    match &bundle {
        Ok((_, name)) => state.bundle = Some(name.clone()),
        Err(why) => eprintln!("meshd: serving no bundle to neighbours: {why}"),
    }
    let shared = Arc::new(Mutex::new(state.clone()));
    let card = slots::running(&node.slot);
    let cache = crate::chunk_fetch::cache_dir(&dirs.state);
    let gateway = Arc::new(Mutex::new(crate::gateway::Report::default()));
    if cfg.gateway.offer {
        match crate::gateway::dns_service(&dirs.run) {
            Ok(s) => services.push(s),
            Err(e) => eprintln!("meshd: gateway: {e}"),
        }
    }
    if cfg.metrics.enabled {
        let shelf = card.as_ref().ok().map(|(disk, _)| Shelf::new(&dirs.boot, disk, &cache, true));
        let mesh = Arc::new(Mutex::new(crate::meshview::View::default()));
        let served = Arc::new(Mutex::new(crate::gateway::Served::default()));
        if let Err(e) = http::spawn(cfg.metrics.port, shared.clone(), dirs.run.clone(), bundle.map(|(source, _)| source), shelf, mesh.clone(), served.clone()) {
            eprintln!("meshd: {e}");
        }
        let view = mesh.clone();
        let agent = crate::gateway::Agent {
            settings: cfg.gateway.clone(),
            wired: cfg.wired.clone(),
            peers: cfg.peers.clone(),
            me: address,
            port: cfg.metrics.port,
            run_dir: dirs.run.clone(),
            served,
            report: gateway.clone(),
            candidates: Box::new(move || view.lock().map(|v| crate::gateway::candidates(&v.nodes(Instant::now()))).unwrap_or_default()),
        };
        if let Err(e) = crate::gateway::spawn(agent) {
            eprintln!("meshd: {e}");
        }
        let (state, run_dir) = (shared.clone(), dirs.run.clone());
        let me = move || {
            let s = state.lock().ok()?.clone();
            // One entry a neighbour: two that found each other at once keep two connections.
            let mut links: std::collections::BTreeMap<String, u64> = std::collections::BTreeMap::new();
            for p in crate::router::peers(&run_dir).unwrap_or_default().into_iter().filter(|p| p.up && !p.address.is_empty()) {
                *links.entry(p.address).or_default() += p.rx_bytes + p.tx_bytes;
            }
            Some(crate::meshview::Node {
                alerts: crate::status::alerts(&s),
                address: s.address,
                name: s.name,
                version: s.version,
                board: s.board,
                slot: s.slot,
                metrics_port: s.metrics_port,
                neighbours: links.keys().cloned().collect(),
                link_bytes: links.into_values().collect(),
                uptime_s: crate::node::uptime_s().unwrap_or(0),
                age_s: 0,
                gateway: s.gateway.offer.as_ref().is_some_and(|o| o.uplink_up),
            })
        };
        if let Err(e) = crate::meshview::spawn(mesh, me) {
            eprintln!("meshd: {e}");
        }
    }
    let rollout = Arc::new(Mutex::new(crate::rollout::Rollout::default()));
    match (&card, cfg.metrics.enabled) {
        (Ok((disk, running)), true) => {
            let agent = crate::rollout::Agent {
                boot_dir: dirs.boot.clone(),
                state_dir: dirs.state.clone(),
                run_dir: dirs.run.clone(),
                disk: disk.clone(),
                running: *running,
                board: node.release.board.clone(),
                version: node.release.version.clone(),
                address: address.to_string(),
                required: signatures_required(Path::new(SIGNATURES_REQUIRED), trusted.len()),
                trusted: trusted.clone(),
                port: cfg.metrics.port,
                auto: cfg.upgrade.auto,
                fetch: crate::chunk_fetch::Options {
                    parallel: cfg.upgrade.parallel,
                    rate: (cfg.upgrade.rate_limit_kbit > 0).then_some(cfg.upgrade.rate_limit_kbit * 1000 / 8),
                    cache,
                },
                shared: rollout.clone(),
            };
            if let Err(e) = crate::rollout::spawn(agent) {
                eprintln!("meshd: {e}");
            }
        }
        (Err(e), _) => eprintln!("meshd: no upgrades over the mesh: {e}"),
        (_, false) => eprintln!("meshd: no upgrades over the mesh: neighbours reach a node's releases on its metrics port, and mesh.yaml turns metrics off"),
    }
    if let Some(kb) = crate::node::rss_kib() {
        eprintln!("meshd: running (VmRSS {kb} kB)");
    }
    node.announce_once(&dirs.run).map_err(|e| cannot_start(e, &node, dirs, timeout))?;
    let mut health = Health::new(&node.slot, &dirs.state, timeout);
    state.slots = health.report.clone();

    let mut watchdog = match Watchdog::arm(Path::new(WATCHDOG), watchdog::WANTED) {
        Ok(Some(w)) => {
            eprintln!("meshd: watchdog {WATCHDOG} armed ({} s)", w.timeout.as_secs());
            Some(w)
        }
        Ok(None) => None,
        Err(e) => {
            eprintln!("meshd: watchdog: {e}");
            None
        }
    };
    let mut radios: BTreeMap<String, Managed> = BTreeMap::new();
    let mut dhcp: BTreeMap<String, Service> = BTreeMap::new();
    let mut ap_passphrase: Option<String> = None;
    let mut cjdns_links = (cfg.router == config::Router::Cjdns).then(|| router::cjdns_interfaces(&cfg.wired.peering));
    loop {
        manage_wired(&cfg.wired, &mut dhcp, &dirs.run);
        manage_radios(&mut radios, &cfg, &id, dirs, &mut ap_passphrase);
        if let Some(known) = cjdns_links.as_mut() {
            rebind_cjdns(known, &mut services, &cfg, &id, dirs);
        }
        for s in services.iter_mut().chain(dhcp.values_mut()).chain(radios.values_mut().flat_map(|m| m.services.iter_mut())) {
            s.tick();
        }
        health.check(&services, &dirs.run);
        if health.committed_now {
            health.committed_now = false;
            // Bundles that waited in updates/ while this slot was on trial.
            install_pending_updates(dirs);
        }
        state.slots = health.report.clone();
        state.upgrade = rollout.lock().map(|r| r.clone()).unwrap_or_default();
        state.gateway = gateway.lock().map(|g| g.clone()).unwrap_or_default();
        state.radios = radios.values().map(|m| RadioState::new(&m.radio, m.role, &m.result)).collect();
        let all = services.iter().chain(dhcp.values()).chain(radios.values().flat_map(|m| m.services.iter()));
        state.services = all.map(|s| s.status().into()).collect();
        let changed = shared.lock().map(|mut s| std::mem::replace(&mut *s, state.clone()) != state).unwrap_or(true);
        if changed {
            if let Err(e) = status::write(&dirs.run, &state) {
                eprintln!("meshd: {e}");
            }
        }
        if let Some(w) = watchdog.as_mut() {
            w.feed();
        }
        std::thread::sleep(SCAN_EVERY);
    }
}

/// A meshd that cannot start cannot mark its slot good. On a slot on trial it still reboots once
/// the health timeout has passed, as for a slot that starts but is unhealthy, so U-Boot counts the
/// attempt (else the node would stay on the broken slot); elsewhere the error ends meshd.
fn cannot_start(e: String, node: &Node, dirs: &Dirs, timeout: Duration) -> String {
    if Health::new(&node.slot, &dirs.state, timeout).trial.is_none() {
        return e;
    }
    eprintln!("meshd: cannot start: {e}");
    eprintln!("meshd: upgrade: slot {} is not healthy; rebooting in {} s so U-Boot counts the failed attempt", node.slot, timeout.as_secs());
    std::thread::sleep(timeout);
    if let Err(e) = crate::watchdog::reboot() {
        eprintln!("meshd: {e}");
    }
    loop {
        std::thread::sleep(Duration::from_secs(60));
    }
}

/// Sets up radios that appeared, forgets radios that left, retries failed ones now and then.
fn manage_radios(radios: &mut BTreeMap<String, Managed>, cfg: &Config, id: &Identity, dirs: &Dirs, passphrase: &mut Option<String>) {
    let present = radio::scan();
    radios.retain(|phy, m| {
        let still = present.iter().any(|r| r.phy == *phy && r.mac == m.radio.mac);
        if !still {
            eprintln!("meshd: {phy} ({}) is gone", m.radio.driver);
        }
        still
    });
    for r in present {
        if radios.get(&r.phy).is_some_and(|m| m.retry_at.is_none_or(|t| Instant::now() < t)) {
            continue;
        }
        let role = r.role(&cfg.radios);
        // Set with each radio: cfg80211 is only loaded once a radio's driver is.
        if role != Role::Off {
            if let Err(e) = radio::set_country(&cfg.mesh.country) {
                eprintln!("meshd: regulatory domain {}: {e}", cfg.mesh.country);
            }
        }
        let mut services = Vec::new();
        let result = match role {
            Role::Off => Ok(String::new()),
            Role::Mesh => radio::bring_up_mesh(&r, &cfg.mesh),
            Role::AccessPoint => (|| {
                if passphrase.is_none() {
                    *passphrase = Some(crate::identity::ap_passphrase(cfg.access_point.passphrase.as_deref(), &dirs.state, &dirs.boot)?);
                }
                let ssid = cfg.access_point.ssid.clone().unwrap_or_else(|| id.hostname.clone());
                // The node's one routed IPv6 prefix goes to its first access point.
                let taken = radios.values().any(|m| m.role == Role::AccessPoint && m.result.is_ok());
                let ipv6 = (!taken).then_some(id.address);
                services = access_point::bring_up(&r, &ssid, passphrase.as_deref().unwrap_or_default(), cfg, &dirs.run, ipv6)?;
                Ok(r.interface(Role::AccessPoint))
            })(),
        };
        match &result {
            Ok(iface) if role != Role::Off => eprintln!("meshd: {} ({}): {iface} up as {role:?}", r.phy, r.driver),
            Ok(_) => eprintln!("meshd: {} ({}): off, as mesh.yaml says", r.phy, r.driver),
            Err(e) => eprintln!("meshd: {} ({}): {e}; trying again in {} s", r.phy, r.driver, RETRY_RADIO_AFTER.as_secs()),
        }
        let retry_at = result.is_err().then(|| Instant::now() + RETRY_RADIO_AFTER);
        radios.insert(r.phy.clone(), Managed { radio: r, role, result, retry_at, services });
    }
}

/// Wired interfaces: those marked for peering or DHCP are brought up (the router needs their
/// link-local addresses), DHCP clients follow interfaces as they come and go (USB Ethernet).
fn manage_wired(wired: &Wired, dhcp: &mut BTreeMap<String, Service>, run_dir: &Path) {
    let Ok(dir) = fs::read_dir("/sys/class/net") else { return };
    let names: Vec<String> = dir.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect();
    dhcp.retain(|name, _| names.contains(name));
    for name in names {
        let peering = Wired::matches(&wired.peering, &name);
        let wants_dhcp = Wired::matches(&wired.dhcp, &name);
        if !(peering || wants_dhcp) {
            continue;
        }
        let flags = fs::read_to_string(Path::new("/sys/class/net").join(&name).join("flags")).unwrap_or_default();
        let up = u32::from_str_radix(flags.trim().trim_start_matches("0x"), 16).is_ok_and(|f| f & 1 == 1);
        if !up {
            if let Err(err) = command::run("ip", &["link", "set", &name, "up"]) {
                eprintln!("meshd: {err}");
            }
        }
        if wants_dhcp && !dhcp.contains_key(&name) {
            // Quietly retried every 30 s when no server answers (a link to another node).
            let args = ["-f", "-i", &name, "-s", UDHCPC_SCRIPT, "-t", "3", "-T", "2", "-A", "30"].map(String::from).to_vec();
            dhcp.insert(name.clone(), Service::new(&format!("dhcp-{name}"), "udhcpc", args, run_dir));
        }
    }
}

/// Installs bundles waiting in `updates/` on the boot partition (the offline path: a card
/// reader is all a person needs); reboots into the first one installed.
fn install_pending_updates(dirs: &Dirs) {
    let pending = crate::upgrade::pending(&dirs.boot);
    if let (Some(first), Some(r)) = (pending.first(), on_trial(dirs)) {
        eprintln!(
            "meshd: upgrade: {} waits: this slot runs {} on trial, and an install now would overwrite the last slot known good; it is installed once this one is committed",
            first.display(),
            r.version.as_deref().unwrap_or("?")
        );
        return;
    }
    for bundle in pending {
        eprintln!("meshd: upgrade: installing {} from the boot partition", bundle.display());
        let result = install_bundle(&crate::bundle_source::Source::File(bundle.clone()), dirs, false);
        if let Err(e) = &result {
            if matches!(e.kind, ErrorKind::Busy | ErrorKind::ReadOnly) {
                // Not refused: an install from the mesh runs, or the boot partition waits for
                // its repair at the next boot (and could not take the renamed bundle anyway).
                eprintln!("meshd: upgrade: {} waits for the next start: {e}", bundle.display());
                return;
            }
        }
        crate::upgrade::settle(&bundle, &result);
        match result {
            Ok(version) => {
                eprintln!("meshd: upgrade: {version} installed; rebooting into it");
                if let Err(e) = crate::watchdog::reboot() {
                    eprintln!("meshd: {e}");
                }
                // init is taking the system down; do not start services meanwhile.
                loop {
                    std::thread::sleep(Duration::from_secs(60));
                }
            }
            Err(e) => eprintln!("meshd: upgrade: {} refused: {e}; renamed .rejected, reason beside it", bundle.display()),
        }
    }
}

/// The install record, when the running slot is the one it installed and not yet committed.
fn on_trial(dirs: &Dirs) -> Option<crate::upgrade::Record> {
    let slot = Node::detect().ok()?.slot;
    crate::upgrade::read_record(&dirs.state)
        .filter(|r| r.step == crate::upgrade::Step::Installed && r.target.as_deref().and_then(Slot::parse) == Slot::parse(&slot))
}

/// The running slot, as neighbours can fetch it (see crate::slot_bundle), and its bundle's name.
fn served_slot(node: &Node, dirs: &Dirs) -> Result<(SlotSource, String), String> {
    let (disk, slot) = slots::running(&node.slot)?;
    let source = SlotSource { boot_dir: dirs.boot.clone(), disk, slot };
    let name = source.open()?.manifest.file_name();
    Ok((source, name))
}

/// Installs `bundle` into the slot not running (see crate::upgrade).
pub fn install_bundle(bundle: &crate::bundle_source::Source, dirs: &Dirs, allow_downgrade: bool) -> Result<String, crate::upgrade::InstallError> {
    let setup = |message: String| crate::upgrade::InstallError { step: crate::upgrade::Step::Verify, kind: ErrorKind::Node, message };
    let node = Node::detect().map_err(setup)?;
    let (disk, running) = slots::running(&node.slot).map_err(setup)?;
    let trusted = trusted_public_keys(Path::new(TRUSTED_KEYS_DIR));
    if trusted.is_empty() {
        return Err(crate::upgrade::InstallError {
            step: crate::upgrade::Step::Verify,
            kind: ErrorKind::Signature,
            message: "this image trusts no signing key, so it accepts no upgrade".into(),
        });
    }
    let target = crate::upgrade::Target {
        disk: &disk,
        running,
        compatible: format!("meshos-{}", node.release.board),
        version: node.release.version.clone(),
        trusted: &trusted,
        required: signatures_required(Path::new(SIGNATURES_REQUIRED), trusted.len()),
        boot_dir: &dirs.boot,
        state_dir: &dirs.state,
    };
    crate::upgrade::install(bundle, &target, allow_downgrade)
}

/// How long the node must look healthy before its slot is marked good.
const HEALTHY_FOR: Duration = Duration::from_secs(10);

/// The health check that commits a boot: meshd up (it runs this), the data partition mounted,
/// the router running without a restart for a while. Then the running slot is marked good in
/// the boot state record, once per boot.
struct Health {
    disk: Option<PathBuf>,
    running: Option<Slot>,
    healthy_since: Option<Instant>,
    report: crate::slots::SlotReport,
    /// This boot tries a newly installed slot: if it is not healthy by `deadline`, reboot.
    trial: Option<crate::upgrade::Record>,
    deadline: Instant,
    state_dir: PathBuf,
    /// Set once, when this boot's slot was just marked good.
    committed_now: bool,
}

impl Health {
    fn new(slot: &str, state_dir: &Path, timeout: Duration) -> Health {
        let cmdline = fs::read_to_string("/proc/cmdline").unwrap_or_default();
        let running = Slot::parse(slot);
        let found = slots::boot_disk(&cmdline).and_then(|d| slots::read_state(&d).map(|(s, _)| (d, s)));
        let record = crate::upgrade::read_record(state_dir).filter(|r| r.step == crate::upgrade::Step::Installed);
        let trial = record.filter(|r| r.target.as_deref().and_then(Slot::parse) == running);
        if let Some(r) = &trial {
            eprintln!("meshd: upgrade: trying {} in slot {slot}; it has {} s to become healthy", r.version.as_deref().unwrap_or("?"), timeout.as_secs());
        }
        let mut h = Health {
            disk: None,
            running,
            healthy_since: None,
            report: crate::slots::SlotReport::default(),
            trial,
            deadline: Instant::now() + timeout,
            state_dir: state_dir.to_path_buf(),
            committed_now: false,
        };
        match (found, running) {
            (Ok((disk, boot_state)), Some(slot)) => {
                h.report = slots::report(&boot_state, slot, None, false);
                h.disk = Some(disk);
            }
            (Err(e), _) => h.report.error = Some(format!("boot state: {e}")),
            (_, None) => h.report.error = Some(format!("unknown running slot '{slot}'")),
        }
        if let Some(e) = &h.report.error {
            eprintln!("meshd: {e}; this boot cannot be marked good");
        }
        h
    }

    fn check(&mut self, services: &[Service], run_dir: &Path) {
        let (Some(disk), Some(slot)) = (&self.disk, self.running) else { return };
        if self.report.marked_good {
            return;
        }
        let data = fs::read_to_string("/proc/mounts").unwrap_or_default().lines().any(|l| l.split_whitespace().nth(1) == Some("/data"));
        let router = services.iter().find(|s| s.name == "yggdrasil" || s.name == "cjdns").map(|s| s.status());
        let router_ok = router.is_some_and(|r| r.running);
        // A new slot must find again one of the neighbours the node had before it rebooted
        // (when it had any): a release that boots but cannot mesh would cut the node off.
        let before = self.trial.as_ref().map(|r| r.neighbours.clone()).unwrap_or_default();
        let regained = before.is_empty() || crate::router::peers(run_dir).is_ok_and(|p| p.iter().any(|p| p.up && before.contains(&p.address)));
        if !(data && router_ok && regained) {
            self.healthy_since = None;
            if self.trial.is_some() && Instant::now() > self.deadline {
                let why = if !data {
                    "the data partition is not mounted"
                } else if !router_ok {
                    "the router is not running"
                } else {
                    "it found none of the overlay neighbours it had before the reboot"
                };
                eprintln!("meshd: upgrade: slot {slot} is not healthy ({why}); rebooting so U-Boot counts the failed attempt");
                if let Err(e) = crate::watchdog::reboot() {
                    eprintln!("meshd: {e}");
                }
                self.trial = None;
            }
            return;
        }
        let since = *self.healthy_since.get_or_insert_with(Instant::now);
        if since.elapsed() < HEALTHY_FOR {
            return;
        }
        match crate::upgrade::commit_boot(disk, slot, &self.state_dir) {
            Ok(report) => {
                // (after the record: whoever reads this line finds both on the card)
                match &report.rolled_back_from {
                    Some(from) => eprintln!("meshd: ROLLBACK: slot {from} ran out of boot attempts; slot {slot} is running and marked good"),
                    None => eprintln!(
                        "meshd: slot {slot} healthy, marked good (order {}, attempts left A {} B {})",
                        report.order.join(" "),
                        report.a_left,
                        report.b_left
                    ),
                }
                self.trial = None;
                self.report = report;
                self.committed_now = true;
            }
            Err(e) => {
                eprintln!("meshd: marking slot {slot} good: {e}");
                self.report.error = Some(e);
                self.disk = None;
            }
        }
    }
}

/// Public keys baked into the image by meshimg; bundles must be signed by one of them.
const TRUSTED_KEYS_DIR: &str = "/usr/share/meshos/keys";

/// The readable minisign public keys in `dir`.
fn trusted_public_keys(dir: &Path) -> Vec<meshos_common::minisign::PublicKey> {
    let Ok(entries) = fs::read_dir(dir) else { return Vec::new() };
    let mut keys: Vec<_> = entries
        .flatten()
        .filter_map(|e| {
            let text = fs::read_to_string(e.path()).ok()?;
            match meshos_common::minisign::PublicKey::parse(&text) {
                Ok(k) => Some(k),
                Err(err) => {
                    eprintln!("meshd: {}: {err}", e.path().display());
                    None
                }
            }
        })
        .collect();
    keys.sort_by_key(|k| k.id());
    keys
}

/// How many trusted keys must have signed a release, as meshimg baked it into the image
/// (`--signatures-required`); 1 when the file is absent.
const SIGNATURES_REQUIRED: &str = "/usr/share/meshos/signatures-required";

fn signatures_required(path: &Path, trusted: usize) -> usize {
    match fs::read_to_string(path) {
        Err(_) => 1,
        Ok(text) => text.trim().parse::<usize>().ok().filter(|n| *n >= 1).unwrap_or_else(|| {
            // A damaged file must not lower the bar: require every trusted key.
            eprintln!("meshd: {}: '{}' is not a number of signatures; requiring every trusted key", path.display(), text.trim());
            trusted.max(1)
        }),
    }
}

const UDHCPC_SCRIPT: &str = "/usr/share/meshos/udhcpc.script";

fn start_router(cfg: &Config, id: &Identity, dirs: &Dirs) -> Result<Service, String> {
    let launch = router::launch(cfg, id, &dirs.state, &dirs.run)?;
    if !Path::new("/dev/net/tun").exists() {
        command::run("modprobe", &["tun"])?;
    }
    // It holds the router's private key.
    crate::durable::write_private(&launch.config_path, launch.config_text.as_bytes())?;
    router::forget_other(cfg, &dirs.run);
    Ok(Service::new(launch.name, launch.program, launch.args, &dirs.run))
}

/// cjdns binds its interfaces only at start: when the links change (a radio became a mesh
/// point, a USB Ethernet was plugged in), its config is written anew and it is restarted.
fn rebind_cjdns(known: &mut Vec<String>, services: &mut [Service], cfg: &Config, id: &Identity, dirs: &Dirs) {
    let now = router::cjdns_interfaces(&cfg.wired.peering);
    if now == *known {
        return;
    }
    eprintln!("meshd: cjdns: links now {}; restarting it to bind them", now.join(" "));
    *known = now;
    let Some(service) = services.iter_mut().find(|s| s.name == "cjdns") else { return };
    match router::launch(cfg, id, &dirs.state, &dirs.run).and_then(|l| crate::durable::write_private(&l.config_path, l.config_text.as_bytes())) {
        Ok(()) => service.stop(),
        Err(e) => eprintln!("meshd: cjdns: {e}"),
    }
}

/// dropbear, key logins only (`-s`), host key kept on the data partition.
fn start_ssh(cfg: &Config, dirs: &Dirs) -> Result<Option<Service>, String> {
    if cfg.ssh.authorized_keys.is_empty() {
        return Ok(None);
    }
    let home = Path::new("/root/.ssh");
    fs::create_dir_all(home).map_err(|e| format!("{}: {e}", home.display()))?;
    let keys = home.join("authorized_keys");
    crate::durable::write_private(&keys, (cfg.ssh.authorized_keys.join("\n") + "\n").as_bytes())?;
    let host_key = dirs.state.join("dropbear_ed25519_host_key");
    if !host_key.exists() {
        command::run("dropbearkey", &["-t", "ed25519", "-f", &host_key.display().to_string()])?;
    }
    let args = ["-F", "-E", "-s", "-r", &host_key.display().to_string(), "-p", "22"].map(String::from).to_vec();
    Ok(Some(Service::new("dropbear", "dropbear", args, &dirs.run)))
}

/// mesh-orange's conf.d: every `*.tar.gz` on the FAT partition unpacked over /etc, in name
/// order, so a later archive wins. One bad archive is reported and skipped.
fn apply_conf_d(dir: &Path) {
    let Ok(entries) = fs::read_dir(dir) else { return };
    let mut archives: Vec<PathBuf> = entries.flatten().map(|e| e.path()).filter(|p| p.to_string_lossy().ends_with(".tar.gz")).collect();
    archives.sort();
    for a in archives {
        match command::run("tar", &["-xzf", &a.display().to_string(), "-C", "/etc"]) {
            Ok(_) => eprintln!("meshd: applied {} over /etc", a.display()),
            Err(e) => eprintln!("meshd: skipped {}: {e}", a.display()),
        }
    }
}
