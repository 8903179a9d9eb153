//! meshd's log: each line reaches stderr in one write. `eprintln!` writes a line piece by piece,
//! and on a serial console the kernel's own messages land between the pieces, cutting meshd's
//! lines that operators and tests read.

use std::fmt::Arguments;
use std::io::Write;

/// Like `eprintln!`, one write per line.
macro_rules! logln {
    ($($arg:tt)*) => {
        $crate::log::line(format_args!($($arg)*))
    };
}

pub fn line(args: Arguments) {
    let mut text = args.to_string();
    text.push('\n');
    // Nowhere left to say it if stderr fails.
    let _ = std::io::stderr().lock().write_all(text.as_bytes());
}
