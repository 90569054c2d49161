//! Commands a dead redrive left running. A command dies with redrive (`setpriv --pdeathsig`),
//! but what it started in the background (`convert … &`, a daemonising tool) is orphaned, and
//! a resumed run would start the same work beside it. So every command carries its owner in
//! its environment, which whatever it starts inherits: `REDRIVE_RUN_OWNER=PID:START:JOB`
//! (redrive's process id and start time, and the job's log folder). Before its first command a
//! run kills the processes of its job whose owner is no longer alive (the process id gone, or
//! reused: another start time). Live owners are left alone, so workers sharing a job on one
//! host never touch each other's commands.

use std::path::Path;

/// The variable that names a command's owner.
pub(crate) const OWNER_VAR: &str = "REDRIVE_RUN_OWNER";

/// This process as an owner of the commands of the job whose logs are in `job`.
pub(crate) fn owner(job: &Path) -> String {
    let pid = std::process::id();
    let start = start_time(pid).unwrap_or_default();
    format!("{pid}:{start}:{}", job.display())
}

/// A process's start time (clock ticks after boot), from `/proc/PID/stat`.
fn start_time(pid: u32) -> Option<String> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // `pid (comm) state ppid …`: the command may hold spaces and parentheses, so fields are
    // counted after the last `)`; the start time is field 22, the 20th after it.
    let after = &stat[stat.rfind(')')? + 1..];
    after.split_whitespace().nth(19).map(str::to_owned)
}

/// Whether the owner `pid:start` is alive.
fn alive(owner: &str) -> bool {
    let mut parts = owner.splitn(3, ':');
    let (Some(pid), Some(start)) = (parts.next(), parts.next()) else {
        return true;
    };
    match pid.parse::<u32>() {
        Ok(pid) => start_time(pid).as_deref() == Some(start),
        // Not a value this module wrote: not ours to judge.
        Err(_) => true,
    }
}

/// Kills the processes of job `job` whose owner is dead; returns how many. A Linux `/proc`
/// is read; elsewhere (or unreadable) nothing is done.
pub(crate) fn sweep(job: &Path) -> usize {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return 0;
    };
    let me = std::process::id();
    let suffix = format!(":{}", job.display());
    let mut killed = 0;
    for entry in entries.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        if pid == me {
            continue;
        }
        // Another user's processes (and kernel threads) cannot be read: not ours.
        let Ok(environ) = std::fs::read(entry.path().join("environ")) else {
            continue;
        };
        let prefix = format!("{OWNER_VAR}=");
        let Some(owner) = environ
            .split(|b| *b == 0)
            .filter_map(|var| std::str::from_utf8(var).ok())
            .find_map(|var| var.strip_prefix(prefix.as_str()))
        else {
            continue;
        };
        if !owner.ends_with(&suffix) || alive(owner) {
            continue;
        }
        let Some(target) = i32::try_from(pid)
            .ok()
            .and_then(rustix::process::Pid::from_raw)
        else {
            continue;
        };
        if rustix::process::kill_process(target, rustix::process::Signal::KILL).is_ok() {
            tracing::warn!(
                pid,
                "Killed a command left running by a redrive that died (it would have run beside this run's)."
            );
            killed += 1;
        }
    }
    killed
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_process_is_an_alive_owner_and_a_gone_one_is_not() {
        let me = owner(Path::new("/tmp/job"));
        assert!(me.ends_with(":/tmp/job"), "{me}");
        assert!(alive(&me));
        let pid = std::process::id();
        assert!(
            !alive(&format!("{pid}:1:/tmp/job")),
            "another start time: reused"
        );
        assert!(!alive("4194305:1:/tmp/job"), "no such process");
        assert!(alive("not-a-pid:1:/tmp/job"), "not ours to judge");
    }
}
