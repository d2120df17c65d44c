//! Process hardening at start: keys must not leave memory through a core dump, a debugger
//! attached by another user, or swap.
//!
//! Core dumps are switched off (RLIMIT_CORE = 0) and the process is marked not dumpable,
//! which also stops other non-root processes of the same user from attaching with ptrace
//! or reading /proc/<pid>/mem. Memory is locked (mlockall, current and future pages) only
//! when RLIMIT_MEMLOCK is unlimited (systemd `LimitMEMLOCK=infinity`, or CAP_IPC_LOCK):
//! under a finite limit, locking future pages would make later allocations fail. When it
//! cannot lock, the server says so; use encrypted swap or no swap (docs/deployment.md).

use rustix::mm::{MlockAllFlags, mlockall};
use rustix::process::{
    DumpableBehavior, Resource, Rlimit, getrlimit, set_dumpable_behavior, setrlimit,
};

/// What [`harden_process`] achieved.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Hardening {
    pub core_dumps_off: bool,
    pub not_dumpable: bool,
    pub memory_locked: bool,
}

pub fn harden_process() -> Hardening {
    let core_dumps_off = setrlimit(
        Resource::Core,
        Rlimit {
            current: Some(0),
            maximum: Some(0),
        },
    )
    .is_ok();
    let not_dumpable = set_dumpable_behavior(DumpableBehavior::NotDumpable).is_ok();
    let memlock = getrlimit(Resource::Memlock);
    let memory_locked = memlock.current.is_none()
        && mlockall(MlockAllFlags::CURRENT | MlockAllFlags::FUTURE).is_ok();
    let h = Hardening {
        core_dumps_off,
        not_dumpable,
        memory_locked,
    };
    if !core_dumps_off || !not_dumpable {
        tracing::warn!(?h, "could not fully disable core dumps");
    }
    if !memory_locked {
        tracing::warn!(
            "key memory is not locked (RLIMIT_MEMLOCK is finite): it could reach swap; raise the limit (LimitMEMLOCK=infinity) or run without unencrypted swap"
        );
    }
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn core_dumps_are_off_after_hardening() {
        let h = harden_process();
        assert!(h.core_dumps_off && h.not_dumpable, "{h:?}");
        assert_eq!(getrlimit(Resource::Core).current, Some(0));
        assert_eq!(
            rustix::process::dumpable_behavior().unwrap(),
            DumpableBehavior::NotDumpable
        );
    }
}
