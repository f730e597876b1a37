SUMMARY = "U-Boot boot script for rota's A/B slot selection"
DESCRIPTION = "Compiles rota's bootloader-env/boot.cmd (BOOT_ORDER and BOOT_x_LEFT, \
               RAUC's convention) into boot.scr with mkimage and deploys it as rota- \
               boot.scr, for the image's boot partition (IMAGE_BOOT_FILES)."
SECTION = "bootloaders"

require recipes-core/rota/rota-source.inc

DEPENDS += "u-boot-mkimage-native"

inherit deploy nopackages

# mkimage's -A: arm64 or arm, from the machine's U-Boot settings.
PACKAGE_ARCH = "${MACHINE_ARCH}"

do_configure[noexec] = "1"

do_compile() {
    mkimage -A ${UBOOT_ARCH} -O linux -T script -C none -n "rota boot selection" \
        -d ${S}/bootloader-env/boot.cmd ${B}/boot.scr
}

do_deploy() {
    install -d ${DEPLOYDIR}
    install -m 0644 ${B}/boot.scr ${DEPLOYDIR}/rota-boot.scr
}

addtask deploy after do_compile before do_build
