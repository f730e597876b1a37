# rauc-hawkbit-updater (meta-rauc) runs as its own user, rauc-hawkbit. With rota in place
# of RAUC, the bus policy lets only root and the rota group install (ROTA_DBUS_GROUP in
# rota-settings.inc, "rota" by default): make the client's user a member. A distro that
# renames the group sets ROTA_HAWKBIT_GROUP to the same name.
# nooelint: oelint.vars.noncoreoverride
ROTA_HAWKBIT_GROUP ??= "rota"
# nooelint: oelint.vars.noncoreoverride
GROUPADD_PARAM:${PN}:append = " ; --system ${ROTA_HAWKBIT_GROUP}"
# nooelint: oelint.vars.noncoreoverride
GROUPMEMS_PARAM:${PN} = "--add rauc-hawkbit --group ${ROTA_HAWKBIT_GROUP}"
