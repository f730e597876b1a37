//! Boot selection: which slot the bootloader tries next and how many attempts it has,
//! over a bootloader backend.

pub mod uboot_env;
