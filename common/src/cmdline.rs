//! Kernel command-line keys set by the boot script and read by the initramfs and `meshd`.

/// Which root slot the boot script chose: `meshos.slot=a` or `meshos.slot=b`.
pub const SLOT_KEY: &str = "meshos.slot";
/// MBR disk signature of the card the node booted from, 8 hex digits: `meshos.disk=1a2b3c4d`.
pub const DISK_KEY: &str = "meshos.disk";
/// Seconds of silence after which the hardware watchdog resets the node, when the board's
/// definition sets one (the virtual board: a busy host can hold an emulated node back for
/// longer than a real board's 15 s): `meshos.watchdog=60`.
pub const WATCHDOG_KEY: &str = "meshos.watchdog";

/// The value of `key=` in a kernel command line, if present (the last occurrence wins, as in Linux).
pub fn value<'a>(cmdline: &'a str, key: &str) -> Option<&'a str> {
    cmdline.split_whitespace().filter_map(|word| word.split_once('=')).filter(|(k, _)| *k == key).map(|(_, v)| v).next_back()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_last_value() {
        let line = "console=ttyAMA0 meshos.slot=a quiet meshos.slot=b\n";
        assert_eq!(value(line, SLOT_KEY), Some("b"));
        assert_eq!(value(line, DISK_KEY), None);
    }
}
