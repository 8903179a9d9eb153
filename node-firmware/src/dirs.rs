//! Where a node keeps things: the boot partition, its state on the data partition, and its
//! files in /run.

use std::path::PathBuf;

/// Where a node keeps things. The defaults are the image's layout; a second meshd (say, one
/// driving a radio moved into another network namespace) gets its own.
pub struct Dirs {
    /// The FAT partition: mesh.yaml, conf.d/, ap-passphrase.txt.
    pub boot: PathBuf,
    /// On the data partition: identity, last good config.
    pub state: PathBuf,
    /// tmpfs: generated configs, status.json, service logs, sockets.
    pub run: PathBuf,
}

impl Default for Dirs {
    fn default() -> Dirs {
        Dirs { boot: "/boot".into(), state: "/data/meshd".into(), run: "/run/meshd".into() }
    }
}
