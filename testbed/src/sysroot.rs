//! A throwaway root that packages with maintainer scripts install into, as
//! on a real Debian host, without touching this machine's own root.
//!
//! dpkg runs with `--root`: it writes the package's files under the root and
//! keeps its database there, and chroots into the root to run maintainer
//! scripts. Those scripts need a working system (sh, adduser,
//! deb-systemd-helper, the agent binary itself), so the root gets:
//! - `/usr`: an overlay whose lower layer is this machine's `/usr` (read
//!   only) and whose upper layer is the root's own, so a package's files
//!   land in the root and nothing under this machine's `/usr` changes;
//! - `/etc` and `/var/lib/dpkg`: copies of this machine's (its users, its
//!   installed packages — true of the overlay's `/usr`), changed freely;
//! - `/dev` bound from this machine and a fresh `/proc`, for the scripts.
//!
//! Every mount is undone when the root is dropped. Needs root (mount,
//! chroot), as the tests that use it run.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use crate::install::run;

#[derive(Debug)]
pub struct SysRoot {
    pub root: PathBuf,
    mounts: Vec<PathBuf>,
}

impl SysRoot {
    /// Builds the root in `base` (an empty directory this test owns).
    pub fn create(base: &Path) -> Result<SysRoot, String> {
        let root = base.join("root");
        let (upper, work) = (base.join("usr-upper"), base.join("usr-work"));
        for d in ["usr", "dev", "proc", "tmp", "run", "var/lib", "var/log"] {
            std::fs::create_dir_all(root.join(d)).map_err(|e| format!("{d}: {e}"))?;
        }
        for d in [&upper, &work] {
            std::fs::create_dir_all(d).map_err(|e| format!("{}: {e}", d.display()))?;
        }
        // Debian's merged /usr, as on this machine.
        for (link, to) in [
            ("bin", "usr/bin"),
            ("sbin", "usr/sbin"),
            ("lib", "usr/lib"),
            ("lib64", "usr/lib64"),
        ] {
            std::os::unix::fs::symlink(to, root.join(link)).map_err(|e| format!("{link}: {e}"))?;
        }
        run(Command::new("cp")
            .args(["-a", "/etc"])
            .arg(root.join("etc")))?;
        run(Command::new("cp")
            .args(["-a", "/var/lib/dpkg"])
            .arg(root.join("var/lib/dpkg")))?;
        run(Command::new("chmod").arg("1777").arg(root.join("tmp")))?;
        let mut sys = SysRoot {
            root: root.clone(),
            mounts: Vec::new(),
        };
        let opts = format!(
            "lowerdir=/usr,upperdir={},workdir={}",
            upper.display(),
            work.display()
        );
        sys.mount(
            Command::new("mount").args(["-t", "overlay", "overlay", "-o", &opts]),
            "usr",
        )?;
        sys.mount(Command::new("mount").args(["--bind", "/dev"]), "dev")?;
        sys.mount(Command::new("mount").args(["-t", "proc", "proc"]), "proc")?;
        Ok(sys)
    }

    fn mount(&mut self, cmd: &mut Command, at: &str) -> Result<(), String> {
        let target = self.root.join(at);
        run(cmd.arg(&target))?;
        self.mounts.push(target);
        Ok(())
    }

    /// A path inside the root (`p` absolute, as the host inside sees it).
    pub fn path(&self, p: &str) -> PathBuf {
        self.root.join(p.trim_start_matches('/'))
    }

    /// `dpkg --root` with `args`; its output, whether or not it succeeded.
    pub fn dpkg(&self, args: &[&str]) -> Output {
        Command::new("dpkg")
            .arg(format!("--root={}", self.root.display()))
            .args(args)
            .env("DEBIAN_FRONTEND", "noninteractive")
            .output()
            .expect("dpkg runs")
    }

    /// A command run inside the root (chroot).
    pub fn chroot(&self, argv: &[&str]) -> Output {
        Command::new("chroot")
            .arg(&self.root)
            .args(argv)
            .output()
            .expect("chroot runs")
    }

    /// What dpkg-query says of `package` in this root (`${Version}` etc.).
    pub fn query(&self, package: &str, format: &str) -> Option<String> {
        let out = Command::new("dpkg-query")
            .arg(format!("--root={}", self.root.display()))
            .args(["-W", "-f", format, package])
            .output()
            .ok()?;
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
    }
}

impl Drop for SysRoot {
    fn drop(&mut self) {
        for m in self.mounts.iter().rev() {
            // Lazy: a process still inside would otherwise keep it mounted.
            let _ = Command::new("umount").arg("-l").arg(m).output();
        }
    }
}
