//! Static checks of the architecture's rules, run in CI.
//!
//! * [`writable_statics`]: components keep no mutable statics (DESIGN 3):
//!   every symbol in a writable data section of a built image is attributed
//!   to its crate, and none may belong to a component crate.
//! * [`gate_bypasses`]: every call from one component into another goes
//!   through `gate!` (DESIGN 5.1): outside `gate!(...)` (and
//!   `is_remote!(...)`, `is_host_to_remote!(...)` and `announce!(...)`,
//!   which name an entry and call nothing), a
//!   component's source may not name another component's crate.

use object::{Object, ObjectSection, ObjectSymbol, SectionKind};
use proc_macro2::{TokenStream, TokenTree};
use std::path::{Path, PathBuf};

/// The Rust crates that are components, by crate name: every component of
/// the configuration catalog, each application's binary, and the library
/// the network applications share. Not the trusted core (platform, gate,
/// alloc, layout, the mechanisms), and not the `probe` test fixture, which
/// plays a compromised compartment on purpose.
pub fn component_crates() -> Vec<String> {
    let mut crates: Vec<String> = flexos_config::COMPONENTS
        .iter()
        .flat_map(|c| {
            let library = c.package.replace('-', "_");
            // An application's binary is `flexos-NAME` (its crate `flexos_NAME`).
            let binary = c.package.starts_with("flexos-app-").then(|| format!("flexos_{}", c.name));
            [Some(library), binary]
        })
        .flatten()
        .chain([String::from("flexos_netapp")])
        .filter(|c| c != "flexos_probe")
        .collect();
    crates.sort();
    crates.dedup();
    crates
}

/// A mutable static found in a component.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MutableStatic {
    /// The component crate.
    pub krate: String,
    /// The demangled symbol.
    pub symbol: String,
    /// The section it lives in.
    pub section: String,
}

/// The crate a demangled Rust symbol belongs to (`<a::B as c::D>::f` belongs to `a`).
pub fn crate_of(demangled: &str) -> &str {
    let s = demangled.trim_start_matches(['<', '&', '*']).trim_start_matches("mut ").trim_start_matches("const ");
    s.split("::").next().unwrap_or(s)
}

/// The component statics among `(symbol, section)` pairs of writable data.
pub fn component_statics<'a>(symbols: impl IntoIterator<Item = (&'a str, &'a str)>) -> Vec<MutableStatic> {
    let components = component_crates();
    let mut out = Vec::new();
    for (raw, section) in symbols {
        // Only Rust symbols belong to Rust crates (a C static may be called anything).
        let Ok(demangled) = rustc_demangle::try_demangle(raw) else { continue };
        let demangled = format!("{demangled:#}");
        let krate = crate_of(&demangled);
        if components.iter().any(|c| c == krate) {
            out.push(MutableStatic { krate: krate.to_string(), symbol: demangled, section: section.to_string() });
        }
    }
    out
}

/// Whether a section holds data a program can write at run time. Not
/// `flexos_exports`: the linker makes it writable because it holds
/// addresses, but it only lists each component's export table (one
/// reference each, made by `exports!`), which the image reads once at boot
/// before any component runs; no component state can live there.
fn writable(kind: SectionKind, name: &str) -> bool {
    matches!(
        kind,
        SectionKind::Data | SectionKind::UninitializedData | SectionKind::Tls | SectionKind::UninitializedTls
    ) && !name.starts_with(".data.rel.ro")
        && name != "flexos_exports"
}

/// Every symbol in a writable section of the ELF image at `path`, as (symbol, section).
pub fn writable_symbols(path: &Path) -> Result<Vec<(String, String)>, String> {
    let data = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let file = object::File::parse(&*data).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut out = Vec::new();
    for sym in file.symbols() {
        let Some(index) = sym.section_index() else { continue };
        let Ok(section) = file.section_by_index(index) else { continue };
        let name = section.name().unwrap_or("");
        if writable(section.kind(), name)
            && let Ok(s) = sym.name()
        {
            out.push((s.to_string(), name.to_string()));
        }
    }
    if out.is_empty() && file.symbols().next().is_none() {
        return Err(format!("{}: the image has no symbol table (stripped?)", path.display()));
    }
    Ok(out)
}

/// The mutable statics of components in the image at `path`.
pub fn writable_statics(path: &Path) -> Result<Vec<MutableStatic>, String> {
    let symbols = writable_symbols(path)?;
    Ok(component_statics(symbols.iter().map(|(a, b)| (a.as_str(), b.as_str()))))
}

/// How many instances of the cross-compartment gate path
/// (`flexos_gate::cross`) the image at `path` contains. A configuration with
/// one compartment must have none: every gate was folded into a plain call.
pub fn cross_gate_instances(path: &Path) -> Result<usize, String> {
    let data = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let file = object::File::parse(&*data).map_err(|e| format!("{}: {e}", path.display()))?;
    Ok(file
        .symbols()
        .filter_map(|s| s.name().ok().and_then(|n| rustc_demangle::try_demangle(n).ok()))
        .filter(|d| format!("{d:#}").starts_with("flexos_gate::cross"))
        .count())
}

/// A place where a component names another component outside `gate!`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Bypass {
    /// The source file.
    pub file: PathBuf,
    /// 1-based line.
    pub line: usize,
    /// The component crate named.
    pub callee: String,
}

/// The gate bypasses in one source text of component crate `own`.
pub fn bypasses_in(file: &Path, own: &str, source: &str) -> Result<Vec<Bypass>, String> {
    let tokens: TokenStream = source.parse().map_err(|e| format!("{}: {e:?}", file.display()))?;
    let mut out = Vec::new();
    // The network applications' library runs as its caller: calling it is no crossing.
    let allowed = colocated_with(own);
    let callees: Vec<String> =
        component_crates().into_iter().filter(|c| c != "flexos_netapp" && !allowed.contains(c)).collect();
    scan(tokens, own, &callees, file, &mut out);
    Ok(out)
}

/// Whether the tokens from `i` on are `:: CONSTANT` (all capitals: a
/// constant such as a limit, or a component's `FLEXOS_EXPORTS` table):
/// naming it calls no code of the other component.
fn names_constant(tokens: &[TokenTree], i: usize) -> bool {
    matches!((tokens.get(i), tokens.get(i + 1), tokens.get(i + 2)),
        (Some(TokenTree::Punct(a)), Some(TokenTree::Punct(b)), Some(TokenTree::Ident(t)))
            if a.as_char() == ':' && b.as_char() == ':'
                && t.to_string().chars().all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_'))
}

/// The crates a component may call directly: those the configuration
/// makes share its compartment (`libc` with the C application, `netdev`
/// with `net`), in either direction.
fn colocated_with(own: &str) -> Vec<String> {
    let krate =
        |name: &str| flexos_config::COMPONENTS.iter().find(|c| c.name == name).map(|c| c.package.replace('-', "_"));
    let own_name = flexos_config::COMPONENTS
        .iter()
        .find(|c| c.package.replace('-', "_") == own || format!("flexos_{}", c.name) == own);
    flexos_config::COMPONENTS
        .iter()
        .filter_map(|c| {
            let partner = c.colocated_with?.0;
            match own_name {
                Some(me) if me.name == c.name => krate(partner),
                Some(me) if me.name == partner => krate(c.name),
                _ => None,
            }
        })
        .collect()
}

fn scan(tokens: TokenStream, own: &str, components: &[String], file: &Path, out: &mut Vec<Bypass>) {
    let tokens: Vec<TokenTree> = tokens.into_iter().collect();
    let mut i = 0;
    while i < tokens.len() {
        match &tokens[i] {
            TokenTree::Ident(id)
                if (id == "gate" || id == "is_remote" || id == "is_host_to_remote" || id == "announce")
                    && matches!(tokens.get(i + 1), Some(TokenTree::Punct(p)) if p.as_char() == '!')
                    && matches!(tokens.get(i + 2), Some(TokenTree::Group(_))) =>
            {
                i += 3; // the gated call (or the query) itself may name the callee
                continue;
            }
            TokenTree::Punct(p)
                if p.as_char() == '#'
                    && matches!(tokens.get(i + 1), Some(TokenTree::Group(g)) if g.stream().to_string().replace(' ', "") == "cfg(test)") =>
            {
                // Unit tests are not component code: skip up to the end of the item they mark.
                i += 2;
                while i < tokens.len()
                    && !matches!(&tokens[i], TokenTree::Group(g) if g.delimiter() == proc_macro2::Delimiter::Brace)
                {
                    i += 1;
                }
                i += 1;
                continue;
            }
            TokenTree::Ident(id) => {
                let name = id.to_string();
                if name != own && components.contains(&name) && !names_constant(&tokens, i + 1) {
                    out.push(Bypass { file: file.to_owned(), line: id.span().start().line, callee: name });
                }
            }
            TokenTree::Group(g) => scan(g.stream(), own, components, file, out),
            _ => {}
        }
        i += 1;
    }
}

/// The gate bypasses in every crate that is component code: the crates
/// under `root/components` and `root/apps`, and the network applications'
/// library (their `src` folders, without `#[cfg(test)]` items: tests may
/// call components directly). The trusted allocator is not component code,
/// nor are the test fixtures under `fixtures/` (the `probe` component plays
/// a compromised compartment on purpose).
pub fn gate_bypasses(root: &Path) -> Result<Vec<Bypass>, String> {
    let mut out = Vec::new();
    for dir in component_package_dirs(root)? {
        let Some(own) = crate_name(&dir) else { continue };
        if own == "flexos_alloc" {
            continue;
        }
        let mut stack = vec![dir.join("src")];
        while let Some(d) = stack.pop() {
            let Ok(entries) = std::fs::read_dir(&d) else { continue };
            for e in entries.flatten() {
                let p = e.path();
                if p.is_dir() {
                    stack.push(p);
                } else if p.extension().is_some_and(|x| x == "rs") {
                    let src = std::fs::read_to_string(&p).map_err(|e| format!("{}: {e}", p.display()))?;
                    out.extend(bypasses_in(&p, &own, &src)?);
                }
            }
        }
    }
    Ok(out)
}

/// The packages that hold the trusted core's `unsafe` code although they
/// sit among the components: the allocator and the C library (the C ABI).
const TRUSTED_PACKAGES: &[&str] = &["flexos-alloc", "flexos-libc"];

/// The workspace lints that seal the gates: no `unsafe` in component code,
/// and no `#![feature]` (which could turn on `allow_internal_unsafe`).
const SEALING_LINTS: &[&str] = &["unsafe_code", "unstable_features"];

/// What keeps component code from using `unsafe` (docs/isolation.md,
/// "Sealed gates"): the workspace must forbid [`SEALING_LINTS`], and every
/// package under `root/components` and `root/apps`, and the network
/// applications' library, must take the workspace's lints (`[lints]
/// workspace = true`), except the trusted [`TRUSTED_PACKAGES`]. Returns one
/// line per problem, naming the file and the fix.
pub fn unsealed_components(root: &Path) -> Result<Vec<String>, String> {
    let read = |p: &Path| -> Result<toml::Table, String> {
        std::fs::read_to_string(p)
            .map_err(|e| format!("{}: {e}", p.display()))?
            .parse()
            .map_err(|e| format!("{}: {e}", p.display()))
    };
    let mut out = Vec::new();
    let workspace = read(&root.join("Cargo.toml"))?;
    let lints = workspace.get("workspace").and_then(|w| w.get("lints")).and_then(|l| l.get("rust"));
    for lint in SEALING_LINTS {
        if lints.and_then(|l| l.get(*lint)).and_then(|v| v.as_str()) != Some("forbid") {
            out.push(format!(
                "{}: [workspace.lints.rust] must say {lint} = \"forbid\"",
                root.join("Cargo.toml").display()
            ));
        }
    }
    for dir in component_package_dirs(root)? {
        let manifest_path = dir.join("Cargo.toml");
        let manifest = read(&manifest_path)?;
        let package = manifest.get("package").and_then(|p| p.get("name")).and_then(|n| n.as_str()).unwrap_or("?");
        if TRUSTED_PACKAGES.contains(&package) {
            continue;
        }
        let inherits = manifest.get("lints").and_then(|l| l.get("workspace")).and_then(|w| w.as_bool()) == Some(true);
        if !inherits {
            out.push(format!(
                "{}: component package {package} must take the workspace lints: add `[lints]` with `workspace = true`",
                manifest_path.display()
            ));
        }
    }
    Ok(out)
}

/// The folders of the packages that hold component code: every package
/// under `root/components` and `root/apps`, and the network applications'
/// library, sorted.
fn component_package_dirs(root: &Path) -> Result<Vec<PathBuf>, String> {
    let mut dirs = vec![root.join("crates/netapp")];
    for group in ["components", "apps"] {
        let parent = root.join(group);
        let found = std::fs::read_dir(&parent).map_err(|e| format!("{}: {e}", parent.display()))?;
        dirs.extend(found.flatten().map(|e| e.path()).filter(|p| p.join("Cargo.toml").is_file()));
    }
    dirs.sort();
    Ok(dirs)
}

/// The crate name of the package in `dir` (its binary's, for an
/// application: `flexos-kv` is `flexos_kv`), from its `Cargo.toml`.
fn crate_name(dir: &Path) -> Option<String> {
    let manifest: toml::Table = std::fs::read_to_string(dir.join("Cargo.toml")).ok()?.parse().ok()?;
    let bin = manifest.get("bin").and_then(|b| b.as_array()).and_then(|b| b.first()).and_then(|b| b.get("name"));
    let name = bin.or_else(|| manifest.get("package")?.get("name"))?.as_str()?;
    Some(name.replace('-', "_"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn xrstor_is_found_also_inside_other_instructions() {
        let dir = std::env::temp_dir().join(format!("flexos-audit-xrstor-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let c = dir.join("x.c");
        // One real xrstor, and one hidden in a constant (`0f ae 6c` = xrstor [rsp+..]).
        std::fs::write(
            &c,
            "void f(void *p) { __asm__ volatile(\"xrstor (%0)\" :: \"r\"(p), \"a\"(-1), \"d\"(-1)); }\n\
             long g(void) { long v; __asm__ volatile(\"movabs $0x246cae0f, %0\" : \"=r\"(v)); return v; }\n",
        )
        .unwrap();
        let o = dir.join("x.o");
        let status = std::process::Command::new("gcc").args(["-c", "-O1", "-o"]).arg(&o).arg(&c).status().unwrap();
        assert!(status.success());
        let found = xrstor_sites(&o).unwrap();
        let _ = std::fs::remove_dir_all(&dir);
        assert_eq!(found.len(), 2, "{found:x?}");
    }

    #[test]
    fn every_component_takes_the_sealing_lints() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
        assert_eq!(unsealed_components(&root).unwrap(), Vec::<String>::new());
    }

    #[test]
    fn a_component_without_the_lints_is_found() {
        let dir = std::env::temp_dir().join(format!("flexos-audit-lints-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        for d in ["components/ok", "components/bad", "components/alloc", "apps", "crates/netapp"] {
            std::fs::create_dir_all(dir.join(d)).unwrap();
        }
        std::fs::write(dir.join("Cargo.toml"), "[workspace.lints.rust]\nunsafe_code = \"forbid\"\n").unwrap();
        let lints = "[lints]\nworkspace = true\n";
        std::fs::write(dir.join("components/ok/Cargo.toml"), format!("[package]\nname = \"ok\"\n{lints}")).unwrap();
        std::fs::write(dir.join("crates/netapp/Cargo.toml"), format!("[package]\nname = \"n\"\n{lints}")).unwrap();
        std::fs::write(dir.join("components/bad/Cargo.toml"), "[package]\nname = \"bad\"\n").unwrap();
        std::fs::write(dir.join("components/alloc/Cargo.toml"), "[package]\nname = \"flexos-alloc\"\n").unwrap();
        let found = unsealed_components(&dir);
        let _ = std::fs::remove_dir_all(&dir);
        let found = found.unwrap();
        assert_eq!(found.len(), 2, "{found:?}");
        assert!(found[0].contains("unstable_features"), "{found:?}");
        assert!(found[1].contains("package bad") && found[1].contains("workspace = true"), "{found:?}");
    }

    #[test]
    fn attributes_symbols_to_crates() {
        assert_eq!(crate_of("flexos_vfs::STATE"), "flexos_vfs");
        assert_eq!(crate_of("<flexos_ramfs::Fs as core::default::Default>::default::X"), "flexos_ramfs");
        assert_eq!(crate_of("sqlite3Config"), "sqlite3Config");
    }

    #[test]
    fn finds_component_statics_and_allows_the_core() {
        let found = component_statics([
            ("_ZN10flexos_vfs7COUNTER17h0123456789abcdefE", ".bss"),
            ("_ZN11flexos_gate5stats6COUNTS17h0123456789abcdefE", ".bss"),
            ("sqlite3Config", ".data"),
            ("flexos_vfs", ".data"),
        ]);
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].krate, "flexos_vfs");
        assert_eq!(found[0].symbol, "flexos_vfs::COUNTER");
    }

    #[test]
    fn finds_calls_that_bypass_gates() {
        let src = r#"
            fn ok() { gate!(flexos_ramfs::read(1, 2, buf)); }
            fn bad() { flexos_ramfs::write(1, 2, buf); }
            use flexos_sched::spawn;
            // flexos_time::sleep_ns in a comment is fine
            fn fine() { let s = "flexos_time"; }
        "#;
        let found = bypasses_in(Path::new("x.rs"), "flexos_vfs", src).unwrap();
        let lines: Vec<(usize, &str)> = found.iter().map(|b| (b.line, b.callee.as_str())).collect();
        assert_eq!(lines, [(3, "flexos_ramfs"), (4, "flexos_sched")]);
        assert!(bypasses_in(Path::new("x.rs"), "flexos_ramfs", "fn f() { flexos_ramfs::x(); }").unwrap().is_empty());
        // Asking whether an entry is a remote call away calls nothing; naming its type does not pass.
        let query = "const Q: bool = flexos_gate::is_remote!(flexos_vfs::submit);\nconst T: bool = f::<flexos_vfs::submit::Entry>();";
        let found = bypasses_in(Path::new("x.rs"), "flexos_libc", query).unwrap();
        assert_eq!(found.iter().map(|b| b.line).collect::<Vec<_>>(), [2], "{found:?}");
        // Announcing a buffer names the entry only; a call in the hint's argument is a bypass.
        let hint = "fn f() { flexos_gate::announce!(flexos_vfs::submit)(log);
flexos_gate::announce!(flexos_vfs::submit)(flexos_vfs::pwrite(1)); }";
        let found = bypasses_in(Path::new("x.rs"), "flexos_libc", hint).unwrap();
        assert_eq!(found.iter().map(|b| b.line).collect::<Vec<_>>(), [2], "{found:?}");
        let with_tests =
            "#[cfg(test)]\nmod tests { fn t() { flexos_sched::spawn(); } }\nfn after() { flexos_sched::yield_now(); }";
        let found = bypasses_in(Path::new("x.rs"), "flexos_time", with_tests).unwrap();
        assert_eq!(found.len(), 1, "unit tests are skipped, code after them is not: {found:?}");
        assert_eq!(found[0].line, 3);
    }

    #[test]
    fn applications_and_the_network_library_are_audited_too() {
        // Before it went through its own gates, httpd unpacked its files by
        // calling into libc directly (libc then made vfs calls as libc).
        let old_httpd = "fn main() { flexos_libc::install_file(path, data); }";
        let found = bypasses_in(Path::new("main.rs"), "flexos_httpd", old_httpd).unwrap();
        assert_eq!(found.iter().map(|b| b.callee.as_str()).collect::<Vec<_>>(), ["flexos_libc"]);
        // The network library called net without gate! (with the gate function itself).
        let old_netapp =
            "fn f() { call::<C, 1, _, _, _>(app, flexos_net::FLEXOS_COMPONENT, (), flexos_net::socket, 0) }";
        let found = bypasses_in(Path::new("lib.rs"), "flexos_netapp", old_netapp).unwrap();
        assert_eq!(found.len(), 1, "the function named outside gate! (its identity constant is no call): {found:?}");
        let fine = r#"
            fn a() { gate!(as app, in C => flexos_net::socket()); }
            fn b() { flexos_netapp::boot(); let t = [flexos_net::FLEXOS_EXPORTS]; }
            const M: u64 = flexos_ramfs::MAX_FILE_SIZE;
        "#;
        assert_eq!(bypasses_in(Path::new("main.rs"), "flexos_kv", fine).unwrap(), []);
        // Components the configuration keeps in one compartment call each other directly.
        assert_eq!(bypasses_in(Path::new("main.rs"), "flexos_sqlite", old_httpd).unwrap(), []);
        assert_eq!(bypasses_in(Path::new("lib.rs"), "flexos_net", "use flexos_netdev::NetDevice;").unwrap(), []);
        assert_eq!(bypasses_in(Path::new("lib.rs"), "flexos_kv", "use flexos_netdev::NetDevice;").unwrap().len(), 1);
        let crates = component_crates();
        for c in ["flexos_net", "flexos_netdev", "flexos_kv", "flexos_app_kv", "flexos_netapp", "flexos_libc"] {
            assert!(crates.iter().any(|k| k == c), "{c} is audited: {crates:?}");
        }
        assert!(!crates.iter().any(|k| k == "flexos_probe" || k == "flexos_alloc"));
    }
}

/// A `wrpkru` in an image's code that an attacker could reuse unchecked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WrpkruProblem {
    /// The address of the instruction bytes `0F 01 EF`.
    pub address: u64,
    /// What is wrong with it.
    pub problem: String,
}

/// The result of [`wrpkru_sites`].
#[derive(Clone, Debug, Default)]
pub struct WrpkruAudit {
    /// Registered gate sites (from the `flexos_wrpkru` section).
    pub sites: usize,
    /// `wrpkru` byte sequences found in executable sections (at any offset).
    pub found: usize,
    /// Sequences that are no well-formed registered site.
    pub problems: Vec<WrpkruProblem>,
}

/// ERIM-style inspection of the image at `path`: every `wrpkru` byte
/// sequence (`0F 01 EF`, at any offset, so also inside other instructions)
/// in its executable sections must be a gate site registered in the
/// `flexos_wrpkru` section, and every site must have the form
/// `mov eax, V; xor ecx, ecx; xor edx, edx; wrpkru; cmp eax, V; jne <mov>`
/// with the registered value V: jumping to the `wrpkru` with any other EAX
/// loops back and loads V. (A statically linked image contains all its
/// code; a dynamically linked one also maps the C library, whose
/// `pkey_set` is not checked here.)
pub fn wrpkru_sites(path: &Path) -> Result<WrpkruAudit, String> {
    let data = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let file = object::File::parse(&*data).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut registered = Vec::new();
    if let Some(section) = file.section_by_name("flexos_wrpkru") {
        let bytes = section.data().map_err(|e| e.to_string())?;
        for (i, entry) in bytes.chunks_exact(8).enumerate() {
            let offset = i32::from_le_bytes(entry[..4].try_into().expect("4 bytes"));
            let value = u32::from_le_bytes(entry[4..].try_into().expect("4 bytes"));
            let at = section.address() + 8 * i as u64;
            registered.push((at.wrapping_add_signed(offset as i64), value));
        }
    }
    let mut audit = WrpkruAudit { sites: registered.len(), ..WrpkruAudit::default() };
    for section in file.sections().filter(|s| s.kind() == SectionKind::Text) {
        let code = section.data().map_err(|e| e.to_string())?;
        for i in 0..code.len().saturating_sub(2) {
            if code[i..i + 3] != [0x0f, 0x01, 0xef] {
                continue;
            }
            audit.found += 1;
            let address = section.address() + i as u64;
            let problem = match registered.iter().find(|(a, _)| *a == address) {
                None => Some("not a registered gate site".to_string()),
                Some(&(_, value)) => site_problem(code, i, value),
            };
            if let Some(problem) = problem {
                audit.problems.push(WrpkruProblem { address, problem });
            }
        }
    }
    for (address, _) in &registered {
        let in_code = file
            .sections()
            .any(|s| s.kind() == SectionKind::Text && *address >= s.address() && *address < s.address() + s.size());
        if !in_code {
            audit
                .problems
                .push(WrpkruProblem { address: *address, problem: "registered site outside the code".into() });
        }
    }
    Ok(audit)
}

/// Every `xrstor` byte sequence in the executable sections of the image at
/// `path`, at any offset (so also inside other instructions), by address.
///
/// `xrstor` (`0F AE /5` with a memory operand, `xrstor64` with REX.W) loads
/// PKRU from memory when bit 9 of EDX:EAX and of the area's header are set,
/// and nothing after it checks the value the way each gate's `wrpkru` is
/// checked; an attacker who can jump to one chooses both. So an `mpk` image
/// may contain none (`flexos build` refuses one that does). `xrstors` is not
/// searched: it is privileged and faults in user mode.
pub fn xrstor_sites(path: &Path) -> Result<Vec<u64>, String> {
    let data = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let file = object::File::parse(&*data).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut found = Vec::new();
    for section in file.sections().filter(|s| s.kind() == SectionKind::Text) {
        let code = section.data().map_err(|e| e.to_string())?;
        for i in 0..code.len().saturating_sub(2) {
            let modrm = code[i + 2];
            if code[i] == 0x0f && code[i + 1] == 0xae && (modrm >> 3) & 7 == 5 && modrm >> 6 != 3 {
                found.push(section.address() + i as u64);
            }
        }
    }
    Ok(found)
}

/// The C library's functions that hold an `xrstor` and that a statically
/// linked image never runs: the trampolines of lazy binding, which only
/// objects loaded with `dlopen` use.
const LOADER_XRSTOR_FUNCTIONS: &[&str] = &["_dl_runtime_resolve_xsave", "_dl_runtime_resolve_xsavec"];

/// Replaces every `xrstor` inside [`LOADER_XRSTOR_FUNCTIONS`] of the image
/// at `path` with `ud2` and `nop`s, in place (so a jump to one stops the
/// image instead of loading PKRU); returns how many it replaced.
pub fn disable_loader_xrstor(path: &Path) -> Result<usize, String> {
    use object::{Object, ObjectSymbol};
    let mut data = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut patches = Vec::new();
    {
        let file = object::File::parse(&*data).map_err(|e| format!("{}: {e}", path.display()))?;
        let sites = xrstor_sites(path)?;
        for sym in file.symbols().filter(|s| s.name().is_ok_and(|n| LOADER_XRSTOR_FUNCTIONS.contains(&n))) {
            let (start, end) = (sym.address(), sym.address() + sym.size());
            for &at in sites.iter().filter(|&&a| a >= start && a < end) {
                let section = file
                    .sections()
                    .find(|s| at >= s.address() && at < s.address() + s.size())
                    .ok_or_else(|| format!("{}: xrstor at {at:#x} outside every section", path.display()))?;
                let (offset, _) = section.file_range().ok_or("an xrstor in a section without file bytes")?;
                patches.push((offset + (at - section.address())) as usize);
            }
        }
    }
    for &at in &patches {
        // The instruction is `0f ae /5` plus its memory operand (at least
        // one more byte): ud2 (0f 0b) and a nop keep the bytes after it intact.
        data[at..at + 3].copy_from_slice(&[0x0f, 0x0b, 0x90]);
    }
    if !patches.is_empty() {
        std::fs::write(path, &data).map_err(|e| format!("{}: {e}", path.display()))?;
    }
    Ok(patches.len())
}

/// What is wrong with the gate site whose `wrpkru` is at `code[i]`, if anything.
fn site_problem(code: &[u8], i: usize, value: u32) -> Option<String> {
    let v = value.to_le_bytes();
    let before = i.checked_sub(9).map(|s| &code[s..i]);
    let expected_before = [0xb8, v[0], v[1], v[2], v[3], 0x31, 0xc9, 0x31, 0xd2];
    if before != Some(&expected_before[..]) {
        return Some(format!("not preceded by mov eax, {value:#x}; xor ecx, ecx; xor edx, edx"));
    }
    let after = &code[i + 3..code.len().min(i + 3 + 7)];
    // cmp eax, imm32 (3D) or, for values that fit a sign-extended byte, cmp eax, imm8 (83 F8).
    let cmp_len = match after {
        [0x3d, a, b, c, d, ..] if u32::from_le_bytes([*a, *b, *c, *d]) == value => 5,
        [0x83, 0xf8, b, ..] if *b as i8 as i32 as u32 == value => 3,
        _ => return Some(format!("not followed by cmp eax, {value:#x}")),
    };
    // jne back to the mov: rel8 from the end of the jne.
    match after.get(cmp_len..cmp_len + 2) {
        Some([0x75, rel]) => {
            let end = (i + 3 + cmp_len + 2) as i64;
            (end + (*rel as i8) as i64 != i as i64 - 9).then(|| "its jne does not go back to the mov".to_string())
        }
        _ => Some("no jne after the check".into()),
    }
}
