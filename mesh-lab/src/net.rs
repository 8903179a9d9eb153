//! The lab's network, made with iproute2 and nftables as meshnet-lab does: a network namespace
//! per node (`<name>-<id>`; `meshlab-<id>` unless the lab is given a name), a veth pair per
//! link, a token bucket (`tbf`) for each direction's rate and an nftables rule dropping each
//! direction's share of lost packets (the kernels here have no `netem`). Everything it makes is
//! named `<name>-…` or lives inside such a namespace, so [`clean`] finds what a killed run of
//! that name left.

use crate::topology::{Link, Topology};
use std::io::Write;
use std::process::{Command, Stdio};

/// The lab's name (`--name`, `meshlab` unless given): its namespaces are `<name>-<id>` and it
/// holds `/run/<name>.lock`, so labs of different names run side by side on one machine.
static NAME: std::sync::OnceLock<String> = std::sync::OnceLock::new();
pub const DEFAULT_NAME: &str = "meshlab";

/// Names this run's lab; set once, before anything is made. A name is lower-case letters and
/// digits (no `-`: no lab's namespaces then start with another lab's prefix).
pub fn set_name(name: &str) -> Result<(), String> {
    check_name(name)?;
    NAME.set(name.to_string()).map_err(|_| "the lab's name is set once".to_string())
}

fn check_name(name: &str) -> Result<(), String> {
    let fits = (1..=15).contains(&name.len())
        && name.starts_with(|c: char| c.is_ascii_lowercase())
        && name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit());
    if fits {
        Ok(())
    } else {
        Err(format!("--name {name}: 1 to 15 lower-case letters and digits, starting with a letter"))
    }
}

fn name() -> &'static str {
    NAME.get().map_or(DEFAULT_NAME, String::as_str)
}

fn prefix() -> String {
    format!("{}-", name())
}

pub fn namespace(id: &str) -> String {
    format!("{}{id}", prefix())
}

/// The interface in a node's namespace that leads to node `other` (by index).
pub fn interface(other: usize) -> String {
    format!("lab{other}")
}

/// Runs a tool; the error names the command and what it printed.
pub fn run(program: &str, args: &[&str]) -> Result<String, String> {
    let out = Command::new(program).args(args).output().map_err(|e| format!("{program}: {e} (is it installed? ci/setup-host.sh installs it)"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(format!("'{program} {}' failed: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim()))
    }
}

/// Runs a tool with `input` on its standard input; the error names `what` and what it printed.
fn run_with_input(program: &str, args: &[&str], input: &str, what: &str) -> Result<(), String> {
    let mut child = Command::new(program)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("{what}: {e} (is {program} installed? ci/setup-host.sh installs it)"))?;
    child.stdin.take().expect("piped").write_all(input.as_bytes()).map_err(|e| format!("{what}: {e}"))?;
    let out = child.wait_with_output().map_err(|e| format!("{what}: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!("{what}: {}", String::from_utf8_lossy(&out.stderr).trim()))
    }
}

/// Runs `ip [-n NS] -batch -` with one command a line: one process for many changes.
fn ip_batch(ns: Option<&str>, lines: &[String]) -> Result<(), String> {
    if lines.is_empty() {
        return Ok(());
    }
    let mut args = ns.map_or(Vec::new(), |ns| vec!["-n", ns]);
    args.extend(["-batch", "-"]);
    run_with_input("ip", &args, &lines.join("\n"), "ip -batch")
}

/// The namespaces of every node, with loopback up.
pub fn create_namespaces(topology: &Topology) -> Result<(), String> {
    let lines: Vec<String> = topology.nodes.iter().map(|n| format!("netns add {}", namespace(&n.id))).collect();
    ip_batch(None, &lines)?;
    for n in &topology.nodes {
        run("ip", &["-n", &namespace(&n.id), "link", "set", "lo", "up"])?;
    }
    Ok(())
}

/// Every link: its veth pair, up, with each direction's rate and loss.
pub fn create_links(topology: &Topology, mut progress: impl FnMut(usize)) -> Result<(), String> {
    let ns = |i: usize| namespace(&topology.nodes[i].id);
    let lines: Vec<String> = topology
        .links
        .iter()
        .map(|l| format!("link add {} netns {} type veth peer name {} netns {}", interface(l.b), ns(l.a), interface(l.a), ns(l.b)))
        .collect();
    ip_batch(None, &lines)?;
    for (i, nb) in topology.neighbours().iter().enumerate() {
        let lines: Vec<String> = nb.iter().map(|&j| format!("link set {} up", interface(j))).collect();
        ip_batch(Some(&ns(i)), &lines)?;
    }
    for (done, l) in topology.links.iter().enumerate() {
        shape(&ns(l.a), &interface(l.b), l.rate_kbit)?;
        shape(&ns(l.b), &interface(l.a), l.rate_kbit)?;
        progress(done + 1);
    }
    losses(topology)
}

/// What leaves through `dev` in `ns`: at most `kbit` a second, queued for at most 200 ms.
fn shape(ns: &str, dev: &str, kbit: u64) -> Result<(), String> {
    // A burst of at least one full frame at every rate, and about 4 ms of traffic at high ones.
    let burst = (kbit / 2).max(4).to_string() + "kbit";
    run("tc", &["-n", ns, "qdisc", "add", "dev", dev, "root", "tbf", "rate", &format!("{kbit}kbit"), "burst", &burst, "latency", "200ms"]).map(drop)
}

/// One nftables table per namespace whose links lose packets: a random share of what leaves
/// through each such link is dropped.
fn losses(topology: &Topology) -> Result<(), String> {
    for i in 0..topology.nodes.len() {
        let rules = loss_rules(topology, i);
        if !rules.is_empty() {
            set_rules(&namespace(&topology.nodes[i].id), &rules)?;
        }
    }
    Ok(())
}

/// Node `i`'s rules: on each of its links, drop the share the link loses leaving it.
fn loss_rules(topology: &Topology, i: usize) -> Vec<String> {
    let mut rules = Vec::new();
    for Link { a, b, loss_ab, loss_ba, .. } in &topology.links {
        let (to, loss) = match i {
            _ if *a == i => (*b, *loss_ab),
            _ if *b == i => (*a, *loss_ba),
            _ => continue,
        };
        let per_mille = (loss * 1000.0).round() as u32;
        if per_mille > 0 {
            rules.push(format!("oifname \"{}\" numgen random mod 1000 < {per_mille} drop", interface(to)));
        }
    }
    rules
}

/// Replaces the lab's nftables table in `ns` with `rules` (on the output hook).
pub fn set_rules(ns: &str, rules: &[String]) -> Result<(), String> {
    let text = format!(
        "table inet meshlab\ndelete table inet meshlab\ntable inet meshlab {{\n  chain out {{\n    type filter hook output priority 0; policy accept;\n{}\n  }}\n}}\n",
        rules.iter().map(|r| format!("    {r}")).collect::<Vec<_>>().join("\n")
    );
    run_with_input("ip", &["netns", "exec", ns, "nft", "-f", "-"], &text, &format!("nft in {ns}"))
}

/// Cuts a link: its veth pair is removed (a link merely set down, meshd would bring up again,
/// as it does with any peering interface).
pub fn cut_link(topology: &Topology, link: &Link) -> Result<(), String> {
    run("ip", &["-n", &namespace(&topology.nodes[link.a].id), "link", "del", &interface(link.b)]).map(drop)
}

/// Mends a cut link: the veth pair again, with its rates and losses.
pub fn mend_link(topology: &Topology, link: &Link) -> Result<(), String> {
    let (na, nb) = (namespace(&topology.nodes[link.a].id), namespace(&topology.nodes[link.b].id));
    let (ia, ib) = (interface(link.b), interface(link.a));
    run("ip", &["link", "add", &ia, "netns", &na, "type", "veth", "peer", "name", &ib, "netns", &nb])?;
    for (ns, dev) in [(&na, &ia), (&nb, &ib)] {
        run("ip", &["-n", ns, "link", "set", dev, "up"])?;
        shape(ns, dev, link.rate_kbit)?;
    }
    set_rules(&na, &loss_rules(topology, link.a))?;
    set_rules(&nb, &loss_rules(topology, link.b))
}

/// Makes the process `cmd` starts end with the lab, even when the lab is killed (SIGKILL):
/// the kernel sends it SIGKILL when the lab's thread that started it ends.
pub fn end_with_lab(cmd: &mut Command) {
    use std::os::unix::process::CommandExt;
    // SAFETY: prctl only sets the child's parent-death signal.
    unsafe {
        cmd.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

/// Held while a lab runs: one lab of a name at a time on a machine (its namespaces have the
/// name's prefix, and a new lab removes what an earlier one of that name left). Released when
/// the process ends, however.
pub struct MachineLock(#[allow(dead_code)] std::fs::File);

pub fn lock_machine() -> Result<MachineLock, String> {
    use std::os::fd::AsRawFd;
    let file = format!("/run/{}.lock", name());
    let f = std::fs::OpenOptions::new().create(true).truncate(false).write(true).open(&file).map_err(|e| format!("{file}: {e}"))?;
    // SAFETY: flock only takes an advisory lock on the descriptor, which `f` keeps open.
    if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        return Err(format!(
            "a lab named {} is running on this machine (it holds {file}); wait for it, stop it with Ctrl-C, or give this one another --name",
            name()
        ));
    }
    Ok(MachineLock(f))
}

/// The lab's namespaces on this machine (of this run or one that was killed).
pub fn lab_namespaces() -> Vec<String> {
    let list = run("ip", &["netns", "list"]).unwrap_or_default();
    list.lines().filter_map(|l| l.split_whitespace().next()).filter(|n| n.starts_with(&prefix())).map(String::from).collect()
}

/// Ends every process in the lab's namespaces and removes the namespaces (with them go their
/// veths, qdiscs and nftables tables). Returns how many namespaces and processes it removed.
pub fn clean() -> (usize, usize) {
    let spaces = lab_namespaces();
    let mut killed = 0;
    for ns in &spaces {
        for pid in run("ip", &["netns", "pids", ns]).unwrap_or_default().split_whitespace().filter_map(|p| p.parse::<i32>().ok()) {
            // SAFETY: kill only sends a signal.
            if unsafe { libc::kill(pid, libc::SIGKILL) } == 0 {
                killed += 1;
            }
        }
    }
    // A namespace whose last process is still dying stays until the kernel is done with it;
    // `ip netns del` removes the name either way.
    let lines: Vec<String> = spaces.iter().map(|ns| format!("netns del {ns}")).collect();
    if let Err(e) = ip_batch(None, &lines) {
        eprintln!("meshlab: {e}");
    }
    (spaces.len(), killed)
}

#[cfg(test)]
mod tests {
    use super::check_name;

    #[test]
    fn a_name_cannot_reach_into_another_labs_namespaces() {
        for good in ["meshlab", "faults", "lab2"] {
            assert!(check_name(good).is_ok(), "{good}");
        }
        // With a '-' one lab's prefix ("a-") would start another's ("a-b-"), and its clean
        // would remove the other's nodes; the rest would not make a namespace name.
        for bad in ["", "a-b", "Lab", "2lab", "lab/x", "sixteen-letters!", "abcdefghijklmnop"] {
            assert!(check_name(bad).is_err(), "{bad}");
        }
    }
}
