# rota-bundle.bbclass: builds a signed rota bundle (.rota) from an image's ext4 root
# file system, with `rota bundle create` from rota-native.
#
# In the image recipe (or local.conf: IMAGE_CLASSES += "rota-bundle"):
#     inherit rota-bundle
#     IMAGE_FSTYPES += "ext4 rota"
#     ROTA_SIGNING_KEY = "/secure/path/release.key.pem"   # PKCS#8 ed25519, never in a layer
#
# Result: ${DEPLOY_DIR_IMAGE}/<image>-<machine>.rootfs.rota (plus the usual link name),
# installable with `rota install` on devices whose [system] compatible equals
# ROTA_COMPATIBLE. The manifest names one image for the rootfs slot class; extra
# images (another slot class, or an MCU) can be added with ROTA_BUNDLE_EXTRA_IMAGES.

# Devices install the bundle only if their [system] compatible is the same (the rota
# recipe writes the same default into system.toml).
ROTA_COMPATIBLE ??= "${MACHINE}"
# Private key (PEM, PKCS#8 ed25519) that signs the bundle. Required.
ROTA_SIGNING_KEY ??= ""
# Version of the update; a device refuses versions lower than the one it runs unless
# forced. Checked against ROTA_VERSION_SCHEME (rota-settings.inc: "semver" by default,
# "debian" for DISTRO_VERSIONs like 1.0 or 2024.04), which the devices' system.toml uses.
ROTA_BUNDLE_VERSION ??= "${DISTRO_VERSION}"
ROTA_VERSION_SCHEME ??= "semver"
ROTA_BUNDLE_DESCRIPTION ??= "${SUMMARY}"
# Slot class the root file system goes to.
ROTA_BUNDLE_SLOT_CLASS ??= "rootfs"
# Chunk size in bytes (power of two, 4 KiB to 16 MiB); empty: rota's default.
ROTA_BUNDLE_CHUNK_SIZE ??= ""
# Bundle format: 2 (slot images as zstd frames of 4 KiB blocks, fetched by content) or 1
# (raw chunks, for devices whose rota predates format 2).
ROTA_BUNDLE_FORMAT ??= "2"
# The previous release's ext4 image (a path on the build host), or empty: with it the
# bundle also carries patches against that image, and a device running it downloads
# little more than what changed (format 2 only).
ROTA_BUNDLE_DELTA_FROM ??= ""
# Extra images, space separated, each "slot-class:CLASS:FILE" or "mcu:NAME:FILE", with
# FILE relative to DEPLOY_DIR_IMAGE (add the producing recipe's do_deploy to
# do_image_rota[depends] yourself).
ROTA_BUNDLE_EXTRA_IMAGES ??= ""

# A new image type "rota", made from the ext4 image (image_types.bbclass conventions).
# oelint does not know image-type overrides and the do_image_<type> tasks they create.
IMAGE_TYPES += "rota"
# nooelint: oelint.vars.specific,oelint.vars.mispell
IMAGE_TYPEDEP:rota = "ext4"
# nooelint: oelint.vars.mispell.unknown
do_image_rota[depends] += "rota-native:do_populate_sysroot"
# nooelint: oelint.vars.mispell.unknown
do_image_rota[vardeps] += "ROTA_SIGNING_KEY ROTA_BUNDLE_VERSION ROTA_VERSION_SCHEME ROTA_COMPATIBLE ROTA_BUNDLE_EXTRA_IMAGES ROTA_BUNDLE_FORMAT ROTA_BUNDLE_DELTA_FROM"
# nooelint: oelint.vars.mispell.unknown
do_image_rota[doc] = "Builds a signed rota bundle (.rota) from the ext4 root file system"

# nooelint: oelint.task.docstrings
IMAGE_CMD:rota () {
    if [ -z "${ROTA_SIGNING_KEY}" ] || [ ! -r "${ROTA_SIGNING_KEY}" ]; then
        bbfatal "rota-bundle: ROTA_SIGNING_KEY ('${ROTA_SIGNING_KEY}') must name a readable PKCS#8 ed25519 key (rota keygen writes one)"
    fi
    dir="${WORKDIR}/rota-bundle"
    rm -rf "$dir"
    mkdir -p "$dir"
    # A hard link, not a symlink: rota bundles regular files only.
    ln "${IMGDEPLOYDIR}/${IMAGE_NAME}${IMAGE_NAME_SUFFIX}.ext4" "$dir/rootfs.ext4" 2>/dev/null ||
        cp "${IMGDEPLOYDIR}/${IMAGE_NAME}${IMAGE_NAME_SUFFIX}.ext4" "$dir/rootfs.ext4"
    {
        echo "[update]"
        echo "compatible = \"${ROTA_COMPATIBLE}\""
        echo "version = \"${ROTA_BUNDLE_VERSION}\""
        echo "description = \"${ROTA_BUNDLE_DESCRIPTION}\""
        echo ""
        echo "[[image]]"
        echo "slot-class = \"${ROTA_BUNDLE_SLOT_CLASS}\""
        echo "file = \"rootfs.ext4\""
    } > "$dir/manifest.toml"
    for extra in ${ROTA_BUNDLE_EXTRA_IMAGES}; do
        kind=${extra%%:*}
        rest=${extra#*:}
        name=${rest%%:*}
        file=${rest#*:}
        case "$kind" in
            slot-class|mcu) ;;
            *) bbfatal "rota-bundle: '$extra' in ROTA_BUNDLE_EXTRA_IMAGES must start with slot-class: or mcu:" ;;
        esac
        member=$(basename "$file")
        cp "${DEPLOY_DIR_IMAGE}/$file" "$dir/$member"
        printf '\n[[image]]\n%s = "%s"\nfile = "%s"\n' "$kind" "$name" "$member" >> "$dir/manifest.toml"
    done
    chunk=""
    if [ -n "${ROTA_BUNDLE_CHUNK_SIZE}" ]; then
        chunk="--chunk-size ${ROTA_BUNDLE_CHUNK_SIZE}"
    fi
    # Reproducible builds: the manifest's build time and the members' mtimes are
    # SOURCE_DATE_EPOCH, so the same image and key give a byte-identical bundle.
    epoch=""
    if [ -n "${SOURCE_DATE_EPOCH}" ]; then
        epoch="--source-date-epoch ${SOURCE_DATE_EPOCH}"
    fi
    delta=""
    if [ -n "${ROTA_BUNDLE_DELTA_FROM}" ]; then
        delta="--delta-from ${ROTA_BUNDLE_DELTA_FROM}"
    fi
    rota bundle create "$dir" "${IMGDEPLOYDIR}/${IMAGE_NAME}${IMAGE_NAME_SUFFIX}.rota" \
        --key "${ROTA_SIGNING_KEY}" --version-scheme "${ROTA_VERSION_SCHEME}" \
        --format "${ROTA_BUNDLE_FORMAT}" $chunk $epoch $delta
    rm -rf "$dir"
}
