//! A WASI command, not a Mesh workload: it lacks the `run` and `metadata` exports.

fn main() {
    println!("hello from a command component");
}
