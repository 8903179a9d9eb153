//! Access points for ordinary Wi-Fi clients: hostapd (from Debian) on radios mesh.yaml gives
//! the `accessPoint` role, and dnsmasq (Debian's dnsmasq-base) on each: IPv4 addresses by
//! DHCP, the node's overlay-routed IPv6 prefix by router advertisements (so a phone reaches
//! every node of the mesh by IPv6 without running a router), and DNS, forwarded to the
//! gateway's (crate::gateway).

use crate::command;
use crate::config::{channel_of, Config};
use crate::radio::{self, Radio};
use crate::supervisor::Service;
use std::net::Ipv6Addr;
use std::path::Path;

/// The client network of the access point on radio `index`: node local, never routed over
/// the mesh, so every node may use the same numbers.
pub fn subnet(index: u32) -> (String, String) {
    (format!("10.42.{index}.1"), format!("10.42.{index}"))
}

/// hostapd's configuration. The SSID goes in hex (`ssid2=`), so no byte of it can end its
/// line and add a directive; the passphrase is printable ASCII (checked in crate::config).
/// The WPA2 handshakes' key messages are sent up to 8 times (hostapd's default 4, a second
/// apart after the first): a small board that is busy, or a phone that wakes slowly, answers
/// late, and with 4 the access point gave up on such a client (reason 15) again and again.
pub fn hostapd_conf(interface: &str, ssid: &str, passphrase: &str, config: &Config) -> String {
    let ssid: String = ssid.bytes().map(|b| format!("{b:02x}")).collect();
    let channel = channel_of(config.mesh.frequency).unwrap_or(1);
    let band = if config.mesh.frequency < 5000 { "g" } else { "a" };
    format!(
        "# Written by meshd from mesh.yaml; changes here are lost.\n\
interface={interface}\ndriver=nl80211\nctrl_interface={ctrl}\nssid2={ssid}\ncountry_code={country}\nieee80211d=1\n\
hw_mode={band}\nchannel={channel}\nieee80211n=1\nwmm_enabled=1\nauth_algs=1\nwpa=2\nwpa_key_mgmt=WPA-PSK\nrsn_pairwise=CCMP\n\
wpa_passphrase={passphrase}\nwpa_pairwise_update_count=8\nwpa_group_update_count=8\n",
        ctrl = "/run/hostapd",
        country = config.mesh.country,
    )
}

/// The node's routed IPv6 /64 (Yggdrasil gives each node `300::/8` plus the 56 bits after its
/// address's `200::/8` prefix), and the address the access point takes in it.
pub fn ipv6_prefix(overlay: Ipv6Addr) -> Option<(Ipv6Addr, Ipv6Addr)> {
    let mut o = overlay.octets();
    if o[0] != 0x02 {
        return None; // cjdns (fc00::/8) routes single addresses, no prefixes
    }
    o[0] = 0x03;
    o[8..].fill(0);
    let net = Ipv6Addr::from(o);
    o[15] = 1;
    Some((net, Ipv6Addr::from(o)))
}

/// dnsmasq's configuration for one access point: DHCP, router advertisements of `prefix` (with
/// the DNS server in them), and DNS forwarded to the servers meshd writes for the role.
pub fn dnsmasq_conf(interface: &str, index: u32, prefix: Option<Ipv6Addr>, run_dir: &Path) -> String {
    let (gateway, net) = subnet(index);
    let mut text = format!(
        "# Written by meshd; changes here are lost.\ninterface={interface}\nbind-dynamic\nexcept-interface=lo\nno-hosts\n\
resolv-file={upstream}\ndhcp-range={net}.100,{net}.250,255.255.255.0,1h\ndhcp-option=option:router,{gateway}\n\
dhcp-leasefile={leases}\ndhcp-authoritative\npid-file=\nuser=nobody\ngroup=nogroup\nlog-facility=-\n",
        upstream = crate::gateway::upstream_path(run_dir).display(),
        leases = crate::gateway::dns_dir(run_dir).join(format!("{interface}.leases")).display(),
    );
    if prefix.is_some() {
        text.push_str(&format!("enable-ra\ndhcp-range=::,constructor:{interface},ra-only,64,1h\n"));
    }
    text
}

/// Makes the AP interface on `radio`, writes the configs and returns the two services. `ipv6`
/// is the node's routed prefix, for the one access point that advertises it.
pub fn bring_up(radio: &Radio, ssid: &str, passphrase: &str, config: &Config, run_dir: &Path, ipv6: Option<Ipv6Addr>) -> Result<Vec<Service>, String> {
    let interface = radio.interface(crate::config::Role::AccessPoint);
    radio::make_interface(radio, &interface, "__ap")?;
    let (gateway, _) = subnet(radio.index);
    let _ = command::run("ip", &["addr", "flush", "dev", &interface]);
    command::run("ip", &["addr", "add", &format!("{gateway}/24"), "dev", &interface])?;
    let prefix = ipv6.and_then(ipv6_prefix);
    if let Some((_, address)) = prefix {
        command::run("ip", &["-6", "addr", "add", &format!("{address}/64"), "dev", &interface, "nodad"])?;
        // The overlay router delivers the prefix's packets; the node passes them on.
        crate::gateway::sysctl("net/ipv6/conf/all/forwarding", "1")?;
    }
    // hostapd's holds the passphrase.
    let write = |name: String, text: String| -> Result<String, String> {
        let path = run_dir.join(name);
        crate::durable::write_private(&path, text.as_bytes())?;
        Ok(path.display().to_string())
    };
    let hostapd = write(format!("hostapd-{interface}.conf"), hostapd_conf(&interface, ssid, passphrase, config))?;
    crate::gateway::prepare_dns_dir(run_dir)?;
    let dnsmasq = write(format!("dnsmasq-{interface}.conf"), dnsmasq_conf(&interface, radio.index, prefix.map(|(net, _)| net), run_dir))?;
    Ok(vec![
        Service::new(&format!("hostapd-{interface}"), "hostapd", vec![hostapd], run_dir),
        Service::new(&format!("dnsmasq-{interface}"), "dnsmasq", vec!["--keep-in-foreground".into(), format!("--conf-file={dnsmasq}")], run_dir),
    ])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hostapd_follows_the_mesh_channel_and_country() {
        let mut c = Config::default();
        c.mesh.frequency = 2437;
        c.mesh.country = "DE".into();
        let text = hostapd_conf("ap1", "corner-cafe", "correct horse", &c);
        for want in [
            "interface=ap1\n",
            "ssid2=636f726e65722d63616665\n",
            "channel=6\n",
            "hw_mode=g\n",
            "country_code=DE\n",
            "wpa_passphrase=correct horse\n",
            "wpa=2\n",
            "wpa_pairwise_update_count=8\n",
        ] {
            assert!(text.contains(want), "{want} missing from\n{text}");
        }
        // A newline in the SSID cannot add a directive.
        let text = hostapd_conf("ap1", "x\nwpa=0", "correct horse", &c);
        assert!(text.contains("ssid2=780a7770613d30\n") && !text.contains("\nwpa=0"), "{text}");
        let d = dnsmasq_conf("ap1", 1, None, Path::new("/run/meshd"));
        assert!(d.contains("dhcp-range=10.42.1.100,10.42.1.250,255.255.255.0,1h\n") && d.contains("option:router,10.42.1.1\n"), "{d}");
        assert!(d.contains("resolv-file=/run/meshd/dns/resolv.upstream\n") && !d.contains("enable-ra"), "{d}");
    }

    #[test]
    fn the_routed_prefix_is_the_overlay_address_in_300() {
        let (net, me) = ipv6_prefix("200:1234:5678:9abc:def0:1:2:3".parse().unwrap()).unwrap();
        assert_eq!((net.to_string(), me.to_string()), ("300:1234:5678:9abc::".into(), "300:1234:5678:9abc::1".into()));
        assert_eq!(ipv6_prefix("fc00::1".parse().unwrap()), None);
        let d = dnsmasq_conf("ap1", 1, Some(net), Path::new("/run/meshd"));
        assert!(d.contains("enable-ra\ndhcp-range=::,constructor:ap1,ra-only,64,1h\n"), "{d}");
    }
}
