//! Firmware files: only those the kept modules ask for (their `.modinfo` firmware names, which
//! may be globs), narrowed by the board's per-module limits. Links are kept with their targets.

use crate::kmod::Module;
use crate::tree::{Kind, Tree};
use std::collections::{BTreeMap, BTreeSet};

pub const DIR: &str = "usr/lib/firmware";

pub struct Chosen {
    /// Paths in the firmware tree to copy into the root filesystem.
    pub paths: BTreeSet<String>,
    /// (module, firmware name) pairs no firmware package provides.
    pub missing: Vec<(String, String)>,
}

pub fn choose<'a>(
    firmware: &Tree,
    modules: impl Iterator<Item = &'a Module>,
    limits: &BTreeMap<String, Vec<String>>,
    extra: &BTreeMap<String, Vec<String>>,
) -> Chosen {
    let available: Vec<&String> = firmware.under(DIR).filter(|(_, n)| !matches!(n.kind, Kind::Dir)).map(|(p, _)| p).collect();
    let mut paths = BTreeSet::new();
    let mut missing = Vec::new();
    for m in modules {
        let for_module = |map: &'_ BTreeMap<String, Vec<String>>| map.iter().find(|(k, _)| crate::board::normalize_module(k) == m.name).map(|(_, v)| v.clone());
        let limit = for_module(limits);
        let limit = limit.as_ref();
        let wants: Vec<String> = m.firmware.iter().cloned().chain(for_module(extra).unwrap_or_default()).collect();
        for want in &wants {
            let mut found = false;
            for path in &available {
                let rel = &path[DIR.len() + 1..];
                let base = rel.trim_end_matches(".xz").trim_end_matches(".zst");
                if !glob(want, base) || limit.is_some_and(|l| !l.iter().any(|g| glob(g, base))) {
                    continue;
                }
                found = true;
                paths.insert((*path).clone());
                if let Some(target) = firmware.resolve(path) {
                    paths.insert(target);
                }
            }
            let narrowed_away = limit.is_some_and(|l| !l.iter().any(|g| glob(g, want) || glob(want, g)));
            if !found && !narrowed_away {
                missing.push((m.name.clone(), want.clone()));
            }
        }
    }
    Chosen { paths, missing }
}

/// Shell-style `*` and `?` matching.
pub fn glob(pattern: &str, text: &str) -> bool {
    let (p, t): (Vec<char>, Vec<char>) = (pattern.chars().collect(), text.chars().collect());
    let (mut pi, mut ti, mut star, mut mark) = (0, 0, None, 0);
    while ti < t.len() {
        if pi < p.len() && (p[pi] == '?' || p[pi] == t[ti]) {
            pi += 1;
            ti += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some(pi);
            mark = ti;
            pi += 1;
        } else if let Some(s) = star {
            pi = s + 1;
            mark += 1;
            ti = mark;
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|c| *c == '*')
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tree::Node;

    #[test]
    fn globs() {
        assert!(glob("brcm/brcmfmac*-sdio.*.txt", "brcm/brcmfmac43430-sdio.raspberrypi,3-model-b.txt"));
        assert!(!glob("brcm/brcmfmac*-sdio.*.txt", "brcm/brcmfmac43430-sdio.bin"));
        assert!(glob("rt2870.bin", "rt2870.bin"));
    }

    #[test]
    fn picks_requested_files_links_and_targets_within_limits() {
        let mut fw = Tree::new();
        fw.insert("usr/lib/firmware/rt2870.bin", Node::symlink("mediatek/rt2870.bin"));
        fw.insert("usr/lib/firmware/mediatek/rt2870.bin", Node::file(b"fw".to_vec(), 0o644));
        fw.insert("usr/lib/firmware/brcm/brcmfmac43430-sdio.bin", Node::file(b"a".to_vec(), 0o644));
        fw.insert("usr/lib/firmware/brcm/brcmfmac4356-sdio.bin", Node::file(b"b".to_vec(), 0o644));
        let mods = [
            Module { name: "rt2800usb".into(), rel_path: String::new(), data: vec![], optional: false, firmware: vec!["rt2870.bin".into()] },
            Module {
                name: "brcmfmac".into(),
                rel_path: String::new(),
                data: vec![],
                optional: false,
                firmware: vec!["brcm/brcmfmac*-sdio.bin".into(), "brcm/brcmfmac4356-sdio.bin".into()],
            },
            Module { name: "ath9k_htc".into(), rel_path: String::new(), data: vec![], optional: false, firmware: vec!["htc_9271.fw".into()] },
        ];
        let limits = BTreeMap::from([("brcmfmac".to_string(), vec!["brcm/brcmfmac43430-sdio.*".to_string()])]);
        let c = choose(&fw, mods.iter(), &limits, &BTreeMap::new());
        let got: Vec<&str> = c.paths.iter().map(String::as_str).collect();
        assert_eq!(got, ["usr/lib/firmware/brcm/brcmfmac43430-sdio.bin", "usr/lib/firmware/mediatek/rt2870.bin", "usr/lib/firmware/rt2870.bin"]);
        assert_eq!(c.missing, [("ath9k_htc".to_string(), "htc_9271.fw".to_string())]);
        fw.insert("usr/lib/firmware/legacy.fw", Node::file(b"l".to_vec(), 0o644));
        let extra = BTreeMap::from([("rt2800usb".to_string(), vec!["legacy.fw".to_string()])]);
        let c = choose(&fw, mods.iter(), &limits, &extra);
        assert!(c.paths.contains("usr/lib/firmware/legacy.fw"));
    }
}
