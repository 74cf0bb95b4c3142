//! Enumerating a space: every placement of the movable groups into
//! compartments, every protection of those compartments and every
//! hardening choice; symmetric duplicates removed; each candidate checked
//! by the configuration checker.

use super::space::{Protection, Space, applies};
use flexos_config::{Hardening, Mechanism};
use std::collections::{BTreeMap, HashSet};
use std::fmt::Write as _;

/// One configuration of a space.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Candidate {
    /// `c000`, `c001`, ... in enumeration order.
    pub id: String,
    /// Per movable group (in the space's order): 0 for the default
    /// compartment, else 1 + the index of its compartment in `compartments`.
    pub slot: Vec<usize>,
    /// The protection of the non-default compartments, in canonical order.
    pub compartments: Vec<Protection>,
    /// The default compartment's protection.
    pub default: Protection,
    /// Per hardening group (in the space's order): the options it gets.
    pub harden: Vec<Vec<Hardening>>,
    /// The configuration file's text.
    pub toml: String,
    /// Why this machine cannot run it, if it cannot.
    pub unrunnable: Option<String>,
}

impl Candidate {
    /// Whether every movable group stays in the default compartment.
    pub fn is_one_compartment(&self) -> bool {
        self.slot.iter().all(|&s| s == 0)
    }

    /// Whether no component is hardened.
    pub fn is_unhardened(&self) -> bool {
        self.harden.iter().all(Vec::is_empty)
    }

    /// The compartment slot of unit `u`: 0 (the default compartment) for
    /// unit 0, the image's fixed components; movable group g is unit g+1.
    pub fn slot_of_unit(&self, u: usize) -> usize {
        if u == 0 { 0 } else { self.slot[u - 1] }
    }

    /// The protection of compartment slot `s` (0: the default compartment).
    pub fn protection_of_slot(&self, s: usize) -> Protection {
        if s == 0 { self.default } else { self.compartments[s - 1] }
    }

    /// The calls of `calls` (caller, callee, count) that cross a compartment
    /// boundary in this configuration: the kind of boundary crossed, the
    /// callee's name ([`Space::group_name`]) and the count.
    pub fn crossings<'a>(
        &'a self,
        space: &'a Space,
        calls: &'a [(String, String, f64)],
    ) -> impl Iterator<Item = (Protection, &'a str, f64)> + 'a {
        calls.iter().filter_map(move |(from, to, n)| {
            let (a, b) = (self.slot_of_unit(space.unit_of(from)), self.slot_of_unit(space.unit_of(to)));
            (a != b).then(|| {
                let kind = super::model::crossing_kind(self.protection_of_slot(a), self.protection_of_slot(b));
                (kind, space.group_name(to), *n)
            })
        })
    }

    /// The names of the movable groups in compartment slot `s`.
    pub fn members<'s>(&self, space: &'s Space, s: usize) -> Vec<&'s str> {
        space.movable.iter().zip(&self.slot).filter(|(_, slot)| **slot == s).map(|(g, _)| g[0]).collect()
    }

    /// A short description: `main+net | sched:proc ; hardened: kv net`.
    pub fn label(&self, space: &Space) -> String {
        let mut main = vec!["main"];
        main.extend(self.members(space, 0));
        let mut parts = vec![main.join("+")];
        for (i, p) in self.compartments.iter().enumerate() {
            parts.push(format!("{}:{}", self.members(space, i + 1).join("+"), p.name()));
        }
        let hardened: Vec<String> = space
            .harden_groups
            .iter()
            .zip(&self.harden)
            .filter(|(_, h)| !h.is_empty())
            .map(|(g, h)| {
                if space.bundle {
                    g[0].to_string()
                } else {
                    format!("{}[{}]", g[0], h.iter().map(|o| o.name()).collect::<Vec<_>>().join(","))
                }
            })
            .collect();
        let h = if hardened.is_empty() { "none".to_string() } else { hardened.join(" ") };
        format!("{} ; hardened: {h}", parts.join(" | "))
    }
}

/// The result of enumerating a space.
#[derive(Clone, Debug)]
pub struct Enumeration {
    /// The distinct valid configurations.
    pub candidates: Vec<Candidate>,
    /// Placements × protections × hardening choices before removing duplicates.
    pub labeled: usize,
    /// Dropped as symmetric duplicates (same configuration, other compartment names or order).
    pub duplicates: usize,
    /// Dropped by the configuration checker: message → count.
    pub invalid: BTreeMap<String, usize>,
}

impl Enumeration {
    /// The one-compartment configuration without hardening (every space has it).
    pub fn baseline(&self) -> Option<&Candidate> {
        self.candidates.iter().find(|c| c.is_one_compartment() && c.is_unhardened())
    }

    /// How many candidates this machine cannot run.
    pub fn unrunnable(&self) -> usize {
        self.candidates.iter().filter(|c| c.unrunnable.is_some()).count()
    }
}

/// The hardening choices of one group: every subset of the options that
/// apply to it (or none/all with bundles).
pub fn harden_choices(space: &Space, group: &[&str]) -> Vec<Vec<Hardening>> {
    let opts: Vec<Hardening> = space.options.iter().copied().filter(|o| group.iter().any(|m| applies(*o, m))).collect();
    if space.bundle {
        return vec![vec![], opts];
    }
    (0..1u32 << opts.len())
        .map(|mask| opts.iter().enumerate().filter(|(i, _)| mask & (1 << i) != 0).map(|(_, o)| *o).collect())
        .collect()
}

/// Enumerates `space`; `pku` says whether this machine has protection keys.
pub fn enumerate(space: &Space, pku: bool) -> Enumeration {
    let n = space.movable.len();
    let maxc = space.max_compartments.max(1);
    let extra = maxc - 1;
    let prots = &space.protections;
    let harden_sets: Vec<Vec<Vec<Hardening>>> = space.harden_groups.iter().map(|g| harden_choices(space, g)).collect();
    let harden_count: usize = harden_sets.iter().map(Vec::len).product();

    // Placements: each group to a slot 0..maxc, each extra slot a protection.
    let mut seen = HashSet::new();
    let mut placements = Vec::new();
    let mut labeled_placements = 0usize;
    let prot_choices = if prots.is_empty() { 1 } else { prots.len().pow(extra as u32) };
    for assign in 0..maxc.pow(n as u32) {
        let slots: Vec<usize> = (0..n).map(|g| assign / maxc.pow(g as u32) % maxc).collect();
        for pc in 0..prot_choices {
            labeled_placements += 1;
            let prot_of = |s: usize| prots.get(pc / prots.len().max(1).pow(s as u32 - 1) % prots.len().max(1));
            // Canonical: non-empty extra slots numbered by their first group.
            let mut order: Vec<usize> = Vec::new();
            for &s in &slots {
                if s != 0 && !order.contains(&s) {
                    order.push(s);
                }
            }
            let Some(compartments) = order.iter().map(|&s| prot_of(s).copied()).collect::<Option<Vec<_>>>() else {
                continue; // groups moved but no mechanism: the space is refused earlier
            };
            let slot: Vec<usize> = slots
                .iter()
                .map(|&s| if s == 0 { 0 } else { 1 + order.iter().position(|&o| o == s).unwrap() })
                .collect();
            if seen.insert((slot.clone(), compartments.clone())) {
                placements.push((slot, compartments));
            }
        }
    }
    let labeled = labeled_placements * harden_count;
    let duplicates = labeled - placements.len() * harden_count;

    let mut candidates = Vec::new();
    let mut invalid: BTreeMap<String, usize> = BTreeMap::new();
    for (slot, compartments) in placements {
        for h in 0..harden_count {
            let mut rest = h;
            let harden: Vec<Vec<Hardening>> = harden_sets
                .iter()
                .map(|choices| {
                    let c = choices[rest % choices.len()].clone();
                    rest /= choices.len();
                    c
                })
                .collect();
            let mut c = Candidate {
                id: String::new(),
                slot: slot.clone(),
                compartments: compartments.clone(),
                default: space.default_protection,
                harden,
                toml: String::new(),
                unrunnable: None,
            };
            c.toml = config_text(space, &c);
            match flexos_config::parse(&space.source, &c.toml) {
                Ok(layout) => {
                    let mpk = layout.compartments.iter().any(|k| k.mechanism == Mechanism::Mpk);
                    if mpk && !pku {
                        c.unrunnable = Some("mpk needs protection keys, which this machine lacks".into());
                    }
                    c.id = format!("c{:03}", candidates.len());
                    candidates.push(c);
                }
                Err(errors) => {
                    *invalid.entry(errors[0].message.clone()).or_default() += 1;
                }
            }
        }
    }
    Enumeration { candidates, labeled, duplicates, invalid }
}

/// The configuration file of candidate `c` (a normal configuration: `flexos build` takes it).
pub fn config_text(space: &Space, c: &Candidate) -> String {
    let mut t = format!("# generated by flexos explore from {}\napp = \"{}\"\n", space.source.display(), space.app);
    if let Some(f) = &space.files {
        writeln!(t, "files = {:?}", f.display().to_string()).unwrap();
    }
    let compartment = |t: &mut String, name: &str, p: Protection, default: bool| {
        write!(t, "\n[[compartment]]\nname = \"{name}\"\nmechanism = \"{}\"\n", p.mechanism.name()).unwrap();
        if p.mechanism.sharing().len() > 1 {
            writeln!(t, "sharing = \"{}\"", p.sharing.name()).unwrap();
        }
        if default {
            t.push_str("default = true\n");
        }
    };
    compartment(&mut t, "main", c.default, true);
    let names: Vec<String> = (0..c.compartments.len()).map(|i| c.members(space, i + 1).join("-")).collect();
    for (name, p) in names.iter().zip(&c.compartments) {
        compartment(&mut t, name, *p, false);
    }
    // Every component that moves or is hardened, in catalog order.
    let mut placed: BTreeMap<&str, (Option<&str>, Vec<Hardening>)> = BTreeMap::new();
    for (g, group) in space.movable.iter().enumerate() {
        if c.slot[g] != 0 {
            for m in group {
                placed.entry(m).or_default().0 = Some(&names[c.slot[g] - 1]);
            }
        }
    }
    for (group, options) in space.harden_groups.iter().zip(&c.harden) {
        for m in group {
            let mine: Vec<Hardening> = options.iter().copied().filter(|o| applies(*o, m)).collect();
            if !mine.is_empty() {
                placed.entry(m).or_default().1 = mine;
            }
        }
    }
    for info in flexos_config::COMPONENTS {
        if let Some((comp, harden)) = placed.get(info.name) {
            write!(t, "\n[component.{}]\n", info.name).unwrap();
            if let Some(comp) = comp {
                writeln!(t, "compartment = \"{comp}\"").unwrap();
            }
            if !harden.is_empty() {
                let names: Vec<String> = harden.iter().map(|h| format!("\"{}\"", h.name())).collect();
                writeln!(t, "harden = [{}]", names.join(", ")).unwrap();
            }
        }
    }
    t
}
