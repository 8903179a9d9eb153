//! Wired interfaces: brought up for peering, and DHCP clients (udhcpc) that follow them as
//! they come and go (USB Ethernet).

use crate::command;
use crate::config::Wired;
use crate::supervisor::Service;
use std::collections::BTreeMap;
use std::fs;
use std::path::Path;

pub const UDHCPC_SCRIPT: &str = "/usr/share/meshos/udhcpc.script";

/// Wired interfaces: those marked for peering or DHCP are brought up (the router needs their
/// link-local addresses), DHCP clients follow interfaces as they come and go (USB Ethernet).
pub fn manage(wired: &Wired, dhcp: &mut BTreeMap<String, Service>, run_dir: &Path) {
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
                logln!("meshd: {err}");
            }
        }
        if wants_dhcp && !dhcp.contains_key(&name) {
            // Quietly retried every 30 s when no server answers (a link to another node).
            // The running slot's hook (a lab node's is in its slot's files, crate::machine).
            let script = crate::machine::in_root(UDHCPC_SCRIPT).display().to_string();
            let args = ["-f", "-i", &name, "-s", &script, "-t", "3", "-T", "2", "-A", "30"].map(String::from).to_vec();
            dhcp.insert(name.clone(), Service::new(&format!("dhcp-{name}"), "udhcpc", args, run_dir));
        }
    }
}
