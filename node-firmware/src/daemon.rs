//! `meshd run`: the node's life. Reads the config, makes or loads the identity, starts the
//! router, ssh and metrics, then every few seconds finds radios (new, gone, replugged), sets
//! them up in their role, keeps the services running and publishes the status.

use crate::config::{self, Config, Role};
use crate::dirs::Dirs;
use crate::held::Shelf;
use crate::identity::Identity;
use crate::node::Node;
use crate::radio::{self, Radio};
use crate::slot_bundle::SlotSource;
use crate::status::{self, NodeState, RadioState};
use crate::supervisor::Service;
use crate::watchdog::{self, Watchdog};
use crate::{access_point, health, http, local_install, router, services, slots, trust, wired};
use std::collections::BTreeMap;
use std::fs;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const SCAN_EVERY: Duration = Duration::from_secs(2);
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
        logln!("meshd: config error: {e}");
        logln!("meshd: running with {}; fix the file and restart the node", loaded.source);
    }
    let cfg = loaded.config;
    crate::conf_d::apply(&dirs.boot.join("conf.d"));

    // First, so that a boot that installs and reboots also leaves a seed for the next.
    let random = crate::entropy::start(&dirs.state);
    local_install::install_pending_updates(dirs);

    let timeout = Duration::from_secs(cfg.upgrade.health_timeout);
    let boot_fs = crate::boot_check::read(Path::new(crate::boot_check::LOG));
    match boot_fs.result.as_str() {
        "clean" => {}
        "repaired" => logln!("meshd: boot partition repaired at boot: {}", boot_fs.changes.join(" ")),
        other => logln!("meshd: boot partition check {other}: {} (see {})", boot_fs.changes.join(" "), crate::boot_check::LOG),
    }
    let id = Identity::load_or_create(&dirs.state, &cfg.mesh.id).map_err(|e| health::cannot_start(e, &node, &dirs.state, timeout))?;
    id.apply_hostname();
    // cjdns has an address of its own, from its own keys.
    let address = router::overlay_address(&cfg, &id, &dirs.state).unwrap_or_else(|e| {
        logln!("meshd: router: {e}");
        id.address
    });
    logln!("meshd: {} overlay address {address}", id.hostname);

    // Read once: the ids go to status and metrics, the keys to the upgrade agent.
    let trusted = trust::public_keys(&crate::machine::in_root(trust::KEYS_DIR));
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
        logln!("meshd: this image trusts no signing key: it will accept no upgrade");
    }

    // Before anything listens: what the access points' clients and the overlay may reach.
    let policy = crate::firewall::Policy {
        overlay: router::TUN_NAME.into(),
        pages: cfg.metrics.enabled.then_some(cfg.metrics.port),
        ssh_from_clients: cfg.ssh.from_access_points,
    };
    if let Err(e) = crate::firewall::apply(&dirs.run, &policy) {
        logln!("meshd: {e}");
    }
    let mut services: Vec<Service> = Vec::new();
    match services::start_router(&cfg, &id, dirs) {
        Ok(s) => services.push(s),
        Err(e) => logln!("meshd: router: {e}"),
    }
    match services::start_ssh(&cfg, dirs) {
        Ok(Some(s)) => services.push(s),
        Ok(None) => logln!("meshd: ssh off: mesh.yaml lists no ssh.authorizedKeys"),
        Err(e) => logln!("meshd: ssh: {e}"),
    }
    let bundle = served_slot(&node, dirs);
    match &bundle {
        Ok((_, name)) => state.bundle = Some(name.clone()),
        Err(why) => logln!("meshd: serving no bundle to neighbours: {why}"),
    }
    let shared = Arc::new(Mutex::new(state.clone()));
    let card = slots::running(&node.slot);
    let cache = crate::chunk_fetch::cache_dir(&dirs.state);
    let gateway = Arc::new(Mutex::new(crate::gateway::Report::default()));
    if cfg.gateway.offer {
        match crate::gateway::dns_service(&dirs.run) {
            Ok(s) => services.push(s),
            Err(e) => logln!("meshd: gateway: {e}"),
        }
    }
    let mesh = Arc::new(Mutex::new(crate::meshview::View::default()));
    if cfg.metrics.enabled {
        let shelf = card.as_ref().ok().map(|(disk, _)| Shelf::new(&dirs.boot, disk, &cache, true));
        let served = Arc::new(Mutex::new(crate::gateway::Served::default()));
        if let Err(e) = http::spawn(cfg.metrics.port, shared.clone(), dirs.run.clone(), bundle.map(|(source, _)| source), shelf, mesh.clone(), served.clone()) {
            logln!("meshd: {e}");
        }
        let view = mesh.clone();
        let trusted: Vec<std::net::Ipv6Addr> = cfg.gateway.trusted.iter().filter_map(|e| crate::identity::node_address(e)).collect();
        let agent = crate::gateway::Agent {
            settings: cfg.gateway.clone(),
            wired: cfg.wired.clone(),
            peers: cfg.peers.clone(),
            me: address,
            port: cfg.metrics.port,
            run_dir: dirs.run.clone(),
            served,
            report: gateway.clone(),
            candidates: Box::new(move || view.lock().map(|v| crate::gateway::candidates(&v.nodes(Instant::now()), &trusted)).unwrap_or_default()),
        };
        if let Err(e) = crate::gateway::spawn(agent) {
            logln!("meshd: {e}");
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
                gateway: s.gateway.offer.as_ref().is_some_and(|o| o.uplink_up),
                failed: s.upgrade.failed,
                ..Default::default()
            })
        };
        let signer = crate::router::record_secret(&cfg, &id, &dirs.state).and_then(|secret| crate::identity::record_signer(secret, &dirs.state));
        match signer.and_then(|signer| crate::meshview::spawn(mesh.clone(), signer, me)) {
            Ok(()) => {}
            Err(e) => logln!("meshd: mesh view: {e}"),
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
                required: trust::signatures_required(&crate::machine::in_root(trust::SIGNATURES_REQUIRED), trusted.len()),
                trusted: trusted.clone(),
                port: cfg.metrics.port,
                auto: cfg.upgrade.auto,
                health_timeout: Duration::from_secs(cfg.upgrade.health_timeout),
                fetch: crate::chunk_fetch::Options {
                    parallel: cfg.upgrade.parallel,
                    rate: (cfg.upgrade.rate_limit_kbit > 0).then_some(cfg.upgrade.rate_limit_kbit * 1000 / 8),
                    cache,
                },
                shared: rollout.clone(),
                view: mesh,
            };
            if let Err(e) = crate::rollout::spawn(agent) {
                logln!("meshd: {e}");
            }
        }
        (Err(e), _) => logln!("meshd: no upgrades over the mesh: {e}"),
        (_, false) => logln!("meshd: no upgrades over the mesh: neighbours reach a node's releases on its metrics port, and mesh.yaml turns metrics off"),
    }
    if let Some(kb) = crate::node::rss_kib() {
        logln!("meshd: running (VmRSS {kb} kB)");
    }
    node.announce_once(&dirs.run).map_err(|e| health::cannot_start(e, &node, &dirs.state, timeout))?;
    let mut health = health::Health::new(&node.slot, &dirs.state, timeout);
    state.slots = health.report.clone();

    let device = crate::machine::current().watchdog();
    let wanted = watchdog::wanted(&crate::machine::current().cmdline().unwrap_or_default()).unwrap_or_else(|(default, why)| {
        logln!("meshd: watchdog: {why}");
        default
    });
    let mut watchdog = match device.map(|d| Watchdog::arm(d, wanted)) {
        Some(Ok(Some(w))) => {
            logln!("meshd: watchdog {} armed ({} s)", device.unwrap_or(Path::new("?")).display(), w.timeout.as_secs());
            Some(w)
        }
        None | Some(Ok(None)) => None,
        Some(Err(e)) => {
            logln!("meshd: watchdog: {e}");
            None
        }
    };
    let mut radios: BTreeMap<String, Managed> = BTreeMap::new();
    let mut dhcp: BTreeMap<String, Service> = BTreeMap::new();
    let mut ap_passphrase: Option<String> = None;
    let mut cjdns_links = (cfg.router == config::Router::Cjdns).then(|| router::cjdns_interfaces(&cfg.wired.peering));
    loop {
        wired::manage(&cfg.wired, &mut dhcp, &dirs.run);
        manage_radios(&mut radios, &cfg, &id, dirs, &mut ap_passphrase);
        if let Some(known) = cjdns_links.as_mut() {
            services::rebind_cjdns(known, &mut services, &cfg, &id, dirs);
        }
        for s in services.iter_mut().chain(dhcp.values_mut()).chain(radios.values_mut().flat_map(|m| m.services.iter_mut())) {
            s.tick();
        }
        health.check(&services, &dirs.run);
        if health.committed_now {
            health.committed_now = false;
            // Bundles that waited in updates/ while this slot was on trial.
            local_install::install_pending_updates(dirs);
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
                logln!("meshd: {e}");
            }
        }
        if let Some(w) = watchdog.as_mut() {
            w.feed();
        }
        std::thread::sleep(SCAN_EVERY);
    }
}

/// Sets up radios that appeared, forgets radios that left, retries failed ones now and then.
fn manage_radios(radios: &mut BTreeMap<String, Managed>, cfg: &Config, id: &Identity, dirs: &Dirs, passphrase: &mut Option<String>) {
    let present = crate::machine::current().radios();
    radios.retain(|phy, m| {
        let still = present.iter().any(|r| r.phy == *phy && r.mac == m.radio.mac);
        if !still {
            logln!("meshd: {phy} ({}) is gone", m.radio.driver);
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
                logln!("meshd: regulatory domain {}: {e}", cfg.mesh.country);
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
            Ok(iface) if role != Role::Off => logln!("meshd: {} ({}): {iface} up as {role:?}", r.phy, r.driver),
            Ok(_) => logln!("meshd: {} ({}): off, as mesh.yaml says", r.phy, r.driver),
            Err(e) => logln!("meshd: {} ({}): {e}; trying again in {} s", r.phy, r.driver, RETRY_RADIO_AFTER.as_secs()),
        }
        let retry_at = result.is_err().then(|| Instant::now() + RETRY_RADIO_AFTER);
        radios.insert(r.phy.clone(), Managed { radio: r, role, result, retry_at, services });
    }
}

/// The running slot, as neighbours can fetch it (see crate::slot_bundle), and its bundle's name.
fn served_slot(node: &Node, dirs: &Dirs) -> Result<(SlotSource, String), String> {
    let (disk, slot) = slots::running(&node.slot)?;
    let source = SlotSource { boot_dir: dirs.boot.clone(), disk, slot };
    let name = source.open()?.manifest.file_name();
    Ok((source, name))
}
