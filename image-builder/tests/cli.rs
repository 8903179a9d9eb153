//! The command line as a person meets it.

use std::process::Command;

fn meshimg(args: &[&str]) -> (i32, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_meshimg")).args(args).env("COLUMNS", "200").output().unwrap();
    (out.status.code().unwrap_or(-1), String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr))
}

#[test]
fn help_fits_in_80_columns() {
    for cmd in [&["--help"][..], &["lock", "--help"], &["plan", "--help"], &["build", "--help"], &["qemu", "--help"], &["boards", "--help"], &["keygen", "--help"], &["sign", "--help"], &["verify", "--help"]] {
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
