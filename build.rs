//! Build script. The extension is a `cdylib` that Ruby `dlopen`s: it must not
//! link libruby, whose symbols the running `ruby` provides. Linux resolves them
//! at load time by default; macOS needs to be told so.
fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    let os = std::env::var("CARGO_CFG_TARGET_OS").unwrap_or_default();
    if os == "macos" && std::env::var_os("CARGO_FEATURE_RUBY").is_some() {
        println!("cargo:rustc-cdylib-link-arg=-Wl,-undefined,dynamic_lookup");
    }
}
