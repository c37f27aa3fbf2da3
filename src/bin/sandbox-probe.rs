//! The hostile child of the sandbox tests: run inside the sandbox, it tries every escape in
//! `sandbox::probe` and prints a JSON report (`{"attempts": [...], "controls": [...]}`).
//! `sandbox-probe serve` instead waits on stdin, so a test can inspect it from outside.
//! Arguments are `key=value` targets (ports, paths, pids); none is secret.
#![forbid(unsafe_code)]

fn main() {
    let mut args = std::env::args().skip(1).peekable();
    if args.peek().map(String::as_str) == Some("serve") {
        std::process::exit(sandbox::probe::serve());
    }
    if args.peek().map(String::as_str) == Some("--version") {
        println!("sandbox-probe");
        return;
    }
    let targets = sandbox::probe::parse_targets(args);
    let report = sandbox::probe::run(&targets);
    match serde_json::to_string(&report) {
        Ok(json) => println!("{json}"),
        Err(error) => {
            eprintln!("sandbox-probe: {error}");
            std::process::exit(2);
        }
    }
}
