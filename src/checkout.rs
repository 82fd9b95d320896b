//! `checkout`: the one gate between berth and the files a repository names.
//!
//! Every read of repository content (`deploy.yml` and destination files,
//! `.kamal/secrets*`, `berth.yml`, accessory `files:`) goes through
//! [`Checkout::read`]. The repository is untrusted input, so a read:
//! - resolves the path, symlinks included, and refuses it unless it lies
//!   inside the checkout's root (`..`, an absolute path or a committed
//!   symlink cannot reach `/proc/self/environ` or `/etc/passwd`);
//! - opens without blocking and reads only regular files (a FIFO cannot hang
//!   berth, `/dev/zero` cannot fill its memory);
//! - is capped: the content past [`MAX_FILE_BYTES`] is never read.
//!
//! Errors name the path and never quote the file's content.
//!
//! Cost: one `realpath` and one `open` + `fstat` per file; files are read
//! whole (they are small by construction).

use std::io::Read;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

/// The largest file berth reads from a repository: config, secrets,
/// `berth.yml`, an accessory file. Real ones are a few KiB.
pub const MAX_FILE_BYTES: u64 = 1 << 20;

/// Why a repository file could not be read. The content is never quoted.
#[derive(Debug, thiserror::Error)]
pub enum FileError {
    #[error("{}: no such file", path.display())]
    NotFound { path: PathBuf },
    #[error(
        "{}: resolves outside the repository ({}); berth reads only files inside it",
        path.display(),
        root.display()
    )]
    Outside { path: PathBuf, root: PathBuf },
    #[error("{}: not a regular file ({kind}); berth reads only regular files", path.display())]
    NotRegular { path: PathBuf, kind: &'static str },
    #[error("{}: larger than {limit} bytes, the limit for a repository file", path.display())]
    TooLarge { path: PathBuf, limit: u64 },
    #[error("{}:{line}: not valid UTF-8", path.display())]
    NotUtf8 { path: PathBuf, line: usize },
    #[error("{}: cannot read: {error}", path.display())]
    Io {
        path: PathBuf,
        error: std::io::Error,
    },
}

impl FileError {
    pub fn is_not_found(&self) -> bool {
        matches!(self, FileError::NotFound { .. })
    }

    /// The file the error is about.
    pub fn path(&self) -> &Path {
        match self {
            FileError::NotFound { path }
            | FileError::Outside { path, .. }
            | FileError::NotRegular { path, .. }
            | FileError::TooLarge { path, .. }
            | FileError::NotUtf8 { path, .. }
            | FileError::Io { path, .. } => path,
        }
    }

    /// The line, where the error has one (invalid UTF-8).
    pub fn line(&self) -> Option<usize> {
        match self {
            FileError::NotUtf8 { line, .. } => Some(*line),
            _ => None,
        }
    }

    /// The message without the leading `path[:line]: `.
    pub fn reason(&self) -> String {
        let text = self.to_string();
        let mut prefix = self.path().display().to_string();
        if let Some(l) = self.line() {
            prefix.push_str(&format!(":{l}"));
        }
        prefix.push_str(": ");
        text.strip_prefix(&prefix)
            .map_or(text.clone(), str::to_string)
    }
}

/// Where repository files may be read from.
#[derive(Clone, Debug)]
pub struct Checkout {
    /// The resolved root every read must stay inside; `None` lets a person's
    /// one-shot command read files the config names elsewhere (still only
    /// regular files, still capped).
    root: Option<PathBuf>,
    /// The repository is hostile (`berth run`, `--untrusted`): besides
    /// confining reads, nothing it names is executed on berth's machine
    /// (no `$(...)` secrets, hooks or `ssh.proxy_command`).
    untrusted: bool,
}

impl Checkout {
    /// Reads confined to `root` (resolved now, so a symlinked checkout
    /// directory still works).
    pub fn confined(root: &Path) -> Result<Checkout, FileError> {
        let dir = if root.as_os_str().is_empty() {
            Path::new(".")
        } else {
            root
        };
        let root = dir.canonicalize().map_err(|error| io_error(dir, error))?;
        Ok(Checkout {
            root: Some(root),
            untrusted: false,
        })
    }

    /// Confined to `root`, and nothing the repository names is executed.
    pub fn untrusted(root: &Path) -> Result<Checkout, FileError> {
        Ok(Checkout {
            untrusted: true,
            ..Checkout::confined(root)?
        })
    }

    /// Reads anywhere (regular files, capped): `--allow-outside-reads`.
    pub fn unconfined() -> Checkout {
        Checkout {
            root: None,
            untrusted: false,
        }
    }

    /// Whether the repository is hostile input (see [`Checkout::untrusted`]).
    pub fn is_untrusted(&self) -> bool {
        self.untrusted
    }

    /// The confining root, if any.
    pub fn root(&self) -> Option<&Path> {
        self.root.as_deref()
    }

    /// Whether `path` names a regular file berth may read.
    pub fn is_file(&self, path: &Path) -> Result<bool, FileError> {
        match self.resolve(path) {
            Ok(resolved) => Ok(std::fs::metadata(resolved).is_ok_and(|m| m.is_file())),
            Err(e) if e.is_not_found() => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// The file's bytes, at most [`MAX_FILE_BYTES`].
    pub fn read(&self, path: &Path) -> Result<Vec<u8>, FileError> {
        self.read_capped(path, MAX_FILE_BYTES)
    }

    /// The file as UTF-8 text, at most [`MAX_FILE_BYTES`]; invalid UTF-8 is
    /// an error naming its line.
    pub fn read_text(&self, path: &Path) -> Result<String, FileError> {
        let bytes = self.read(path)?;
        String::from_utf8(bytes).map_err(|e| {
            let valid = e.utf8_error().valid_up_to();
            let line = 1 + e.as_bytes()[..valid]
                .iter()
                .filter(|&&b| b == b'\n')
                .count();
            FileError::NotUtf8 {
                path: path.to_path_buf(),
                line,
            }
        })
    }

    fn read_capped(&self, path: &Path, limit: u64) -> Result<Vec<u8>, FileError> {
        let resolved = self.resolve(path)?;
        // Non-blocking, so opening a FIFO returns at once and is refused
        // below; no-follow, so a symlink swapped in after `resolve` fails.
        let file = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NONBLOCK | libc::O_NOFOLLOW | libc::O_NOCTTY)
            .open(&resolved)
            .map_err(|error| io_error(path, error))?;
        let meta = file.metadata().map_err(|error| io_error(path, error))?;
        if !meta.is_file() {
            return Err(FileError::NotRegular {
                path: path.to_path_buf(),
                kind: kind(&meta),
            });
        }
        if meta.len() > limit {
            return Err(FileError::TooLarge {
                path: path.to_path_buf(),
                limit,
            });
        }
        let mut bytes = Vec::with_capacity(meta.len() as usize);
        // One byte past the limit tells a file that grew since `fstat`.
        file.take(limit + 1)
            .read_to_end(&mut bytes)
            .map_err(|error| io_error(path, error))?;
        if bytes.len() as u64 > limit {
            return Err(FileError::TooLarge {
                path: path.to_path_buf(),
                limit,
            });
        }
        Ok(bytes)
    }

    /// The path with every symlink resolved, checked against the root.
    fn resolve(&self, path: &Path) -> Result<PathBuf, FileError> {
        let resolved = path.canonicalize().map_err(|error| io_error(path, error))?;
        if let Some(root) = &self.root
            && !resolved.starts_with(root)
        {
            return Err(FileError::Outside {
                path: path.to_path_buf(),
                root: root.clone(),
            });
        }
        Ok(resolved)
    }
}

fn io_error(path: &Path, error: std::io::Error) -> FileError {
    if error.kind() == std::io::ErrorKind::NotFound {
        FileError::NotFound {
            path: path.to_path_buf(),
        }
    } else {
        FileError::Io {
            path: path.to_path_buf(),
            error,
        }
    }
}

fn kind(meta: &std::fs::Metadata) -> &'static str {
    use std::os::unix::fs::FileTypeExt;
    let t = meta.file_type();
    if t.is_dir() {
        "a directory"
    } else if t.is_fifo() {
        "a FIFO"
    } else if t.is_char_device() {
        "a character device"
    } else if t.is_block_device() {
        "a block device"
    } else if t.is_socket() {
        "a socket"
    } else {
        "not a file"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn setup() -> (tempfile::TempDir, Checkout) {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("repo")).unwrap();
        let c = Checkout::confined(&dir.path().join("repo")).unwrap();
        (dir, c)
    }

    #[test]
    fn reads_a_file_inside() {
        let (dir, c) = setup();
        let f = dir.path().join("repo/a.yml");
        std::fs::write(&f, "service: a\n").unwrap();
        assert_eq!(c.read_text(&f).unwrap(), "service: a\n");
        assert!(c.is_file(&f).unwrap());
        assert!(!c.is_file(&dir.path().join("repo/none")).unwrap());
    }

    #[test]
    fn refuses_paths_and_symlinks_leading_outside() {
        let (dir, c) = setup();
        std::fs::write(dir.path().join("secret"), "TOKEN=x\n").unwrap();
        let up = dir.path().join("repo/../secret");
        assert!(matches!(c.read(&up), Err(FileError::Outside { .. })));
        std::os::unix::fs::symlink("/etc/passwd", dir.path().join("repo/link")).unwrap();
        let e = c.read(&dir.path().join("repo/link")).unwrap_err();
        assert!(matches!(e, FileError::Outside { .. }), "{e}");
        assert!(!e.to_string().contains("root:"), "{e}");
        // A symlink that stays inside is fine.
        std::fs::write(dir.path().join("repo/real"), "x").unwrap();
        std::os::unix::fs::symlink("real", dir.path().join("repo/alias")).unwrap();
        assert_eq!(c.read(&dir.path().join("repo/alias")).unwrap(), b"x");
    }

    #[test]
    fn refuses_devices_fifos_and_directories_without_blocking() {
        let (dir, _) = setup();
        let open = Checkout::unconfined();
        assert!(matches!(
            open.read(Path::new("/dev/zero")),
            Err(FileError::NotRegular { .. })
        ));
        let fifo = dir.path().join("repo/fifo");
        let c_path = std::ffi::CString::new(fifo.as_os_str().as_encoded_bytes()).unwrap();
        assert_eq!(unsafe { libc::mkfifo(c_path.as_ptr(), 0o600) }, 0);
        let e = open.read(&fifo).unwrap_err();
        assert!(
            matches!(e, FileError::NotRegular { kind: "a FIFO", .. }),
            "{e}"
        );
        assert!(matches!(
            open.read(dir.path()),
            Err(FileError::NotRegular { .. })
        ));
    }

    #[test]
    fn caps_the_size() {
        let (dir, c) = setup();
        let f = dir.path().join("repo/big");
        std::fs::write(&f, vec![b'a'; MAX_FILE_BYTES as usize + 1]).unwrap();
        assert!(matches!(c.read(&f), Err(FileError::TooLarge { .. })));
        std::fs::write(&f, vec![b'a'; MAX_FILE_BYTES as usize]).unwrap();
        assert_eq!(c.read(&f).unwrap().len(), MAX_FILE_BYTES as usize);
    }

    #[test]
    fn invalid_utf8_names_its_line() {
        let (dir, c) = setup();
        let f = dir.path().join("repo/bad");
        std::fs::write(&f, b"a: 1\nb: \xff\n").unwrap();
        let e = c.read_text(&f).unwrap_err();
        assert_eq!(e.to_string(), format!("{}:2: not valid UTF-8", f.display()));
    }
}
