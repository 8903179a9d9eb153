//! The command line as a person meets it.

use std::process::Command;

fn meshimg(args: &[&str]) -> (i32, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_meshimg")).args(args).env("COLUMNS", "200").output().unwrap();
    (out.status.code().unwrap_or(-1), String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr))
}

#[test]
fn help_fits_in_80_columns() {
    for cmd in [
        &["--help"][..],
        &["lock", "--help"],
        &["plan", "--help"],
        &["build", "--help"],
        &["qemu", "--help"],
        &["boards", "--help"],
        &["keygen", "--help"],
        &["sign", "--help"],
        &["verify", "--help"],
        &["delta", "--help"],
        &["export", "--help"],
        &["serve", "--help"],
    ] {
        let (code, text) = meshimg(cmd);
        assert_eq!(code, 0, "{cmd:?}: {text}");
        for line in text.lines() {
            assert!(line.chars().count() <= 80, "{cmd:?} has a line over 80 columns: {line:?}");
        }
    }
    assert!(meshimg(&["--help"]).1.contains("4  integrity"), "the exit codes are documented");
}

#[test]
fn an_unknown_board_lists_the_known_ones() {
    let root = env!("CARGO_MANIFEST_DIR").to_string() + "/..";
    let (code, text) = meshimg(&["--root", &root, "plan", "no-such-board"]);
    assert_ne!(code, 0);
    assert!(text.contains("board-defs/no-such-board.yaml: cannot read (boards: "), "{text}");
    assert!(text.contains("rpi3"), "the known boards are listed: {text}");
}

#[test]
fn qemu_refuses_forwarding_on_a_machine_without_a_network_card() {
    let root = env!("CARGO_MANIFEST_DIR").to_string() + "/..";
    let tmp = tempfile::tempdir().unwrap();
    let img = tmp.path().join("x.img");
    std::fs::write(&img, [0u8; 512]).unwrap();
    let (code, text) = meshimg(&["--root", &root, "qemu", "rpi3", "--image", img.to_str().unwrap(), "--forward", "19100:9100"]);
    assert_ne!(code, 0);
    assert!(text.contains("--forward needs a network card, and the raspi3b machine of board rpi3 has none"), "{text}");
}

/// A laptop seeding a release: `meshimg sign` adds a second maintainer's signature to a built
/// bundle, `meshimg serve` offers it over HTTP as a node would, and `meshimg delta` measures
/// it against itself (nothing to fetch but the header).
#[test]
fn a_bundle_is_signed_again_served_and_measured() {
    let tmp = tempfile::tempdir().unwrap();
    let p = |n: &str| tmp.path().join(n).to_str().unwrap().to_string();
    for k in ["one", "two"] {
        assert_eq!(meshimg(&["keygen", "--unencrypted", "-o", &p(k)]).0, 0);
    }
    let images = vec![("root".to_string(), vec![9u8; 300_000]), ("boot/vmlinuz".to_string(), b"kernel".to_vec())];
    let key = meshos_common::minisign::SecretKey::parse(&std::fs::read_to_string(p("one")).unwrap(), None).unwrap();
    let header = meshimg::update_bundle::header("meshos-rpi3", "3.0", "b", &images, Some(&key), 0).unwrap();
    let bundle = p("meshos-rpi3-3.0.bundle");
    meshimg::update_bundle::write(std::path::Path::new(&bundle), &header, &images).unwrap();

    let (code, text) = meshimg(&["sign", &bundle, "--sign-key", &p("two")]);
    assert_eq!(code, 0, "{text}");
    assert!(text.contains("manifest signed by 2 key(s)"), "{text}");
    let (code, text) = meshimg(&["verify", &bundle, "-p", &p("two.pub")]);
    assert_eq!(code, 0, "{text}");
    let (code, text) = meshimg(&["delta", &bundle, &bundle]);
    assert_eq!(code, 0, "{text}");
    assert!(text.contains("3.0 -> 3.0: 0 of"), "{text}");

    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let mut server = Command::new(env!("CARGO_BIN_EXE_meshimg")).args(["serve", &bundle, "--listen", &format!("127.0.0.1:{port}")]).spawn().unwrap();
    let get = |path: &str| -> Option<Vec<u8>> {
        let r = ureq::get(&format!("http://127.0.0.1:{port}{path}")).call().ok()?;
        let mut body = Vec::new();
        std::io::Read::read_to_end(&mut r.into_body().into_reader(), &mut body).ok()?;
        Some(body)
    };
    let mut info = None;
    for _ in 0..50 {
        info = get("/nodeinfo.json");
        if info.is_some() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let info: serde_json::Value = serde_json::from_slice(&info.expect("meshimg serve answers")).unwrap();
    let manifest = info["upgrade"]["releases"][0]["manifest"].as_str().unwrap().to_string();
    let served_header = get(&format!("/header/{manifest}")).unwrap();
    let opened = meshos_common::bundle::open(&served_header[..]).unwrap();
    assert_eq!(opened.signer_ids().len(), 2);
    let chunk = &opened.manifest.images[1].chunks[0];
    assert_eq!(get(&format!("/chunk/{}", chunk.sha256)).unwrap(), b"kernel");
    assert_eq!(get("/bundle").unwrap(), std::fs::read(&bundle).unwrap());
    assert!(get("/chunk/0000").is_none());
    server.kill().unwrap();
    let _ = server.wait();
}
