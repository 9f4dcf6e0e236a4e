//! Node processes the CLI started: whether one is still alive, and stopping them.
//!
//! The CLI exits right after `cluster up`, so later commands know a node only by the pid it
//! wrote down. A pid file can outlive its process and the kernel reuses pids, so a pid counts
//! as a running node only if that process's command line names the node's config file; a
//! process that exited but was never reaped (a zombie, as under a container init that does not
//! reap) counts as gone.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use rustix::io::Errno;
use rustix::process::{kill_process, test_kill_process, Pid, Signal};
use serde::Serialize;

use crate::error::Error;

/// How long `cluster down` waits for nodes to exit after SIGTERM before it sends SIGKILL.
pub const STOP_GRACE_DEFAULT: Duration = Duration::from_secs(20);
/// How long to wait for the kernel to remove a process after SIGKILL.
pub const KILL_WAIT: Duration = Duration::from_secs(5);
/// Pause between two liveness checks while waiting for processes to exit.
pub const POLL_PAUSE: Duration = Duration::from_millis(50);

/// How often an empty `/proc/PID/cmdline` is read again before the process counts as foreign.
const CMDLINE_EMPTY_RETRIES: usize = 20;
/// Pause between those reads.
const CMDLINE_EMPTY_PAUSE: Duration = Duration::from_millis(5);

/// What a pid currently is, as far as a node of ours goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Liveness {
    /// A live process running the node with this config.
    Running,
    /// No such process, or one that has exited and waits to be reaped.
    Gone,
    /// A live process, but not this node (the pid was reused).
    Foreign,
}

/// A node process known by its pid and config file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeProcess {
    /// The node id.
    pub node: u64,
    /// The process id.
    pub pid: u32,
    /// The config file the node was started with; its command line names it.
    pub config: PathBuf,
}

/// Whether `pid` is a live process started with `--config config`.
pub fn liveness(pid: u32, config: &Path) -> Liveness {
    let Some(pid_value) = to_pid(pid) else {
        return Liveness::Gone;
    };
    // Signal 0 checks for existence without sending anything; EPERM means it exists but is
    // someone else's, which can never be a node we started.
    match test_kill_process(pid_value) {
        Ok(()) => {}
        Err(Errno::PERM) => return Liveness::Foreign,
        Err(_) => return Liveness::Gone,
    }
    let proc_dir = PathBuf::from(format!("/proc/{pid}"));
    let Ok(stat) = std::fs::read_to_string(proc_dir.join("stat")) else {
        // No procfs (not Linux): existence is all there is to know.
        return Liveness::Running;
    };
    if is_exited(&stat) {
        return Liveness::Gone;
    }
    // A process in the middle of exec shows an empty command line for a moment (right after
    // `spawn` returns, for one); kernel threads show one for good. Look again briefly.
    for _ in 0..CMDLINE_EMPTY_RETRIES {
        match std::fs::read(proc_dir.join("cmdline")) {
            Ok(cmdline) if cmdline.is_empty() => std::thread::sleep(CMDLINE_EMPTY_PAUSE),
            Ok(cmdline) if cmdline_names(&cmdline, config) => return Liveness::Running,
            Ok(_) => return Liveness::Foreign,
            Err(_) => return Liveness::Gone,
        }
    }
    Liveness::Foreign
}

/// A process id as the kernel takes it; `None` for 0 (which names the caller's process group,
/// never a node) and for values beyond `i32`.
fn to_pid(pid: u32) -> Option<Pid> {
    Pid::from_raw(i32::try_from(pid).ok()?)
}

/// True when a `/proc/PID/stat` line shows a zombie or dead process.
fn is_exited(stat: &str) -> bool {
    // The command name is in parentheses and may itself hold spaces and parentheses; the
    // state letter follows the last closing one.
    let state = stat.rfind(')').and_then(|end| stat[end + 1..].split_whitespace().next());
    matches!(state, Some("Z" | "X" | "x"))
}

/// True when a NUL-separated command line has `config` as one of its arguments.
fn cmdline_names(cmdline: &[u8], config: &Path) -> bool {
    use std::os::unix::ffi::OsStrExt;
    let wanted = config.as_os_str().as_bytes();
    cmdline.split(|&byte| byte == 0).any(|argument| argument == wanted)
}

/// How a node's stop went.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum StopOutcome {
    /// It exited after SIGTERM.
    Stopped,
    /// It did not exit within the grace period and was sent SIGKILL.
    Killed,
    /// It was not running (stale pid file, or the pid now belongs to another process).
    NotRunning,
}

/// One node's stop.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Stopped {
    /// The node id.
    pub node: u64,
    /// The process id.
    pub pid: u32,
    /// What happened.
    pub outcome: StopOutcome,
    /// Time from the signal to the process being gone, in milliseconds (0 if not running).
    pub elapsed_ms: u64,
}

/// Sends SIGTERM to every running process, waits up to `grace` for all to exit, SIGKILLs the
/// rest, and reports each in the order given.
pub fn stop(processes: &[NodeProcess], grace: Duration) -> Result<Vec<Stopped>, Error> {
    let started = Instant::now();
    let mut report: Vec<Stopped> = Vec::with_capacity(processes.len());
    let mut pending: Vec<usize> = Vec::new();
    for (index, process) in processes.iter().enumerate() {
        let outcome = match liveness(process.pid, &process.config) {
            Liveness::Running if signal(process, Signal::TERM)? => {
                pending.push(index);
                StopOutcome::Stopped
            }
            Liveness::Running => StopOutcome::NotRunning,
            Liveness::Gone | Liveness::Foreign => StopOutcome::NotRunning,
        };
        report.push(Stopped { node: process.node, pid: process.pid, outcome, elapsed_ms: 0 });
    }
    pending = wait_gone(processes, pending, &mut report, started, grace);
    if pending.is_empty() {
        return Ok(report);
    }
    for &index in &pending {
        signal(&processes[index], Signal::KILL)?;
        report[index].outcome = StopOutcome::Killed;
    }
    let still_alive = wait_gone(processes, pending, &mut report, started, grace + KILL_WAIT);
    for index in still_alive {
        // The kernel had not removed it yet; it cannot survive SIGKILL, so record it now.
        report[index].elapsed_ms = started.elapsed().as_millis() as u64;
    }
    Ok(report)
}

/// Sends `signal`; false if the process was already gone.
fn signal(process: &NodeProcess, signal: Signal) -> Result<bool, Error> {
    let pid = to_pid(process.pid).expect("liveness accepted the pid");
    match kill_process(pid, signal) {
        Ok(()) => Ok(true),
        Err(Errno::SRCH) => Ok(false),
        Err(errno) => Err(Error::Signal {
            node: process.node,
            pid: process.pid,
            source: std::io::Error::from_raw_os_error(errno.raw_os_error()),
        }),
    }
}

/// Polls the `pending` processes until they are gone or `deadline_after` has passed since
/// `started`, recording when each went; returns those still alive.
fn wait_gone(
    processes: &[NodeProcess],
    mut pending: Vec<usize>,
    report: &mut [Stopped],
    started: Instant,
    deadline_after: Duration,
) -> Vec<usize> {
    loop {
        pending.retain(|&index| {
            let process = &processes[index];
            let alive = liveness(process.pid, &process.config) == Liveness::Running;
            if !alive {
                report[index].elapsed_ms = started.elapsed().as_millis() as u64;
            }
            alive
        });
        if pending.is_empty() || started.elapsed() >= deadline_after {
            return pending;
        }
        std::thread::sleep(POLL_PAUSE);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::{Child, Command, Stdio};

    /// A shell that idles and carries `config` on its command line, like a node would. It
    /// sleeps in short steps so that no sleeping grandchild outlives it for long, and it is
    /// killed when dropped, so a failing test leaks no process.
    struct FakeNode(Child);

    impl FakeNode {
        fn start(config: &Path, ignore_term: bool) -> Self {
            let idle = "while :; do sleep 0.05; done";
            let script = if ignore_term { format!("trap '' TERM; {idle}") } else { idle.to_string() };
            Self(Command::new("sh").arg("-c").arg(script).arg(config).stdout(Stdio::null()).spawn().unwrap())
        }

        fn id(&self) -> u32 {
            self.0.id()
        }
    }

    impl Drop for FakeNode {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }

    #[test]
    fn stat_state_is_read_after_the_command_name() {
        assert!(is_exited("42 (natter-node) Z 1 42 42"));
        assert!(is_exited("42 (odd) name) Z 1"));
        assert!(!is_exited("42 (natter-node) S 1 42 42"));
        assert!(!is_exited("garbage"));
    }

    #[test]
    fn a_process_is_ours_only_if_its_command_line_names_the_config() {
        let config = Path::new("/tmp/natter-cluster/node-1.toml");
        let mut node = FakeNode::start(config, false);
        let pid = node.id();
        // Asked right after spawn, while the child may still be inside exec.
        assert_eq!(liveness(pid, config), Liveness::Running);
        assert_eq!(liveness(pid, Path::new("/tmp/other/node-1.toml")), Liveness::Foreign);
        node.0.kill().unwrap();
        // Not reaped yet: a zombie is gone as far as nodes go.
        std::thread::sleep(Duration::from_millis(100));
        assert_eq!(liveness(pid, config), Liveness::Gone);
        node.0.wait().unwrap();
        assert_eq!(liveness(pid, config), Liveness::Gone);
    }

    #[test]
    fn stop_terminates_then_kills_what_ignores_sigterm() {
        let dir = tempfile::tempdir().unwrap();
        let polite = dir.path().join("node-1.toml");
        let stubborn = dir.path().join("node-2.toml");
        let nodes = [FakeNode::start(&polite, false), FakeNode::start(&stubborn, true)];
        // Let the second shell install its trap before it is signalled.
        std::thread::sleep(Duration::from_millis(200));
        let processes = [
            NodeProcess { node: 1, pid: nodes[0].id(), config: polite },
            NodeProcess { node: 2, pid: nodes[1].id(), config: stubborn },
            NodeProcess { node: 3, pid: nodes[1].id(), config: dir.path().join("node-3.toml") },
        ];
        let report = stop(&processes, Duration::from_millis(300)).unwrap();
        let outcomes: Vec<StopOutcome> = report.iter().map(|stopped| stopped.outcome).collect();
        assert_eq!(outcomes, [StopOutcome::Stopped, StopOutcome::Killed, StopOutcome::NotRunning]);
        assert!(report[1].elapsed_ms >= 300, "{report:?}");
    }
}
