//! Durations on the command line: every duration flag and its environment
//! variable take humantime values (`100ms`, `30s`, `5m`, `1h 30m`), and every
//! such variable is named after its flag with no unit (`TALLY_COMMIT_INTERVAL`).
//! The spellings from before still work, so scripts, manifests and docs written
//! for them keep running, and each draws one deprecation warning per flag: a
//! bare number (read in the flag's old unit), a flag's old name with a unit
//! (`--progress-secs`), a variable's old name (`TALLY_COMMIT_INTERVAL_MS`).
//!
//! The command line is parsed before logging is set up, so the warnings are
//! collected here and logged by `main` once it is.

use std::ffi::OsString;
use std::time::Duration;

use clap::parser::ValueSource;
use clap::{ArgMatches, Command};

/// The unit a bare number is read in: the flag's before it took humantime values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum BareUnit {
    Millis,
    Secs,
}

impl BareUnit {
    fn of(self, n: u64) -> Duration {
        match self {
            BareUnit::Millis => Duration::from_millis(n),
            BareUnit::Secs => Duration::from_secs(n),
        }
    }

    fn suffix(self) -> &'static str {
        match self {
            BareUnit::Millis => "ms",
            BareUnit::Secs => "s",
        }
    }

    fn name(self) -> &'static str {
        match self {
            BareUnit::Millis => "milliseconds",
            BareUnit::Secs => "seconds",
        }
    }
}

/// A whole number with nothing else: the deprecated spelling.
fn bare(s: &str) -> Option<u64> {
    let s = s.trim();
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

/// A humantime value, or a bare number in `unit`; zero included.
pub(crate) fn parse(s: &str, unit: BareUnit) -> Result<Duration, String> {
    if let Some(n) = bare(s) {
        return Ok(unit.of(n));
    }
    humantime::parse_duration(s.trim())
        .map_err(|e| format!("{s:?} is not a duration ({e}); write e.g. 250ms, 30s or 5m"))
}

fn positive(s: &str, unit: BareUnit) -> Result<Duration, String> {
    match parse(s, unit)? {
        Duration::ZERO => Err("must be longer than 0".into()),
        d => Ok(d),
    }
}

/// Value parser of a duration flag that took milliseconds: more than zero.
pub(crate) fn millis(s: &str) -> Result<Duration, String> {
    positive(s, BareUnit::Millis)
}

/// Value parser of a duration flag that took seconds: more than zero.
pub(crate) fn secs(s: &str) -> Result<Duration, String> {
    positive(s, BareUnit::Secs)
}

/// Value parser of a duration that took seconds and is kept in whole seconds
/// (it is part of the processing configuration's fingerprint); zero allowed.
pub(crate) fn whole_secs(s: &str) -> Result<Duration, String> {
    let d = parse(s, BareUnit::Secs)?;
    if d.subsec_nanos() != 0 {
        return Err(format!("{s:?} is not a whole number of seconds"));
    }
    Ok(d)
}

/// A duration flag and the spellings it had before.
struct Flag {
    /// clap's id of the argument (its field's name).
    id: &'static str,
    long: &'static str,
    env: Option<&'static str>,
    unit: BareUnit,
    /// The flag's old name (an alias now).
    old_long: Option<&'static str>,
    /// The environment variable's old name.
    old_env: Option<&'static str>,
}

const fn flag(id: &'static str, long: &'static str, unit: BareUnit) -> Flag {
    Flag {
        id,
        long,
        env: None,
        unit,
        old_long: None,
        old_env: None,
    }
}

/// Every duration flag of every subcommand.
const FLAGS: &[Flag] = &[
    Flag {
        env: Some("TALLY_CONNECT_TIMEOUT"),
        old_env: Some("TALLY_CONNECT_TIMEOUT_SECS"),
        ..flag("connect_timeout", "--connect-timeout", BareUnit::Secs)
    },
    Flag {
        env: Some("TALLY_COMMIT_INTERVAL"),
        old_env: Some("TALLY_COMMIT_INTERVAL_MS"),
        ..flag("commit_interval", "--commit-interval", BareUnit::Millis)
    },
    Flag {
        env: Some("TALLY_SNAPSHOT_INTERVAL"),
        old_env: Some("TALLY_SNAPSHOT_INTERVAL_MS"),
        ..flag("snapshot_interval", "--snapshot-interval", BareUnit::Millis)
    },
    Flag {
        env: Some("TALLY_SNAPSHOT_QUIET"),
        old_env: Some("TALLY_SNAPSHOT_QUIET_MS"),
        ..flag("snapshot_quiet", "--snapshot-quiet", BareUnit::Millis)
    },
    Flag {
        env: Some("TALLY_SNAPSHOT_MAX_INTERVAL"),
        old_env: Some("TALLY_SNAPSHOT_MAX_INTERVAL_MS"),
        ..flag(
            "snapshot_max_interval",
            "--snapshot-max-interval",
            BareUnit::Millis,
        )
    },
    Flag {
        env: Some("TALLY_SESSION_TIMEOUT"),
        old_env: Some("TALLY_SESSION_TIMEOUT_MS"),
        ..flag("session_timeout", "--session-timeout", BareUnit::Millis)
    },
    Flag {
        env: Some("TALLY_SHUTDOWN_TIMEOUT"),
        ..flag("shutdown_timeout", "--shutdown-timeout", BareUnit::Secs)
    },
    Flag {
        env: Some("TALLY_PROGRESS_INTERVAL"),
        old_long: Some("--progress-secs"),
        old_env: Some("TALLY_PROGRESS_SECS"),
        ..flag("progress_interval", "--progress-interval", BareUnit::Secs)
    },
    Flag {
        env: Some("TALLY_MAX_FUTURE_SKEW"),
        old_long: Some("--max-future-skew-secs"),
        old_env: Some("TALLY_MAX_FUTURE_SKEW_SECS"),
        ..flag("max_future_skew", "--max-future-skew", BareUnit::Secs)
    },
    // `lag --timeout`, and the benchmark's `latency --idle`.
    flag("timeout", "--timeout", BareUnit::Secs),
    Flag {
        old_long: Some("--idle-secs"),
        ..flag("idle", "--idle", BareUnit::Secs)
    },
];

/// The subcommands' arguments with `id`.
fn subcommands_with(cmd: &Command, id: &str) -> Vec<String> {
    cmd.get_subcommands()
        .filter(|sc| sc.get_arguments().any(|a| a.get_id() == id))
        .map(|sc| sc.get_name().to_string())
        .collect()
}

/// Parses `args` with `cmd`, `lookup` reading the environment; with the
/// deprecated spellings used, one line per flag.
pub(crate) fn parse_args(
    cmd: Command,
    args: &[OsString],
    lookup: impl Fn(&str) -> Option<String>,
) -> Result<(ArgMatches, Vec<String>), clap::Error> {
    let (cmd, from_env) = env_defaults(cmd, lookup);
    let matches = cmd.try_get_matches_from(args)?;
    let Some((_, sub)) = matches.subcommand() else {
        return Ok((matches, Vec::new()));
    };
    let from_args = deprecations(sub, args);
    let notes = FLAGS
        .iter()
        // A variable only concerns a command with its flag; the command line's
        // spelling is the one to correct first.
        .filter(|f| sub.try_get_raw(f.id).is_ok())
        .filter_map(|f| {
            let of = |notes: &[(&str, String)]| {
                notes
                    .iter()
                    .find(|(id, _)| *id == f.id)
                    .map(|(_, n)| n.clone())
            };
            of(&from_args).or_else(|| of(&from_env))
        })
        .collect();
    Ok((matches, notes))
}

/// Reads each flag's variable, under its name or else its old name, as the
/// flag's default: the command line comes first. clap reads the variable under
/// its name too (and shows it in `--help`), to the same value; reading it here
/// as well keeps one path for both names, and lets tests supply `lookup`.
/// With a warning, by the flag's id, for an old name or a bare number.
fn env_defaults(
    mut cmd: Command,
    lookup: impl Fn(&str) -> Option<String>,
) -> (Command, Vec<(&'static str, String)>) {
    let mut notes = Vec::new();
    for f in FLAGS {
        let Some(env) = f.env else { continue };
        let (value, note) = match (
            lookup(env),
            f.old_env.and_then(|old| Some((old, lookup(old)?))),
        ) {
            (Some(v), _) => {
                let note = bare(&v).map(|_| {
                    format!(
                        "{env}={v} {}: write {env}={}",
                        read_in(f.unit),
                        humantime_spelling(&v, f.unit)
                    )
                });
                (v, note)
            }
            (None, Some((old, v))) => {
                let note = format!(
                    "{old} is deprecated: set {env}={} instead",
                    humantime_spelling(&v, f.unit)
                );
                (v, Some(note))
            }
            (None, None) => continue,
        };
        for name in subcommands_with(&cmd, f.id) {
            let v = value.clone();
            cmd = cmd.mut_subcommand(name, |sc| sc.mut_arg(f.id, |a| a.default_value(v)));
        }
        notes.extend(note.map(|n| (f.id, n)));
    }
    (cmd, notes)
}

fn read_in(unit: BareUnit) -> String {
    format!("is read in {}; a bare number is deprecated", unit.name())
}

/// `value` as it is written now: a bare number with its old unit.
fn humantime_spelling(value: &str, unit: BareUnit) -> String {
    match bare(value) {
        Some(n) => format!("{n}{}", unit.suffix()),
        None => value.trim().to_string(),
    }
}

/// The deprecated spellings of the command line itself: a bare number, a
/// flag's old name (looked for in `args`, as clap does not say which of an
/// argument's names was used). By the flag's id.
fn deprecations(sub: &ArgMatches, args: &[OsString]) -> Vec<(&'static str, String)> {
    let mut notes = Vec::new();
    for f in FLAGS {
        // An id unknown to this command is an error here, a panic in `value_source`.
        let Ok(Some(mut raw)) = sub.try_get_raw(f.id) else {
            continue;
        };
        if sub.value_source(f.id) != Some(ValueSource::CommandLine) {
            continue;
        }
        let value = raw
            .next()
            .map(|v| v.to_string_lossy().into_owned())
            .unwrap_or_default();
        let now = humantime_spelling(&value, f.unit);
        let old = f.old_long.filter(|old| {
            args.iter().any(|a| {
                let a = a.to_string_lossy();
                a == *old || a.starts_with(&format!("{old}="))
            })
        });
        let note = match (old, bare(&value)) {
            (Some(old), _) => format!("{old} is deprecated: write {} {now}", f.long),
            (None, Some(_)) => format!(
                "{} {value} {}: write {} {now}",
                f.long,
                read_in(f.unit),
                f.long
            ),
            (None, None) => continue,
        };
        notes.push((f.id, note));
    }
    notes
}

#[cfg(test)]
mod tests {
    use clap::{CommandFactory, FromArgMatches};

    use super::*;
    use crate::cli::{Cli, Command as Sub};

    #[test]
    fn humantime_values_are_read_everywhere() {
        assert_eq!(millis("100ms"), Ok(Duration::from_millis(100)));
        assert_eq!(millis("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(secs("5m"), Ok(Duration::from_secs(300)));
        assert_eq!(secs("1h 30m"), Ok(Duration::from_secs(5400)));
        assert_eq!(millis(" 2s "), Ok(Duration::from_secs(2)));
    }

    #[test]
    fn a_bare_number_keeps_its_flags_old_unit() {
        assert_eq!(millis("250"), Ok(Duration::from_millis(250)));
        assert_eq!(secs("30"), Ok(Duration::from_secs(30)));
        assert_eq!(whole_secs("0"), Ok(Duration::ZERO));
    }

    #[test]
    fn bad_values_say_what_to_write() {
        let e = millis("soon").unwrap_err();
        assert!(e.contains("\"soon\"") && e.contains("250ms"), "{e}");
        assert!(millis("-5").is_err());
        assert!(millis("0").is_err());
        assert!(secs("0s").is_err());
        assert!(whole_secs("1500ms").is_err());
        assert_eq!(whole_secs("2m"), Ok(Duration::from_secs(120)));
    }

    fn parse(args: &[&str], env: &[(&str, &str)]) -> (Cli, Vec<String>) {
        let lookup = |k: &str| {
            env.iter()
                .find(|(n, _)| *n == k)
                .map(|(_, v)| v.to_string())
        };
        let args: Vec<OsString> = args.iter().map(OsString::from).collect();
        let (matches, notes) = parse_args(Cli::command(), &args, lookup).unwrap();
        (Cli::from_arg_matches(&matches).unwrap(), notes)
    }

    fn run(cli: Cli) -> crate::cli::run::RunArgs {
        match cli.command {
            Sub::Run(a) => a,
            other => panic!("not run: {other:?}"),
        }
    }

    #[test]
    fn new_spellings_draw_no_warning() {
        let (cli, notes) = parse(
            &[
                "tally",
                "run",
                "--instance-id",
                "a",
                "--commit-interval",
                "250ms",
                "--shutdown-timeout",
                "1m",
                "--progress-interval",
                "5s",
            ],
            &[],
        );
        assert_eq!(notes, Vec::<String>::new());
        let a = run(cli);
        assert_eq!(a.commit_interval, Duration::from_millis(250));
        assert_eq!(a.shutdown_timeout, Duration::from_secs(60));
        assert_eq!(a.progress_interval, Duration::from_secs(5));
        // The defaults, written with units.
        assert_eq!(a.session_timeout, Duration::from_secs(25));
        assert_eq!(a.snapshot_max_interval, Duration::from_secs(300));
        assert_eq!(a.process.max_future_skew, Duration::from_secs(86_400));
    }

    #[test]
    fn old_spellings_still_work_with_one_warning_per_flag() {
        let (cli, notes) = parse(
            &[
                "tally",
                "run",
                "--instance-id",
                "a",
                "--commit-interval",
                "250",
                "--progress-secs",
                "5",
                "--max-future-skew-secs=60",
            ],
            &[
                ("TALLY_SHUTDOWN_TIMEOUT", "5"),
                ("TALLY_SESSION_TIMEOUT_MS", "60000"),
                ("TALLY_CONNECT_TIMEOUT_SECS", "3"),
            ],
        );
        let a = run(cli);
        assert_eq!(a.commit_interval, Duration::from_millis(250));
        assert_eq!(a.progress_interval, Duration::from_secs(5));
        assert_eq!(a.process.max_future_skew, Duration::from_secs(60));
        assert_eq!(a.shutdown_timeout, Duration::from_secs(5));
        assert_eq!(a.session_timeout, Duration::from_secs(60));
        assert_eq!(a.kafka.connect_timeout, Some(Duration::from_secs(3)));
        let mut notes = notes;
        notes.sort();
        assert_eq!(
            notes,
            [
                "--commit-interval 250 is read in milliseconds; a bare number is \
                 deprecated: write --commit-interval 250ms",
                "--max-future-skew-secs is deprecated: write --max-future-skew 60s",
                "--progress-secs is deprecated: write --progress-interval 5s",
                "TALLY_CONNECT_TIMEOUT_SECS is deprecated: set TALLY_CONNECT_TIMEOUT=3s instead",
                "TALLY_SESSION_TIMEOUT_MS is deprecated: set TALLY_SESSION_TIMEOUT=60000ms instead",
                "TALLY_SHUTDOWN_TIMEOUT=5 is read in seconds; a bare number is deprecated: \
                 write TALLY_SHUTDOWN_TIMEOUT=5s",
            ]
        );
    }

    #[test]
    fn the_new_name_and_the_command_line_come_before_an_old_name() {
        let (cli, notes) = parse(
            &[
                "tally",
                "run",
                "--instance-id",
                "a",
                "--session-timeout",
                "30s",
            ],
            &[
                ("TALLY_SESSION_TIMEOUT_MS", "60000"),
                ("TALLY_COMMIT_INTERVAL", "1s"),
                ("TALLY_COMMIT_INTERVAL_MS", "500"),
            ],
        );
        let a = run(cli);
        assert_eq!(a.session_timeout, Duration::from_secs(30));
        // Warned about all the same: it is still set.
        assert_eq!(
            notes,
            ["TALLY_SESSION_TIMEOUT_MS is deprecated: set TALLY_SESSION_TIMEOUT=60000ms instead"]
        );
    }

    #[test]
    fn an_old_variable_reaches_every_command_with_the_flag() {
        let (cli, notes) = parse(&["tally", "verify"], &[("TALLY_CONNECT_TIMEOUT_SECS", "7")]);
        let Sub::Verify(v) = cli.command else {
            panic!("not verify")
        };
        assert_eq!(v.kafka.connect_timeout, Some(Duration::from_secs(7)));
        assert_eq!(notes.len(), 1, "{notes:?}");
        // A command without the flag ignores it.
        let (_, notes) = parse(&["tally", "state"], &[("TALLY_COMMIT_INTERVAL_MS", "7")]);
        assert_eq!(notes, Vec::<String>::new());
    }
}
