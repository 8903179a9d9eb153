//! The line a node prints on its console once `meshd` is up. Tests (ours and others') wait for it.

use std::fmt;

/// Prefix every test matches on.
pub const READY_PREFIX: &str = "meshos ready";

/// `meshos ready version=<v> board=<board> slot=<a|b>`
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReadyLine {
    pub version: String,
    pub board: String,
    pub slot: String,
}

impl fmt::Display for ReadyLine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{READY_PREFIX} version={} board={} slot={}", self.version, self.board, self.slot)
    }
}

impl ReadyLine {
    /// Parses a console line (anything before the prefix, such as a carriage return, is ignored).
    pub fn parse(line: &str) -> Option<ReadyLine> {
        let rest = &line[line.find(READY_PREFIX)? + READY_PREFIX.len()..];
        let mut out = ReadyLine { version: String::new(), board: String::new(), slot: String::new() };
        for word in rest.split_whitespace() {
            match word.split_once('=') {
                Some(("version", v)) => out.version = v.to_string(),
                Some(("board", v)) => out.board = v.to_string(),
                Some(("slot", v)) => out.slot = v.to_string(),
                _ => {}
            }
        }
        (!out.version.is_empty() && !out.board.is_empty() && !out.slot.is_empty()).then_some(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_through_the_console() {
        let line = ReadyLine { version: "0.1.0".into(), board: "rpi3".into(), slot: "a".into() };
        let printed = format!("\r[   12.3] {line}\r");
        assert_eq!(line.to_string(), "meshos ready version=0.1.0 board=rpi3 slot=a");
        assert_eq!(ReadyLine::parse(&printed), Some(line));
    }

    #[test]
    fn incomplete_lines_are_not_ready() {
        assert_eq!(ReadyLine::parse("meshos ready version=1 board=rpi3"), None);
        assert_eq!(ReadyLine::parse("booting"), None);
    }
}
