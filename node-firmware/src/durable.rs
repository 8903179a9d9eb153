//! Files on the data partition written so that a power cut leaves the old content or the new,
//! never half of either: a temporary name, fsync, rename over the old, fsync of the directory.
//! Secrets (keys, passphrases, router configs that hold keys) go through [`write_private`].

use std::fs;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

/// Replaces `path` with `bytes` (with exactly `mode`, whatever the umask: meshd's is 077, and
/// some files are for other users, such as dnsmasq's name servers); once this returns, a power
/// cut keeps them.
/// Two writers at once (the daemon and a command) each use a temporary name of their own, so
/// the last rename wins and neither writes into the other's half-written file.
pub fn write(path: &Path, bytes: &[u8], mode: u32) -> std::io::Result<()> {
    let tmp = temporary(path);
    let written = (|| {
        let mut f = fs::OpenOptions::new().write(true).create_new(true).mode(mode).open(&tmp)?;
        f.set_permissions(std::os::unix::fs::PermissionsExt::from_mode(mode))?;
        f.write_all(bytes)?;
        f.sync_all()?;
        drop(f);
        fs::rename(&tmp, path)
    })();
    if written.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    written?;
    fs::File::open(path.parent().unwrap_or(Path::new("."))).and_then(|d| d.sync_all())
}

/// [`write`] for a file only root may read (0600), whatever was there before; the error names it.
pub fn write_private(path: &Path, bytes: &[u8]) -> Result<(), String> {
    write(path, bytes, 0o600).map_err(|e| format!("{}: {e}", path.display()))
}

/// `.<name>.<pid>.<n>.tmp` beside `path`: unique to this process and this call.
fn temporary(path: &Path) -> PathBuf {
    static N: AtomicU64 = AtomicU64::new(0);
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    path.with_file_name(format!(".{name}.{}.{}.tmp", std::process::id(), N.fetch_add(1, Ordering::Relaxed)))
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn replaces_the_file_and_leaves_no_temporary() {
        let dir = std::env::temp_dir().join(format!("meshd-durable-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("key.json");
        std::fs::write(&p, "old").unwrap();
        super::write(&p, b"new", 0o600).unwrap();
        assert_eq!(std::fs::read_to_string(&p).unwrap(), "new");
        assert_eq!(std::fs::metadata(&p).unwrap().permissions().mode() & 0o777, 0o600);
        assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 1, "a temporary was left");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn private_files_are_private_even_over_a_readable_one() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("hostapd.conf");
        std::fs::write(&p, "old").unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o644)).unwrap();
        super::write_private(&p, b"wpa_passphrase=x\n").unwrap();
        assert_eq!(std::fs::metadata(&p).unwrap().permissions().mode() & 0o777, 0o600);
    }

    #[test]
    fn the_mode_is_exact_whatever_the_umask() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("resolv.upstream");
        // SAFETY: umask only sets the process's file mode mask; restored below.
        let before = unsafe { libc::umask(0o077) };
        let written = super::write(&p, b"nameserver 100.64.0.1\n", 0o644);
        unsafe { libc::umask(before) };
        written.unwrap();
        assert_eq!(std::fs::metadata(&p).unwrap().permissions().mode() & 0o777, 0o644);
    }

    #[test]
    fn writers_at_once_never_mix() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("upgrade.json");
        let writers: Vec<_> = (0..8u8)
            .map(|i| {
                let p = p.clone();
                std::thread::spawn(move || {
                    for _ in 0..50 {
                        super::write(&p, &vec![b'a' + i; 4096], 0o644).unwrap();
                    }
                })
            })
            .collect();
        for w in writers {
            w.join().unwrap();
        }
        let got = std::fs::read(&p).unwrap();
        assert!(got.len() == 4096 && got.iter().all(|b| *b == got[0]), "a file mixed from two writers");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1, "a temporary was left");
    }
}
