//! Parsing `--fs TAG=DIR[,cache=none|auto|always][,dax=SIZE][,xattr][,size=SIZE]`
//! into a virtio-fs device configuration; the device itself checks the tag,
//! the directory, the window size and the size limit when the VM is built.
//! `size` caps how much the guest may add to the share (ENOSPC beyond);
//! the policy against setuid/setgid files and file capabilities is always on.

use husk_vmm::{CacheMode, FsConfig};

use husk_runtime::size::parse_mem_size;

const SYNTAX: &str = "expected TAG=DIR[,cache=none|auto|always][,dax=SIZE][,xattr][,size=SIZE]";

pub fn parse_fs_share(text: &str) -> Result<FsConfig, String> {
    let mut parts = text.split(',');
    let share = parts.next().unwrap_or_default();
    let (tag, dir) = share
        .split_once('=')
        .filter(|(tag, dir)| !tag.is_empty() && !dir.is_empty())
        .ok_or_else(|| format!("invalid share {share:?}: {SYNTAX}"))?;
    let mut config = FsConfig::new(tag, std::path::Path::new(dir));
    for part in parts {
        match part.split_once('=') {
            Some(("cache", mode)) => config.cache = parse_cache(mode)?,
            Some(("dax", size)) => {
                config.dax_window =
                    Some(parse_mem_size(size).map_err(|e| format!("invalid dax window: {e}"))?)
            }
            Some(("size", size)) => {
                config.size_limit =
                    Some(parse_mem_size(size).map_err(|e| format!("invalid size limit: {e}"))?)
            }
            None if part == "xattr" => config.xattr = true,
            _ => return Err(format!("invalid virtio-fs option {part:?}: {SYNTAX}")),
        }
    }
    Ok(config)
}

fn parse_cache(mode: &str) -> Result<CacheMode, String> {
    match mode {
        "none" => Ok(CacheMode::None),
        "auto" => Ok(CacheMode::Auto),
        "always" => Ok(CacheMode::Always),
        other => Err(format!(
            "invalid cache mode {other:?}: expected none, auto or always"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_shares_and_names_bad_parts() {
        let c = parse_fs_share("data=/srv/x").unwrap();
        assert_eq!(
            (c.tag.as_str(), c.shared_dir.to_str()),
            ("data", Some("/srv/x"))
        );
        assert_eq!(
            (c.cache, c.dax_window, c.xattr),
            (CacheMode::Auto, None, false)
        );
        let c = parse_fs_share("t=/d,cache=none,dax=64M,xattr").unwrap();
        assert_eq!(
            (c.cache, c.dax_window, c.xattr),
            (CacheMode::None, Some(64 << 20), true)
        );
        assert_eq!(c.size_limit, None);
        let c = parse_fs_share("t=/d,size=64M,xattr").unwrap();
        assert_eq!((c.size_limit, c.xattr), (Some(64 << 20), true));
        let err = |s: &str| parse_fs_share(s).unwrap_err();
        assert!(err("=/d").contains("\"=/d\""));
        assert!(err("t=").contains("TAG=DIR"));
        assert!(err("t=/d,cache=sometimes").contains("\"sometimes\""));
        assert!(err("t=/d,dax=lots").contains("\"lots\""));
        assert!(err("t=/d,size=huge").contains("\"huge\""));
        assert!(err("t=/d,speed=fast").contains("\"speed=fast\""));
    }
}
