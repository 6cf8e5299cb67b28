//! What the agent reads from /proc: a process's state, start time and memory.
//!
//! A zombie counts as exited: on hosts whose PID 1 does not reap orphans, a
//! gateway whose parent died stays in state `Z` after it ends.

use std::path::Path;

/// The fields of /proc/PID/stat the agent uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProcStat {
    /// R, S, D, Z, T, X, ...
    pub state: char,
    /// Clock ticks after boot when the process started; with the pid it
    /// identifies a process across pid reuse.
    pub start_ticks: u64,
    /// Resident pages.
    pub rss_pages: u64,
}

impl ProcStat {
    /// Alive in the sense that matters: not a zombie, not dead.
    pub fn is_alive(&self) -> bool {
        !matches!(self.state, 'Z' | 'X' | 'x')
    }
}

/// A process recorded in a file (the exec manager's gateway, a command the
/// agent runs): its pid and start time, so a reused pid is not mistaken
/// for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PidRecord {
    pub pid: u32,
    pub start_ticks: u64,
}

impl PidRecord {
    pub fn parse(text: &str) -> Option<PidRecord> {
        let mut it = text.split_whitespace();
        let pid = it.next()?.parse().ok()?;
        let start_ticks = it.next()?.parse().ok()?;
        Some(PidRecord { pid, start_ticks })
    }

    pub fn render(&self) -> String {
        format!("{} {}\n", self.pid, self.start_ticks)
    }

    /// True while this very process (not a later one with the same pid) runs.
    pub fn is_running(&self) -> bool {
        stat(self.pid).is_some_and(|s| s.is_alive() && s.start_ticks == self.start_ticks)
    }
}

impl PidRecord {
    /// The record of a running process.
    pub fn of(pid: u32) -> PidRecord {
        PidRecord {
            pid,
            start_ticks: stat(pid).map_or(0, |s| s.start_ticks),
        }
    }

    /// Waits (at most `timeout`) until this process is gone; whether it is.
    /// The exit is observed directly: a pidfd becomes readable the moment
    /// the process ends (a zombie counts as ended). Where pidfds are not
    /// available (kernels before 5.3) it falls back to reading /proc.
    pub async fn wait_gone(&self, timeout: std::time::Duration) -> bool {
        let fd = match self.pidfd() {
            Ok(None) => return true,
            Ok(Some(fd)) => fd,
            Err(e) => {
                tracing::debug!(pid = self.pid, error = %e, "no pidfd: polling /proc for the exit");
                return self.poll_gone(timeout).await;
            }
        };
        // poll(2) on the pidfd in a blocking thread: registering a raw fd
        // with tokio's reactor needs unsafe code, and a stop is rare.
        let waited = tokio::task::spawn_blocking(move || {
            use rustix::event::{PollFd, PollFlags, Timespec, poll};
            let end = std::time::Instant::now() + timeout;
            loop {
                let left = end.saturating_duration_since(std::time::Instant::now());
                let ts = Timespec::try_from(left).ok();
                let mut fds = [PollFd::new(&fd, PollFlags::IN)];
                match poll(&mut fds, ts.as_ref()) {
                    Ok(n) => return Ok(n > 0),
                    Err(rustix::io::Errno::INTR) => continue,
                    Err(e) => return Err(e),
                }
            }
        })
        .await;
        match waited {
            Ok(Ok(gone)) => gone,
            other => {
                tracing::debug!(pid = self.pid, outcome = ?other, "pidfd wait failed: polling /proc");
                self.poll_gone(timeout).await
            }
        }
    }

    /// A pidfd of this very process, or None when it is already gone. The
    /// record is checked after the pidfd is opened, so a pid reused in
    /// between is never waited for.
    fn pidfd(&self) -> std::io::Result<Option<std::os::fd::OwnedFd>> {
        let Some(pid) = i32::try_from(self.pid)
            .ok()
            .and_then(rustix::process::Pid::from_raw)
        else {
            return Ok(None);
        };
        let fd = match rustix::process::pidfd_open(pid, rustix::process::PidfdFlags::empty()) {
            Ok(fd) => fd,
            Err(rustix::io::Errno::SRCH) => return Ok(None),
            Err(e) => return Err(e.into()),
        };
        Ok(self.is_running().then_some(fd))
    }

    async fn poll_gone(&self, timeout: std::time::Duration) -> bool {
        let end = std::time::Instant::now() + timeout;
        while self.is_running() {
            if std::time::Instant::now() >= end {
                return false;
            }
            tokio::time::sleep(std::time::Duration::from_millis(25)).await;
        }
        true
    }

    /// Reads a record file; None when it is missing or does not parse.
    pub fn read(path: &Path) -> Option<PidRecord> {
        PidRecord::parse(&read_small(path).ok()?)
    }
}

/// Reads a small file (a /proc stat line, a pid file) with one read into a
/// stack buffer, then one more to see its end. `fs::read_to_string` first
/// asks the file's size, which /proc reports as 0, and then grows its
/// buffer from 32 bytes: nine system calls for a stat line instead of four,
/// on every look at the gateway.
pub fn read_small(path: &Path) -> std::io::Result<String> {
    use std::io::Read;
    let mut f = std::fs::File::open(path)?;
    let mut buf = [0u8; 1024];
    let mut len = 0;
    loop {
        match f.read(&mut buf[len..]) {
            Ok(0) => break,
            Ok(n) => len += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
        if len == buf.len() {
            // Larger than expected: the rest the ordinary way.
            let mut all = buf.to_vec();
            f.read_to_end(&mut all)?;
            return Ok(String::from_utf8_lossy(&all).into_owned());
        }
    }
    // Lossy: a process may name itself with bytes that are not UTF-8, and
    // the stat fields after its name are what is read.
    Ok(String::from_utf8_lossy(&buf[..len]).into_owned())
}

/// Reads /proc/PID/stat; None when the process does not exist.
pub fn stat(pid: u32) -> Option<ProcStat> {
    stat_at(&Path::new("/proc").join(pid.to_string()).join("stat"))
}

fn stat_at(path: &Path) -> Option<ProcStat> {
    parse_stat(&read_small(path).ok()?)
}

/// Parses the stat line. The command name (field 2) may hold spaces and
/// parentheses, so fields are counted after the last ')'.
pub fn parse_stat(line: &str) -> Option<ProcStat> {
    let rest = &line[line.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // fields[0] is field 3 (state); starttime is field 22, rss field 24.
    Some(ProcStat {
        state: fields.first()?.chars().next()?,
        start_ticks: fields.get(19)?.parse().ok()?,
        rss_pages: fields.get(21)?.parse().ok()?,
    })
}

/// Bytes per page, for turning `rss_pages` into bytes.
pub fn page_size() -> u64 {
    nix::unistd::sysconf(nix::unistd::SysconfVar::PAGE_SIZE)
        .ok()
        .flatten()
        .and_then(|v| u64::try_from(v).ok())
        .unwrap_or(4096)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_stat_line_with_a_tricky_name() {
        let line = "4242 (gate way) (x)) S 1 4242 4242 0 -1 4194560 120 0 0 0 3 1 0 0 20 0 3 0 987654 12345678 321 18446744073709551615";
        let s = parse_stat(line).unwrap();
        assert_eq!(s.state, 'S');
        assert_eq!(s.start_ticks, 987654);
        assert_eq!(s.rss_pages, 321);
        assert!(s.is_alive());
    }

    #[test]
    fn zombies_are_not_alive() {
        let line = "7 (gw) Z 1 7 7 0 -1 0 0 0 0 0 0 0 0 0 20 0 1 0 55 0 0 0";
        assert!(!parse_stat(line).unwrap().is_alive());
    }

    #[test]
    fn reads_this_process() {
        let me = stat(std::process::id()).unwrap();
        assert!(me.is_alive());
        assert!(me.rss_pages > 0);
    }

    #[test]
    fn pid_record_round_trip_and_liveness() {
        let me = stat(std::process::id()).unwrap();
        let r = PidRecord {
            pid: std::process::id(),
            start_ticks: me.start_ticks,
        };
        assert_eq!(PidRecord::parse(&r.render()), Some(r));
        assert!(r.is_running());
        let reused = PidRecord {
            start_ticks: me.start_ticks + 1,
            ..r
        };
        assert!(
            !reused.is_running(),
            "a different start time is another process"
        );
        assert_eq!(PidRecord::parse("garbage"), None);
    }

    #[tokio::test]
    async fn wait_gone_wakes_at_the_exit_and_counts_a_zombie_as_gone() {
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap();
        let rec = PidRecord::of(child.id());
        assert!(!rec.wait_gone(std::time::Duration::from_millis(50)).await);
        let waiter =
            tokio::spawn(async move { rec.wait_gone(std::time::Duration::from_secs(30)).await });
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(child.id() as i32),
            nix::sys::signal::Signal::SIGKILL,
        )
        .unwrap();
        // Not reaped yet: the process is a zombie, which counts as gone.
        assert!(waiter.await.unwrap());
        assert!(rec.wait_gone(std::time::Duration::ZERO).await);
        child.wait().unwrap();
    }

    #[test]
    fn read_small_reads_whole_files_of_any_size() {
        let dir = tempfile::tempdir().unwrap();
        for len in [0usize, 13, 1023, 1024, 1025, 5000] {
            let text: String = (0..len)
                .map(|i| char::from(b'a' + (i % 26) as u8))
                .collect();
            let p = dir.path().join(format!("f{len}"));
            std::fs::write(&p, &text).unwrap();
            assert_eq!(read_small(&p).unwrap(), text, "{len} bytes");
        }
        // /proc says its files are empty and gives the line on read.
        let line = read_small(Path::new("/proc/self/stat")).unwrap();
        assert!(parse_stat(&line).is_some(), "{line}");
        assert!(read_small(&dir.path().join("missing")).is_err());
    }
}
