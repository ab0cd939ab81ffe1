//! The one place that starts function processes and keeps them contained:
//! each runs in its own process group, dies with the gateway (parent-death
//! signal), is registered so a forced exit can kill every group, and is
//! tagged so that what escapes its group (`setsid` children, double-fork
//! daemons) is found and killed when it ends.
//!
//! **Threads.** Every fork happens on one thread, `fngate-processes`,
//! started on first use and never ended. Linux sends the parent-death
//! signal when the *thread* that forked exits, not the process: a child
//! forked by a worker thread that stops during shutdown, or by one of
//! tokio's blocking threads that ends after ten idle seconds, would be
//! killed early. One thread that lives as long as the process means a
//! function dies when, and only when, the gateway does. A second thread,
//! `fngate-sweeper`, also never ended, kills and reaps escapees, so that a
//! scan of `/proc` (milliseconds on a busy host) never delays a fork.
//!
//! **Containment.** The gateway is a child subreaper: a process orphaned by
//! a function's exit is re-parented to the gateway, not to init. Every
//! process started here carries [`TAG_VAR`] in its environment, unique to
//! it (a random per-gateway nonce and a serial), and inherited by whatever
//! it starts. When a process ends ([`FunctionProcess::finish`] or drop), its
//! group is killed at once; then the sweeper kills (`SIGKILL`) every process
//! of the gateway's uid whose `/proc/PID/environ` holds its exact tag, and
//! reaps those that are the gateway's children with `waitpid(pid)`, never
//! `waitpid(-1)`, which would steal tokio's children's statuses. The sweep
//! reads every process's `environ` (kernel threads and other users' fail at
//! once), a few milliseconds per sweep with a hundred processes; sweeps
//! that wait together share one scan.
//!
//! Limits: a descendant that drops the tag (execs with a fresh environment)
//! or runs as another user escapes the sweep, and when such a process
//! exits after having been re-parented to the gateway it stays a zombie
//! until the gateway exits. The parent-death signal is not inherited: when
//! the gateway is killed with `SIGKILL`, a function's own process dies but
//! the processes it started live on (a cgroup, e.g. systemd's
//! `KillMode=control-group`, covers them). A sweep still queued when the
//! gateway exits does not run.

use std::collections::{BTreeSet, HashSet};
use std::io;
use std::os::unix::fs::MetadataExt;
use std::process::ExitStatus;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock, mpsc};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::sys::prctl;
use nix::sys::signal::{Signal, kill, killpg};
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::{Pid, getpid, getppid};
use tokio::process::{Child, ChildStderr, ChildStdin, ChildStdout, Command};
use tokio::runtime::Handle;
use tokio::sync::oneshot;

/// The environment variable that tags every process started here, and
/// everything it starts. Configured `env` tables cannot set it (no
/// function's `env` may name an `FNGATE_` variable).
pub const TAG_VAR: &str = "FNGATE_PROCESS_TAG";

/// How often killed escapees are checked for reaping while some are left.
const REAP_POLL: Duration = Duration::from_millis(10);

/// How long a killed escapee is waited for before it is left to its parent.
const REAP_PATIENCE: Duration = Duration::from_secs(10);

/// How long a forced exit waits for what it killed to be reaped.
const KILL_ALL_PATIENCE: Duration = Duration::from_secs(2);

/// Scans per sweep at most: each finds what the previous one's victims
/// forked before they died.
const SWEEP_ROUNDS: usize = 8;

/// The leaders (and so the group ids) of the process groups started here
/// whose leader has not been reaped yet: what a forced exit kills.
static GROUPS: Mutex<BTreeSet<Pid>> = Mutex::new(BTreeSet::new());

/// Set by [`kill_all`]: a process that starts after it is killed at once.
static CLOSING: AtomicBool = AtomicBool::new(false);

/// A process started by [`FunctionProcess::start`], leader of its own
/// process group. Dropping it kills the group and sweeps its escapees in
/// the background; [`FunctionProcess::finish`] does the same and waits
/// until they have been sent `SIGKILL`.
#[derive(Debug)]
pub struct FunctionProcess {
    child: Child,
    pid: Pid,
    /// The group, until its leader has been reaped: its id may be reused
    /// once the leader and every member are gone.
    group: Option<Pid>,
    tag: String,
    /// Whether its escapees have been swept (or asked to be).
    swept: bool,
}

impl FunctionProcess {
    /// Starts `command` in a process group of its own, tagged, with
    /// `SIGKILL` as its parent-death signal and `kill_on_drop` set. The
    /// caller configures everything else (program, stdio, cwd, env).
    pub async fn start(mut command: Command) -> io::Result<FunctionProcess> {
        let runtime = Handle::try_current().map_err(io::Error::other)?;
        let tag = next_tag();
        command
            .process_group(0)
            .kill_on_drop(true)
            .env(TAG_VAR, &tag);
        die_with_gateway(&mut command);
        let (reply, started) = oneshot::channel();
        let request = Start {
            command,
            runtime,
            tag,
            reply,
        };
        thread()?.send(request).map_err(|_| thread_gone())?;
        started.await.map_err(|_| thread_gone())?
    }

    /// The process's id, which is also its group's.
    pub fn id(&self) -> Pid {
        self.pid
    }

    /// The value of [`TAG_VAR`] in its environment.
    pub fn tag(&self) -> &str {
        &self.tag
    }

    /// Its piped stdin, stdout and stderr (each once).
    pub fn take_stdio(&mut self) -> (Option<ChildStdin>, Option<ChildStdout>, Option<ChildStderr>) {
        (
            self.child.stdin.take(),
            self.child.stdout.take(),
            self.child.stderr.take(),
        )
    }

    /// Sends `signal` to the whole group, while its leader is not reaped.
    pub fn signal(&self, signal: Signal) {
        if let Some(group) = self.group {
            // ESRCH (nothing left in the group) is the normal case.
            let _ = killpg(group, signal);
        }
    }

    /// Sends `SIGKILL` to the whole group.
    pub fn kill(&self) {
        self.signal(Signal::SIGKILL);
    }

    /// Waits for the process to exit and reaps it; the rest of its group,
    /// what it left behind, is killed then. Cancel-safe.
    pub async fn wait(&mut self) -> io::Result<ExitStatus> {
        let status = self.child.wait().await?;
        if let Some(group) = self.group.take() {
            // The leader was reaped a moment ago: its id can only have been
            // reused if nothing is left in its group, and the kernel hands
            // out ids in order, so not within microseconds.
            let _ = killpg(group, Signal::SIGKILL);
            forget_group(group);
        }
        Ok(status)
    }

    /// Stops the process as instances are stopped: `SIGTERM` to the group,
    /// `SIGKILL` after `grace` if the leader is still running, then
    /// [`finish`](Self::finish). When the leader exits within the grace,
    /// the members still running are killed with it.
    pub async fn stop(mut self, grace: Duration) -> io::Result<ExitStatus> {
        self.signal(Signal::SIGTERM);
        let status = match tokio::time::timeout(grace, self.wait()).await {
            Ok(status) => status,
            Err(_) => {
                self.kill();
                self.wait().await
            }
        };
        self.finish().await;
        status
    }

    /// Kills what is left of the process: its group, then every process
    /// carrying its tag (escapees); returns once they have been sent
    /// `SIGKILL`. Reaping them goes on in the background.
    pub async fn finish(mut self) {
        let (done, swept) = oneshot::channel();
        self.end(Some(done));
        drop(self);
        let _ = swept.await;
    }

    fn end(&mut self, done: Option<oneshot::Sender<()>>) {
        if let Some(group) = self.group.take() {
            let _ = killpg(group, Signal::SIGKILL);
            forget_group(group);
        }
        if std::mem::replace(&mut self.swept, true) {
            return;
        }
        let sweep = Sweep {
            tag: self.tag.clone(),
            leader: self.pid,
            done,
        };
        match sweeper() {
            Ok(sweeper) => {
                let _ = sweeper.send(sweep);
            }
            Err(e) => tracing::error!(error = %e, "cannot sweep a function's processes"),
        }
    }
}

impl Drop for FunctionProcess {
    fn drop(&mut self) {
        self.end(None);
    }
}

/// Kills every process started here that is still running, their groups
/// and their escapees, and reaps them (waiting up to two seconds), for a
/// forced exit: call it right before `std::process::exit`. Processes
/// starting meanwhile are killed as soon as they have started. It steals
/// tokio's exit statuses of the leaders, which nobody reads afterwards.
pub fn kill_all() {
    CLOSING.store(true, Ordering::SeqCst);
    let groups: Vec<Pid> = lock_groups().iter().copied().collect();
    for &group in &groups {
        let _ = killpg(group, Signal::SIGKILL);
    }
    let ours = format!("{TAG_VAR}={:016x}-", nonce());
    let mut left = kill_tagged(|entry| entry.starts_with(ours.as_bytes()));
    for group in groups {
        if !left.contains(&group) {
            left.push(group);
        }
    }
    let give_up = Instant::now() + KILL_ALL_PATIENCE;
    while !left.is_empty() && Instant::now() < give_up {
        left.retain(|&pid| !reaped(pid));
        if !left.is_empty() {
            std::thread::sleep(Duration::from_millis(2));
        }
    }
}

/// The random part of every tag of this gateway process.
fn nonce() -> u64 {
    static NONCE: OnceLock<u64> = OnceLock::new();
    *NONCE.get_or_init(rand::random)
}

fn next_tag() -> String {
    static SERIAL: AtomicU64 = AtomicU64::new(1);
    let serial = SERIAL.fetch_add(1, Ordering::Relaxed);
    format!("{:016x}-{serial}", nonce())
}

/// Arms the parent-death signal in the child, between fork and exec:
/// `SIGKILL` when the thread that forked it (`fngate-processes`, which
/// lives as long as the gateway) ends, which is when the gateway ends,
/// even by `SIGKILL`.
///
/// `Command::pre_exec` is `unsafe` because the closure runs in the forked
/// child of a multi-threaded process, where only async-signal-safe work is
/// sound: another thread may have held the allocator's or any other lock
/// at the fork, and it is not there to release it. This closure makes two
/// raw system calls through nix (`prctl(PR_SET_PDEATHSIG)`, `getppid`),
/// which take no lock and allocate nothing; its error is an `io::Error`
/// built from a raw errno, which allocates nothing either; it reads only
/// `gateway`, a copied integer. It takes no lock and touches no state
/// shared with the parent's threads.
#[allow(unsafe_code)]
fn die_with_gateway(command: &mut Command) {
    let gateway = getpid();
    // SAFETY: see above: the closure is async-signal-safe.
    unsafe {
        command.pre_exec(move || {
            prctl::set_pdeathsig(Signal::SIGKILL).map_err(io::Error::from)?;
            // The gateway died between the fork and the prctl: the signal
            // will never come, so do not run at all.
            if getppid() != gateway {
                return Err(io::Error::from(Errno::ESRCH));
            }
            Ok(())
        });
    }
}

struct Start {
    command: Command,
    /// The caller's runtime, which the child's pipes and exit are
    /// registered with.
    runtime: Handle,
    tag: String,
    reply: oneshot::Sender<io::Result<FunctionProcess>>,
}

struct Sweep {
    tag: String,
    /// The process itself, tokio's child: never reaped here.
    leader: Pid,
    done: Option<oneshot::Sender<()>>,
}

fn thread_gone() -> io::Error {
    io::Error::other("the fngate-processes thread is gone")
}

/// The inbox of `fngate-processes`, the thread every fork happens on,
/// starting it on first use. Its sender is a static, so it never ends; a
/// panic while serving one request is caught, so that does not end it
/// either.
fn thread() -> io::Result<&'static mpsc::Sender<Start>> {
    static THREAD: OnceLock<Option<mpsc::Sender<Start>>> = OnceLock::new();
    THREAD
        .get_or_init(|| {
            inbox("fngate-processes", |starts: mpsc::Receiver<Start>| {
                if let Err(e) = prctl::set_child_subreaper(true) {
                    tracing::warn!(error = %e, "cannot become a child subreaper: processes that escape a function's group are re-parented to init, and not all are swept");
                }
                for start in starts {
                    survive(|| start_here(start));
                }
            })
        })
        .as_ref()
        .ok_or_else(thread_gone)
}

/// The inbox of `fngate-sweeper`, which kills escapees and reaps them, off
/// the fork thread: a scan of `/proc` takes milliseconds, a fork must not
/// wait for one.
fn sweeper() -> io::Result<&'static mpsc::Sender<Sweep>> {
    static SWEEPER: OnceLock<Option<mpsc::Sender<Sweep>>> = OnceLock::new();
    SWEEPER
        .get_or_init(|| inbox("fngate-sweeper", sweep_loop))
        .as_ref()
        .ok_or_else(|| io::Error::other("the fngate-sweeper thread is gone"))
}

/// Starts thread `name` serving what is sent to the returned sender.
fn inbox<T: Send + 'static>(
    name: &str,
    serve: impl FnOnce(mpsc::Receiver<T>) + Send + 'static,
) -> Option<mpsc::Sender<T>> {
    let (send, receive) = mpsc::channel();
    match std::thread::Builder::new()
        .name(name.into())
        .spawn(move || serve(receive))
    {
        Ok(_) => Some(send),
        Err(e) => {
            tracing::error!(error = %e, "cannot start the {name} thread");
            None
        }
    }
}

fn survive(work: impl FnOnce()) {
    if std::panic::catch_unwind(std::panic::AssertUnwindSafe(work)).is_err() {
        tracing::error!("a process thread caught a panic");
    }
}

fn start_here(start: Start) {
    let Start {
        mut command,
        runtime,
        tag,
        reply,
    } = start;
    let _context = runtime.enter();
    let process = command.spawn().and_then(|child| {
        let pid = child
            .id()
            .and_then(|pid| i32::try_from(pid).ok())
            .map(Pid::from_raw)
            .ok_or_else(|| io::Error::other("a started process has no id"))?;
        lock_groups().insert(pid);
        Ok(FunctionProcess {
            child,
            pid,
            group: Some(pid),
            tag,
            swept: false,
        })
    });
    if let Ok(process) = &process
        && CLOSING.load(Ordering::SeqCst)
    {
        process.kill();
    }
    // A caller that has gone drops the process here: killed and swept.
    let _ = reply.send(process);
}

/// `fngate-sweeper`: sweeps (all those waiting, with one scan) and polls
/// the killed escapees until they are reaped.
fn sweep_loop(sweeps: mpsc::Receiver<Sweep>) {
    let mut reaping = Reaping::default();
    loop {
        let first = if reaping.is_empty() {
            match sweeps.recv() {
                Ok(sweep) => Some(sweep),
                Err(_) => return,
            }
        } else {
            match sweeps.recv_timeout(REAP_POLL) {
                Ok(sweep) => Some(sweep),
                Err(mpsc::RecvTimeoutError::Timeout) => None,
                Err(mpsc::RecvTimeoutError::Disconnected) => return,
            }
        };
        let batch: Vec<Sweep> = first.into_iter().chain(sweeps.try_iter()).collect();
        if !batch.is_empty() {
            survive(|| sweep_here(batch, &mut reaping));
        }
        survive(|| reaping.poll());
    }
}

fn sweep_here(sweeps: Vec<Sweep>, reaping: &mut Reaping) {
    let wanted: HashSet<Vec<u8>> = sweeps.iter().map(|s| tag_entry(&s.tag)).collect();
    let killed = kill_tagged(|entry| wanted.contains(entry));
    reaping.add(
        killed
            .into_iter()
            .filter(|pid| !sweeps.iter().any(|s| s.leader == *pid)),
    );
    for sweep in sweeps {
        if let Some(done) = sweep.done {
            let _ = done.send(());
        }
    }
}

/// `TAG_VAR=tag`, as it appears in `/proc/PID/environ`.
fn tag_entry(tag: &str) -> Vec<u8> {
    format!("{TAG_VAR}={tag}").into_bytes()
}

/// Sends `SIGKILL` to every other process of the gateway's uid with an
/// environment entry that `matches`, scanning again while a scan finds
/// new ones; returns them.
fn kill_tagged(matches: impl Fn(&[u8]) -> bool) -> Vec<Pid> {
    let mut killed: Vec<Pid> = Vec::new();
    for _ in 0..SWEEP_ROUNDS {
        let found: Vec<Pid> = tagged(&matches)
            .into_iter()
            .filter(|pid| !killed.contains(pid))
            .collect();
        if found.is_empty() {
            break;
        }
        for &pid in &found {
            let _ = kill(pid, Signal::SIGKILL);
        }
        killed.extend(found);
    }
    killed
}

/// The processes other than the gateway, of the gateway's uid, whose
/// readable environment has an entry that `matches`. A zombie's
/// environment reads empty, so zombies are never listed.
fn tagged(matches: &impl Fn(&[u8]) -> bool) -> Vec<Pid> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let me = getpid().as_raw();
    let uid = own_uid();
    entries
        .flatten()
        .filter_map(|entry| {
            let pid: i32 = entry.file_name().to_str()?.parse().ok()?;
            if pid == me || Some(entry.metadata().ok()?.uid()) != uid {
                return None;
            }
            let environ = std::fs::read(entry.path().join("environ")).ok()?;
            let hit = environ.split(|&b| b == 0).any(matches);
            hit.then(|| Pid::from_raw(pid))
        })
        .collect()
}

/// The owner of the gateway's own `/proc` entry (its effective uid), which
/// other processes' entries are compared with.
fn own_uid() -> Option<u32> {
    static UID: OnceLock<Option<u32>> = OnceLock::new();
    *UID.get_or_init(|| std::fs::metadata("/proc/self").ok().map(|m| m.uid()))
}

/// Whether `pid` is gone for good: reaped now (it was the gateway's child),
/// or no longer in `/proc` (its own parent reaped it). A process that is
/// someone else's child may still be re-parented to the gateway.
fn reaped(pid: Pid) -> bool {
    match waitpid(pid, Some(WaitPidFlag::WNOHANG)) {
        Ok(WaitStatus::StillAlive) | Err(Errno::EINTR) => false,
        Ok(_) => true,
        Err(_) => !std::path::Path::new(&format!("/proc/{pid}")).exists(),
    }
}

fn lock_groups() -> std::sync::MutexGuard<'static, BTreeSet<Pid>> {
    // The set stays consistent whatever panicked while holding it.
    GROUPS.lock().unwrap_or_else(|e| e.into_inner())
}

fn forget_group(group: Pid) {
    lock_groups().remove(&group);
}

/// Escapees that were killed and wait to be reaped, each with the time
/// to give up on it.
#[derive(Default)]
struct Reaping(Vec<(Pid, Instant)>);

impl Reaping {
    fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    fn add(&mut self, pids: impl IntoIterator<Item = Pid>) {
        let give_up = Instant::now() + REAP_PATIENCE;
        self.0.extend(pids.into_iter().map(|pid| (pid, give_up)));
    }

    fn poll(&mut self) {
        let now = Instant::now();
        self.0
            .retain(|&(pid, give_up)| now < give_up && !reaped(pid));
    }
}

#[cfg(test)]
mod tests;
