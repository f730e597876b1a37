SUMMARY = "Over-the-air update agent for embedded Linux gateways"
DESCRIPTION = "rota installs signed A/B slot updates from a file or URL in verified \
               chunks, switches the U-Boot boot selection (RAUC's BOOT_ORDER \
               convention), reports rollbacks, offers a D-Bus API (io.rota, optionally \
               RAUC's de.pengutronix.rauc) and relays firmware to microcontrollers over \
               MCUmgr/SMP."
SECTION = "admin"

require rota-source.inc
require rota-crates.inc

inherit cargo cargo-update-recipe-crates systemd useradd

# The release profile strips the binary; let the build system strip it instead, so the
# symbols end up in rota-dbg.
export CARGO_PROFILE_RELEASE_STRIP = "false"

# --- what goes into /etc/rota/system.toml (override in local.conf or a bbappend) ---
# Must equal the compatible of the bundles (rota-bundle.bbclass uses the same default):
# set it once in local.conf or the distro config.
ROTA_COMPATIBLE ??= "${MACHINE}"
# Slots A and B: partitions 2 and 3 of the SD card (Raspberry Pi) or of the eMMC
# (i.MX8M EVKs: mmcblk2), matching rota-boot-script's ROTA_UBOOT_PART_A/B.
ROTA_SLOT_A_DEVICE ?= "/dev/mmcblk0p2"
ROTA_SLOT_B_DEVICE ?= "/dev/mmcblk0p3"
ROTA_SLOT_A_DEVICE:mx8m-generic-bsp ?= "/dev/mmcblk2p2"
ROTA_SLOT_B_DEVICE:mx8m-generic-bsp ?= "/dev/mmcblk2p3"
ROTA_BOOT_ATTEMPTS ?= "3"
ROTA_RAUC_COMPAT ?= "false"
# Members of this group may install and mark over D-Bus (the policy files are patched
# to name it, and the group is created).
ROTA_DBUS_GROUP ?= "rota"
# Release public key(s) (SPKI PEM made by `rota keygen` or openssl) on the build host,
# installed into /etc/rota/keys/. Required: rota does not start without a key. Two keys
# (current and next) allow key rotation.
ROTA_KEYRING_PEMS ?= ""

SRC_URI += "file://system.toml.in"

# Rebuild when a key file's content changes, not only its name.
do_install[file-checksums] += "${@' '.join(p + ':True' for p in d.getVar('ROTA_KEYRING_PEMS').split())}"

USERADD_PACKAGES = "${PN}"
GROUPADD_PARAM:${PN} = "--system ${ROTA_DBUS_GROUP}"

do_install:append:class-target() {
    # systemd units and the health check the mark-good unit runs
    install -d ${D}${systemd_system_unitdir} ${D}${libexecdir}/rota ${D}${sysconfdir}/default
    install -m 0644 ${S}/systemd/rota.service ${S}/systemd/rota-mark-good.service \
        ${D}${systemd_system_unitdir}/
    install -m 0755 ${S}/systemd/rota-health-check ${D}${libexecdir}/rota/
    install -m 0644 ${S}/systemd/rota-mark-good.default ${D}${sysconfdir}/default/rota-mark-good
    sed -i -e 's#/usr/bin/rota#${bindir}/rota#' -e 's#/usr/libexec/rota/#${libexecdir}/rota/#' \
        ${D}${systemd_system_unitdir}/rota.service ${D}${systemd_system_unitdir}/rota-mark-good.service

    # D-Bus: policy (with the configured group), activation, introspection
    install -d ${D}${datadir}/dbus-1/system.d ${D}${datadir}/dbus-1/system-services \
        ${D}${datadir}/dbus-1/interfaces
    for f in io.rota.conf de.pengutronix.rauc.conf; do
        sed -e 's/group="rota"/group="${ROTA_DBUS_GROUP}"/' ${S}/dbus/$f \
            > ${D}${datadir}/dbus-1/system.d/$f
        chmod 0644 ${D}${datadir}/dbus-1/system.d/$f
    done
    install -m 0644 ${S}/dbus/io.rota.service ${D}${datadir}/dbus-1/system-services/
    install -m 0644 ${S}/dbus/*.xml ${D}${datadir}/dbus-1/interfaces/

    # configuration
    install -d ${D}${sysconfdir}/rota/keys
    sed -e 's#@COMPATIBLE@#${ROTA_COMPATIBLE}#' \
        -e 's#@SLOT_A_DEVICE@#${ROTA_SLOT_A_DEVICE}#' \
        -e 's#@SLOT_B_DEVICE@#${ROTA_SLOT_B_DEVICE}#' \
        -e 's#@BOOT_ATTEMPTS@#${ROTA_BOOT_ATTEMPTS}#' \
        -e 's#@RAUC_COMPAT@#${ROTA_RAUC_COMPAT}#' \
        -e 's#@DBUS_GROUP@#${ROTA_DBUS_GROUP}#' \
        -e 's#@LOCALSTATEDIR@#${localstatedir}#' \
        -e 's#@SYSCONFDIR@#${sysconfdir}#' \
        ${UNPACKDIR}/system.toml.in > ${D}${sysconfdir}/rota/system.toml
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
}

PACKAGES =+ "${PN}-rauc-compat"

SYSTEMD_SERVICE:${PN} = "rota.service rota-mark-good.service"
SYSTEMD_AUTO_ENABLE:${PN} = "enable"

FILES:${PN} += "\
    ${systemd_system_unitdir} \
    ${libexecdir}/rota \
    ${datadir}/dbus-1/system.d/io.rota.conf \
    ${datadir}/dbus-1/system-services/io.rota.service \
    ${datadir}/dbus-1/interfaces \
"
# RAUC's bus name: only with [dbus] rauc-compat = true, and never next to RAUC itself
# (RDEPENDS/RCONFLICTS below).
FILES:${PN}-rauc-compat += "${datadir}/dbus-1/system.d/de.pengutronix.rauc.conf"

CONFFILES:${PN} = "\
    ${sysconfdir}/rota/system.toml \
    ${sysconfdir}/default/rota-mark-good \
"

# The dbus daemon; fw_env.config for the machine, and fw_printenv/fw_setenv for
# inspecting what rota wrote.
RDEPENDS:${PN} = "dbus"
RDEPENDS:${PN}-rauc-compat = "${PN}"
# ca-certificates: the trust store for https bundle and poll URLs without [http] ca.
RRECOMMENDS:${PN} = "rota-fw-env-config libubootenv-bin ca-certificates"
RCONFLICTS:${PN}-rauc-compat = "rauc"

BBCLASSEXTEND = "native"
