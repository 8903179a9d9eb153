//! The encrypted overlay router: its configuration, generated from mesh.yaml and the node's
//! identity, and what it says about its peers. Yggdrasil (from Debian) by default; cjdns
//! (built from source into the images) with `router: cjdns`.

use crate::config::{Config, Router};
use crate::identity::Identity;
use serde::Serialize;
use serde_json::{json, Value};
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

/// The TUN interface the overlay address lives on.
pub const TUN_NAME: &str = "ygg0";

/// What to run: the service's name, program and arguments, and the config file it reads.
pub struct Launch {
    pub name: &'static str,
    pub program: &'static str,
    pub args: Vec<String>,
    pub config_path: std::path::PathBuf,
    pub config_text: String,
}

/// cjdns's router, built from pinned source into the images (image-builder/src/cjdns.rs).
pub const CJDROUTE: &str = "/usr/bin/cjdroute";
const CJDNS_CONF: &str = "cjdroute.conf";
const YGGDRASIL_CONF: &str = "yggdrasil.conf";
/// cjdroute's admin interface (bencode over UDP; peer statistics need no password).
const CJDNS_ADMIN: &str = "127.0.0.1:11234";
/// How cjdns runs under meshd's supervisor: `cjdroute < conf` starts its core, hands it the
/// config and exits, and the service then lasts as long as the core. cjdns v22.1's client
/// process crashes now and then while handing over (seen on arm64 and x86_64 alike; `--nobg`,
/// which keeps it running, crashes the same way), leaving a core half configured: that core is
/// stopped and the hand-over tried again.
const CJDNS_RUN: &str = r#"conf=$1
for try in 1 2 3 4 5 6 7 8; do
  if /usr/bin/cjdroute < "$conf"; then
    core=$(pidof cjdroute) && break
  fi
  echo "meshd: cjdroute did not finish starting its core (try $try); starting it again"
  killall -KILL cjdroute 2>/dev/null
  sleep 1
  core=
done
[ -n "$core" ] || exit 1
while kill -0 $core 2>/dev/null; do sleep 5; done
echo "meshd: cjdroute's core (pid $core) ended"
exit 1
"#;

/// The regex yggdrasil matches interface names with: our mesh interfaces plus the wired ones
/// the config marks for peering (`eth*` means every name starting with eth).
pub fn interface_regex(wired: &[String]) -> String {
    let mut alternatives = vec!["mesh[0-9]+".to_string()];
    for name in wired {
        let (stem, any) = match name.strip_suffix('*') {
            Some(stem) => (stem, true),
            None => (name.as_str(), false),
        };
        let escaped: String = stem.chars().map(|c| if c.is_ascii_alphanumeric() || c == '_' || c == '-' { c.to_string() } else { format!("\\{c}") }).collect();
        alternatives.push(if any { format!("{escaped}.*") } else { escaped });
    }
    format!("^({})$", alternatives.join("|"))
}

/// Whether `name` is a link the router peers on: a mesh interface, or one `wired.peering`
/// names (`eth*` means every name starting with eth).
pub fn peers_on(name: &str, wired: &[String]) -> bool {
    let mesh = name.strip_prefix("mesh").is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()));
    mesh || wired.iter().any(|w| match w.strip_suffix('*') {
        Some(stem) => name.starts_with(stem),
        None => name == w,
    })
}

/// The interfaces cjdns binds now: those of [`peers_on`] that exist, in name order. cjdns
/// binds interfaces only at start (its "all" takes every one then, radios that are about to
/// be replaced by mesh points among them), so meshd restarts it when this set changes.
pub fn cjdns_interfaces(wired: &[String]) -> Vec<String> {
    let mut names: Vec<String> =
        std::fs::read_dir("/sys/class/net").map(|d| d.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect()).unwrap_or_default();
    names.retain(|n| peers_on(n, wired));
    names.sort();
    names
}

/// The router to run for this config, or why none can run.
pub fn launch(config: &Config, id: &Identity, state_dir: &Path, run_dir: &Path) -> Result<Launch, String> {
    match config.router {
        Router::Yggdrasil => Ok(yggdrasil(config, id, run_dir)),
        Router::Cjdns if Path::new(CJDROUTE).exists() => cjdns(config, state_dir, run_dir),
        Router::Cjdns => Err(format!(
            "mesh.yaml asks for router: cjdns but this image has no {CJDROUTE}; build the image from a board with a cjdns: entry, or use router: yggdrasil"
        )),
    }
}

/// The node's address in the overlay: Yggdrasil's from the node's key, or cjdns's from its own.
pub fn overlay_address(config: &Config, id: &Identity, state_dir: &Path) -> Result<std::net::Ipv6Addr, String> {
    match config.router {
        Router::Yggdrasil => Ok(id.address),
        Router::Cjdns => {
            let keys = cjdns_keys(state_dir)?;
            let text = keys["ipv6"].as_str().unwrap_or("");
            text.parse()
                .map_err(|_| format!("{}: ipv6 '{text}' is not an address; move it away to make new cjdns keys", state_dir.join("cjdns.keys.json").display()))
        }
    }
}

/// The secret this node's overlay address comes from, which signs its records
/// (crate::record): Yggdrasil's seed, or cjdns's private key.
pub fn record_secret(config: &Config, id: &Identity, state_dir: &Path) -> Result<meshos_common::node_record::Secret, String> {
    let bytes = |hex: &str| crate::identity::unhex(hex).and_then(|b| b.get(..32).and_then(|b| <[u8; 32]>::try_from(b).ok()));
    match config.router {
        Router::Yggdrasil => bytes(&id.private_key).map(meshos_common::node_record::Secret::Yggdrasil).ok_or_else(|| "the node's key is not hex".into()),
        Router::Cjdns => {
            let keys = cjdns_keys(state_dir)?;
            bytes(keys["privateKey"].as_str().unwrap_or(""))
                .map(meshos_common::node_record::Secret::Cjdns)
                .ok_or_else(|| format!("{}: privateKey is not 64 hex digits; move it away to make new cjdns keys", state_dir.join("cjdns.keys.json").display()))
        }
    }
}

/// Removes the config of the router not chosen, so that what reads `run_dir` (peers, status)
/// asks the one that runs.
pub fn forget_other(config: &Config, run_dir: &Path) {
    let other = match config.router {
        Router::Yggdrasil => CJDNS_CONF,
        Router::Cjdns => YGGDRASIL_CONF,
    };
    let _ = std::fs::remove_file(run_dir.join(other));
}

fn yggdrasil(config: &Config, id: &Identity, run_dir: &Path) -> Launch {
    let conf = json!({
        "PrivateKey": id.private_key,
        "Peers": config.peers,
        "InterfacePeers": {},
        "Listen": [],
        "AdminListen": format!("unix://{}", admin_socket(run_dir).display()),
        "MulticastInterfaces": [{
            "Regex": interface_regex(&config.wired.peering),
            "Beacon": true, "Listen": true, "Port": 0, "Priority": 0, "Password": ""
        }],
        "AllowedPublicKeys": [],
        "IfName": TUN_NAME,
        "IfMTU": 65535,
        "NodeInfoPrivacy": false,
        "NodeInfo": { "name": id.hostname },
    });
    let config_path = run_dir.join(YGGDRASIL_CONF);
    Launch {
        name: "yggdrasil",
        program: "yggdrasil",
        args: vec!["-useconffile".into(), config_path.display().to_string(), "-loglevel".into(), "warn".into()],
        config_path,
        config_text: serde_json::to_string_pretty(&conf).expect("a JSON value serialises"),
    }
}

/// cjdns: an ETHInterface on each mesh and wired link present (beaconing, so neighbours find
/// each other), UDPInterface for static peers written `udp://host:port?publicKey=…&password=…`.
/// Its keys are cjdns's own, made by `cjdroute --genconf` on first start and kept.
fn cjdns(config: &Config, state_dir: &Path, run_dir: &Path) -> Result<Launch, String> {
    let mut connect_to = serde_json::Map::new();
    for peer in config.peers.iter().filter_map(|p| p.strip_prefix("udp://")) {
        let (addr, query) = peer.split_once('?').ok_or_else(|| format!("cjdns peer udp://{peer} needs ?publicKey=…&password=…"))?;
        let mut creds = serde_json::Map::new();
        for pair in query.split('&') {
            if let Some((k, v)) = pair.split_once('=') {
                creds.insert(k.to_string(), Value::String(v.to_string()));
            }
        }
        connect_to.insert(addr.to_string(), Value::Object(creds));
    }
    let keys = cjdns_keys(state_dir)?;
    let conf = json!({
        "privateKey": keys["privateKey"], "publicKey": keys["publicKey"], "ipv6": keys["ipv6"],
        "interfaces": {
            "ETHInterface": cjdns_interfaces(&config.wired.peering).iter().map(|i| json!({ "bind": i, "beacon": 2 })).collect::<Vec<_>>(),
            "UDPInterface": [{ "bind": "0.0.0.0:0", "connectTo": connect_to }],
        },
        "router": { "interface": { "type": "TUNInterface", "tunDevice": TUN_NAME } },
        "admin": { "bind": CJDNS_ADMIN },
        "pipe": run_dir.join("cjdroute.sock"),
        // The core parses frames from any radio neighbour: once its interfaces and tunnel are
        // up it runs as nobody (keeping CAP_NET_ADMIN for the tunnel's addresses), chrooted in
        // /var/run and unable to fork, as cjdns's own default config has it.
        "security": [{ "setuser": "nobody", "keepNetAdmin": 1 }, { "noforks": 1 }],
    });
    let config_path = run_dir.join(CJDNS_CONF);
    Ok(Launch {
        name: "cjdns",
        program: "/bin/sh",
        args: vec!["-c".into(), CJDNS_RUN.into(), "cjdns".into(), config_path.display().to_string()],
        config_path,
        config_text: serde_json::to_string_pretty(&conf).expect("a JSON value serialises"),
    })
}

/// cjdns's key pair and address, made once with `cjdroute --genconf | cjdroute --cleanconf`
/// and kept on the data partition like yggdrasil's.
fn cjdns_keys(state_dir: &Path) -> Result<Value, String> {
    let path = state_dir.join("cjdns.keys.json");
    if let Ok(text) = std::fs::read_to_string(&path) {
        return serde_json::from_str(&text).map_err(|e| format!("{}: {e}; move it away to make new cjdns keys", path.display()));
    }
    let run = |args: &[&str], input: Option<Vec<u8>>| -> Result<Vec<u8>, String> {
        let mut child = std::process::Command::new(CJDROUTE)
            .args(args)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .map_err(|e| format!("{CJDROUTE}: {e}"))?;
        if let Some(input) = input {
            child.stdin.take().expect("piped").write_all(&input).map_err(|e| format!("{CJDROUTE}: {e}"))?;
        }
        let out = child.wait_with_output().map_err(|e| format!("{CJDROUTE}: {e}"))?;
        out.status.success().then_some(out.stdout).ok_or_else(|| format!("{CJDROUTE} {} failed", args.join(" ")))
    };
    let conf: Value = serde_json::from_slice(&run(&["--cleanconf"], Some(run(&["--genconf"], None)?))?)
        .map_err(|e| format!("{CJDROUTE} --cleanconf printed no JSON: {e}"))?;
    let keys = json!({ "privateKey": conf["privateKey"], "publicKey": conf["publicKey"], "ipv6": conf["ipv6"] });
    crate::durable::write_private(&path, keys.to_string().as_bytes())?;
    Ok(keys)
}

pub fn admin_socket(run_dir: &Path) -> std::path::PathBuf {
    run_dir.join("yggdrasil.sock")
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Peer {
    pub key: String,
    pub address: String,
    pub remote: String,
    pub up: bool,
    pub rx_bytes: u64,
    pub tx_bytes: u64,
    pub uptime_seconds: f64,
}

/// Asks the running router (the one whose config is in `run_dir`) for its peers.
pub fn peers(run_dir: &Path) -> Result<Vec<Peer>, String> {
    if run_dir.join(CJDNS_CONF).exists() {
        return cjdns_peers();
    }
    let reply = admin_request(&admin_socket(run_dir), "getpeers")?;
    parse_peers(&reply)
}

/// cjdroute's `InterfaceController_peerStats`, page by page.
fn cjdns_peers() -> Result<Vec<Peer>, String> {
    let socket = std::net::UdpSocket::bind("127.0.0.1:0").map_err(|e| format!("cjdns admin: {e}"))?;
    socket.set_read_timeout(Some(Duration::from_secs(2))).map_err(|e| format!("cjdns admin: {e}"))?;
    let mut out = Vec::new();
    for page in 0..64 {
        let request = cjdns_admin::Request { args: cjdns_admin::Page { page }, q: "InterfaceController_peerStats", txid: format!("p{page}") };
        let bytes = serde_bencode::to_bytes(&request).map_err(|e| format!("cjdns admin: {e}"))?;
        socket.send_to(&bytes, CJDNS_ADMIN).map_err(|e| format!("cjdns admin {CJDNS_ADMIN}: {e}"))?;
        let mut buf = vec![0u8; 65536];
        let n = socket.recv(&mut buf).map_err(|e| format!("cjdns admin {CJDNS_ADMIN}: {e}"))?;
        let (peers, more) = parse_cjdns_peers(&buf[..n])?;
        out.extend(peers);
        if !more {
            break;
        }
    }
    Ok(out)
}

mod cjdns_admin {
    use serde::{Deserialize, Serialize};

    /// Fields in bencode's key order.
    #[derive(Serialize)]
    pub struct Request {
        pub args: Page,
        pub q: &'static str,
        pub txid: String,
    }

    #[derive(Serialize)]
    pub struct Page {
        pub page: i64,
    }

    #[derive(Deserialize)]
    pub struct PeerStats {
        #[serde(default)]
        pub peers: Vec<PeerStat>,
        pub more: Option<i64>,
        pub error: Option<String>,
    }

    #[derive(Deserialize)]
    pub struct PeerStat {
        pub addr: String,
        #[serde(rename = "bytesIn", default)]
        pub bytes_in: i64,
        #[serde(rename = "bytesOut", default)]
        pub bytes_out: i64,
        #[serde(default)]
        pub lladdr: String,
        #[serde(default)]
        pub state: String,
    }
}

fn parse_cjdns_peers(reply: &[u8]) -> Result<(Vec<Peer>, bool), String> {
    let stats: cjdns_admin::PeerStats = serde_bencode::from_bytes(reply).map_err(|e| format!("cjdns admin reply: {e}"))?;
    if let Some(e) = stats.error.filter(|e| e != "none") {
        return Err(format!("cjdns admin: {e}"));
    }
    let peers = stats
        .peers
        .into_iter()
        .map(|p| {
            // "v<version>.<path: four groups>.<key>.k": the key is the last two parts.
            let key = p.addr.rsplitn(3, '.').take(2).collect::<Vec<_>>().into_iter().rev().collect::<Vec<_>>().join(".");
            Peer {
                address: cjdns_address(&key).map(|a| a.to_string()).unwrap_or_default(),
                key,
                remote: p.lladdr,
                up: p.state == "ESTABLISHED",
                rx_bytes: p.bytes_in.max(0) as u64,
                tx_bytes: p.bytes_out.max(0) as u64,
                uptime_seconds: 0.0,
            }
        })
        .collect();
    Ok((peers, stats.more.is_some_and(|m| m != 0)))
}

/// A cjdns node's address from its public key (`<base32>.k`): the first 16 bytes of
/// sha512(sha512(key)), which start with 0xfc for every key cjdns accepts.
pub fn cjdns_address(key: &str) -> Option<std::net::Ipv6Addr> {
    meshos_common::node_record::cjdns_address_for(&cjdns_base32(key.strip_suffix(".k")?)?)
}

/// cjdns's base32: alphabet 0-9 b-d f-h j-n p-z, least significant bits first.
fn cjdns_base32(text: &str) -> Option<Vec<u8>> {
    const ALPHABET: &[u8] = b"0123456789bcdfghjklmnpqrstuvwxyz";
    let (mut out, mut acc, mut bits) = (Vec::new(), 0u32, 0u32);
    for c in text.bytes() {
        let v = ALPHABET.iter().position(|&a| a == c.to_ascii_lowercase())? as u32;
        acc |= v << bits;
        bits += 5;
        if bits >= 8 {
            out.push((acc & 0xff) as u8);
            acc >>= 8;
            bits -= 8;
        }
    }
    (bits < 5 && acc == 0).then_some(out)
}

fn admin_request(socket: &Path, request: &str) -> Result<String, String> {
    let err = |e: std::io::Error| format!("{}: {e}", socket.display());
    let mut s = UnixStream::connect(socket).map_err(err)?;
    s.set_read_timeout(Some(Duration::from_secs(2))).map_err(err)?;
    s.write_all(json!({ "request": request }).to_string().as_bytes()).map_err(err)?;
    // One JSON document per connection; yggdrasil closes after answering.
    let mut reply = String::new();
    s.read_to_string(&mut reply).map_err(err)?;
    Ok(reply)
}

fn parse_peers(reply: &str) -> Result<Vec<Peer>, String> {
    let v: Value = serde_json::from_str(reply).map_err(|e| format!("yggdrasil admin reply is not JSON: {e}"))?;
    if v["status"] != "success" {
        return Err(format!("yggdrasil admin: {}", v["error"].as_str().unwrap_or("request failed")));
    }
    let list = v["response"]["peers"].as_array().cloned().unwrap_or_default();
    Ok(list
        .iter()
        .map(|p| Peer {
            key: p["key"].as_str().unwrap_or("").into(),
            address: p["address"].as_str().unwrap_or("").into(),
            remote: p["remote"].as_str().unwrap_or("").into(),
            up: p["up"].as_bool().unwrap_or(false),
            rx_bytes: p["bytes_recvd"].as_u64().unwrap_or(0),
            tx_bytes: p["bytes_sent"].as_u64().unwrap_or(0),
            uptime_seconds: p["uptime"].as_f64().unwrap_or(0.0),
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn regex_covers_mesh_and_marked_wired_interfaces() {
        assert_eq!(interface_regex(&["eth*".into(), "usb0".into()]), "^(mesh[0-9]+|eth.*|usb0)$");
        assert_eq!(interface_regex(&[]), "^(mesh[0-9]+)$");
    }

    #[test]
    fn yggdrasil_config_carries_key_peers_and_interfaces() {
        let c = Config { peers: vec!["tls://192.0.2.1:443".into()], ..Config::default() };
        let id = Identity { private_key: "ab".repeat(64), address: "200::1".parse().unwrap(), hostname: "tomesh-0001".into() };
        let l = launch(&c, &id, Path::new("/data/meshd"), Path::new("/run/meshd")).unwrap();
        let v: Value = serde_json::from_str(&l.config_text).unwrap();
        assert_eq!(v["PrivateKey"], "ab".repeat(64));
        assert_eq!(v["Peers"][0], "tls://192.0.2.1:443");
        assert_eq!(v["AdminListen"], "unix:///run/meshd/yggdrasil.sock");
        assert_eq!(v["MulticastInterfaces"][0]["Regex"], "^(mesh[0-9]+|eth.*)$");
        assert_eq!(v["NodeInfo"]["name"], "tomesh-0001");
    }

    #[test]
    fn routers_peer_on_mesh_points_and_the_wired_links_named() {
        let wired = ["eth*".to_string(), "usb0".to_string()];
        for yes in ["mesh0", "mesh12", "eth0", "eth1", "usb0"] {
            assert!(peers_on(yes, &wired), "{yes}");
        }
        for no in ["mesh", "meshx", "wlan0", "hwsim0", "ygg0", "usb1", "lo"] {
            assert!(!peers_on(no, &wired), "{no}");
        }
    }

    #[test]
    fn a_cjdns_address_is_derived_from_its_key() {
        // The key pair of cjdns-route-server's own key tests.
        let a = cjdns_address("qgkjd0stfvk9r3j28s4gh8rgslbgx2r5xgxzxkgm5vdxqwn8xsu0.k").unwrap();
        assert_eq!(a, "fcf5:c1ec:be67:9ad5:1f6c:f31b:5d74:37b0".parse::<std::net::Ipv6Addr>().unwrap());
        assert_eq!(cjdns_address("qgkjd0stfvk9r3j28s4gh8rgslbgx2r5xgxzxkgm5vdxqwn8xsu0"), None, "no .k");
        // cjdns's example key, whose private half signs records (meshos_common::node_record).
        let example = cjdns_address("f09rvtmr2s25942ygutztv8bf70ny8zd0kpffk8lmbzm40qty9k0.k").unwrap();
        assert_eq!(example.to_string(), "fcea:4775:eacd:7c3b:6fbc:c02b:43d6:53e1");
        assert_eq!(cjdns_address("qgkjd0stfvk9r3j28s4gh8rgslbgx2r5xgxzxkgm5vdxqwn8xsua.k"), None, "'a' is not in the alphabet");
    }

    #[test]
    fn cjdns_peers_parse_from_peer_stats() {
        let key = "qgkjd0stfvk9r3j28s4gh8rgslbgx2r5xgxzxkgm5vdxqwn8xsu0.k";
        let addr = format!("v22.0000.0000.0000.0013.{key}");
        let reply = format!(
            "d5:error4:none4:morei1e5:peersld4:addr{}:{addr}7:bytesIni120e8:bytesOuti80e6:lladdr17:02:00:00:00:02:005:state11:ESTABLISHEDee5:totali2e4:txid2:p0e",
            addr.len()
        );
        let (peers, more) = parse_cjdns_peers(reply.as_bytes()).unwrap();
        assert!(more);
        assert_eq!(peers[0].key, key);
        assert_eq!(peers[0].address, "fcf5:c1ec:be67:9ad5:1f6c:f31b:5d74:37b0");
        assert_eq!((peers[0].rx_bytes, peers[0].tx_bytes, peers[0].up, peers[0].remote.as_str()), (120, 80, true, "02:00:00:00:02:00"));
        assert!(parse_cjdns_peers(b"d5:error11:not allowede").is_err());
    }

    #[test]
    fn cjdroute_gets_its_config_and_keys() {
        let c = Config { router: Router::Cjdns, ..Config::default() };
        let d = tempfile::tempdir().unwrap();
        let key = "qgkjd0stfvk9r3j28s4gh8rgslbgx2r5xgxzxkgm5vdxqwn8xsu0.k";
        let keys = json!({"privateKey": "37".repeat(32), "publicKey": key, "ipv6": "fcf5:c1ec:be67:9ad5:1f6c:f31b:5d74:37b0"});
        std::fs::write(d.path().join("cjdns.keys.json"), keys.to_string()).unwrap();
        let l = cjdns(&c, d.path(), Path::new("/run/meshd")).unwrap();
        assert_eq!((l.name, l.args.last().map(String::as_str)), ("cjdns", Some("/run/meshd/cjdroute.conf")));
        let v: Value = serde_json::from_str(&l.config_text).unwrap();
        assert_eq!((v["publicKey"].as_str(), v["admin"]["bind"].as_str()), (Some(key), Some(CJDNS_ADMIN)));
        let id = Identity { private_key: "ab".repeat(64), address: "200::1".parse().unwrap(), hostname: "n".into() };
        assert_eq!(overlay_address(&c, &id, d.path()).unwrap().to_string(), "fcf5:c1ec:be67:9ad5:1f6c:f31b:5d74:37b0");
    }

    #[test]
    fn cjdns_without_its_binary_says_how_to_get_it() {
        let c = Config { router: Router::Cjdns, ..Config::default() };
        let id = Identity { private_key: "ab".repeat(64), address: "200::1".parse().unwrap(), hostname: "n".into() };
        if !Path::new(CJDROUTE).exists() {
            let e = launch(&c, &id, Path::new("/data/meshd"), Path::new("/run/meshd")).err().unwrap();
            assert!(e.contains("router: yggdrasil"), "{e}");
        }
    }

    #[test]
    fn peers_parse_from_the_admin_reply() {
        // The shape yggdrasil 0.5.12 answers `getpeers` with.
        let reply = r#"{"status":"success","request":{"request":"getpeers","arguments":{}},"response":{"peers":[
            {"remote":"tls://[fe80::1%25eth1]:40000","up":true,"inbound":true,"address":"200:a7e::1","key":"fac0",
             "port":1,"priority":0,"cost":8,"bytes_recvd":454,"bytes_sent":453,"uptime":1.87,"latency":4010000}]}}"#;
        let p = parse_peers(reply).unwrap();
        assert_eq!((p[0].rx_bytes, p[0].tx_bytes, p[0].up, p[0].address.as_str()), (454, 453, true, "200:a7e::1"));
        assert!(parse_peers(r#"{"status":"error","error":"unknown"}"#).unwrap_err().contains("unknown"));
    }
}
