//! Property tests of the parsers a node runs on bytes from outside: bundle headers (from a
//! neighbour, a server or a card), the boot state record (as a power cut or U-Boot left it),
//! and minisign keys and signatures. Whatever the input, each answers with a value or an error,
//! never a panic, and what the writers make reads back the same. `PROPTEST_CASES` sets how
//! many inputs each property tries (make test runs a bounded number).

use meshos_common::boot_state::{self, BootState, Slot};
use meshos_common::{bundle, minisign};
use proptest::collection::vec;
use proptest::prelude::*;

fn slot_order() -> impl Strategy<Value = Vec<Slot>> {
    prop_oneof![Just(vec![Slot::A]), Just(vec![Slot::B]), Just(vec![Slot::A, Slot::B]), Just(vec![Slot::B, Slot::A])]
}

/// A sector whose checksum is right, so the decoder reads its text.
fn with_crc(mut sector: Vec<u8>) -> Vec<u8> {
    sector.resize(boot_state::SIZE, 0);
    let crc = boot_state::crc32(&sector[4..]);
    sector[..4].copy_from_slice(&crc.to_le_bytes());
    sector
}

/// Text a record might hold: its own variables with any values, and others.
fn record_text() -> impl Strategy<Value = Vec<u8>> {
    let var = prop_oneof!["(BOOT_ORDER|BOOT_A_LEFT|BOOT_B_LEFT|BOOT_SEQ)=[0-9a-fxAB ]{0,20}", "[A-Z_]{1,12}=[ -~]{0,16}", "[ -~]{0,24}",];
    vec(var, 0..8).prop_map(|vars| {
        let mut b = vec![0u8; 4];
        for v in vars {
            b.extend_from_slice(v.as_bytes());
            b.push(0);
        }
        b.truncate(boot_state::SIZE);
        b
    })
}

proptest! {
    #[test]
    fn any_bytes_as_a_bundle_are_an_error_not_a_panic(bytes in vec(any::<u8>(), 0..4096)) {
        let _ = bundle::open(&bytes[..]);
    }

    #[test]
    fn a_bundle_with_the_magic_and_any_lengths_is_an_error_not_a_panic(
        manifest_len in prop_oneof![0u32..4096, any::<u32>()],
        rest in vec(any::<u8>(), 0..4096),
    ) {
        let mut b = bundle::MAGIC.to_vec();
        b.extend_from_slice(&manifest_len.to_le_bytes());
        b.extend_from_slice(&rest);
        prop_assert!(bundle::open(&b[..]).is_err());
    }

    #[test]
    fn any_manifest_text_in_a_well_formed_header_is_checked_not_trusted(json in "[ -~]{0,300}", sig in "[ -~\n]{0,300}") {
        let b = bundle::header(json.as_bytes(), Some(&sig));
        if let Ok(opened) = bundle::open(&b[..]) {
            // Whatever parsed was validated: a node never writes what validate() refuses.
            prop_assert!(opened.manifest.validate().is_ok());
        }
    }

    #[test]
    fn any_boot_state_sector_is_decoded_or_refused(sector in vec(any::<u8>(), 0..600), copy in 0usize..2) {
        let _ = BootState::decode(&sector, copy);
    }

    #[test]
    fn a_checksummed_sector_of_any_text_decodes_to_a_state_that_reads_back(text in record_text()) {
        if let Ok(state) = BootState::decode(&with_crc(text), 0) {
            prop_assert_eq!(BootState::decode(&state.encode(), 0), Ok(state));
        }
    }

    #[test]
    fn every_state_reads_back_and_a_flipped_bit_never_passes_for_another(
        order in slot_order(), a_left in 0u32..=3, b_left in 0u32..=3, seq in any::<u32>(), at in 0usize..boot_state::SIZE, bit in 0u8..8,
    ) {
        let state = BootState { order, a_left, b_left, seq: u64::from(seq) };
        let mut sector = state.encode();
        prop_assert_eq!(BootState::decode(&sector, 1), Ok(state.clone()));
        sector[at] ^= 1 << bit;
        prop_assert!(BootState::decode(&sector, 1).is_err());
    }

    #[test]
    fn any_text_as_a_minisign_key_or_signature_is_an_error_not_a_panic(text in "[ -~\n]{0,400}") {
        let _ = minisign::PublicKey::parse(&text);
        let _ = minisign::SignatureFile::parse(&text);
        let _ = bundle::parse_signatures(&text);
    }

    #[test]
    fn minisign_lines_of_any_decoded_bytes_are_an_error_not_a_panic(
        comment in "[ -~]{0,40}", raw in vec(any::<u8>(), 0..200), trusted in "[ -~]{0,40}", raw2 in vec(any::<u8>(), 0..100),
    ) {
        use base64::Engine;
        let b64 = base64::engine::general_purpose::STANDARD;
        let key = format!("untrusted comment: {comment}\n{}\n", b64.encode(&raw));
        let _ = minisign::PublicKey::parse(&key);
        let sig = format!("untrusted comment: {comment}\n{}\ntrusted comment: {trusted}\n{}\n", b64.encode(&raw), b64.encode(&raw2));
        let _ = minisign::SignatureFile::parse(&sig);
    }
}
