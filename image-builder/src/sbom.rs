//! Software bill of materials: CycloneDX 1.5 JSON of every Debian package in the image and
//! every Rust crate in meshd, and the upstream sources compiled in (cjdns). Deterministic: only build inputs go into it.

use crate::lock::Lock;
use serde_json::{json, Value};

pub fn cyclonedx(lock: &Lock, board: &str, version: &str, build_id: &str, crates: &[(String, String, Option<String>)]) -> Value {
    let mut components: Vec<Value> = lock
        .packages
        .iter()
        .map(|p| {
            json!({
                "type": if p.roles.iter().any(|r| matches!(r, crate::lock::Role::Firmware | crate::lock::Role::Boot)) { "firmware" } else { "library" },
                "bom-ref": format!("deb:{}", p.name),
                "name": p.name,
                "version": p.version,
                "purl": format!("pkg:deb/debian/{}@{}?arch={}&distro={}", p.name, purl_escape(&p.version), p.arch, lock.suite),
                "hashes": [{"alg": "SHA-256", "content": p.sha256}],
            })
        })
        .collect();
    for (name, ver, checksum) in crates {
        let mut c = json!({
            "type": "library",
            "bom-ref": format!("crate:{name}@{ver}"),
            "name": name,
            "version": ver,
            "purl": format!("pkg:cargo/{name}@{ver}"),
        });
        if let Some(sum) = checksum {
            c["hashes"] = json!([{"alg": "SHA-256", "content": sum}]);
        }
        components.push(c);
    }
    // Sources by repository and commit (a purl for GitHub), with the hash the lock pins.
    for s in &lock.sources {
        let path = s.repository.trim_start_matches("https://github.com/");
        components.push(json!({
            "type": "library",
            "bom-ref": format!("source:{}@{}", s.name, s.commit),
            "name": s.name,
            "version": s.commit,
            "purl": format!("pkg:github/{path}@{}", s.commit),
            "externalReferences": [{"type": "vcs", "url": s.repository}],
            "properties": [{"name": "meshos:tree_sha256", "value": s.tree_sha256}],
        }));
    }
    json!({
        "bomFormat": "CycloneDX",
        "specVersion": "1.5",
        "serialNumber": format!("urn:uuid:{}", uuid_from(build_id)),
        "version": 1,
        "metadata": {
            "timestamp": iso8601(lock.source_date_epoch),
            "component": {"type": "operating-system", "name": format!("meshos-{board}"), "version": version},
        },
        "components": components,
    })
}

fn purl_escape(s: &str) -> String {
    s.replace('%', "%25").replace(':', "%3A").replace('+', "%2B").replace('~', "%7E")
}

/// A UUID-shaped string from a hex id (stable per build).
pub fn uuid_from(hex_id: &str) -> String {
    let h = format!("{hex_id:0<32}");
    format!("{}-{}-{}-{}-{}", &h[0..8], &h[8..12], &h[12..16], &h[16..20], &h[20..32])
}

/// Unix time → "YYYY-MM-DDTHH:MM:SSZ".
pub fn iso8601(t: i64) -> String {
    let (days, secs) = (t.div_euclid(86_400), t.rem_euclid(86_400));
    // Civil from days (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!("{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z", secs / 3600, secs / 60 % 60, secs % 60)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps() {
        assert_eq!(iso8601(0), "1970-01-01T00:00:00Z");
        assert_eq!(iso8601(1_795_252_544), "2026-11-21T09:15:44Z");
        assert_eq!(uuid_from("0123456789ab"), "01234567-89ab-0000-0000-000000000000");
    }
}
