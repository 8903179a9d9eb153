//! The long-running programs meshd starts beside the radios: the overlay router (and cjdns's
//! restart when its links change) and the ssh server.

use crate::command;
use crate::config::Config;
use crate::dirs::Dirs;
use crate::identity::Identity;
use crate::router;
use crate::supervisor::Service;
use std::fs;
use std::path::Path;

pub fn start_router(cfg: &Config, id: &Identity, dirs: &Dirs) -> Result<Service, String> {
    let launch = router::launch(cfg, id, &dirs.state, &dirs.run)?;
    if !Path::new("/dev/net/tun").exists() {
        crate::machine::current().load_module("tun")?;
    }
    // It holds the router's private key.
    crate::durable::write_private(&launch.config_path, launch.config_text.as_bytes())?;
    router::forget_other(cfg, &dirs.run);
    Ok(Service::new(launch.name, launch.program, launch.args, &dirs.run))
}

/// cjdns binds its interfaces only at start: when the links change (a radio became a mesh
/// point, a USB Ethernet was plugged in), its config is written anew and it is restarted.
pub fn rebind_cjdns(known: &mut Vec<String>, services: &mut [Service], cfg: &Config, id: &Identity, dirs: &Dirs) {
    let now = router::cjdns_interfaces(&cfg.wired.peering);
    if now == *known {
        return;
    }
    logln!("meshd: cjdns: links now {}; restarting it to bind them", now.join(" "));
    *known = now;
    let Some(service) = services.iter_mut().find(|s| s.name == "cjdns") else { return };
    match router::launch(cfg, id, &dirs.state, &dirs.run).and_then(|l| crate::durable::write_private(&l.config_path, l.config_text.as_bytes())) {
        Ok(()) => service.stop(),
        Err(e) => logln!("meshd: cjdns: {e}"),
    }
}

/// dropbear, key logins only (`-s`), host key kept on the data partition.
pub fn start_ssh(cfg: &Config, dirs: &Dirs) -> Result<Option<Service>, String> {
    if cfg.ssh.authorized_keys.is_empty() {
        return Ok(None);
    }
    let home = Path::new("/root/.ssh");
    fs::create_dir_all(home).map_err(|e| format!("{}: {e}", home.display()))?;
    let keys = home.join("authorized_keys");
    crate::durable::write_private(&keys, (cfg.ssh.authorized_keys.join("\n") + "\n").as_bytes())?;
    let host_key = dirs.state.join("dropbear_ed25519_host_key");
    if !host_key.exists() {
        command::run("dropbearkey", &["-t", "ed25519", "-f", &host_key.display().to_string()])?;
    }
    let args = ["-F", "-E", "-s", "-r", &host_key.display().to_string(), "-p", "22"].map(String::from).to_vec();
    Ok(Some(Service::new("dropbear", "dropbear", args, &dirs.run)))
}
