//! Property tests of what meshimg reads from a Debian mirror: control paragraphs and Release
//! files of any text answer with a value or an error, never a panic, and our version order is
//! dpkg's own (`dpkg --compare-versions`) on generated pairs. `PROPTEST_CASES` sets how many
//! inputs each property tries.

use meshimg::debian::{control, release::Release, version};
use proptest::prelude::*;
use std::cmp::Ordering;
use std::process::Command;

/// Lines a control file might hold: fields, continuations, blank lines, junk.
fn control_text() -> impl Strategy<Value = String> {
    let line = prop_oneof![
        "[A-Za-z-]{1,12}: [ -~]{0,30}",
        "[ \t][ -~]{0,30}",
        Just(String::new()),
        "[ -~]{0,30}",
        "SHA256:",
        " [0-9a-f]{0,64} [0-9]{0,8} [a-z/.]{0,20}"
    ];
    proptest::collection::vec(line, 0..20).prop_map(|l| l.join("\n"))
}

/// Debian versions: an optional epoch, an upstream part and an optional revision, from few
/// characters so that pairs share prefixes and differ where the rules are subtle (`~`, `+`,
/// letters against digits, leading zeros).
fn debian_version() -> impl Strategy<Value = String> {
    ("([0-2]:)?", "[0-9][0-9a-c.+~]{0,6}", "(-[0-9a-c.+~]{1,4})?").prop_map(|(e, u, r)| format!("{e}{u}{r}"))
}

fn dpkg_says(a: &str, op: &str, b: &str) -> bool {
    let st = Command::new("dpkg").args(["--compare-versions", a, op, b]).status().expect("dpkg runs (make test installs it on Debian)");
    st.success()
}

proptest! {
    #[test]
    fn any_control_text_is_parsed_or_refused(text in control_text()) {
        if let Ok(paras) = control::parse(&text) {
            for p in &paras {
                let _ = p.get("Package");
            }
        }
    }

    #[test]
    fn any_release_text_is_parsed_or_refused(text in control_text()) {
        if let Ok(r) = Release::parse("http://mirror/InRelease", &text) {
            let _ = r.check_suite("trixie");
        }
    }

    #[test]
    fn release_parsing_survives_any_printable_text(text in "[ -~\n\t]{0,500}") {
        let _ = control::parse(&text);
        let _ = Release::parse("http://mirror/InRelease", &text);
    }
}

proptest! {
    // Two dpkg runs a pair: at most a thousand pairs, whatever PROPTEST_CASES asks.
    #![proptest_config(ProptestConfig { cases: ProptestConfig::default().cases.min(1000), ..ProptestConfig::default() })]

    #[test]
    fn version_order_is_dpkgs(a in debian_version(), b in debian_version()) {
        let ours = version::compare(&a, &b);
        let theirs = if dpkg_says(&a, "lt", &b) { Ordering::Less } else if dpkg_says(&a, "eq", &b) { Ordering::Equal } else { Ordering::Greater };
        prop_assert_eq!(ours, theirs, "{} against {}", a, b);
    }
}
