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

# The zstd encoder (Cargo feature `encoder`) is for making bundles: rota-native has it,
# the device binary decodes only (-0.3 MiB). Add "encoder" to PACKAGECONFIG to create
# compressed bundles on the device itself.
CARGO_BUILD_FLAGS:append = " --no-default-features"
PACKAGECONFIG ??= ""
PACKAGECONFIG:class-native ??= "encoder"
PACKAGECONFIG[encoder] = "--features encoder,,"

require rota-settings.inc

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

    # the group that may install (also made by useradd above; sysusers.d for images
    # that create users at boot)
    install -d ${D}${nonarch_libdir}/sysusers.d
    sed -e 's/^g rota /g ${ROTA_DBUS_GROUP} /' ${S}/systemd/rota.sysusers \
        > ${D}${nonarch_libdir}/sysusers.d/rota.conf
    chmod 0644 ${D}${nonarch_libdir}/sysusers.d/rota.conf

    # the state directory on the data partition (tmpfiles.d creates it at boot)
    install -d ${D}${nonarch_libdir}/tmpfiles.d
    install -m 0644 ${S}/systemd/rota.tmpfiles ${D}${nonarch_libdir}/tmpfiles.d/rota.conf
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
    ${nonarch_libdir}/tmpfiles.d/rota.conf \
    ${nonarch_libdir}/sysusers.d/rota.conf \
"
# RAUC's bus name: only with [dbus] rauc-compat = true, and never next to RAUC itself
# (RDEPENDS/RCONFLICTS below).
FILES:${PN}-rauc-compat += "${datadir}/dbus-1/system.d/de.pengutronix.rauc.conf"

CONFFILES:${PN} = "${sysconfdir}/default/rota-mark-good"

# The dbus daemon and the system configuration (rota-conf, or your replacement of it);
# fw_env.config for the machine, and fw_printenv/fw_setenv for inspecting what rota
# wrote; the mount of the data partition its state lives on.
RDEPENDS:${PN} = "dbus rota-conf"
# rota-native builds bundles: no configuration.
RDEPENDS:${PN}:class-native = ""
RDEPENDS:${PN}-rauc-compat = "${PN}"
# ca-certificates: the trust store for https bundle and poll URLs without [http] ca.
RRECOMMENDS:${PN} = "rota-fw-env-config rota-data-mount libubootenv-bin ca-certificates"
RCONFLICTS:${PN}-rauc-compat = "rauc"

BBCLASSEXTEND = "native"
