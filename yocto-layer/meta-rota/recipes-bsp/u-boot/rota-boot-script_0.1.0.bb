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

# Board settings the script reads (see the top of bootloader-env/boot.cmd). They become
# defaults at the top of the script: a value already in the U-Boot env wins.
# Partition numbers of slots A and B on the boot device.
ROTA_UBOOT_PART_A ?= "2"
ROTA_UBOOT_PART_B ?= "3"
# Kernel image inside the root file system.
ROTA_UBOOT_KERNEL ?= "boot/${KERNEL_IMAGETYPE}"
# How to boot the chosen slot (U-Boot commands, no single quotes); empty uses the
# script's default (kernel and boot/${fdtfile} from the slot, booti). The script has set
# ${rota_part} and put root=, rootwait, ro, rauc.slot= and rota.slot= into ${bootargs}
# before it runs the hook.
ROTA_UBOOT_BOOT ?= ""
# Raspberry Pi: the firmware passes its own device tree (overlays applied) at ${fdt_addr},
# with cmdline.txt in /chosen/bootargs. Those arguments (console=...) go first, the slot's
# after them (the last root= wins); the kernel comes from the slot. KERNEL_BOOTCMD is
# meta-raspberrypi's (booti on 64-bit, bootz on 32-bit machines).
ROTA_UBOOT_BOOT:rpi ?= "fdt addr ${fdt_addr} && fdt get value rota_fw_args /chosen bootargs && setenv bootargs ${rota_fw_args} ${bootargs}; load ${devtype} ${devnum}:${rota_part} ${kernel_addr_r} ${rota_kernel} && ${KERNEL_BOOTCMD} ${kernel_addr_r} - ${fdt_addr}"

do_compile() {
    {
        echo "# Board defaults from the rota-boot-script recipe (MACHINE ${MACHINE})"
        printf 'if test -z "${rota_part_A}"; then setenv rota_part_A %s; fi\n' "${ROTA_UBOOT_PART_A}"
        printf 'if test -z "${rota_part_B}"; then setenv rota_part_B %s; fi\n' "${ROTA_UBOOT_PART_B}"
        printf 'if test -z "${rota_kernel}"; then setenv rota_kernel %s; fi\n' "${ROTA_UBOOT_KERNEL}"
        if [ -n "${ROTA_UBOOT_BOOT}" ]; then
            # single quotes: U-Boot expands ${rota_part} & co. when it runs the hook
            printf "if test -z \"\${rota_boot}\"; then setenv rota_boot '%s'; fi\n" '${ROTA_UBOOT_BOOT}'
        fi
        cat ${S}/bootloader-env/boot.cmd
    } > ${B}/boot.cmd
    mkimage -A ${UBOOT_ARCH} -O linux -T script -C none -n "rota boot selection" \
        -d ${B}/boot.cmd ${B}/boot.scr
}

do_deploy() {
    install -d ${DEPLOYDIR}
    install -m 0644 ${B}/boot.scr ${DEPLOYDIR}/rota-boot.scr
}

addtask deploy after do_compile before do_build
