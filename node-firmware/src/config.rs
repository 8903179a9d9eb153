//! `mesh.yaml`: the node settings a person edits on the FAT partition.
//!
//! Parsing is strict (unknown keys are errors) and every error names the file, the line and the
//! key. A bad file never stops the node: [`load`] falls back to the last good copy kept on the
//! data partition, or to the defaults on first boot, and hands back the error for the console,
//! `meshd status` and the metrics.

use serde::{Deserialize, Serialize};
use std::fmt;
use std::fs;
use std::path::{Path, PathBuf};

pub const API_VERSION: &str = "meshos/v1";

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct Config {
    pub api_version: String,
    pub mesh: Mesh,
    pub radios: Vec<RadioRule>,
    pub access_point: AccessPoint,
    pub ssh: Ssh,
    /// Overlay peers reached over the internet, as the router spells them (`tls://host:port`).
    pub peers: Vec<String>,
    pub wired: Wired,
    pub router: Router,
    pub metrics: Metrics,
    pub upgrade: Upgrade,
    pub gateway: Gateway,
}

/// Internet access through gateway nodes (crate::gateway).
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, Default)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct Gateway {
    /// Share this node's uplink (a wired DHCP network with a default route) with the mesh.
    pub offer: bool,
    /// Whether this node and its access point clients reach the internet through the mesh's
    /// gateways (when it offers none itself).
    #[serde(rename = "use")]
    pub use_gateways: GatewayUse,
    /// Who may use this gateway, by Yggdrasil public key (64 hex digits) or overlay address;
    /// empty: every node of this gateway's mesh view.
    pub allow: Vec<String>,
    /// The gateways this node and its clients may use, by Yggdrasil public key or overlay
    /// address; empty: any gateway of the mesh view.
    pub trusted: Vec<String>,
    /// Let the mesh reach the uplink's own networks (the owner's router and LAN: RFC 1918,
    /// link-local, shared and the uplink's prefixes); by default only the internet beyond.
    pub allow_lan: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, Default)]
#[serde(rename_all = "camelCase")]
pub enum GatewayUse {
    /// The best live gateway: fewest overlay hops.
    #[default]
    Auto,
    Off,
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct Upgrade {
    /// Seconds a newly installed slot has to pass its health check (meshd up, data partition
    /// mounted, router running) before meshd reboots it, so U-Boot counts a failed attempt.
    pub health_timeout: u64,
    /// Install newer releases that neighbours offer (signed by a trusted key) by itself.
    pub auto: bool,
    /// Upper bound on the bytes an upgrade fetches from neighbours, in kbit/s (0: none), so
    /// an upgrade spreading through the mesh does not starve its users' traffic.
    pub rate_limit_kbit: u64,
    /// Chunks fetched at once, spread over the neighbours that offer them.
    pub parallel: usize,
}

impl Default for Upgrade {
    fn default() -> Upgrade {
        Upgrade { health_timeout: 180, auto: true, rate_limit_kbit: 0, parallel: 4 }
    }
}

/// Wired interfaces, by name (`*` allowed at the end: `eth*`).
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct Wired {
    /// Where the router finds neighbours by link-local multicast.
    pub peering: Vec<String>,
    /// Where the node asks for an IPv4 address (a home LAN, an uplink).
    pub dhcp: Vec<String>,
}

impl Default for Wired {
    fn default() -> Wired {
        Wired { peering: vec!["eth*".into()], dhcp: vec!["eth*".into()] }
    }
}

impl Wired {
    /// Whether `name` matches one of `patterns`.
    pub fn matches(patterns: &[String], name: &str) -> bool {
        patterns.iter().any(|p| p.strip_suffix('*').map_or(*p == name, |stem| name.starts_with(stem)))
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct Mesh {
    /// 802.11s mesh id; every node of one mesh uses the same.
    pub id: String,
    /// MHz. `channel` is the other way to say it; when both are given they must agree.
    pub frequency: u32,
    pub channel: Option<u32>,
    pub ht_mode: HtMode,
    pub country: String,
    /// dBm; weaker neighbours are not peered with.
    pub rssi_threshold: i32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
pub enum HtMode {
    #[serde(rename = "NOHT")]
    NoHt,
    #[serde(rename = "HT20")]
    Ht20,
    #[serde(rename = "HT40+")]
    Ht40Plus,
    #[serde(rename = "HT40-")]
    Ht40Minus,
}

impl HtMode {
    /// The spelling `iw ... mesh join ... freq` takes.
    pub fn iw(self) -> &'static str {
        match self {
            HtMode::NoHt => "NOHT",
            HtMode::Ht20 => "HT20",
            HtMode::Ht40Plus => "HT40+",
            HtMode::Ht40Minus => "HT40-",
        }
    }
}

/// Which radios do what. Rules are tried in order; the first whose every given field matches
/// decides. Radios no rule matches do mesh.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RadioRule {
    /// Kernel driver, e.g. `ath9k_htc`, `rt2800usb`, `brcmfmac`, `mac80211_hwsim`.
    pub driver: Option<String>,
    /// USB vendor:product, e.g. `0cf3:9271`.
    pub usb: Option<String>,
    /// MAC address, e.g. `aa:bb:cc:dd:ee:ff`.
    pub mac: Option<String>,
    pub role: Role,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub enum Role {
    Mesh,
    AccessPoint,
    Off,
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, Default)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct AccessPoint {
    /// Default: the node's hostname.
    pub ssid: Option<String>,
    /// WPA2 passphrase, 8 to 63 characters. Default: one generated per node, written to
    /// `ap-passphrase.txt` on the FAT partition.
    pub passphrase: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, Default)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct Ssh {
    pub authorized_keys: Vec<String>,
    /// Let the people on the access points reach ssh (this node's and, over the overlay, other
    /// nodes'); by default only the mesh and wired networks do (crate::firewall).
    pub from_access_points: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub enum Router {
    Yggdrasil,
    Cjdns,
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct Metrics {
    pub enabled: bool,
    pub port: u16,
}

impl Default for Config {
    fn default() -> Config {
        Config {
            api_version: API_VERSION.into(),
            mesh: Mesh::default(),
            radios: Vec::new(),
            access_point: AccessPoint::default(),
            ssh: Ssh::default(),
            peers: Vec::new(),
            wired: Wired::default(),
            router: Router::Yggdrasil,
            metrics: Metrics::default(),
            upgrade: Upgrade::default(),
            gateway: Gateway::default(),
        }
    }
}

impl Default for Mesh {
    fn default() -> Mesh {
        Mesh { id: "tomesh".into(), frequency: 2412, channel: None, ht_mode: HtMode::Ht20, country: "CA".into(), rssi_threshold: -65 }
    }
}

impl Default for Metrics {
    fn default() -> Metrics {
        Metrics { enabled: true, port: 9100 }
    }
}

/// What is wrong with a mesh.yaml, precise enough to fix it from a laptop.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ConfigError {
    pub file: PathBuf,
    pub line: Option<usize>,
    /// Dotted path of the offending key (`mesh.frequency`), empty when the file as a whole is bad.
    pub key: String,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file.display())?;
        if let Some(line) = self.line {
            write!(f, ":{line}")?;
        }
        if !self.key.is_empty() {
            write!(f, ": {}", self.key)?;
        }
        write!(f, ": {}", self.message)
    }
}

/// 2.4 GHz channels 1–14, then the 5 GHz channels 802.11s meshes use (no DFS radar checks).
pub fn channel_of(mhz: u32) -> Option<u32> {
    match mhz {
        2412..=2472 if (mhz - 2412).is_multiple_of(5) => Some((mhz - 2407) / 5),
        2484 => Some(14),
        5180 | 5200 | 5220 | 5240 | 5745 | 5765 | 5785 | 5805 | 5825 => Some((mhz - 5000) / 5),
        _ => None,
    }
}

fn frequency_of(channel: u32) -> Option<u32> {
    let mhz = match channel {
        1..=13 => 2407 + 5 * channel,
        14 => 2484,
        _ => 5000 + 5 * channel,
    };
    (channel_of(mhz) == Some(channel)).then_some(mhz)
}

/// Parses and checks `text`, the contents of `file`.
pub fn parse(file: &Path, text: &str) -> Result<Config, ConfigError> {
    let err = |line, key: &str, message: String| ConfigError { file: file.into(), line, key: key.into(), message };
    let mut config: Config = if text.lines().all(|l| l.trim().is_empty() || l.trim_start().starts_with('#')) {
        Config::default()
    } else {
        serde_path_to_error::deserialize(serde_norway::Deserializer::from_str(text)).map_err(|e| {
            let (line, key, message) = parse_error(e);
            err(line, &key, message)
        })?
    };
    let at = |key: &str, message: String| err(line_of(text, key), key, message);
    if config.api_version != API_VERSION {
        return Err(at("apiVersion", format!("'{}' is not a version this node reads; write 'apiVersion: {API_VERSION}'", config.api_version)));
    }
    let m = &mut config.mesh;
    if m.id.is_empty() || m.id.len() > 32 {
        return Err(at("mesh.id", format!("'{}' must be 1 to 32 bytes long", m.id)));
    }
    // The node's name is made from it, and other nodes drop a record whose name breaks a line.
    if m.id.chars().any(char::is_control) {
        return Err(at("mesh.id", format!("{:?} holds a control character (a line break, a tab); write the id on one line", m.id)));
    }
    if let Some(ch) = m.channel {
        let mhz = frequency_of(ch).ok_or_else(|| at("mesh.channel", format!("{ch} is not a channel a mesh can use (1-14, 36-48, 149-165)")))?;
        if text_has(text, "mesh.frequency") && mhz != m.frequency {
            return Err(at("mesh.channel", format!("channel {ch} is {mhz} MHz but mesh.frequency says {} MHz; give only one", m.frequency)));
        }
        m.frequency = mhz;
    }
    if channel_of(m.frequency).is_none() {
        return Err(at("mesh.frequency", format!("{} MHz is not a channel a mesh can use (2412 is channel 1, 2437 channel 6)", m.frequency)));
    }
    let country_ok = m.country.len() == 2 && m.country.bytes().all(|b| b.is_ascii_uppercase() || b == b'0');
    if !country_ok {
        return Err(at("mesh.country", format!("'{}' is not a two-letter country code (CA, DE, US, or 00 for world)", m.country)));
    }
    if !(-100..=0).contains(&m.rssi_threshold) {
        return Err(at("mesh.rssiThreshold", format!("{} dBm is outside -100..0", m.rssi_threshold)));
    }
    for (i, rule) in config.radios.iter().enumerate() {
        let key = format!("radios[{i}]");
        let line = line_of_item(text, "radios", i);
        if rule.driver.is_none() && rule.usb.is_none() && rule.mac.is_none() {
            return Err(err(line, &key, "names no radio; give driver, usb or mac".into()));
        }
        if let Some(usb) = &rule.usb {
            if !is_hex_pair(usb, 4) {
                return Err(err(line, &format!("{key}.usb"), format!("'{usb}' is not vendor:product in hex, like 0cf3:9271")));
            }
        }
        if let Some(mac) = &rule.mac {
            if mac.split(':').count() != 6 || !mac.split(':').all(|b| b.len() == 2 && b.chars().all(|c| c.is_ascii_hexdigit())) {
                return Err(err(line, &format!("{key}.mac"), format!("'{mac}' is not a MAC address like aa:bb:cc:dd:ee:ff")));
            }
        }
    }
    let ap = &config.access_point;
    if let Some(ssid) = &ap.ssid {
        if ssid.is_empty() || ssid.len() > 32 {
            return Err(at("accessPoint.ssid", format!("'{ssid}' must be 1 to 32 bytes long")));
        }
    }
    if let Some(p) = &ap.passphrase {
        if !p.is_empty() && (p.len() < 8 || p.len() > 63 || !p.bytes().all(|b| (32..127).contains(&b))) {
            return Err(at("accessPoint.passphrase", "must be 8 to 63 printable ASCII characters (WPA2)".into()));
        }
    }
    for (i, key) in config.ssh.authorized_keys.iter().enumerate() {
        let kind = key.split_whitespace().next().unwrap_or("");
        if !(kind.starts_with("ssh-") || kind.starts_with("ecdsa-") || kind.starts_with("sk-")) || key.split_whitespace().count() < 2 {
            return Err(err(
                line_of_item(text, "ssh.authorizedKeys", i),
                &format!("ssh.authorizedKeys[{i}]"),
                "is not an OpenSSH public key line ('ssh-ed25519 AAAA... name')".into(),
            ));
        }
    }
    for (i, peer) in config.peers.iter().enumerate() {
        let scheme_ok = ["tcp://", "tls://", "quic://", "ws://", "wss://", "udp://"].iter().any(|s| peer.starts_with(s));
        if !scheme_ok || !peer.contains(':') {
            return Err(err(
                line_of_item(text, "peers", i),
                &format!("peers[{i}]"),
                format!("'{}' is not a peer URI like tls://192.0.2.1:443", redacted(peer)),
            ));
        }
    }
    for (list, names) in [("wired.peering", &config.wired.peering), ("wired.dhcp", &config.wired.dhcp)] {
        for (i, name) in names.iter().enumerate() {
            let stem = name.strip_suffix('*').unwrap_or(name);
            if stem.is_empty() && name != "*" || stem.contains(['*', '/', ' ']) || name.len() > 15 {
                return Err(err(line_of_item(text, list, i), &format!("{list}[{i}]"), format!("'{name}' is not an interface name (eth0, or eth* for all)")));
            }
        }
    }
    if !(20..=3600).contains(&config.upgrade.health_timeout) {
        return Err(at("upgrade.healthTimeout", format!("{} s is outside 20..3600", config.upgrade.health_timeout)));
    }
    if !(1..=16).contains(&config.upgrade.parallel) {
        return Err(at("upgrade.parallel", format!("{} is outside 1..16", config.upgrade.parallel)));
    }
    if config.metrics.port == 0 {
        return Err(at("metrics.port", "0 is not a port".into()));
    }
    for (list, entries) in [("allow", &config.gateway.allow), ("trusted", &config.gateway.trusted)] {
        for (i, entry) in entries.iter().enumerate() {
            if crate::identity::node_address(entry).is_none() {
                return Err(err(
                    line_of_item(text, &format!("gateway.{list}"), i),
                    &format!("gateway.{list}[{i}]"),
                    format!("'{entry}' is neither a Yggdrasil public key (64 hex digits, `meshd status` shows a node's) nor an overlay IPv6 address"),
                ));
            }
        }
    }
    if config.gateway.offer && !config.metrics.enabled {
        return Err(at("gateway.offer", "a gateway hands out its tunnels on the metrics port, and metrics.enabled is false".into()));
    }
    Ok(config)
}

fn is_hex_pair(s: &str, width: usize) -> bool {
    let mut parts = s.split(':');
    let ok = |p: Option<&str>| p.is_some_and(|p| p.len() == width && p.chars().all(|c| c.is_ascii_hexdigit()));
    ok(parts.next()) && ok(parts.next()) && parts.next().is_none()
}

/// A parse error: the key is the path serde_path_to_error tracked to it ("mesh.freq", "radios[1].usb"),
/// the line the YAML parser's, and the message the parser's without the location and the map's key
/// it repeats ("mesh: unknown field `freq`, ... at line 4 column 3").
fn parse_error(e: serde_path_to_error::Error<serde_norway::Error>) -> (Option<usize>, String, String) {
    let key = match e.path().to_string() {
        root if root == "." => String::new(),
        path => path,
    };
    let inner = e.into_inner();
    let line = inner.location().map(|l| l.line());
    let mut message = inner.to_string();
    if let Some(l) = inner.location() {
        message = message.replacen(&format!(" at line {} column {}", l.line(), l.column()), "", 1);
    }
    let mut parent = key.as_str();
    while !parent.is_empty() {
        if let Some(rest) = message.strip_prefix(&format!("{parent}: ")) {
            message = rest.to_string();
            break;
        }
        parent = parent.rfind(['.', '[']).map_or("", |i| &parent[..i]);
    }
    (line, key, message)
}

/// The line (1-based) where the dotted `key` is written, following indentation.
fn line_of(text: &str, key: &str) -> Option<usize> {
    let mut want = key.split('.').peekable();
    let mut indent_above: Option<usize> = None;
    for (n, line) in text.lines().enumerate() {
        let trimmed = line.trim_start();
        if trimmed.is_empty() || trimmed.starts_with('#') {
            continue;
        }
        let indent = line.len() - trimmed.len();
        if indent_above.is_some_and(|above| indent <= above) {
            return None; // left the parent's block without finding the key
        }
        let part = *want.peek()?;
        if trimmed.strip_prefix(part).is_some_and(|r| r.starts_with(':')) {
            want.next();
            if want.peek().is_none() {
                return Some(n + 1);
            }
            indent_above = Some(indent);
        }
    }
    None
}

/// The line of the `index`th `- ` item under the dotted `key`.
fn line_of_item(text: &str, key: &str, index: usize) -> Option<usize> {
    let start = line_of(text, key)?;
    text.lines().enumerate().skip(start).filter(|(_, l)| l.trim_start().starts_with("- ")).nth(index).map(|(n, _)| n + 1)
}

fn text_has(text: &str, key: &str) -> bool {
    line_of(text, key).is_some()
}

/// Where the node keeps the last config that passed [`parse`].
pub fn last_good_path(state_dir: &Path) -> PathBuf {
    state_dir.join("mesh.yaml.good")
}

/// The config to run with, and what was wrong with the file the person edited, if anything.
pub struct Loaded {
    pub config: Config,
    pub error: Option<ConfigError>,
    /// Where `config` came from: the file, the last good copy, or the defaults.
    pub source: String,
}

/// Reads `file`; when it is bad, the last good copy from `state_dir`, else the defaults.
pub fn load(file: &Path, state_dir: &Path) -> Loaded {
    let good = last_good_path(state_dir);
    let attempt = match fs::read_to_string(file) {
        Ok(text) => parse(file, &text).map(|c| (c, text)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Loaded { config: Config::default(), error: None, source: "defaults (no mesh.yaml)".into() };
        }
        Err(e) => Err(ConfigError { file: file.into(), line: None, key: String::new(), message: format!("cannot be read: {e}") }),
    };
    match attempt {
        Ok((config, text)) => {
            // Kept only when different (or readable by others: it holds the access point's
            // passphrase), so an unchanged file costs no flash writes.
            let private = fs::metadata(&good).is_ok_and(|m| std::os::unix::fs::PermissionsExt::mode(&m.permissions()) & 0o077 == 0);
            if !private || fs::read_to_string(&good).ok().as_deref() != Some(text.as_str()) {
                if let Err(e) = crate::durable::write_private(&good, text.as_bytes()) {
                    logln!("meshd: cannot keep the last good config: {e}");
                }
            }
            Loaded { config, error: None, source: file.display().to_string() }
        }
        Err(error) => {
            let kept = fs::read_to_string(&good).ok().and_then(|t| parse(&good, &t).ok());
            match kept {
                Some(config) => Loaded { config, error: Some(error), source: format!("{} (last good)", good.display()) },
                None => Loaded { config: Config::default(), error: Some(error), source: "defaults".into() },
            }
        }
    }
}

/// A peer URI as it may be shown (errors end up in logs and metrics): no user part and no
/// query, which is where passwords and keys go.
fn redacted(peer: &str) -> String {
    let (scheme, rest) = peer.split_once("://").unwrap_or(("", peer));
    let rest = rest.rsplit_once('@').map_or(rest, |(_, host)| host);
    let (host, query) = rest.split_once('?').map_or((rest, ""), |(h, _)| (h, "?…"));
    format!("{scheme}{}{host}{query}", if scheme.is_empty() { "" } else { "://" })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bad(text: &str) -> ConfigError {
        parse(Path::new("/boot/mesh.yaml"), text).unwrap_err()
    }

    #[test]
    fn a_bad_peer_is_named_without_its_secrets() {
        let e = bad("apiVersion: meshos/v1\npeers:\n  - udp//192.0.2.1:9?publicKey=k.k&password=hunter2\n  - tcp://me:hunter3@x\n");
        assert_eq!(e.key, "peers[0]");
        assert!(!e.to_string().contains("hunter2") && e.to_string().contains("'udp//192.0.2.1:9?…'"), "{e}");
        assert_eq!(redacted("tcp://me:hunter3@host:1"), "tcp://host:1");
    }

    #[test]
    fn the_shipped_file_is_the_defaults() {
        let shipped = include_str!("../../overlays/common/usr/share/meshos/mesh.yaml");
        assert_eq!(parse(Path::new("mesh.yaml"), shipped).unwrap(), Config::default());
        assert_eq!(parse(Path::new("mesh.yaml"), "# nothing\n").unwrap(), Config::default());
    }

    #[test]
    fn a_full_file_parses() {
        let text = "apiVersion: meshos/v1\nmesh:\n  id: northmesh\n  channel: 6\n  htMode: HT40+\n  country: DE\n\
radios:\n  - driver: ath9k_htc\n    role: mesh\n  - usb: 148f:5572\n    role: accessPoint\n\
accessPoint:\n  ssid: corner-cafe\n  passphrase: correct horse\nssh:\n  authorizedKeys:\n    - ssh-ed25519 AAAAC3Nza me@laptop\n\
peers: [tls://192.0.2.1:443]\nwired:\n  peering: [eth0]\n  dhcp: []\nrouter: cjdns\nmetrics:\n  enabled: false\n";
        let c = parse(Path::new("mesh.yaml"), text).unwrap();
        assert_eq!((c.mesh.frequency, c.mesh.ht_mode, c.router), (2437, HtMode::Ht40Plus, Router::Cjdns));
        assert_eq!(c.radios[1].role, Role::AccessPoint);
        assert!(!c.metrics.enabled);
    }

    #[test]
    fn errors_name_file_line_and_key() {
        let e = bad("apiVersion: meshos/v1\nmesh:\n  id: x\n  freq: 2412\n");
        assert_eq!((e.line, e.key.as_str()), (Some(4), "mesh.freq"), "{e}");
        assert!(e.to_string().starts_with("/boot/mesh.yaml:4: mesh.freq: unknown field `freq`"), "{e}");

        let e = bad("apiVersion: meshos/v1\n# a comment\nmesh:\n  id: x\n  frequency: 2413\n");
        assert_eq!(e.to_string(), "/boot/mesh.yaml:5: mesh.frequency: 2413 MHz is not a channel a mesh can use (2412 is channel 1, 2437 channel 6)");

        let e = bad("apiVersion: meshos/v1\nmesh:\n  htMode: HT80\n");
        assert_eq!((e.line, e.key.as_str()), (Some(3), "mesh.htMode"), "{e}");

        let e = bad("apiVersion: meshos/v1\nmesh: [oops\n");
        assert_eq!((e.line, e.key.as_str()), (Some(2), "mesh"), "{e}");
        let e = bad("apiVersion: meshos/v1\nmesh:\n  id: \"north\\nmesh\"\n");
        assert_eq!(e.to_string(), "/boot/mesh.yaml:3: mesh.id: \"north\\nmesh\" holds a control character (a line break, a tab); write the id on one line");
        let e = bad("apiVersion: meshos/v1\nmesh:\n  id: 'open\n");
        assert_eq!(e.to_string(), "/boot/mesh.yaml:4: mesh.id: found unexpected end of stream, while scanning a quoted scalar at line 3 column 7");
        let e = bad("apiVersion: meshos/v1\nradios:\n  - usb: 0cf3:9271\n    role: mesh\n  - bus: 2\n");
        assert_eq!((e.line, e.key.as_str()), (Some(5), "radios[1].bus"), "{e}");
        assert!(e.to_string().starts_with("/boot/mesh.yaml:5: radios[1].bus: unknown field `bus`, expected"), "{e}");
        let e = bad("apiVersion: meshos/v1\nmesh:\n  htMode: HT80\n");
        assert!(e.to_string().starts_with("/boot/mesh.yaml:3: mesh.htMode: unknown variant `HT80`"), "{e}");
        assert!(!e.to_string().contains(" at line "), "{e}");

        let e = bad("apiVersion: meshos/v2\n");
        assert_eq!((e.line, e.key.as_str()), (Some(1), "apiVersion"));

        let e = bad("apiVersion: meshos/v1\nmesh:\n  channel: 1\n  frequency: 2437\n");
        assert_eq!(e.key, "mesh.channel");

        let e = bad("apiVersion: meshos/v1\nradios:\n  - driver: ath9k_htc\n    role: mesh\n  - usb: 12\n    role: off\n");
        assert_eq!((e.line, e.key.as_str()), (Some(5), "radios[1].usb"), "{e}");

        let e = bad("apiVersion: meshos/v1\naccessPoint:\n  passphrase: short\n");
        assert_eq!((e.line, e.key.as_str()), (Some(3), "accessPoint.passphrase"));

        let e = bad("apiVersion: meshos/v1\nssh:\n  authorizedKeys:\n    - hunter2\n");
        assert_eq!((e.line, e.key.as_str()), (Some(4), "ssh.authorizedKeys[0]"));

        let e = bad("apiVersion: meshos/v1\nrouter: babel\n");
        assert_eq!(e.key, "router", "{e}");

        let e = bad("apiVersion: meshos/v1\ngateway:\n  offer: true\n  allow:\n    - 200::1\n    - beef\n");
        assert_eq!((e.line, e.key.as_str()), (Some(6), "gateway.allow[1]"), "{e}");
        let e = bad("apiVersion: meshos/v1\ngateway:\n  use: always\n");
        assert_eq!((e.line, e.key.as_str()), (Some(3), "gateway.use"), "{e}");
        let e = bad("apiVersion: meshos/v1\ngateway:\n  offer: true\nmetrics:\n  enabled: false\n");
        assert_eq!((e.line, e.key.as_str()), (Some(3), "gateway.offer"), "{e}");
    }

    #[test]
    fn channels_and_frequencies_agree() {
        assert_eq!((channel_of(2412), channel_of(2472), channel_of(2484), channel_of(5180)), (Some(1), Some(13), Some(14), Some(36)));
        assert_eq!((channel_of(2413), channel_of(5170)), (None, None));
        assert_eq!((frequency_of(6), frequency_of(149), frequency_of(15)), (Some(2437), Some(5745), None));
    }

    #[test]
    fn a_bad_file_falls_back_to_the_last_good_one_then_to_defaults() {
        let dir = std::env::temp_dir().join(format!("meshd-config-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        let file = dir.join("mesh.yaml");

        fs::write(&file, "apiVersion: meshos/v1\nmesh:\n  frequency: 2413\n").unwrap();
        let l = load(&file, &dir);
        assert_eq!((l.config, l.error.unwrap().key, l.source.as_str()), (Config::default(), "mesh.frequency".to_string(), "defaults"));

        fs::write(&file, "apiVersion: meshos/v1\nmesh:\n  id: north\n").unwrap();
        let l = load(&file, &dir);
        assert!(l.error.is_none());
        assert_eq!(l.config.mesh.id, "north");

        fs::write(&file, "apiVersion: meshos/v1\nmesh:\n  id: [\n").unwrap();
        let l = load(&file, &dir);
        assert_eq!(l.config.mesh.id, "north", "the last good config is kept");
        assert!(l.error.is_some() && l.source.ends_with("(last good)"));
        fs::remove_dir_all(&dir).unwrap();
    }
}
