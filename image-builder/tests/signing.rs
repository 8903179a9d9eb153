//! Signing keys and signatures through the command line, and with the stock minisign tool
//! (Debian's `minisign`, installed by ci/setup-host.sh): it must accept what we sign, and we
//! must open the keys and check the signatures it makes.

use std::path::Path;
use std::process::{Command, Stdio};

fn meshimg(args: &[&str], env: &[(&str, &str)]) -> (i32, String) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_meshimg"));
    cmd.args(args).env_remove("MESHOS_SIGN_KEY").env_remove("MESHOS_SIGN_PASSPHRASE").stdin(Stdio::null());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().unwrap();
    (out.status.code().unwrap_or(-1), String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr))
}

fn p(path: &Path) -> &str {
    path.to_str().unwrap()
}

fn minisign(args: &[&str], stdin: &str) -> (bool, String) {
    use std::io::Write;
    let mut child = Command::new("minisign")
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the minisign tool is needed for this test: apt-get install minisign (ci/setup-host.sh does)");
    child.stdin.take().unwrap().write_all(stdin.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    (out.status.success(), String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr))
}

#[test]
fn sign_and_verify_with_failures_named() {
    let tmp = tempfile::tempdir().unwrap();
    let key = tmp.path().join("ci.key");
    let (code, text) = meshimg(&["keygen", "-o", p(&key), "--unencrypted"], &[]);
    assert_eq!(code, 0, "{text}");
    let file = tmp.path().join("meshos-test.img.xz");
    std::fs::write(&file, vec![7u8; 100_000]).unwrap();
    let (code, text) = meshimg(&["sign", p(&file), "--sign-key", p(&key)], &[]);
    assert_eq!(code, 0, "{text}");
    let pubkey = tmp.path().join("ci.key.pub");
    let (code, text) = meshimg(&["verify", p(&file), "-p", p(&pubkey)], &[]);
    assert_eq!(code, 0, "{text}");
    assert!(text.contains("signature good") && text.contains("file:meshos-test.img.xz"), "{text}");

    // The stock tool agrees.
    let (ok, text) = minisign(&["-V", "-m", p(&file), "-p", p(&pubkey)], "");
    assert!(ok, "minisign -V: {text}");

    // Truncated: exit 4, and the message says what that means.
    let good = std::fs::read(&file).unwrap();
    std::fs::write(&file, &good[..50_000]).unwrap();
    let (code, text) = meshimg(&["verify", p(&file), "-p", p(&pubkey)], &[]);
    assert_eq!(code, 4, "{text}");
    assert!(text.contains("does not match the data or its trusted comment: the file was changed, cut short"), "{text}");
    // One byte changed.
    let mut bad = good.clone();
    bad[1234] ^= 1;
    std::fs::write(&file, &bad).unwrap();
    assert_eq!(meshimg(&["verify", p(&file), "-p", p(&pubkey)], &[]).0, 4);
    std::fs::write(&file, &good).unwrap();

    // Another key: refused, naming both keys.
    let other = tmp.path().join("other.key");
    assert_eq!(meshimg(&["keygen", "-o", p(&other), "--unencrypted"], &[]).0, 0);
    let (code, text) = meshimg(&["verify", p(&file), "-p", p(&tmp.path().join("other.key.pub"))], &[]);
    assert_eq!(code, 4, "{text}");
    assert!(text.contains("not signed by any trusted key"), "{text}");

    // keygen never replaces a key by accident.
    let (code, text) = meshimg(&["keygen", "-o", p(&key), "--unencrypted"], &[]);
    assert_ne!(code, 0);
    assert!(text.contains("already exists; pass --force"), "{text}");
}

#[test]
fn encrypted_keys_interoperate_with_minisign() {
    let tmp = tempfile::tempdir().unwrap();
    // Ours, encrypted, used by minisign to sign; we verify.
    let key = tmp.path().join("enc.key");
    let (code, text) = meshimg(&["keygen", "-o", p(&key)], &[("MESHOS_SIGN_PASSPHRASE", "correct horse")]);
    assert_eq!(code, 0, "{text}");
    let file = tmp.path().join("bundle");
    std::fs::write(&file, b"payload").unwrap();
    let (ok, text) = minisign(&["-S", "-s", p(&key), "-m", p(&file)], "correct horse\n");
    assert!(ok, "minisign -S with our encrypted key: {text}");
    let (code, text) = meshimg(&["verify", p(&file), "-p", p(&tmp.path().join("enc.key.pub"))], &[]);
    assert_eq!(code, 0, "{text}");

    // minisign's, encrypted (its default cost), used by us to sign; minisign verifies.
    let (ok, text) = minisign(&["-G", "-p", p(&tmp.path().join("m.pub")), "-s", p(&tmp.path().join("m.key"))], "pw\npw\n");
    assert!(ok, "minisign -G: {text}");
    let m_key = tmp.path().join("m.key");
    let (code, text) = meshimg(&["sign", p(&file), "--sign-key", p(&m_key)], &[("MESHOS_SIGN_PASSPHRASE", "pw")]);
    assert_eq!(code, 0, "{text}");
    let (ok, text) = minisign(&["-V", "-m", p(&file), "-p", p(&tmp.path().join("m.pub"))], "");
    assert!(ok, "minisign -V of our signature with its key: {text}");

    // Wrong passphrase, and none with no terminal to ask on.
    let (code, text) = meshimg(&["sign", p(&file), "--sign-key", p(&m_key)], &[("MESHOS_SIGN_PASSPHRASE", "nope")]);
    assert_ne!(code, 0);
    assert!(text.contains("wrong passphrase"), "{text}");
    let (code, text) = meshimg(&["sign", p(&file), "--sign-key", p(&m_key)], &[]);
    assert_ne!(code, 0);
    assert!(text.contains("is encrypted and there is no terminal") && text.contains("MESHOS_SIGN_PASSPHRASE"), "{text}");
}

#[test]
fn keygen_writes_the_secret_key_to_a_file_of_its_own() {
    use std::os::unix::fs::PermissionsExt;
    let tmp = tempfile::tempdir().unwrap();
    let key = tmp.path().join("site.key");
    // What a fixed temporary name would have written through: a world-readable file planted
    // where it would be, and a link from there to somewhere else.
    let planted = tmp.path().join("site.tmp");
    std::fs::write(&planted, b"").unwrap();
    std::fs::set_permissions(&planted, std::fs::Permissions::from_mode(0o644)).unwrap();
    let elsewhere = tmp.path().join("elsewhere");
    std::os::unix::fs::symlink(&elsewhere, tmp.path().join("site.key.tmp")).unwrap();
    let (code, text) = meshimg(&["keygen", "-o", p(&key), "--unencrypted"], &[]);
    assert_eq!(code, 0, "{text}");
    assert_eq!(std::fs::metadata(&key).unwrap().permissions().mode() & 0o777, 0o600);
    assert_eq!(std::fs::read(&planted).unwrap(), b"", "the planted file was written to");
    assert!(!elsewhere.exists(), "the key went through the planted link");
    let left: Vec<_> = std::fs::read_dir(tmp.path()).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
    assert!(left.iter().all(|n| !n.starts_with(".meshimg-key")), "a temporary file was left behind: {left:?}");
}
