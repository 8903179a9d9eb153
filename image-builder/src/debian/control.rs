//! deb822 control paragraphs (`Packages`, `InRelease` bodies, `control` files).

use std::collections::BTreeMap;

/// One paragraph: field name (case kept) → value (continuation lines joined with '\n').
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Paragraph {
    fields: BTreeMap<String, String>,
}

impl Paragraph {
    pub fn get(&self, field: &str) -> Option<&str> {
        self.fields.iter().find(|(k, _)| k.eq_ignore_ascii_case(field)).map(|(_, v)| v.as_str())
    }
}

/// Splits `text` into paragraphs. Malformed lines are reported with their line number.
pub fn parse(text: &str) -> Result<Vec<Paragraph>, String> {
    let mut out = Vec::new();
    let mut cur = Paragraph::default();
    let mut last: Option<String> = None;
    for (n, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            if !cur.fields.is_empty() {
                out.push(std::mem::take(&mut cur));
            }
            last = None;
        } else if line.starts_with(' ') || line.starts_with('\t') {
            let key = last.as_ref().ok_or_else(|| format!("line {}: continuation line with no field before it", n + 1))?;
            let v = cur.fields.get_mut(key).expect("field seen");
            if !v.is_empty() {
                v.push('\n');
            }
            v.push_str(line.trim());
        } else if line.starts_with('#') {
            continue;
        } else {
            let (k, v) = line.split_once(':').ok_or_else(|| format!("line {}: expected 'Field: value', got '{line}'", n + 1))?;
            cur.fields.insert(k.to_string(), v.trim().to_string());
            last = Some(k.to_string());
        }
    }
    if !cur.fields.is_empty() {
        out.push(cur);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paragraphs_and_continuations() {
        let p = parse("Package: a\nDescription: x\n more\n\nPackage: b\n").unwrap();
        assert_eq!(p.len(), 2);
        assert_eq!(p[0].get("description"), Some("x\nmore"));
        assert_eq!(p[1].get("Package"), Some("b"));
        assert_eq!(parse(" x\n").unwrap_err(), "line 1: continuation line with no field before it");
    }
}
