//! meshd: the meshos node daemon. Parses the command line and hands over to the modules;
//! `daemon` is the node's life, `status` what `meshd status` shows.

#[macro_use]
mod log;

mod access_point;
mod boot_check;
mod bundle_source;
mod chunk_fetch;
mod command;
mod conf_d;
mod config;
mod daemon;
mod dirs;
mod durable;
mod entropy;
mod firewall;
mod gateway;
mod health;
mod held;
mod http;
mod identity;
mod local_install;
mod machine;
mod meshview;
mod metrics;
mod node;
mod radio;
mod rollout;
mod router;
mod services;
mod slot_bundle;
mod slots;
mod status;
mod supervisor;
mod trust;
mod upgrade;
mod watchdog;
mod wired;

use std::path::PathBuf;
use std::process::ExitCode;

const USAGE: &str = "usage: meshd <command> [options]

commands:
  run [--boot DIR] [--state DIR] [--run DIR]
             start the daemon (what init does); the directories default to
             /boot (mesh.yaml), /data/meshd (identity) and /run/meshd
  status [--json] [--run DIR]
             what this node runs: radios, services, overlay peers
  upgrade install FILE|URL [--ca PEM] [--allow-downgrade] [--no-reboot]
             install a signed update bundle into the other slot, then reboot
             into it; an http(s) URL is streamed, not stored (--ca: trust
             these CA certificates for https instead of Mozilla's roots).
             A bundle in updates/ on the boot partition is installed at start
  upgrade status [--json]
             running slot, boot order and attempts, last install
  check-config [FILE]
             check a mesh.yaml (default /boot/mesh.yaml) and say what is wrong
  --version  print meshd's version

options for every command:
  --lab DIR  run as a node of the mesh lab whose files are in DIR (see
             docs/lab.md); the directories then default to DIR/boot,
             DIR/data and DIR/run
";

fn main() -> ExitCode {
    let mut args: Vec<String> = std::env::args().skip(1).collect();
    let result = lab_option(&mut args).and_then(|lab| command(&args, lab.as_deref()));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            logln!("meshd: error: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Takes `--lab DIR` out of the arguments and makes this process that lab node.
fn lab_option(args: &mut Vec<String>) -> Result<Option<PathBuf>, String> {
    let Some(at) = args.iter().position(|a| a == "--lab") else { return Ok(None) };
    let dir = args.get(at + 1).map(PathBuf::from).ok_or_else(|| format!("--lab needs the lab node's directory\n{USAGE}"))?;
    args.drain(at..at + 2);
    machine::use_lab(&dir)?;
    Ok(Some(dir))
}

/// meshd's directories: the image's, or a lab node's.
fn default_dirs(lab: Option<&std::path::Path>) -> dirs::Dirs {
    match lab {
        None => dirs::Dirs::default(),
        Some(d) => dirs::Dirs { boot: d.join("boot"), state: d.join("data"), run: d.join("run") },
    }
}

fn command(args: &[String], lab: Option<&std::path::Path>) -> Result<(), String> {
    match args.first().map(String::as_str) {
        None | Some("run") => dirs(args, lab).and_then(|d| daemon::run(&d)),
        Some("status") => dirs(args, lab).and_then(|d| show_status(&d, args.iter().any(|a| a == "--json"))),
        Some("upgrade") => upgrade_command(&args[1..], default_dirs(lab)),
        Some("check-config") => check_config(args.get(1).map_or("/boot/mesh.yaml", String::as_str)),
        Some("--version" | "-V") => {
            println!("meshd {}", env!("CARGO_PKG_VERSION"));
            Ok(())
        }
        Some("--help" | "-h" | "help") => {
            print!("{USAGE}");
            Ok(())
        }
        Some(other) => Err(format!("unknown command '{other}'\n{USAGE}")),
    }
}

fn dirs(args: &[String], lab: Option<&std::path::Path>) -> Result<dirs::Dirs, String> {
    let mut d = default_dirs(lab);
    let mut it = args.iter().skip(1);
    while let Some(a) = it.next() {
        let slot = match a.as_str() {
            "--boot" => &mut d.boot,
            "--state" => &mut d.state,
            "--run" => &mut d.run,
            "--json" => continue,
            other => return Err(format!("unknown option '{other}'\n{USAGE}")),
        };
        *slot = PathBuf::from(it.next().ok_or_else(|| format!("{a} needs a directory"))?);
    }
    Ok(d)
}

fn show_status(d: &dirs::Dirs, json: bool) -> Result<(), String> {
    let state = status::read(&d.run)?;
    let peers = router::peers(&d.run);
    if json {
        let mut v = serde_json::to_value(&state).expect("status serialises");
        v["peers"] = match &peers {
            Ok(p) => serde_json::to_value(p).expect("peers serialise"),
            Err(e) => serde_json::json!({ "error": e }),
        };
        println!("{}", serde_json::to_string_pretty(&v).expect("JSON value serialises"));
    } else {
        print!("{}", status::render(&state, &peers));
    }
    Ok(())
}

fn check_config(file: &str) -> Result<(), String> {
    let path = std::path::Path::new(file);
    let text = std::fs::read_to_string(path).map_err(|e| format!("{file}: {e}"))?;
    config::parse(path, &text).map_err(|e| e.to_string())?;
    println!("{file}: ok");
    Ok(())
}

fn upgrade_command(args: &[String], dirs: dirs::Dirs) -> Result<(), String> {
    match args.first().map(String::as_str) {
        Some("install") => {
            let (mut source, mut ca) = (None, None);
            let (mut allow_downgrade, mut reboot) = (false, true);
            let mut rest = args[1..].iter();
            while let Some(a) = rest.next() {
                match a.as_str() {
                    "--allow-downgrade" => allow_downgrade = true,
                    "--no-reboot" => reboot = false,
                    "--ca" => ca = Some(PathBuf::from(rest.next().ok_or_else(|| format!("--ca needs a PEM file\n{USAGE}"))?)),
                    s if !s.starts_with('-') && source.is_none() => source = Some(s.to_string()),
                    other => return Err(format!("unknown option '{other}'\n{USAGE}")),
                }
            }
            let source = source.ok_or_else(|| format!("upgrade install needs a bundle file or URL\n{USAGE}"))?;
            let source = bundle_source::Source::parse(&source, ca)?;
            let version = local_install::install_bundle(&source, &dirs, allow_downgrade).map_err(|e| e.to_string())?;
            println!("installed {version}; it boots next");
            if reboot {
                machine::current().reboot()?;
            }
            Ok(())
        }
        Some("status") => {
            let json = args.iter().any(|a| a == "--json");
            let node = node::Node::detect()?;
            let machine = machine::current();
            let disk = machine.boot_disk(&machine.cmdline()?)?;
            let (state, _) = slots::read_state(&disk)?;
            let record = upgrade::read_record(&dirs.state);
            // The agent's phase and note, as the daemon last published them.
            let agent = status::read(&dirs.run).ok().map(|s| s.upgrade);
            if json {
                let v = serde_json::json!({
                    "running_slot": node.slot.to_uppercase(), "version": node.release.version,
                    "boot_order": state.order.iter().map(|s| s.to_string()).collect::<Vec<_>>(),
                    "a_left": state.a_left, "b_left": state.b_left, "seq": state.seq,
                    "last_install": record,
                    "phase": agent.as_ref().map(|a| a.phase), "note": agent.as_ref().and_then(|a| a.note.clone()),
                    "releases": agent.as_ref().map(|a| a.releases.clone()),
                    "false_claims": agent.as_ref().map(|a| a.false_claims.clone()),
                    "holding": agent.as_ref().map(|a| a.holding.clone()),
                    "failed": agent.as_ref().map(|a| a.failed.clone()),
                });
                println!("{}", serde_json::to_string_pretty(&v).expect("JSON value serialises"));
            } else {
                println!("running  slot {} ({} {})", node.slot.to_uppercase(), node.release.board, node.release.version);
                let order: Vec<String> = state.order.iter().map(|s| s.to_string()).collect();
                println!("boots    order {}, attempts left A {} B {} (record {})", order.join(" "), state.a_left, state.b_left, state.seq);
                match record {
                    Some(r) => {
                        println!("last     {}: {} {}", r.step, r.source, r.version.unwrap_or_default());
                        if let Some(e) = r.error {
                            println!("error    {e}");
                        }
                        if let Some(t) = r.transfer {
                            let pct = |n: u64| 100.0 * n as f64 / t.bundle_bytes.max(1) as f64;
                            println!(
                                "fetched  {} bytes ({:.1}% of the {}-byte bundle) in {} attempt(s); {} bytes found on the node",
                                t.fetched_bytes,
                                pct(t.fetched_bytes),
                                t.bundle_bytes,
                                t.attempts,
                                t.reused_bytes
                            );
                            for (peer, p) in &t.peers {
                                let bad = if p.bad_chunks > 0 { format!(", {} BAD chunk(s)", p.bad_chunks) } else { String::new() };
                                println!(
                                    "  from   {peer}: {} chunks, {} bytes{bad}{}",
                                    p.chunks,
                                    p.bytes,
                                    if p.failures > 0 { format!(", {} failed request(s)", p.failures) } else { String::new() }
                                );
                            }
                        }
                    }
                    None => println!("last     no install on this node yet"),
                }
                if let Some(a) = agent {
                    let phase = serde_json::to_value(a.phase).ok().and_then(|v| v.as_str().map(String::from)).unwrap_or_default();
                    println!("mesh     {phase}{}", a.note.map(|n| format!(": {n}")).unwrap_or_default());
                    for (peer, what) in &a.false_claims {
                        println!("  FALSE  {peer}: {what}");
                    }
                    for (manifest, why) in &a.holding {
                        println!("  HELD   {manifest}: it {why}");
                    }
                    for f in &a.failed {
                        println!("  FAILED {} here ({})", f.manifest, f.kind);
                    }
                }
            }
            Ok(())
        }
        _ => Err(format!("upgrade needs install or status\n{USAGE}")),
    }
}
