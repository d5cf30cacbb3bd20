//! Rebuilds when a migration is added or changed: `embed_migrations!`
//! compiles the `migrations` folder into the binary.
fn main() {
    println!("cargo:rerun-if-changed=migrations");
}
