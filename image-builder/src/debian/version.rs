//! Debian version ordering (deb-version(7)) and relation checks.

use std::cmp::Ordering;

/// Compares two Debian versions `[epoch:]upstream[-revision]`.
pub fn compare(a: &str, b: &str) -> Ordering {
    let (ea, ua, ra) = split(a);
    let (eb, ub, rb) = split(b);
    ea.cmp(&eb).then_with(|| compare_part(ua, ub)).then_with(|| compare_part(ra, rb))
}

fn split(v: &str) -> (u64, &str, &str) {
    let (epoch, rest) = match v.split_once(':') {
        Some((e, r)) if e.chars().all(|c| c.is_ascii_digit()) => (e.parse().unwrap_or(0), r),
        _ => (0, v),
    };
    match rest.rsplit_once('-') {
        Some((u, r)) => (epoch, u, r),
        None => (epoch, rest, ""),
    }
}

/// '~' sorts before everything, even the end; letters before non-letters.
fn order(c: Option<u8>) -> i32 {
    match c {
        None => 0,
        Some(b'~') => -1,
        Some(c) if c.is_ascii_alphabetic() => i32::from(c),
        Some(c) => i32::from(c) + 256,
    }
}

fn compare_part(a: &str, b: &str) -> Ordering {
    let (mut a, mut b) = (a.as_bytes(), b.as_bytes());
    while !a.is_empty() || !b.is_empty() {
        // Non-digit prefix.
        loop {
            let (ca, cb) = (a.first().copied().filter(|c| !c.is_ascii_digit()), b.first().copied().filter(|c| !c.is_ascii_digit()));
            if ca.is_none() && cb.is_none() {
                break;
            }
            let o = order(ca).cmp(&order(cb));
            if o != Ordering::Equal {
                return o;
            }
            a = &a[1..];
            b = &b[1..];
        }
        // Digit run, compared numerically.
        let na = a.iter().take_while(|c| c.is_ascii_digit()).count();
        let nb = b.iter().take_while(|c| c.is_ascii_digit()).count();
        let da = std::str::from_utf8(&a[..na]).unwrap().trim_start_matches('0');
        let db = std::str::from_utf8(&b[..nb]).unwrap().trim_start_matches('0');
        let o = da.len().cmp(&db.len()).then_with(|| da.cmp(db));
        if o != Ordering::Equal {
            return o;
        }
        a = &a[na..];
        b = &b[nb..];
    }
    Ordering::Equal
}

/// Whether `version` satisfies `op constraint` (`>=`, `<=`, `=`, `>>`, `<<`).
pub fn satisfies(version: &str, op: &str, constraint: &str) -> bool {
    let o = compare(version, constraint);
    match op {
        ">=" => o != Ordering::Less,
        "<=" => o != Ordering::Greater,
        "=" => o == Ordering::Equal,
        ">>" | ">" => o == Ordering::Greater,
        "<<" | "<" => o == Ordering::Less,
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debian_ordering() {
        assert_eq!(compare("1.0", "1.0"), Ordering::Equal);
        assert_eq!(compare("1:1.0", "2.0"), Ordering::Greater);
        assert_eq!(compare("1.0~rc1", "1.0"), Ordering::Less);
        assert_eq!(compare("2.41-12+deb13u5", "2.41-12"), Ordering::Greater);
        assert_eq!(compare("1.10", "1.9"), Ordering::Greater);
        assert_eq!(compare("1.0a", "1.0+"), Ordering::Less);
        assert!(satisfies("2.41-12", ">=", "2.38"));
        assert!(!satisfies("2.36", ">=", "2.38"));
        assert!(satisfies("6.12.117-1", "=", "6.12.117-1"));
    }
}
