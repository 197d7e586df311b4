//! Parsing `--net [tap=NAME][,mac=MAC][,mtu=N]` (or `--net none`) for
//! `husk vm`, and opening the tap by name in husk's own network namespace:
//! a way to try the device by hand. Sandboxes get taps the runtime opens
//! inside the pod's namespace instead.

use std::sync::Arc;

use anyhow::Context;
use husk_vmm::{MacAddr, NetSpec, Tap};

const SYNTAX: &str = "expected [tap=NAME][,mac=02:..][,mtu=N], or none";

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NetArg {
    /// Tap to open or create; none: a device without a backend.
    pub tap: Option<String>,
    pub mac: Option<MacAddr>,
    pub mtu: Option<u16>,
}

pub fn parse_net(text: &str) -> Result<NetArg, String> {
    let mut arg = NetArg::default();
    if text == "none" {
        return Ok(arg);
    }
    for part in text.split(',') {
        match part.split_once('=') {
            Some(("tap", name)) if !name.is_empty() => arg.tap = Some(name.into()),
            Some(("mac", mac)) => arg.mac = Some(mac.parse().map_err(|e| format!("{e}"))?),
            Some(("mtu", mtu)) => {
                arg.mtu = Some(mtu.parse().map_err(|_| format!("invalid MTU {mtu:?}"))?)
            }
            _ => return Err(format!("invalid net option {part:?}: {SYNTAX}")),
        }
    }
    Ok(arg)
}

impl NetArg {
    /// Opens the tap (if any) and makes the device's spec; `default_mtu`
    /// when no MTU was given.
    pub fn open(&self, default_mtu: u16) -> anyhow::Result<NetSpec> {
        let tap = match &self.tap {
            Some(name) => Some(Arc::new(
                Tap::open_named(name).with_context(|| format!("while opening tap {name}"))?,
            )),
            None => None,
        };
        Ok(NetSpec {
            mac: self.mac,
            mtu: self.mtu.unwrap_or(default_mtu),
            tap,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_net_options_and_names_bad_parts() {
        let a = parse_net("tap=t0,mac=02:00:00:00:00:07,mtu=9000").unwrap();
        assert_eq!(a.tap.as_deref(), Some("t0"));
        assert_eq!(
            a.mac.map(|m| m.to_string()).as_deref(),
            Some("02:00:00:00:00:07")
        );
        assert_eq!(a.mtu, Some(9000));
        assert_eq!(parse_net("none").unwrap(), NetArg::default());
        assert_eq!(parse_net("mtu=1400").unwrap().tap, None);
        let err = |s: &str| parse_net(s).unwrap_err();
        assert!(err("tap=").contains("\"tap=\""));
        assert!(err("mac=01:00:5e:00:00:01").contains("multicast"));
        assert!(err("mtu=big").contains("\"big\""));
        assert!(err("bridge=br0").contains("\"bridge=br0\""));
    }
}
