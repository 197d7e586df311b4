//! An allowlist as husk writes it: system calls by name, some only with
//! given arguments (an ioctl's request, a socket's domain), turned into
//! seccompiler's rule map at compile time.
//!
//! A call allowed without conditions stays so whatever conditional rules
//! are added for it later; conditional rules for one call are alternatives.

use std::collections::BTreeMap;

use seccompiler::{SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompRule};
use syscalls::Sysno;

/// A call's entry: None allows it whatever its arguments.
type Entry = Option<Vec<SeccompRule>>;

#[derive(Debug, Clone, Default)]
pub struct Allowlist {
    calls: BTreeMap<i64, Entry>,
}

impl Allowlist {
    pub fn new() -> Self {
        Self::default()
    }

    /// Allows each of `calls`, whatever their arguments.
    pub fn allow(&mut self, calls: &[Sysno]) -> &mut Self {
        for call in calls {
            self.calls.insert(i64::from(call.id()), None);
        }
        self
    }

    /// Allows `call` when its 32-bit argument `arg` is one of `values`.
    pub fn allow_arg(&mut self, call: Sysno, arg: u8, values: &[u64]) -> &mut Self {
        for &value in values {
            self.allow_when(call, &[(arg, SeccompCmpOp::Eq, value)]);
        }
        self
    }

    /// Allows `call` when its 32-bit argument `arg`, masked with `mask`,
    /// is one of `values` (an ioctl request's type byte, for instance).
    pub fn allow_masked(&mut self, call: Sysno, arg: u8, mask: u64, values: &[u64]) -> &mut Self {
        for &value in values {
            self.allow_when(call, &[(arg, SeccompCmpOp::MaskedEq(mask), value)]);
        }
        self
    }

    /// Allows `call` when every (argument, comparison, value) holds; the
    /// arguments are compared as 32-bit values (ints, fds, ioctl requests).
    pub fn allow_when(&mut self, call: Sysno, conditions: &[(u8, SeccompCmpOp, u64)]) -> &mut Self {
        let conditions = conditions
            .iter()
            .map(|(arg, op, value)| {
                SeccompCondition::new(*arg, SeccompCmpArgLen::Dword, op.clone(), *value)
                    .expect("argument index below 6")
            })
            .collect();
        let rule = SeccompRule::new(conditions).expect("at least one condition");
        if let Some(rules) = self
            .calls
            .entry(i64::from(call.id()))
            .or_insert_with(|| Some(Vec::new()))
        {
            rules.push(rule);
        }
        self
    }

    /// Adds everything `other` allows.
    pub fn extend(&mut self, other: &Allowlist) -> &mut Self {
        for (&call, entry) in &other.calls {
            match (self.calls.get_mut(&call), entry) {
                (Some(Some(mine)), Some(theirs)) => mine.extend(theirs.iter().cloned()),
                (Some(mine), None) => *mine = None,
                (Some(None), Some(_)) => {}
                (None, _) => {
                    self.calls.insert(call, entry.clone());
                }
            }
        }
        self
    }

    /// Whether `call` is allowed at all (with or without conditions).
    pub fn mentions(&self, call: Sysno) -> bool {
        self.calls.contains_key(&i64::from(call.id()))
    }

    /// Whether `call` is allowed whatever its arguments.
    pub fn allows_any_args(&self, call: Sysno) -> bool {
        matches!(self.calls.get(&i64::from(call.id())), Some(None))
    }

    /// The names of the allowed calls, for documentation and tests.
    pub fn names(&self) -> Vec<&'static str> {
        self.calls
            .keys()
            .filter_map(|&id| usize::try_from(id).ok().and_then(Sysno::new))
            .map(|s| s.name())
            .collect()
    }

    /// seccompiler's form: an empty rule list matches any arguments.
    pub(super) fn into_rules(self) -> BTreeMap<i64, Vec<SeccompRule>> {
        self.calls
            .into_iter()
            .map(|(call, entry)| (call, entry.unwrap_or_default()))
            .collect()
    }
}
