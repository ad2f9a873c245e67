//! The files the extension reads (`AWS_CA_BUNDLE`, the container token
//! file, `/etc/hosts`): regular files only, bounded in size, never a
//! blocking open (docs/delivery.md, "Files the extension reads").

use std::fmt;

/// Why a file named by a setting cannot be read.
#[derive(Debug)]
pub enum FileProblem {
    /// It cannot be found, opened or read.
    Io(std::io::Error),
    /// A directory, FIFO, socket or device: reading one may block start-up
    /// (a FIFO without a writer) or never end (`/dev/zero`).
    NotRegular(&'static str),
    /// Larger than the most the extension reads of it.
    TooLarge { bytes: u64, limit: u64 },
}

impl fmt::Display for FileProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FileProblem::Io(e) => write!(f, "{e}"),
            FileProblem::NotRegular(kind) => write!(f, "a {kind}, not a regular file"),
            FileProblem::TooLarge { bytes, limit } => {
                write!(f, "{bytes} bytes or more, over the {limit}-byte limit")
            }
        }
    }
}

impl From<std::io::Error> for FileProblem {
    fn from(e: std::io::Error) -> FileProblem {
        FileProblem::Io(e)
    }
}

/// Reads the regular file at `path`, of at most `limit` bytes, without
/// ever blocking (see `open_regular`), and stops at `limit + 1` bytes
/// should it grow meanwhile.
pub fn read_file(path: &str, limit: u64) -> Result<Vec<u8>, FileProblem> {
    use std::io::Read;
    let (file, len) = open_regular(path, limit)?;
    let mut bytes = Vec::with_capacity(len as usize);
    file.take(limit + 1).read_to_end(&mut bytes)?;
    match bytes.len() as u64 {
        n if n > limit => Err(FileProblem::TooLarge { bytes: n, limit }),
        _ => Ok(bytes),
    }
}

/// `O_NONBLOCK` (Linux on x86_64 and aarch64, the targets built): an open
/// that cannot block, whatever the path names by the time it is opened.
const O_NONBLOCK: i32 = 0o4000;

/// Opens the regular file at `path` if it has at most `limit` bytes, with
/// its length. The path is looked at (stat) before it is opened: opening a
/// FIFO blocks until a writer comes, opening a device may do anything. The
/// open is non-blocking and what was opened is looked at again (fstat),
/// should the path have changed in between.
pub fn open_regular(path: &str, limit: u64) -> Result<(std::fs::File, u64), FileProblem> {
    use std::os::unix::fs::OpenOptionsExt;
    regular_within(&std::fs::metadata(path)?, limit)?;
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(O_NONBLOCK)
        .open(path)?;
    let len = regular_within(&file.metadata()?, limit)?;
    Ok((file, len))
}

/// A regular file's length, if within `limit`.
fn regular_within(meta: &std::fs::Metadata, limit: u64) -> Result<u64, FileProblem> {
    use std::os::unix::fs::FileTypeExt;
    let t = meta.file_type();
    let kind = match () {
        _ if t.is_file() => None,
        _ if t.is_dir() => Some("directory"),
        _ if t.is_fifo() => Some("FIFO"),
        _ if t.is_socket() => Some("socket"),
        _ if t.is_char_device() => Some("character device"),
        _ if t.is_block_device() => Some("block device"),
        _ => Some("special file"),
    };
    match (kind, meta.len()) {
        (Some(kind), _) => Err(FileProblem::NotRegular(kind)),
        (None, bytes) if bytes > limit => Err(FileProblem::TooLarge { bytes, limit }),
        (None, bytes) => Ok(bytes),
    }
}

/// A fresh scratch directory for a test (`name`, and this process).
#[cfg(test)]
pub fn scratch(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("kte-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn files_are_read_within_bounds_and_never_block() {
        let dir = scratch("files");
        let small = dir.join("small.pem");
        std::fs::write(&small, b"0123456789").unwrap();
        let path = |p: &std::path::Path| p.to_str().unwrap().to_string();
        assert_eq!(read_file(&path(&small), 10).unwrap(), b"0123456789");
        assert!(matches!(
            read_file(&path(&small), 9),
            Err(FileProblem::TooLarge {
                bytes: 10,
                limit: 9
            })
        ));
        assert!(matches!(
            read_file(&path(&dir), 1 << 20),
            Err(FileProblem::NotRegular("directory"))
        ));
        assert!(matches!(
            read_file("/dev/zero", 1 << 20),
            Err(FileProblem::NotRegular("character device"))
        ));
        assert!(matches!(
            read_file(&path(&dir.join("missing")), 10),
            Err(FileProblem::Io(_))
        ));
        // A FIFO without a writer: refused at once (an open would block).
        let fifo = dir.join("fifo");
        let made = std::process::Command::new("mkfifo").arg(&fifo).status();
        assert!(made.is_ok_and(|s| s.success()), "mkfifo");
        let e = read_file(&path(&fifo), 10).unwrap_err();
        assert_eq!(e.to_string(), "a FIFO, not a regular file");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
