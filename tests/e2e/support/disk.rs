//! A small disk for one directory of a simulated host: a size- and
//! inode-limited tmpfs mounted over it, unmounted when dropped. Mounting
//! needs root (CAP_SYS_ADMIN), as CI has; without it the test fails and
//! says why, it never skips.

use std::path::{Path, PathBuf};
use std::process::Command;

pub struct SmallDisk {
    pub dir: PathBuf,
}

fn mount(args: &[&str], dir: &Path) {
    let out = Command::new("mount")
        .args(args)
        .arg(dir)
        .output()
        .expect("run mount");
    assert!(
        out.status.success(),
        "mount {args:?} {}: {} (the full-disk tests mount a tmpfs per host: they need root with CAP_SYS_ADMIN)",
        dir.display(),
        String::from_utf8_lossy(&out.stderr).trim()
    );
}

impl SmallDisk {
    /// Mounts a tmpfs of `bytes` and `inodes` over `dir` (created if
    /// missing; what it held is hidden until the unmount).
    pub fn mount(dir: &Path, bytes: u64, inodes: u64) -> SmallDisk {
        std::fs::create_dir_all(dir).unwrap();
        let opts = format!("size={bytes},nr_inodes={inodes},mode=0755");
        mount(&["-t", "tmpfs", "-o", &opts, "rollgate-test"], dir);
        SmallDisk {
            dir: dir.to_path_buf(),
        }
    }

    /// Changes the limits in place, keeping what is on the disk.
    pub fn resize(&self, bytes: u64, inodes: u64) {
        let opts = format!("remount,size={bytes},nr_inodes={inodes}");
        mount(&["-o", &opts], &self.dir);
    }

    /// Inodes in use (files and directories, the root included).
    pub fn inodes_used(&self) -> u64 {
        let st = nix::sys::statvfs::statvfs(&self.dir).unwrap();
        (st.files() - st.files_free()) as u64
    }

    /// Writes a file until the disk refuses another byte; returns it.
    pub fn fill(&self) -> PathBuf {
        use std::io::Write;
        let path = self.dir.join("filler");
        let mut f = std::fs::File::create(&path).unwrap();
        let block = vec![0u8; 64 * 1024];
        let small = [0u8; 1];
        loop {
            match f.write(&block) {
                Ok(0) => break,
                Ok(_) => {}
                Err(e) if e.raw_os_error() == Some(nix::libc::ENOSPC) => break,
                Err(e) => panic!("filling {}: {e}", path.display()),
            }
        }
        // The last partial block: byte by byte to the very end.
        while f.write(&small).is_ok_and(|n| n == 1) {}
        path
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        // Lazy: a process of the test may still hold a file there.
        let _ = Command::new("umount").arg("-l").arg(&self.dir).status();
    }
}
