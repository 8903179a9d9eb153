//! What we read from a Debian archive: control paragraphs, versions, signed releases,
//! package indexes and the dependency relations between packages.

pub mod control;
pub mod release;
pub mod resolve;
pub mod version;
