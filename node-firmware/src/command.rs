//! Running the system's tools (`iw`, `ip`, `tar`, `modprobe`, `dropbearkey`): one place that
//! turns a failure into a message naming the command and what it printed.

use std::process::Command;

/// Runs a tool to completion; the error says which command failed and what it printed.
pub fn run(program: &str, args: &[&str]) -> Result<String, String> {
    let out = Command::new(program).args(args).output().map_err(|e| format!("{program}: {e}"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        let why = String::from_utf8_lossy(&out.stderr);
        Err(format!("'{program} {}' failed: {}", args.join(" "), why.trim()))
    }
}
