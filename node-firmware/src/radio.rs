//! Radios: finding them (at boot and when plugged in later), deciding their role from
//! mesh.yaml, and making 802.11s mesh points of them with `iw`.
//!
//! A radio that is unplugged and plugged back comes back as a new phy; it is found by the next
//! scan and set up from scratch, so a replug never needs a reboot.

use crate::command::run;
use crate::config::{Mesh, RadioRule, Role};
use serde::Serialize;
use std::fs;
use std::path::Path;

const PHYS: &str = "/sys/class/ieee80211";

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Radio {
    pub phy: String,
    pub index: u32,
    pub driver: String,
    /// USB vendor:product when the radio is on USB.
    pub usb: Option<String>,
    pub mac: String,
}

impl Radio {
    /// The interface meshd makes on this radio for `role`.
    pub fn interface(&self, role: Role) -> String {
        match role {
            Role::Mesh => format!("mesh{}", self.index),
            Role::AccessPoint => format!("ap{}", self.index),
            Role::Off => String::new(),
        }
    }

    pub fn role(&self, rules: &[RadioRule]) -> Role {
        rules
            .iter()
            .find(|r| {
                r.driver.as_ref().is_none_or(|d| *d == self.driver)
                    && r.usb.as_ref().is_none_or(|u| self.usb.as_ref().is_some_and(|mine| mine.eq_ignore_ascii_case(u)))
                    && r.mac.as_ref().is_none_or(|m| m.eq_ignore_ascii_case(&self.mac))
            })
            .map_or(Role::Mesh, |r| r.role)
    }
}

/// The radios in this network namespace, by phy name.
pub fn scan() -> Vec<Radio> {
    let Ok(dir) = fs::read_dir(PHYS) else { return Vec::new() };
    let mut radios: Vec<Radio> = dir
        .flatten()
        .filter_map(|e| {
            let phy = e.file_name().to_string_lossy().into_owned();
            let base = e.path();
            let read = |name: &str| fs::read_to_string(base.join(name)).ok().map(|s| s.trim().to_string());
            let index = read("index")?.parse().ok()?;
            let driver =
                fs::read_link(base.join("device/driver")).ok().and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned())).unwrap_or_default();
            // A USB radio's phy hangs off the USB interface; the device with the ids is its parent.
            let usb = (|| {
                let v = fs::read_to_string(base.join("device/../idVendor")).ok()?;
                let p = fs::read_to_string(base.join("device/../idProduct")).ok()?;
                Some(format!("{}:{}", v.trim(), p.trim()))
            })();
            Some(Radio { phy, index, driver, usb, mac: read("macaddress").unwrap_or_default() })
        })
        .collect();
    radios.sort_by_key(|r| r.index);
    radios
}

/// Sets the regulatory domain the radios transmit under.
pub fn set_country(country: &str) -> Result<(), String> {
    run("iw", &["reg", "set", country]).map(drop)
}

/// Removes whatever interfaces the driver made on `radio` (wlan0, ...), then adds `name` of
/// `kind` (`mp` for mesh point, `__ap` for access point).
pub fn make_interface(radio: &Radio, name: &str, kind: &str) -> Result<(), String> {
    if let Ok(dir) = fs::read_dir(Path::new(PHYS).join(&radio.phy).join("device/net")) {
        for e in dir.flatten() {
            let existing = e.file_name().to_string_lossy().into_owned();
            if existing != name {
                run("iw", &["dev", &existing, "del"])?;
            }
        }
    }
    if !Path::new("/sys/class/net").join(name).exists() {
        run("iw", &["phy", &radio.phy, "interface", "add", name, "type", kind])?;
    }
    Ok(())
}

/// Makes `radio` an 802.11s mesh point on the configured mesh: joins the mesh id on the
/// frequency and HT mode, with forwarding off (the overlay router routes) and the RSSI
/// threshold set.
pub fn bring_up_mesh(radio: &Radio, mesh: &Mesh) -> Result<String, String> {
    let name = radio.interface(Role::Mesh);
    make_interface(radio, &name, "mp")?;
    run("ip", &["link", "set", &name, "up"])?;
    let freq = mesh.frequency.to_string();
    let rssi = format!("mesh_rssi_threshold={}", mesh.rssi_threshold);
    // Joining an already joined interface fails with EALREADY; leave first so a changed
    // config always takes effect.
    let _ = run("iw", &["dev", &name, "mesh", "leave"]);
    run("iw", &["dev", &name, "mesh", "join", &mesh.id, "freq", &freq, mesh.ht_mode.iw(), "mesh_fwding=0", &rssi])?;
    Ok(name)
}

/// One neighbour as `iw dev <if> station dump` reports it.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Station {
    pub interface: String,
    pub mac: String,
    pub signal_dbm: Option<i32>,
    pub tx_bitrate_mbps: Option<f64>,
    pub rx_bytes: u64,
    pub tx_bytes: u64,
    /// Mesh peer link state (`ESTAB` when peered).
    pub plink: Option<String>,
}

pub fn stations(interface: &str) -> Result<Vec<Station>, String> {
    run("iw", &["dev", interface, "station", "dump"]).map(|text| parse_station_dump(interface, &text))
}

fn parse_station_dump(interface: &str, text: &str) -> Vec<Station> {
    let mut out: Vec<Station> = Vec::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("Station ") {
            let mac = rest.split_whitespace().next().unwrap_or("").to_string();
            out.push(Station { interface: interface.into(), mac, ..Station::default() });
            continue;
        }
        let Some(st) = out.last_mut() else { continue };
        let Some((key, value)) = line.trim().split_once(':') else { continue };
        let value = value.trim();
        let first = value.split_whitespace().next().unwrap_or("");
        match key {
            "signal" => st.signal_dbm = first.parse().ok(),
            "tx bitrate" => st.tx_bitrate_mbps = first.parse().ok(),
            "rx bytes" => st.rx_bytes = first.parse().unwrap_or(0),
            "tx bytes" => st.tx_bytes = first.parse().unwrap_or(0),
            "mesh plink" => st.plink = Some(first.to_string()),
            _ => {}
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn radio(driver: &str, usb: Option<&str>) -> Radio {
        Radio { phy: "phy3".into(), index: 3, driver: driver.into(), usb: usb.map(String::from), mac: "02:00:00:00:03:00".into() }
    }

    #[test]
    fn first_matching_rule_decides_and_the_rest_mesh() {
        let rules: Vec<RadioRule> = serde_norway::from_str(
            "- { usb: 148F:5572, role: accessPoint }\n- { driver: ath9k_htc, mac: 02:00:00:00:03:00, role: off }\n- { driver: ath9k_htc, role: accessPoint }\n",
        )
        .unwrap();
        assert_eq!(radio("rt2800usb", Some("148f:5572")).role(&rules), Role::AccessPoint);
        assert_eq!(radio("ath9k_htc", Some("0cf3:9271")).role(&rules), Role::Off);
        assert_eq!(radio("brcmfmac", None).role(&rules), Role::Mesh);
        assert_eq!(radio("rt2800usb", None).interface(Role::Mesh), "mesh3");
    }

    #[test]
    fn station_dump_parses() {
        // As iw 6.9 prints it for a mac80211_hwsim mesh peer.
        let text = "Station 02:00:00:00:01:00 (on mesh0)\n\tinactive time:\t120 ms\n\trx bytes:\t5120\n\trx packets:\t60\n\
\ttx bytes:\t2048\n\tsignal:  \t-30 dBm\n\ttx bitrate:\t54.0 MBit/s\n\tmesh llid:\t0\n\tmesh plink:\tESTAB\n\
Station 02:00:00:00:02:00 (on mesh0)\n\tsignal:  \t-71 [-71] dBm\n\tmesh plink:\tLISTEN\n";
        let s = parse_station_dump("mesh0", text);
        assert_eq!(s.len(), 2);
        assert_eq!((s[0].rx_bytes, s[0].tx_bytes, s[0].signal_dbm, s[0].tx_bitrate_mbps), (5120, 2048, Some(-30), Some(54.0)));
        assert_eq!((s[0].plink.as_deref(), s[1].plink.as_deref(), s[1].signal_dbm), (Some("ESTAB"), Some("LISTEN"), Some(-71)));
    }
}
