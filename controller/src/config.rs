//! The configuration file: everything the flags of `bridgewall run` set, written down once
//! for a service, so a unit file can say `bridgewall run` and nothing else.
//!
//! # Where it is
//!
//! `--config FILE` (or `--config=FILE`) names it; without that flag the default
//! [`DEFAULT_CONFIG_PATH`] is read if it exists. A missing default is fine (there is
//! simply no file); a file named with `--config` that cannot be read is an error.
//!
//! # Layout
//!
//! Top-level keys are the long flags of `bridgewall run` without the leading `--`, with
//! their values in TOML's own types:
//!
//! ```toml
//! docker-host = "unix:///run/docker.sock"
//! rules = "user.rules"              # relative: next to this file
//! workers = 2
//! module = ["a.wasm", "b.wat"]      # a repeated flag is an array (a single string is fine too)
//! audit = true                      # a switch: true gives the flag, false leaves it out
//! metrics = "127.0.0.1:9477"
//! log = "info"                      # global flags count as run's own
//!
//! [lab]                             # the same, for `bridgewall lab`
//! workers = 4
//! ```
//!
//! A `[lab]` table does for `bridgewall lab` what the top-level keys do for `run`. Other
//! subcommands never read the file, so a broken service configuration cannot get in the way
//! of `bridgewall completions` or `bridgewall restore`.
//!
//! # Who wins
//!
//! A flag on the command line wins, then its environment variable (`DOCKER_HOST`,
//! `BRIDGEWALL_LOG`), then the file, then the flag's default. A repeated flag given on the
//! command line replaces the file's whole array rather than adding to it.
//!
//! # How
//!
//! The file is not a second source of truth next to clap: [`merge_config`] turns its keys
//! into flags (`--key=value`) inserted right after the subcommand's name, and the caller
//! parses the result as usual. Every value is checked with the flag's own value parser and
//! the whole file is checked before anything is applied, so a file with one mistake changes
//! nothing and the error names the file, the key and what was expected.
//!
//! Paths relative to the file are resolved against the file's directory, for flags whose
//! values are paths (clap's value hint) and for the known path flags (`rules`, `ipsets`,
//! `module`, `state-dir`, `control-socket`, `rules-state`): a service's working directory
//! is rarely the file's. The words `none` and `-` are kept as written (`control-socket =
//! "none"` turns the control API off).
use std::ffi::{OsStr, OsString};
use std::path::{Path, PathBuf};

use clap::builder::ValueHint;
use clap::parser::ValueSource;
use clap::{Arg, ArgAction, ArgMatches, Command};
use toml::{Table, Value};

/// Where the configuration file is looked for when `--config` is not given: the usual place
/// for a system service's configuration (and what the caller can show in `--config`'s help).
pub const DEFAULT_CONFIG_PATH: &str = "/etc/bridgewall/bridgewall.toml";

/// The global flag naming the file; never a key in the file itself.
const CONFIG_FLAG: &str = "config";
/// The subcommand the file's top-level keys belong to.
const TOP_LEVEL_SUBCOMMAND: &str = "run";
/// Subcommands configured by a table of their own name (`[lab]`).
const TABLE_SUBCOMMANDS: &[&str] = &["lab"];
/// Words a path flag gives a meaning of its own (`--control-socket none`): never resolved.
const PATH_SENTINELS: &[&str] = &["none", "-"];
/// Flags whose values are paths even if their clap definition does not say so (a `String`
/// rather than a `PathBuf`): resolved against the file's directory.
const PATH_KEYS: &[&str] = &[
    "rules",
    "ipsets",
    "module",
    "state-dir",
    "control-socket",
    "rules-state",
];

/// What is wrong with the configuration file. Every variant names the file, so the person
/// reading the error knows which file to open, even when the default was read implicitly.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read: a `--config FILE` that does not exist, or any file that
    /// exists but cannot be read (permissions, a directory).
    #[error("cannot read the config file {}: {error}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// Why it could not be read.
        error: std::io::Error,
    },
    /// The file is not valid TOML.
    #[error("the config file {} is not valid TOML: {message}", path.display())]
    Syntax {
        /// The file.
        path: PathBuf,
        /// toml's message, with the line and column.
        message: String,
    },
    /// A key that is not a flag of the subcommand it configures (a typo, or a flag of
    /// another subcommand).
    #[error(
        "unknown key `{key}` in the config file {}{}; valid keys for `bridgewall {subcommand}`: {}",
        path.display(),
        did_you_mean(key, valid),
        valid.join(", ")
    )]
    UnknownKey {
        /// The file.
        path: PathBuf,
        /// The key as written (`lab.x` for a key in the `[lab]` table).
        key: String,
        /// The subcommand the key would have configured.
        subcommand: String,
        /// The keys that subcommand takes (tables such as `[lab]` included).
        valid: Vec<String>,
    },
    /// A value of the wrong type, or one the flag would refuse (`workers = "two"`).
    #[error(
        "`{key}` in the config file {} must be {expected}, found {found}",
        path.display()
    )]
    WrongType {
        /// The file.
        path: PathBuf,
        /// The key (`lab.x` for a key in the `[lab]` table).
        key: String,
        /// What the flag takes.
        expected: String,
        /// The value found, and its TOML type.
        found: String,
    },
}

/// A hint for `docker_host` when `docker-host` is meant.
fn did_you_mean(key: &str, valid: &[String]) -> String {
    let last = key.rsplit('.').next().unwrap_or(key);
    let dashed = last.replace('_', "-");
    if dashed != last && valid.contains(&dashed) {
        format!(" (did you mean `{dashed}`?)")
    } else {
        String::new()
    }
}

/// Returns `argv` with the configuration file's settings added as flags, for the caller to
/// parse with `cmd` (`Cli::parse_from`). The file is the one named by `--config`, else
/// [`DEFAULT_CONFIG_PATH`] if it exists; see the module documentation for its layout and
/// for who wins when a setting is given twice.
///
/// `argv` comes back unchanged when clap would refuse it anyway (or would print help or the
/// version): the real parse then reports that, and a broken file does not hide it. It also
/// comes back unchanged for subcommands the file does not configure, and when there is no
/// file.
pub fn merge_config(argv: Vec<OsString>, cmd: &Command) -> Result<Vec<OsString>, ConfigError> {
    merge_config_from(argv, cmd, Path::new(DEFAULT_CONFIG_PATH))
}

/// [`merge_config`] with the default file's path as a parameter (the tests' own, not /etc).
fn merge_config_from(
    argv: Vec<OsString>,
    cmd: &Command,
    default: &Path,
) -> Result<Vec<OsString>, ConfigError> {
    let Ok(matches) = cmd.clone().try_get_matches_from(&argv) else {
        return Ok(argv);
    };
    let Some((subcommand, sub_matches)) = matches.subcommand() else {
        return Ok(argv);
    };
    if subcommand != TOP_LEVEL_SUBCOMMAND && !TABLE_SUBCOMMANDS.contains(&subcommand) {
        return Ok(argv);
    }
    // Built: global flags (`--log`) are copied into the subcommands, `--help` is added.
    let mut root = cmd.clone();
    root.build();
    let (path, explicit) = config_path(&root, &matches, default);
    let text = match std::fs::read_to_string(&path) {
        Ok(text) => text,
        Err(e) if !explicit && e.kind() == std::io::ErrorKind::NotFound => return Ok(argv),
        Err(error) => return Err(ConfigError::Read { path, error }),
    };
    let table: Table = text
        .parse()
        .map_err(|e: toml::de::Error| ConfigError::Syntax {
            path: path.clone(),
            message: e.to_string(),
        })?;
    let settings = check_file(&root, &table, &path)?;
    let Some(at) = subcommand_index(&root, &argv, subcommand) else {
        return Ok(argv);
    };
    let inject: Vec<OsString> = settings
        .into_iter()
        .filter(|s| s.subcommand == subcommand)
        .filter(|s| {
            !matches!(
                sub_matches.value_source(&s.id),
                Some(ValueSource::CommandLine | ValueSource::EnvVariable)
            )
        })
        .flat_map(|s| s.tokens)
        .collect();
    let mut argv = argv;
    argv.splice(at + 1..at + 1, inject);
    Ok(argv)
}

/// The file to read and whether the person asked for it (then it must exist): `--config`'s
/// value from the command line or its environment variable, else the default (a
/// `default_value` on `--config` counts as the default).
fn config_path(root: &Command, matches: &ArgMatches, default: &Path) -> (PathBuf, bool) {
    let Some(arg) = root
        .get_arguments()
        .find(|a| a.get_long() == Some(CONFIG_FLAG))
    else {
        return (default.to_path_buf(), false);
    };
    let id = arg.get_id().as_str();
    let raw = matches
        .try_get_raw(id)
        .ok()
        .flatten()
        .and_then(|mut values| values.next_back());
    match (raw, matches.value_source(id)) {
        (Some(value), Some(ValueSource::CommandLine | ValueSource::EnvVariable)) => {
            (PathBuf::from(value), true)
        }
        (Some(value), _) => (PathBuf::from(value), false),
        (None, _) => (default.to_path_buf(), false),
    }
}

/// One key of the file, checked and turned into flags.
#[derive(Debug)]
struct Setting {
    /// The subcommand it configures.
    subcommand: String,
    /// The clap id of its argument (for `value_source`).
    id: String,
    /// What goes into argv: `--key=value`, repeated for arrays; `--key` for a switch.
    tokens: Vec<OsString>,
}

/// Checks the whole file against the command's definition and returns every setting in it,
/// for all subcommands: an error anywhere means nothing is applied.
fn check_file(root: &Command, table: &Table, path: &Path) -> Result<Vec<Setting>, ConfigError> {
    let dir = base_dir(path);
    let file = FileRef { path, dir: &dir };
    let tables: Vec<&str> = TABLE_SUBCOMMANDS
        .iter()
        .copied()
        .filter(|name| root.find_subcommand(name).is_some())
        .collect();
    let mut settings = Vec::new();
    for (key, value) in table {
        if let Some(name) = tables.iter().find(|name| **name == key)
            && let Some(sub) = root.find_subcommand(name)
        {
            let Value::Table(inner) = value else {
                return Err(file.wrong_type(
                    key,
                    &format!("a table of `bridgewall {name}` flags"),
                    value,
                ));
            };
            for (k, v) in inner {
                settings.push(setting(sub, &format!("{name}.{k}"), k, v, &file, &[])?);
            }
            continue;
        }
        let extra: Vec<String> = tables.iter().map(|t| format!("[{t}]")).collect();
        let Some(sub) = root.find_subcommand(TOP_LEVEL_SUBCOMMAND) else {
            return Err(ConfigError::UnknownKey {
                path: path.to_path_buf(),
                key: key.clone(),
                subcommand: TOP_LEVEL_SUBCOMMAND.to_string(),
                valid: extra,
            });
        };
        settings.push(setting(sub, key, key, value, &file, &extra)?);
    }
    Ok(settings)
}

/// The file being checked: its path for errors, its directory for relative paths.
struct FileRef<'a> {
    path: &'a Path,
    dir: &'a Path,
}

impl FileRef<'_> {
    fn wrong_type(&self, key: &str, expected: &str, found: &Value) -> ConfigError {
        ConfigError::WrongType {
            path: self.path.to_path_buf(),
            key: key.to_string(),
            expected: expected.to_string(),
            found: describe(found),
        }
    }
}

/// A value as written, with its TOML type: `"two" (a string)`.
fn describe(value: &Value) -> String {
    let kind = value.type_str();
    let article = if kind.starts_with(['a', 'e', 'i', 'o', 'u']) {
        "an"
    } else {
        "a"
    };
    match value {
        Value::Table(_) => format!("{article} {kind}"),
        _ => format!("{value} ({article} {kind})"),
    }
}

/// The directory relative paths in the file are resolved against: the file's own, made
/// absolute so a later change of directory does not matter.
fn base_dir(path: &Path) -> PathBuf {
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    std::path::absolute(dir).unwrap_or_else(|_| dir.to_path_buf())
}

/// The arguments of a subcommand a file may set: those with a long name, less help,
/// version and `--config` itself.
fn configurable(sub: &Command) -> impl Iterator<Item = &Arg> {
    sub.get_arguments().filter(|a| {
        a.get_long().is_some_and(|l| l != CONFIG_FLAG)
            && !matches!(
                a.get_action(),
                ArgAction::Help | ArgAction::HelpShort | ArgAction::HelpLong | ArgAction::Version
            )
    })
}

/// Checks one key against the subcommand's arguments and turns its value into flags.
/// `shown` is the key as errors name it (`lab.workers`); `extra` lists the tables that are
/// also valid where the key was found.
fn setting(
    sub: &Command,
    shown: &str,
    key: &str,
    value: &Value,
    file: &FileRef<'_>,
    extra: &[String],
) -> Result<Setting, ConfigError> {
    let Some(arg) = configurable(sub).find(|a| {
        a.get_long() == Some(key) || a.get_all_aliases().is_some_and(|al| al.contains(&key))
    }) else {
        let mut valid: Vec<String> = configurable(sub)
            .filter_map(|a| a.get_long().map(str::to_string))
            .collect();
        valid.sort();
        valid.extend(extra.iter().cloned());
        return Err(ConfigError::UnknownKey {
            path: file.path.to_path_buf(),
            key: shown.to_string(),
            subcommand: sub.get_name().to_string(),
            valid,
        });
    };
    let flag = format!("--{key}");
    let tokens = match arg.get_action() {
        ArgAction::SetTrue | ArgAction::SetFalse => match value {
            Value::Boolean(true) => vec![OsString::from(flag)],
            Value::Boolean(false) => Vec::new(),
            _ => return Err(file.wrong_type(shown, "a boolean (true or false)", value)),
        },
        ArgAction::Count => match value {
            Value::Integer(n) if u8::try_from(*n).is_ok() => {
                let times = usize::try_from(*n).unwrap_or_default();
                std::iter::repeat_n(OsString::from(&flag), times).collect()
            }
            _ => {
                return Err(file.wrong_type(
                    shown,
                    "a count (an integer from 0 to 255: how many times to give the flag)",
                    value,
                ));
            }
        },
        ArgAction::Append => {
            let kind = Kind::of(arg);
            let items: Vec<&Value> = match value {
                Value::Array(items) => items.iter().collect(),
                one => vec![one],
            };
            let mut tokens = Vec::with_capacity(items.len());
            for item in items {
                let text = scalar(arg, &kind, item, file.dir).map_err(|reason| {
                    let expected = format!("{}, or an array of them", kind.expected(arg));
                    file.wrong_type(shown, &with_reason(expected, reason), item)
                })?;
                tokens.push(flag_with_value(&flag, &text));
            }
            tokens
        }
        action if action.takes_values() => {
            let kind = Kind::of(arg);
            let text = scalar(arg, &kind, value, file.dir).map_err(|reason| {
                file.wrong_type(shown, &with_reason(kind.expected(arg), reason), value)
            })?;
            vec![flag_with_value(&flag, &text)]
        }
        _ => return Err(file.wrong_type(shown, "nothing (this flag cannot be configured)", value)),
    };
    Ok(Setting {
        subcommand: sub.get_name().to_string(),
        id: arg.get_id().to_string(),
        tokens,
    })
}

/// What was expected, with the flag's own reason when the TOML type was right but the
/// flag refused the value (`invalid socket address syntax`).
fn with_reason(expected: String, reason: Option<String>) -> String {
    match reason {
        Some(reason) => format!("{expected} ({reason})"),
        None => expected,
    }
}

/// `--key=value`: the `=` form, so a value starting with `-` stays a value.
fn flag_with_value(flag: &str, value: &OsStr) -> OsString {
    let mut token = OsString::from(flag);
    token.push("=");
    token.push(value);
    token
}

/// What a value-taking flag takes, for choosing which TOML types to accept and for saying
/// what was expected.
enum Kind {
    /// A path: only strings; relative ones are resolved against the file's directory.
    Path,
    /// A boolean value (`--x=true`).
    Bool,
    /// One of a fixed set of values (a `ValueEnum`).
    Choice(Vec<String>),
    /// An integer; `unsigned` says whether negative ones are refused.
    Integer { unsigned: bool },
    /// A floating-point number.
    Float,
    /// Anything else: text; `plain` when any text will do (`String`), otherwise the flag
    /// parses it (an address, say) and the error says so.
    Text { plain: bool },
}

impl Kind {
    fn of(arg: &Arg) -> Self {
        let type_id = arg.get_value_parser().type_id();
        let is = |probe: Arg| probe.get_value_parser().type_id() == type_id;
        macro_rules! any_of {
            ($($t:ty),*) => { false $(|| is(Arg::new("probe").value_parser(clap::value_parser!($t))))* };
        }
        let long = arg.get_long().unwrap_or_default();
        if matches!(
            arg.get_value_hint(),
            ValueHint::AnyPath | ValueHint::FilePath | ValueHint::DirPath
        ) || PATH_KEYS.contains(&long)
        {
            Kind::Path
        } else if any_of!(bool) {
            Kind::Bool
        } else if !arg.get_possible_values().is_empty() {
            Kind::Choice(
                arg.get_possible_values()
                    .iter()
                    .filter(|v| !v.is_hide_set())
                    .map(|v| v.get_name().to_string())
                    .collect(),
            )
        } else if any_of!(u8, u16, u32, u64, usize) {
            Kind::Integer { unsigned: true }
        } else if any_of!(i8, i16, i32, i64, isize) {
            Kind::Integer { unsigned: false }
        } else if any_of!(f32, f64) {
            Kind::Float
        } else {
            Kind::Text {
                plain: any_of!(String, std::ffi::OsString),
            }
        }
    }

    fn expected(&self, arg: &Arg) -> String {
        match self {
            Kind::Path => "a path (a string)".to_string(),
            Kind::Bool => "a boolean (true or false)".to_string(),
            Kind::Choice(values) => {
                let quoted: Vec<String> = values.iter().map(|v| format!("\"{v}\"")).collect();
                format!("one of {}", quoted.join(", "))
            }
            Kind::Integer { unsigned: true } => "a non-negative integer".to_string(),
            Kind::Integer { unsigned: false } => "an integer".to_string(),
            Kind::Float => "a number".to_string(),
            Kind::Text { plain: true } => "a string".to_string(),
            Kind::Text { plain: false } => format!(
                "a string that `--{}` accepts",
                arg.get_long().unwrap_or_default()
            ),
        }
    }
}

/// One TOML value as the text of a flag's value. The TOML type must fit (else `Err(None)`)
/// and the flag's own value parser must accept the text (else `Err(Some(its reason))`).
fn scalar(arg: &Arg, kind: &Kind, value: &Value, dir: &Path) -> Result<OsString, Option<String>> {
    let text: OsString = match (kind, value) {
        (Kind::Path, Value::String(s)) if s.is_empty() => return Err(None),
        (Kind::Path, Value::String(s)) => {
            let p = Path::new(s);
            if p.is_relative() && !PATH_SENTINELS.contains(&s.as_str()) {
                dir.join(p).into_os_string()
            } else {
                p.as_os_str().to_os_string()
            }
        }
        (Kind::Path, _) => return Err(None),
        (_, Value::String(s)) => s.into(),
        (Kind::Bool, Value::Boolean(b)) => b.to_string().into(),
        (Kind::Choice(values), Value::Boolean(b)) if values.contains(&b.to_string()) => {
            b.to_string().into()
        }
        (
            Kind::Choice(_) | Kind::Integer { .. } | Kind::Float | Kind::Text { .. },
            Value::Integer(i),
        ) => i.to_string().into(),
        (Kind::Choice(_) | Kind::Float | Kind::Text { .. }, Value::Float(f)) => {
            f.to_string().into()
        }
        _ => return Err(None),
    };
    accepts(arg, &text)?;
    Ok(text)
}

/// Whether the flag's value parser takes `value`: the same check the real parse makes, so a
/// bad value is reported against the file rather than as a flag the person never typed.
/// The error is the parser's reason (`invalid digit found in string`) when it gives one (a
/// `ValueEnum`'s does not: its values are in what was expected).
fn accepts(arg: &Arg, value: &OsStr) -> Result<(), Option<String>> {
    let probe = Arg::new("value")
        .long("value")
        .action(ArgAction::Set)
        .value_parser(arg.get_value_parser().clone())
        .ignore_case(arg.is_ignore_case_set());
    let Err(e) = Command::new("config")
        .no_binary_name(true)
        .arg(probe)
        .try_get_matches_from([flag_with_value("--value", value)])
    else {
        return Ok(());
    };
    Err(std::error::Error::source(&e).map(ToString::to_string))
}

/// The position of the subcommand's name in `argv`: the first word that is neither a flag
/// of the top-level command nor such a flag's value.
fn subcommand_index(root: &Command, argv: &[OsString], subcommand: &str) -> Option<usize> {
    let mut i = 1;
    while i < argv.len() {
        let word = argv[i].to_str();
        match word {
            Some("--") => return None,
            Some(w) if w.starts_with("--") => {
                let name = &w[2..];
                if !name.contains('=')
                    && root
                        .get_arguments()
                        .find(|a| {
                            a.get_long() == Some(name)
                                || a.get_all_aliases().is_some_and(|al| al.contains(&name))
                        })
                        .is_some_and(|a| a.get_action().takes_values())
                {
                    i += 1;
                }
            }
            Some(w) if w.starts_with('-') && w.len() > 1 => {
                for (at, c) in w.char_indices().skip(1) {
                    let takes_value = root
                        .get_arguments()
                        .find(|a| {
                            a.get_short() == Some(c)
                                || a.get_all_short_aliases().is_some_and(|al| al.contains(&c))
                        })
                        .is_some_and(|a| a.get_action().takes_values());
                    if takes_value {
                        if at + c.len_utf8() == w.len() {
                            i += 1;
                        }
                        break;
                    }
                }
            }
            _ => {
                let found = root.find_subcommand(&argv[i])?;
                return (found.get_name() == subcommand).then_some(i);
            }
        }
        i += 1;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::{CommandFactory, FromArgMatches, Parser, Subcommand, ValueEnum};
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// Mimics `cli::Cli`: a global `--log` with an environment variable, the global
    /// `--config`, and `run`/`lab` with the kinds of flags the real ones have.
    #[derive(Parser, Debug)]
    #[command(name = "bridgewall")]
    struct TestCli {
        #[arg(long, global = true, env = "BRIDGEWALL_LOG", default_value = "warn")]
        log: String,
        #[arg(long, global = true, value_name = "FILE")]
        config: Option<PathBuf>,
        #[command(subcommand)]
        command: TestCommand,
    }

    #[derive(Subcommand, Debug)]
    enum TestCommand {
        Run(TestRun),
        Lab(TestLab),
        Man,
    }

    #[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
    enum Icc {
        Auto,
        True,
        False,
    }

    #[derive(clap::Args, Debug)]
    struct TestRun {
        #[arg(long, env = "DOCKER_HOST")]
        docker_host: Option<String>,
        #[arg(long, default_value_t = 1)]
        workers: usize,
        #[arg(long = "module", value_name = "FILE.wasm")]
        modules: Vec<PathBuf>,
        #[arg(long)]
        audit: bool,
        #[arg(long)]
        rules: Option<PathBuf>,
        #[arg(long, value_enum, default_value = "auto")]
        icc: Icc,
        #[arg(long, value_name = "ADDR")]
        metrics: Option<std::net::SocketAddr>,
        #[arg(long, default_value = "/var/lib/bridgewall")]
        state_dir: PathBuf,
        /// A `String` path: resolved because its name is in the known list.
        #[arg(long)]
        control_socket: Option<String>,
    }

    #[derive(clap::Args, Debug)]
    struct TestLab {
        file: Option<PathBuf>,
        #[arg(long)]
        hold: bool,
        #[arg(long, default_value_t = 1)]
        workers: usize,
    }

    /// The test command, with environment variables the test controls (`DOCKER_HOST` or
    /// `BRIDGEWALL_LOG` may be set where the tests run): `docker_host_env` for
    /// `--docker-host`.
    fn command(docker_host_env: &'static str) -> Command {
        TestCli::command()
            .mut_arg("log", |a| a.env("BRIDGEWALL_TEST_NEVER_SET_LOG"))
            .mut_subcommand("run", |s| {
                s.mut_arg("docker_host", |a| a.env(docker_host_env))
            })
    }

    const NO_ENV: &str = "BRIDGEWALL_TEST_NEVER_SET_DOCKER_HOST";

    /// A directory of its own for each test, removed at the end.
    struct TempDir(PathBuf);

    impl TempDir {
        fn new() -> Self {
            static N: AtomicUsize = AtomicUsize::new(0);
            let dir = std::env::temp_dir().join(format!(
                "bridgewall-config-test-{}-{}",
                std::process::id(),
                N.fetch_add(1, Ordering::Relaxed)
            ));
            std::fs::create_dir_all(&dir).unwrap();
            TempDir(dir)
        }

        fn write(&self, name: &str, text: &str) -> PathBuf {
            let path = self.0.join(name);
            std::fs::write(&path, text).unwrap();
            path
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn argv(words: &[&str]) -> Vec<OsString> {
        words.iter().map(OsString::from).collect()
    }

    /// `bridgewall --config FILE <words>`, merged with a default that does not exist.
    fn merge_with(file: &Path, words: &[&str], env: &'static str) -> Result<TestCli, ConfigError> {
        let mut all = vec![OsString::from("bridgewall"), "--config".into(), file.into()];
        all.extend(words.iter().map(OsString::from));
        let cmd = command(env);
        let merged = merge_config_from(all, &cmd, Path::new("/nonexistent/bridgewall.toml"))?;
        let m = cmd.try_get_matches_from(merged).unwrap();
        Ok(TestCli::from_arg_matches(&m).unwrap())
    }

    fn run_of(cli: TestCli) -> TestRun {
        match cli.command {
            TestCommand::Run(r) => r,
            other => panic!("not run: {other:?}"),
        }
    }

    const FULL: &str = r#"
docker-host = "unix:///run/docker.sock"
rules = "user.rules"
workers = 2
module = ["a.wasm", "/abs/b.wat"]
audit = true
metrics = "127.0.0.1:9477"
icc = false
"#;

    #[test]
    fn file_values_apply() {
        let dir = TempDir::new();
        let file = dir.write("bw.toml", FULL);
        let run = run_of(merge_with(&file, &["run"], NO_ENV).unwrap());
        assert_eq!(run.docker_host.as_deref(), Some("unix:///run/docker.sock"));
        assert_eq!(run.workers, 2);
        assert_eq!(
            run.modules,
            vec![dir.0.join("a.wasm"), PathBuf::from("/abs/b.wat")]
        );
        assert!(run.audit);
        assert_eq!(run.metrics, "127.0.0.1:9477".parse().ok());
        assert_eq!(run.icc, Icc::False);
        assert_eq!(run.rules, Some(dir.0.join("user.rules")));
        // Not in the file: the default stays.
        assert_eq!(run.state_dir, PathBuf::from("/var/lib/bridgewall"));
    }

    #[test]
    fn flags_are_inserted_after_the_subcommand() {
        let dir = TempDir::new();
        let file = dir.write("bw.toml", "workers = 2\naudit = true\n");
        let all = vec![
            OsString::from("bridgewall"),
            "--config".into(),
            file.clone().into(),
            "run".into(),
        ];
        let merged = merge_config_from(all, &command(NO_ENV), Path::new("/nonexistent")).unwrap();
        let mut expected = vec![OsString::from("bridgewall"), "--config".into(), file.into()];
        expected.extend(argv(&["run", "--audit", "--workers=2"]));
        assert_eq!(merged, expected);
    }

    #[test]
    fn command_line_wins() {
        let dir = TempDir::new();
        let file = dir.write("bw.toml", FULL);
        let run = run_of(
            merge_with(
                &file,
                &["run", "--workers", "3", "--module=x.wasm", "--icc", "auto"],
                NO_ENV,
            )
            .unwrap(),
        );
        assert_eq!(run.workers, 3);
        // The command line's array replaces the file's; its relative path is left alone.
        assert_eq!(run.modules, vec![PathBuf::from("x.wasm")]);
        assert_eq!(run.icc, Icc::Auto);
        // What the command line did not give still comes from the file.
        assert_eq!(run.docker_host.as_deref(), Some("unix:///run/docker.sock"));
    }

    #[test]
    fn config_equals_form_and_flag_after_the_subcommand() {
        let dir = TempDir::new();
        let file = dir.write("bw.toml", "workers = 2\n");
        let cmd = command(NO_ENV);
        for words in [
            vec![
                OsString::from("bridgewall"),
                {
                    let mut a = OsString::from("--config=");
                    a.push(&file);
                    a
                },
                "run".into(),
            ],
            vec![
                "bridgewall".into(),
                "--log".into(),
                "info".into(),
                "run".into(),
                "--config".into(),
                file.clone().into(),
            ],
        ] {
            let merged = merge_config_from(words, &cmd, Path::new("/nonexistent")).unwrap();
            let cli = TestCli::from_arg_matches(&cmd.clone().try_get_matches_from(merged).unwrap())
                .unwrap();
            assert_eq!(run_of(cli).workers, 2);
        }
    }

    #[test]
    fn environment_wins_over_file() {
        // PATH is set wherever tests run; no test can set a variable (no unsafe code here).
        let path = std::env::var("PATH").unwrap();
        let dir = TempDir::new();
        let file = dir.write("bw.toml", FULL);
        let run = run_of(merge_with(&file, &["run"], "PATH").unwrap());
        assert_eq!(run.docker_host, Some(path));
        assert_eq!(run.workers, 2);
    }

    #[test]
    fn global_flags_are_keys_too() {
        let dir = TempDir::new();
        let file = dir.write("bw.toml", "log = \"debug\"\n");
        assert_eq!(merge_with(&file, &["run"], NO_ENV).unwrap().log, "debug");
        // Given before the subcommand on the command line, it still wins.
        let all = vec![
            OsString::from("bridgewall"),
            "--log=info".into(),
            "--config".into(),
            file.into(),
            "run".into(),
        ];
        let cmd = command(NO_ENV);
        let merged = merge_config_from(all, &cmd, Path::new("/nonexistent")).unwrap();
        let cli = TestCli::from_arg_matches(&cmd.try_get_matches_from(merged).unwrap()).unwrap();
        assert_eq!(cli.log, "info");
    }

    #[test]
    fn arrays_and_booleans() {
        let dir = TempDir::new();
        // A single string for a repeated flag; false leaves a switch off.
        let file = dir.write("bw.toml", "module = \"one.wasm\"\naudit = false\n");
        let run = run_of(merge_with(&file, &["run"], NO_ENV).unwrap());
        assert_eq!(run.modules, vec![dir.0.join("one.wasm")]);
        assert!(!run.audit);
        let file = dir.write("bw2.toml", "module = [\"a.wasm\", \"b.wat\", \"c.wasm\"]\n");
        let run = run_of(merge_with(&file, &["run"], NO_ENV).unwrap());
        assert_eq!(
            run.modules,
            vec![
                dir.0.join("a.wasm"),
                dir.0.join("b.wat"),
                dir.0.join("c.wasm")
            ]
        );
        // `--audit` on the command line cannot be switched off by the file.
        let file = dir.write("bw3.toml", "audit = false\n");
        assert!(run_of(merge_with(&file, &["run", "--audit"], NO_ENV).unwrap()).audit);
    }

    #[test]
    fn relative_paths_resolve_against_the_files_directory() {
        let dir = TempDir::new();
        std::fs::create_dir_all(dir.0.join("etc")).unwrap();
        let file = dir.write(
            "etc/bw.toml",
            "rules = \"user.rules\"\nstate-dir = \"state\"\ncontrol-socket = \"ctl.sock\"\n\
             docker-host = \"relative-looking\"\n",
        );
        let run = run_of(merge_with(&file, &["run"], NO_ENV).unwrap());
        let etc = dir.0.join("etc");
        assert_eq!(run.rules, Some(etc.join("user.rules")));
        assert_eq!(run.state_dir, etc.join("state"));
        let socket = etc.join("ctl.sock");
        assert_eq!(run.control_socket.as_deref(), socket.to_str());
        // Not a path: left as written.
        assert_eq!(run.docker_host.as_deref(), Some("relative-looking"));
        // A path flag's own words are not paths.
        let file = dir.write("etc/bw.toml", "control-socket = \"none\"\n");
        let run = run_of(merge_with(&file, &["run"], NO_ENV).unwrap());
        assert_eq!(run.control_socket.as_deref(), Some("none"));
    }

    #[test]
    fn lab_table_configures_lab() {
        let dir = TempDir::new();
        let file = dir.write("bw.toml", "workers = 2\n[lab]\nworkers = 4\nhold = true\n");
        match merge_with(&file, &["lab", "my.toml"], NO_ENV)
            .unwrap()
            .command
        {
            TestCommand::Lab(lab) => {
                assert_eq!(lab.workers, 4);
                assert!(lab.hold);
                assert_eq!(lab.file, Some(PathBuf::from("my.toml")));
            }
            other => panic!("not lab: {other:?}"),
        }
        assert_eq!(
            run_of(merge_with(&file, &["run"], NO_ENV).unwrap()).workers,
            2
        );
    }

    #[test]
    fn unknown_key_names_it_and_lists_valid_ones() {
        let dir = TempDir::new();
        let file = dir.write("bw.toml", "workers = 2\ndocker_host = \"x\"\n");
        let err = merge_with(&file, &["run"], NO_ENV).unwrap_err();
        let ConfigError::UnknownKey {
            key,
            valid,
            subcommand,
            path,
        } = &err
        else {
            panic!("{err:?}")
        };
        assert_eq!(key, "docker_host");
        assert_eq!(subcommand, "run");
        assert_eq!(path, &file);
        for k in ["docker-host", "workers", "module", "audit", "log", "[lab]"] {
            assert!(valid.iter().any(|v| v == k), "{k} in {valid:?}");
        }
        assert!(
            !valid.iter().any(|v| v == "config" || v == "help"),
            "{valid:?}"
        );
        let text = err.to_string();
        assert!(text.contains("`docker_host`"), "{text}");
        assert!(text.contains("did you mean `docker-host`?"), "{text}");
        assert!(text.contains(&file.display().to_string()), "{text}");
        assert!(text.contains("docker-host, icc"), "{text}");

        let file = dir.write("lab.toml", "[lab]\nrules = \"x\"\n");
        let err = merge_with(&file, &["run"], NO_ENV).unwrap_err();
        let ConfigError::UnknownKey {
            key,
            subcommand,
            valid,
            ..
        } = &err
        else {
            panic!("{err:?}")
        };
        assert_eq!((key.as_str(), subcommand.as_str()), ("lab.rules", "lab"));
        assert!(valid.contains(&"hold".to_string()), "{valid:?}");
    }

    #[test]
    fn wrong_types_are_errors() {
        let dir = TempDir::new();
        for (text, key, expected) in [
            (
                "workers = \"two\"",
                "workers",
                "a non-negative integer (invalid digit found in string)",
            ),
            ("workers = 2.5", "workers", "a non-negative integer"),
            (
                "workers = -1",
                "workers",
                "a non-negative integer (invalid digit found in string)",
            ),
            ("audit = \"yes\"", "audit", "a boolean (true or false)"),
            (
                "module = [1]",
                "module",
                "a path (a string), or an array of them",
            ),
            ("rules = true", "rules", "a path (a string)"),
            (
                "icc = \"maybe\"",
                "icc",
                "one of \"auto\", \"true\", \"false\"",
            ),
            ("docker-host = [\"a\"]", "docker-host", "a string"),
            (
                "metrics = \"nonsense\"",
                "metrics",
                "a string that `--metrics` accepts (invalid socket address syntax)",
            ),
            ("lab = 3", "lab", "a table of `bridgewall lab` flags"),
            ("[lab]\nhold = 1", "lab.hold", "a boolean (true or false)"),
        ] {
            let file = dir.write("bw.toml", text);
            let err = merge_with(&file, &["run"], NO_ENV).unwrap_err();
            let ConfigError::WrongType {
                key: k,
                expected: e,
                path,
                ..
            } = &err
            else {
                panic!("{text}: {err:?}")
            };
            assert_eq!((k.as_str(), e.as_str()), (key, expected), "{text}");
            assert_eq!(path, &file);
        }
        let file = dir.write("bw.toml", "workers = \"two\"");
        let text = merge_with(&file, &["run"], NO_ENV).unwrap_err().to_string();
        assert!(text.contains("found \"two\" (a string)"), "{text}");
    }

    #[test]
    fn an_error_anywhere_applies_nothing() {
        let dir = TempDir::new();
        // The `[lab]` mistake fails `run` too: the whole file is checked.
        let file = dir.write("bw.toml", "workers = 2\n[lab]\nworkers = \"x\"\n");
        assert!(matches!(
            merge_with(&file, &["run"], NO_ENV),
            Err(ConfigError::WrongType { .. })
        ));
    }

    #[test]
    fn syntax_error_has_the_line() {
        let dir = TempDir::new();
        let file = dir.write("bw.toml", "workers = 2\nrules = /etc/x\n");
        let err = merge_with(&file, &["run"], NO_ENV).unwrap_err();
        let text = err.to_string();
        assert!(matches!(err, ConfigError::Syntax { .. }), "{err:?}");
        assert!(text.contains("line 2"), "{text}");
        assert!(text.contains(&file.display().to_string()), "{text}");
    }

    #[test]
    fn explicit_missing_file_is_an_error() {
        let dir = TempDir::new();
        let err = merge_with(&dir.0.join("absent.toml"), &["run"], NO_ENV).unwrap_err();
        let ConfigError::Read { path, error } = &err else {
            panic!("{err:?}")
        };
        assert_eq!(path, &dir.0.join("absent.toml"));
        assert_eq!(error.kind(), std::io::ErrorKind::NotFound);
    }

    #[test]
    fn default_file_is_read_and_may_be_missing() {
        let dir = TempDir::new();
        let cmd = command(NO_ENV);
        let words = argv(&["bridgewall", "run"]);
        let absent = dir.0.join("absent.toml");
        assert_eq!(
            merge_config_from(words.clone(), &cmd, &absent).unwrap(),
            words
        );
        let default = dir.write("bw.toml", "workers = 5\n");
        assert_eq!(
            merge_config_from(words, &cmd, &default).unwrap(),
            argv(&["bridgewall", "run", "--workers=5"])
        );
    }

    #[test]
    fn other_subcommands_and_refused_command_lines_are_left_alone() {
        let dir = TempDir::new();
        let broken = dir.write("bw.toml", "this is not toml");
        let cmd = command(NO_ENV);
        for words in [
            argv(&["bridgewall", "man"]),
            argv(&["bridgewall", "run", "--help"]),
            argv(&["bridgewall", "run", "--workers", "x"]),
            argv(&["bridgewall"]),
        ] {
            assert_eq!(
                merge_config_from(words.clone(), &cmd, &broken).unwrap(),
                words
            );
        }
    }

    #[test]
    fn subcommand_found_past_option_values() {
        let cmd = {
            let mut c = command(NO_ENV);
            c.build();
            c
        };
        assert_eq!(
            subcommand_index(&cmd, &argv(&["bw", "--log", "run", "run"]), "run"),
            Some(3)
        );
        assert_eq!(
            subcommand_index(&cmd, &argv(&["bw", "--log=lab", "lab"]), "lab"),
            Some(2)
        );
        assert_eq!(subcommand_index(&cmd, &argv(&["bw", "run"]), "lab"), None);
    }
}
