//! The control line protocol: one command per line, words separated by spaces
//! (the same words as `mcpflip ctl`); one JSON object per reply line.

use std::time::Duration;

use crate::config::parse_duration;
use crate::controller::CtlError;

#[derive(Debug, PartialEq)]
pub enum Command {
    Status,
    Weights(Vec<(String, u32)>),
    Flip {
        slot: String,
        no_probe: bool,
        drain: bool,
        wait: bool,
    },
    Drain {
        slot: String,
        wait: bool,
        deadline: Option<Duration>,
    },
    Wait {
        slot: String,
        timeout: Option<Duration>,
    },
    Retire(String),
    Standby(String),
    Probe(String),
    Rollback,
    Reload,
    Deploy {
        slot: String,
        deadline: Option<Duration>,
        /// Overrides `[watch] window` for this deploy (`0s`: no watch).
        watch: Option<Duration>,
    },
}

fn bad(msg: impl Into<String>) -> CtlError {
    CtlError::new("bad_command", msg)
}

fn dur(v: Option<&str>, flag: &str) -> Result<Duration, CtlError> {
    let v = v.ok_or_else(|| bad(format!("{flag} needs a duration, e.g. {flag} 90s")))?;
    parse_duration(v).map_err(bad)
}

/// Parses one command line.
pub fn parse(line: &str) -> Result<Command, CtlError> {
    let words: Vec<&str> = line.split_whitespace().collect();
    let Some((&cmd, args)) = words.split_first() else {
        return Err(bad("empty command; try `status`"));
    };
    let one_slot = |args: &[&str]| -> Result<String, CtlError> {
        match args.first() {
            Some(s) if !s.starts_with("--") => Ok(s.to_string()),
            _ => Err(bad(format!(
                "`{cmd}` needs a slot name, e.g. `{cmd} green`"
            ))),
        }
    };
    match cmd {
        "status" if args.is_empty() => Ok(Command::Status),
        "weights" => {
            if args.is_empty() {
                return Err(bad("`weights` needs NAME=W pairs, e.g. `weights blue=90 green=10`"));
            }
            let mut out = Vec::new();
            for a in args {
                let (n, w) = a.split_once('=').ok_or_else(|| bad(format!("{a:?} is not NAME=W")))?;
                let w: u32 = w.parse().map_err(|_| bad(format!("weight {w:?} of {n} is not a whole number")))?;
                out.push((n.to_string(), w));
            }
            Ok(Command::Weights(out))
        }
        "flip" => {
            let slot = one_slot(args)?;
            let (mut no_probe, mut drain, mut wait) = (false, false, false);
            for a in &args[1..] {
                match *a {
                    "--no-probe" => no_probe = true,
                    "--drain" => drain = true,
                    "--wait" => wait = true,
                    other => return Err(bad(format!("unknown flag {other:?} for flip (flags: --no-probe --drain --wait)"))),
                }
            }
            Ok(Command::Flip { slot, no_probe, drain, wait })
        }
        "drain" => {
            let slot = one_slot(args)?;
            let (mut wait, mut deadline) = (false, None);
            let mut it = args[1..].iter();
            while let Some(a) = it.next() {
                match *a {
                    "--wait" => wait = true,
                    "--deadline" => deadline = Some(dur(it.next().copied(), "--deadline")?),
                    other => return Err(bad(format!("unknown flag {other:?} for drain (flags: --wait --deadline DUR)"))),
                }
            }
            Ok(Command::Drain { slot, wait, deadline })
        }
        "wait" => {
            let slot = one_slot(args)?;
            let mut timeout = None;
            let mut it = args[1..].iter();
            while let Some(a) = it.next() {
                match *a {
                    "drained" => {}
                    "--timeout" => timeout = Some(dur(it.next().copied(), "--timeout")?),
                    other => return Err(bad(format!("unknown word {other:?} for wait (usage: wait SLOT drained [--timeout DUR])"))),
                }
            }
            Ok(Command::Wait { slot, timeout })
        }
        "retire" if args.len() == 1 => Ok(Command::Retire(one_slot(args)?)),
        "standby" if args.len() == 1 => Ok(Command::Standby(one_slot(args)?)),
        "retire" | "standby" => Err(bad(format!("usage: {cmd} SLOT"))),
        "status" => Err(bad("`status` takes no arguments")),
        "probe" if args.len() == 1 => Ok(Command::Probe(one_slot(args)?)),
        "probe" => Err(bad("usage: probe SLOT")),
        "rollback" if args.is_empty() => Ok(Command::Rollback),
        "rollback" => Err(bad("`rollback` takes no arguments: it goes back to the slot active before the last flip")),
        "deploy" => {
            let slot = one_slot(args)?;
            let (mut deadline, mut watch) = (None, None);
            let mut it = args[1..].iter();
            while let Some(a) = it.next() {
                match *a {
                    "--deadline" => deadline = Some(dur(it.next().copied(), "--deadline")?),
                    "--watch" => watch = Some(dur(it.next().copied(), "--watch")?),
                    other => return Err(bad(format!("unknown flag {other:?} for deploy (flags: --deadline DUR --watch DUR)"))),
                }
            }
            Ok(Command::Deploy { slot, deadline, watch })
        }
        "reload" if args.is_empty() => Ok(Command::Reload),
        "reload" => Err(bad("`reload` takes no arguments")),
        other => Err(bad(format!(
            "unknown command {other:?}; commands: status, flip, weights, drain, wait, probe, rollback, deploy, retire, standby, reload"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_commands() {
        assert_eq!(parse("status").ok(), Some(Command::Status));
        assert_eq!(
            parse("weights blue=90 green=10").ok(),
            Some(Command::Weights(vec![
                ("blue".into(), 90),
                ("green".into(), 10)
            ]))
        );
        assert_eq!(
            parse("flip green --no-probe --drain --wait").ok(),
            Some(Command::Flip {
                slot: "green".into(),
                no_probe: true,
                drain: true,
                wait: true
            })
        );
        assert_eq!(
            parse("drain blue --wait --deadline 2s").ok(),
            Some(Command::Drain {
                slot: "blue".into(),
                wait: true,
                deadline: Some(Duration::from_secs(2))
            })
        );
        assert_eq!(
            parse("wait blue drained").ok(),
            Some(Command::Wait {
                slot: "blue".into(),
                timeout: None
            })
        );
        assert_eq!(parse("bogus").err().map(|e| e.code), Some("bad_command"));
        assert_eq!(
            parse("weights blue=x").err().map(|e| e.code),
            Some("bad_command")
        );
        assert_eq!(
            parse("drain --wait").err().map(|e| e.code),
            Some("bad_command")
        );
    }
}
