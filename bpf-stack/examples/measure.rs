//! Prints the functions and deepest chains of a BPF object: `cargo run -p bpf-stack --example measure -- OBJ`.
fn main() {
    let path = std::env::args().nth(1).expect("usage: measure OBJECT");
    let data = std::fs::read(&path).expect("readable object");
    let o = bpf_stack::Object::parse(&data).expect("a BPF object");
    for f in &o.functions {
        println!(
            "{:<60} {:<28} depth {:>4} calls {:?}",
            f.name, f.section, f.depth, f.calls
        );
    }
    for c in o.chains().expect("no recursion") {
        println!("{c}");
    }
}
