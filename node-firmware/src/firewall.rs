//! The node's firewall for both address families: nftables table `inet meshos`, written whole at
//! start. The people on the access points (`ap*`) reach the node's DHCP, DNS, router
//! advertisements and read-only pages (the map, nodeinfo, metrics on the metrics port), the
//! mesh and, through a gateway, the internet; not the ssh of this node or of any other on the
//! overlay, unless `ssh.fromAccessPoints`.
//! Nothing from elsewhere reaches a client unless the client started it. Tunnel packets (IPv4
//! in IPv6, the gateways' tunnels) are taken only from the overlay's interface, and an IPv6
//! packet whose source is not routed back through the interface it came in on is dropped
//! (reverse-path filtering, which Linux does for IPv4 only). crate::gateway's `ip meshos`
//! table does the IPv4 forwarding rules of the gateway role beside this one.

use crate::command;
use std::fmt::Write as _;
use std::path::Path;

/// What the rules depend on.
#[derive(Debug, Clone, PartialEq)]
pub struct Policy {
    /// The overlay router's interface (crate::router::TUN_NAME).
    pub overlay: String,
    /// The port of the HTTP face (crate::http), None when metrics are off.
    pub pages: Option<u16>,
    /// Access point clients may reach ssh (on this node and, through it, on others).
    pub ssh_from_clients: bool,
}

/// The ruleset, replacing any `inet meshos` table before it. Protocols go by number (4: IPv4
/// in IP, 1: ICMP, 58: ICMPv6): a node has no /etc/protocols to look names up in.
pub fn ruleset(p: &Policy) -> String {
    let overlay = &p.overlay;
    let mut tcp = vec!["53".to_string()];
    tcp.extend(p.pages.map(|port| port.to_string()));
    let mut from_clients = String::new();
    let mut forward = String::new();
    if p.ssh_from_clients {
        tcp.push("22".into());
    } else {
        let _ = writeln!(forward, "    iifname \"ap*\" oifname \"{overlay}\" tcp dport 22 counter drop comment \"no client reaches a node's ssh\"");
    }
    let _ = writeln!(from_clients, "    tcp dport {{ {} }} accept", tcp.join(", "));
    format!(
        "# Written by meshd (crate::firewall) at start; replaced whole.\n\
table inet meshos\ndelete table inet meshos\ntable inet meshos {{\n\
  chain prerouting {{\n    type filter hook prerouting priority raw; policy accept;\n\
    meta l4proto 4 iifname != \"{overlay}\" counter drop comment \"tunnel packets come over the overlay only\"\n\
    meta nfproto ipv6 ip6 saddr != :: fib saddr . iif oif missing counter drop comment \"IPv6 reverse path\"\n  }}\n\
  chain input {{\n    type filter hook input priority filter; policy accept;\n    iifname \"ap*\" jump from_clients\n  }}\n\
  chain from_clients {{\n    ct state established,related accept\n    meta l4proto {{ 1, 58 }} accept\n    udp dport {{ 53, 67 }} accept\n\
{from_clients}    counter drop comment \"the rest of the node is not for clients\"\n  }}\n\
  chain forward {{\n    type filter hook forward priority filter; policy accept;\n\
    oifname \"ap*\" iifname != \"ap*\" ct state != {{ established, related }} counter drop comment \"clients are reached only on what they started\"\n\
{forward}  }}\n}}\n"
    )
}

/// Writes the ruleset beside the node's other run files and loads it.
pub fn apply(run_dir: &Path, policy: &Policy) -> Result<(), String> {
    let path = run_dir.join("firewall.nft");
    crate::durable::write(&path, ruleset(policy).as_bytes(), 0o644).map_err(|e| format!("{}: {e}", path.display()))?;
    command::run("nft", &["-f", &path.display().to_string()]).map(drop).map_err(|e| format!("firewall: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(ssh: bool) -> Policy {
        Policy { overlay: "ygg0".into(), pages: Some(9100), ssh_from_clients: ssh }
    }

    #[test]
    fn clients_reach_the_pages_and_not_ssh() {
        let r = ruleset(&policy(false));
        for want in [
            "table inet meshos\ndelete table inet meshos\n",
            "iifname \"ap*\" jump from_clients",
            "udp dport { 53, 67 } accept",
            "tcp dport { 53, 9100 } accept",
            "iifname \"ap*\" oifname \"ygg0\" tcp dport 22 counter drop",
            "oifname \"ap*\" iifname != \"ap*\" ct state != { established, related } counter drop",
            "meta l4proto 4 iifname != \"ygg0\" counter drop",
            "meta l4proto { 1, 58 } accept",
            "fib saddr . iif oif missing counter drop",
        ] {
            assert!(r.contains(want), "{want} missing:\n{r}");
        }
        let open = ruleset(&policy(true));
        assert!(open.contains("tcp dport { 53, 9100, 22 } accept") && !open.contains("tcp dport 22 counter drop"), "{open}");
        let quiet = ruleset(&Policy { pages: None, ..policy(false) });
        assert!(quiet.contains("tcp dport { 53 } accept"), "{quiet}");
    }

    /// `nft --check` parses the ruleset as the kernel would take it, where nft is installed,
    /// without /etc/protocols where this test may hide it.
    #[test]
    fn nft_takes_the_ruleset() {
        if command::run("nft", &["--version"]).is_err() {
            eprintln!("nft is not installed here; the ruleset's syntax is checked where it is");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        for p in [policy(false), policy(true)] {
            // --check runs the commands without committing; "delete table" needs the table.
            let text = ruleset(&p).replace("delete table inet meshos\n", "");
            let path = dir.path().join("fw.nft");
            std::fs::write(&path, text).unwrap();
            // As on a node, where no /etc/protocols names protocols (where unshare may hide it).
            let check = format!("mount --bind /dev/null /etc/protocols 2>/dev/null; exec nft --check -f {}", path.display());
            let hidden = command::run("unshare", &["-m", "sh", "-c", &check]);
            let run = if hidden.as_ref().is_err_and(|e| !e.contains("Error:")) {
                command::run("nft", &["--check", "-f", &path.display().to_string()])
            } else {
                hidden
            };
            match run {
                Err(e) if e.contains("Operation not permitted") => eprintln!("nft needs root to check a ruleset; not checked"),
                Err(e) => panic!("{e}"),
                Ok(_) => {}
            }
        }
    }
}
