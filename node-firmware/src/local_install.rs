//! Installing a bundle on this node from a file or URL (`meshd upgrade install`) or from the
//! boot partition's `updates/` (a card reader is all a person needs): the node's slots and the
//! image's trust around the install state machine (crate::upgrade).

use crate::dirs::Dirs;
use crate::node::Node;
use crate::slots;
use crate::trust;
use meshos_common::boot_state::Slot;
use meshos_common::bundle::ErrorKind;
use std::time::Duration;

/// Installs bundles waiting in `updates/` on the boot partition (the offline path: a card
/// reader is all a person needs); reboots into the first one installed.
pub fn install_pending_updates(dirs: &Dirs) {
    let pending = crate::upgrade::pending(&dirs.boot);
    if let (Some(first), Some(r)) = (pending.first(), on_trial(dirs)) {
        logln!(
            "meshd: upgrade: {} waits: this slot runs {} on trial, and an install now would overwrite the last slot known good; it is installed once this one is committed",
            first.display(),
            r.version.as_deref().unwrap_or("?")
        );
        return;
    }
    for bundle in pending {
        logln!("meshd: upgrade: installing {} from the boot partition", bundle.display());
        let result = install_bundle(&crate::bundle_source::Source::File(bundle.clone()), dirs, false);
        if let Err(e) = &result {
            if matches!(e.kind, ErrorKind::Busy | ErrorKind::ReadOnly) {
                // Not refused: an install from the mesh runs, or the boot partition waits for
                // its repair at the next boot (and could not take the renamed bundle anyway).
                logln!("meshd: upgrade: {} waits for the next start: {e}", bundle.display());
                return;
            }
        }
        crate::upgrade::settle(&bundle, &result);
        match result {
            Ok(version) => {
                logln!("meshd: upgrade: {version} installed; rebooting into it");
                if let Err(e) = crate::machine::current().reboot() {
                    logln!("meshd: {e}");
                }
                // init is taking the system down; do not start services meanwhile.
                loop {
                    std::thread::sleep(Duration::from_secs(60));
                }
            }
            Err(e) => logln!("meshd: upgrade: {} refused: {e}; renamed .rejected, reason beside it", bundle.display()),
        }
    }
}

/// The install record, when the running slot is the one it installed and not yet committed.
pub fn on_trial(dirs: &Dirs) -> Option<crate::upgrade::Record> {
    let slot = Node::detect().ok()?.slot;
    crate::upgrade::read_record(&dirs.state)
        .filter(|r| r.step == crate::upgrade::Step::Installed && r.target.as_deref().and_then(Slot::parse) == Slot::parse(&slot))
}

/// Installs `bundle` into the slot not running (see crate::upgrade).
pub fn install_bundle(bundle: &crate::bundle_source::Source, dirs: &Dirs, allow_downgrade: bool) -> Result<String, crate::upgrade::InstallError> {
    let setup = |message: String| crate::upgrade::InstallError { step: crate::upgrade::Step::Verify, kind: ErrorKind::Node, message };
    let node = Node::detect().map_err(setup)?;
    let (disk, running) = slots::running(&node.slot).map_err(setup)?;
    let trusted = trust::public_keys(&crate::machine::in_root(trust::KEYS_DIR));
    if trusted.is_empty() {
        return Err(crate::upgrade::InstallError {
            step: crate::upgrade::Step::Verify,
            kind: ErrorKind::Signature,
            message: "this image trusts no signing key, so it accepts no upgrade".into(),
        });
    }
    let target = crate::upgrade::Target {
        disk: &disk,
        running,
        compatible: format!("meshos-{}", node.release.board),
        version: node.release.version.clone(),
        trusted: &trusted,
        required: trust::signatures_required(&crate::machine::in_root(trust::SIGNATURES_REQUIRED), trusted.len()),
        boot_dir: &dirs.boot,
        state_dir: &dirs.state,
    };
    crate::upgrade::install(bundle, &target, allow_downgrade)
}
