//! Rebuilds the controller when a migration is added or changed: `sqlx::migrate!` embeds the
//! migration folders but does not tell Cargo to watch them.

fn main() {
    println!("cargo:rerun-if-changed=../migrations");
}
