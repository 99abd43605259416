//! Which opens the kernel may serve itself by FUSE passthrough (the policy,
//! the per-handle kernel I/O mode, writers waiting for passthrough readers).

use super::*;

impl Vfs {
    /// Lets read-only opens of clean files use FUSE passthrough; the adapter
    /// calls it once the kernel has agreed to it.
    pub fn enable_passthrough(&self, on: bool) {
        self.passthrough.store(on, Ordering::Relaxed);
    }

    pub fn passthrough_enabled(&self) -> bool {
        self.passthrough.load(Ordering::Relaxed)
    }

    /// Which files may use passthrough once the kernel offers it.
    pub fn set_passthrough_policy(&self, policy: PassthroughPolicy) {
        *self.passthrough_policy.lock().unwrap_or_else(|p| p.into_inner()) = policy;
    }

    pub(super) fn passthrough_policy(&self) -> PassthroughPolicy {
        *self.passthrough_policy.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// For `contextfs status`: which files the kernel reads by itself.
    pub fn passthrough_description(&self) -> String {
        if !self.passthrough_wanted() {
            "off (--passthrough off)".into()
        } else if !self.passthrough_enabled() {
            "off (the kernel did not offer it: it needs Linux >= 6.9 with FUSE passthrough, and root)".into()
        } else if self.passthrough_policy() == PassthroughPolicy::All && self.max_file_bytes() < DEFAULT_MAX_FILE_BYTES
        {
            "every clean file (writers wait for passthrough readers; --passthrough read-only avoids that); new files are written through the mount, since the server limits file sizes (--max-file-bytes)".into()
        } else if self.passthrough_policy() == PassthroughPolicy::All {
            "every clean file, and writes of new files (writers wait for passthrough readers; --passthrough read-only avoids that)".into()
        } else if self.passthrough_policy() == PassthroughPolicy::Reads {
            "every clean file (writers wait for passthrough readers); writes go through the mount".into()
        } else if self.config.read_only {
            "every file (read-only mount)".into()
        } else {
            "read-only files (skills; --passthrough read-only); writable files go through the mount".into()
        }
    }

    /// Whether passthrough readers hold `ino`: opening it for writing (or
    /// truncating it) would wait for them.
    pub fn passthrough_readers(&self, ino: Ino) -> bool {
        self.lock().kernel_io.writers_wait(ino)
    }

    /// Whether the adapter should ask the kernel for passthrough at all.
    pub fn passthrough_wanted(&self) -> bool {
        self.passthrough_policy() != PassthroughPolicy::Off
    }

    pub(super) fn passthrough_allowed(&self, inode: &Inode) -> bool {
        self.passthrough.load(Ordering::Relaxed)
            && (inode.read_only
                || self.config.read_only
                || matches!(
                    self.passthrough_policy(),
                    PassthroughPolicy::All | PassthroughPolicy::Reads
                ))
    }

    pub(super) fn passthrough_busy(st: &State, ino: Ino) -> VfsError {
        VfsError::new(
            libc::ETXTBSY,
            format!(
                "{} is open for reading through kernel passthrough; it can be changed once those readers close (mount with --passthrough read-only to never wait)",
                Self::path_of(st, ino)
            ),
        )
    }

    /// Waits (bounded) until no passthrough reader holds `ino`: the kernel
    /// refuses every other open of it meanwhile.
    pub(super) fn await_passthrough_readers(&self, ino: Ino) -> VfsResult<()> {
        let started = std::time::Instant::now();
        loop {
            {
                let st = self.lock();
                if !st.kernel_io.writers_wait(ino) {
                    return Ok(());
                }
                if started.elapsed() > PASSTHROUGH_WRITER_WAIT {
                    return Err(Self::passthrough_busy(&st, ino));
                }
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
    }

    /// How the kernel should do I/O on a handle just opened or created.
    pub fn kernel_io(&self, fh: u64) -> VfsResult<KernelIo> {
        let mut st = self.lock();
        let handle = st.handles.get(&fh).ok_or_else(VfsError::badf)?;
        let (ino, io, pinned) = (handle.ino, handle.io, handle.pinned.clone());
        let staging = st.kernel_io.staging_file(ino).cloned();
        let inode = Self::get_mut(&mut st, ino)?;
        Ok(match (io, pinned.or(staging)) {
            (HandleIo::Passthrough { epoch }, Some(file)) => KernelIo::Passthrough { file, epoch },
            _ => KernelIo::Cached {
                keep_cache: Self::keep_kernel_cache(inode),
            },
        })
    }

    /// The kernel would not take the handle's backing file: stop offering
    /// passthrough and give the handle the mode a plain open would get.
    /// Returns that mode and the passthrough epoch this ended, if any.
    pub fn passthrough_failed(&self, fh: u64) -> VfsResult<(KernelIo, Option<u64>)> {
        self.enable_passthrough(false);
        let ended = {
            let mut st = self.lock();
            let handle = st.handles.get(&fh).ok_or_else(VfsError::badf)?;
            let (ino, io) = (handle.ino, handle.io);
            let ended = st.kernel_io.downgrade(ino, io);
            if let Some(h) = st.handles.get_mut(&fh) {
                h.io = HandleIo::Cached;
            }
            ended
        };
        Ok((self.kernel_io(fh)?, ended))
    }

    /// Whether the kernel may keep its page cache for a cached open: only
    /// when the file is clean and holds the same blob as at the previous open.
    pub(super) fn keep_kernel_cache(inode: &mut Inode) -> bool {
        match &inode.content {
            Content::Blob { hash } => {
                let same = inode.kernel_hash.as_ref() == Some(hash);
                inode.kernel_hash = Some(hash.clone());
                same
            }
            _ => {
                inode.kernel_hash = None;
                false
            }
        }
    }
}
