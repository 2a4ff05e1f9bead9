//! What local folders need beyond `object_store`: an advisory lock, so that a compare-and-write
//! of one object (the run's manifest) is atomic across processes on one machine.

use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

/// An exclusive `flock` on `<file>.lock`, held until dropped.
pub struct Lock {
    file: std::fs::File,
}

impl Drop for Lock {
    fn drop(&mut self) {
        #[cfg(unix)]
        // SAFETY: flock on a file descriptor this value owns; unlocking cannot fail in a way
        // that matters (closing the file releases it anyway).
        unsafe {
            use std::os::fd::AsRawFd;
            libc::flock(self.file.as_raw_fd(), libc::LOCK_UN);
        }
    }
}

/// Takes the lock of `file`, waiting for other holders (on a blocking thread).
pub async fn lock(file: &Path) -> Result<Lock> {
    let path: PathBuf = {
        let mut p = file.as_os_str().to_owned();
        p.push(".lock");
        p.into()
    };
    tokio::task::spawn_blocking(move || {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|e| lock_error(&path, e))?;
        }
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(|e| lock_error(&path, e))?;
        #[cfg(unix)]
        {
            use std::os::fd::AsRawFd;
            // SAFETY: flock on a file descriptor we own.
            if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) } != 0 {
                return Err(lock_error(&path, std::io::Error::last_os_error()));
            }
        }
        Ok(Lock { file })
    })
    .await
    .map_err(|e| Error::Infra(format!("lock task failed: {e}")))?
}

fn lock_error(path: &Path, e: std::io::Error) -> Error {
    Error::storage(format!(
        "cannot lock {}: {e}; check that the folder is writable",
        path.display()
    ))
}
