//! What the node is doing, as one document: kept up to date by the daemon in
//! `<run>/status.json`, rendered by `meshd status` as a table or JSON, and read by the metrics.

use crate::config::{ConfigError, Role};
use crate::radio::Radio;
use crate::supervisor::ServiceStatus;
use serde::{Deserialize, Serialize};
use std::fmt::Write;
use std::path::Path;

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct NodeState {
    pub name: String,
    pub address: String,
    /// The router's public key in hex (what a gateway's `gateway.allow` lists).
    #[serde(default)]
    pub key: String,
    pub version: String,
    pub board: String,
    pub slot: String,
    pub build_id: String,
    pub router: String,
    pub config_source: String,
    pub config_error: Option<ConfigErrorDoc>,
    pub radios: Vec<RadioState>,
    pub services: Vec<ServiceDoc>,
    pub metrics_port: Option<u16>,
    /// Ids of the signing keys this image accepts upgrade bundles from.
    pub trusted_keys: Vec<String>,
    /// The A/B boot state as this boot found and left it.
    pub slots: crate::slots::SlotReport,
    /// The running slot's bundle, which neighbours can fetch at `/bundle` (None: not served).
    pub bundle: Option<String>,
    /// Upgrades over the mesh: what the slots hold, what the agent is doing.
    #[serde(default)]
    pub upgrade: crate::rollout::Rollout,
    /// How this start got the kernel's random numbers.
    #[serde(default)]
    pub random: crate::entropy::Report,
    /// What the initramfs's check of the boot partition found this boot.
    #[serde(default)]
    pub boot_fs: crate::boot_check::Report,
    /// Internet access: this node's offer as a gateway, the gateway it uses.
    #[serde(default)]
    pub gateway: crate::gateway::Report,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ConfigErrorDoc {
    pub file: String,
    pub line: Option<usize>,
    pub key: String,
    pub message: String,
    pub text: String,
}

impl From<&ConfigError> for ConfigErrorDoc {
    fn from(e: &ConfigError) -> ConfigErrorDoc {
        ConfigErrorDoc { file: e.file.display().to_string(), line: e.line, key: e.key.clone(), message: e.message.clone(), text: e.to_string() }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct RadioState {
    pub phy: String,
    pub driver: String,
    pub usb: Option<String>,
    pub mac: String,
    pub role: String,
    pub interface: String,
    pub error: Option<String>,
}

impl RadioState {
    pub fn new(radio: &Radio, role: Role, result: &Result<String, String>) -> RadioState {
        RadioState {
            phy: radio.phy.clone(),
            driver: radio.driver.clone(),
            usb: radio.usb.clone(),
            mac: radio.mac.clone(),
            role: format!("{role:?}").to_lowercase(),
            interface: result.as_ref().cloned().unwrap_or_default(),
            error: result.as_ref().err().cloned(),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ServiceDoc {
    pub name: String,
    pub running: bool,
    pub restarts: u32,
    pub last_exit: Option<String>,
}

impl From<ServiceStatus> for ServiceDoc {
    fn from(s: ServiceStatus) -> ServiceDoc {
        ServiceDoc { name: s.name, running: s.running, restarts: s.restarts, last_exit: s.last_exit }
    }
}

pub fn path(run_dir: &Path) -> std::path::PathBuf {
    run_dir.join("status.json")
}

/// Replaces the status document whole (temp file + rename), so a reader never sees half.
pub fn write(run_dir: &Path, state: &NodeState) -> Result<(), String> {
    let p = path(run_dir);
    let text = serde_json::to_string_pretty(state).expect("status serialises");
    crate::durable::write(&p, text.as_bytes(), 0o644).map_err(|e| format!("{}: {e}", p.display()))
}

pub fn read(run_dir: &Path) -> Result<NodeState, String> {
    let p = path(run_dir);
    let text = std::fs::read_to_string(&p).map_err(|e| format!("{}: {e} (is meshd running?)", p.display()))?;
    serde_json::from_str(&text).map_err(|e| format!("{}: {e}", p.display()))
}

/// The human table `meshd status` prints; `peers` are the router's, asked live.
/// What is wrong on the node, one line each, as the mesh map shows it.
pub fn alerts(state: &NodeState) -> Vec<String> {
    let mut a = Vec::new();
    if let Some(e) = &state.config_error {
        a.push(format!("mesh.yaml: {}", e.text));
    }
    if let Some(from) = &state.slots.rolled_back_from {
        a.push(format!("rolled back: slot {from} ran out of boot attempts"));
    }
    if let Some(e) = &state.slots.error {
        a.push(format!("slots: {e}"));
    }
    for r in state.radios.iter().filter(|r| r.error.is_some()) {
        a.push(format!("radio {} ({}): {}", r.phy, r.driver, r.error.as_deref().unwrap_or_default()));
    }
    for s in state.services.iter().filter(|s| !s.running) {
        a.push(format!("{} is not running", s.name));
    }
    if state.boot_fs.result == "failed" {
        a.push("the boot partition could not be checked".into());
    }
    if let Some(o) = state.gateway.offer.as_ref().filter(|o| !o.uplink_up) {
        a.push(format!("gateway: uplink {} is down", if o.uplink.is_empty() { "(none)" } else { &o.uplink }));
    }
    if let Some(r) = state.upgrade.last_install.as_ref().filter(|r| r.step == crate::upgrade::Step::Failed) {
        a.push(format!("install of {} failed: {}", r.version.as_deref().unwrap_or("?"), r.error.as_deref().unwrap_or("?")));
    }
    a.iter_mut().for_each(|l| l.truncate(l.floor_char_boundary(200)));
    a
}

pub fn render(state: &NodeState, peers: &Result<Vec<crate::router::Peer>, String>) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "name     {}", state.name);
    let _ = writeln!(s, "address  {}", state.address);
    let _ = writeln!(s, "version  {} ({}), slot {}, build {}", state.version, state.board, state.slot, state.build_id);
    let sl = &state.slots;
    if let Some(e) = &sl.error {
        let _ = writeln!(s, "slots    {e}");
    } else {
        let good = if sl.marked_good { "marked good" } else { "not yet marked good (health check pending)" };
        let _ = writeln!(s, "slots    running {}, order {}, attempts left A {} B {}; {good}", sl.running, sl.order.join(" "), sl.a_left, sl.b_left);
    }
    if let Some(from) = &sl.rolled_back_from {
        let _ = writeln!(s, "  ROLLBACK  slot {from} ran out of boot attempts; the node went back to slot {}", sl.running);
    }
    let _ = writeln!(s, "config   {}", state.config_source);
    match state.boot_fs.result.as_str() {
        "clean" | "" => {}
        "repaired" => {
            let _ = writeln!(s, "boot fs  repaired at boot: {}", state.boot_fs.changes.join(" "));
        }
        other => {
            let _ = writeln!(s, "boot fs  check {other}: {} ({})", state.boot_fs.changes.join(" "), crate::boot_check::LOG);
        }
    }
    let r = &state.random;
    if let Some(e) = &r.error {
        let _ = writeln!(s, "random   {e}");
    } else if r.waited_s > 0.0 {
        let _ = writeln!(s, "random   waited {:.1} s at start for the kernel's random numbers (no saved seed yet)", r.waited_s);
    } else if r.seeded {
        let _ = writeln!(s, "random   seeded at start from the seed saved on the data partition");
    }
    if state.trusted_keys.is_empty() {
        let _ = writeln!(s, "upgrades none accepted: this image trusts no signing key");
    } else {
        let _ = writeln!(s, "upgrades signed by {}", state.trusted_keys.join(", "));
    }
    if let Some(e) = &state.config_error {
        let _ = writeln!(s, "  error  {}", e.text);
    }
    let _ = writeln!(s, "key      {}", state.key);
    gateway_lines(&mut s, &state.gateway);
    let _ = writeln!(s, "\nRADIO   DRIVER           ROLE         INTERFACE  STATE");
    if state.radios.is_empty() {
        let _ = writeln!(s, "(none)");
    }
    for r in &state.radios {
        let st = r.error.as_deref().unwrap_or("up");
        let _ = writeln!(s, "{:<7} {:<16} {:<12} {:<10} {st}", r.phy, r.driver, r.role, r.interface);
    }
    let _ = writeln!(s, "\nSERVICE              STATE     RESTARTS");
    for svc in &state.services {
        let st = if svc.running { "running" } else { "stopped" };
        let _ = writeln!(s, "{:<20} {st:<9} {}", svc.name, svc.restarts);
    }
    let _ = writeln!(s, "\nPEER ({})", state.router);
    match peers {
        Ok(p) if p.is_empty() => {
            let _ = writeln!(s, "(none yet)");
        }
        Ok(p) => {
            for peer in p {
                let _ = writeln!(s, "{:<40} {} rx {} tx {}", peer.address, peer.remote, peer.rx_bytes, peer.tx_bytes);
            }
        }
        Err(e) => {
            let _ = writeln!(s, "(unknown: {e})");
        }
    }
    if let Some(port) = state.metrics_port {
        let _ = writeln!(s, "\nmetrics  http://[{}]:{port}/metrics", state.address);
    }
    s
}

/// `gateway  …` lines: the offer, the gateway in use, refusals.
fn gateway_lines(s: &mut String, g: &crate::gateway::Report) {
    if let Some(o) = &g.offer {
        let uplink = match (o.uplink.as_str(), o.uplink_up) {
            ("", _) => "no uplink (no default route on a wired.dhcp interface)".to_string(),
            (u, true) => format!("uplink {u} up"),
            (u, false) => format!("uplink {u} DOWN (its router does not answer)"),
        };
        let _ = writeln!(s, "gateway  offering: {uplink}; {} clients, rx {} tx {}", o.clients, o.rx_bytes, o.tx_bytes);
    }
    if let Some(u) = &g.using {
        let health = if u.healthy { "passing traffic" } else { "NOT passing traffic" };
        let _ = writeln!(
            s,
            "gateway  using {} ({}), {} hops, lease {}, {health}, for {} s; rx {} tx {}",
            u.name, u.address, u.hops, u.lease, u.since_s, u.rx_bytes, u.tx_bytes
        );
    } else if let Some(note) = &g.note {
        let _ = writeln!(s, "gateway  none: {note}");
    }
    for r in &g.refused {
        let _ = writeln!(s, "gateway  REFUSED by {} ({}): {}", r.name, r.address, r.reason);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_round_trips_and_renders_errors() {
        let dir = std::env::temp_dir().join(format!("meshd-status-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let state = NodeState {
            name: "tomesh-533a".into(),
            config_error: Some(ConfigErrorDoc {
                file: "/boot/mesh.yaml".into(),
                line: Some(3),
                key: "mesh.id".into(),
                message: "x".into(),
                text: "/boot/mesh.yaml:3: mesh.id: x".into(),
            }),
            ..NodeState::default()
        };
        write(&dir, &state).unwrap();
        assert_eq!(read(&dir).unwrap(), state);
        let text = render(&state, &Ok(vec![]));
        assert!(text.contains("error  /boot/mesh.yaml:3: mesh.id: x") && text.contains("(none yet)"), "{text}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
