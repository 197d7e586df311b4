//! Pmem images: a host file mapped into guest-physical memory for virtio-pmem.
//!
//! Read-only images are mapped `PROT_READ, MAP_SHARED` into a KVM_MEM_READONLY
//! slot, so every VM booted from one image uses the same page-cache pages
//! (the point of a DAX root filesystem: one copy of the guest image per host,
//! not per pod). Where KVM lacks read-only slots, the image is mapped
//! `MAP_PRIVATE` read-write instead: pages stay shared until the guest writes
//! one, which then becomes a private copy that never reaches the file. That
//! fallback is logged. Read-write images are `MAP_SHARED` read-write and
//! reach the file through the page cache; the guest's FLUSH fsyncs it.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;

use vm_memory::mmap::MmapRegion;
use vm_memory::FileOffset;

use crate::device_memory::SlotAccess;
use crate::layout::DEVICE_MEMORY_GRANULE;

/// A pmem device as the user asks for it (`--pmem FILE[,ro]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PmemSpec {
    pub path: PathBuf,
    pub read_only: bool,
}

impl std::str::FromStr for PmemSpec {
    type Err = String;

    /// Parses `FILE`, `FILE,ro` or `FILE,rw` (read-write is the default).
    fn from_str(s: &str) -> Result<Self, String> {
        let (path, mode) = match s.rsplit_once(',') {
            Some((p, m)) => (p, Some(m)),
            None => (s, None),
        };
        if path.is_empty() {
            return Err("the pmem device needs an image FILE".into());
        }
        let read_only = match mode {
            None | Some("rw") => false,
            Some("ro") => true,
            Some(other) => {
                return Err(format!(
                    "invalid pmem option {other:?}: expected FILE[,ro] or FILE[,rw]"
                ))
            }
        };
        Ok(Self {
            path: path.into(),
            read_only,
        })
    }
}

#[derive(Debug, thiserror::Error)]
pub enum PmemImageError {
    #[error("cannot open pmem image {path}: {source}")]
    Open {
        path: String,
        source: std::io::Error,
    },
    #[error("pmem image {path} is not a regular file")]
    NotAFile { path: String },
    #[error("pmem image {path} is empty")]
    Empty { path: String },
    #[error(
        "pmem image {path} is {size} bytes, not a multiple of 2 MiB \
         (pad it: truncate -s %2M {path})"
    )]
    Unaligned { path: String, size: u64 },
    #[error("cannot map pmem image {path}: {source}")]
    Map {
        path: String,
        source: vm_memory::mmap::MmapRegionError,
    },
}

/// How an image is mapped, decided from the user's mode and what KVM offers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MappingPlan {
    pub prot: i32,
    pub flags: i32,
    pub access: SlotAccess,
}

impl MappingPlan {
    pub fn choose(read_only: bool, kvm_readonly_mem: bool) -> Self {
        let rw = libc::PROT_READ | libc::PROT_WRITE;
        match (read_only, kvm_readonly_mem) {
            (false, _) => Self {
                prot: rw,
                flags: libc::MAP_SHARED,
                access: SlotAccess::ReadWrite,
            },
            (true, true) => Self {
                prot: libc::PROT_READ,
                flags: libc::MAP_SHARED,
                access: SlotAccess::ReadOnly,
            },
            (true, false) => Self {
                prot: rw,
                flags: libc::MAP_PRIVATE,
                access: SlotAccess::ReadWrite,
            },
        }
    }
}

/// An opened and mapped image, ready to become device memory.
pub struct PmemImage {
    /// For the device's fsync on FLUSH.
    pub file: File,
    pub mapping: MmapRegion,
    pub plan: MappingPlan,
    pub fs: ImageFs,
}

impl PmemImage {
    pub fn open(spec: &PmemSpec, kvm_readonly_mem: bool) -> Result<Self, PmemImageError> {
        let path = spec.path.display().to_string();
        let file = File::options()
            .read(true)
            .write(!spec.read_only)
            .open(&spec.path)
            .map_err(|source| PmemImageError::Open {
                path: path.clone(),
                source,
            })?;
        let meta = file.metadata().map_err(|source| PmemImageError::Open {
            path: path.clone(),
            source,
        })?;
        if !meta.is_file() {
            return Err(PmemImageError::NotAFile { path });
        }
        let size = meta.len();
        if size == 0 {
            return Err(PmemImageError::Empty { path });
        }
        if !size.is_multiple_of(DEVICE_MEMORY_GRANULE) {
            return Err(PmemImageError::Unaligned { path, size });
        }
        let plan = MappingPlan::choose(spec.read_only, kvm_readonly_mem);
        if spec.read_only && !kvm_readonly_mem {
            tracing::warn!(
                "KVM has no read-only memory slots: pmem image {path} is mapped \
                 copy-on-write (MAP_PRIVATE); guest writes stay private to this VM"
            );
        }
        let fs = ImageFs::detect(&file);
        let map_file = file.try_clone().map_err(|source| PmemImageError::Open {
            path: path.clone(),
            source,
        })?;
        let mapping = MmapRegion::build(
            Some(FileOffset::new(map_file, 0)),
            size as usize,
            plan.prot,
            plan.flags,
        )
        .map_err(|source| PmemImageError::Map { path, source })?;
        Ok(Self {
            file,
            mapping,
            plan,
            fs,
        })
    }
}

/// The filesystem an image holds, by its superblock magic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ImageFs {
    Erofs,
    Ext4,
    Unknown,
}

const EROFS_MAGIC: u32 = 0xe0f5_e1e2;
const EXT4_MAGIC: u16 = 0xef53;
/// Both filesystems keep their superblock 1 KiB into the device.
const SUPERBLOCK_OFFSET: u64 = 1024;
const EXT4_MAGIC_OFFSET: usize = 0x38;

impl ImageFs {
    pub fn detect(file: &File) -> Self {
        let mut sb = [0u8; 64];
        if file.read_exact_at(&mut sb, SUPERBLOCK_OFFSET).is_err() {
            return Self::Unknown;
        }
        let m = EXT4_MAGIC_OFFSET;
        if u32::from_le_bytes([sb[0], sb[1], sb[2], sb[3]]) == EROFS_MAGIC {
            Self::Erofs
        } else if u16::from_le_bytes([sb[m], sb[m + 1]]) == EXT4_MAGIC {
            Self::Ext4
        } else {
            Self::Unknown
        }
    }

    /// Kernel parameters that mount this image, as /dev/pmem0, as the DAX root.
    /// erofs is read-only by design; ext4 is mounted `ro` without replaying its
    /// journal, since the image may be shared by many guests.
    pub fn root_words(self) -> Option<&'static [&'static str]> {
        match self {
            Self::Erofs => Some(&[
                "root=/dev/pmem0",
                "rootfstype=erofs",
                "rootflags=dax",
                "ro",
                "rootwait",
            ]),
            Self::Ext4 => Some(&[
                "root=/dev/pmem0",
                "rootfstype=ext4",
                "rootflags=dax,noload",
                "ro",
                "rootwait",
            ]),
            Self::Unknown => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_pmem_specs() {
        let spec = |p: &str, ro| PmemSpec {
            path: p.into(),
            read_only: ro,
        };
        assert_eq!("/img".parse(), Ok(spec("/img", false)));
        assert_eq!("/img,ro".parse(), Ok(spec("/img", true)));
        assert_eq!("/a,b/img,rw".parse(), Ok(spec("/a,b/img", false)));
        let err = "/img,readonly".parse::<PmemSpec>().unwrap_err();
        assert!(err.contains("\"readonly\""), "{err}");
        assert!(",ro".parse::<PmemSpec>().is_err());
        assert!("".parse::<PmemSpec>().is_err());
    }

    #[test]
    fn read_only_images_use_read_only_slots_or_private_copies() {
        let plan = MappingPlan::choose(true, true);
        assert_eq!(
            (plan.prot, plan.flags, plan.access),
            (libc::PROT_READ, libc::MAP_SHARED, SlotAccess::ReadOnly)
        );
        let fallback = MappingPlan::choose(true, false);
        assert_eq!(fallback.flags, libc::MAP_PRIVATE);
        assert_eq!(fallback.access, SlotAccess::ReadWrite);
        let rw = MappingPlan::choose(false, true);
        assert_eq!(rw.flags, libc::MAP_SHARED);
        assert_eq!(rw.prot, libc::PROT_READ | libc::PROT_WRITE);
    }

    fn image(name: &str, len: u64, magic_at: Option<(u64, &[u8])>) -> PathBuf {
        let path = std::env::temp_dir().join(format!("husk-pmem-{}-{name}", std::process::id()));
        let f = File::create(&path).unwrap();
        f.set_len(len).unwrap();
        if let Some((at, bytes)) = magic_at {
            f.write_all_at(bytes, at).unwrap();
        }
        path
    }

    #[test]
    fn opens_maps_and_detects_images() {
        let erofs = image("erofs", 2 << 20, Some((1024, &EROFS_MAGIC.to_le_bytes())));
        let spec = PmemSpec {
            path: erofs.clone(),
            read_only: true,
        };
        let img = PmemImage::open(&spec, true).unwrap();
        assert_eq!(img.mapping.size(), 2 << 20);
        assert_eq!(img.fs, ImageFs::Erofs);
        assert_eq!(img.plan.access, SlotAccess::ReadOnly);
        assert!(img.fs.root_words().unwrap().contains(&"rootflags=dax"));

        let ext4 = image("ext4", 4 << 20, Some((1024 + 0x38, &[0x53, 0xef])));
        let spec = PmemSpec {
            path: ext4.clone(),
            read_only: false,
        };
        assert_eq!(PmemImage::open(&spec, true).unwrap().fs, ImageFs::Ext4);
        for p in [erofs, ext4] {
            std::fs::remove_file(p).unwrap();
        }
    }

    #[test]
    fn bad_images_are_named() {
        let open = |path: &PathBuf| {
            let spec = PmemSpec {
                path: path.clone(),
                read_only: true,
            };
            PmemImage::open(&spec, true).err().unwrap().to_string()
        };
        let missing = PathBuf::from("/nonexistent/husk.img");
        assert!(open(&missing).contains("/nonexistent/husk.img"));
        let empty = image("empty", 0, None);
        assert!(open(&empty).contains("is empty"));
        let odd = image("odd", (2 << 20) + 512, None);
        assert!(open(&odd).contains("not a multiple of 2 MiB"));
        assert!(open(&std::env::temp_dir()).contains("not a regular file"));
        let plain = image("plain", 2 << 20, None);
        let spec = PmemSpec {
            path: plain.clone(),
            read_only: true,
        };
        assert_eq!(PmemImage::open(&spec, true).unwrap().fs, ImageFs::Unknown);
        for p in [empty, odd, plain] {
            std::fs::remove_file(p).unwrap();
        }
    }
}
