SUMMARY = "fw_env.config for rota: where U-Boot keeps its environment on this machine"
DESCRIPTION = "Installs /etc/fw_env.config in libubootenv's format so that rota, \
               fw_printenv and fw_setenv read and write the same environment U-Boot \
               uses. The file comes from rota's bootloader-env/ directory and is chosen \
               by MACHINE override."
SECTION = "bootloaders"

require recipes-core/rota/rota-source.inc

# Which bootloader-env/fw_env.config.* to install. Raspberry Pi (meta-raspberrypi):
# uboot.env on the FAT boot partition. i.MX8M (meta-freescale): redundant env at raw
# eMMC offsets. Other boards: set ROTA_FW_ENV_CONFIG to a file of your own in a bbappend
# (SRC_URI += "file://fw_env.config.myboard", ROTA_FW_ENV_CONFIG = "${UNPACKDIR}/...").
ROTA_FW_ENV_CONFIG ?= ""
ROTA_FW_ENV_CONFIG:rpi ?= "${S}/bootloader-env/fw_env.config.rpi"
ROTA_FW_ENV_CONFIG:mx8m-generic-bsp ?= "${S}/bootloader-env/fw_env.config.imx"

# The file differs per machine.
PACKAGE_ARCH = "${MACHINE_ARCH}"

do_configure[noexec] = "1"
do_compile[noexec] = "1"

do_install() {
    if [ -z "${ROTA_FW_ENV_CONFIG}" ]; then
        bbfatal "ROTA_FW_ENV_CONFIG is not set for MACHINE ${MACHINE}: name the fw_env.config that describes where U-Boot stores its environment"
    fi
    install -d ${D}${sysconfdir}
    install -m 0644 ${ROTA_FW_ENV_CONFIG} ${D}${sysconfdir}/fw_env.config
}

CONFFILES:${PN} = "${sysconfdir}/fw_env.config"
