# rota on i.MX8M (meta-freescale, u-boot-imx): the U-Boot options rota's boot script
# needs, a redundant env in the eMMC boot partition mmcblk2boot0, and the matching
# /etc/fw_env.config in u-boot-imx-env (rota-fw-env-config ships none on these machines).
# Boards whose eMMC is not mmc 2 / mmcblk2: copy this bbappend and change both files.
FILESEXTRAPATHS:prepend:mx8m-generic-bsp := "${THISDIR}/files:${THISDIR}/../../../../recipes-bsp/u-boot/files:"
SRC_URI:append:mx8m-generic-bsp = " file://rota.cfg file://rota-env-imx8m.cfg file://fw_env.config.rota"

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
