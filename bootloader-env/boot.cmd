# rota A/B boot selection for U-Boot (RAUC's convention, so RAUC tooling keeps working).
#
#   BOOT_ORDER     bootnames, first tried first            (default "A B")
#   BOOT_A_LEFT    boot attempts left for slot A (hex)     (default rota_attempts)
#   BOOT_B_LEFT    boot attempts left for slot B (hex)
#
# The first slot in BOOT_ORDER with attempts left is chosen, its counter is decremented
# and saved BEFORE the kernel starts, and the kernel gets rauc.slot=<x> rota.slot=<x>.
# Userspace (rota-mark-good.service → `rota mark good booted`) restores the counter once
# the system is up. A slot that never comes up runs out of attempts and the next slot in
# BOOT_ORDER boots: rollback. When no slot has attempts left (e.g. power lost during
# every boot), all counters are reset and the board resets — the order is kept, so it
# tries the preferred slot again rather than looping without progress.
#
# Board settings (set them in the board's default environment, or let the Yocto recipe
# rota-boot-script prepend them):
#   rota_part_A/B   partition numbers of slots A and B on ${devtype} ${devnum}
#   rota_root_A/B   optional: root= of each slot, when the partition number does not say it
#                   (e.g. ubi0:rootfs_a); one of rota_part_x / rota_root_x is required
#   rota_kernel     kernel inside the slot (default boot/Image)
#   rota_rootdev    optional: the slots' disk as Linux names it, partition number appended
#                   (e.g. /dev/mmcblk0p, /dev/vda): root=${rota_rootdev}${rota_part}.
#                   Default: root=PARTUUID=<the chosen partition's UUID> (`part uuid`), which
#                   holds however Linux numbers the disks (U-Boot's mmc 2 is not always
#                   Linux's mmcblk2).
#   rota_attempts   value counters are reset to (default 3)
# Board hooks:
#   rota_env_load   optional; run first, e.g. to import an env U-Boot does not manage itself
#   rota_env_save   how to persist the env (default: saveenv)
#   rota_boot       boots the chosen slot; sees ${rota_slot}, ${rota_part}, ${rota_kernel}
#                   and ${bootargs}, which already ends in root=... rootwait ro rauc.slot=<x>
#                   rota.slot=<x> (default: load ${rota_kernel} and boot/${fdtfile} from
#                   partition ${rota_part} of ${devtype} ${devnum} and booti)
# Whatever path boots, the kernel gets ${bootargs} (the board's console= and the like)
# followed by the slot's root=, rootwait, ro, rauc.slot= and rota.slot=: a later root= on
# the command line wins over an earlier one, so a board default (or the Raspberry Pi
# firmware's cmdline.txt, which the rpi hook puts first) cannot point at the wrong slot.
#
# Build: mkimage -A arm64 -O linux -T script -C none -n "rota boot selection" -d boot.cmd boot.scr

if test -n "${rota_env_load}"; then run rota_env_load; fi
if test -z "${rota_attempts}"; then setenv rota_attempts 3; fi
if test -z "${BOOT_ORDER}"; then setenv BOOT_ORDER "A B"; fi
if test -z "${BOOT_A_LEFT}"; then setenv BOOT_A_LEFT ${rota_attempts}; fi
if test -z "${BOOT_B_LEFT}"; then setenv BOOT_B_LEFT ${rota_attempts}; fi

setenv rota_slot
for s in ${BOOT_ORDER}; do
  if test -z "${rota_slot}"; then
    if test "${s}" = "A" && test ${BOOT_A_LEFT} -gt 0; then
      setexpr BOOT_A_LEFT ${BOOT_A_LEFT} - 1
      setenv rota_slot A
    fi
    if test "${s}" = "B" && test ${BOOT_B_LEFT} -gt 0; then
      setexpr BOOT_B_LEFT ${BOOT_B_LEFT} - 1
      setenv rota_slot B
    fi
  fi
done

if test -z "${rota_slot}"; then
  echo "rota: no slot in BOOT_ORDER (${BOOT_ORDER}) has attempts left; resetting counters to ${rota_attempts}"
  setenv BOOT_A_LEFT ${rota_attempts}
  setenv BOOT_B_LEFT ${rota_attempts}
  if test -n "${rota_env_save}"; then run rota_env_save; else saveenv; fi
  reset
fi

echo "rota: booting slot ${rota_slot} (BOOT_ORDER=${BOOT_ORDER} A_LEFT=${BOOT_A_LEFT} B_LEFT=${BOOT_B_LEFT})"
if test -n "${rota_env_save}"; then run rota_env_save; else saveenv; fi
if test "${rota_slot}" = "A"; then
  setenv rota_part ${rota_part_A}
  setenv rota_root ${rota_root_A}
else
  setenv rota_part ${rota_part_B}
  setenv rota_root ${rota_root_B}
fi
if test -z "${rota_kernel}"; then setenv rota_kernel boot/Image; fi
if test -z "${rota_root}"; then
  if test -z "${rota_part}"; then
    echo "rota: neither rota_part_${rota_slot} nor rota_root_${rota_slot} is set: the board env must name the partition of slot ${rota_slot}"
  elif test -n "${rota_rootdev}"; then
    setenv rota_root ${rota_rootdev}${rota_part}
  elif part uuid ${devtype} ${devnum}:${rota_part} rota_partuuid; then
    setenv rota_root PARTUUID=${rota_partuuid}
  else
    setenv rota_root /dev/mmcblk${devnum}p${rota_part}
  fi
fi

if test -n "${rota_root}"; then
  setenv bootargs "${bootargs} root=${rota_root} rootwait ro rauc.slot=${rota_slot} rota.slot=${rota_slot}"
  if test -n "${rota_boot}"; then
    run rota_boot
  else
    load ${devtype} ${devnum}:${rota_part} ${kernel_addr_r} ${rota_kernel} && load ${devtype} ${devnum}:${rota_part} ${fdt_addr_r} boot/${fdtfile} && booti ${kernel_addr_r} - ${fdt_addr_r}
  fi
fi
echo "rota: booting slot ${rota_slot} failed"
