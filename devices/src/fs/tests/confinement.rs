//! The guest cannot reach outside the shared directory: every escape attempt
//! fails with an error and the files next to the share stay as they were.

use std::fs;
use std::os::unix::fs::{symlink, MetadataExt};
use std::path::Path;

use super::*;

/// (name, mode, nlink, content) of everything outside the share, recursively.
type Snapshot = Vec<(String, u32, u64, Vec<u8>)>;

fn snapshot(dir: &Path, skip: &Path) -> Snapshot {
    let mut out = Vec::new();
    let mut entries: Vec<_> = fs::read_dir(dir).unwrap().map(|e| e.unwrap()).collect();
    entries.sort_by_key(|e| e.file_name());
    for e in entries {
        let path = e.path();
        if path == skip {
            continue;
        }
        let meta = fs::symlink_metadata(&path).unwrap();
        let content = if meta.is_file() {
            fs::read(&path).unwrap()
        } else {
            Vec::new()
        };
        out.push((
            path.display().to_string(),
            meta.mode(),
            meta.nlink(),
            content,
        ));
        if meta.is_dir() {
            out.extend(snapshot(&path, skip));
        }
    }
    out
}

/// A harness with a secret file and directory next to the share.
fn with_secrets() -> (FsHarness, Snapshot) {
    let h = FsHarness::new();
    fs::write(h.outside("secret"), b"host secret").unwrap();
    fs::create_dir(h.outside("secret_dir")).unwrap();
    fs::write(h.outside("secret_dir/inner"), b"inner").unwrap();
    let before = snapshot(h.dir.as_path(), &h.root());
    (h, before)
}

fn assert_untouched(h: &FsHarness, before: &Snapshot) {
    assert_eq!(&snapshot(h.dir.as_path(), &h.root()), before);
}

#[test]
fn dotdot_lookups_stay_at_the_root() {
    let (mut h, before) = with_secrets();
    let root_ino = fs::metadata(h.root()).unwrap().ino();
    let up = h.lookup(ROOT, "..").unwrap();
    assert_eq!(up.attr.ino, root_ino, ".. of the root is the root");
    assert_eq!(h.lookup(up.nodeid, "secret").unwrap_err(), libc::ENOENT);
    fs::create_dir(h.host("sub")).unwrap();
    let sub = h.lookup(ROOT, "sub").unwrap();
    let up = h.lookup(sub.nodeid, "..").unwrap();
    assert_eq!(up.attr.ino, root_ino);
    let upup = h.lookup(up.nodeid, "..").unwrap();
    assert_eq!(upup.attr.ino, root_ino);
    assert_eq!(h.lookup(upup.nodeid, "secret").unwrap_err(), libc::ENOENT);
    assert_eq!(h.walk("sub/../../secret_dir").unwrap_err(), libc::ENOENT);
    // Names with a slash are refused outright.
    assert_eq!(h.lookup(ROOT, "../secret").unwrap_err(), libc::EINVAL);
    assert_eq!(
        h.lookup(sub.nodeid, "../../secret").unwrap_err(),
        libc::EINVAL
    );
    assert_eq!(h.mkdir(ROOT, "../escape", 0o755).unwrap_err(), libc::EINVAL);
    assert_eq!(
        h.create(ROOT, "../escape", 0o644).unwrap_err(),
        libc::EINVAL
    );
    assert!(!h.outside("escape").exists());
    assert_untouched(&h, &before);
}

#[test]
fn a_symlink_to_etc_is_never_followed_by_the_host() {
    let (mut h, before) = with_secrets();
    let passwd = fs::read("/etc/passwd").unwrap();
    symlink("/etc", h.host("etc")).unwrap();
    let etc = h.lookup(ROOT, "etc").unwrap();
    assert_eq!(
        etc.attr.mode & libc::S_IFMT,
        libc::S_IFLNK,
        "the link, not /etc"
    );
    assert_eq!(h.lookup(etc.nodeid, "passwd").unwrap_err(), libc::ENOTDIR);
    assert_eq!(h.open(etc.nodeid, libc::O_RDONLY).unwrap_err(), libc::EBADF);
    assert!(h.readdir(etc.nodeid, false).is_err());
    assert_eq!(
        h.create(etc.nodeid, "planted", 0o644).unwrap_err(),
        libc::ENOTDIR
    );
    // The guest reads the link's text and resolves it in its own namespace.
    assert_eq!(h.readlink(etc.nodeid).unwrap(), b"/etc");
    assert!(!Path::new("/etc/planted").exists());
    assert_eq!(fs::read("/etc/passwd").unwrap(), passwd);
    assert_untouched(&h, &before);
}

#[test]
fn symlinks_to_outside_files_cannot_be_read_written_or_chmodded_through() {
    let (mut h, before) = with_secrets();
    symlink(h.outside("secret"), h.host("abs")).unwrap();
    symlink("../secret", h.host("rel")).unwrap();
    symlink("../secret_dir", h.host("reldir")).unwrap();
    for link in ["abs", "rel"] {
        let node = h.lookup(ROOT, link).unwrap().nodeid;
        assert_eq!(h.getattr(node).unwrap().mode & libc::S_IFMT, libc::S_IFLNK);
        assert_eq!(
            h.open(node, libc::O_RDWR).unwrap_err(),
            libc::EBADF,
            "{link}"
        );
        let truncate = SetattrIn {
            valid: SetattrValid::SIZE.bits(),
            size: 0,
            ..Default::default()
        };
        assert!(h.setattr(node, truncate).is_err(), "{link}: truncate");
        let chmod = SetattrIn {
            valid: SetattrValid::MODE.bits(),
            mode: libc::S_IFREG | 0o777,
            ..Default::default()
        };
        assert!(h.setattr(node, chmod).is_err(), "{link}: chmod");
        // CREATE over the link's name (O_CREAT without O_EXCL) finds the
        // link, which is never opened: the target is not created or truncated.
        assert_eq!(h.create(ROOT, link, 0o644).unwrap_err(), libc::EBADF);
    }
    let dir = h.lookup(ROOT, "reldir").unwrap().nodeid;
    assert_eq!(h.lookup(dir, "inner").unwrap_err(), libc::ENOTDIR);
    assert_untouched(&h, &before);
}

#[test]
fn a_dangling_symlink_does_not_create_its_target() {
    let (mut h, before) = with_secrets();
    symlink(h.outside("created_outside"), h.host("dangling")).unwrap();
    assert!(h.create(ROOT, "dangling", 0o644).is_err());
    assert!(h.mknod(ROOT, "dangling", libc::S_IFREG | 0o644, 0).is_err());
    assert!(!h.outside("created_outside").exists());
    assert_untouched(&h, &before);
}

#[test]
fn swapping_a_looked_up_directory_for_a_symlink_does_not_redirect_it() {
    let (mut h, before) = with_secrets();
    let d = h.mkdir(ROOT, "d", 0o755).unwrap();
    // The guest races itself: moves d away and puts a link to outside there.
    assert_eq!(h.rename(ROOT, "d", ROOT, "d_old"), 0);
    let escape = format!("{}", h.outside("secret_dir").display());
    h.symlink(ROOT, "d", &escape).unwrap();
    // Its old node id still names the original directory.
    assert_eq!(h.lookup(d.nodeid, "inner").unwrap_err(), libc::ENOENT);
    let (file, fh) = h.create(d.nodeid, "written", 0o644).unwrap();
    h.write(file.nodeid, fh, 0, b"stays inside").unwrap();
    h.release(file.nodeid, fh);
    assert_eq!(fs::read(h.host("d_old/written")).unwrap(), b"stays inside");
    // A fresh lookup finds the link, which is not a directory to the host.
    let link = h.lookup(ROOT, "d").unwrap();
    assert_eq!(h.lookup(link.nodeid, "inner").unwrap_err(), libc::ENOTDIR);
    assert_untouched(&h, &before);
}

#[test]
fn rename_cannot_move_anything_out_of_the_root() {
    let (mut h, before) = with_secrets();
    fs::write(h.host("f"), b"mine").unwrap();
    let up = h.lookup(ROOT, "..").unwrap().nodeid;
    // ".." of the root is the root: the file stays inside.
    assert_eq!(h.rename(ROOT, "f", up, "f2"), 0);
    assert!(h.host("f2").exists());
    assert_eq!(h.rename(ROOT, "f2", ROOT, "../f3"), libc::EINVAL);
    assert_eq!(h.rename(ROOT, "f2", 0xdead_beef, "f3"), libc::EBADF);
    // Renaming outside names in from the root's parent is impossible too.
    assert_eq!(h.rename(up, "secret", ROOT, "stolen"), libc::ENOENT);
    assert_eq!(h.rename(ROOT, "../secret", ROOT, "stolen"), libc::EINVAL);
    assert!(h.host("f2").exists());
    assert!(!h.host("stolen").exists());
    assert_untouched(&h, &before);
}

#[test]
fn link_cannot_bring_an_outside_file_in() {
    let (mut h, before) = with_secrets();
    // A node id the guest never looked up (the host inode number of the secret).
    let secret_ino = fs::metadata(h.outside("secret")).unwrap().ino();
    for bogus in [secret_ino, 0, u64::MAX, 0x1234_5678] {
        assert_eq!(h.link(bogus, ROOT, "stolen").unwrap_err(), libc::EBADF);
    }
    // Linking a symlink that points outside links the symlink, not its target.
    symlink(h.outside("secret"), h.host("abs")).unwrap();
    let abs = h.lookup(ROOT, "abs").unwrap();
    let linked = h.link(abs.nodeid, ROOT, "abs2").unwrap();
    assert_eq!(linked.attr.mode & libc::S_IFMT, libc::S_IFLNK);
    fs::write(h.host("inside"), b"x").unwrap();
    let inside = h.lookup(ROOT, "inside").unwrap();
    assert_eq!(
        h.link(inside.nodeid, ROOT, "../stolen").unwrap_err(),
        libc::EINVAL
    );
    assert!(!h.host("stolen").exists() && !h.outside("stolen").exists());
    assert_untouched(&h, &before);
}

#[test]
fn dot_and_dotdot_names_cannot_remove_or_replace_the_root_or_its_parent() {
    let (mut h, before) = with_secrets();
    fs::write(h.host("f"), b"x").unwrap();
    let file = h.lookup(ROOT, "f").unwrap().nodeid;
    for n in [".", ".."] {
        assert_ne!(h.unlink(ROOT, n), 0, "unlink {n}");
        assert_ne!(h.status(Opcode::Rmdir, ROOT, &[&name(n)]), 0, "rmdir {n}");
        assert_ne!(h.rename(ROOT, n, ROOT, "moved"), 0, "rename {n}");
        assert_ne!(h.rename(ROOT, "f", ROOT, n), 0, "rename onto {n}");
        assert!(h.mkdir(ROOT, n, 0o755).is_err(), "mkdir {n}");
        assert!(h.symlink(ROOT, n, "/").is_err(), "symlink {n}");
        assert!(h.link(file, ROOT, n).is_err(), "link {n}");
    }
    assert!(h.root().is_dir() && h.host("f").is_file());
    assert!(!h.host("moved").exists());
    assert_untouched(&h, &before);
}
