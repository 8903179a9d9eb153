//! Formats the image builder (`meshimg`) and the node daemon (`meshd`) must agree on.
//!
//! Each module owns one agreement; neither side keeps a private copy of these.

pub mod boot_contract;
pub mod boot_state;
pub mod bundle;
pub mod chunks;
pub mod cmdline;
#[cfg(feature = "http-face")]
pub mod http_face;
pub mod minisign;
#[cfg(feature = "node-record")]
pub mod node_record;
pub mod os_release;
