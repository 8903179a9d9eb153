//! `/etc/os-release` as written by the image builder and read on the node.
//!
//! Standard keys plus `MESHOS_BOARD` and `BUILD_ID`, so a node can say what it runs.

use std::collections::BTreeMap;

pub const PATH: &str = "/etc/os-release";

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OsRelease {
    pub version: String,
    pub board: String,
    pub build_id: String,
}

impl OsRelease {
    pub fn render(&self) -> String {
        format!(
            "NAME=\"meshos\"\nID=meshos\nPRETTY_NAME=\"meshos {v} ({b})\"\nVERSION=\"{v}\"\nVERSION_ID={v}\n\
             BUILD_ID={id}\nMESHOS_BOARD={b}\nHOME_URL=\"https://github.com/tomeshnet\"\n",
            v = self.version,
            b = self.board,
            id = self.build_id
        )
    }

    /// Parses os-release text; missing keys are reported by name.
    pub fn parse(text: &str) -> Result<OsRelease, String> {
        let fields: BTreeMap<&str, &str> = text.lines().filter_map(|l| l.split_once('=')).map(|(k, v)| (k.trim(), v.trim().trim_matches('"'))).collect();
        let get = |k: &str| fields.get(k).map(|v| v.to_string()).ok_or_else(|| format!("{PATH} has no {k}"));
        Ok(OsRelease { version: get("VERSION_ID")?, board: get("MESHOS_BOARD")?, build_id: get("BUILD_ID")? })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips() {
        let r = OsRelease { version: "0.1.0".into(), board: "rpi3".into(), build_id: "abc123".into() };
        assert_eq!(OsRelease::parse(&r.render()), Ok(r));
        assert_eq!(OsRelease::parse("ID=x\n").unwrap_err(), "/etc/os-release has no VERSION_ID");
    }
}
