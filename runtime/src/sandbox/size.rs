//! How big a sandbox's VM is: the config's defaults, what the pod asks for
//! with annotations (up to the config's maximums), and the memory limit of
//! the container that creates it added on top, as Kata does, so a container
//! limited to N MiB really gets N MiB beside the guest kernel and agent.

use std::collections::HashMap;

use crate::config::HuskConfig;
use crate::size::parse_mem_size;

pub const VCPUS_ANNOTATION: &str = "io.husk.vcpus";
pub const MEMORY_ANNOTATION: &str = "io.husk.memory";
/// VM memory is a whole number of 2 MiB.
const MEM_GRANULE: u64 = 2 << 20;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SizeError {
    #[error("annotation {key}={value:?} is not {expected}")]
    Invalid {
        key: &'static str,
        value: String,
        expected: &'static str,
    },
    #[error(
        "annotation {key}={value:?} asks for more than {max_key} = {max} allows (in {origin})"
    )]
    AboveMax {
        key: &'static str,
        value: String,
        max_key: &'static str,
        max: String,
        origin: String,
    },
    #[error(
        "the VM would need {need} MiB ({base} MiB plus the container's memory limit of \
         {limit} MiB), more than guest.max_memory = {max} MiB (in {origin})"
    )]
    LimitAboveMax {
        need: u64,
        base: u64,
        limit: u64,
        max: u64,
        origin: String,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VmSize {
    pub vcpus: u8,
    pub mem_bytes: u64,
}

/// The VM size for a sandbox created by a container with `annotations` and
/// memory limit `limit` (bytes).
pub fn vm_size(
    config: &HuskConfig,
    annotations: &HashMap<String, String>,
    limit: Option<u64>,
) -> Result<VmSize, SizeError> {
    let g = &config.guest;
    let above = |key, value: &str, max_key, max: String| SizeError::AboveMax {
        key,
        value: value.to_string(),
        max_key,
        max,
        origin: config.origin.clone(),
    };
    let vcpus = match annotations.get(VCPUS_ANNOTATION) {
        None => g.vcpus,
        Some(v) => {
            let n: u8 =
                v.trim()
                    .parse()
                    .ok()
                    .filter(|&n| n > 0)
                    .ok_or_else(|| SizeError::Invalid {
                        key: VCPUS_ANNOTATION,
                        value: v.clone(),
                        expected: "a vCPU count of at least 1",
                    })?;
            if n > g.max_vcpus {
                return Err(above(
                    VCPUS_ANNOTATION,
                    v,
                    "guest.max_vcpus",
                    g.max_vcpus.to_string(),
                ));
            }
            n
        }
    };
    let base = match annotations.get(MEMORY_ANNOTATION) {
        None => g.memory,
        Some(v) => {
            let bytes = parse_mem_size(v).map_err(|_| SizeError::Invalid {
                key: MEMORY_ANNOTATION,
                value: v.clone(),
                expected: "a memory size such as 512M or 1G",
            })?;
            if bytes > g.max_memory {
                let max = format!("{}M", g.max_memory >> 20);
                return Err(above(MEMORY_ANNOTATION, v, "guest.max_memory", max));
            }
            bytes.max(husk_vmm::layout::MIN_MEM_BYTES)
        }
    };
    let limit = limit.unwrap_or(0);
    let need = base.saturating_add(limit).next_multiple_of(MEM_GRANULE);
    if need > g.max_memory {
        return Err(SizeError::LimitAboveMax {
            need: need >> 20,
            base: base >> 20,
            limit: limit >> 20,
            max: g.max_memory >> 20,
            origin: config.origin.clone(),
        });
    }
    Ok(VmSize {
        vcpus,
        mem_bytes: need,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> HuskConfig {
        let mut c = HuskConfig {
            origin: "/etc/husk/config.toml".into(),
            ..HuskConfig::default()
        };
        c.guest.max_vcpus = 2;
        c.guest.max_memory = 1 << 30;
        c
    }

    fn ann(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn defaults_annotations_and_limits_add_up() {
        let c = config();
        assert_eq!(
            vm_size(&c, &ann(&[]), None),
            Ok(VmSize {
                vcpus: 1,
                mem_bytes: 256 << 20
            })
        );
        let a = ann(&[(VCPUS_ANNOTATION, "2"), (MEMORY_ANNOTATION, "512M")]);
        assert_eq!(
            vm_size(&c, &a, Some(64 << 20)),
            Ok(VmSize {
                vcpus: 2,
                mem_bytes: 576 << 20
            })
        );
        // Limits round up to whole 2 MiB.
        assert_eq!(
            vm_size(&c, &ann(&[]), Some(1)).unwrap().mem_bytes,
            258 << 20
        );
    }

    #[test]
    fn asking_for_more_than_allowed_names_the_annotation_and_the_config() {
        let c = config();
        let err = vm_size(&c, &ann(&[(VCPUS_ANNOTATION, "8")]), None)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("io.husk.vcpus") && err.contains("max_vcpus = 2"),
            "{err}"
        );
        assert!(err.contains("/etc/husk/config.toml"), "{err}");
        let err = vm_size(&c, &ann(&[(MEMORY_ANNOTATION, "2G")]), None)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("io.husk.memory") && err.contains("max_memory"),
            "{err}"
        );
        let err = vm_size(&c, &ann(&[]), Some(900 << 20))
            .unwrap_err()
            .to_string();
        assert!(err.contains("memory limit of 900 MiB"), "{err}");
        assert!(matches!(
            vm_size(&c, &ann(&[(VCPUS_ANNOTATION, "0")]), None),
            Err(SizeError::Invalid { .. })
        ));
    }
}
