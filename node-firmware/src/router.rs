//! The encrypted overlay router: its configuration, generated from mesh.yaml and the node's
//! identity, and what it says about its peers. Yggdrasil (from Debian) by default; cjdns when
//! chosen and its `cjdroute` binary is in the image.

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

/// What to run: program, arguments, and the config file it reads.
pub struct Launch {
    pub program: &'static str,
    pub args: Vec<String>,
    pub config_path: std::path::PathBuf,
    pub config_text: String,
}

/// Where cjdns is looked for; a board may add it to the image as a local .deb.
pub const CJDROUTE: &str = "/usr/bin/cjdroute";

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

/// The router to run for this config, or why none can run.
pub fn launch(config: &Config, id: &Identity, state_dir: &Path, run_dir: &Path) -> Result<Launch, String> {
    match config.router {
        Router::Yggdrasil => Ok(yggdrasil(config, id, run_dir)),
        Router::Cjdns if Path::new(CJDROUTE).exists() => cjdns(config, state_dir, run_dir),
        Router::Cjdns => Err(format!(
            "mesh.yaml asks for router: cjdns but this image has no {CJDROUTE}; add a cjdns .deb to the board's packages, or use router: yggdrasil"
        )),
    }
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
    let config_path = run_dir.join("yggdrasil.conf");
    Launch {
        program: "yggdrasil",
        args: vec!["-useconffile".into(), config_path.display().to_string(), "-loglevel".into(), "warn".into()],
        config_path,
        config_text: serde_json::to_string_pretty(&conf).expect("a JSON value serialises"),
    }
}

/// cjdns: ETHInterface on the mesh and wired links (beaconing, so neighbours find each
/// other), UDPInterface for static peers written `udp://host:port?publicKey=…&password=…`.
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
            "ETHInterface": [{ "bind": "all", "beacon": 2 }],
            "UDPInterface": [{ "bind": "0.0.0.0:0", "connectTo": connect_to }],
        },
        "router": { "interface": { "type": "TUNInterface", "tunDevice": TUN_NAME } },
        "admin": { "bind": "127.0.0.1:11234" },
        "noBackground": 1,
        "security": [{ "setuser": 0 }],
    });
    let config_path = run_dir.join("cjdroute.conf");
    Ok(Launch {
        program: CJDROUTE,
        args: vec!["--nobg".into(), "--config".into(), config_path.display().to_string()],
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

/// Asks yggdrasil's admin socket for its peers.
pub fn peers(run_dir: &Path) -> Result<Vec<Peer>, String> {
    let reply = admin_request(&admin_socket(run_dir), "getpeers")?;
    parse_peers(&reply)
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
