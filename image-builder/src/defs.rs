//! The `board-defs/` directory: where boards, their locks and pinned sources live, and the
//! `apiVersion` every definition there is written in.

use std::path::{Path, PathBuf};

pub const API_VERSION: &str = "meshos/v1";

/// `root/rel`, printed without a leading "./" when root is the current directory.
pub fn under(root: &Path, rel: &str) -> PathBuf {
    if root == Path::new(".") {
        PathBuf::from(rel)
    } else {
        root.join(rel)
    }
}
