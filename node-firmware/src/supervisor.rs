//! Child services (the router, the ssh server, the access point): started, watched, and
//! restarted with a growing delay when they exit, so one crash loop cannot eat the CPU.
//!
//! A service never outlives meshd: each runs in a process group of its own with
//! `PR_SET_PDEATHSIG`, so it is sent SIGTERM when meshd ends however it ends (a panic aborts,
//! the SIGTERM handler `_exit`s). Should one survive anyway, the meshd that init starts next
//! finds it by its pid file and stops it before starting its own, so two routers never fight
//! over the interface, the admin socket or port 22.

use serde::Serialize;
use std::fs::File;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct Service {
    pub name: String,
    program: String,
    args: Vec<String>,
    log: PathBuf,
    pid_file: PathBuf,
    /// A process an earlier meshd left behind has been looked for.
    swept: bool,
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
    /// A service whose output goes to `<run_dir>/<name>.log`, the run before's to `.log.1`
    /// (two files at most, so a chatty program cannot fill the tmpfs across restarts), and
    /// whose pid is in `<run_dir>/<name>.pid`.
    pub fn new(name: &str, program: &str, args: Vec<String>, run_dir: &Path) -> Service {
        Service {
            name: name.into(),
            program: program.into(),
            args,
            log: run_dir.join(format!("{name}.log")),
            pid_file: run_dir.join(format!("{name}.pid")),
            swept: false,
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
                    // What it started may outlive it (cjdroute's core, holding its admin port):
                    // the whole group goes before it starts again.
                    // SAFETY: kill only sends a signal, to the group the child led.
                    unsafe { libc::kill(-(child.id() as libc::pid_t), libc::SIGKILL) };
                    let why = format!("{status}");
                    logln!(
                        "meshd: {} exited ({why}), restarting in {} s; its output is in {} ({}.1 once it has started again)",
                        self.name,
                        self.backoff.as_secs(),
                        self.log.display(),
                        self.log.display()
                    );
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
        if !self.swept {
            self.swept = true;
            self.stop_left_behind();
        }
        let mut log = self.log.clone().into_os_string();
        log.push(".1");
        let _ = std::fs::rename(&self.log, log);
        let meshd = std::process::id();
        let spawned = File::create(&self.log).and_then(|out| {
            let err = out.try_clone()?;
            let mut cmd = Command::new(&self.program);
            cmd.args(&self.args).stdin(Stdio::null()).stdout(out).stderr(err).process_group(0);
            // SAFETY: between fork and exec the child only calls prctl and getppid, which are
            // async-signal-safe, and touches no memory of the parent's.
            unsafe {
                cmd.pre_exec(move || {
                    if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    // meshd ended before the prctl: nobody would send the signal.
                    if libc::getppid() as u32 != meshd {
                        return Err(std::io::Error::other("meshd ended while starting it"));
                    }
                    Ok(())
                });
            }
            cmd.spawn()
        });
        match spawned {
            Ok(child) => {
                if let Err(e) = crate::durable::write(&self.pid_file, format!("{}\n", child.id()).as_bytes(), 0o644) {
                    logln!("meshd: {}: {}: {e}", self.name, self.pid_file.display());
                }
                self.child = Some(child);
                self.next_start = Instant::now();
            }
            Err(e) => {
                let why = format!("cannot start {}: {e}", self.program);
                if self.last_exit.as_deref() != Some(why.as_str()) {
                    logln!("meshd: {}: {why}", self.name);
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

    /// Stops the service and whatever it started (its process group).
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            // SAFETY: kill only sends a signal; the group is the child's own (process_group(0)).
            unsafe { libc::kill(-(child.id() as libc::pid_t), libc::SIGKILL) };
            let _ = child.kill();
            let _ = child.wait();
            let _ = std::fs::remove_file(&self.pid_file);
        }
    }

    /// Stops this service's process if an earlier meshd left it running (its pid file names a
    /// live process running the same program).
    fn stop_left_behind(&self) {
        let Some(pid) = std::fs::read_to_string(&self.pid_file).ok().and_then(|t| t.trim().parse::<libc::pid_t>().ok()).filter(|p| *p > 1) else { return };
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        let argv0 = cmdline.split(|b| *b == 0).next().map(|a| String::from_utf8_lossy(a).into_owned()).unwrap_or_default();
        let base = |p: &str| p.rsplit('/').next().unwrap_or(p).to_string();
        if argv0.is_empty() || base(&argv0) != base(&self.program) {
            return;
        }
        logln!("meshd: {}: stopping {} (pid {pid}), left running by an earlier meshd", self.name, self.program);
        // SAFETY: kill only sends signals, to the group and to the process itself (an older
        // meshd did not give it a group of its own).
        unsafe {
            libc::kill(-pid, libc::SIGKILL);
            libc::kill(pid, libc::SIGKILL);
        }
        // Reaped by init (it is not our child); wait until it is gone so its port is free.
        for _ in 0..50 {
            if !Path::new(&format!("/proc/{pid}")).exists() || std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| s.contains(") Z ")) {
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
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
    fn the_run_before_keeps_its_log() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        let mut s = Service::new("talker", "/bin/sh", vec!["-c".into(), "echo run $$; exit 3".into()], dir);
        s.tick();
        let first = s.status().pid.unwrap();
        std::thread::sleep(Duration::from_millis(300));
        s.tick(); // reaped
        std::thread::sleep(Duration::from_millis(1100));
        s.tick(); // started again
        std::thread::sleep(Duration::from_millis(300));
        assert_eq!(std::fs::read_to_string(dir.join("talker.log.1")).unwrap(), format!("run {first}\n"));
        assert!(std::fs::read_to_string(dir.join("talker.log")).unwrap().starts_with("run "));
    }

    #[test]
    fn a_service_ends_with_the_thread_that_started_it() {
        // PR_SET_PDEATHSIG fires when the starting thread ends: here a thread stands in for
        // meshd, which starts every service from its main thread.
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().to_path_buf();
        let mut s = std::thread::spawn(move || {
            let mut s = Service::new("sleeper", "sleep", vec!["100".into()], &dir);
            s.tick();
            s
        })
        .join()
        .unwrap();
        let child = s.child.as_mut().unwrap();
        let mut status = None;
        for _ in 0..50 {
            status = child.try_wait().unwrap();
            if status.is_some() {
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(status.and_then(|s| s.signal()), Some(libc::SIGTERM), "the service outlived its meshd");
    }

    #[test]
    fn one_left_by_an_earlier_meshd_is_stopped_first() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        let mut earlier = Command::new("sleep").arg("100").spawn().unwrap();
        // Until it has run a moment, its /proc/<pid>/cmdline may still be empty.
        std::thread::sleep(Duration::from_millis(200));
        std::fs::write(dir.join("sleeper.pid"), format!("{}\n", earlier.id())).unwrap();
        // A pid file naming another program is left alone.
        let other = Service::new("other", "yggdrasil", vec![], dir);
        std::fs::write(dir.join("other.pid"), format!("{}\n", earlier.id())).unwrap();
        other.stop_left_behind();
        assert!(earlier.try_wait().unwrap().is_none(), "a process of another program was stopped");
        let mut s = Service::new("sleeper", "sleep", vec!["100".into()], dir);
        s.tick();
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(earlier.wait().unwrap().signal(), Some(libc::SIGKILL));
        let pid: u32 = std::fs::read_to_string(dir.join("sleeper.pid")).unwrap().trim().parse().unwrap();
        assert_eq!(Some(pid), s.status().pid);
        s.stop();
        assert!(!dir.join("sleeper.pid").exists());
    }

    #[test]
    fn a_missing_program_is_reported_not_fatal() {
        let mut s = Service::new("ghost", "/nonexistent/ghost", vec![], &std::env::temp_dir());
        s.tick();
        assert!(s.status().last_exit.unwrap().contains("cannot start /nonexistent/ghost"));
    }
}
