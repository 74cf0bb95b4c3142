//! Packs the configuration's `files` folder (the web site) into the image.

fn main() {
    let layout = flexos_config::layout_for_build("httpd");
    let out = std::path::PathBuf::from(std::env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    flexos_config::write_packed_files(&layout, &out);
}
