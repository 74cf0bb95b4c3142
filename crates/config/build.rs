//! The configuration catalog, from one manifest per component: every
//! `flexos.toml` under `components/`, `apps/` and `fixtures/` of the
//! workspace. A `[component]` table makes the package a component that
//! configurations may place and harden; an `[image]` table makes it the
//! image of an application. Adding a component touches its own folder only.

use serde::Deserialize;
use std::fmt::Write;
use std::path::{Path, PathBuf};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Manifest {
    component: Option<Component>,
    image: Option<Image>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Component {
    name: String,
    language: String,
    order: u32,
    #[serde(default)]
    apps: Vec<String>,
    colocated_with: Option<Colocation>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Colocation {
    component: String,
    why: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Image {
    app: String,
    binary: String,
    network: bool,
    order: u32,
}

#[derive(Deserialize)]
struct CargoManifest {
    package: CargoPackage,
}

#[derive(Deserialize)]
struct CargoPackage {
    name: String,
}

fn fail(path: &Path, why: impl std::fmt::Display) -> ! {
    panic!("{}: {why}", path.display())
}

fn main() {
    let root = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").unwrap()).join("../..");
    let mut components = Vec::new();
    let mut images = Vec::new();
    for group in ["components", "apps", "fixtures"] {
        let dir = root.join(group);
        println!("cargo:rerun-if-changed={}", dir.display());
        let mut folders: Vec<PathBuf> = std::fs::read_dir(&dir).unwrap().flatten().map(|e| e.path()).collect();
        folders.sort();
        for folder in folders {
            let path = folder.join("flexos.toml");
            println!("cargo:rerun-if-changed={}", path.display());
            let Ok(text) = std::fs::read_to_string(&path) else { continue };
            let manifest: Manifest = toml::from_str(&text).unwrap_or_else(|e| fail(&path, e));
            let cargo_path = folder.join("Cargo.toml");
            let cargo: CargoManifest =
                toml::from_str(&std::fs::read_to_string(&cargo_path).unwrap_or_else(|e| fail(&cargo_path, e)))
                    .unwrap_or_else(|e| fail(&cargo_path, e));
            if let Some(c) = manifest.component {
                // A Rust component may contain `unsafe` unless its crate root
                // forbids it (C code always may): memory-error hardening
                // (`kasan`) applies only where memory errors can happen.
                let lib = folder.join("src/lib.rs");
                let root = if lib.exists() { lib } else { folder.join("src/main.rs") };
                println!("cargo:rerun-if-changed={}", root.display());
                let unsafe_code = c.language == "c"
                    || !std::fs::read_to_string(&root).is_ok_and(|t| t.contains("#![forbid(unsafe_code)]"));
                components.push((path.clone(), cargo.package.name.clone(), c, unsafe_code));
            }
            if let Some(i) = manifest.image {
                images.push((path.clone(), cargo.package.name.clone(), i));
            }
        }
    }
    components.sort_by_key(|(_, _, c, _)| c.order);
    images.sort_by_key(|(_, _, i)| i.order);
    let apps: Vec<&str> = images.iter().map(|(_, _, i)| i.app.as_str()).collect();
    for pair in components.windows(2) {
        if pair[0].2.order == pair[1].2.order || pair[0].2.name == pair[1].2.name {
            fail(&pair[1].0, format!("component order {} or name {:?} used twice", pair[1].2.order, pair[1].2.name));
        }
    }
    for (path, _, c, _) in &components {
        if c.language != "rust" && c.language != "c" {
            fail(path, format!("language {:?}: use \"rust\" or \"c\"", c.language));
        }
        if let Some(app) = c.apps.iter().find(|a| !apps.contains(&a.as_str())) {
            fail(path, format!("app {app:?} has no image (known: {})", apps.join(", ")));
        }
        if let Some(with) = &c.colocated_with
            && !components.iter().any(|(_, _, o, _)| o.name == with.component)
        {
            fail(path, format!("colocated_with names no component {:?}", with.component));
        }
    }
    let mut out = String::new();
    writeln!(out, "/// Every component known to the build, in catalog order (from the components' `flexos.toml`).")
        .unwrap();
    writeln!(out, "pub const COMPONENTS: &[ComponentInfo] = &[").unwrap();
    for (_, package, c, unsafe_code) in &components {
        let language = if c.language == "c" { "Language::C" } else { "Language::Rust" };
        let colocated =
            c.colocated_with.as_ref().map_or("None".to_string(), |w| format!("Some(({:?}, {:?}))", w.component, w.why));
        writeln!(
            out,
            "    ComponentInfo {{ name: {:?}, package: {package:?}, language: {language}, apps: &{:?}, colocated_with: {colocated}, unsafe_code: {unsafe_code} }},",
            c.name, c.apps
        )
        .unwrap();
    }
    writeln!(out, "];").unwrap();
    writeln!(out, "/// The applications an image can be built for.").unwrap();
    writeln!(out, "pub const APPS: &[&str] = &{apps:?};").unwrap();
    let network: Vec<&str> = images.iter().filter(|(_, _, i)| i.network).map(|(_, _, i)| i.app.as_str()).collect();
    writeln!(out, "/// The applications that use the network stack.").unwrap();
    writeln!(out, "pub const NETWORK_APPS: &[&str] = &{network:?};").unwrap();
    writeln!(out, "/// Each application's image package and binary.").unwrap();
    writeln!(out, "pub const IMAGES: &[ImageInfo] = &[").unwrap();
    for (_, package, i) in &images {
        writeln!(out, "    ImageInfo {{ app: {:?}, package: {package:?}, binary: {:?} }},", i.app, i.binary).unwrap();
    }
    writeln!(out, "];").unwrap();
    std::fs::write(PathBuf::from(std::env::var("OUT_DIR").unwrap()).join("catalog.rs"), out).unwrap();
}
