//! Committing a boot: the health check that marks the running slot good once the node has
//! been healthy for a while, and the reboot that hands a slot on trial back to U-Boot when it
//! is not healthy in time (U-Boot then counts the attempt and, out of attempts, rolls back).

use crate::node::Node;
use crate::slots;
use crate::supervisor::Service;
use meshos_common::boot_state::Slot;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// How long the node must look healthy before its slot is marked good.
pub const HEALTHY_FOR: Duration = Duration::from_secs(10);
/// How many more health timeouts a trial gets while the node finds no overlay peer at all
/// (its router runs, the data partition is mounted): its neighbours may be the ones rebooting
/// or out of power, and a release is not to be rolled back for them. Bounded, so a release that
/// cannot mesh is still rolled back.
const ISOLATED_EXTRA: u32 = 2;

/// The health check that commits a boot: meshd up (it runs this), the data partition mounted,
/// the router running without a restart for a while. Then the running slot is marked good in
/// the boot state record, once per boot.
pub struct Health {
    disk: Option<PathBuf>,
    running: Option<Slot>,
    healthy_since: Option<Instant>,
    pub report: crate::slots::SlotReport,
    /// This boot tries a newly installed slot: if it is not healthy by `deadline`, reboot.
    pub trial: Option<crate::upgrade::Record>,
    deadline: Instant,
    timeout: Duration,
    /// Health timeouts added to this trial while the node was cut off.
    extended: u32,
    state_dir: PathBuf,
    /// Set once, when this boot's slot was just marked good.
    pub committed_now: bool,
}

impl Health {
    pub fn new(slot: &str, state_dir: &Path, timeout: Duration) -> Health {
        let machine = crate::machine::current();
        let running = Slot::parse(slot);
        let found = machine.cmdline().and_then(|c| machine.boot_disk(&c)).and_then(|d| slots::read_state(&d).map(|(s, _)| (d, s)));
        let record = crate::upgrade::read_record(state_dir).filter(|r| r.step == crate::upgrade::Step::Installed);
        let trial = record.filter(|r| r.target.as_deref().and_then(Slot::parse) == running);
        if let Some(r) = &trial {
            logln!("meshd: upgrade: trying {} in slot {slot}; it has {} s to become healthy", r.version.as_deref().unwrap_or("?"), timeout.as_secs());
        }
        let mut h = Health {
            disk: None,
            running,
            healthy_since: None,
            report: crate::slots::SlotReport::default(),
            trial,
            deadline: Instant::now() + timeout,
            timeout,
            extended: 0,
            state_dir: state_dir.to_path_buf(),
            committed_now: false,
        };
        match (found, running) {
            (Ok((disk, boot_state)), Some(slot)) => {
                h.report = slots::report(&boot_state, slot, None, false);
                h.disk = Some(disk);
            }
            (Err(e), _) => h.report.error = Some(format!("boot state: {e}")),
            (_, None) => h.report.error = Some(format!("unknown running slot '{slot}'")),
        }
        if let Some(e) = &h.report.error {
            logln!("meshd: {e}; this boot cannot be marked good");
        }
        h
    }

    pub fn check(&mut self, services: &[Service], run_dir: &Path) {
        let (Some(disk), Some(slot)) = (&self.disk, self.running) else { return };
        if self.report.marked_good {
            return;
        }
        let data = crate::machine::current().data_mounted();
        let router = services.iter().find(|s| s.name == "yggdrasil" || s.name == "cjdns").map(|s| s.status());
        let router_ok = router.as_ref().is_some_and(|r| r.running);
        // A new slot must find again one of the neighbours the node had before it rebooted
        // (when it had any): a release that boots but cannot mesh would cut the node off.
        let before = self.trial.as_ref().map(|r| r.neighbours.clone()).unwrap_or_default();
        // Asked of the router only when a trial needs it (not on every pass of an ordinary boot).
        let peers = || crate::router::peers(run_dir).unwrap_or_default();
        let regained = before.is_empty() || peers().iter().any(|p| p.up && before.contains(&p.address));
        if !(data && router_ok && regained) {
            self.healthy_since = None;
            if self.trial.is_some() && Instant::now() > self.deadline {
                // (A router that has crashed this boot is the release's fault, not the neighbours'.)
                let alone = !peers().iter().any(|p| p.up) && router.as_ref().is_some_and(|r| r.restarts == 0);
                match verdict(data, router_ok, alone, self.extended) {
                    Verdict::Extend => {
                        self.extended += 1;
                        self.deadline = Instant::now() + self.timeout;
                        logln!(
                            "meshd: upgrade: slot {slot} finds no overlay peer at all (its neighbours may be rebooting); {} s more before the attempt counts ({} of {ISOLATED_EXTRA})",
                            self.timeout.as_secs(),
                            self.extended
                        );
                        return;
                    }
                    Verdict::Fail(kind, why) => {
                        logln!("meshd: upgrade: slot {slot} is not healthy ({why}); rebooting so U-Boot counts the failed attempt");
                        note_failure(&self.state_dir, kind);
                    }
                }
                if let Err(e) = crate::machine::current().reboot() {
                    logln!("meshd: {e}");
                }
                self.trial = None;
            }
            return;
        }
        let since = *self.healthy_since.get_or_insert_with(Instant::now);
        if since.elapsed() < HEALTHY_FOR {
            return;
        }
        match crate::upgrade::commit_boot(disk, slot, &self.state_dir) {
            Ok(report) => {
                // (after the record: whoever reads this line finds both on the card)
                match &report.rolled_back_from {
                    Some(from) => logln!("meshd: ROLLBACK: slot {from} ran out of boot attempts; slot {slot} is running and marked good"),
                    None => logln!(
                        "meshd: slot {slot} healthy, marked good (order {}, attempts left A {} B {})",
                        report.order.join(" "),
                        report.a_left,
                        report.b_left
                    ),
                }
                self.trial = None;
                self.report = report;
                self.committed_now = true;
            }
            Err(e) => {
                logln!("meshd: marking slot {slot} good: {e}");
                self.report.error = Some(e);
                self.disk = None;
            }
        }
    }
}

/// Notes in the record of the install on trial why this attempt failed: if the boot loader
/// rolls the slot back, the last attempt's kind is what the node announces (crate::rollout).
fn note_failure(state_dir: &Path, kind: &str) {
    if let Some(mut r) = crate::upgrade::read_record(state_dir).filter(|r| r.step == crate::upgrade::Step::Installed) {
        r.trial_failure = Some(kind.to_string());
        crate::upgrade::save(state_dir, &r);
    }
}

#[derive(Debug, PartialEq)]
enum Verdict {
    /// Cut off from every peer: wait another health timeout.
    Extend,
    /// Not healthy in time: the kind of failure (announced to the mesh, crate::rollout) and why.
    Fail(&'static str, &'static str),
}

/// What a trial past its deadline comes to, healthy but for the neighbours it had before:
/// `alone` when the router has no peer up at all.
fn verdict(data: bool, router_ok: bool, alone: bool, extended: u32) -> Verdict {
    if !data {
        Verdict::Fail("data_missing", "the data partition is not mounted")
    } else if !router_ok {
        Verdict::Fail("router_down", "the router is not running")
    } else if alone && extended < ISOLATED_EXTRA {
        Verdict::Extend
    } else if alone {
        Verdict::Fail("neighbours_lost", "it found no overlay peer, also after waiting for its neighbours")
    } else {
        Verdict::Fail("neighbours_lost", "it found none of the overlay neighbours it had before the reboot")
    }
}

/// A meshd that cannot start cannot mark its slot good. On a slot on trial it still reboots once
/// the health timeout has passed, as for a slot that starts but is unhealthy, so U-Boot counts the
/// attempt (else the node would stay on the broken slot); elsewhere the error ends meshd.
pub fn cannot_start(e: String, node: &Node, state_dir: &Path, timeout: Duration) -> String {
    if Health::new(&node.slot, state_dir, timeout).trial.is_none() {
        return e;
    }
    logln!("meshd: cannot start: {e}");
    note_failure(state_dir, "meshd_failed");
    logln!("meshd: upgrade: slot {} is not healthy; rebooting in {} s so U-Boot counts the failed attempt", node.slot, timeout.as_secs());
    std::thread::sleep(timeout);
    if let Err(e) = crate::machine::current().reboot() {
        logln!("meshd: {e}");
    }
    loop {
        std::thread::sleep(Duration::from_secs(60));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_trial_cut_off_from_every_peer_waits_for_its_neighbours_but_not_for_ever() {
        // Alone (neighbours rebooting or without power): two more health timeouts, then it counts.
        assert_eq!(verdict(true, true, true, 0), Verdict::Extend);
        assert_eq!(verdict(true, true, true, 1), Verdict::Extend);
        assert_eq!(verdict(true, true, true, 2), Verdict::Fail("neighbours_lost", "it found no overlay peer, also after waiting for its neighbours"));
        // Peers up, but none it had before: the release may not mesh with them; no waiting.
        assert_eq!(verdict(true, true, false, 0), Verdict::Fail("neighbours_lost", "it found none of the overlay neighbours it had before the reboot"));
        // What is the node's own fault is never waited for.
        assert_eq!(verdict(true, false, true, 0), Verdict::Fail("router_down", "the router is not running"));
        assert_eq!(verdict(false, true, true, 0), Verdict::Fail("data_missing", "the data partition is not mounted"));
    }
}
