//! Test fixture: a plain WASI command, not a Rollway plugin.

fn main() {
    println!("hello from a component that is not a plugin");
}
