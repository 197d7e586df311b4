#!/usr/bin/env bash
# Prints a husk config for the guest assets ci/guest-assets.sh builds (taken
# from HUSK_KERNEL, HUSK_AGENT_IMAGE and HUSK_AGENT_INITRD when exported,
# else from guest-assets.sh itself): the kernel, the agent's image and
# initramfs, templates on and cached with the other assets, and the state
# directory when one is given.
#
#   ci/husk-config.sh [STATE_DIR] > husk.toml
set -euo pipefail
if [ -z "${HUSK_KERNEL:-}" ] || [ -z "${HUSK_AGENT_IMAGE:-}" ] || [ -z "${HUSK_AGENT_INITRD:-}" ]; then
  eval "$("$(dirname "$0")/guest-assets.sh")"
fi
cat <<TOML
[guest]
kernel = "$HUSK_KERNEL"
image = "$HUSK_AGENT_IMAGE"
initrd = "$HUSK_AGENT_INITRD"

[runtime]
${1:+state_dir = \"$1\"}
# The first sandbox makes a template (one cold boot); later ones start from it.
template = "auto"
template_dir = "${HUSK_CACHE:-$HOME/.cache/husk}/templates"
TOML
