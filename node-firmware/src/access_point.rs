//! Access points for ordinary Wi-Fi clients: hostapd (from Debian) on radios mesh.yaml gives
//! the `accessPoint` role, and busybox udhcpd handing out addresses on them.

use crate::command;
use crate::config::{channel_of, Config};
use crate::radio::{self, Radio};
use crate::supervisor::Service;
use std::path::Path;

/// The client network of the access point on radio `index`: node local, never routed over
/// the mesh, so every node may use the same numbers.
pub fn subnet(index: u32) -> (String, String) {
    (format!("10.42.{index}.1"), format!("10.42.{index}"))
}

/// hostapd's configuration. The SSID goes in hex (`ssid2=`), so no byte of it can end its
/// line and add a directive; the passphrase is printable ASCII (checked in crate::config).
pub fn hostapd_conf(interface: &str, ssid: &str, passphrase: &str, config: &Config) -> String {
    let ssid: String = ssid.bytes().map(|b| format!("{b:02x}")).collect();
    let channel = channel_of(config.mesh.frequency).unwrap_or(1);
    let band = if config.mesh.frequency < 5000 { "g" } else { "a" };
    format!(
        "# Written by meshd from mesh.yaml; changes here are lost.\n\
interface={interface}\ndriver=nl80211\nctrl_interface={ctrl}\nssid2={ssid}\ncountry_code={country}\nieee80211d=1\n\
hw_mode={band}\nchannel={channel}\nieee80211n=1\nwmm_enabled=1\nauth_algs=1\nwpa=2\nwpa_key_mgmt=WPA-PSK\nrsn_pairwise=CCMP\n\
wpa_passphrase={passphrase}\n",
        ctrl = "/run/hostapd",
        country = config.mesh.country,
    )
}

pub fn udhcpd_conf(interface: &str, index: u32, run_dir: &Path) -> String {
    let (gateway, net) = subnet(index);
    format!(
        "# Written by meshd; changes here are lost.\ninterface {interface}\nstart {net}.100\nend {net}.250\n\
lease_file {leases}\noption subnet 255.255.255.0\noption router {gateway}\noption lease 3600\n",
        leases = run_dir.join(format!("udhcpd-{interface}.leases")).display(),
    )
}

/// Makes the AP interface on `radio`, writes the configs and returns the two services.
pub fn bring_up(radio: &Radio, ssid: &str, passphrase: &str, config: &Config, run_dir: &Path) -> Result<Vec<Service>, String> {
    let interface = radio.interface(crate::config::Role::AccessPoint);
    radio::make_interface(radio, &interface, "__ap")?;
    let (gateway, _) = subnet(radio.index);
    let _ = command::run("ip", &["addr", "flush", "dev", &interface]);
    command::run("ip", &["addr", "add", &format!("{gateway}/24"), "dev", &interface])?;
    // hostapd's holds the passphrase.
    let write = |name: String, text: String| -> Result<String, String> {
        let path = run_dir.join(name);
        crate::durable::write_private(&path, text.as_bytes())?;
        Ok(path.display().to_string())
    };
    let hostapd = write(format!("hostapd-{interface}.conf"), hostapd_conf(&interface, ssid, passphrase, config))?;
    let udhcpd = write(format!("udhcpd-{interface}.conf"), udhcpd_conf(&interface, radio.index, run_dir))?;
    std::fs::write(run_dir.join(format!("udhcpd-{interface}.leases")), b"").map_err(|e| format!("{}: {e}", run_dir.display()))?;
    Ok(vec![
        Service::new(&format!("hostapd-{interface}"), "hostapd", vec![hostapd], run_dir),
        Service::new(&format!("udhcpd-{interface}"), "udhcpd", vec!["-f".into(), udhcpd], run_dir),
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
        ] {
            assert!(text.contains(want), "{want} missing from\n{text}");
        }
        // A newline in the SSID cannot add a directive.
        let text = hostapd_conf("ap1", "x\nwpa=0", "correct horse", &c);
        assert!(text.contains("ssid2=780a7770613d30\n") && !text.contains("\nwpa=0"), "{text}");
        let d = udhcpd_conf("ap1", 1, Path::new("/run/meshd"));
        assert!(d.contains("start 10.42.1.100\n") && d.contains("option router 10.42.1.1\n"), "{d}");
    }
}
