//! The guest kernel command line: one builder that the VM, its devices and
//! the compat profile add words to, rendered once.
//!
//! It starts from the user's text (or `DEFAULT_CMDLINE`); words after `--`
//! are arguments for /init and stay last, every word husk adds is a kernel
//! parameter and goes before them. The length limit and the `--` split are
//! linux-loader's `Cmdline`.

use linux_loader::cmdline::{Cmdline, Error as CmdlineError};
use vm_memory::GuestAddress;

use crate::layout::CMDLINE_MAX;
use crate::resources::MMIO_WINDOW;

/// Base command line when the user gives none.
pub const DEFAULT_CMDLINE: &str = "console=ttyS0 reboot=k panic=-1";

#[derive(Debug, thiserror::Error)]
#[error("invalid kernel command line {text:?}: {source}")]
pub struct CmdlineBuildError {
    text: String,
    source: CmdlineError,
}

pub struct KernelCmdline {
    inner: Cmdline,
    /// The user's kernel parameters (before `--`), for `has_param`.
    user_params: Vec<String>,
}

impl KernelCmdline {
    /// Starts from `base`: `<kernel params> [-- <init args>]`.
    pub fn new(base: &str) -> Result<Self, CmdlineBuildError> {
        let fail = |source| CmdlineBuildError {
            text: base.to_string(),
            source,
        };
        let padded = format!(" {base} ");
        let (params, init) = match padded.find(" -- ") {
            Some(at) => (padded[..at].trim(), Some(padded[at + 4..].trim())),
            None => (padded.trim(), None),
        };
        let mut inner = Cmdline::new(CMDLINE_MAX).map_err(fail)?;
        if !params.is_empty() {
            inner.insert_str(params).map_err(fail)?;
        }
        if let Some(init) = init.filter(|i| !i.is_empty()) {
            inner.insert_init_args(init).map_err(fail)?;
        }
        Ok(Self {
            inner,
            user_params: params.split_whitespace().map(str::to_string).collect(),
        })
    }

    /// Adds a kernel parameter (or several, space separated).
    pub fn push(&mut self, words: &str) -> Result<(), CmdlineBuildError> {
        self.inner
            .insert_str(words)
            .map_err(|source| CmdlineBuildError {
                text: words.to_string(),
                source,
            })
    }

    /// Announces a virtio-mmio device (`virtio_mmio.device=4K@BASE:IRQ`).
    pub fn add_virtio_mmio(
        &mut self,
        base: GuestAddress,
        irq: u32,
    ) -> Result<(), CmdlineBuildError> {
        self.inner
            .add_virtio_mmio_device(MMIO_WINDOW, base, irq, None)
            .map_err(|source| CmdlineBuildError {
                text: format!("virtio_mmio.device at {:#x}", base.0),
                source,
            })
    }

    /// Whether the user's own parameters include `name=...` (e.g. "root").
    pub fn user_has_param(&self, name: &str) -> bool {
        self.user_params
            .iter()
            .any(|w| w.split_once('=').is_some_and(|(k, _)| k == name))
    }

    /// The whole line, as the guest will see it.
    pub fn render(&self) -> String {
        self.inner
            .as_cstring()
            .map(|c| c.to_string_lossy().into_owned())
            .unwrap_or_default()
    }

    pub fn as_cmdline(&self) -> &Cmdline {
        &self.inner
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with(base: &str, words: &[&str]) -> String {
        let mut c = KernelCmdline::new(base).unwrap();
        for w in words {
            c.push(w).unwrap();
        }
        c.render()
    }

    #[test]
    fn added_words_go_before_init_arguments() {
        assert_eq!(with("console=ttyS0", &["a=1", "b"]), "console=ttyS0 a=1 b");
        assert_eq!(
            with("console=ttyS0 -- run x -- y", &["a=1 b"]),
            "console=ttyS0 a=1 b -- run x -- y"
        );
        assert_eq!(with("-- idle", &["a=1", "b"]), "a=1 b -- idle");
        assert_eq!(with("console=ttyS0", &[]), "console=ttyS0");
    }

    #[test]
    fn devices_are_announced_and_user_params_found() {
        let mut c = KernelCmdline::new("root=/dev/vda -- init").unwrap();
        c.add_virtio_mmio(GuestAddress(0xd000_0000), 5).unwrap();
        assert_eq!(
            c.render(),
            "root=/dev/vda virtio_mmio.device=4K@0xd0000000:5 -- init"
        );
        assert!(c.user_has_param("root"));
        assert!(!c.user_has_param("console"));
        assert!(!KernelCmdline::new("-- root=x")
            .unwrap()
            .user_has_param("root"));
    }

    #[test]
    fn an_overlong_line_is_an_error_naming_it() {
        let mut c = KernelCmdline::new(DEFAULT_CMDLINE).unwrap();
        let long = "x".repeat(CMDLINE_MAX);
        let err = c.push(&long).unwrap_err();
        assert!(err.to_string().contains("xxxx"), "{err}");
    }
}
