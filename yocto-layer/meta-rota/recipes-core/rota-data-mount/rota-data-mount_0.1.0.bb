SUMMARY = "Mounts the data partition the A/B slots share at /data (and /boot on rpi)"
DESCRIPTION = "A systemd mount unit for the data partition (the wic layouts of this \
               layer label it 'data'). It is part of every slot's root file system, \
               so the mount and with it rota's state (/data/rota) survive an update."
HOMEPAGE = "https://github.com/rota-ota/rota"
BUGTRACKER = "https://github.com/rota-ota/rota/issues"
CVE_PRODUCT = "rota"
SECTION = "base"
LICENSE = "MIT | Apache-2.0"
# No sources of its own: the license text is OE-core's.
# nooelint: oelint.var.licenseremotefile
LIC_FILES_CHKSUM = "file://${COMMON_LICENSE_DIR}/MIT;md5=0835ade698e0bcf8506ecda2f7b4f302"

SRC_URI = "file://data.mount file://boot.mount"

# Where the files are unpacked: UNPACKDIR (styhead and later), WORKDIR on scarthgap.
S = "${@d.getVar('UNPACKDIR') or d.getVar('WORKDIR')}"

inherit systemd

# The partition: by file system label (wic's --label), or a device path of your board.
ROTA_DATA_DEVICE ?= "/dev/disk/by-label/data"
ROTA_DATA_FSTYPE ?= "ext4"
# The boot partition at /boot, where a Raspberry Pi keeps U-Boot's env files; empty: no
# /boot mount (i.MX keeps the env in the eMMC boot partition).
ROTA_BOOT_DEVICE ?= ""
ROTA_BOOT_DEVICE:rpi ?= "/dev/disk/by-label/boot"
ROTA_BOOT_FSTYPE ?= "vfat"

do_configure[noexec] = "1"
do_compile[noexec] = "1"

do_install() {
    install -d ${D}${systemd_system_unitdir}
    sed -e 's#@DEVICE@#${ROTA_DATA_DEVICE}#' -e 's#@FSTYPE@#${ROTA_DATA_FSTYPE}#' \
        ${S}/data.mount > ${D}${systemd_system_unitdir}/data.mount
    chmod 0644 ${D}${systemd_system_unitdir}/data.mount
    if [ -n "${ROTA_BOOT_DEVICE}" ]; then
        sed -e 's#@DEVICE@#${ROTA_BOOT_DEVICE}#' -e 's#@FSTYPE@#${ROTA_BOOT_FSTYPE}#' \
            ${S}/boot.mount > ${D}${systemd_system_unitdir}/boot.mount
        chmod 0644 ${D}${systemd_system_unitdir}/boot.mount
    fi
}

SYSTEMD_SERVICE:${PN} = "data.mount ${@'boot.mount' if d.getVar('ROTA_BOOT_DEVICE') else ''}"
SYSTEMD_AUTO_ENABLE:${PN} = "enable"
# Varies with the machine (/boot on rpi).
PACKAGE_ARCH = "${MACHINE_ARCH}"
