SUMMARY = "fw_env.config for rota: where U-Boot keeps its environment on this machine"
DESCRIPTION = "Installs /etc/fw_env.config in libubootenv's format so that rota, \
               fw_printenv and fw_setenv read and write the same environment U-Boot \
               uses: a file of your own (ROTA_FW_ENV_CONFIG), or, on Raspberry Pi and \
               i.MX8M, nothing but a dependency on U-Boot's env package, which has it."
SECTION = "bootloaders"

require recipes-core/rota/rota-source.inc

# Which fw_env.config to install. Raspberry Pi (meta-raspberrypi) and i.MX8M
# (meta-freescale): none here, the BSP's u-boot-env package has it (this layer's
# dynamic-layers bbappends make it rota's redundant layout), so the image holds one
# /etc/fw_env.config. Other boards: set ROTA_FW_ENV_CONFIG to a file of your own in a
# bbappend (SRC_URI += "file://fw_env.config.myboard",
# ROTA_FW_ENV_CONFIG = "${UNPACKDIR}/fw_env.config.myboard", ${WORKDIR} on scarthgap).
ROTA_FW_ENV_CONFIG ?= ""
# Set to "1" when the board's U-Boot recipe ships /etc/fw_env.config itself.
ROTA_FW_ENV_FROM_UBOOT ?= "0"
ROTA_FW_ENV_FROM_UBOOT:rpi ?= "1"
ROTA_FW_ENV_FROM_UBOOT:mx8m-generic-bsp ?= "1"

# The file differs per machine.
PACKAGE_ARCH = "${MACHINE_ARCH}"

do_configure[noexec] = "1"
do_compile[noexec] = "1"

do_install() {
    if [ "${ROTA_FW_ENV_FROM_UBOOT}" = "1" ]; then
        return
    fi
    if [ -z "${ROTA_FW_ENV_CONFIG}" ]; then
        bbfatal "ROTA_FW_ENV_CONFIG is not set for MACHINE ${MACHINE}: name the fw_env.config that describes where U-Boot stores its environment (or set ROTA_FW_ENV_FROM_UBOOT = \"1\" if the U-Boot recipe installs it)"
    fi
    install -d ${D}${sysconfdir}
    install -m 0644 ${ROTA_FW_ENV_CONFIG} ${D}${sysconfdir}/fw_env.config
}

# Empty when U-Boot's own env package has the file: then that package is pulled in.
ALLOW_EMPTY:${PN} = "1"
RDEPENDS:${PN} = "${@'u-boot-default-env' if d.getVar('ROTA_FW_ENV_FROM_UBOOT') == '1' else ''}"
CONFFILES:${PN} = "${@'' if d.getVar('ROTA_FW_ENV_FROM_UBOOT') == '1' else '${sysconfdir}/fw_env.config'}"
