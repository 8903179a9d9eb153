//! meshlab: a community mesh of real meshd nodes on one machine, each in its own network
//! namespace with its own card, links shaped like radio links, and a scenario run to its end.
//! See docs/lab.md.

mod broken;
mod faults;
mod gateways;
mod hostile;
mod lab;
mod monitoring;
mod net;
mod node;
mod release;
mod scenario;
mod topology;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;
use topology::Topology;

const USAGE: &str = "usage: meshlab <command> [options]

commands:
  run --scenario rollout|faults|broken|bad-release|monitoring|gateways|hostile
      (--topology FILE | --from URL)
      --release BUNDLE [--update BUNDLE] [--meshd PATH] [--boot-time S]
      [--timeout S] [--out DIR] [--rogue DIR [--rogue-then DIR]]
      [--prometheus-config FILE] [--name NAME]
             start the mesh, run the scenario to its end, write DIR/report.json
             (default out/lab) and remove everything the lab made. --from reads
             a live node's /mesh.json (http://[address]:9100) for the topology;
             --update: the new release (rollout, faults; broken: marked so, its
             router never starts; bad-release: the same, but it works on the
             node it is put on, the one with the most neighbours); --rogue
             (faults) adds a neighbour serving DIR, a release as 'meshimg
             export' lays it out, its chunks corrupted; once all committed, it
             serves --rogue-then DIR (a release its neighbours must refuse at
             the signature); monitoring cables a host running Prometheus with
             FILE (default monitoring/prometheus.yml) to a node;
             gateways gives the two nodes farthest apart uplinks to a simulated
             internet, then cuts one; hostile adds gateways and a hostile
             neighbour of the hub (fake nodes, forged records, a false
             gateway, held connections). Labs of different --name (default
             meshlab; its namespaces are NAME-<node>) run side by side
  generate line N | ring N | grid W H | random N [RADIUS [SEED]]
             print a topology in meshnet-lab's JSON format
  clean [--name NAME]
             remove what a killed lab left (namespaces, their processes)

exit status: 0 the scenario ran and met its checks; 1 it ran and did not
(the report says why); 2 the lab could not run (bad arguments or files).
";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        Some("run") => run(&args[1..]),
        Some("generate") => generate(&args[1..]).map(|()| true),
        Some("clean") => clean(&args[1..]),
        Some("--help" | "-h" | "help") => {
            print!("{USAGE}");
            Ok(true)
        }
        _ => Err(USAGE.to_string()),
    };
    match result {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(e) => {
            eprintln!("meshlab: error: {e}");
            ExitCode::from(2)
        }
    }
}

fn clean(args: &[String]) -> Result<bool, String> {
    match args {
        [] => {}
        [flag, name] if flag == "--name" => net::set_name(name)?,
        _ => return Err(format!("clean takes only --name NAME\n{USAGE}")),
    }
    let _held = net::lock_machine()?;
    let (spaces, killed) = net::clean();
    println!("meshlab: removed {spaces} namespace(s) and {killed} process(es)");
    Ok(true)
}

fn run(args: &[String]) -> Result<bool, String> {
    let mut opt = std::collections::BTreeMap::new();
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let key = a.strip_prefix("--").filter(|k| {
            ["scenario", "topology", "from", "release", "update", "meshd", "boot-time", "timeout", "out", "rogue", "rogue-then", "prometheus-config", "name"]
                .contains(k)
        });
        let key = key.ok_or_else(|| format!("unknown option '{a}'\n{USAGE}"))?;
        let value = it.next().ok_or_else(|| format!("--{key} needs a value"))?;
        opt.insert(key, value.clone());
    }
    if let Some(name) = opt.get("name") {
        net::set_name(name)?;
    }
    let need = |k: &str| opt.get(k).cloned().ok_or_else(|| format!("run needs --{k}\n{USAGE}"));
    let seconds = |k: &str, default: u64| -> Result<Duration, String> {
        opt.get(k).map_or(Ok(default), |v| v.parse().map_err(|_| format!("--{k} {v}: a number of seconds"))).map(Duration::from_secs)
    };
    let mut topology = match (opt.get("topology"), opt.get("from")) {
        (Some(file), None) => Topology::load(file.as_ref())?,
        (None, Some(url)) => from_live_node(url)?,
        _ => return Err(format!("run needs one of --topology FILE and --from URL\n{USAGE}")),
    };
    let scenario = need("scenario")?;
    let with_faults = match scenario.as_str() {
        "rollout" | "monitoring" | "broken" | "bad-release" | "gateways" | "hostile" => false,
        "faults" => true,
        other => return Err(format!("scenario '{other}': rollout, faults, broken, bad-release, monitoring, gateways or hostile")),
    };
    if scenario == "monitoring" {
        monitoring::add_monitor(&mut topology)?;
    }
    if scenario == "hostile" {
        hostile::add_hostile(&mut topology)?;
    }
    if with_faults {
        faults::lossy(&mut topology);
        faults::add_liar(&mut topology)?;
        if let Some(dir) = opt.get("rogue") {
            faults::add_rogue(&mut topology, dir.as_ref())?;
        }
    } else if opt.contains_key("rogue") {
        return Err("--rogue belongs to the faults scenario".into());
    }
    if opt.contains_key("rogue-then") && !opt.contains_key("rogue") {
        return Err("--rogue-then needs --rogue".into());
    }
    let rogue_then = match opt.get("rogue-then") {
        Some(dir) => Some(PathBuf::from(dir).canonicalize().map_err(|e| format!("--rogue-then {dir}: {e}"))?),
        None => None,
    };
    let out = PathBuf::from(opt.get("out").map_or("out/lab", String::as_str));
    std::fs::create_dir_all(&out).map_err(|e| format!("{}: {e}", out.display()))?;
    let options = lab::Options {
        meshd: PathBuf::from(opt.get("meshd").map_or("target/release/meshd", String::as_str)),
        release: PathBuf::from(need("release")?),
        boot_time: seconds("boot-time", 20)?,
        out: out.clone(),
    };
    let timeout = seconds("timeout", 3600)?;
    let parts = topology.components().len();
    eprintln!("meshlab: {} nodes, {} links, {parts} connected part(s)", topology.nodes.len(), topology.links.len());
    let (json, summary, failed) = if scenario == "monitoring" {
        let config = PathBuf::from(opt.get("prometheus-config").map_or("monitoring/prometheus.yml", String::as_str));
        let plan = monitoring::Monitoring { config, timeout };
        let report = {
            let mut lab = lab::Lab::create(topology, &options)?;
            monitoring::run(&mut lab, &plan)?
            // the lab is removed here
        };
        (serde_json::to_string_pretty(&report), report.summary(), report.failed_checks())
    } else if scenario == "gateways" {
        let report = {
            let mut lab = lab::Lab::create(topology, &options)?;
            gateways::run(&mut lab, &gateways::Gateways { timeout })?
        };
        (serde_json::to_string_pretty(&report), report.summary(), report.failed_checks())
    } else if scenario == "hostile" {
        let report = {
            let mut lab = lab::Lab::create(topology, &options)?;
            hostile::run(&mut lab, &hostile::Hostile { timeout })?
        };
        (serde_json::to_string_pretty(&report), report.summary(), report.failed_checks())
    } else if scenario == "broken" || scenario == "bad-release" {
        let plan = broken::Broken { update: PathBuf::from(need("update")?), timeout, canaries_pass: scenario == "bad-release" };
        let report = {
            let mut lab = lab::Lab::create(topology, &options)?;
            broken::run(&mut lab, &plan)?
        };
        (serde_json::to_string_pretty(&report), report.summary(), report.failed_checks())
    } else {
        let plan = scenario::Rollout { update: PathBuf::from(need("update")?), timeout, faults: with_faults, rogue_then };
        let report = {
            let mut lab = lab::Lab::create(topology, &options)?;
            scenario::rollout(&mut lab, &plan)?
        };
        (serde_json::to_string_pretty(&report), report.summary(), report.failed_checks())
    };
    let path = out.join("report.json");
    std::fs::write(&path, json.expect("the report serialises") + "\n").map_err(|e| format!("{}: {e}", path.display()))?;
    print!("{summary}");
    println!("report: {}", path.display());
    for f in &failed {
        println!("meshlab: check failed: {f}");
    }
    Ok(failed.is_empty())
}

/// The topology of the mesh a live node sees, from its `/mesh.json`.
fn from_live_node(url: &str) -> Result<Topology, String> {
    let url = if url.ends_with("/mesh.json") { url.to_string() } else { format!("{}/mesh.json", url.trim_end_matches('/')) };
    let agent: ureq::Agent = ureq::Agent::config_builder().timeout_global(Some(Duration::from_secs(30))).max_redirects(0).build().into();
    let mut reply = agent.get(&url).call().map_err(|e| format!("{url}: {e}"))?;
    let text = reply.body_mut().with_config().limit(8 << 20).read_to_string().map_err(|e| format!("{url}: {e}"))?;
    Topology::from_mesh_json(&text).map_err(|e| format!("{url}: {e}"))
}

fn generate(args: &[String]) -> Result<(), String> {
    let num = |i: usize, what: &str| -> Result<usize, String> {
        args.get(i).ok_or_else(|| format!("generate needs {what}\n{USAGE}"))?.parse().map_err(|_| format!("{what}: a whole number"))
    };
    let graph = match args.first().map(String::as_str) {
        Some("line") => topology::generate::line(num(1, "N")?),
        Some("ring") => topology::generate::ring(num(1, "N")?),
        Some("grid") => topology::generate::grid(num(1, "W")?, num(2, "H")?),
        Some("random") => {
            let n = num(1, "N")?;
            // The radius at which a random geometric graph is almost surely connected, a bit more.
            let default_radius = 1.2 * ((n as f64).ln() / (std::f64::consts::PI * n as f64)).sqrt();
            let radius = args.get(2).map_or(Ok(default_radius), |r| r.parse().map_err(|_| "RADIUS: a number between 0 and 1".to_string()))?;
            let seed = args.get(3).map_or(Ok(1), |s| s.parse().map_err(|_| "SEED: a whole number".to_string()))?;
            topology::generate::random_geometric(n, radius, seed)
        }
        _ => return Err(format!("generate line|ring|grid|random\n{USAGE}")),
    };
    println!("{}", serde_json::to_string_pretty(&graph).expect("JSON serialises"));
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn help_fits_a_terminal() {
        for line in super::USAGE.lines() {
            assert!(line.len() <= 80, "wider than 80 columns: {line}");
        }
    }
}
