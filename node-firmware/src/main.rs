//! meshd: the meshos node daemon.
//!
//! For now it learns what the node is (version, board, slot), announces the boot contract line
//! once per boot, and stays up under busybox init's supervision. Mesh links, routing, metrics
//! and upgrades build on this.

mod config;
mod node;

use std::process::ExitCode;

const USAGE: &str = "usage: meshd [run|status|--version]\n\
  run        start the daemon (what init does)\n\
  status     print what this node runs\n\
  --version  print meshd's version\n";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        None | Some("run") => run(),
        Some("status") => node::Node::detect().map(|n| println!("{}", n.status_text())),
        Some("--version" | "-V") => {
            println!("meshd {}", env!("CARGO_PKG_VERSION"));
            Ok(())
        }
        Some("--help" | "-h") => {
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

fn run() -> Result<(), String> {
    let node = node::Node::detect()?;
    if let Some(kb) = node::rss_kib() {
        eprintln!("meshd: running (VmRSS {kb} kB)");
    }
    node.announce_once()?;
    // Supervised by init: stay up. Later work (links, router, metrics) hangs off this loop.
    loop {
        std::thread::sleep(std::time::Duration::from_secs(3600));
    }
}
