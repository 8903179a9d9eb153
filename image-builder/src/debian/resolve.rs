//! Package indexes and dependency resolution (Depends and Pre-Depends, alternatives, virtual
//! packages, version constraints). Deterministic: the same indexes give the same answer.

use super::{control, version};
use std::collections::{BTreeMap, BTreeSet, VecDeque};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Package {
    pub name: String,
    pub version: String,
    pub arch: String,
    pub filename: String,
    pub size: u64,
    pub sha256: String,
    depends: String,
    provides: Vec<(String, Option<String>)>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ResolveError {
    #[error("package '{name}'{} is not in the archive for {arch}\nhint: check the name, the suite and debian.components in the board file", wanted(.wanted_by))]
    Missing { name: String, wanted_by: Option<String>, arch: String },
    #[error("package '{name}' {have} does not satisfy '{relation}'{}", wanted(.wanted_by))]
    Unsatisfiable { name: String, have: String, relation: String, wanted_by: Option<String> },
    #[error("index entry {index}: {message}")]
    BadIndex { index: String, message: String },
}

fn wanted(by: &Option<String>) -> String {
    by.as_ref().map(|b| format!(" (wanted by {b})")).unwrap_or_default()
}

/// Which dependencies to follow from the roots.
#[derive(Debug, Clone, Copy)]
pub enum Follow<'a> {
    /// Every Depends and Pre-Depends: a package installed into the root filesystem.
    All,
    /// Every dependency except groups naming one of these packages.
    Except(&'a [String]),
    /// None: a package we only take files from.
    Nothing,
    /// Only dependencies whose name starts with this prefix (a kernel metapackage to its image).
    Prefix(&'a str),
}

/// Every package of one architecture (plus `all`) across the board's components.
#[derive(Debug, Default)]
pub struct Index {
    arch: String,
    packages: BTreeMap<String, Package>,
    providers: BTreeMap<String, BTreeSet<String>>,
}

impl Index {
    pub fn new(arch: &str) -> Index {
        Index { arch: arch.into(), ..Default::default() }
    }

    /// Adds a `Packages` file; for a name listed twice the higher version wins.
    pub fn add(&mut self, index_name: &str, text: &str) -> Result<(), ResolveError> {
        let bad = |message: String| ResolveError::BadIndex { index: index_name.into(), message };
        for p in control::parse(text).map_err(bad)? {
            let field = |f: &str| p.get(f).map(str::to_string).ok_or_else(|| bad(format!("a package has no {f}")));
            let name = field("Package")?;
            let arch = field("Architecture")?;
            if arch != self.arch && arch != "all" {
                continue;
            }
            let pkg = Package {
                version: field("Version")?,
                filename: field("Filename")?,
                size: field("Size")?.parse().map_err(|_| bad(format!("{name}: Size is not a number")))?,
                sha256: field("SHA256")?,
                depends: [p.get("Pre-Depends"), p.get("Depends")].into_iter().flatten().collect::<Vec<_>>().join(", "),
                provides: p.get("Provides").map(parse_provides).unwrap_or_default(),
                arch,
                name: name.clone(),
            };
            if let Some(old) = self.packages.get(&name) {
                if version::compare(&old.version, &pkg.version).is_ge() {
                    continue;
                }
            }
            for (virt, _) in &pkg.provides {
                self.providers.entry(virt.clone()).or_default().insert(name.clone());
            }
            self.packages.insert(name, pkg);
        }
        Ok(())
    }

    pub fn get(&self, name: &str) -> Option<&Package> {
        self.packages.get(name)
    }

    /// Resolves `roots` and what they need; returns packages sorted by name.
    pub fn resolve(&self, roots: &[String], follow: Follow) -> Result<Vec<Package>, ResolveError> {
        let mut chosen: BTreeMap<String, Package> = BTreeMap::new();
        let mut queue: VecDeque<(String, Option<String>)> = roots.iter().map(|r| (r.clone(), None)).collect();
        while let Some((name, wanted_by)) = queue.pop_front() {
            if chosen.contains_key(&name) {
                continue;
            }
            let pkg =
                self.pick(&name, &chosen).ok_or_else(|| ResolveError::Missing { name: name.clone(), wanted_by: wanted_by.clone(), arch: self.arch.clone() })?;
            if chosen.contains_key(&pkg.name) {
                continue;
            }
            for group in parse_relations(&pkg.depends) {
                if !follows(follow, &group) {
                    continue;
                }
                if group.iter().any(|rel| self.satisfied_by(rel, chosen.values().chain([pkg]))) {
                    continue;
                }
                // First alternative that exists, as apt does; its version must fit.
                let alt = group.iter().find(|rel| self.pick(&rel.name, &chosen).is_some()).unwrap_or(&group[0]);
                let target = self.pick(&alt.name, &chosen).ok_or_else(|| ResolveError::Missing {
                    name: alt.name.clone(),
                    wanted_by: Some(pkg.name.clone()),
                    arch: self.arch.clone(),
                })?;
                if let Some((op, v)) = &alt.constraint {
                    if target.name == alt.name && !version::satisfies(&target.version, op, v) {
                        return Err(ResolveError::Unsatisfiable {
                            name: alt.name.clone(),
                            have: target.version.clone(),
                            relation: alt.to_string(),
                            wanted_by: Some(pkg.name.clone()),
                        });
                    }
                }
                queue.push_back((target.name.clone(), Some(pkg.name.clone())));
            }
            chosen.insert(pkg.name.clone(), pkg.clone());
        }
        Ok(chosen.into_values().collect())
    }

    /// A real package by that name, else a provider of that virtual name (one already chosen
    /// first, then the first by name, so the answer does not depend on index order).
    fn pick(&self, name: &str, chosen: &BTreeMap<String, Package>) -> Option<&Package> {
        if let Some(p) = self.packages.get(name) {
            return Some(p);
        }
        let providers = self.providers.get(name)?;
        providers.iter().find(|p| chosen.contains_key(*p)).or_else(|| providers.iter().next()).and_then(|p| self.packages.get(p))
    }

    fn satisfied_by<'a>(&self, rel: &Relation, mut pkgs: impl Iterator<Item = &'a Package>) -> bool {
        pkgs.any(|p| {
            (p.name == rel.name && rel.constraint.as_ref().is_none_or(|(op, v)| version::satisfies(&p.version, op, v)))
                || p.provides.iter().any(|(virt, pv)| {
                    virt == &rel.name
                        && match (&rel.constraint, pv) {
                            (None, _) => true,
                            (Some((op, v)), Some(pv)) => version::satisfies(pv, op, v),
                            (Some(_), None) => false,
                        }
                })
        })
    }
}

fn follows(follow: Follow, group: &[Relation]) -> bool {
    match follow {
        Follow::All => true,
        Follow::Except(skip) => !group.iter().any(|r| skip.contains(&r.name)),
        Follow::Nothing => false,
        Follow::Prefix(p) => group.iter().all(|r| r.name.starts_with(p)),
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Relation {
    name: String,
    constraint: Option<(String, String)>,
}

impl std::fmt::Display for Relation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.constraint {
            Some((op, v)) => write!(f, "{} ({op} {v})", self.name),
            None => write!(f, "{}", self.name),
        }
    }
}

/// "a (>= 1), b | c:any" → [[a >= 1], [b, c]]
fn parse_relations(text: &str) -> Vec<Vec<Relation>> {
    text.split(',').map(str::trim).filter(|g| !g.is_empty()).map(|group| group.split('|').map(|alt| parse_relation(alt.trim())).collect()).collect()
}

fn parse_relation(text: &str) -> Relation {
    let (head, constraint) = match text.split_once('(') {
        Some((h, rest)) => {
            let inner = rest.split(')').next().unwrap_or("").trim();
            let split = inner.find(|c: char| !"<>=".contains(c)).unwrap_or(inner.len());
            (h, Some((inner[..split].trim().to_string(), inner[split..].trim().to_string())))
        }
        None => (text, None),
    };
    let head = head.split('[').next().unwrap_or(head).trim();
    let name = head.split(':').next().unwrap_or(head).to_string();
    Relation { name, constraint }
}

fn parse_provides(text: &str) -> Vec<(String, Option<String>)> {
    text.split(',')
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .map(|p| {
            let r = parse_relation(p);
            (r.name, r.constraint.map(|(_, v)| v))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const INDEX: &str = "\
Package: app\nVersion: 1.0\nArchitecture: arm64\nDepends: libc6 (>= 2.38), mail-transport-agent | exim, cfg:any\nFilename: pool/a/app.deb\nSize: 10\nSHA256: aa\n
Package: libc6\nVersion: 2.41-1\nArchitecture: arm64\nDepends: libgcc-s1\nFilename: pool/l/libc6.deb\nSize: 20\nSHA256: bb\n
Package: libgcc-s1\nVersion: 14\nArchitecture: arm64\nPre-Depends: libc6\nFilename: pool/l/libgcc.deb\nSize: 5\nSHA256: cc\n
Package: postfix\nVersion: 3\nArchitecture: arm64\nProvides: mail-transport-agent\nFilename: pool/p/postfix.deb\nSize: 1\nSHA256: dd\n
Package: cfg\nVersion: 1\nArchitecture: all\nFilename: pool/c/cfg.deb\nSize: 1\nSHA256: ee\n
Package: cfg\nVersion: 2\nArchitecture: all\nFilename: pool/c/cfg2.deb\nSize: 1\nSHA256: ff\n
Package: other-arch\nVersion: 1\nArchitecture: armhf\nFilename: x\nSize: 1\nSHA256: 00\n
Package: meta\nVersion: 1\nArchitecture: arm64\nDepends: linux-image-6-arm64 (= 1), kmod\nFilename: m\nSize: 1\nSHA256: 01\n
Package: linux-image-6-arm64\nVersion: 1\nArchitecture: arm64\nDepends: kmod\nFilename: k\nSize: 1\nSHA256: 02\n";

    fn index() -> Index {
        let mut i = Index::new("arm64");
        i.add("test", INDEX).unwrap();
        i
    }

    fn names(p: Vec<Package>) -> Vec<String> {
        p.into_iter().map(|p| format!("{}={}", p.name, p.version)).collect()
    }

    #[test]
    fn closure_with_cycles_virtuals_and_newest_versions() {
        let got = names(index().resolve(&["app".into()], Follow::All).unwrap());
        assert_eq!(got, ["app=1.0", "cfg=2", "libc6=2.41-1", "libgcc-s1=14", "postfix=3"]);
    }

    #[test]
    fn prefix_follows_a_metapackage_only() {
        let got = names(index().resolve(&["meta".into()], Follow::Prefix("linux-image-")).unwrap());
        assert_eq!(got, ["linux-image-6-arm64=1", "meta=1"]);
        assert_eq!(names(index().resolve(&["meta".into()], Follow::Nothing).unwrap()), ["meta=1"]);
        let got = names(index().resolve(&["meta".into()], Follow::Except(&["kmod".into()])).unwrap());
        assert_eq!(got, ["linux-image-6-arm64=1", "meta=1"]);
    }

    #[test]
    fn missing_and_unsatisfiable_say_who_wanted_them() {
        let e = index().resolve(&["meta".into()], Follow::All).unwrap_err();
        assert_eq!(e.to_string().lines().next().unwrap(), "package 'kmod' (wanted by meta) is not in the archive for arm64");
        let e = index().resolve(&["other-arch".into()], Follow::All).unwrap_err();
        assert!(matches!(e, ResolveError::Missing { wanted_by: None, .. }));
        let mut i = index();
        i.add("old", "Package: x\nVersion: 1\nArchitecture: arm64\nDepends: libc6 (>= 3)\nFilename: x\nSize: 1\nSHA256: 1\n").unwrap();
        let e = i.resolve(&["x".into()], Follow::All).unwrap_err();
        assert_eq!(e.to_string(), "package 'libc6' 2.41-1 does not satisfy 'libc6 (>= 3)' (wanted by x)");
    }
}
