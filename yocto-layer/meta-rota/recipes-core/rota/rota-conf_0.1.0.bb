SUMMARY = "rota's system configuration: /etc/rota/system.toml and the release keys"
DESCRIPTION = "Installs /etc/rota/system.toml (slots, boot selection, keyring, D-Bus, \
               and commented [http], [update] and hawkBit keys) with its @NAME@ \
               placeholders filled from ROTA_* variables, and the release public \
               keys. Replace files/system.toml from your own layer with a bbappend."
HOMEPAGE = "https://github.com/rota-ota/rota"
BUGTRACKER = "https://github.com/rota-ota/rota/issues"
CVE_PRODUCT = "rota"
SECTION = "admin"
LICENSE = "MIT | Apache-2.0"
# No sources of its own: the license text is OE-core's.
# nooelint: oelint.var.licenseremotefile
LIC_FILES_CHKSUM = "file://${COMMON_LICENSE_DIR}/MIT;md5=0835ade698e0bcf8506ecda2f7b4f302"

require rota-settings.inc

SRC_URI = "file://system.toml"

# Where the files are unpacked: UNPACKDIR (styhead and later), WORKDIR on scarthgap.
S = "${@d.getVar('UNPACKDIR') or d.getVar('WORKDIR')}"

# Must equal the compatible of the bundles (rota-bundle.bbclass uses the same default).
ROTA_COMPATIBLE ??= "${MACHINE}"
# Slots A and B: partitions 2 and 3 of the SD card (Raspberry Pi) or of the eMMC
# (i.MX8M EVKs: mmcblk2), matching rota-boot-script's ROTA_UBOOT_PART_A/B.
ROTA_SLOT_A_DEVICE ?= "/dev/mmcblk0p2"
ROTA_SLOT_B_DEVICE ?= "/dev/mmcblk0p3"
ROTA_SLOT_A_DEVICE:mx8m-generic-bsp ?= "/dev/mmcblk2p2"
ROTA_SLOT_B_DEVICE:mx8m-generic-bsp ?= "/dev/mmcblk2p3"
# On the data partition both slots share (the rota-data-mount recipe mounts it at /data).
ROTA_DATA_DIR ?= "/data/rota"
ROTA_BOOT_ATTEMPTS ?= "3"
# How versions compare: "semver", or "debian" for DISTRO_VERSIONs like 1.0 or 2024.04
# (rota-bundle.bbclass checks ROTA_BUNDLE_VERSION with the same ROTA_VERSION_SCHEME).
ROTA_VERSION_SCHEME ??= "semver"
ROTA_RAUC_COMPAT ?= "false"
# Release public key(s) (SPKI PEM made by `rota keygen` or openssl) on the build host,
# installed into /etc/rota/keys/. Required: rota does not start without a key. Two keys
# (current and next) allow key rotation.
ROTA_KEYRING_PEMS ?= ""
# An env in an eMMC boot partition: rota.service (whose /sys is read-only) may write this
# force_ro attribute, which rota lifts for each env write (a drop-in of rota.service).
ROTA_ENV_FORCE_RO ?= ""
ROTA_ENV_FORCE_RO:mx8m-generic-bsp ?= "/sys/block/mmcblk2boot0/force_ro"

# The slot devices differ per machine.
PACKAGE_ARCH = "${MACHINE_ARCH}"

# Rebuild when a key file's content changes, not only its name.
do_install[file-checksums] += "${@' '.join(p + ':True' for p in d.getVar('ROTA_KEYRING_PEMS').split())}"

do_configure[noexec] = "1"
do_compile[noexec] = "1"

do_install() {
    install -d ${D}${sysconfdir}/rota/keys
    sed -e 's#@COMPATIBLE@#${ROTA_COMPATIBLE}#' \
        -e 's#@SLOT_A_DEVICE@#${ROTA_SLOT_A_DEVICE}#' \
        -e 's#@SLOT_B_DEVICE@#${ROTA_SLOT_B_DEVICE}#' \
        -e 's#@DATA_DIR@#${ROTA_DATA_DIR}#' \
        -e 's#@BOOT_ATTEMPTS@#${ROTA_BOOT_ATTEMPTS}#' \
        -e 's#@VERSION_SCHEME@#${ROTA_VERSION_SCHEME}#' \
        -e 's#@RAUC_COMPAT@#${ROTA_RAUC_COMPAT}#' \
        -e 's#@DBUS_GROUP@#${ROTA_DBUS_GROUP}#' \
        -e 's#@SYSCONFDIR@#${sysconfdir}#' \
        ${S}/system.toml > ${D}${sysconfdir}/rota/system.toml
    chmod 0644 ${D}${sysconfdir}/rota/system.toml
    keys=""
    for pem in ${ROTA_KEYRING_PEMS}; do
        name=$(basename "$pem")
        install -m 0644 "$pem" ${D}${sysconfdir}/rota/keys/"$name"
        keys="$keys\"${sysconfdir}/rota/keys/$name\", "
    done
    if [ -z "$keys" ]; then
        bbfatal "ROTA_KEYRING_PEMS is empty: name the release public key(s) rota must trust (rota keygen writes NAME.pub.pem); rota does not start without one"
    fi
    sed -i -e "s#@KEYRING@#${keys%, }#" ${D}${sysconfdir}/rota/system.toml
    if [ -n "${ROTA_ENV_FORCE_RO}" ]; then
        install -d ${D}${systemd_system_unitdir}/rota.service.d
        printf '[Service]\nReadWritePaths=-%s\n' "${ROTA_ENV_FORCE_RO}" \
            > ${D}${systemd_system_unitdir}/rota.service.d/env-force-ro.conf
        chmod 0644 ${D}${systemd_system_unitdir}/rota.service.d/env-force-ro.conf
    fi
}

FILES:${PN} += "${systemd_system_unitdir}/rota.service.d"

CONFFILES:${PN} = "${sysconfdir}/rota/system.toml"
