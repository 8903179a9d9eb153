//! Child services (the router, the ssh server, the access point): started, watched, and
//! restarted with a growing delay when they exit, so one crash loop cannot eat the CPU.

use serde::Serialize;
use std::fs::File;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct Service {
    pub name: String,
    program: String,
    args: Vec<String>,
    log: std::path::PathBuf,
    child: Option<Child>,
    restarts: u32,
    next_start: Instant,
    backoff: Duration,
    last_exit: Option<String>,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct ServiceStatus {
    pub name: String,
    pub running: bool,
    pub pid: Option<u32>,
    pub restarts: u32,
    pub last_exit: Option<String>,
}

const MAX_BACKOFF: Duration = Duration::from_secs(30);

impl Service {
    /// A service whose output goes to `<run_dir>/<name>.log` (a fresh file per start, so a
    /// chatty program cannot fill the tmpfs across restarts).
    pub fn new(name: &str, program: &str, args: Vec<String>, run_dir: &Path) -> Service {
        Service {
            name: name.into(),
            program: program.into(),
            args,
            log: run_dir.join(format!("{name}.log")),
            child: None,
            restarts: 0,
            next_start: Instant::now(),
            backoff: Duration::from_secs(1),
            last_exit: None,
        }
    }

    /// Starts the service if it is due, reaps it if it exited.
    pub fn tick(&mut self) {
        if let Some(child) = &mut self.child {
            match child.try_wait() {
                Ok(None) => {
                    // Up long enough: a later crash starts again from a short delay.
                    if self.next_start.elapsed() > Duration::from_secs(60) {
                        self.backoff = Duration::from_secs(1);
                    }
                    return;
                }
                Ok(Some(status)) => {
                    let why = format!("{status}");
                    eprintln!("meshd: {} exited ({why}), restarting in {} s; its output is in {}", self.name, self.backoff.as_secs(), self.log.display());
                    self.last_exit = Some(why);
                }
                Err(e) => self.last_exit = Some(e.to_string()),
            }
            self.child = None;
            self.restarts += 1;
            self.next_start = Instant::now() + self.backoff;
            self.backoff = (self.backoff * 2).min(MAX_BACKOFF);
            return;
        }
        if Instant::now() < self.next_start {
            return;
        }
        let spawned = File::create(&self.log).and_then(|out| {
            let err = out.try_clone()?;
            Command::new(&self.program).args(&self.args).stdin(Stdio::null()).stdout(out).stderr(err).spawn()
        });
        match spawned {
            Ok(child) => {
                self.child = Some(child);
                self.next_start = Instant::now();
            }
            Err(e) => {
                let why = format!("cannot start {}: {e}", self.program);
                if self.last_exit.as_deref() != Some(why.as_str()) {
                    eprintln!("meshd: {}: {why}", self.name);
                }
                self.last_exit = Some(why);
                self.next_start = Instant::now() + self.backoff;
                self.backoff = (self.backoff * 2).min(MAX_BACKOFF);
            }
        }
    }

    pub fn status(&self) -> ServiceStatus {
        ServiceStatus {
            name: self.name.clone(),
            running: self.child.is_some(),
            pid: self.child.as_ref().map(Child::id),
            restarts: self.restarts,
            last_exit: self.last_exit.clone(),
        }
    }

    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        self.stop();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_crashing_service_is_restarted_with_a_growing_delay() {
        let dir = std::env::temp_dir();
        let mut s = Service::new("crasher", "/bin/sh", vec!["-c".into(), "exit 3".into()], &dir);
        s.tick();
        assert!(s.status().running);
        std::thread::sleep(Duration::from_millis(200));
        s.tick();
        let st = s.status();
        assert_eq!((st.running, st.restarts, st.last_exit.as_deref()), (false, 1, Some("exit status: 3")));
        s.tick(); // not due yet: the delay is 1 s
        assert!(!s.status().running);
        assert_eq!(s.backoff, Duration::from_secs(2));
    }

    #[test]
    fn a_missing_program_is_reported_not_fatal() {
        let mut s = Service::new("ghost", "/nonexistent/ghost", vec![], &std::env::temp_dir());
        s.tick();
        assert!(s.status().last_exit.unwrap().contains("cannot start /nonexistent/ghost"));
    }
}
