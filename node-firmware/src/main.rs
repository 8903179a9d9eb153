//! meshd: the meshos node daemon. Parses the command line and hands over to the modules;
//! `daemon` is the node's life, `status` what `meshd status` shows.

mod access_point;
mod command;
mod config;
mod daemon;
mod http;
mod identity;
mod metrics;
mod node;
mod radio;
mod router;
mod slots;
mod status;
mod supervisor;

use std::path::PathBuf;
use std::process::ExitCode;

const USAGE: &str = "usage: meshd <command> [options]

commands:
  run [--boot DIR] [--state DIR] [--run DIR]
             start the daemon (what init does); the directories default to
             /boot (mesh.yaml), /data/meshd (identity) and /run/meshd
  status [--json] [--run DIR]
             what this node runs: radios, services, overlay peers
  check-config [FILE]
             check a mesh.yaml (default /boot/mesh.yaml) and say what is wrong
  --version  print meshd's version
";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        None | Some("run") => dirs(&args).and_then(|d| daemon::run(&d)),
        Some("status") => dirs(&args).and_then(|d| show_status(&d, args.iter().any(|a| a == "--json"))),
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
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("meshd: error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn dirs(args: &[String]) -> Result<daemon::Dirs, String> {
    let mut d = daemon::Dirs::default();
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

fn show_status(d: &daemon::Dirs, json: bool) -> Result<(), String> {
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
