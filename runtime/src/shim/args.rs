//! The shim's command line, as containerd writes it (Go's flag syntax):
//! `-namespace NS -address ADDR -publish-binary BIN -id ID [-bundle DIR]
//! [-debug] start|delete`, plus husk's own hidden `serve` action for the
//! daemon `start` leaves behind.

use std::ffi::OsString;
use std::path::PathBuf;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Start,
    Delete,
    /// The long-lived shim process (started by `start`).
    Serve,
    /// `-v`: print the version.
    Version,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShimArgs {
    pub namespace: String,
    /// containerd's gRPC address.
    pub address: String,
    pub publish_binary: String,
    pub id: String,
    pub bundle: Option<PathBuf>,
    pub debug: bool,
    pub action: Action,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ArgsError {
    #[error("flag -{0} needs a value")]
    MissingValue(String),
    #[error("unknown flag -{0}")]
    UnknownFlag(String),
    #[error("unknown action {0:?}: expected start or delete")]
    UnknownAction(String),
    #[error("no action given: expected start or delete")]
    NoAction,
    #[error("flag -{0} is required")]
    Required(&'static str),
}

impl ShimArgs {
    pub fn parse(args: &[OsString]) -> Result<Self, ArgsError> {
        let mut out = ShimArgs {
            namespace: String::new(),
            address: String::new(),
            publish_binary: String::new(),
            id: String::new(),
            bundle: None,
            debug: false,
            action: Action::Start,
        };
        let mut action = None;
        let mut words = args.iter().map(|a| a.to_string_lossy().into_owned());
        while let Some(word) = words.next() {
            let Some(flag) = word.strip_prefix("--").or_else(|| word.strip_prefix('-')) else {
                action = Some(parse_action(&word)?);
                continue;
            };
            let (name, inline) = match flag.split_once('=') {
                Some((n, v)) => (n.to_string(), Some(v.to_string())),
                None => (flag.to_string(), None),
            };
            if name == "debug" || name == "v" {
                let on = inline.as_deref().is_none_or(|v| v != "false");
                if name == "v" {
                    action = Some(Action::Version);
                } else {
                    out.debug = on;
                }
                continue;
            }
            let value = match inline {
                Some(v) => v,
                None => words
                    .next()
                    .ok_or_else(|| ArgsError::MissingValue(name.clone()))?,
            };
            match name.as_str() {
                "namespace" => out.namespace = value,
                "address" => out.address = value,
                "publish-binary" => out.publish_binary = value,
                "id" => out.id = value,
                "bundle" => out.bundle = Some(PathBuf::from(value)),
                // containerd 2.x's extra flags carry nothing husk needs.
                "socket" | "debug-address" => {}
                _ => return Err(ArgsError::UnknownFlag(name)),
            }
        }
        out.action = action.ok_or(ArgsError::NoAction)?;
        if out.action != Action::Version {
            for (name, value) in [("namespace", &out.namespace), ("id", &out.id)] {
                if value.is_empty() {
                    return Err(ArgsError::Required(name));
                }
            }
        }
        Ok(out)
    }
}

fn parse_action(word: &str) -> Result<Action, ArgsError> {
    match word {
        "start" => Ok(Action::Start),
        "delete" => Ok(Action::Delete),
        "serve" => Ok(Action::Serve),
        other => Err(ArgsError::UnknownAction(other.to_string())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Result<ShimArgs, ArgsError> {
        let v: Vec<OsString> = s.split_whitespace().map(OsString::from).collect();
        ShimArgs::parse(&v)
    }

    #[test]
    fn containerds_start_and_delete_lines_parse() {
        let a = parse("-namespace default -address /run/c.sock -publish-binary /usr/bin/containerd -id c1 -debug start").unwrap();
        assert_eq!(
            (
                a.namespace.as_str(),
                a.address.as_str(),
                a.id.as_str(),
                a.debug,
                a.action
            ),
            ("default", "/run/c.sock", "c1", true, Action::Start)
        );
        let a = parse("-namespace=k8s.io -id=c2 -bundle /b delete").unwrap();
        assert_eq!(
            (a.action, a.bundle),
            (Action::Delete, Some(PathBuf::from("/b")))
        );
        assert_eq!(parse("-v").unwrap().action, Action::Version);
    }

    #[test]
    fn bad_lines_say_what_is_wrong() {
        assert_eq!(
            parse("-namespace"),
            Err(ArgsError::MissingValue("namespace".into()))
        );
        assert_eq!(
            parse("-id c1 -namespace n -frob x start"),
            Err(ArgsError::UnknownFlag("frob".into()))
        );
        assert_eq!(parse("-id c1 -namespace n"), Err(ArgsError::NoAction));
        assert_eq!(
            parse("-id c1 -namespace n launch"),
            Err(ArgsError::UnknownAction("launch".into()))
        );
        assert_eq!(parse("-namespace n start"), Err(ArgsError::Required("id")));
    }
}
