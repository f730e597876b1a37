# rota on Raspberry Pi (meta-raspberrypi with RPI_USE_U_BOOT = "1"): the U-Boot options
# rota's boot script needs, a redundant env in uboot.env / uboot-redund.env on the FAT
# boot partition, and the matching /etc/fw_env.config in u-boot-env. That package is the
# only one in the image with /etc/fw_env.config: rota-fw-env-config ships none on rpi.
FILESEXTRAPATHS:prepend:rpi := "${THISDIR}/files:${THISDIR}/../../../../recipes-bsp/u-boot/files:"
SRC_URI:append:rpi = " file://rota.cfg file://rota-env-rpi.cfg file://fw_env.config.rota"

# After do_install and every do_install:append (meta-raspberrypi installs its own
# single-copy fw_env.config there): ours replaces it.
# It does nothing on other machines (fw_env.config.rota is fetched on these only); the
# unpack directory is WORKDIR on scarthgap, UNPACKDIR later.
do_install[postfuncs] += "rota_install_fw_env_config"
# nooelint: oelint.vars.noncoreoverride,oelint.task.docstrings
rota_install_fw_env_config() {
    src=${@d.getVar('UNPACKDIR') or d.getVar('WORKDIR')}/fw_env.config.rota
    if [ -e "$src" ]; then
        install -D -m 0644 "$src" ${D}${sysconfdir}/fw_env.config
    fi
}
