//! The configuration file format and its validation.

use crate::catalog::{APPS, COMPONENTS, ComponentInfo, Language, component_info};
use crate::error::{ConfigError, Locator, did_you_mean};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use toml::Spanned;

/// The most `mpk` compartments one image may have: 16 keys, less key 0
/// (the trusted core's threads and C heap), the key of the trusted core's
/// statics and the key of the shared memory.
pub const MAX_MPK_COMPARTMENTS: usize = 13;

/// How a compartment is protected from the others.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Mechanism {
    /// No isolation: gates are function calls (the baseline).
    Fcall,
    /// Intel protection keys in one address space.
    Mpk,
    /// A separate process with a seccomp filter.
    Proc,
    /// A KVM virtual machine at guest CPL3.
    Kvm,
}

impl Mechanism {
    /// Every mechanism with its configuration name.
    pub const ALL: [(Mechanism, &'static str); 4] =
        [(Mechanism::Fcall, "fcall"), (Mechanism::Mpk, "mpk"), (Mechanism::Proc, "proc"), (Mechanism::Kvm, "kvm")];

    /// The configuration name.
    pub fn name(self) -> &'static str {
        Self::ALL.iter().find(|(m, _)| *m == self).map(|(_, n)| *n).unwrap_or("?")
    }

    /// Whether compartments with this mechanism run in a domain of their own
    /// (a process or a VM) and are reached by remote calls.
    pub fn is_remote(self) -> bool {
        matches!(self, Mechanism::Proc | Mechanism::Kvm)
    }

    /// The data-sharing strategies this mechanism can provide; the first is the default.
    pub fn sharing(self) -> &'static [Sharing] {
        match self {
            Mechanism::Fcall => &[Sharing::SharedStack],
            Mechanism::Mpk => &[Sharing::Dss, Sharing::SharedStack, Sharing::Heap],
            Mechanism::Proc | Mechanism::Kvm => &[Sharing::Heap],
        }
    }
}

/// How data that would live on a stack is shared across a gate (DESIGN 5.3).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Sharing {
    /// Thread stacks live in shared memory.
    SharedStack,
    /// Data shadow stacks at a fixed offset from each stack.
    Dss,
    /// Shared locals are allocated from the shared heap.
    Heap,
}

impl Sharing {
    /// Every strategy with its configuration name.
    pub const ALL: [(Sharing, &'static str); 3] =
        [(Sharing::SharedStack, "shared-stack"), (Sharing::Dss, "dss"), (Sharing::Heap, "heap")];

    /// The configuration name.
    pub fn name(self) -> &'static str {
        Self::ALL.iter().find(|(s, _)| *s == self).map(|(_, n)| *n).unwrap_or("?")
    }
}

/// A software hardening option for one component (DESIGN section 6;
/// docs/hardening.md says what each does, what it catches and costs).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Hardening {
    /// Rust: arithmetic overflow panics (`overflow-checks` in the cargo profile).
    OverflowChecks,
    /// Rust: `debug_assert!`s stay on (`debug-assertions` in the cargo
    /// profile). C: `assert()`s stay on (no `NDEBUG`; SQLite's own need `SQLITE_DEBUG`).
    DebugAssertions,
    /// Stack canaries: Rust `-Zstack-protector=strong`, C `-fstack-protector-all`.
    StackProtector,
    /// C: undefined-behaviour sanitizer, trapping (no runtime needed).
    Ubsan,
    /// Address sanitizer with the image's own runtime (KASan style): Rust
    /// `-Zsanitizer=address`, C `-fsanitize=kernel-address`; heaps get
    /// redzones and a quarantine. Only for code that can contain `unsafe`.
    Kasan,
    /// Forward-edge control-flow integrity: Rust `-Zsanitizer=kcfi`, C
    /// `-fsanitize=kcfi` (clang): an indirect call checks the type of its target.
    Cfi,
}

impl Hardening {
    /// Every option: configuration name and the languages it applies to.
    pub const ALL: [(Hardening, &'static str, &'static [Language]); 6] = [
        (Hardening::OverflowChecks, "overflow-checks", &[Language::Rust]),
        (Hardening::DebugAssertions, "debug-assertions", &[Language::Rust, Language::C]),
        (Hardening::StackProtector, "stack-protector", &[Language::Rust, Language::C]),
        (Hardening::Ubsan, "ubsan", &[Language::C]),
        (Hardening::Kasan, "kasan", &[Language::Rust, Language::C]),
        (Hardening::Cfi, "cfi", &[Language::Rust, Language::C]),
    ];

    /// The configuration name.
    pub fn name(self) -> &'static str {
        Self::ALL.iter().find(|(h, ..)| *h == self).map(|(_, n, _)| *n).unwrap_or("?")
    }

    /// The languages whose components can get this option.
    pub fn languages(self) -> &'static [Language] {
        Self::ALL.iter().find(|(h, ..)| *h == self).map(|(.., l)| *l).unwrap_or(&[])
    }

    /// Why this option cannot harden `component`, if it cannot (wherever it is placed).
    pub fn refusal(self, component: &ComponentInfo) -> Option<String> {
        if !self.languages().contains(&component.language) {
            return Some(format!(
                "hardening {:?} does not apply to {:?} ({:?} code)",
                self.name(),
                component.name,
                component.language
            ));
        }
        if self == Hardening::Kasan && !component.unsafe_code {
            return Some(format!(
                "hardening \"kasan\" finds nothing in {:?}: its crate forbids unsafe code, so it has no memory errors to catch",
                component.name
            ));
        }
        None
    }

    /// Whether this option can harden `component` (in some placement).
    pub fn applies_to(self, component: &ComponentInfo) -> bool {
        self.refusal(component).is_none()
    }

    /// Why this option cannot harden a component in a compartment protected
    /// by `mechanism`, if it cannot.
    pub fn refusal_in(self, mechanism: Mechanism) -> Option<&'static str> {
        match (self, mechanism) {
            (Hardening::Kasan, Mechanism::Kvm) => Some(
                "a kvm compartment's VM maps only the image and its own memory, not kasan's shadow memory (1/8 of the address space)",
            ),
            _ => None,
        }
    }
}

/// One compartment of a validated configuration.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Compartment {
    /// Its unique name.
    pub name: String,
    /// What protects it.
    pub mechanism: Mechanism,
    /// How it shares stack data.
    pub sharing: Sharing,
}

/// Where one component goes and how it is hardened.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Placement {
    /// The component's configuration name.
    pub component: &'static str,
    /// Index into [`Layout::compartments`].
    pub compartment: usize,
    /// Hardening options, sorted, without duplicates.
    pub harden: Vec<Hardening>,
}

/// A validated configuration: every component of the image placed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Layout {
    /// The file it came from.
    pub source: PathBuf,
    /// The application.
    pub app: String,
    /// The compartments; index 0 is the default one.
    pub compartments: Vec<Compartment>,
    /// One entry per component of the image, in catalog order.
    pub placements: Vec<Placement>,
    /// A folder whose files are packed into the image's file system at build
    /// time (absolute, resolved against the configuration file's folder).
    pub files: Option<PathBuf>,
}

impl Layout {
    /// The placement of a component, if it is part of this image.
    pub fn placement(&self, component: &str) -> Option<&Placement> {
        self.placements.iter().find(|p| p.component == component)
    }

    /// The compartment index of a component, if it is part of this image.
    pub fn compartment_of(&self, component: &str) -> Option<usize> {
        self.placement(component).map(|p| p.compartment)
    }
}

impl fmt::Display for Layout {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "app: {}", self.app)?;
        for (i, c) in self.compartments.iter().enumerate() {
            let members: Vec<String> = self
                .placements
                .iter()
                .filter(|p| p.compartment == i)
                .map(|p| {
                    if p.harden.is_empty() {
                        p.component.to_string()
                    } else {
                        let h: Vec<&str> = p.harden.iter().map(|h| h.name()).collect();
                        format!("{}[{}]", p.component, h.join(","))
                    }
                })
                .collect();
            writeln!(
                f,
                "compartment {i} {:?} ({}, {}): {}",
                c.name,
                c.mechanism.name(),
                c.sharing.name(),
                members.join(" ")
            )?;
        }
        Ok(())
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    app: Spanned<String>,
    files: Option<Spanned<String>>,
    #[serde(default)]
    compartment: Vec<Spanned<RawCompartment>>,
    #[serde(default)]
    component: BTreeMap<Spanned<String>, Spanned<RawComponent>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCompartment {
    name: Spanned<String>,
    mechanism: Spanned<String>,
    default: Option<Spanned<bool>>,
    sharing: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawComponent {
    compartment: Option<Spanned<String>>,
    #[serde(default)]
    harden: Vec<Spanned<String>>,
}

fn names<T>(list: &[(T, &'static str)]) -> String {
    list.iter().map(|(_, n)| *n).collect::<Vec<_>>().join(", ")
}

/// The most errors reported for one file; the rest are counted.
pub const MAX_ERRORS: usize = 50;

/// `errors` in the order of the file, at most [`MAX_ERRORS`] of them and a count of the rest.
fn in_order(path: &Path, mut errors: Vec<ConfigError>) -> Vec<ConfigError> {
    errors.sort_by_key(|e| (e.line, e.column));
    if errors.len() > MAX_ERRORS {
        let more = errors.len() - MAX_ERRORS;
        errors.truncate(MAX_ERRORS);
        errors.push(ConfigError::whole_file(
            path,
            format!("{more} more errors are not shown"),
            "fix the errors above first",
        ));
    }
    errors
}

/// "did you mean X? " when `word` looks like a misspelling of one of `candidates`.
fn suggestion<'c>(word: &str, candidates: impl IntoIterator<Item = &'c str>) -> String {
    did_you_mean(word, candidates).map_or(String::new(), |m| format!("did you mean {m:?}? "))
}

pub(crate) fn parse(path: &Path, text: &str) -> Result<Layout, Vec<ConfigError>> {
    let locator = Locator::new(text);
    let shape = crate::schema::check(path, text, &locator);
    if !shape.is_empty() {
        return Err(in_order(path, shape));
    }
    let raw: RawConfig = toml::from_str(text).map_err(|e| {
        let at = e.span().map_or(0, |s| s.start);
        vec![locator.error(
            path,
            at,
            e.message().trim().to_string(),
            "write the file in the format of docs/configuration.md (keys: app, files, [[compartment]] name/mechanism/sharing/default, [component.NAME] compartment/harden)",
        )]
    })?;
    let mut errors = Vec::new();
    let err = |errors: &mut Vec<ConfigError>, at: usize, msg: String, fix: String| {
        errors.push(locator.error(path, at, msg, fix));
    };

    let app = raw.app.get_ref().clone();
    if !APPS.contains(&app.as_str()) {
        err(
            &mut errors,
            raw.app.span().start,
            format!("unknown application {app:?}"),
            format!("{}set app to one of: {}", suggestion(&app, APPS.iter().copied()), APPS.join(", ")),
        );
    }

    let files = raw.files.as_ref().and_then(|f| {
        let dir = path.parent().unwrap_or(Path::new(".")).join(f.get_ref());
        let dir = std::fs::canonicalize(&dir).unwrap_or(dir);
        if dir.is_dir() {
            Some(dir)
        } else {
            err(
                &mut errors,
                f.span().start,
                format!("files folder {:?} does not exist", dir.display().to_string()),
                "name a folder, relative to this configuration file".into(),
            );
            None
        }
    });

    // Compartments.
    let mut compartments: Vec<(Compartment, bool)> = Vec::new();
    let mut default_seen: Option<String> = None;
    if raw.compartment.is_empty() {
        err(
            &mut errors,
            0,
            "no compartment is defined".into(),
            "add a [[compartment]] with name = \"main\", mechanism = \"fcall\", default = true".into(),
        );
    }
    for c in &raw.compartment {
        let c = c.get_ref();
        let name = c.name.get_ref().clone();
        if name.is_empty() || !name.chars().all(|ch| ch.is_ascii_alphanumeric() || ch == '-' || ch == '_') {
            err(
                &mut errors,
                c.name.span().start,
                format!("invalid compartment name {name:?}"),
                "use letters, digits, '-' and '_' only".into(),
            );
        }
        if compartments.iter().any(|(k, _)| k.name == name) {
            err(
                &mut errors,
                c.name.span().start,
                format!("compartment {name:?} is defined twice"),
                "give every [[compartment]] a different name".into(),
            );
        }
        let mechanism = match Mechanism::ALL.iter().find(|(_, n)| *n == c.mechanism.get_ref()) {
            Some((m, _)) => *m,
            None => {
                err(
                    &mut errors,
                    c.mechanism.span().start,
                    format!("unknown mechanism {:?}", c.mechanism.get_ref()),
                    format!(
                        "{}use one of: {}",
                        suggestion(c.mechanism.get_ref(), Mechanism::ALL.iter().map(|(_, n)| *n)),
                        names(&Mechanism::ALL)
                    ),
                );
                Mechanism::Fcall
            }
        };
        let sharing = match &c.sharing {
            None => mechanism.sharing()[0],
            Some(s) => match Sharing::ALL.iter().find(|(_, n)| n == s.get_ref()) {
                None => {
                    err(
                        &mut errors,
                        s.span().start,
                        format!("unknown sharing strategy {:?}", s.get_ref()),
                        format!(
                            "{}use one of: {}",
                            suggestion(s.get_ref(), Sharing::ALL.iter().map(|(_, n)| *n)),
                            names(&Sharing::ALL)
                        ),
                    );
                    mechanism.sharing()[0]
                }
                Some((sh, _)) if !mechanism.sharing().contains(sh) => {
                    let ok: Vec<&str> = mechanism.sharing().iter().map(|s| s.name()).collect();
                    err(
                        &mut errors,
                        s.span().start,
                        format!("mechanism {:?} cannot provide sharing {:?}", mechanism.name(), sh.name()),
                        format!("use sharing = {} (or leave it out for the default)", ok.join(" or ")),
                    );
                    mechanism.sharing()[0]
                }
                Some((sh, _)) => *sh,
            },
        };
        let is_default = c.default.as_ref().is_some_and(|d| *d.get_ref());
        if (is_default || raw.compartment.len() == 1) && mechanism.is_remote() {
            err(
                &mut errors,
                c.mechanism.span().start,
                format!("the default compartment {name:?} cannot use mechanism {:?}", mechanism.name()),
                "the default compartment runs the application in the image's own process: give it mechanism = \"fcall\", and put the components to isolate in another compartment".into(),
            );
        }
        if is_default {
            if let Some(first) = &default_seen {
                let at = c.default.as_ref().map_or(0, |d| d.span().start);
                err(
                    &mut errors,
                    at,
                    format!("compartment {name:?} is a second default (the first is {first:?})"),
                    "mark exactly one compartment with default = true".into(),
                );
            } else {
                default_seen = Some(name.clone());
            }
        }
        compartments.push((Compartment { name, mechanism, sharing }, is_default));
    }
    // Protection keys: 16 in all; key 0 is the trusted core's, one is the shared memory's.
    if let Some(extra) =
        raw.compartment.iter().filter(|c| c.get_ref().mechanism.get_ref() == "mpk").nth(MAX_MPK_COMPARTMENTS)
    {
        err(
            &mut errors,
            extra.get_ref().mechanism.span().start,
            format!("more than {MAX_MPK_COMPARTMENTS} compartments use mechanism \"mpk\""),
            "the CPU has 16 protection keys (two for the trusted core, one for shared memory): merge compartments or use another mechanism for some".into(),
        );
    }
    if default_seen.is_none() && compartments.len() > 1 {
        err(
            &mut errors,
            raw.compartment[0].span().start,
            "no compartment is marked as the default".into(),
            "add default = true to the compartment that receives every component not named under [component]".into(),
        );
    }
    // The default compartment becomes index 0, the others keep their order.
    let default_index = compartments.iter().position(|(_, d)| *d).unwrap_or(0);
    if !compartments.is_empty() {
        let d = compartments.remove(default_index);
        compartments.insert(0, d);
    }
    let compartments: Vec<Compartment> = compartments.into_iter().map(|(c, _)| c).collect();
    let compartment_names = compartments.iter().map(|c| c.name.as_str()).collect::<Vec<_>>().join(", ");

    // Components.
    let mut placements: Vec<Placement> = COMPONENTS
        .iter()
        .filter(|c| c.in_app(&app))
        .map(|c| Placement { component: c.name, compartment: 0, harden: Vec::new() })
        .collect();
    for (key, entry) in &raw.component {
        let name = key.get_ref();
        let info = match component_info(name) {
            Some(info) if info.in_app(&app) => info,
            Some(_) => {
                err(
                    &mut errors,
                    key.span().start,
                    format!("component {name:?} is not part of an image of app {app:?}"),
                    "remove this [component] table or change app".into(),
                );
                continue;
            }
            None => {
                let known: Vec<&str> = COMPONENTS.iter().filter(|c| c.in_app(&app)).map(|c| c.name).collect();
                err(
                    &mut errors,
                    key.span().start,
                    format!("unknown component {name:?}"),
                    format!("{}name one of: {}", suggestion(name, known.iter().copied()), known.join(", ")),
                );
                continue;
            }
        };
        let Some(placement) = placements.iter_mut().find(|p| p.component == info.name) else { continue };
        let entry = entry.get_ref();
        if let Some(c) = &entry.compartment {
            match compartments.iter().position(|k| &k.name == c.get_ref()) {
                Some(i) => placement.compartment = i,
                None => err(
                    &mut errors,
                    c.span().start,
                    format!("component {name:?} names unknown compartment {:?}", c.get_ref()),
                    format!(
                        "{}use one of the [[compartment]] names: {compartment_names}",
                        suggestion(c.get_ref(), compartments.iter().map(|k| k.name.as_str()))
                    ),
                ),
            }
        }
        for h in &entry.harden {
            let valid: Vec<&str> =
                Hardening::ALL.iter().filter(|(o, ..)| o.applies_to(info)).map(|(_, n, _)| *n).collect();
            match Hardening::ALL.iter().find(|(_, n, _)| n == h.get_ref()) {
                None => err(
                    &mut errors,
                    h.span().start,
                    format!("unknown hardening option {:?}", h.get_ref()),
                    format!("{}for {name:?} use: {}", suggestion(h.get_ref(), valid.iter().copied()), valid.join(", ")),
                ),
                Some((opt, ..)) => match opt.refusal(info) {
                    Some(why) => {
                        err(&mut errors, h.span().start, why, format!("for {name:?} use: {}", valid.join(", ")))
                    }
                    None => {
                        if !placement.harden.contains(opt) {
                            placement.harden.push(*opt);
                        }
                        let compartment = &compartments[placement.compartment];
                        // rustc builds no sanitizer into a statically linked
                        // program, and an image with mpk compartments is one.
                        if matches!(opt, Hardening::Kasan | Hardening::Cfi)
                            && info.language == Language::Rust
                            && compartments.iter().any(|c| c.mechanism == Mechanism::Mpk)
                        {
                            err(
                                &mut errors,
                                h.span().start,
                                format!(
                                    "hardening {:?} of Rust component {name:?} cannot be built into an image with mpk compartments: such an image is linked statically (docs/mpk.md), and rustc builds no sanitizer into a statically linked program",
                                    opt.name()
                                ),
                                format!(
                                    "drop {:?} from {name:?}'s harden list, or use no mpk compartment (C components can keep it)",
                                    opt.name()
                                ),
                            );
                        }
                        if let Some(why) = opt.refusal_in(compartment.mechanism) {
                            err(
                                &mut errors,
                                h.span().start,
                                format!(
                                    "hardening {:?} cannot harden {name:?} in compartment {:?} (mechanism {:?}): {why}",
                                    opt.name(),
                                    compartment.name,
                                    compartment.mechanism.name()
                                ),
                                format!(
                                    "place {name:?} in a compartment of another mechanism, or drop {:?} from its harden list",
                                    opt.name()
                                ),
                            );
                        }
                    }
                },
            }
        }
        placement.harden.sort();
    }
    for info in COMPONENTS.iter().filter(|c| c.in_app(&app)) {
        if let Some((other, why)) = info.colocated_with {
            let (a, b) = (
                placements.iter().find(|p| p.component == info.name),
                placements.iter().find(|p| p.component == other),
            );
            if let (Some(a), Some(b)) = (a, b)
                && a.compartment != b.compartment
            {
                let at = raw
                    .component
                    .iter()
                    .find(|(k, _)| k.get_ref() == info.name || k.get_ref() == other)
                    .map_or(0, |(k, _)| k.span().start);
                err(
                    &mut errors,
                    at,
                    format!("{:?} and {other:?} must be in the same compartment: {why}", info.name),
                    format!("place {:?} and {other:?} in one compartment", info.name),
                );
            }
        }
    }
    // A C application's `main` (SQLite's) enters its component's
    // compartment in the image's own process (`flexos_gate::fcall` around
    // `run_c_main`): a process or VM of its own would never run it (the C
    // library, which must share its compartment, follows; see above). A
    // remote default compartment is refused above already.
    if let Some(p) = placements.iter().find(|p| p.component == app)
        && component_info(&app).is_some_and(|c| c.language == Language::C)
        && p.compartment != 0
        && compartments[p.compartment].mechanism.is_remote()
    {
        let c = &compartments[p.compartment];
        let at = raw
            .component
            .iter()
            .find(|(k, _)| k.get_ref() == &app)
            .and_then(|(_, v)| v.get_ref().compartment.as_ref().map(|c| c.span().start))
            .unwrap_or(0);
        err(
            &mut errors,
            at,
            format!(
                "the application {app:?} cannot be in {} compartment {:?}: its main runs in the image's own process",
                c.mechanism.name(),
                c.name
            ),
            format!("place {app:?} in an fcall or mpk compartment"),
        );
    }
    // The network device needs the host's tap device or sockets, which a VM cannot reach.
    if let Some(p) = placements.iter().find(|p| p.component == "netdev")
        && compartments[p.compartment].mechanism == Mechanism::Kvm
    {
        // Where netdev is put in the VM: its own `compartment = ...`, else (it follows
        // the default compartment, which cannot be kvm) the compartment's mechanism.
        let netdev = raw.component.iter().find(|(k, _)| k.get_ref() == "netdev");
        let vm = &compartments[p.compartment].name;
        let at =
            netdev.and_then(|(_, v)| v.get_ref().compartment.as_ref().map(|c| c.span().start)).unwrap_or_else(|| {
                raw.compartment
                    .iter()
                    .find(|c| c.get_ref().name.get_ref() == vm)
                    .map_or(0, |c| c.get_ref().mechanism.span().start)
            });
        err(
            &mut errors,
            at,
            format!(
                "\"netdev\" cannot run in kvm compartment {:?}: a VM has no way to the host's network device",
                compartments[p.compartment].name
            ),
            "place net and netdev in an fcall or proc compartment".into(),
        );
    }
    if errors.is_empty() {
        Ok(Layout { source: path.to_owned(), app, compartments, placements, files })
    } else {
        Err(in_order(path, errors))
    }
}
