//! The programs besides tally that some tests run, and the one rule for a
//! missing one. `scripts/setup.sh` installs all of them (`scripts/test.sh` runs
//! it first), so a missing tool fails its test loudly, naming the tool and what
//! installs it. On a machine that cannot install one, `TALLY_SKIP_MISSING_TOOLS=1`
//! makes each such test print one line, `SKIPPED <test>: ...`, and pass without
//! running.

use std::io::Write;
use std::path::{Path, PathBuf};

/// Set to skip, rather than fail, the tests whose tool is missing.
const SKIP_VAR: &str = "TALLY_SKIP_MISSING_TOOLS";

/// `name` from `PATH`, or `None` when the test is to be skipped (see the module
/// doc); fails the test when it is missing and skipping was not asked for.
pub fn tool(name: &str) -> Option<PathBuf> {
    let found = std::env::var_os("PATH").and_then(|path| {
        std::env::split_paths(&path)
            .map(|dir| dir.join(name))
            .find(|p| p.is_file())
    });
    found.or_else(|| missing(&format!("{name} is not on PATH"), installed_by(name)))
}

/// A validator of the deploy files from the venv `scripts/setup.sh` makes
/// (`$TOOLS_DIR/venv`, by default `.tools/venv`), as [`tool`] does.
pub fn venv_tool(name: &str) -> Option<PathBuf> {
    let tools = std::env::var_os("TOOLS_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join(".tools"));
    let bin = tools.join("venv/bin").join(name);
    if bin.is_file() {
        return Some(bin);
    }
    missing(
        &format!("{} is missing", bin.display()),
        "scripts/setup.sh installs the deploy validators into that venv",
    )
}

/// Every tool of `names`, as [`tool`]: `None` (skip) at the first one missing.
pub fn tools(names: &[&str]) -> Option<Vec<PathBuf>> {
    names.iter().map(|n| tool(n)).collect()
}

fn installed_by(name: &str) -> &'static str {
    match name {
        "java" | "javac" => "scripts/setup.sh installs a Java 17 JDK (the test broker runs on it)",
        "python3" => {
            "scripts/setup.sh installs python3 (scripts/kafka.sh picks free ports with it)"
        }
        "openssl" => "scripts/setup.sh installs openssl (the secured broker's certificates)",
        "promtool" | "prometheus" => {
            "scripts/setup.sh installs Debian's `prometheus`, which ships promtool"
        }
        _ => "scripts/setup.sh installs what the tests need",
    }
}

/// The one place a missing tool is reported: a panic naming it, or with
/// [`SKIP_VAR`] set one `SKIPPED` line and `None`.
fn missing<T>(what: &str, hint: &str) -> Option<T> {
    let test = std::thread::current()
        .name()
        .unwrap_or("this test")
        .to_string();
    if std::env::var_os(SKIP_VAR).is_some_and(|v| !v.is_empty() && v != "0") {
        // Written to stderr itself: the harness captures `eprintln!` of a
        // passing test, and a skip must show.
        let _ = writeln!(
            std::io::stderr(),
            "SKIPPED {test}: {what} ({hint}; {SKIP_VAR} is set)"
        );
        return None;
    }
    panic!(
        "{what}: {hint}. Run scripts/setup.sh, or set {SKIP_VAR}=1 to skip the tests that need it"
    );
}
